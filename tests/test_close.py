"""LLM.close() on tiny random models: memory freed at once on both backends, idempotent, `with`,
and a clear LLMClosed on any use afterwards."""

import pytest

from tiny_models import write_tiny_model
from wgpu_llm import LLM, LLMClosed

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("m") / "llama.gguf", "llama", "Q8_0", n_ctx=64)


def check_refused(llm: LLM) -> None:
    """Every call that uses the model raises LLMClosed naming the closed LLM."""
    calls = [lambda: llm.generate(PROMPT, max_tokens=2), lambda: "".join(llm.stream(PROMPT, max_tokens=2)),
             lambda: llm.logits([1, 2, 3]), lambda: llm.tokenize(PROMPT), lambda: llm.detokenize([1, 2]),
             lambda: llm.chat([{"role": "user", "content": "hi"}], max_tokens=2),
             lambda: llm.create_completion(PROMPT, max_tokens=2)]
    for call in calls:
        with pytest.raises(LLMClosed, match="this LLM is closed"):
            call()


def test_cpu_close_drops_weights_and_refuses_use(tiny_path):
    llm = LLM(tiny_path, backend="cpu", n_batch=8)
    before = llm.generate(PROMPT, max_tokens=4, temperature=0).tokens
    backend = llm.backend
    assert backend.weights and backend.k_cache and llm._steps
    llm.close()
    assert llm.closed and "closed" in repr(llm)
    assert not backend.weights and not backend.k_cache and not backend.v_cache and not llm._steps
    check_refused(llm)
    llm.close()  # idempotent
    with LLM(tiny_path, backend="cpu", n_batch=8) as again:  # a new one on the same file runs as before
        assert again.generate(PROMPT, max_tokens=4, temperature=0).tokens == before
    assert again.closed and not again.backend.weights


def test_with_closes_on_error(tiny_path):
    with pytest.raises(ZeroDivisionError):
        with LLM(tiny_path, backend="cpu") as llm:
            1 / 0
    assert llm.closed


def test_close_waits_for_an_open_generation_of_the_same_thread(tiny_path):
    """close() is one call like the others: an open stream must be finished or closed first."""
    from wgpu_llm import ReentrantCall

    llm = LLM(tiny_path, backend="cpu")
    pieces = llm.stream(PROMPT, max_tokens=8, ignore_eos=True)
    next(pieces)
    with pytest.raises(ReentrantCall):
        llm.close()
    pieces.close()
    llm.close()
    assert llm.closed


def test_gpu_close_destroys_every_device_buffer(tiny_path, adapter, monkeypatch):
    llm = LLM(tiny_path, backend="gpu", n_batch=8)
    before = llm.generate(PROMPT, max_tokens=4, temperature=0).tokens  # greedy loop on the GPU
    llm.generate(PROMPT, max_tokens=3, temperature=0.8, top_k=5, seed=1)  # the top-k programs too
    backend = llm.backend
    weights = [p for pieces in backend._matrices.values() for piece in pieces for p in piece.planes]
    caches = list(backend.k_cache.values()) + list(backend.v_cache.values())
    pool = list(backend.rt.pool.buffers)
    staging = [s.program.staging for s in llm._steps.values()]
    assert weights and caches and pool and all(staging)
    pieces = llm.stream(PROMPT, max_tokens=40, temperature=0, ignore_eos=True)
    next(pieces)
    pieces.close()  # steps queued ahead may still be running when close() destroys their buffers
    live = list(backend.rt._live)  # held here, so none is collected before close() destroys it
    destroyed = []
    buffer_class = type(weights[0])
    original = buffer_class.destroy
    monkeypatch.setattr(buffer_class, "destroy", lambda buf: (destroyed.append(id(buf)), original(buf))[1])
    llm.close()
    backend.rt.check("closing")  # raises what wgpu logged: nothing
    assert sorted(destroyed) == sorted(map(id, live))  # every buffer the runtime made, each once
    assert {id(b) for b in weights + caches + pool + staging} <= set(destroyed)
    assert not backend.rt.pool.buffers and not backend.rt.n_pipelines and not llm._steps
    check_refused(llm)
    llm.close()
    assert len(destroyed) == len(live)  # idempotent: nothing destroyed twice
    with LLM(tiny_path, backend="gpu", n_batch=8) as again:  # the adapter is still usable
        assert again.generate(PROMPT, max_tokens=4, temperature=0).tokens == before
