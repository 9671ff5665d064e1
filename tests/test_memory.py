"""Memory estimates against what the backends allocate, refusals before allocating, float16 weights."""

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import write_tiny_model

from wgpu_llm import LLM, memory
from wgpu_llm.cli import main

N_CTX = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("memory")
    models = {(arch, q): str(write_tiny_model(d / f"{arch}-{q}.gguf", arch, q, n_ctx=256))
              for arch, q in (("llama", "Q8_0"), ("gemma3", "Q4_0"), ("gpt2", "F16"), ("phi3", "F32"), ("llama", "F32"))}
    # one 256-weight super-block per row: an odd number of f16 scales, padded per row on the GPU
    models[("llama", "Q3_K")] = str(write_tiny_model(d / "llama-Q3_K.gguf", "llama", "Q3_K", n_ctx=256, d_model=256,
                                                     n_head=4, head_dim=64, d_ff=256, n_layer=1))
    return models


@pytest.fixture(autouse=True)
def check_on(monkeypatch):
    monkeypatch.delenv(memory.IGNORE_ENV, raising=False)


def graphs(llm):
    return list(llm._graphs.values())


def step_buffers(llm) -> int:
    """Bytes of every compiled step's activation buffers and of the rope tables."""
    b = llm.backend
    return (sum(buf.nbytes for step in llm._steps.values() for buf in step.buffers)
            + sum(c.nbytes + s.nbytes for c, s in b._rope_tables.values()))


@pytest.mark.parametrize("key", [("llama", "Q8_0"), ("gemma3", "Q4_0"), ("gpt2", "F16"), ("phi3", "F32")])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cpu_estimate_is_what_the_backend_holds(tiny, key, dtype):
    llm = LLM(tiny[key], backend="cpu", n_ctx=N_CTX, weights_dtype=dtype)
    est = memory.cpu_estimate(llm.file, graphs(llm), N_CTX, llm.n_batch, dtype)
    b = llm.backend
    assert est.weights == sum(w.nbytes for w in b.weights.values())  # exact
    assert est.kv_cache == sum(c.nbytes for c in [*b.k_cache.values(), *b.v_cache.values()])  # exact
    llm.logits(list(range(1, N_CTX)))  # the widest step: every row's logits
    llm.generate("the", max_tokens=4, temperature=0)
    assert 0 < step_buffers(llm) <= est.activations  # a bound
    assert {w.dtype for w in b.weights.values() if w.ndim > 1} == {np.dtype(dtype)}
    assert {w.dtype for w in b.weights.values() if w.ndim == 1} <= {np.dtype("float32")}


@pytest.mark.parametrize("key", [("llama", "Q8_0"), ("gemma3", "Q4_0"), ("gpt2", "F16"), ("llama", "Q3_K")])
def test_gpu_estimate_is_what_the_device_holds(tiny, key, adapter):
    llm = LLM(tiny[key], backend="gpu", n_ctx=N_CTX)
    est = memory.gpu_estimate(llm.file, graphs(llm), N_CTX, llm.n_batch)
    b = llm.backend
    assert est.weights == b.weight_bytes  # exact, padding included
    assert est.kv_cache == sum(buf.size for buf in [*b.k_cache.values(), *b.v_cache.values()])
    llm.logits(list(range(1, N_CTX)))
    assert est.weights + est.kv_cache < b.rt.allocated_bytes <= est.total


def expected_cpu_refusal(llm_path, est, free, f16_note):
    return (f"{llm_path.split('/')[-1]}: the cpu backend needs {est.describe()}, but the host has "
            f"{memory.describe_bytes(free)} available; options: a smaller quantization of the model; a shorter --ctx-size "
            f"(n_ctx, now {N_CTX}); {f16_note}; the gpu backend (--backend gpu); "
            f"WGPU_LLM_IGNORE_MEMORY_CHECK=1 skips this check")


def estimates(path, dtype="float32"):
    llm = LLM(path, backend="cpu", n_ctx=N_CTX, weights_dtype=dtype)
    return llm, memory.cpu_estimate(llm.file, graphs(llm), N_CTX, llm.n_batch, dtype)


