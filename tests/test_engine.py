"""Several sequences on one model: steps over spans (KV-cache base rows, batched decode rows), the
Engine's slots, prefix reuse and cancellation, LLM.cache_prompt, and the OpenAI-shaped library calls."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tiny_models import write_tiny_model

from cpu_fallback import ops

from wgpu_llm import LLM
from wgpu_llm.api import ContextOverflow
from wgpu_llm.engine import DoneEvent, Engine, TokenEvent
from wgpu_llm.graph import Span
from wgpu_llm.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module", params=["llama", "gemma3", "gpt2"])
def llm(request, tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("engine") / f"{request.param}.gguf", request.param, n_ctx=512)
    return LLM(str(path), backend="cpu", n_ctx=256)


def _prefill(step_of, ids, pos0=0, base=0):
    return step_of(len(ids))(np.asarray(ids, np.int32), pos0, base).copy()


def test_a_sequence_at_another_cache_base_gives_the_same_logits(llm):
    ids = llm.tokenize("the cat sat on the mat")
    step_of = lambda n: llm._step(n, True)  # noqa: E731
    at_0 = _prefill(step_of, ids)
    at_100 = _prefill(step_of, ids, 0, 100)
    np.testing.assert_array_equal(at_0, at_100)
    # a decode step at base 100 sees what the prefill at base 100 wrote, not base 0's rows
    _prefill(step_of, llm.tokenize("something else entirely"), 0, 0)
    next_100 = _prefill(step_of, [5], len(ids), 100)
    _prefill(step_of, ids, 0, 0)
    np.testing.assert_array_equal(next_100, _prefill(step_of, [5], len(ids), 0))


@pytest.mark.parametrize("thin", [False, True], ids=["small weights", "thin products"])
def test_batched_decode_rows_equal_one_step_each(llm, thin, monkeypatch):
    if thin:  # the tiny weights are below the size that takes the blocked product for a few rows
        monkeypatch.setattr(ops, "THIN_MIN_BYTES", 0)
    prompts = [llm.tokenize(t) for t in ["the cat", "hello there the", "a", "in the beginning was"]]
    bases = [0, 64, 128, 192]
    for ids, base in zip(prompts, bases):
        _prefill(lambda n: llm._step(n, False), ids, 0, base)
    spans = [Span(len(ids), 1, base) for ids, base in zip(prompts, bases)]
    tokens = np.array([7, 8, 9, 10], np.int32)
    batched = llm._step(4, True).spans(tokens, spans).copy()
    single = [llm._step(1, False)(tokens[i:i + 1], s.pos0, s.base).copy() for i, s in enumerate(spans)]
    np.testing.assert_allclose(batched, np.concatenate(single), rtol=0, atol=2e-6 * np.abs(batched).max())
    assert [int(r.argmax()) for r in batched] == [int(r.argmax()) for r in np.concatenate(single)]


def test_spans_are_checked(llm):
    step = llm._step(2, True)
    with pytest.raises(ValueError, match="step compiled for 2 tokens got spans of 3"):
        step.spans(np.array([1, 2]), [Span(0, 1), Span(0, 2, 10)])
    with pytest.raises(ValueError, match="exceed the context size 256"):
        step.spans(np.array([1, 2]), [Span(0, 1), Span(10, 1, 250)])


def _tokens(request) -> tuple[list[int], DoneEvent]:
    events = list(request)
    assert isinstance(events[-1], DoneEvent) and all(isinstance(e, TokenEvent) for e in events[:-1])
    return [e.token for e in events[:-1]], events[-1]


def test_engine_requests_equal_the_library_alone(llm):
    prompts = [llm.tokenize(t) for t in ["the cat", "hello there the", "a", "in the beginning was", "s t r", "he"]]
    want = [llm.generate(p, 12, temperature=0, ignore_eos=True).tokens for p in prompts]
    engine = Engine(llm, n_slots=3)
    try:
        requests = [engine.submit(p, 12, GREEDY, ignore_eos=True) for p in prompts]
        got = [_tokens(r) for r in requests]
    finally:
        engine.close()
    assert [tokens for tokens, _ in got] == want
    assert all(done.finish_reason == "length" and done.stats["generated_tokens"] == 12 for _, done in got)


def test_prefix_reuse_and_seeded_sampling(llm):
    prompt = llm.tokenize("the cat sat on the mat and the cat sat")
    sampling = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3)
    engine = Engine(llm, n_slots=2)
    try:
        first, done1 = _tokens(engine.submit(prompt, 10, sampling, ignore_eos=True))
        second, done2 = _tokens(engine.submit(prompt + [5], 10, sampling, ignore_eos=True))
        again, done3 = _tokens(engine.submit(prompt, 10, sampling, ignore_eos=True))
    finally:
        engine.close()
    assert done1.stats["cached_tokens"] == 0
    assert done2.stats["cached_tokens"] == len(prompt)  # the slot holds the whole first prompt
    assert done3.stats["cached_tokens"] == len(prompt) - 1  # its last token is computed again for its logits
    assert again == first


def test_cancel_frees_the_slot_at_once(llm):
    """A request cancelled (here by its own consumer, on its 5th token) stops at the next step and
    its slot goes to the request waiting for it."""
    engine = Engine(llm, n_slots=1)
    events = []

    def on_event(event):
        events.append(event)
        if len(events) == 5:
            long.cancel()

    try:
        long = engine.submit(llm.tokenize("a"), 200, GREEDY, ignore_eos=True, on_event=on_event)
        waiting = engine.submit(llm.tokenize("the"), 3, GREEDY, ignore_eos=True)
        tokens, done = _tokens(waiting)
        assert len(tokens) == 3 and done.finish_reason == "length"
        assert isinstance(events[-1], DoneEvent) and events[-1].finish_reason == "cancelled"
        assert len(events) <= 7  # 5 tokens, at most the one of the step already running, the end
    finally:
        engine.close()


def test_limits(llm):
    engine = Engine(llm, n_slots=4)  # 64 positions a slot
    try:
        with pytest.raises(ContextOverflow, match="a slot holds 64"):
            engine.submit(list(range(3, 67)), 1)
        tokens, done = _tokens(engine.submit(list(range(3, 63)), 100, GREEDY, ignore_eos=True))
        assert len(tokens) == 4 and done.finish_reason == "length"  # the slot is full
        tokens, done = _tokens(engine.submit([3, 4], 0, GREEDY))
        assert tokens == [] and done.finish_reason == "length"
        with pytest.raises(ValueError, match="token id 99999 out of range"):
            engine.submit([99999], 1)
    finally:
        engine.close()
    with pytest.raises(ValueError, match="n_slots=200"):
        Engine(llm, n_slots=200)


def test_logprobs(llm):
    engine = Engine(llm, n_slots=1)
    try:
        events = list(engine.submit(llm.tokenize("the"), 4, GREEDY, ignore_eos=True, logprobs=5))
    finally:
        engine.close()
    want = llm.logits(llm.tokenize("the"))[-1].astype(np.float64)
    lp = want - want.max() - np.log(np.exp(want - want.max()).sum())
    first = events[0]
    assert first.token == int(want.argmax()) and first.logprob == pytest.approx(lp.max(), abs=1e-5)
    assert [t for t, _ in first.top_logprobs] == list(np.argsort(-lp, kind="stable")[:5])


def test_a_backend_failure_reaches_the_request_and_the_engine_goes_on(llm, monkeypatch):
    engine = Engine(llm, n_slots=1)
    try:
        real = llm._step

        def broken(n, all_rows):
            raise RuntimeError("device lost")

        monkeypatch.setattr(llm, "_step", broken)
        with pytest.raises(RuntimeError, match="device lost"):
            list(engine.submit(llm.tokenize("the"), 2, GREEDY))
        monkeypatch.setattr(llm, "_step", real)
        tokens, _ = _tokens(engine.submit(llm.tokenize("the"), 2, GREEDY, ignore_eos=True))
        assert len(tokens) == 2
    finally:
        engine.close()


def test_requests_from_many_threads(llm):
    prompts = [llm.tokenize(t) for t in ["the cat", "a", "he said", "on and on"]]
    want = [llm.generate(p, 8, temperature=0, ignore_eos=True).tokens for p in prompts]
    engine = Engine(llm, n_slots=2)
    got = {}
    try:
        def ask(i):
            got[i] = _tokens(engine.submit(prompts[i], 8, GREEDY, ignore_eos=True))[0]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        engine.close()
    assert [got[i] for i in range(4)] == want


def test_cache_prompt_reuses_the_previous_prefix(llm):
    prompt = llm.tokenize("the cat sat on the mat")
    fresh = llm.generate(prompt, 6, temperature=0, ignore_eos=True)
    llm.cache_prompt = True
    try:
        llm.generate(prompt[:4], 3, temperature=0)
        reused = llm.generate(prompt, 6, temperature=0, ignore_eos=True)
        assert reused.stats["cached_tokens"] == 4 and reused.tokens == fresh.tokens
        llm.logits(prompt[:2])
        assert llm.generate(prompt, 6, temperature=0, ignore_eos=True).stats["cached_tokens"] == 2
    finally:
        llm.cache_prompt = False
    assert llm.generate(prompt, 1).stats["cached_tokens"] == 0


def test_openai_shaped_library_calls(llm):
    whole = llm.create_completion("the cat", max_tokens=8, temperature=0, ignore_eos=True, logprobs=2)
    assert whole["object"] == "text_completion" and whole["usage"]["completion_tokens"] == 8
    assert whole["choices"][0]["text"] == llm.generate("the cat", 8, temperature=0, ignore_eos=True).text
    assert len(whole["choices"][0]["logprobs"]["token_logprobs"]) == 8
    chunks = list(llm.create_completion("the cat", max_tokens=8, temperature=0, ignore_eos=True, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    chat = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0,
                                      ignore_eos=True, logprobs=True, top_logprobs=1)
    assert chat["object"] == "chat.completion" and len(chat["choices"][0]["logprobs"]["content"]) == 4
    with pytest.raises(ValueError, match=r"top_p=2.0 must be in \(0, 1\]"):
        llm.create_completion("a", top_p=2)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_gpu_batched_decode_rows_equal_one_step_each(arch, adapter, tmp_path):
    """The GPU's batched step: rows of sequences at other positions and cache bases (the row table)."""
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, n_ctx=512)
    gpu = LLM(str(path), backend="gpu", n_ctx=256, kv_cache="f32")  # as the CPU's
    prompts = [gpu.tokenize(t) for t in ["the cat", "hello there the", "a", "in the beginning was the"]]
    bases = [0, 64, 128, 192]
    for ids, base in zip(prompts, bases):
        gpu._step(len(ids), False)(np.asarray(ids, np.int32), 0, base)
    spans = [Span(len(ids), 1, base) for ids, base in zip(prompts, bases)]
    tokens = np.array([7, 8, 9, 10], np.int32)
    batched = gpu._step(4, True, batched=True).spans(tokens, spans).copy()
    single = np.concatenate([gpu._step(1, False)(tokens[i:i + 1], s.pos0, s.base).copy() for i, s in enumerate(spans)])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5 * np.abs(single).max())
    cpu = LLM(str(path), backend="cpu", n_ctx=256)
    for ids, base in zip(prompts, bases):
        cpu._step(len(ids), False)(np.asarray(ids, np.int32), 0, base)
    want = cpu._step(4, True, batched=True).spans(tokens, spans)
    np.testing.assert_allclose(batched, want, rtol=0, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match="need a step compiled batched"):
        gpu._step(4, True).spans(tokens, spans)


