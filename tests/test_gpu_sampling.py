"""Sampling on the GPU (wgpu_llm/gpu/sample.py): the draw kernel (shaders/sample.wgsl) and the
repetition-penalty kernel (shaders/repeat_penalty.wgsl) against their numpy twins
(wgpu_llm.sampling), and the sampled decode loop (`_GpuStep.sample_loop`) against the host chain
run step by step on the CPU backend's logits.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import write_tiny_model

from wgpu_llm import LLM
from wgpu_llm.sampling import (SamplingParams, apply_repeat_penalty, draw_index, min_p_filter, softmax,
                               top_k_filter, top_p_filter)

pytestmark = pytest.mark.gpu


def host_draw(ids, cand, params: SamplingParams, u: float) -> int:
    """Sampler.finish with the given uniform (its twin: draw_index is numpy's choice)."""
    ids, cand = top_p_filter(ids, cand, params.top_p)
    ids, cand = min_p_filter(ids, cand, params.min_p)
    return int(ids[draw_index(softmax(cand.astype(np.float64) / params.temperature), u)])


def boundaries(cand, params: SamplingParams) -> np.ndarray:
    """The host's cdf over the candidates the chain keeps (where a draw changes its answer)."""
    ids, kept = top_p_filter(np.arange(len(cand)), cand, params.top_p)
    ids, kept = min_p_filter(ids, kept, params.min_p)
    cdf = np.cumsum(softmax(kept.astype(np.float64) / params.temperature))
    return cdf / cdf[-1]


class DrawRig:
    """The draw kernel alone: k candidate pairs and the state buffer uploaded, run at a position."""

    def __init__(self, adapter, k: int, n_ctx: int = 64):
        from wgpu_llm.gpu import sample
        from wgpu_llm.gpu.runtime import Program, Runtime

        self.rt, self.k, self.n_ctx = Runtime(adapter), k, n_ctx
        self.pairs = self.rt.storage(8 * k, "pairs")
        self.state = self.rt.storage(4 * sample.state_words(n_ctx), "state")
        self.ids, self.out = self.rt.storage(4, "ids"), self.rt.storage(4, "out")
        self.program = Program(self.rt, [sample.draw(k, self.pairs, self.state, self.ids, self.out)], "draw",
                               [(self.out, 0, 4), (self.ids, 0, 4), (self.state, 0, 4 * (sample.HEAD + sample.RING))])

    def __call__(self, ids, cand, params: SamplingParams, u: float, pos: int = 5) -> tuple[int, int, np.ndarray]:
        from wgpu_llm.gpu import sample

        pairs = np.full((self.k, 2), sample.NONE, np.uint32)
        pairs[:len(ids), 0] = np.asarray(cand, np.float32).view(np.uint32)
        pairs[:len(ids), 1] = ids
        words = sample.settings(params.temperature, params.top_p, params.min_p, 1.0, 0)
        uniforms = np.zeros(self.n_ctx, np.float32)
        uniforms[pos] = u
        state = np.concatenate([words, np.zeros(sample.RING, np.uint32), uniforms.view(np.uint32)])
        out, fed, head = self.program.run(pos, 1, [(self.pairs, pairs), (self.state, state)])
        ring = head.view(np.uint32)[sample.HEAD:]
        return int(out.view(np.uint32)[0]), int(fed.view(np.uint32)[0]), ring


CASES = [  # (name, k, params)
    ("defaults", 40, SamplingParams()),
    ("no filters", 40, SamplingParams(temperature=1.0, top_p=1.0, min_p=0.0)),
    ("tight", 100, SamplingParams(temperature=0.5, top_p=0.5, min_p=0.2)),
    ("hot", 128, SamplingParams(temperature=3.0, top_p=0.99, min_p=0.01)),
    ("k=1", 1, SamplingParams(temperature=0.7)),
]


@pytest.mark.parametrize("values", ["normal", "negative", "ties"])
@pytest.mark.parametrize("name,k,params", CASES, ids=[c[0] for c in CASES])
def test_draw_kernel_matches_host_away_from_boundaries(adapter, name, k, params, values):
    """Uniforms well inside each kept candidate's cdf interval (and at 0): the host's token exactly;
    also written as the next input and into the ring at the next position."""
    from wgpu_llm.gpu import sample

    rng = np.random.default_rng(k)
    width = 500
    logits = (rng.standard_normal(width) * 3).astype(np.float32)
    if values == "negative":
        logits = logits - 40
    elif values == "ties":  # a few distinct values: ties inside and across the k-th
        logits = rng.integers(-3, 3, width).astype(np.float32)
    ids, cand = top_k_filter(np.arange(width), logits, k)
    draw = DrawRig(adapter, k)
    cdf = boundaries(cand, params)
    lows = np.concatenate([[0.0], cdf[:-1]])
    for lo, hi in zip(lows, cdf):
        if hi - lo < 1e-4:
            continue  # too thin to stay clear of f32 rounding
        for u in ((lo + hi) / 2, 0.0) if lo == 0 else ((lo + hi) / 2,):
            want = host_draw(ids, cand, params, u)
            got, fed, ring = draw(ids, cand, params, u, pos=7)
            assert got == want and fed == want, (u, got, want)
            assert ring[8 % sample.RING] == want


def test_draw_kernel_agrees_on_random_draws(adapter):
    """Random logits and uniforms: the f32 draw differs from numpy's f64 one only at cdf
    boundaries, about k * 1e-7 per draw (sample.py's docstring): none in 300 expected."""
    rng = np.random.default_rng(0)
    draw = DrawRig(adapter, 40)
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)
    agree = 0
    n = 300
    for _ in range(n):
        logits = (rng.standard_normal(2000) * rng.uniform(0.5, 4)).astype(np.float32)
        ids, cand = top_k_filter(np.arange(2000), logits, 40)
        u = rng.random()
        agree += draw(ids, cand, params, u)[0] == host_draw(ids, cand, params, u)
    assert agree >= n - 1, f"{agree} of {n}"


