"""The wgpu backend vs the numpy backend on whole models.

- tiny random-weight GGUF models (llama and gemma3 architectures, several weight types; written
  by tests/tiny_models.py with gguf-py's GGUFWriter): logits at every position of a prefill, then several decode steps
  (NMSE <= 5e-4 per step);
- the real SmolLM2-135M (and Gemma 3 270M, marked slow): prefill logits close, and 8 greedy
  tokens identical.
Skipped only where no wgpu adapter exists (or a real model cannot be materialised).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import no_gpu
from tiny_models import BLOCK, write_tiny_model

from cpu_fallback.backend import CpuBackend
from wgpu_llm.gguf_file import GGUFFile
from wgpu_llm.models import architecture

NMSE_TOL = 5e-4
# six layers: five slide over a window of 4 positions (fewer than a test's 7 + 5), the sixth is global
GEMMA_SHAPE = {"n_layer": 6, "n_kv_head": 1, "head_dim": 32, "d_ff": 128, "sliding_window": 4}
gpu = pytest.mark.gpu


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.all(np.isfinite(got)), f"{np.sum(~np.isfinite(got))} non-finite values"
    return float(np.sum((got.astype(np.float64) - ref) ** 2) / np.sum(ref.astype(np.float64) ** 2))


def compare_backends(path, adapter, n_prefill: int, n_decode: int, n_ctx: int = 64, seed: int = 1,
                     kv_type: str = "f32"):
    """GPU vs CPU: all-position logits of a prefill, then decode steps fed with the CPU's greedy
    token; kv_type: both backends' KV cache type."""
    from wgpu_llm.gpu.backend import GpuBackend

    gf = GGUFFile(path)
    arch = architecture(gf)
    cpu, gpu = CpuBackend(gf, n_ctx, kv_type=kv_type), GpuBackend(gf, n_ctx, adapter, kv_type=kv_type)
    full, last = arch.build_graph(gf, all_logits=True), arch.build_graph(gf, all_logits=False)
    n_vocab = gf.tensor("token_embd.weight").shape[0]
    ids = np.random.default_rng(seed).integers(0, n_vocab, n_prefill)
    ref = cpu.compile(full, n_prefill)(ids, 0)
    got = gpu.compile(full, n_prefill)(ids, 0)
    errors = [nmse(got, ref)]
    cpu_step, gpu_step = cpu.compile(last, 1), gpu.compile(last, 1)
    token = int(np.argmax(ref[-1]))
    for pos in range(n_prefill, n_prefill + n_decode):
        ref = cpu_step(np.array([token]), pos)
        got = gpu_step(np.array([token]), pos)
        errors.append(nmse(got, ref))
        token = int(np.argmax(ref[-1]))
    return errors, gpu, gpu_step


@gpu
@pytest.mark.parametrize("qtype,tied", [("F32", True), ("F16", False), ("Q8_0", True), ("Q4_1", False),
                                        ("Q5_0", True)])
def test_tiny_llama(adapter, tmp_path, qtype, tied):
    path = write_tiny_model(tmp_path / f"llama-{qtype}.gguf", "llama", qtype, tied_output=tied)
    errors, _, _ = compare_backends(path, adapter, n_prefill=7, n_decode=5)
    assert max(errors) <= NMSE_TOL, errors


@gpu
@pytest.mark.parametrize("qtype", ["BF16", "Q4_0", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                                   "IQ4_XS"])
def test_tiny_llama_other_weight_types(adapter, tmp_path, qtype):
    """With test_tiny_llama, every weight type the GPU kernels read (k-quants and IQ4_XS in
    256-column rows, the embedding table too; they and IQ4_NL as random blocks: gguf-py cannot
    quantize them)."""
    from wgpu_llm.gpu import quant

    covered = {"F32", "F16", "Q8_0", "Q4_1", "Q5_0", "BF16", "Q4_0", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
               "Q6_K", "IQ4_XS"}
    assert covered == set(quant.SUPPORTED_TYPES)
    shape = {"d_model": 256, "n_head": 4, "head_dim": 64, "d_ff": 256, "n_layer": 1} if BLOCK[qtype] == 256 else {}
    path = write_tiny_model(tmp_path / f"llama-{qtype}.gguf", "llama", qtype, **shape)
    gf = GGUFFile(path)
    assert {gf.tensor(n).type_name for n in ("token_embd.weight", "blk.0.ffn_down.weight")} == {qtype}
    errors, _, _ = compare_backends(path, adapter, n_prefill=9, n_decode=4)
    assert max(errors) <= NMSE_TOL, errors


