"""Every op of wgpu_llm/graph.py on the wgpu backend vs the numpy backend (cpu_fallback/ops.py).

One table, one row per op form (each op kind, rope neox / normal / partial, attention GQA /
windowed / per-query, each glu activation) plus the fused forms the GPU backend plans for model
graphs (a residual add folded into a linear or a norm, rope inside a norm, glu inside a linear).
Each row is a small `Graph` over random weights in a GGUF file, compiled on both backends through
their public `compile`, and run as a model runs: a prefill chunk of 13 tokens (the tiled mat-mat
and flash attention), a decode step of 1, then a step of 3 (the several-token mat-vec), each
continuing the KV cache of the one before. Before every run all activation buffers and the KV
cache from pos0 on are filled with NaN on both backends, so an element a kernel forgets to write
fails. Compared by NMSE = sum((gpu - cpu)^2) / sum(cpu^2); NaN never passes.

Tolerances: wgpu_llm/tolerances.py, one per op kind, which `wgpu-llm verify` holds real models to
(measured over this table and real models; a row holds to the loosest kind among its ops).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from wgpu_llm import graph as graph_module
from wgpu_llm.graph import Graph
from wgpu_llm.tolerances import ATTN_TOL, DOT_TOL, ELTWISE_TOL, NORM_TOL, OP_TOLERANCE, ROPE_TOL, op_tolerance

pytestmark = pytest.mark.gpu

N_VOCAB = 29
N_CTX = 32
STEPS = ((13, 0), (1, 13), (3, 14))  # (tokens, pos0): prefill, decode, a short chunk

# name -> (shape, type): embedding tables give the random activations a step starts from
WEIGHTS = {
    **{f"tab.{width}": ((N_VOCAB, width), "F32") for width in (30, 40, 53, 57, 75, 90, 96, 111, 120, 160)},
    "tab.q8": ((N_VOCAB, 96), "Q8_0"),
    "norm.37": ((37,), "F32"), "norm.111": ((111,), "F32"), "norm.53": ((53,), "F32"), "norm.16": ((16,), "F32"),
    "lin.a": ((53, 75), "F32"), "lin.b": ((31, 75), "F32"), "lin.glu": ((21, 45), "F32"),
    "lin.q8": ((40, 96), "Q8_0"),
    "bias.a": ((53,), "F32"), "bias.b": ((31,), "F32"), "factors.5": ((5,), "F32"),
    "lnw.111": ((111,), "F32"), "lnb.111": ((111,), "F32"), "lnw.37": ((37,), "F32"), "lnb.37": ((37,), "F32"),
    "pos.57": ((N_CTX, 57), "F16"), "off.111": ((111,), "F32"),
}


@dataclass
class Case:
    name: str
    build: object  # build(g: Graph, layer: int) -> output activation name
    tol: float
    fused: str = ""  # a fusion the GPU backend must have planned (in step.fused)
    steps: tuple = STEPS


def _rope(neox, head_dim, n_rot, freq_scale=1.0, factors=None, attn_factor=1.0):
    def build(g, layer):
        return g.rope(g.embed("tab.30"), head_dim, n_rot, 10000.0, neox, freq_scale, factors, attn_factor)
    return build


def _attention(n_head, n_kv, hd, window, softcap=0.0):
    def build(g, layer):
        x = g.embed(f"tab.{(n_head + 2 * n_kv) * hd}")
        q, k, v = g.split(x, [n_head * hd, n_kv * hd, n_kv * hd])
        return g.attention(q, k, v, layer, n_head, n_kv, hd, 1.0 / np.sqrt(hd), window, softcap)
    return build


def _glu(activation, then_linear=False):
    def build(g, layer):
        y = g.glu(g.embed("tab.90"), activation)
        return g.linear(y, ["lin.glu"]) if then_linear else y
    return build


def _norm_residual(g, layer):
    """Gemma's post-norm: residual + rms_norm(x), then the next pre-norm of that sum."""
    res = g.embed("tab.53", scale=3.0)
    y = g.add(res, g.rms_norm(g.embed("tab.53"), "norm.53", 1e-6))
    return g.rms_norm(y, "norm.53", 1e-5)


def _norm_rope(g, layer, n_rot=16, attn_factor=1.0):
    """Per-head q norm then rope, as Gemma's q / k norms."""
    return g.rope(g.rms_norm(g.embed("tab.160"), "norm.16", 1e-6), 16, n_rot, 1e6, True, attn_factor=attn_factor)