def test_draw_kernel_top_p_reaching_p_exactly(adapter):
    """top_p's searchsorted semantics: the prefix stops at the first candidate whose cumulative
    mass reaches p (here exactly 0.5 with two equal logits), and a padded row (k > candidates)."""
    draw = DrawRig(adapter, 8)
    params = SamplingParams(temperature=1.0, top_p=0.5, min_p=0.0)
    ids, cand = np.array([11, 3]), np.array([1.0, 1.0], np.float32)
    assert host_draw(ids, cand, params, 0.99) == 11  # mass 0.5 reaches p: only the first
    assert draw(ids, cand, params, 0.99)[0] == 11
    params = SamplingParams(temperature=1.0, top_p=1.0, min_p=0.0)
    assert draw(ids, cand, params, 0.75)[0] == host_draw(ids, cand, params, 0.75) == 3


def test_draw_kernel_refuses_non_finite_candidates(adapter):
    from wgpu_llm.gpu import sample

    draw = DrawRig(adapter, 4)
    ids, cand = np.array([1, 2, 3, 4]), np.array([np.inf, 1.0, 0.5, 0.0], np.float32)
    got, fed, _ = draw(ids, cand, SamplingParams(), 0.3)
    assert got == sample.NONE and fed == 0


# ---- the repetition penalty ----
@pytest.mark.parametrize("last_n,pos,penalty", [(64, 40, 1.3), (64, 200, 1.3), (256, 300, 0.8), (5, 9, 2.0),
                                                (1, 3, 1.1)])
