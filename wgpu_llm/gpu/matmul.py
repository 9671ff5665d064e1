"""Prefill kernels: a tiled mat-mat over quantized weights (shaders/matmul.wgsl) and the choice
between it and the mat-vec of quant.py.

`matmul_shader` has the bindings and the LinearParams uniform of `quant.linear_shader` (0 the
uniform, 1 x, 2 y, 3 + i the planes of `quant.pack`), so the backend swaps one for the other per
dispatch; the packed planes are shared. The per-type dequantization is the `quant_dequant.wgsl`
section of the type, put in front of the kernel.

`prefill_path` is the one place that decides which kernels a step of n tokens uses (env
`WGPU_LLM_PREFILL`: `auto` (default), `tiled`, or `matvec` to force the per-token-group mat-vec and
the one-query-per-workgroup attention, e.g. to compare); `choose_tiles` picks the tile shape.

Tiles.f16 (GpuBackend(activations="f16"), needs shader-f16) stages the tiles in f16 and runs the
inner loop's dot products in f16 into f32 sums; this kernel is the only one with an f16 form.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from functools import cache

from . import quant
from .device import software_kernels
from .kernels import fill, shader_sections

ENV_PREFILL = "WGPU_LLM_PREFILL"
PREFILL_PATHS = ("auto", "tiled", "matvec")


@dataclass(frozen=True)
class Tiles:
    """The tile shape of the mat-mat: bm tokens x bn weight rows per workgroup, K-steps of bk
    columns (bk / 8 weight units), a register tile of tm tokens x tn rows per thread.

    sg > 0 (needs the "subgroup" device feature): the lanes of a subgroup of sg invocations share
    their tokens, so each reads tm / sg of the staged activations and subgroupBroadcast hands
    them round, instead of every lane reading all tm (for CPU adapters, where a load is a loop
    over the lanes and a broadcast is nearly free). The shader checks at run time that the
    subgroups have sg consecutive lanes and otherwise reads them all (still correct).

    f16 (needs the "shader-f16" device feature; GpuBackend(activations="f16")): the staged tiles
    are vec4<f16> -- the activations and the dequantized weights rounded to f16 when staged, half
    the workgroup memory -- and the vec4 dot products of the inner loop run in f16, each converted
    to f32 before it is added to the f32 accumulators (llama.cpp's Vulkan mat-mat does the same).
    Storage buffers stay f32. Only the prefill mat-mat has an f16 form: the decode mat-vec
    (quant_linear.wgsl) reads weights, and its activations are a negligible part of its traffic."""

    bm: int = 64
    bn: int = 64
    bk: int = 32
    tm: int = 4
    tn: int = 4
    sg: int = 0
    f16: bool = False

    def __post_init__(self):
        bad = []
        if min(self.bm, self.bn, self.tm, self.tn) < 1:
            bad.append("sizes must be positive")
        elif self.bm % self.tm or self.bn % self.tn:
            bad.append("bm must be a multiple of tm and bn of tn")
        if self.bk % 8 or self.bk < 8:
            bad.append("bk must be a positive multiple of 8")
        if self.sg and (self.sg < 0 or self.tm % self.sg or (self.bn // max(self.tn, 1)) % self.sg):
            bad.append("sg must divide tm and bn / tn")
        if bad:
            raise ValueError(f"{self}: " + "; ".join(bad))

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    @property
    def shared_bytes(self) -> int:
        return (2 if self.f16 else 4) * self.bk * (self.bm + self.bn)

    def fits(self, max_invocations: int = 256, max_shared: int = 16384) -> bool:
        return self.threads <= max_invocations and self.shared_bytes <= max_shared

    def __str__(self) -> str:
        return (f"{self.bm}x{self.bn}x{self.bk}/{self.tm}x{self.tn}" + (f"/sg{self.sg}" if self.sg else "")
                + ("/f16" if self.f16 else ""))

    @property
    def needs_subgroups(self) -> bool:
        return self.sg > 0

    @property
    def needs_f16(self) -> bool:
        return self.f16

    def with_f16(self, f16: bool = True) -> Tiles:
        """The same shape with f16 (or f32) staged tiles."""
        return replace(self, f16=bool(f16))

    @property
    def key(self) -> str:
        """A short stable name, e.g. "tiles-64x128x32-32x8-sg8" or "...-f16" (what the tuning cache
        stores; f16 and f32 tiles never share a key, a shader or a pipeline)."""
        return (f"tiles-{self.bm}x{self.bn}x{self.bk}-{self.tm}x{self.tn}" + (f"-sg{self.sg}" if self.sg else "")
                + ("-f16" if self.f16 else ""))

    @classmethod
    def from_key(cls, key: str) -> Tiles:
        """The inverse of `key`; ValueError for anything else."""
        m = re.fullmatch(r"tiles-(\d+)x(\d+)x(\d+)-(\d+)x(\d+)(?:-sg(\d+))?(-f16)?", str(key))
        if m is None:
            raise ValueError(f"not a tile key: {key!r} (expected tiles-BMxBNxBK-TMxTN[-sgN][-f16])")
        try:
            return cls(*(int(g) for g in m.groups(default="0")[:6]), f16=m.group(7) is not None)
        except ValueError as e:
            raise ValueError(f"not a tile key: {key!r} ({e})") from None


def _register_tile_code(t: Tiles) -> dict[str, str]:
    """The unrolled per-thread code: accumulators, one k4 step of the inner loop, the stores.

    Written out rather than looped so that every accumulator is a plain variable (private arrays
    indexed in loops end up in memory on some compilers)."""
    ind = " " * 16
    vec = "vec4<f16>" if t.f16 else "vec4<f32>"
    acc = [f"        var c{i}_{j} = 0.0;" for i in range(t.tm) for j in range(t.tn)]
    if t.sg:  # lane l reads tokens l, l + sg, ...; token i comes from lane i % sg
        inner = [f"{ind}var x{i}: {vec};" for i in range(t.tm)]
        inner.append(f"{ind}if (x_shared) {{")
        inner += [f"{ind}    let xr{r} = xs[((sg_lane + {r * t.sg}u) * NTY + ty) * KR + k4];" for r in range(t.tm // t.sg)]
        inner += [f"{ind}    x{i} = subgroupBroadcast(xr{i // t.sg}, {i % t.sg}u);" for i in range(t.tm)]
        inner.append(f"{ind}}} else {{")
        inner += [f"{ind}    x{i} = xs[({i}u * NTY + ty) * KR + k4];" for i in range(t.tm)]
        inner.append(f"{ind}}}")
    else:
        inner = [f"{ind}let x{i} = xs[({i}u * NTY + ty) * KR + k4];" for i in range(t.tm)]
    inner += [f"{ind}let w{j} = ws[w_slot({j}u * NTX + tx, k4)];" for j in range(t.tn)]
    # f16: the dot product (4 multiplies, 3 adds) in f16, the sum of the dots in f32
    dot = "f32(dot(x{i}, w{j}))" if t.f16 else "dot(x{i}, w{j})"
    inner += [f"{ind}c{i}_{j} += {dot.format(i=i, j=j)};" for i in range(t.tm) for j in range(t.tn)]
    store = []
    for i in range(t.tm):
        store.append(f"        let tok{i} = t0 + {i}u * NTY + ty;")
        store += [f"        store_y(row0 + {j}u * NTX + tx, tok{i}, c{i}_{j});" for j in range(t.tn)]
    if t.sg:
        builtins = (",\n        @builtin(subgroup_invocation_id) sg_lane: u32,"
                    "\n        @builtin(subgroup_size) sg_size: u32")
        check = ("    // the lanes of this subgroup: sg_size consecutive invocations, a multiple of it apart\n"
                 f"    let x_shared = subgroupAll(sg_size == {t.sg}u && subgroupBroadcast(lid, 0u) + sg_lane == lid\n"
                 f"                               && (lid - sg_lane) % {t.sg}u == 0u);")
    else:
        builtins = check = ""
    return {"ACC_DECL": "\n".join(acc), "INNER": "\n".join(inner), "STORE": "\n".join(store),
            "SG_BUILTINS": builtins, "SG_CHECK": check}


# what a staged value becomes: itself, or for f16 tiles saturated to +-65504 first (WGSL leaves the
# conversion of a value outside f16's range indeterminate; see shaders/PORTABILITY.md) and rounded
_STAGE_F32 = """
fn stage(v: vec4<f32>) -> vec4<f32> {
    return v;
}
"""
_STAGE_F16 = """
fn stage(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
}
"""


@cache
def matmul_shader(type_name: str, tiles: Tiles = Tiles(), glu: str = "") -> str:
    """WGSL for y[t, y_offset + r] (+)= sum_c x[t, c] * W[r, c], r < rows, t < n_tokens, tiled.

    Bindings and `glu` as quant.linear_shader; dispatch with matmul_dispatch (same tiles)."""
    section = quant.quant_type(type_name).dequant_section  # checks the type
    t = tiles
    dequant = shader_sections("quant_dequant.wgsl")
    main = fill(shader_sections("matmul.wgsl")["main"], X_VAL=quant.x_input_source(glu),
                BM=f"{t.bm}u", BN=f"{t.bn}u", UNITS=f"{t.bk // 8}u",
                NTX=f"{t.bn // t.tn}u", NTY=f"{t.bm // t.tm}u", WG=t.threads, XS_SIZE=t.bm * t.bk // 4,
                WS_SIZE=t.bn * t.bk // 4, STAGED="vec4<f16>" if t.f16 else "vec4<f32>",
                STAGE_FN=_STAGE_F16 if t.f16 else _STAGE_F32,
                **_register_tile_code(t))
    params = shader_sections("quant_linear.wgsl")["params"]  # the bindings and store of every linear kernel
    head = ["enable f16;  // the staged tiles and the inner loop's dot products (Tiles.f16)"] if t.f16 else []
    return "\n".join(head + [f"// tiled mat-mat for {type_name} weights, tiles {t}\n", dequant["common"],
                              dequant[section], params, main])


def matmul_dispatch(rows: int, n_tokens: int, tiles: Tiles = Tiles(), max_per_dim: int = 65535
                    ) -> tuple[int, int, int]:
    """Workgroup counts for matmul_shader: x * y row tiles (folded over max_per_dim; the shader
    skips the extra ones), z token tiles (any z >= 1 is correct: the shader loops)."""
    groups = max(1, -(-rows // tiles.bn))
    gx = min(groups, max_per_dim)
    gy = -(-groups // gx)
    if gy > max_per_dim:
        raise ValueError(f"{rows} rows need {groups} workgroups, more than {max_per_dim} ** 2")
    return gx, gy, max(1, min(-(-n_tokens // tiles.bm), max_per_dim))


# Software adapters (lavapipe / llvmpipe) run a workgroup as a loop over 8-wide SIMD groups on
# one CPU core, and every load from a buffer or from workgroup memory is a per-lane scalar loop
# there, so they want the largest register tiles -- bounded by the time LLVM takes to compile
# the unrolled tile -- and the activations shared in subgroups. Measured on lavapipe, 128 tokens
# of a 3072 x 576 Q4_1 linear, time vs the first tiles below without sharing (uncached compile
# time per shader): 4x4 per thread ~5x (0.5 s), 8x8 ~2.5x (1.6 s), 16x16 1x (6-9 s), 16x32 0.8x
# (25 s), 32x32 0.5x (~100 s); 32x8 with subgroup sharing 0.65x (6 s).
_SOFTWARE_TILES = {16: Tiles(16, 64, 32, 16, 8), 64: Tiles(64, 128, 32, 32, 8)}
# hardware GPUs: 256 threads with 4 x 4 register tiles and 16 KiB of staged tiles (within
# WebGPU's default limits); shorter steps take fewer tokens per tile. Not tuned on hardware yet.
_HARDWARE_TILES = {16: Tiles(16, 64, 32, 4, 4), 32: Tiles(32, 64, 32, 4, 4), 64: Tiles(64, 64, 32, 4, 4)}
MIN_TILED_TOKENS = 8  # fewer tokens per step: the mat-vec (and the per-query attention) are as fast


def _with_subgroups(t: Tiles, sg: int) -> Tiles:
    try:
        return Tiles(t.bm, t.bn, t.bk, t.tm, t.tn, sg)
    except ValueError:
        return t


def choose_tiles(caps, n_tokens: int, f16: bool = False) -> Tiles:
    """The tile shape for a step of n_tokens on a device (runtime.Caps), within its limits
    (a software adapter's unless WGPU_LLM_FORCE_HARDWARE_KERNELS=1). f16: the same shape with
    f16 staged tiles (Tiles.f16; the caller checks the device has shader-f16), so that f16 and
    f32 prefill differ in the rounding only."""
    software = software_kernels(getattr(caps, "info", None))
    max_inv = int(getattr(caps, "max_invocations", 256))
    max_shared = int(getattr(caps, "max_workgroup_storage", 16384))
    table = _SOFTWARE_TILES if software else _HARDWARE_TILES
    bm = next((b for b in sorted(table) if n_tokens <= b), max(table))
    t = table[bm]
    if software and getattr(caps, "subgroups", False) and getattr(caps, "subgroup_size", 0) > 1:
        t = _with_subgroups(t, int(caps.subgroup_size))
    fallbacks = [t, Tiles(t.bm, 64, t.bk, t.tm, t.tn), _HARDWARE_TILES[min(_HARDWARE_TILES, key=lambda b: abs(b - bm))],
                 Tiles(16, 32, 16, 4, 4), Tiles(4, 4, 8, 4, 4)]
    return next(f for f in fallbacks if f.fits(max_inv, max_shared)).with_f16(f16)


def prefill_path(n_tokens: int) -> str:
    """'tiled' (mat-mat + flash attention) or 'matvec' (the decode kernels, a few tokens at a
    time) for a step of n_tokens. Env WGPU_LLM_PREFILL: auto (tiled from MIN_TILED_TOKENS tokens
    on), tiled (from 2 tokens on), matvec (never tiled). One token always takes the mat-vec."""
    mode = os.environ.get(ENV_PREFILL, "auto").strip().lower() or "auto"
    if mode not in PREFILL_PATHS:
        raise ValueError(f"{ENV_PREFILL}={mode!r}: expected one of {', '.join(PREFILL_PATHS)}")
    if n_tokens <= 1 or mode == "matvec" or (mode == "auto" and n_tokens < MIN_TILED_TOKENS):
        return "matvec"
    return "tiled"


__all__ = ["ENV_PREFILL", "MIN_TILED_TOKENS", "Tiles", "choose_tiles", "matmul_dispatch", "matmul_shader", "prefill_path"]