def test_cpu_refusal_says_what_is_needed_available_and_what_to_do(tiny, monkeypatch):
    path = tiny[("llama", "F32")]
    _, est32 = estimates(path)
    _, est16 = estimates(path, "float16")
    assert est32.weights / 2 < est16.weights < 0.51 * est32.weights  # the norm vectors stay float32
    free = est16.total  # float16 fits, float32 does not
    monkeypatch.setattr(memory, "available_host_memory", lambda: free)
    with pytest.raises(memory.InsufficientMemory) as e:
        LLM(path, backend="cpu", n_ctx=N_CTX)
    assert str(e.value) == expected_cpu_refusal(path, est32, free,
                                                "--cpu-weights f16 (weights_dtype='float16'), which fits")
    assert "weights 308.0 KiB as float32" in str(e.value)
    assert LLM(path, backend="cpu", n_ctx=N_CTX, weights_dtype="float16").backend.weights_dtype == "float16"
    free = est16.total - 1  # neither fits
    with pytest.raises(MemoryError) as e:
        LLM(path, backend="cpu", n_ctx=N_CTX)
    assert str(e.value) == expected_cpu_refusal(
        path, est32, free, "--cpu-weights f16 (weights_dtype='float16') halves the weights but does not fit either")
    monkeypatch.setenv(memory.IGNORE_ENV, "1")  # the user knows better
    assert LLM(path, backend="cpu", n_ctx=N_CTX).backend.weights_dtype == "float32"


def test_refusal_comes_before_any_weight_is_loaded(tiny, monkeypatch):
    from cpu_fallback import backend

    monkeypatch.setattr(memory, "available_host_memory", lambda: 1000)
    monkeypatch.setattr(backend.CpuBackend, "__init__", lambda *a: pytest.fail("allocated before the check"))
    with pytest.raises(memory.InsufficientMemory, match="needs .* but the host has 1000 bytes available"):
        LLM(tiny[("llama", "F32")], backend="cpu", n_ctx=N_CTX)


def test_gpu_refusals(tiny, adapter):
    from wgpu_llm.gpu import device

    path = tiny[("llama", "Q8_0")]
    llm, _ = estimates(path)
    est = memory.gpu_estimate(llm.file, graphs(llm), N_CTX, llm.n_batch)
    info = dataclasses.replace(device.adapter_info(adapter), max_storage_binding=N_CTX * 32 * 4 - 16,
                               is_software=False, name="Small GPU")
    with pytest.raises(memory.InsufficientMemory) as e:  # one layer's K cache: 64 x (2 heads x 16) floats
        memory.check_gpu(path, llm.file, graphs(llm), N_CTX, llm.n_batch, info)
    assert str(e.value) == (
        f"llama-Q8_0.gguf: the gpu backend needs {est.describe()}, with one layer's K (and V) cache of 8.0 KiB"
        f" in one buffer, but Small GPU binds at most 8.0 KiB per buffer; options: a smaller quantization of the model; a shorter "
        f"--ctx-size (n_ctx, now {N_CTX}); the cpu backend (--backend cpu); WGPU_LLM_IGNORE_MEMORY_CHECK=1 skips "
        f"this check")
    software = dataclasses.replace(info, max_storage_binding=1 << 30, is_software=True, name="lavapipe")
    assert memory.check_gpu(path, llm.file, graphs(llm), N_CTX, llm.n_batch, software,
                            available=lambda: est.total).total == est.total
    with pytest.raises(memory.InsufficientMemory) as e:
        memory.check_gpu(path, llm.file, graphs(llm), N_CTX, llm.n_batch, software, available=lambda: est.total - 1)
    assert str(e.value).startswith(f"llama-Q8_0.gguf: the gpu backend needs {est.describe()}, but lavapipe is a "
                                   f"software adapter using host memory, of which {memory.describe_bytes(est.total - 1)} "
                                   f"is available; options: a smaller quantization")