@gpu
def test_tiny_llama_mha_one_layer(adapter, tmp_path):
    """No GQA (n_kv_head == n_head), a single layer, an odd prefill length."""
    path = write_tiny_model(tmp_path / "llama-mha.gguf", "llama", "F32", n_layer=1, n_kv_head=4)
    errors, _, _ = compare_backends(path, adapter, n_prefill=5, n_decode=3)
    assert max(errors) <= NMSE_TOL, errors


@gpu
@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q5_0"])
def test_tiny_gemma3(adapter, tmp_path, monkeypatch, qtype):
    monkeypatch.setenv("WGPU_LLM_NORM_ON_LOAD", "1")  # the norms on load whatever the mat-vec kind
    path = write_tiny_model(tmp_path / f"gemma3-{qtype}.gguf", "gemma3", qtype, **GEMMA_SHAPE)
    errors, gpu, step = compare_backends(path, adapter, n_prefill=7, n_decode=5)
    assert max(errors) <= NMSE_TOL, errors
    fused = set(step.fused.values())
    assert {"q / k norm and rope done by the attention kernel", "rms_norm done by the linear reading it",
            "post-norm, residual add and pre-norm done by the linear reading them",
            "residual add fused into rms_norm", "glu fused into the linear reading it"} <= fused, fused
    # per layer: QKV (stacked; the previous layer's post-norm + residual + this pre-norm, or the
    # first layer's pre-norm, on load), attention (q+k head norms with rope first), o-proj,
    # gate+up (stacked; post-norm + residual + pre-norm on load), down (glu on load); then embed,
    # the last layer's post-norm + residual (last_row comes before the output norm), the head
    # (the output norm on load)
    assert step.n_dispatches == 5 * GEMMA_SHAPE["n_layer"] + 3
    # a prefill step (several rows of one sequence) norms and ropes q and k in one dispatch of
    # their own, and its norms are dispatches of their own
    gf = GGUFFile(path)
    full = architecture(gf).build_graph(gf, all_logits=True)
    prefill = gpu.compile(full, 7)
    assert {"rope fused into rms_norm", "merged with the previous head norm and rope",
            "rms_norm fused into the previous rms_norm"} <= set(prefill.fused.values())
    # a one-token step of the all-logits graph: no last_row, so the head does the last post-norm,
    # residual add and output norm on load, writing a new residual nothing reads
    from wgpu_llm.gpu.backend import GpuBackend

    one, cpu_one = GpuBackend(gf, 8, adapter).compile(full, 1), CpuBackend(gf, 8).compile(full, 1)
    assert step.n_dispatches == one.n_dispatches + 1
    for pos in range(3):
        assert nmse(one(np.array([pos + 5]), pos), cpu_one(np.array([pos + 5]), pos)) <= NMSE_TOL


@gpu
@pytest.mark.parametrize(("arch", "qtype"), [("gemma3", "Q5_0"), ("llama", "Q4_0")])
def test_mixed_types_stacked_as_q8_0(adapter, tmp_path, monkeypatch, arch, qtype):
    """Q and K in Q5_0 / Q4_0 with a Q8_0 V (as in Gemma 3 270M's file): one Q8_0 QKV matrix,
    so still 5 dispatches per layer (norms on load), and the same results as the numpy backend."""
    monkeypatch.setenv("WGPU_LLM_NORM_ON_LOAD", "1")
    shape = GEMMA_SHAPE if arch == "gemma3" else {}
    path = write_tiny_model(tmp_path / f"{arch}-mixed.gguf", arch, qtype, layer_types={"attn_v": "Q8_0"}, **shape)
    errors, gpu, step = compare_backends(path, adapter, n_prefill=7, n_decode=5)
    assert max(errors) <= NMSE_TOL, errors
    n_layer = shape.get("n_layer", 2)
    assert step.n_dispatches == 5 * n_layer + (3 if arch == "gemma3" else 2)
    qkv = ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight")
    assert [piece.weight.type_name for piece in gpu.matrix(qkv)] == ["Q8_0"]


