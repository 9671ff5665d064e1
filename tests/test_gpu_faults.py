"""GPU failures: wgpu's errors become GpuErrors naming what was being done; backend="auto" falls
back to the CPU when the GPU fails while loading or in the middle of a generation, and goes on
with the tokens the CPU alone would give; backend="gpu" raises.

Failures are injected with WGPU_LLM_INJECT_GPU_FAULT (wgpu_llm.gpu.runtime.FaultInjection), which
makes the runtime report them through the same checks real ones go through.
"""

from __future__ import annotations

import re

import pytest
from tiny_models import write_tiny_model

from wgpu_llm import LLM, GpuError

gpu = pytest.mark.gpu
ENV = "WGPU_LLM_INJECT_GPU_FAULT"
N_CTX = 64
PROMPT = [1, 5, 9, 2, 7, 3]
MAX_TOKENS = 12


GREEDY = {"temperature": 0}  # decided on the GPU by the greedy loop (several steps per submission)
TOP_K = {"temperature": 1.0, "top_k": 40, "seed": 11}  # the sampled GPU loop (its f32 draw agrees here)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    # seed 2: a continuation of PROMPT with 10 different tokens in 12, so a fallback that fed the
    # CPU the wrong tokens or positions shows (seed 0 repeats one token)
    return write_tiny_model(tmp_path_factory.mktemp("faults") / "llama-F32.gguf", "llama", "F32", seed=2)


@pytest.fixture(scope="module")
def cpu_runs(tiny_path):
    """Tokens of the CPU alone, by sampling: what every interrupted GPU run must give."""
    llm = LLM(tiny_path, backend="cpu", n_ctx=N_CTX)
    runs = {name: llm.generate(PROMPT, MAX_TOKENS, ignore_eos=True, **sampling).tokens
            for name, sampling in (("greedy", GREEDY), ("top_k", TOP_K))}
    assert len(set(runs["greedy"])) >= 8 and runs["top_k"] != runs["greedy"], runs
    return runs


@pytest.fixture(scope="module")
def cpu_tokens(cpu_runs):
    return cpu_runs["greedy"]


@pytest.fixture
def auto_takes(adapter, monkeypatch):
    """backend="auto" takes the test adapter (a software one, which auto would pass over)."""
    from wgpu_llm.gpu import device

    monkeypatch.setattr(device, "choose_adapter", lambda allow_software, selector=None: (adapter, "best GPU"))


def fallback_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "using the CPU" in line or "continuing on the CPU" in line]


@gpu
def test_uninterrupted_gpu_runs_match_the_cpu(tiny_path, cpu_runs, auto_takes):
    """The premise of the fallback tests: on this tiny model GPU and CPU pick the same tokens."""
    llm = LLM(tiny_path, backend="auto", n_ctx=N_CTX)
    assert llm.backend.name == "gpu"
    assert llm.generate(PROMPT, MAX_TOKENS, ignore_eos=True, **GREEDY).tokens == cpu_runs["greedy"]
    assert llm.generate(PROMPT, MAX_TOKENS, ignore_eos=True, **TOP_K).tokens == cpu_runs["top_k"]


@gpu
@pytest.mark.parametrize("sampling,after_steps,chunk", [("greedy", 0, 1), ("greedy", 1, 1), ("greedy", 4, 1),
                                                         ("greedy", 4, None), ("greedy", MAX_TOKENS - 1, 1),
                                                         ("top_k", 0, None), ("top_k", 5, None)])
def test_device_lost_mid_generation_continues_on_the_cpu(tiny_path, cpu_runs, auto_takes, monkeypatch, capsys,
                                                          sampling, after_steps, chunk):
    """The device is lost once `after_steps` steps (the prefill is one) were submitted: the
    generation goes on on the CPU with the same tokens as a CPU-only run, says so in one line,
    and the next call runs on the CPU too. chunk: the greedy loop's steps per submission."""
    monkeypatch.setenv(ENV, f"after_steps:{after_steps}")
    llm = LLM(tiny_path, backend="auto", n_ctx=N_CTX)
    llm.decode_chunk = chunk
    assert llm.backend.name == "gpu"
    stats = {}
    params = GREEDY if sampling == "greedy" else TOP_K
    pieces = list(llm.stream(PROMPT, MAX_TOKENS, ignore_eos=True, stats=stats, **params))
    cpu_tokens = cpu_runs[sampling]
    assert stats["tokens"] == cpu_tokens
    assert "".join(pieces) == llm.detokenize(cpu_tokens)
    assert llm.backend.name == "cpu" and stats["backend"] == "cpu"
    (line,) = fallback_lines(capsys.readouterr().err)
    assert line.startswith("wgpu-llm: the GPU failed, continuing on the CPU: ")
    assert "The WGPU device was lost (injected by WGPU_LLM_INJECT_GPU_FAULT" in line
    assert llm.backend_reason.startswith("cpu: the GPU failed (")
    # later calls: on the CPU, without another word
    assert llm.generate(PROMPT, MAX_TOKENS, ignore_eos=True, **params).tokens == cpu_tokens
    assert fallback_lines(capsys.readouterr().err) == []