CASES = [
    Case("embed scaled", lambda g, l: g.embed("tab.57", scale=1.7), ELTWISE_TOL),
    Case("embed Q8_0", lambda g, l: g.embed("tab.q8"), ELTWISE_TOL),
    Case("slice", lambda g, l: g.split(g.embed("tab.57"), [20, 37])[1], ELTWISE_TOL),
    Case("last_row", lambda g, l: g.last_row(g.embed("tab.57")), ELTWISE_TOL),
    Case("add", lambda g, l: g.add(g.embed("tab.53"), g.embed("tab.53", scale=-0.3)), ELTWISE_TOL),
    Case("scale", lambda g, l: g.scale(g.embed("tab.75"), 0.37), ELTWISE_TOL),
    Case("softcap", lambda g, l: g.softcap(g.embed("tab.75", scale=3.0), 2.5), NORM_TOL),
    Case("rms_norm whole row", lambda g, l: g.rms_norm(g.embed("tab.111"), "norm.111", 1e-6), NORM_TOL),
    Case("rms_norm per group, on a slice",
         lambda g, l: g.rms_norm(g.split(g.embed("tab.111"), [74, 37])[0], "norm.37", 1e-5), NORM_TOL),
    # the mean must come off, not only a scale; centring values near 3 sums their rounding: DOT_TOL
    Case("layer_norm whole row, rows with an offset",
         lambda g, l: g.layer_norm(g.bias(g.embed("tab.111"), ["off.111"]), "lnw.111", "lnb.111", 1e-5), DOT_TOL),
    Case("layer_norm per group, on a slice",
         lambda g, l: g.layer_norm(g.split(g.embed("tab.111"), [74, 37])[0], "lnw.37", "lnb.37", 1e-5), NORM_TOL),
    Case("gelu", lambda g, l: g.gelu(g.embed("tab.75", scale=2.0)), NORM_TOL),
    Case("pos_embed", lambda g, l: g.pos_embed(g.embed("tab.57"), "pos.57"), ELTWISE_TOL),
    Case("rms_norm + residual add, then the next norm", _norm_residual, NORM_TOL,
         fused="rms_norm fused into the previous rms_norm"),
    Case("rms_norm + rope", _norm_rope, NORM_TOL, fused="rope fused into rms_norm"),
    Case("rope neox", _rope(True, 10, 10), ROPE_TOL),
    Case("rope normal", _rope(False, 10, 10), ROPE_TOL),
    Case("rope neox partial, freq_scale", _rope(True, 10, 6, 0.5), ROPE_TOL),
    Case("rope normal partial", _rope(False, 10, 4), ROPE_TOL),
    Case("rope with frequency factors", _rope(False, 10, 10, factors="factors.5"), ROPE_TOL),
    # LongRoPE's attention factor scales the rotated dimensions only (Phi-4-mini: partial rotary)
    Case("rope neox partial, attention factor", _rope(True, 10, 6, attn_factor=1.19), ROPE_TOL),
    Case("rms_norm + rope partial, attention factor", lambda g, l: _norm_rope(g, l, n_rot=12, attn_factor=1.19),
         NORM_TOL, fused="rope fused into rms_norm"),
    Case("linear two F32 weights", lambda g, l: g.linear(g.embed("tab.75"), ["lin.a", "lin.b"]), DOT_TOL),
    Case("linear Q8_0", lambda g, l: g.linear(g.embed("tab.96"), ["lin.q8"]), DOT_TOL),
    Case("bias of two vectors", lambda g, l: g.bias(g.linear(g.embed("tab.75"), ["lin.a", "lin.b"]),
                                                    ["bias.a", "bias.b"]), DOT_TOL),
    Case("linear + residual add", lambda g, l: g.add(g.embed("tab.53"), g.linear(g.embed("tab.75"), ["lin.a"])),
         DOT_TOL, fused="residual add fused into linear"),
    Case("attention GQA 6:2", _attention(6, 2, 12, 0), ATTN_TOL),
    Case("attention windowed, GQA 4:1", _attention(4, 1, 16, 5), ATTN_TOL),
    # scores of about N(0, 1) against a cap of 1.2: most are squashed visibly
    Case("attention soft-capped, GQA 6:2", _attention(6, 2, 12, 0, softcap=1.2), ATTN_TOL),
    Case("attention soft-capped, windowed, head_dim 10", _attention(2, 1, 10, 3, softcap=1.2), ATTN_TOL),
    Case("attention head_dim 10 (per-query kernel)", _attention(2, 1, 10, 0), ATTN_TOL),
    Case("attention windowed head_dim 10", _attention(2, 1, 10, 3), ATTN_TOL),
    Case("glu silu", _glu("silu"), NORM_TOL),
    Case("glu gelu_tanh", _glu("gelu_tanh"), NORM_TOL),
    Case("glu silu in a linear", _glu("silu", True), DOT_TOL, fused="glu fused into the linear reading it"),
    Case("glu gelu_tanh in a linear", _glu("gelu_tanh", True), DOT_TOL, fused="glu fused into the linear reading it"),
]


def _graph(case: Case, shapes: dict, layer: int) -> Graph:
    g = Graph(dict(shapes))
    g.set_output(case.build(g, layer))
    return g