@gpu
@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_norms_apart(adapter, tmp_path, monkeypatch, arch):
    """WGPU_LLM_NORM_ON_LOAD=0: the decode step's norms are dispatches of their own (two more per
    layer, one more for the output norm), with the same results. By default (auto) that is what
    a CPU adapter's row kind of mat-vec gets, and a GPU's kinds do the norms on load."""
    shape = GEMMA_SHAPE if arch == "gemma3" else {}
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, "Q8_0", **shape)
    n_layer = shape.get("n_layer", 2)
    on_load = {"rms_norm done by the linear reading it",
               "post-norm, residual add and pre-norm done by the linear reading them"}
    monkeypatch.setenv("WGPU_LLM_NORM_ON_LOAD", "0")
    errors, _, step = compare_backends(path, adapter, n_prefill=3, n_decode=3)
    assert max(errors) <= NMSE_TOL, errors
    assert step.n_dispatches == 7 * n_layer + (4 if arch == "gemma3" else 3)
    assert not on_load & set(step.fused.values())
    monkeypatch.delenv("WGPU_LLM_NORM_ON_LOAD")
    _, gpu, step = compare_backends(path, adapter, n_prefill=3, n_decode=1)
    folded = bool(on_load & set(step.fused.values()))
    assert folded == (not gpu.cfg.linear_whole_rows), gpu.cfg  # the row kind on a CPU adapter
    monkeypatch.setenv("WGPU_LLM_NORM_ON_LOAD", "yes")
    with pytest.raises(ValueError, match="WGPU_LLM_NORM_ON_LOAD='yes': expected one of auto, 1, 0"):
        compare_backends(path, adapter, n_prefill=3, n_decode=1)


def _every_adapter():
    from wgpu_llm.gpu.device import list_adapters

    found = [pytest.param(a.index, id=f"{a.backend}-{a.index}") for a in list_adapters()]
    return found or [pytest.param(None, id="no-adapter")]


@gpu
@pytest.mark.parametrize("index", _every_adapter())
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tiny_model_on_every_adapter(tmp_path, index, arch):
    """Each adapter wgpu sees (e.g. lavapipe's Vulkan and llvmpipe's OpenGL, without subgroups)."""
    from wgpu_llm.gpu.device import list_adapters

    if index is None:
        no_gpu("no GPU adapter")
    adapter = list_adapters()[index].adapter
    extra = GEMMA_SHAPE if arch == "gemma3" else {}
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, "Q8_0", **extra)
    errors, _, _ = compare_backends(path, adapter, n_prefill=6, n_decode=3)
    assert max(errors) <= NMSE_TOL, errors


@gpu
def test_steps_share_buffers_and_reuse_programs(adapter, tmp_path, monkeypatch):
    """Compiling more steps does not upload weights again; the KV cache carries across step kinds."""
    from wgpu_llm.gpu.backend import GpuBackend

    monkeypatch.setenv("WGPU_LLM_NORM_ON_LOAD", "1")
    path = write_tiny_model(tmp_path / "llama.gguf", "llama", "Q8_0")
    gf = GGUFFile(path)
    arch = architecture(gf)
    gpu = GpuBackend(gf, 32, adapter)
    last = arch.build_graph(gf, all_logits=False)
    a = gpu.compile(last, 4)
    uploaded = gpu.weight_bytes
    pool = gpu.rt.pool.nbytes
    b = gpu.compile(last, 1)
    assert gpu.weight_bytes == uploaded
    assert gpu.rt.pool.nbytes == pool  # the decode step fits in the prefill step's buffers
    cpu = CpuBackend(gf, 32)
    ca, cb = cpu.compile(last, 4), cpu.compile(last, 1)
    ids = np.array([3, 1, 4, 1])
    assert nmse(a(ids, 0), ca(ids, 0)) <= NMSE_TOL
    for pos in range(4, 8):
        assert nmse(b(np.array([pos]), pos), cb(np.array([pos]), pos)) <= NMSE_TOL
    # the argmax on the GPU (a step of its own over the same buffers and KV cache)
    logits = cb(np.array([9]), 8)
    assert b.greedy(np.array([9]), 8).tolist() == [int(np.argmax(logits[-1]))]
    # a decode step is: per layer QKV (one stacked matrix, the norm on load), attention (rope
    # first), o-proj(+residual), gate+up (stacked, the norm on load), down(+glu on load,
    # +residual); then embed, head (the final norm on load); the 4-token step norms in
    # dispatches of their own and ropes q and k in one
    n_layer = 2
    assert b.n_dispatches == 5 * n_layer + 2
    assert a.n_dispatches == 8 * n_layer + 3