def test_repeat_penalty_kernel_matches_host(adapter, last_n, pos, penalty):
    """Distinct ids of the last repeat_last_n positions (duplicates penalised once), logits of
    both signs and zero, fewer positions than repeat_last_n at the start of the context."""
    from wgpu_llm.gpu import kernels as K
    from wgpu_llm.gpu import sample
    from wgpu_llm.gpu.runtime import Program, Runtime

    rt = Runtime(adapter)
    rng = np.random.default_rng(pos)
    width, n_ctx = 300, 512
    logits = (rng.standard_normal(width) * 3).astype(np.float32)
    logits[:4] = 0.0
    history = rng.integers(0, 40, pos + 1).tolist()  # small ids: many duplicates
    history[-1] = 2  # a zero logit, penalised (0 * penalty)
    ring = np.zeros(sample.RING, np.uint32)
    for p, t in enumerate(history):
        ring[p % sample.RING] = t
    words = sample.settings(0.8, 0.95, 0.05, penalty, last_n)
    state = rt.upload(np.concatenate([words, ring, np.zeros(n_ctx, np.uint32)]), "state")
    off = 3
    row = rt.upload(np.concatenate([np.zeros(off, np.float32), logits]), "logits")
    kernel = sample.repeat_penalty(width, K.View(row, off, width), state)
    (data,) = Program(rt, [kernel], "penalty", [(row, 4 * off, 4 * width)]).run(pos, 1)
    got = data.view(np.float32)
    want = apply_repeat_penalty(logits, history[-last_n:], penalty)
    # WGSL's f32 division is exact to 2.5 ulp, numpy's to 0.5
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=0)
    assert (got != logits).sum() == (want != logits).sum()


def test_settings_refuse_a_window_larger_than_the_ring():
    from wgpu_llm.gpu import sample

    with pytest.raises(ValueError, match="repeat_last_n"):
        sample.settings(0.8, 0.95, 0.05, 1.1, sample.RING + 1)


# ---- the sampled loop ----
@pytest.fixture(scope="module", params=["llama", "gemma3"])
def pair(request, adapter, tmp_path_factory):
    from test_gpu_backend import GEMMA_SHAPE

    arch = request.param
    path = write_tiny_model(tmp_path_factory.mktemp("m") / f"{arch}.gguf", arch, "Q8_0", n_ctx=96,
                            **(GEMMA_SHAPE if arch == "gemma3" else {}))
    return LLM(path, backend="gpu", n_batch=8, kv_cache="f32"), LLM(path, backend="cpu", n_batch=8)


def host_loop(cpu: LLM, token: int, pos0: int, n: int, params: SamplingParams, uniforms, history) -> list[int]:
    """The chain on the host, step by step, on the CPU backend's logits."""
    step, history, out = cpu._step(1, False), list(history), []
    for i in range(n):
        logits = step(np.array([token]), pos0 + i)[-1]
        if params.repeat_last_n:
            logits = apply_repeat_penalty(logits, history[-params.repeat_last_n:], params.repeat_penalty)
        ids, cand = top_k_filter(np.arange(len(logits)), logits, params.top_k)
        token = host_draw(ids, cand, params, uniforms[i])
        out.append(token)
        history.append(token)
    return out


LOOP_PARAMS = [SamplingParams(temperature=20.0, top_k=40, top_p=0.99, min_p=0.001),
               SamplingParams(temperature=20.0, top_k=20, top_p=1.0, min_p=0.0, repeat_penalty=3.0, repeat_last_n=16)]


@pytest.mark.parametrize("chunk", [1, 4, None])
@pytest.mark.parametrize("params", LOOP_PARAMS, ids=["chain", "penalty"])
def test_sample_loop_matches_host_chain(pair, params, chunk):
    gpu, cpu = pair
    step = gpu._step(1, False)
    prompt = [1, 5, 9, 2, 7]
    for s in (gpu, cpu):
        s._step(5, False)(np.array(prompt), 0)  # the prompt's K/V
    uniforms = np.random.default_rng(3).random(20)
    want = host_loop(cpu, 4, 5, 20, params, uniforms, [*prompt, 4])
    got = list(step.sample_loop(4, 5, 20, params, uniforms, [*prompt, 4], chunk=chunk))
    assert got == want
    if params.repeat_penalty != 1.0 or gpu.file.architecture == "llama":  # tiny gemma's logits are peaked
        assert len(set(got)) > 3  # it does sample
    stop = want[6]
    stopped = list(step.sample_loop(4, 5, 20, params, uniforms, [*prompt, 4], chunk=chunk, stop_ids=[stop]))
    assert stopped == want[:want.index(stop) + 1]


