"""Sampling kernels: the top-k candidates of a row of logits, selected on the GPU.

`top_k` returns the dispatches of shaders/top_k.wgsl: each stage radix-selects the k best of
chunks of candidates in workgroup memory, until one chunk is left. The result is k (value bits,
index) u32 pairs, best first, ties to the lower index -- the order of
`wgpu_llm.sampling.top_k_filter` -- so only 8k bytes go back to the host instead of the row.

`draw` (shaders/sample.wgsl) finishes the chain on the GPU from those pairs -- top-p, min-p,
temperature and the draw, as `wgpu_llm.sampling.Sampler.finish` -- with a uniform the host drew
from the sampler's generator, and writes the chosen id where the next step reads its input;
`repeat_penalty` (shaders/repeat_penalty.wgsl) penalises the recent ids in the logits row before
the top-k. Both keep their settings, the recent ids and the uniforms in one `state` buffer
(layout in sample.wgsl; `settings`, RING, HEAD), written by the host once per decode loop.

Agreement with the CPU: the draw computes in f32 where numpy's chain computes the temperature
softmax and the cdf in f64 (and top-p's softmax in f32, but summed in another order), and u is
rounded to f32. A seed gives the CPU's token unless u falls within a few f32 roundings of a cdf
boundary (or top-p's cumulative mass within a few roundings of p, min-p's threshold within one of
a logit): about k * 1e-7 per token for k candidates, e.g. < 1e-5 per token at top_k = 40 --
rare, but over many tokens of many seeds it happens, and from there the two sequences differ.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernels as K

PER_THREAD = 16  # candidates each invocation holds; a stage's chunk is workgroup size x this
TOP_K_MAX = 128  # the largest k served (a stage then still shrinks its candidates >= 8x)
NONE = 0xFFFFFFFF  # index of a padding entry (only returned when k exceeds the row's width)
# Recent ids the GPU keeps for the repetition penalty: repeat_last_n up to this is served on the
# GPU (one workgroup, one id per invocation); a larger one takes the "full" path (the whole
# logits row read back, the penalty applied on the host: LLM._sampling_mode).
RING = 256
HEAD = 8  # state words before the ring: the settings
MIN_P_OFF = -3.0e38  # log(min_p) standing for min_p = 0: every finite logit passes


def state_words(n_ctx: int) -> int:
    """u32 words of the state buffer: settings, ring of recent ids, one uniform per position."""
    return HEAD + RING + n_ctx


def settings(temperature: float, top_p: float, min_p: float, repeat_penalty: float, repeat_last_n: int) -> np.ndarray:
    """The HEAD settings words of the state buffer (f32 bits, and repeat_last_n as u32)."""
    if not 0 <= repeat_last_n <= RING:
        raise ValueError(f"repeat_last_n={repeat_last_n} exceeds the {RING} recent ids kept on the GPU")
    log_min_p = math.log(min_p) if min_p > 0 else MIN_P_OFF
    words = np.zeros(HEAD, np.uint32)
    words[:4] = np.array([top_p, log_min_p, temperature, repeat_penalty], np.float32).view(np.uint32)
    words[4] = repeat_last_n
    return words


def chunk_size(cfg: K.KernelConfig) -> int:
    return _workgroup(cfg) * PER_THREAD


def _workgroup(cfg: K.KernelConfig) -> int:
    return max(64, min(cfg.argmax_wg, 256))


def stages(width: int, k: int, chunk: int) -> list[tuple[int, int]]:
    """[(candidates in, workgroups)] of each stage for a row of `width` values."""
    if not 1 <= k <= TOP_K_MAX:
        raise ValueError(f"top-k on the GPU takes 1 <= k <= {TOP_K_MAX}, got {k}")
    out, n = [], width
    while True:
        groups = -(-n // chunk)
        out.append((n, groups))
        if groups == 1:
            return out
        n = groups * k


def scratch_bytes(cfg: K.KernelConfig, width: int, k: int) -> int:
    """Bytes of each of the two buffers the intermediate stages write."""
    return max([8 * groups * k for _, groups in stages(width, k, chunk_size(cfg))[:-1]], default=16)


def top_k(cfg: K.KernelConfig, width: int, k: int, x: K.View, scratch: tuple, out, label: str = "top_k") -> list:
    """Kernels writing the k largest of x[x.offset : x.offset + width] into `out` as (f32 bits, index)
    u32 pairs, best first; scratch: two storage buffers of scratch_bytes(cfg, width, k) bytes."""
    wg = _workgroup(cfg)
    plan = stages(width, k, chunk_size(cfg))
    pk = 1 << max(0, k - 1).bit_length()
    kernels, src = [], x.buffer
    for s, (n, groups) in enumerate(plan):
        first, last = s == 0, s == len(plan) - 1
        dst = out if last else scratch[s % 2]
        params = [("n", "u32", n), ("groups", "u32", groups), ("k", "u32", k),
                  ("x_off", "u32", x.offset if first else 0), ("out_off", "u32", 0)]
        roles = [K.Role("x", src, elem="f32" if first else "u32"), K.Role("out", dst, write=True, elem="u32")]
        kernels.append(K.build("top_k", f"{label} stage {s + 1}/{len(plan)}", params, roles,
                               K.fold_grid(groups, cfg.max_per_dim), flags={"FIRST": first},
                               consts={"WG": wg, "E": PER_THREAD, "PK": pk}))
        src = dst
    return kernels


def draw(k: int, pairs, state, ids, out, label: str = "sample") -> K.Kernel:
    """A kernel choosing one of the k (f32 bits, index) pairs in `pairs` (top_k's output) with
    the settings and the position's uniform in `state`: the id goes to ids[0] (the next step's
    input), out[0] (NONE if a candidate is not finite) and the ring at the next position."""
    if not 1 <= k <= TOP_K_MAX:
        raise ValueError(f"sampling on the GPU takes 1 <= k <= {TOP_K_MAX}, got {k}")
    roles = [K.Role("pairs", pairs, elem="u32"), K.Role("state", state, write=True, elem="u32"),
             K.Role("ids", ids, write=True, elem="u32"), K.Role("out", out, write=True, elem="u32")]
    return K.build("sample", label, [("k", "u32", k)], roles, (1, 1, 1), uses_step=True,
                   consts={"HEAD": HEAD, "RING": RING, "KMAX": TOP_K_MAX})


def repeat_penalty(width: int, x: K.View, state, label: str = "repeat_penalty") -> K.Kernel:
    """A kernel applying the repetition penalty in `state` to x[x.offset : x.offset + width] in place,
    over the distinct ids of the last repeat_last_n positions up to the step's own."""
    params = [("width", "u32", width), ("x_off", "u32", x.offset)]
    roles = [K.Role("x", x.buffer, write=True), K.Role("state", state, elem="u32")]
    return K.build("repeat_penalty", label, params, roles, (1, 1, 1), uses_step=True,
                   consts={"WG": RING, "HEAD": HEAD, "RING": RING})
