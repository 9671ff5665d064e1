"""Sampling kernels: the top-k candidates of a row of logits, selected on the GPU.

`top_k` returns the dispatches of shaders/top_k.wgsl: each stage radix-selects the k best of
chunks of candidates in workgroup memory, until one chunk is left. The result is k (value bits,
index) u32 pairs, best first, ties to the lower index -- the order of
`wgpu_llm.sampling.top_k_filter` -- so only 8k bytes go back to the host instead of the row.
"""

from __future__ import annotations

from . import kernels as K

PER_THREAD = 16  # candidates each invocation holds; a stage's chunk is workgroup size x this
TOP_K_MAX = 128  # the largest k served (a stage then still shrinks its candidates >= 8x)
NONE = 0xFFFFFFFF  # index of a padding entry (only returned when k exceeds the row's width)


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
