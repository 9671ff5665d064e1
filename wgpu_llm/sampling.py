"""Sampling: llama.cpp's default chain -- repetition penalty, top-k, top-p, min-p, temperature.

Each step is a plain function over a float32 logits vector; `Sampler` chains them and owns the
random generator, so the same seed gives the same tokens.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np


class InvalidSamplingParam(ValueError):
    """A sampling parameter out of its range; `name` is the field, `value` what was given."""

    def __init__(self, name: str, value, why: str):
        super().__init__(f"sampling parameter {name}={value!r} {why}")
        self.name, self.value, self.why = name, value, why


_TYPES = [(name, numbers.Real, "a number") for name in ("temperature", "top_p", "min_p", "repeat_penalty")] + [
    (name, numbers.Integral, "an int") for name in ("top_k", "repeat_last_n", "seed")]


class NonFiniteLogits(ValueError):
    """The logits to sample from hold NaN or infinity: no distribution to draw from (every filter
    compares logits, and NaN compares false with everything)."""


def check_finite(logits: np.ndarray) -> None:
    finite = np.isfinite(logits)
    if not finite.all():
        nan = int(np.isnan(logits).sum())
        raise NonFiniteLogits(f"the model's logits are not finite ({nan} NaN and {int((~finite).sum()) - nan} "
                              f"infinite of {logits.size})")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self):
        # types first: a str or None would fail the range tests below with Python's own TypeError
        for name, kind, what in _TYPES:
            value = getattr(self, name)
            if value is None and name == "seed":
                continue  # a random seed
            if isinstance(value, bool) or not isinstance(value, kind):
                raise TypeError(f"sampling parameter {name}={value!r} must be {what}, got {type(value).__name__}")
        # written so that NaN fails every range test; inf is refused explicitly (temperature=inf
        # would divide every logit to 0, repeat_penalty=inf turn logits into 0 and -inf)
        checks = [
            ("temperature", 0 <= self.temperature < math.inf, "must be a finite number >= 0 (0 = greedy)"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 = off)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1] (1 = off)"),
            ("min_p", 0 <= self.min_p < 1, "must be in [0, 1) (0 = off)"),
            ("repeat_penalty", 0 < self.repeat_penalty < math.inf, "must be a finite number > 0 (1 = off)"),
            ("repeat_last_n", self.repeat_last_n >= 0, "must be >= 0"),
            ("seed", self.seed is None or self.seed >= 0, "must be >= 0 or None (random)"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise InvalidSamplingParam(name, getattr(self, name), why)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        """A repetition penalty applies."""
        return self.repeat_penalty != 1.0 and self.repeat_last_n > 0


def apply_repeat_penalty(logits: np.ndarray, recent: list[int], penalty: float) -> np.ndarray:
    """llama.cpp's rule: a recently seen token's logit is divided by penalty if > 0, else multiplied."""
    if penalty == 1.0 or not recent:
        return logits
    ids = np.unique(np.asarray(recent))
    out = logits.copy()
    vals = out[ids]
    out[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def top_k_filter(ids: np.ndarray, logits: np.ndarray, k: int):
    """Keep the k largest, sorted by descending logit; ties go to the lower id (ids ascending on
    input), so the result is one well-defined list -- the same one the GPU's top-k kernel returns."""
    if 0 < k < len(ids):
        kth = logits[np.argpartition(-logits, k - 1)[k - 1]]  # the k-th largest value
        above = np.flatnonzero(logits > kth)
        tied = np.flatnonzero(logits == kth)[:k - len(above)]
        keep = np.sort(np.concatenate([above, tied]))
        ids, logits = ids[keep], logits[keep]
    order = np.argsort(-logits, kind="stable")
    return ids[order], logits[order]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def top_p_filter(ids: np.ndarray, logits: np.ndarray, p: float):
    """Smallest prefix (of descending-sorted candidates) whose probability mass reaches p."""
    if p >= 1.0:
        return ids, logits
    cum = np.cumsum(softmax(logits))
    keep = int(np.searchsorted(cum, p) + 1)
    return ids[:keep], logits[:keep]


def min_p_filter(ids: np.ndarray, logits: np.ndarray, min_p: float):
    """Drop candidates whose probability is below min_p times the top candidate's."""
    if min_p <= 0.0:
        return ids, logits
    keep = logits >= logits.max() + np.log(min_p)
    return ids[keep], logits[keep]


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def plan(self) -> tuple[str, int]:
        """What the sampler needs from a step: ("greedy", 0) the argmax; ("top_k", k) the k best
        (id, logit) pairs; ("full", 0) every logit (a repetition penalty, or no top-k)."""
        p = self.params
        if p.penalised:
            return ("full", 0)
        if p.greedy:
            return ("greedy", 0)
        if p.top_k > 0:
            return ("top_k", p.top_k)
        return ("full", 0)

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        check_finite(logits)
        if p.repeat_last_n:
            logits = apply_repeat_penalty(logits, history[-p.repeat_last_n:], p.repeat_penalty)
        if p.greedy:
            return int(np.argmax(logits))
        ids, cand = top_k_filter(np.arange(len(logits)), logits, p.top_k)
        return self.finish(ids, cand)

    def finish(self, ids: np.ndarray, cand: np.ndarray) -> int:
        """The chain after top-k: candidates sorted by descending logit (as top_k_filter returns
        them) -> top-p, min-p, temperature, one draw from the generator."""
        p = self.params
        check_finite(cand)
        ids, cand = top_p_filter(ids, cand, p.top_p)
        ids, cand = min_p_filter(ids, cand, p.min_p)
        probs = softmax(cand.astype(np.float64) / p.temperature)
        return int(ids[draw_index(probs, self.rng.random())])


def draw_index(probs: np.ndarray, u: float) -> int:
    """numpy's Generator.choice(len(probs), p=probs), given the uniform u it draws (rng.random()):
    cdf = cumsum(p); cdf /= cdf[-1]; searchsorted(cdf, u, side='right'). The same generator
    state gives the same index and leaves the same state; the GPU's draw (shaders/sample.wgsl)
    takes u from the host the same way."""
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    return int(np.searchsorted(cdf, u, side="right"))