@gpu
@pytest.mark.parametrize("output", ["last_row", "strided_slice"])
def test_custom_graph_views(adapter, tmp_path, output):
    """Paths the model graphs do not take: a linear reading a slice at an offset (copied first),
    scale, a plain add, and an output that is a view (the last row, or a strided slice)."""
    from wgpu_llm.gpu.backend import GpuBackend
    from wgpu_llm.graph import Graph
    from wgpu_llm.models.base import weight_shapes

    gf = GGUFFile(write_tiny_model(tmp_path / "llama.gguf", "llama", "Q8_0"))
    g = Graph(weight_shapes(gf))
    x = g.embed("token_embd.weight", scale=0.5)
    gate, up = g.split(g.linear(x, ["blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"]), [96, 96])
    d = g.scale(g.linear(up, ["blk.0.ffn_down.weight"]), 0.25)
    f = g.add(d, x)
    if output == "last_row":
        g.set_output(g.last_row(f))
    else:  # a slice of the fused projection, whose other half was used
        g.set_output(gate)
    cpu, gpu = CpuBackend(gf, 16), GpuBackend(gf, 16, adapter)
    ids = np.array([5, 9, 2, 7, 1])
    ref = cpu.compile(g, 5)(ids, 0)
    step = gpu.compile(g, 5)
    got = step(ids, 0)
    assert nmse(got, ref) <= 1e-6
    assert any(label.endswith(": copy") for label in step.program.labels)  # `up` sits at column 96


@gpu
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_small_binding_limit(adapter, tmp_path, arch):
    """With a 4 KiB binding limit every weight is split into row pieces (the embedding table into
    several, each dispatch looking up the tokens in its rows) and a 7-token all-logits step runs as
    chunks of 3 tokens: the results do not change."""
    import dataclasses

    from wgpu_llm.gpu.backend import GpuBackend

    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, "Q8_0", **(GEMMA_SHAPE if arch == "gemma3" else {}))
    gf = GGUFFile(path)
    model = architecture(gf)
    gpu, cpu = GpuBackend(gf, 16, adapter), CpuBackend(gf, 16)
    gpu.rt.caps = dataclasses.replace(gpu.rt.caps, max_binding=4096)
    full, last = model.build_graph(gf, all_logits=True), model.build_graph(gf, all_logits=False)
    assert gpu.max_tokens_per_step(full) < 7
    ids = np.array([5, 9, 2, 7, 1, 3, 8])
    assert nmse(gpu.compile(full, 7)(ids, 0), cpu.compile(full, 7)(ids, 0)) <= NMSE_TOL
    assert len(gpu.matrix("token_embd.weight")) > 1
    g_step, c_step = gpu.compile(last, 5), cpu.compile(last, 5)
    got, ref = g_step(ids[:5], 7), c_step(ids[:5], 7)  # a last-row step in chunks: the last chunk's row
    assert got.shape == ref.shape == (1, gf.tensor("token_embd.weight").shape[0])
    assert nmse(got, ref) <= NMSE_TOL