def test_sample_loop_refuses_bad_arguments(pair):
    gpu, _ = pair
    step = gpu._step(1, False)
    params = SamplingParams(top_k=40)
    with pytest.raises(ValueError, match="uniforms"):
        next(step.sample_loop(4, 5, 3, params, [0.5], [4]))
    with pytest.raises(ValueError, match="recent"):
        next(step.sample_loop(4, 5, 3, params, [0.5] * 3, [7]))
    with pytest.raises(ValueError, match="top_k"):
        next(step.sample_loop(4, 5, 3, SamplingParams(top_k=0), [0.5] * 3, [4]))
    with pytest.raises(ValueError, match="context"):
        next(step.sample_loop(4, 90, 10, params, [0.5] * 10, [4]))


@pytest.mark.parametrize("kw", [{"temperature": 1.5, "top_k": 40, "seed": 5},
                                {"temperature": 1.5, "top_k": 30, "repeat_penalty": 1.3, "repeat_last_n": 64, "seed": 6}])
def test_generate_samples_on_the_gpu_like_the_cpu(pair, kw):
    """LLM.generate: the loop serves the chain (the penalty too), same seed -> same tokens twice,
    the CPU's tokens, a decode step's dispatches: the step, [penalty,] top-k, draw."""
    gpu, cpu = pair
    a = gpu.generate("the cat sat", max_tokens=16, ignore_eos=True, **kw)
    b = gpu.generate("the cat sat", max_tokens=16, ignore_eos=True, **kw)
    assert a.tokens == b.tokens
    assert a.tokens == cpu.generate("the cat sat", max_tokens=16, ignore_eos=True, **kw).tokens
    penalised = "repeat_penalty" in kw
    assert gpu._sampling_mode(__import__("wgpu_llm").sampling.Sampler(SamplingParams(**kw)), gpu._step(1, False)) \
        == ("sample", kw["top_k"])
    step = gpu._step(1, False)
    assert a.stats["decode_dispatches_per_token"] == step.sampling_dispatches("sample", kw["top_k"], penalised)
    assert step.sampling_dispatches("sample", kw["top_k"], penalised) == step.n_dispatches + 2 + penalised


def test_cli_defaults_are_served_on_the_gpu(pair):
    from wgpu_llm.sampling import Sampler

    gpu, _ = pair
    assert gpu._sampling_mode(Sampler(SamplingParams()), gpu._step(1, False)) == ("sample", 40)
    assert gpu._sampling_mode(Sampler(SamplingParams(top_k=0)), gpu._step(1, False)) == ("full", 0)
    assert gpu._sampling_mode(Sampler(SamplingParams(repeat_penalty=1.1, repeat_last_n=257)),
                              gpu._step(1, False)) == ("full", 0)


def test_the_generator_is_left_as_the_host_leaves_it(pair):
    """Stopped early, the sampler's generator has made one draw per token given, as on the CPU
    (a fallback to the CPU then goes on with the same draws)."""
    from wgpu_llm.sampling import Sampler

    gpu, cpu = pair
    params = SamplingParams(temperature=1.5, top_k=40, seed=9)
    for llm in (gpu, cpu):
        sampler = Sampler(params)
        tokens = llm._generated(llm.tokenize("the cat sat"), 10, sampler)
        got = [next(tokens) for _ in range(4)]
        tokens.close()
        reference = Sampler(params)
        reference.rng.random(4)  # the first token's draw (on the host) and three of the loop's
        assert sampler.rng.random() == reference.rng.random(), (llm.backend.name, got)
