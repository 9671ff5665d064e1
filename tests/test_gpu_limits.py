"""Real models under a small storage-binding limit (WGPU_LLM_MAX_BINDING_BYTES = 16 MiB, what a
small GPU or a WebGPU default could give): every weight larger than the limit is split into row
pieces, no buffer exceeds it, a step too wide for it runs in chunks -- and the logits of every
prompt position equal those without the override (NMSE <= 1e-6), the greedy tokens too.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gpu_backend import nmse

from wgpu_llm import zoo
from wgpu_llm.gguf_file import GGUFFile
from wgpu_llm.gpu import device
from wgpu_llm.models import architecture

LIMIT = 16 << 20
PROMPT = 20  # Gemma 3's all-position logits (1 MiB a token) fit 16 tokens per step: two chunks
N_GREEDY = 8

pytestmark = pytest.mark.gpu


def run(gf, adapter):
    """(backend, all-position prefill logits, greedy tokens after the prompt) on the GPU backend."""
    from wgpu_llm.gpu.backend import GpuBackend

    arch = architecture(gf)
    gpu = GpuBackend(gf, PROMPT + N_GREEDY + 8, adapter)
    full, last = arch.build_graph(gf, all_logits=True), arch.build_graph(gf, all_logits=False)
    ids = np.random.default_rng(3).integers(10, 5000, PROMPT)
    prefill = gpu.compile(full, PROMPT)
    logits = prefill(ids, 0)
    tokens = list(gpu.compile(last, 1).greedy_loop(int(np.argmax(logits[-1])), PROMPT, N_GREEDY))
    return gpu, prefill, logits, tokens


@pytest.mark.parametrize("name", ["smollm2-135m", pytest.param("gemma3-270m", marks=pytest.mark.slow)])
def test_small_binding_limit_changes_nothing(adapter, monkeypatch, name):
    gf = GGUFFile(zoo.model_path(name))
    monkeypatch.delenv(device.ENV_MAX_BINDING, raising=False)
    wide, _, want_logits, want_tokens = run(gf, adapter)
    assert wide.rt.caps.max_binding > LIMIT
    monkeypatch.setenv(device.ENV_MAX_BINDING, str(LIMIT))
    gpu, prefill, logits, tokens = run(gf, adapter)
    assert gpu.rt.caps.max_binding == LIMIT

    split = []
    for names, pieces in gpu._matrices.items():
        total = sum(p.weight.nbytes() for p in pieces)
        assert all(plane.nbytes <= LIMIT for p in pieces for plane in p.weight.planes), names
        assert sum(p.weight.rows for p in pieces) == sum(p.weight.rows for p in wide._matrices[names])
        if max(sum(pl.nbytes for pl in p.weight.planes) for p in wide._matrices[names]) > LIMIT:
            assert len(pieces) > 1, f"{names}: {total} bytes in one piece"
            split.append(names)
    assert split, "no weight of this model is larger than the limit: the test proves nothing"
    assert all(b.size <= LIMIT for b in gpu.rt.pool.buffers)
    assert all(c.size <= LIMIT for c in [*gpu.k_cache.values(), *gpu.v_cache.values()])
    if name == "gemma3-270m":
        assert hasattr(prefill, "chunks") and len(prefill.chunks) == 2  # 16 + 4 tokens

    error = nmse(logits, want_logits)
    print(f"\n{name}: {len(split)} weights split at {LIMIT >> 20} MiB, logits NMSE {error:.2e} vs no override")
    assert error <= 1e-6
    assert tokens == want_tokens


def test_a_long_run_is_split_into_submissions(adapter, monkeypatch):
    """A step whose run took longer than the bound on one submission (WGPU_LLM_MAX_SUBMIT_S, here
    so small that every dispatch is too long) is submitted in parts afterwards: the same logits,
    bit for bit, every dispatch still counted once."""
    from wgpu_llm.gpu import runtime

    gf = GGUFFile(zoo.model_path("smollm2-135m"))
    monkeypatch.setenv(runtime.ENV_MAX_SUBMIT_S, "1e9")
    _, prefill, want_logits, want_tokens = run(gf, adapter)
    assert prefill.program.parts == 1

    monkeypatch.setenv(runtime.ENV_MAX_SUBMIT_S, "1e-9")
    gpu, prefill, logits, tokens = run(gf, adapter)
    program = prefill.program
    assert program.parts == program.n_dispatches  # the first run measured: one dispatch a submission
    ids = np.random.default_rng(3).integers(10, 5000, PROMPT)
    before = gpu.rt.dispatches
    split_logits = prefill(ids, 0)
    assert gpu.rt.dispatches - before == program.n_dispatches
    assert np.array_equal(split_logits, want_logits) and np.array_equal(logits, want_logits)
    assert tokens == want_tokens

    monkeypatch.delenv(runtime.ENV_MAX_SUBMIT_S)
    assert runtime.max_submit_seconds() == runtime.MAX_SUBMIT_S  # a hardware adapter's bound
    assert runtime.max_submit_seconds(software=True) == float("inf")  # no GPU watchdog watches a CPU
    for bad in ("0", "-1", "inf", "soon"):
        monkeypatch.setenv(runtime.ENV_MAX_SUBMIT_S, bad)
        with pytest.raises(ValueError, match=f"WGPU_LLM_MAX_SUBMIT_S={bad!r}: expected a number of seconds > 0"):
            runtime.max_submit_seconds()