@pytest.mark.gpu
def test_gpu_batched_decode_with_split_attention(adapter, tmp_path, monkeypatch):
    """The batched step with decode attention split over the context (the GPU choices,
    n_ctx 512: 2 splits of at least 64 keys): rows at positions on both sides of 64, at other cache
    bases, against the numpy backend's batched step."""
    from wgpu_llm.gpu import kernels as K

    monkeypatch.setenv("WGPU_LLM_FORCE_HARDWARE_KERNELS", "1")
    path = write_tiny_model(tmp_path / "llama.gguf", "llama", n_ctx=512)
    gpu = LLM(str(path), backend="gpu", n_ctx=512, kv_cache="f32")  # the CPU's cache type, not the forced auto's
    cpu = LLM(str(path), backend="cpu", n_ctx=512)
    assert K.attention_variant(gpu.backend.cfg, 512, 0).splits == 2
    prompts = [[(7 * i + j) % 50 + 3 for j in range(n)] for i, n in enumerate((3, 63, 64, 120))]
    bases = [0, 128, 256, 384]
    for llm in (gpu, cpu):
        for ids, base in zip(prompts, bases):
            llm._step(len(ids), False)(np.asarray(ids, np.int32), 0, base)
    spans = [Span(len(ids), 1, base) for ids, base in zip(prompts, bases)]
    tokens = np.array([7, 8, 9, 10], np.int32)
    got = gpu._step(4, True, batched=True).spans(tokens, spans)
    want = cpu._step(4, True, batched=True).spans(tokens, spans)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_engine_on_the_gpu_equals_the_cpu(arch, adapter, tmp_path):
    """Slots at other cache bases through the GPU's attention kernels (decode and flash prefill)."""
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, n_ctx=512)
    cpu = LLM(str(path), backend="cpu", n_ctx=256)
    gpu = LLM(str(path), backend="gpu", n_ctx=256, kv_cache="f32")  # as the CPU's
    prompts = [cpu.tokenize(t) for t in ["the cat sat on the mat", "hello there the", "in the beginning was"]]
    want = [cpu.generate(p, 10, temperature=0, ignore_eos=True).tokens for p in prompts]
    engine = Engine(gpu, n_slots=3)
    try:
        requests = [engine.submit(p, 10, GREEDY, ignore_eos=True) for p in prompts]
        assert [_tokens(r)[0] for r in requests] == want
        # the prompt's prefix cached in a slot at base 0 or above, the rest prefilled by the GPU
        tokens, done = _tokens(engine.submit(prompts[2] + [9, 10], 10, GREEDY, ignore_eos=True))
        assert done.stats["cached_tokens"] == len(prompts[2])
        assert tokens == cpu.generate(prompts[2] + [9, 10], 10, temperature=0, ignore_eos=True).tokens
    finally:
        engine.close()