@gpu
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_work_bound_chunks_a_step(adapter, tmp_path, monkeypatch, arch):
    """No dispatch may do more than MAX_DISPATCH_MACS multiply-adds (the OS GPU watchdog): with
    the bound lowered to 3 tokens' work, a 7-token step runs as chunks and the results do not
    change; ops after last_row count as one row."""
    from wgpu_llm.gpu import backend

    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, "Q8_0", **(GEMMA_SHAPE if arch == "gemma3" else {}))
    gf = GGUFFile(path)
    model = architecture(gf)
    gpu, cpu = backend.GpuBackend(gf, 16, adapter), CpuBackend(gf, 16)
    full, last = model.build_graph(gf, all_logits=True), model.build_graph(gf, all_logits=False)
    vocab, d = gf.tensor("token_embd.weight").shape[::-1]
    assert backend.dispatch_macs_per_token(full, 16) >= vocab * d  # the output head on every row
    per_token = backend.dispatch_macs_per_token(last, 16)
    assert per_token < vocab * d  # ... on the last row only
    monkeypatch.setattr(backend, "MAX_DISPATCH_MACS", 3 * per_token)
    assert gpu.max_tokens_per_step(last) == 3
    ids = np.array([5, 9, 2, 7, 1, 3, 8])
    step = gpu.compile(last, 7)
    assert isinstance(step, backend._ChunkedStep) and [c.n_tokens for c in step.chunks] == [3, 3, 1]
    assert nmse(step(ids, 0), cpu.compile(last, 7)(ids, 0)) <= NMSE_TOL


@gpu
def test_bad_inputs(adapter, tmp_path):
    from wgpu_llm.gpu.backend import GpuBackend

    path = write_tiny_model(tmp_path / "llama.gguf", "llama", "F32")
    gf = GGUFFile(path)
    gpu = GpuBackend(gf, 16, adapter)
    step = gpu.compile(architecture(gf).build_graph(gf, all_logits=False), 2)
    with pytest.raises(ValueError, match="context"):
        step(np.array([1, 2]), 15)
    with pytest.raises(ValueError, match="token ids"):
        step(np.array([1, 100000]), 0)
    with pytest.raises(ValueError, match="compiled for 2"):
        step(np.array([1, 2, 3]), 0)


@gpu
def test_weight_types_without_a_gpu_kernel_run_as_f32(adapter, tmp_path, capfd):
    """TQ2_0 / TQ1_0 (ternary; gguf-py dequantizes them, no WGSL reads them) are uploaded as F32 --
    stacked with F32 neighbours -- and say so, once per type on stderr and in describe()."""
    from wgpu_llm.gpu import quant

    fallback = {"attn_q": "TQ2_0", "ffn_down": "TQ1_0"}
    assert not set(fallback.values()) & set(quant.SUPPORTED_TYPES)
    path = write_tiny_model(tmp_path / "llama-ternary.gguf", "llama", "F32", n_layer=2, d_model=256, n_head=4,
                            n_kv_head=2, head_dim=64, d_ff=256, layer_types=fallback)
    capfd.readouterr()
    errors, gpu, _ = compare_backends(path, adapter, n_prefill=9, n_decode=3)
    assert max(errors) <= 1e-10, errors  # the same float32 weights on both sides
    assert gpu.f32_fallback == {"TQ2_0": ["blk.0.attn_q.weight", "blk.1.attn_q.weight"],
                                "TQ1_0": ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]}
    qkv = ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight")
    assert [piece.weight.type_name for piece in gpu.matrix(qkv)] == ["F32"]
    assert "no GPU kernel for TQ1_0 (2 tensors), TQ2_0 (2 tensors): held as F32" in gpu.describe()
    notices = [line for line in capfd.readouterr().err.splitlines() if "no GPU kernel" in line]
    assert len(notices) == 2 and "TQ2_0 weights (blk.0.attn_q.weight" in notices[0], notices
    assert "TQ1_0 weights (blk.0.ffn_down.weight" in notices[1]