def test_auto_falls_back_to_the_cpu_when_the_gpu_will_not_fit(tiny, adapter, monkeypatch, capsys):
    from wgpu_llm.gpu import device

    path = tiny[("llama", "F32")]
    llm, cpu_est = estimates(path)
    gpu_est = memory.gpu_estimate(llm.file, graphs(llm), N_CTX, llm.n_batch)
    assert cpu_est.total < gpu_est.total
    # auto takes this (software) adapter as if it were the best GPU; host memory fits the CPU only
    monkeypatch.setattr(device, "choose_adapter", lambda allow_software, selector=None: (adapter, "best GPU"))
    monkeypatch.setattr(memory, "available_host_memory", lambda: cpu_est.total)
    auto = LLM(path, backend="auto", n_ctx=N_CTX)
    assert auto.backend.name == "cpu"
    prefix = "cpu: the model does not fit the GPU ("
    assert auto.backend_reason.startswith(prefix + "llama-F32.gguf: the gpu backend needs")
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "does not fit" in line] == [
        f"wgpu-llm: the model does not fit the GPU, using the CPU: {auto.backend_reason[len(prefix):-1]}"]
    with pytest.raises(memory.InsufficientMemory, match="the gpu backend needs"):  # asked for: refused
        LLM(path, backend="gpu", n_ctx=N_CTX)
    monkeypatch.setattr(memory, "available_host_memory", lambda: cpu_est.total - 1)
    with pytest.raises(memory.InsufficientMemory, match="the gpu backend needs"):  # fits neither
        LLM(path, backend="auto", n_ctx=N_CTX)


def test_float16_weights_logits_close_to_float32(tiny):
    for key in (("llama", "Q8_0"), ("gemma3", "Q4_0"), ("phi3", "F32")):
        ids = list(range(1, 40))
        a = LLM(tiny[key], backend="cpu", n_ctx=N_CTX).logits(ids)
        b = LLM(tiny[key], backend="cpu", n_ctx=N_CTX, weights_dtype="float16").logits(ids)
        nmse = float(((a - b) ** 2).mean() / (a ** 2).mean())
        assert 0 < nmse < 1e-5, (key, nmse)  # measured 4e-8 .. 1.4e-6


def test_float16_weights_on_a_real_model(smollm_path):
    f32 = LLM(smollm_path, backend="cpu", n_ctx=128)
    f16 = LLM(smollm_path, backend="cpu", n_ctx=128, weights_dtype="float16")
    ids = f32.tokenize("The capital of France is Paris, and the capital of Germany is")
    a, b = f32.logits(ids), f16.logits(ids)
    nmse = float(((a - b) ** 2).mean() / (a ** 2).mean())
    assert 0 < nmse < 1e-5, nmse  # measured (README "Memory")
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9
    assert sum(w.nbytes for w in f16.backend.weights.values()) < 0.51 * sum(w.nbytes for w in f32.backend.weights.values())


def test_unknown_weights_dtype_is_refused(tiny):
    with pytest.raises(ValueError, match="weights_dtype 'int8' is not one of float32, float16"):
        LLM(tiny[("llama", "F32")], backend="cpu", n_ctx=N_CTX, weights_dtype="int8")


def test_cli_cpu_weights_flag(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path / "cache"))
    path = tiny[("llama", "F32")]
    _, est16 = estimates(path, "float16")
    monkeypatch.setattr(memory, "available_host_memory", lambda: est16.total)  # fits only as float16
    args = ["run", path, "-p", "the", "--backend", "cpu", "--ctx-size", str(N_CTX), "-n", "3", "--temperature", "0"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0
    assert "the cpu backend needs" in refused.stderr and "--cpu-weights f16" in refused.stderr
    assert "Traceback" not in refused.stderr
    ok = CliRunner().invoke(main, args[:1] + ["--cpu-weights", "f16"] + args[1:])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(main, args[:1] + ["--cpu-weights", "q8"] + args[1:])
    assert bad.exit_code == 2 and "'q8' is not one of 'f32', 'f16'" in bad.output
