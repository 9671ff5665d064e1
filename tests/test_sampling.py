"""Sampler chain: each filter on its own, then the chain's determinism."""

import warnings

import numpy as np
import pytest

from wgpu_llm.sampling import (InvalidSamplingParam, NonFiniteLogits, Sampler, SamplingParams, apply_repeat_penalty,
                               min_p_filter, top_k_filter, top_p_filter)


def test_repeat_penalty_follows_llama_cpp_rule():
    logits = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    out = apply_repeat_penalty(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    assert logits.tolist() == [2.0, -2.0, 1.0, 0.5]  # input untouched


def test_top_k_sorted_and_limited():
    ids, vals = top_k_filter(np.arange(6), np.array([0.1, 5, 3, 4, -1, 2], np.float32), 3)
    assert ids.tolist() == [1, 3, 2] and vals.tolist() == [5, 4, 3]


def test_top_p_keeps_smallest_prefix_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert top_p_filter(np.arange(4), logits, 0.5)[0].tolist() == [0]
    assert top_p_filter(np.arange(4), logits, 0.79)[0].tolist() == [0, 1]
    assert top_p_filter(np.arange(4), logits, 0.81)[0].tolist() == [0, 1, 2]


def test_min_p_relative_to_best():
    logits = np.log(np.array([0.5, 0.3, 0.04, 0.16], np.float32))
    assert sorted(min_p_filter(np.arange(4), logits, 0.1)[0].tolist()) == [0, 1, 3]


def test_greedy_and_seeded_sampling():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(1000).astype(np.float32)
    assert Sampler(SamplingParams(temperature=0))(logits, []) == int(np.argmax(logits))
    a = [Sampler(SamplingParams(temperature=1.0, seed=7))(logits, []) for _ in range(3)]
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    b = [s(logits, []) for _ in range(50)]
    assert len(set(a)) == 1  # same seed, same first token
    assert len(set(b)) > 5  # but it does sample


def test_sampling_distribution_matches_softmax():
    logits = np.log(np.array([0.6, 0.3, 0.1], np.float32))
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1))
    counts = np.bincount([s(logits, []) for _ in range(3000)], minlength=3) / 3000
    assert np.allclose(counts, [0.6, 0.3, 0.1], atol=0.04)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(temperature=float("inf")), dict(temperature=float("nan")),
                                 dict(top_p=0), dict(top_p=1.5), dict(top_p=float("nan")), dict(min_p=1),
                                 dict(min_p=-0.01), dict(min_p=float("nan")), dict(top_k=-1), dict(repeat_penalty=0),
                                 dict(repeat_penalty=float("inf")), dict(repeat_penalty=float("nan")),
                                 dict(repeat_last_n=-1), dict(seed=-1)])
def test_bad_parameters_are_named(bad):
    (name, value), = bad.items()
    with pytest.raises(InvalidSamplingParam, match=f"^sampling parameter {name}={value!r} must ") as err:
        SamplingParams(**bad)
    assert isinstance(err.value, ValueError) and err.value.name == name and err.value.why in str(err.value)
    assert err.value.value is value


def test_edge_parameters_are_accepted():
    for good in (dict(temperature=0), dict(top_p=1), dict(min_p=0), dict(top_k=0), dict(repeat_penalty=1e-6),
                 dict(repeat_last_n=0), dict(seed=0), dict(seed=None)):
        SamplingParams(**good)


def _reference_top_k(logits: np.ndarray, k: int) -> list[int]:
    """The k best ids, by descending logit then ascending id (what the GPU top-k kernel returns)."""
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    return order[:k] if k > 0 else order