def _shapes() -> dict:
    return {n: (1, s[0]) if len(s) == 1 else s for n, (s, _) in WEIGHTS.items()}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    from wgpu_llm.gguf_file import GGUFFile

    path = tmp_path_factory.mktemp("parity") / "ops.gguf"
    rng = np.random.default_rng(2024)
    w = GGUFWriter(path, "parity")
    for name, (shape, type_name) in WEIGHTS.items():
        data = rng.standard_normal(shape).astype(np.float32)
        if name.startswith(("norm.", "lnw.")):
            data = 1.0 + 0.2 * data
        if name.startswith("off."):
            data = np.full(data.shape, 3.0, np.float32)
        if name.startswith("factors."):  # rope frequency divisors, as Llama 3.1's: 1 .. 8
            data = np.linspace(1.0, 8.0, data.size, dtype=np.float32)
        if type_name == "F32":
            w.add_tensor(name, data)
        else:
            t = GGMLQuantizationType[type_name]
            w.add_tensor(name, quantize(data, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return GGUFFile(path)


@pytest.fixture(scope="module")
def backends(weights_file, adapter):
    from cpu_fallback.backend import CpuBackend
    from wgpu_llm.gpu.backend import GpuBackend

    return CpuBackend(weights_file, N_CTX), GpuBackend(weights_file, N_CTX, adapter)


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.all(np.isfinite(ref)), "the numpy reference left non-finite values"
    assert np.all(np.isfinite(got)), f"{np.sum(~np.isfinite(got))} non-finite values from the GPU"
    return float(np.sum((got.astype(np.float64) - ref) ** 2) / np.sum(ref.astype(np.float64) ** 2))


def _poison_cpu(be, step, pos0: int) -> None:
    for buf in step.buffers:
        buf.fill(np.nan)
    for cache in (*be.k_cache.values(), *be.v_cache.values()):
        cache[:, pos0:] = np.nan


def _poison_gpu(be, pos0: int) -> None:
    rt = be.rt
    for buf in rt.pool.buffers:
        rt.queue.write_buffer(buf, 0, np.full(buf.size // 4, np.nan, np.float32))
    for layer, kc in be.k_cache.items():
        width = kc.size // (4 * be.n_ctx)
        start = 4 * width * pos0
        for cache in (kc, be.v_cache[layer]):
            rt.queue.write_buffer(cache, start, np.full((cache.size - start) // 4, np.nan, np.float32))


@pytest.mark.parametrize("layer,case", list(enumerate(CASES)), ids=[c.name for c in CASES])
def test_op_parity(backends, layer, case):
    cpu, gpu = backends
    g = _graph(case, _shapes(), layer)
    ids = np.random.default_rng(layer).integers(0, N_VOCAB, sum(n for n, _ in case.steps))
    for n, pos0 in case.steps:
        cpu_step, gpu_step = cpu.compile(g, n), gpu.compile(g, n)
        if case.fused:
            assert case.fused in gpu_step.fused.values(), f"{case.name}, {n} tokens: planned {gpu_step.fused}"
        chunk = ids[pos0:pos0 + n]
        _poison_cpu(cpu, cpu_step, pos0)
        ref = cpu_step(chunk, pos0).copy()
        _poison_gpu(gpu, pos0)
        got = gpu_step(chunk, pos0)
        err = nmse(got, ref)
        assert err <= case.tol, f"{case.name}, {n} tokens at {pos0}: NMSE {err:.3g} > {case.tol:g}"


def _graph_op_kinds() -> set[str]:
    """Every op kind graph.py's Graph can emit (the kinds passed to Graph._new)."""
    return set(re.findall(r'self\._new\(\s*"(\w+)"', inspect.getsource(graph_module)))


def test_every_op_kind_has_a_row():
    kinds = _graph_op_kinds()
    assert {"embed", "linear", "attention"} <= kinds, f"could not read the op kinds of graph.py: {kinds}"
    covered = set()
    for layer, case in enumerate(CASES):
        covered |= {op.kind for op in _graph(case, _shapes(), layer).ops}
    assert kinds <= covered, f"ops of graph.py without a row in the parity table: {sorted(kinds - covered)}"
    activations = {op.param("activation") for layer, case in enumerate(CASES)
                   for op in _graph(case, _shapes(), layer).ops if op.kind == "glu"}
    assert set(graph_module.ACTIVATIONS) <= activations, \
        f"glu activations without a row: {sorted(set(graph_module.ACTIVATIONS) - activations)}"


def test_verify_tolerances_cover_the_table():
    """wgpu-llm verify holds an op to the tolerance of its kind (the largest of a fused group's):
    it has one for every op kind, and none stricter than a row of this table measured."""
    assert _graph_op_kinds() <= OP_TOLERANCE.keys(), sorted(_graph_op_kinds() - OP_TOLERANCE.keys())
    for layer, case in enumerate(CASES):
        kinds = {op.kind for op in _graph(case, _shapes(), layer).ops}
        assert case.tol <= op_tolerance(kinds), f"{case.name}: {case.tol:g} > verify's {op_tolerance(kinds):g}"