@gpu
def test_size_limits_give_clear_errors(adapter, tmp_path):
    """What exceeds the adapter's storage binding limit fails at compile naming the limit and
    what did not fit (never a wgpu validation panic): a KV cache, an activation row. (A weight row
    too large fails in quant.split_rows, test_gpu_quant; in a model an activation row as wide as
    the weight's columns comes first.)"""
    import dataclasses

    from wgpu_llm.gpu.backend import GpuBackend
    from wgpu_llm.gpu.runtime import GpuError

    path = write_tiny_model(tmp_path / "llama.gguf", "llama", "Q8_0")  # d 64, 2 KV heads of 16, 267 tokens
    gf = GGUFFile(path)
    graph = architecture(gf).build_graph(gf, all_logits=False)

    def backend(n_ctx, max_binding):
        gpu = GpuBackend(gf, n_ctx, adapter)
        gpu.rt.caps = dataclasses.replace(gpu.rt.caps, max_binding=max_binding)
        return gpu

    with pytest.raises(GpuError, match=r"layer 0: a KV cache of 256 x 32 floats \(32768 bytes\) exceeds the "
                                       r"device's storage binding limit of 4096 bytes; use a smaller n_ctx"):
        backend(256, 4096).compile(graph, 1)
    # weight rows and the KV cache fit 1 KiB, a row of 267 logits does not
    with pytest.raises(GpuError, match=r"an activation of 1 x 267 floats \(1068 bytes\) exceeds the device's storage "
                                       r"binding limit \(1024 bytes\); one row does not fit"):
        backend(8, 1024).compile(graph, 1)
    with pytest.raises(GpuError, match="1 x 267 floats"):  # a longer step is chunked down to that one row
        backend(8, 1024).compile(graph, 4)


# ---- real models ----
def _real_model(name: str):
    from wgpu_llm import zoo

    return zoo.model_path(name)  # a model that cannot be fetched or fails its checksum fails the test


def real_model_check(name: str, adapter, prompt_len: int, n_greedy: int = 8):
    from wgpu_llm.gpu.backend import GpuBackend

    gf = GGUFFile(_real_model(name))
    arch = architecture(gf)
    n_ctx = prompt_len + n_greedy + 8
    t0 = time.perf_counter()
    gpu = GpuBackend(gf, n_ctx, adapter)
    full, last = arch.build_graph(gf, all_logits=True), arch.build_graph(gf, all_logits=False)
    prefill, decode = gpu.compile(full, prompt_len), gpu.compile(last, 1)
    load_s = time.perf_counter() - t0
    cpu = CpuBackend(gf, n_ctx)
    ids = np.random.default_rng(0).integers(10, 5000, prompt_len)
    t0 = time.perf_counter()
    got = prefill(ids, 0)
    prefill_s = time.perf_counter() - t0
    ref = cpu.compile(full, prompt_len)(ids, 0)
    err = nmse(got, ref)
    cpu_step = cpu.compile(last, 1)
    g_tok = c_tok = int(np.argmax(got[-1]))
    assert g_tok == int(np.argmax(ref[-1]))
    g_tokens, c_tokens, decode_errors = [], [], []
    decode_s = 0.0
    for i in range(n_greedy):
        pos, fed = prompt_len + i, g_tok
        t0 = time.perf_counter()
        g = decode(np.array([g_tok]), pos)
        decode_s += time.perf_counter() - t0
        c = cpu_step(np.array([c_tok]), pos)
        decode_errors.append(nmse(g, c))
        g_tok, c_tok = int(np.argmax(g[-1])), int(np.argmax(c[-1]))
        g_tokens.append(g_tok)
        c_tokens.append(c_tok)
    # the same last step again, argmax on the GPU (rewrites the same KV entries)
    assert decode.greedy(np.array([fed]), pos).tolist() == [g_tokens[-1]]
    print(f"\n{name} on {gpu.describe()}: load+compile {load_s:.1f}s, prefill {prompt_len} tokens "
          f"{prompt_len / prefill_s:.1f} tok/s, decode {n_greedy / decode_s:.1f} tok/s, "
          f"{decode.n_dispatches} dispatches/decode step, prefill NMSE {err:.2e}, "
          f"decode NMSE max {max(decode_errors):.2e}")
    assert err <= NMSE_TOL
    assert max(decode_errors) <= NMSE_TOL
    assert g_tokens == c_tokens


@gpu
def test_smollm2_gpu_matches_cpu(adapter):
    real_model_check("smollm2-135m", adapter, prompt_len=6)


@gpu
@pytest.mark.slow
def test_gemma3_gpu_matches_cpu(adapter):
    real_model_check("gemma3-270m", adapter, prompt_len=6)


