"""`wgpu-llm verify` and the backend feature under it: capturing a step's activations on both
backends, and replaying a step of the numpy backend on activations given by the caller.

verify must pass on a healthy GPU (lavapipe here) and, with one kernel made faulty (its WGSL
perturbed by a test-only monkeypatch), exit 1 naming that kernel's op and layer first -- and only
that op: every later op is compared on the GPU's own inputs, so the fault does not spread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tiny_models import write_tiny_model
from wgpu_llm import models
from wgpu_llm.gguf_file import GGUFFile
from wgpu_llm.verify import divergence, fused_group

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """arch -> path of a tiny random model: llama (separate rope kernels, residual adds fused into
    linears) and gemma3 (q/k norms with the rope fused in, post-norms fused with the residual)."""
    d = tmp_path_factory.mktemp("verify")
    return {"llama": write_tiny_model(d / "llama.gguf", "llama", "Q8_0", n_ctx=64),
            "gemma3": write_tiny_model(d / "gemma3.gguf", "gemma3", "Q8_0", n_ctx=64)}


def _graph(path):
    gf = GGUFFile(path)
    return gf, models.architecture(gf).build_graph(gf, all_logits=False)


# ---- the backend feature: capture and replay ----
def test_capture_does_not_change_the_step_and_keeps_what_the_gpu_materialises(tiny, adapter):
    from cpu_fallback.backend import CpuBackend
    from wgpu_llm.gpu.backend import GpuBackend

    gf, g = _graph(tiny["gemma3"])
    ids = np.arange(5, 12, dtype=np.int32)
    gpu = GpuBackend(gf, 32, adapter)
    plain = gpu.compile(g, len(ids))(ids, 0).copy()
    step = gpu.compile(g, len(ids), capture="all")
    out = step(ids, 0)
    np.testing.assert_array_equal(out, plain)  # the copies aside change no kernel's work
    got = step.read_captured()
    np.testing.assert_array_equal(got[g.output], out)
    outs = {op.out for op in g.ops}
    assert set(got) < outs
    fused_away = {g.ops[i].out for i in step.fused}  # e.g. the rope fused into a norm: its output is the kernel's
    for i, op in enumerate(g.ops):
        # an op's output is missing only when a fusion keeps it inside a kernel, and then the
        # output of the op that took it over (or of an op it took over) is there
        if op.out not in got:
            assert any(g.ops[j].out in got for j in range(i, len(g.ops)) if i in fused_group(g, j, got)), op
    assert fused_away  # this graph has fusions: the test looks at them
    cpu_step = CpuBackend(gf, 32).compile(g, len(ids), capture="all")
    ref = cpu_step(ids, 0)
    mine = cpu_step.read_captured()
    assert set(mine) == outs
    np.testing.assert_array_equal(mine[g.output], ref)
    for name, value in got.items():
        assert divergence(value, mine[name])[0] < 1e-9, name


def test_capture_names_are_checked(tiny):
    from cpu_fallback.backend import CpuBackend

    gf, g = _graph(tiny["llama"])
    with pytest.raises(KeyError, match="no_such_activation"):
        CpuBackend(gf, 16).compile(g, 1, capture=["no_such_activation"])
    step = CpuBackend(gf, 16).compile(g, 1, capture=[g.ops[3].out])
    step(np.array([7]), 0)
    assert list(step.read_captured()) == [g.ops[3].out]


def test_replay_runs_each_op_on_the_given_values(tiny):
    from cpu_fallback import ops
    from cpu_fallback.backend import CpuBackend

    gf, g = _graph(tiny["llama"])
    ids = np.array([3, 9, 4], np.int32)
    step = CpuBackend(gf, 16).compile(g, len(ids), capture="all")
    step(ids, 0)
    own = step.read_captured()
    norm = next(op for op in g.ops if op.kind == "rms_norm")  # the first norm feeds the QKV linear
    linear = next(op for op in g.ops if op.inputs == (norm.out,))
    given = 2.0 * own[norm.out] + 1.0
    step.replay(ids, 0, {norm.out: given})
    replayed = step.read_captured()
    np.testing.assert_array_equal(replayed[norm.out], own[norm.out])  # the op's own result, captured first
    w = np.concatenate([gf.dequantize(n) for n in linear.weights])
    np.testing.assert_allclose(replayed[linear.out], ops.linear(given, w), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=re.escape(f"{norm.out} is (3, 64)")):
        step.replay(ids, 0, {norm.out: given[:1]})


# ---- the command ----
def _verify_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp/xdg")}
    return subprocess.run([sys.executable, "-m", "wgpu_llm.cli", "verify", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _checks_of(report: dict, name: str) -> list[dict]:
    return [c for c in report["checks"] if c["name"] == name]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_verify_passes_on_a_healthy_gpu(tiny, adapter, arch):
    r = _verify_cli(tiny[arch], "--json", "-n", "2")
    assert r.returncode == 0, r.stderr + r.stdout[-3000:]
    report = json.loads(r.stdout)
    assert report["ok"] and report["first_failure"] is None and report["n_failures"] == 0
    assert [s["kind"] for s in report["steps"]] == ["prefill", "decode", "decode"]
    assert report["tokens"][-2:] == report["gpu_next_tokens"][:2]  # decode steps fed the GPU's choices
    _, g = _graph(tiny[arch])
    compared = {c["name"] for c in report["checks"]}
    assert g.output in compared and len(compared) > len(g.ops) // 2
    assert {c["layer"] for c in report["checks"]} >= {0, 1}
    assert report["fused"] and set(report["not_materialised"]) == {op.out for op in g.ops} - compared
    for c in report["checks"]:
        assert c["nmse"] <= c["tolerance"], c


def test_verify_passes_on_gemma3_270m(gemma_path, adapter):
    r = _verify_cli(gemma_path, "-n", "1")
    assert r.returncode == 0, r.stderr + r.stdout[-3000:]
    assert "OK: all" in r.stdout and "layer" in r.stdout and "17 attn" in r.stdout  # 18 layers, grouped


def _perturbed(builder, target: str):
    """builder with the kernel computing activation `target` made faulty: every value it stores
    to its output is 0.1% too large (its WGSL changed), other kernels left as they are."""
    def faulty(*args, **kwargs):
        kernel = builder(*args, **kwargs)
        if not kernel.label.startswith(f"{target}:"):
            return kernel
        source, n = re.subn(r"(fn st_y\(i: u32, v: f32\) \{ buf\d+\[i\] = )v;", r"\1v * 1.001;", kernel.source)
        assert n == 1, kernel.source[:2000]
        return dataclasses.replace(kernel, source=source)
    return faulty


def _verify_faulty(monkeypatch, path, kernel: str, target: str, *options):
    """The verify command in this process, with one kernel builder of wgpu_llm.gpu.kernels faulty
    for `target`; (exit code, output)."""
    from wgpu_llm.cli import main
    from wgpu_llm.gpu import kernels

    monkeypatch.setattr(kernels, kernel, _perturbed(getattr(kernels, kernel), target))
    result = CliRunner().invoke(main, ["verify", str(path), "-n", "1", *options])
    return result.exit_code, result.output


def test_verify_points_at_a_faulty_rms_norm(tiny, adapter, monkeypatch):
    _, g = _graph(tiny["llama"])
    target = next(op.out for op in g.ops if op.weights == ("blk.1.ffn_norm.weight",))
    code, out = _verify_faulty(monkeypatch, tiny["llama"], "rms_norm", target, "--json")
    assert code == 1, out
    report = json.loads(out[out.index("{"):])
    first = report["first_failure"]
    assert (first["name"], first["kinds"], first["layer"], first["section"], first["step"]) == \
        (target, ["rms_norm"], 1, "ffn", 0)
    assert first["weights"] == ["blk.1.ffn_norm.weight"] and first["nmse"] > 1e-7
    # only that op: the ops after it get its (faulty) output as their input on both sides
    assert {c["name"] for c in report["checks"] if not c["ok"]} == {target}
    assert all(not c["ok"] for c in _checks_of(report, target))


def test_verify_points_at_a_faulty_rope_of_one_layer(tiny, adapter, monkeypatch):
    _, g = _graph(tiny["llama"])
    attention = next(op for op in g.ops if op.kind == "attention" and op.param("layer") == 1)
    q_rope, k_rope = attention.inputs[:2]  # one dispatch ropes q and k of a layer, named by q's rope
    code, out = _verify_faulty(monkeypatch, tiny["llama"], "rope", q_rope)
    assert code == 1, out
    text = " ".join(out.split())
    assert re.search(rf"First: layer 1 attention, {q_rope} \(rope\), prefill of \d+ tokens at position 0: "
                     rf"NMSE \S+ > 1e-13, max abs", text), text
    assert text.count("OVER") == 2  # q's rope and k's, nothing after them
    assert re.search(rf"{q_rope}\s+rope\s.*OVER", out) and re.search(rf"{k_rope}\s+rope\s.*OVER", out)


def test_verify_points_at_a_rope_fused_into_a_norm(tiny, adapter, monkeypatch):
    """gemma3's q and k norms run with their rope in one kernel: the fault shows at the kernel's
    output, the rope's, as rms_norm+rope, under the looser of the two tolerances."""
    _, g = _graph(tiny["gemma3"])
    attention = next(op for op in g.ops if op.kind == "attention" and op.param("layer") == 0)
    q_rope = attention.inputs[0]
    code, out = _verify_faulty(monkeypatch, tiny["gemma3"], "rms_norm", q_rope, "--json")
    assert code == 1, out
    first = json.loads(out[out.index("{"):])["first_failure"]
    assert (first["name"], first["kinds"], first["layer"], first["weights"]) == \
        (q_rope, ["rms_norm", "rope"], 0, ["blk.0.attn_q_norm.weight"])
    assert first["tolerance"] == 3e-12


def test_divergence():
    ref = np.array([[3.0, -4.0]], np.float32)
    assert divergence(ref, ref) == (0.0, 0.0)
    nmse, max_abs = divergence(np.array([[3.0, -3.0]], np.float32), ref)
    assert nmse == pytest.approx(1 / 25) and max_abs == 1.0
    assert divergence(np.array([[np.nan, -4.0]], np.float32), ref) == (float("inf"), float("inf"))
    assert divergence(np.array([[np.inf, -4.0]], np.float32), np.array([[np.inf, -4.0]], np.float32)) == (0.0, 0.0)
    assert divergence(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32)) == (0.0, 0.0)
    assert divergence(np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32))[0] == float("inf")


def test_verify_without_a_model_file_fails_naming_it(tmp_path):
    from wgpu_llm.cli import main

    result = CliRunner().invoke(main, ["verify", str(tmp_path / "missing.gguf")])
    assert result.exit_code == 1 and "missing.gguf: no such file" in result.output
