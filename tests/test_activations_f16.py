"""activations="f16" (LLM / GpuBackend / --activations): the prefill mat-mat with f16 staged tiles
(matmul.Tiles.f16; its kernel against the numpy twin is in tests/test_gpu_matmul.py), plumbing,
the f32 fallbacks, and its accuracy against f32 on the real models.

- LLM / CLI: "f32" | "f16"; a bad value's error; "f16" on the CPU backend is a ValueError (the CPU
  computes in f32), and "auto" that ends on the CPU runs f32 and says so in backend_reason.
- GPU, tiny model: the prefill compiles f16 mat-mat pipelines (decode: none), logits close to f32's;
  an adapter without shader-f16 runs f32 and says so (describe(), stderr).
- real models (slow, GPU): prefill logits NMSE of f16 vs f32 within ACTIVATIONS_F16_LOGITS_TOL at
  every position of a 44/45-token prompt (finite), and 8 greedy tokens equal.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tiny_models import write_tiny_model

from wgpu_llm import LLM
from wgpu_llm.tolerances import ACTIVATIONS_F16_LOGITS_TOL

gpu = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("act16")
    return str(write_tiny_model(d / "llama.gguf", "llama", "Q8_0", n_ctx=256))


@pytest.mark.parametrize("value", ["f8", "F16", "float16", "auto", None])
def test_bad_activations_value(tiny, value):
    with pytest.raises(ValueError, match=f"activations {value!r} is not one of f32, f16"):
        LLM(tiny, backend="cpu", n_ctx=32, activations=value)


def test_cpu_backend_refuses_f16(tiny):
    with pytest.raises(ValueError, match="activations 'f16' is a GPU option .* the cpu backend computes in f32"):
        LLM(tiny, backend="cpu", n_ctx=32, activations="f16")
    assert LLM(tiny, backend="cpu", n_ctx=32, activations="f32").backend.name == "cpu"


def test_auto_on_the_cpu_runs_f32(tiny, monkeypatch):
    """"auto" that finds no GPU it may use runs on the CPU, in f32, and says so."""
    from wgpu_llm.gpu import device

    def no_gpu(**_):
        raise device.GpuUnavailable("no hardware GPU (test)")
    monkeypatch.setattr(device, "choose_adapter", no_gpu)
    llm = LLM(tiny, backend="auto", n_ctx=32, activations="f16")
    assert llm.backend.name == "cpu"
    assert llm.backend_reason.endswith("; activations f32 (f16 is a GPU option)"), llm.backend_reason


def test_cli_activations_flag(tiny, opened):
    """--activations reaches LLM(activations=...); f16 with --backend cpu fails with the ValueError."""
    from click.testing import CliRunner

    from wgpu_llm import cli

    base = ["run", tiny, "-p", "the cat", "-n", "2", "--temperature", "0", "--backend", "cpu"]
    result = CliRunner().invoke(cli.main, base)
    assert result.exit_code == 0 and opened["activations"] == "f32", result.output
    result = CliRunner().invoke(cli.main, [*base, "--activations", "f16"])
    assert result.exit_code == 1 and opened["activations"] == "f16"
    assert "activations 'f16' is a GPU option" in result.output
    result = CliRunner().invoke(cli.main, [*base, "--activations", "bf16"])
    assert result.exit_code == 2 and "'bf16' is not one of 'f32', 'f16'" in result.output


def f16_pipelines(backend) -> int:
    return sum("enable f16;" in source for source, _ in backend.rt._pipelines)


@gpu
def test_gpu_prefill_runs_f16_tiles(tiny, adapter, monkeypatch):
    from test_gpu_backend import nmse

    from wgpu_llm.gguf_file import GGUFFile
    from wgpu_llm.gpu.backend import GpuBackend
    from wgpu_llm.gpu.device import adapter_info
    from wgpu_llm.models import architecture

    if not adapter_info(adapter).shader_f16:
        pytest.skip("this adapter has no shader-f16")
    monkeypatch.delenv("WGPU_LLM_PREFILL", raising=False)
    gf = GGUFFile(tiny)
    arch = architecture(gf)
    full, last = arch.build_graph(gf, all_logits=True), arch.build_graph(gf, all_logits=False)
    ids = np.random.default_rng(2).integers(0, gf.tensor("token_embd.weight").shape[0], 24)
    out = {}
    for activations in ("f32", "f16"):
        be = GpuBackend(gf, 64, adapter, activations=activations)
        be.compile(last, 1)
        assert f16_pipelines(be) == 0  # decode: the mat-vec, f32
        out[activations] = be.compile(full, len(ids))(ids, 0)
        assert (f16_pipelines(be) > 0) == (activations == "f16")
        assert be.activations == activations and ("prefill activations f16" in be.describe()) == (activations == "f16")
    assert np.isfinite(out["f16"]).all()
    assert 0 < nmse(out["f16"], out["f32"]) <= ACTIVATIONS_F16_LOGITS_TOL


@gpu
def test_gpu_without_shader_f16_runs_f32(tiny, adapter, monkeypatch, capsys):
    from wgpu_llm.gguf_file import GGUFFile
    from wgpu_llm.gpu import backend as B
    from wgpu_llm.models import architecture

    class NoF16(B.Runtime):
        def __init__(self, *args):
            super().__init__(*args)
            self.caps = dataclasses.replace(self.caps, shader_f16=False)

    monkeypatch.setattr(B, "Runtime", NoF16)
    gf = GGUFFile(tiny)
    be = B.GpuBackend(gf, 64, adapter, activations="f16")
    assert be.activations == "f32" and be.activations_asked == "f16"
    assert be.describe().endswith("; prefill activations f32 (f16 asked for: no shader-f16)")
    assert "has no shader-f16: the prefill mat-mat runs in f32" in capsys.readouterr().err
    be.compile(architecture(gf).build_graph(gf, all_logits=True), 16)
    assert f16_pipelines(be) == 0


# ---- the accuracy bound against f32, on the real models ----
PROMPT = ("The history of the bicycle begins in the early nineteenth century, when inventors in Germany and France "
          "built wooden machines that riders pushed along with their feet. Pedals attached to the front wheel came "
          "decades later, and the safety bicycle")
GREEDY = 8


def activations_f16_accuracy(model: str) -> dict:
    """The GPU backend with activations f16 vs f32: NMSE of the prefill logits at every position
    of PROMPT (one step: the tiled mat-mat), and the greedy tokens each generates."""
    from wgpu_llm.gpu import matmul

    out = {}
    for activations in ("f32", "f16"):
        with LLM(model, backend="gpu", n_ctx=128, activations=activations) as llm:
            assert llm.backend.activations == activations
            ids = llm.tokenize(PROMPT)
            assert matmul.prefill_path(len(ids)) == "tiled" and len(ids) <= llm.n_batch
            logits = llm.logits(ids).astype(np.float64)
            out[activations] = logits, llm.generate(ids, GREEDY, temperature=0, ignore_eos=True).tokens
    (ref, want), (got, tokens) = out["f32"], out["f16"]
    per_position = np.sum((got - ref) ** 2, -1) / np.sum(ref ** 2, -1)
    return {"prompt_tokens": len(ids), "finite": bool(np.isfinite(got).all()), "max_nmse": float(per_position.max()),
            "mean_nmse": float(per_position.mean()), "greedy_equal": tokens == want}


@pytest.mark.slow
@gpu
@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_f16_activations_accuracy_against_f32(model, adapter):
    from wgpu_llm.gpu.device import adapter_info

    if not adapter_info(adapter).shader_f16:
        pytest.skip("this adapter has no shader-f16")
    m = activations_f16_accuracy(model)
    print(model, m)
    assert m["finite"], m
    assert m["max_nmse"] <= ACTIVATIONS_F16_LOGITS_TOL, m
    assert m["greedy_equal"], m