# ---- adapter choice (no GPU needed: fake adapters) ----
def _fake(index, name, backend="Vulkan", kind="discrete", software=False):
    from wgpu_llm.gpu.device import AdapterInfo

    return AdapterInfo(index, name, "vendor", backend, kind, software, 1 << 27, 1 << 31, True, None, True, True,
                       adapter=f"adapter-{index}")


@pytest.fixture
def fake_adapters(monkeypatch):
    from wgpu_llm.gpu import device

    adapters = [_fake(0, "llvmpipe (LLVM 15)", kind="cpu", software=True),
                _fake(1, "Intel Iris Xe", kind="integrated"),
                _fake(2, "NVIDIA H100 (GL)", backend="OpenGL"),
                _fake(3, "NVIDIA H100", kind="discrete")]
    monkeypatch.setattr(device, "list_adapters", lambda: adapters)
    monkeypatch.delenv(device.ENV_SELECTOR, raising=False)
    return adapters


def test_choose_best_hardware(fake_adapters):
    from wgpu_llm.gpu.device import choose_adapter

    adapter, reason = choose_adapter(allow_software=False)
    assert adapter == "adapter-3" and "H100" in reason  # discrete, and Vulkan over OpenGL


def test_choose_by_selector(fake_adapters, monkeypatch):
    from wgpu_llm.gpu.device import ENV_SELECTOR, GpuUnavailable, choose_adapter

    assert choose_adapter(False, "1")[0] == "adapter-1"
    assert choose_adapter(False, "iris")[0] == "adapter-1"
    assert choose_adapter(False, "llvmpipe")[0] == "adapter-0"  # selected software is allowed
    monkeypatch.setenv(ENV_SELECTOR, "intel")
    assert choose_adapter(False)[0] == "adapter-1"
    with pytest.raises(GpuUnavailable, match="no adapter matches"):
        choose_adapter(False, "radeon")
    with pytest.raises(GpuUnavailable, match="out of range"):
        choose_adapter(False, "9")


def test_software_only_when_allowed(monkeypatch):
    from wgpu_llm.gpu import device

    monkeypatch.delenv(device.ENV_SELECTOR, raising=False)
    monkeypatch.setattr(device, "list_adapters", lambda: [_fake(0, "llvmpipe", kind="cpu", software=True)])
    with pytest.raises(device.GpuUnavailable, match="only software adapters"):
        device.choose_adapter(allow_software=False)
    assert device.choose_adapter(allow_software=True)[0] == "adapter-0"
    monkeypatch.setattr(device, "list_adapters", list)
    with pytest.raises(device.GpuUnavailable, match="no GPU adapter"):
        device.choose_adapter(allow_software=True)


def test_list_adapters_describes_each():
    from wgpu_llm.gpu.device import list_adapters

    for info in list_adapters():
        assert info.backend and info.name and info.max_storage_binding > 0
        assert info.describe().startswith("wgpu ")


@gpu
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tiny_models_with_split_decode_attention(adapter, tmp_path, monkeypatch, arch):
    """The GPU kernel choices (WGPU_LLM_FORCE_HARDWARE_KERNELS=1) with a context long enough for
    decode attention to split (n_ctx 600: 3 splits): decode steps at positions 130..134 see keys
    in all three splits (64, 64 and the rest), Gemma's sliding layers keep one workgroup per head;
    the logits still match the numpy backend's."""
    from wgpu_llm.gpu import kernels as K

    monkeypatch.setenv("WGPU_LLM_FORCE_HARDWARE_KERNELS", "1")
    shape = GEMMA_SHAPE if arch == "gemma3" else {}
    path = write_tiny_model(tmp_path / f"{arch}-split.gguf", arch, "F32", **shape)
    errors, gpu, step = compare_backends(path, adapter, n_prefill=130, n_decode=5, n_ctx=600)
    assert max(errors) <= NMSE_TOL, errors
    assert K.attention_variant(gpu.cfg, 600, 0).splits == 3
    labels = [k.label for k in step._kernels]
    merges = sum(label.endswith("(merge)") for label in labels)
    n_layer = GGUFFile(path).metadata[f"{arch}.block_count"]
    assert merges == (1 if arch == "gemma3" else n_layer), labels  # Gemma: the one global layer
