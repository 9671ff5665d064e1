"""One LLM used from several threads at once (the backend holds one KV cache): calls are
serialized, so every thread gets exactly what it gets alone, on both backends; a call from a thread
whose own generation is still open is refused, naming that generation."""

import threading

import pytest

from tiny_models import write_tiny_model
from wgpu_llm import LLM, ReentrantCall

N_TOKENS = 16
# four jobs taking each sampling path: greedy, top-k, no filter at all, and the repetition penalty
# (on the GPU: the greedy loop, the top-k loop, two kinds of full-row readback); prompts of one length
# so a GPU backend compiles one prefill step
JOBS = [([5, 60, 61, 70, 80, 90], dict(temperature=0)),
        ([6, 71, 72, 73, 81, 91], dict(temperature=0.9, top_k=20, seed=3)),
        ([7, 40, 41, 42, 43, 44], dict(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, seed=5)),
        ([8, 50, 52, 54, 56, 58], dict(temperature=0.7, repeat_penalty=1.3, seed=1))]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("threads") / "llama.gguf", "llama", "Q8_0", n_ctx=128)


@pytest.fixture(scope="module", params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def llm(request, path):
    if request.param == "gpu":
        request.getfixturevalue("adapter")  # fails (CI) or skips where there is no GPU adapter
    return LLM(path, backend=request.param)


def in_threads(n: int, work) -> list:
    """work(i) in n threads started together; their results, or the first exception raised."""
    results, errors = [None] * n, []
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        try:
            results[i] = work(i)
        except BaseException as e:  # noqa: BLE001 -- handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "a thread is still running after 300 s (deadlock?)"
    if errors:
        raise errors[0]
    return results


def test_four_threads_get_what_each_gets_alone(llm):
    alone = [llm.generate(ids, N_TOKENS, ignore_eos=True, **kw) for ids, kw in JOBS]
    alone_logits = llm.logits(JOBS[0][0])
    assert len({tuple(c.tokens) for c in alone}) == 4  # four different texts: a mix-up would show

    def work(i):
        # each thread runs every job (its own first), then a stream and the logits
        out = [llm.generate(*JOBS[(i + k) % 4][:1], N_TOKENS, ignore_eos=True, **JOBS[(i + k) % 4][1])
               for k in range(4)]
        streamed = "".join(llm.stream(JOBS[i][0], N_TOKENS, ignore_eos=True, **JOBS[i][1]))
        return out, streamed, llm.logits(JOBS[0][0])

    for i, (out, streamed, logits) in enumerate(in_threads(4, work)):
        assert [c.tokens for c in out] == [alone[(i + k) % 4].tokens for k in range(4)], i
        assert [c.text for c in out] == [alone[(i + k) % 4].text for k in range(4)]
        assert streamed == alone[i].text
        assert (logits == alone_logits).all()


def test_an_open_stream_keeps_other_threads_waiting(llm):
    ids, kw = JOBS[1]
    want = llm.generate(ids, N_TOKENS, ignore_eos=True, **kw)
    held = llm.stream(JOBS[0][0], N_TOKENS, temperature=0)
    next(held)  # this thread now holds the LLM
    done = threading.Event()
    got = []

    def other():
        got.append(llm.generate(ids, N_TOKENS, ignore_eos=True, **kw))
        done.set()

    t = threading.Thread(target=other)
    t.start()
    assert not done.wait(0.5)  # (alone it takes a few ms)
    held.close()
    t.join(60)
    assert done.is_set() and got[0].tokens == want.tokens


def test_a_call_from_the_thread_of_an_open_stream_is_refused(llm):
    want = llm.generate("the cat", 4, temperature=0)
    held = llm.stream("the cat sat on the mat", N_TOKENS, temperature=0)
    next(held)
    message = "on this LLM while stream('the cat sat on the mat') of the same thread is still open"
    calls = {"generate('hi')": lambda: llm.generate("hi", 2),
             "logits([1, 2])": lambda: llm.logits([1, 2]),
             "stream([1, 2])": lambda: next(llm.stream([1, 2], 2)),
             "chat([{'role': 'user', 'conte...)": lambda: llm.chat([{"role": "user", "content": "hi"}], 2)}
    for call, f in calls.items():
        with pytest.raises(ReentrantCall) as refused:
            f()
        assert str(refused.value) == (f"{call} {message} (one call at a time): "
                                      f"exhaust that generator or call its close() first")
    # the tokenizer is not the backend: free to use meanwhile
    assert llm.detokenize(llm.tokenize("hi", add_special=False)) == "hi"
    assert llm.chat_prompt([{"role": "user", "content": "hi"}])
    next(held)  # the refusals left the open stream as it was
    held.close()
    assert llm.generate("the cat", 4, temperature=0).tokens == want.tokens


def test_an_abandoned_stream_frees_the_llm(llm):
    held = llm.stream("the cat", N_TOKENS, temperature=0)
    next(held)
    del held  # the garbage collector closes it
    assert len(llm.generate("the cat", 2, temperature=0, ignore_eos=True).tokens) == 2
    # exhausted: free as well
    assert "".join(llm.stream("the cat", 2, temperature=0, ignore_eos=True)) == llm.generate(
        "the cat", 2, temperature=0, ignore_eos=True).text


def test_a_stream_passed_to_another_thread_belongs_to_it(llm):
    held = llm.stream("the cat", N_TOKENS, temperature=0, ignore_eos=True)
    next(held)

    def other():
        next(held)  # resumed here: a call from this thread would wait for itself, so it is refused
        with pytest.raises(ReentrantCall):
            llm.generate("hi", 2)
        held.close()
        return llm.generate("hi", 2, temperature=0).tokens

    (tokens,) = in_threads(1, lambda i: other())
    assert tokens == llm.generate("hi", 2, temperature=0).tokens
