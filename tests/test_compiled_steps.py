"""The compiled steps an LLM keeps: at most MAX_COMPILED_STEPS besides the decode step, however many
prompt lengths it sees, least recently used dropped first; a dropped step compiled again gives
the same numbers."""

import numpy as np
import pytest

from tiny_models import write_tiny_model
from wgpu_llm import LLM
from wgpu_llm.api import DECODE_STEP, MAX_COMPILED_STEPS


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("m") / "llama.gguf", "llama", "Q8_0", n_ctx=64)


def check_bounded(llm: LLM) -> None:
    compiled = []
    compile_step = llm.backend.compile
    llm.backend.compile = lambda graph, n, **kw: (compiled.append(n), compile_step(graph, n, **kw))[1]
    ids = [int(t) for t in np.random.default_rng(0).integers(3, llm.n_vocab, 40)]
    lengths = range(2, 3 + 2 * MAX_COMPILED_STEPS)  # more distinct chunk lengths than the cap
    first = {n: llm.logits(ids[:n]) for n in lengths}
    assert len(llm._steps) == MAX_COMPILED_STEPS + 1 and DECODE_STEP in llm._steps
    greedy = {n: llm.generate(ids[:n], max_tokens=3, temperature=0, ignore_eos=True).tokens for n in lengths}
    assert len(llm._steps) == MAX_COMPILED_STEPS + 1 and DECODE_STEP in llm._steps
    assert compiled.count(1) == 0  # the decode step, built at load, was never dropped
    before = len(compiled)
    again = {n: llm.logits(ids[:n]) for n in lengths[:3]}  # dropped long ago: compiled again
    assert len(compiled) == before + 3
    for n in again:  # the same step shape gives the same numbers
        np.testing.assert_array_equal(again[n], first[n])
        assert greedy[n][0] == int(first[n][-1].argmax())
    llm.logits(ids[:lengths[2]])  # the most recent one is kept: no compile
    assert len(compiled) == before + 3


def test_cpu_steps_bounded(tiny_path):
    check_bounded(LLM(tiny_path, backend="cpu", n_batch=32))


def test_gpu_steps_bounded(tiny_path, adapter):
    with LLM(tiny_path, backend="gpu", n_batch=32) as llm:
        check_bounded(llm)