@gpu
def test_device_lost_in_logits_continues_on_the_cpu(tiny_path, auto_takes, monkeypatch, capsys):
    import numpy as np

    reference = LLM(tiny_path, backend="cpu", n_ctx=N_CTX).logits(PROMPT)
    monkeypatch.setenv(ENV, "after_steps:0")
    llm = LLM(tiny_path, backend="auto", n_ctx=N_CTX)
    np.testing.assert_array_equal(llm.logits(PROMPT), reference)
    assert llm.backend.name == "cpu"
    assert len(fallback_lines(capsys.readouterr().err)) == 1


@gpu
def test_engine_requests_continue_on_the_cpu(tiny_path, auto_takes, monkeypatch, capsys):
    """The serving engine: a GPU failure while several requests run moves them all to the CPU,
    where they end with the tokens the CPU alone gives each."""
    from wgpu_llm.engine import DoneEvent, Engine
    from wgpu_llm.sampling import SamplingParams

    prompts = [PROMPT, [4, 8, 15, 16], [2, 3], [42, 7, 7, 1, 9]]
    cpu = LLM(tiny_path, backend="cpu", n_ctx=N_CTX)
    want = [cpu.generate(p, 8, temperature=0, ignore_eos=True).tokens for p in prompts]
    monkeypatch.setenv(ENV, "after_steps:6")
    llm = LLM(tiny_path, backend="auto", n_ctx=N_CTX)
    engine = Engine(llm, n_slots=2)
    try:
        requests = [engine.submit(p, 8, SamplingParams(temperature=0), ignore_eos=True) for p in prompts]
        events = [list(r) for r in requests]
    finally:
        engine.close()
    assert [[e.token for e in ev[:-1]] for ev in events] == want
    assert all(isinstance(ev[-1], DoneEvent) and ev[-1].finish_reason == "length" for ev in events)
    assert llm.backend.name == "cpu"
    assert len(fallback_lines(capsys.readouterr().err)) == 1


@gpu
def test_gpu_backend_raises_mid_generation(tiny_path, monkeypatch):
    """Asked for the GPU explicitly: its failure is the caller's to see."""
    monkeypatch.setenv(ENV, "after_steps:3")
    llm = LLM(tiny_path, backend="gpu", n_ctx=N_CTX)
    llm.decode_chunk = 1
    with pytest.raises(GpuError, match=r"^running the decode loop: The WGPU device was lost \(injected"):
        llm.generate(PROMPT, MAX_TOKENS, temperature=0, ignore_eos=True)
    assert llm.backend.name == "gpu"


@gpu
def test_auto_falls_back_to_the_cpu_when_loading_fails(tiny_path, cpu_tokens, auto_takes, monkeypatch, capsys):
    monkeypatch.setenv(ENV, "load")
    llm = LLM(tiny_path, backend="auto", n_ctx=N_CTX)
    assert llm.backend.name == "cpu"
    (line,) = fallback_lines(capsys.readouterr().err)
    assert line.startswith("wgpu-llm: the GPU failed while loading the model, using the CPU: creating the ")
    assert "buffer" in line and "out of memory: injected by WGPU_LLM_INJECT_GPU_FAULT" in line
    assert llm.backend_reason.startswith("cpu: the GPU failed while loading the model (creating the ")
    assert llm.generate(PROMPT, MAX_TOKENS, temperature=0, ignore_eos=True).tokens == cpu_tokens


@gpu
def test_gpu_backend_raises_when_loading_fails(tiny_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV, "load")
    with pytest.raises(GpuError, match=r"^creating the '.+' buffer \([0-9.]+ (bytes|KiB|MiB)\): out of memory: "
                                       r"injected by WGPU_LLM_INJECT_GPU_FAULT"):
        LLM(tiny_path, backend="gpu", n_ctx=N_CTX)
    assert fallback_lines(capsys.readouterr().err) == []


def test_a_bad_injection_is_named(monkeypatch):
    from wgpu_llm.gpu.runtime import FaultInjection

    monkeypatch.setenv(ENV, "after_steps:many")
    with pytest.raises(ValueError, match=r"WGPU_LLM_INJECT_GPU_FAULT='after_steps:many': expected 'load' or "):
        FaultInjection.from_env()


@gpu
def test_wgpu_validation_error_becomes_a_gpu_error(rt):
    """A real error from wgpu (not injected): a buffer over the device's max_buffer_size."""
    u = rt.wgpu.BufferUsage
    too_big = rt.caps.max_buffer + 16
    with pytest.raises(GpuError) as caught:
        rt.buffer(too_big, u.STORAGE, "huge activations")
    message = str(caught.value)
    assert message.startswith("creating the 'huge activations' buffer (")
    assert "GPUValidationError" in message
    assert re.search(rf"Buffer size \d+ is greater than the maximum buffer size \({rt.caps.max_buffer}\)", message)
    assert isinstance(caught.value.__cause__, rt.wgpu.GPUError)
    rt.buffer(16, u.STORAGE, "small")  # the device still works


def test_sizes_in_messages():
    from wgpu_llm.memory import describe_bytes

    assert [describe_bytes(n) for n in (16, 3584, 12 << 20, 3 << 29)] == ["16 bytes", "3.5 KiB", "12.0 MiB",
                                                                          "1.50 GiB"]