def test_top_k_matches_a_plain_sort_with_ties():
    rng = np.random.default_rng(3)
    for n, levels in ((7, 1000), (300, 3), (300, 1000), (40, 1)):
        logits = rng.integers(0, levels, size=n).astype(np.float32)  # few levels: many ties
        for k in (0, 1, 2, 3, 5, n // 2, n - 1, n, n + 5):
            ids, vals = top_k_filter(np.arange(n), logits, k)
            assert ids.tolist() == _reference_top_k(logits, k), (n, levels, k)
            assert vals.tolist() == logits[ids].tolist()


def test_top_p_of_one_keeps_every_candidate():
    # float32 softmax mass reaches exactly 1.0 after the first candidate; p = 1 still keeps all
    logits = np.array([0.0, -30.0, -40.0], np.float32)
    assert top_p_filter(np.arange(3), logits, 1.0)[0].tolist() == [0, 1, 2]
    assert top_p_filter(np.arange(3), logits, 0.999)[0].tolist() == [0]


def test_min_p_keeps_the_boundary_and_zero_is_silent():
    logits = np.array([0.0, -1.0, -1.5], np.float32)
    assert np.log(np.exp(-1.0)) == -1.0  # so the second candidate lies exactly on the boundary
    assert min_p_filter(np.arange(3), logits, float(np.exp(-1.0)))[0].tolist() == [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # min_p = 0 is "off", not log(0)
        assert min_p_filter(np.arange(3), logits, 0.0)[0].tolist() == [0, 1, 2]


def test_temperature_sharpens_the_distribution():
    logits = np.log(np.array([0.6, 0.3, 0.1], np.float32))
    s = Sampler(SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, seed=2))
    counts = np.bincount([s(logits, []) for _ in range(3000)], minlength=3) / 3000
    assert np.allclose(counts, np.array([36, 9, 1]) / 46, atol=0.03)  # p^(1/T), normalised


def test_repeat_penalty_in_the_chain():
    logits = np.array([3.0, 2.0, -1.0], np.float32)
    greedy = dict(temperature=0, repeat_penalty=2.0)
    assert Sampler(SamplingParams(**greedy))(logits, [0]) == 1  # 3/2 < 2
    assert Sampler(SamplingParams(**greedy, repeat_last_n=1))(logits, [0, 1]) == 0  # only the last token counts
    assert Sampler(SamplingParams(**greedy, repeat_last_n=0))(logits, [0]) == 0  # window 0: off
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=1.0))(logits, [0]) == 0


@pytest.mark.parametrize("params, plan", [
    (dict(temperature=0), ("greedy", 0)),
    (dict(temperature=0, repeat_penalty=1.1), ("full", 0)),
    (dict(temperature=0, repeat_penalty=1.1, repeat_last_n=0), ("greedy", 0)),
    (dict(temperature=0.8, top_k=1), ("top_k", 1)),
    (dict(temperature=0.8, top_k=40, repeat_penalty=2.0), ("full", 0)),
    (dict(temperature=0.8, top_k=0), ("full", 0)),
])
def test_plan(params, plan):
    assert Sampler(SamplingParams(**params)).plan() == plan


def test_repeat_penalty_edges():
    logits = np.array([0.5, 0.25, -1.0], np.float32)
    assert apply_repeat_penalty(logits, [0], 2.0).tolist() == [0.25, 0.25, -1.0]  # below 1 is still divided
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=2.0))(logits, []) == 0  # nothing seen yet
    with pytest.raises(InvalidSamplingParam, match=r"^sampling parameter seed=-1 must be >= 0 or None \(random\)$"):
        SamplingParams(seed=-1)


@pytest.mark.parametrize("params", [dict(temperature=0), dict(temperature=0.8), dict(temperature=0.8, top_k=0),
                                    dict(temperature=0.8, repeat_penalty=1.3)])
@pytest.mark.parametrize("bad, counts", [(np.nan, "1 NaN and 0 infinite"), (np.inf, "0 NaN and 1 infinite"),
                                         (-np.inf, "0 NaN and 1 infinite")])
def test_non_finite_logits_are_refused(params, bad, counts):
    """NaN compares false with everything: top-k kept nothing and the draw failed inside numpy."""
    logits = np.linspace(-1, 1, 50).astype(np.float32)
    logits[7] = bad
    sampler = Sampler(SamplingParams(seed=0, **params))
    with pytest.raises(NonFiniteLogits, match=rf"^the model's logits are not finite \({counts} of 50\)$"):
        sampler(logits, [1, 2])
    with pytest.raises(NonFiniteLogits):
        sampler.finish(np.arange(3), np.array([1.0, bad, 0.0], np.float32))
