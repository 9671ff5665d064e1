"""Quantized weights on the GPU: repacking GGUF tensors into u32 planes, and the WGSL kernels
that read them (mat-vec / mat-mul "linear" and embedding lookup).

Weights stay quantized in GPU memory; the kernels dequantize in registers. What each type is
made of -- its block, the u32 planes its blocks are repacked into, its WGSL sections -- is its
QuantType in quant_types.py (the one place to add a type). Every plane is row-major with a fixed
number of words per weight row, so a piece of rows is a slice of each plane (``split_rows``).

The per-type dequantization lives in ``shaders/quant_dequant.wgsl`` and matches gguf-py's
``gguf.quants.dequantize`` bit for bit; the kernels are ``shaders/quant_linear.wgsl`` and
``shaders/quant_embed.wgsl``. The linear kernel comes in variants (``LinearVariant``): a few rows
per workgroup with a cooperative reduction for GPUs, whole rows per invocation for CPU-type
adapters; kernels.linear_variant picks one per adapter and tune.py can time them on the device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from .kernels import fill, shader_sections
from .quant_types import QUANT_TYPES, SUPPORTED_TYPES, QuantType, quant_type

LINEAR_ROWS_PER_WORKGROUP = 4  # output rows one linear workgroup computes
LINEAR_MAX_TOKENS_PER_PASS = 4  # tokens sharing one dequantized weight unit (several-token path)
EMBED_WORKGROUP_SIZE = 64
_MAX_WORKGROUP_STORAGE = 16384  # bytes; WebGPU's default limit
_MIN_SUBGROUP_SIZE = 4  # WebGPU guarantees subgroups of at least 4 invocations


def check_type(type_name: str) -> None:
    """ValueError naming the type (and the supported ones) unless the GPU kernels read it."""
    quant_type(type_name)


def plane_row_words(type_name: str, cols: int) -> list[int]:
    """u32 words per weight row of each plane of a packed (rows, cols) tensor of this type."""
    return quant_type(type_name).plane_row_words(cols)


@dataclass
class PackedWeight:
    """A (rows, cols) weight matrix repacked for the GPU kernels of this module."""

    type_name: str
    rows: int  # weight rows (outputs) in this piece
    cols: int  # columns (inputs)
    planes: list[np.ndarray]  # 1-D uint32 arrays, one storage buffer each, in binding order (3, 4, ...)

    def nbytes(self) -> int:
        return sum(int(p.nbytes) for p in self.planes)


def pack(type_name: str, raw: np.ndarray, rows: int, cols: int) -> PackedWeight:
    """Repack a GGUF tensor's bytes into u32 planes (quantized data is never expanded).

    raw: the tensor's bytes as stored in GGUF (uint8, rows * row_bytes), e.g. a read-only
    memory map; cols is the GGUF row length (the matrix is (rows, cols)).
    """
    qt = quant_type(type_name)
    nb = qt.n_blocks(cols)
    if rows <= 0:
        raise ValueError(f"{type_name}: rows must be positive, got {rows}")
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(f"{type_name}: raw must be the tensor's bytes (uint8), got {raw.dtype}")
    expected = rows * nb * qt.block_bytes
    if raw.size != expected:
        raise ValueError(f"{type_name}: raw has {raw.size} bytes, a ({rows}, {cols}) tensor needs {expected}")
    packed = PackedWeight(type_name, rows, cols, qt.pack_planes(raw.reshape(-1), rows, cols))
    for plane, words in zip(packed.planes, qt.plane_row_words(cols)):
        assert plane.dtype == np.uint32 and plane.size == rows * words
    return packed


def split_rows(w: PackedWeight, max_binding_bytes: int) -> list[tuple[int, PackedWeight]]:
    """Split by rows so that every plane of every piece fits in one storage binding.

    Returns (first_row, piece) pairs covering all rows in order, in as few pieces of as equal
    a size as possible; a weight that already fits comes back as the single piece (0, w).
    """
    row_words = plane_row_words(w.type_name, w.cols)
    max_rows = min(max_binding_bytes // (4 * words) for words in row_words)
    if max_rows < 1:
        raise ValueError(f"{w.type_name} ({w.rows}, {w.cols}): one row needs {4 * max(row_words)} bytes, "
                         f"more than the {max_binding_bytes}-byte binding limit")
    if w.rows <= max_rows:
        return [(0, w)]
    n_pieces = -(-w.rows // max_rows)
    per_piece = -(-w.rows // n_pieces)
    pieces = []
    for first in range(0, w.rows, per_piece):
        n = min(per_piece, w.rows - first)
        planes = [p[first * words:(first + n) * words] for p, words in zip(w.planes, row_words)]
        pieces.append((first, PackedWeight(w.type_name, n, w.cols, planes)))
    return pieces


def device_type(type_name: str) -> str:
    """The type a weight has on the device: its own, or F32 where no kernel reads that type."""
    return type_name if type_name in SUPPORTED_TYPES else "F32"


# Every Q4_0 / Q5_0 block is a Q8_0 block with the same f16 scale (its q - 8 / q - 16 fit in
# an int8), so such weights can be stacked with Q8_0 ones as Q8_0, losslessly (QuantType.widens_to).
WIDENS_TO_Q8_0 = tuple(t.name for t in QUANT_TYPES.values() if t.widens_to == "Q8_0")
# A dispatch costs about as much as reading 1 MiB of weights (about 5 us at 200 GB/s): weights are
# widened so as to be stacked only where that adds fewer bytes (small models, where dispatches
# dominate a decode step; never the large matrices of a big model, where bandwidth does).
MAX_WIDENING_BYTES = 1 << 20


def _stack_type(run: list[tuple[str, str, int, int]]) -> str | None:
    """The device type of a run of (name, device type, rows, cols) stacked as one matrix, or None
    where the run cannot be stacked."""
    types = {t for _, t, _, _ in run}
    if len({cols for *_, cols in run}) > 1:
        return None
    if len(types) == 1:
        return types.pop()
    if not types <= {"Q8_0", *WIDENS_TO_Q8_0}:
        return None
    q8_0 = quant_type("Q8_0")
    extra = sum(q8_0.n_blocks(cols) * rows * (q8_0.block_bytes - quant_type(t).block_bytes)
                for _, t, rows, cols in run if t != "Q8_0")
    return "Q8_0" if extra <= MAX_WIDENING_BYTES else None


def stacked_runs(weights: list[tuple[str, str, int, int]]) -> list[tuple[list[str], str]]:
    """The weights of one linear op, [(name, device type, rows, cols)], in runs uploaded as one
    matrix (rows stacked) and read by one dispatch, each with its type on the device: adjacent
    weights of the same type and columns, and Q4_0 / Q5_0 weights next to Q8_0 ones widened to
    Q8_0 where that adds at most MAX_WIDENING_BYTES."""
    runs: list[list[tuple[str, str, int, int]]] = []
    for weight in weights:
        if runs and _stack_type(runs[-1] + [weight]) is not None:
            runs[-1].append(weight)
        else:
            runs.append([weight])
    return [([name for name, *_ in run], _stack_type(run)) for run in runs]


def widen_to_q8_0(type_name: str, raw: np.ndarray) -> np.ndarray:
    """The bytes of a Q4_0 or Q5_0 tensor re-encoded as Q8_0 (same values, bit for bit)."""
    qt = quant_type(type_name)
    if qt.widens_to != "Q8_0":
        raise ValueError(f"{type_name} cannot be widened to Q8_0 (only {', '.join(WIDENS_TO_Q8_0)})")
    blocks = np.asarray(raw, np.uint8).reshape(-1, qt.block_bytes)
    q = qt.q8_0_quants(blocks)
    out = np.empty((len(blocks), quant_type("Q8_0").block_bytes), np.uint8)
    out[:, :2] = blocks[:, :2]  # the f16 scale
    out[:, 2:] = q.astype(np.int8).view(np.uint8)
    return out.reshape(-1)


# ---- shaders ----

def dequant_source(type_name: str) -> str:
    """WGSL of quant_dequant.wgsl's common part and this type's section (its block reader)."""
    sections = shader_sections("quant_dequant.wgsl")
    return sections["common"] + sections[quant_type(type_name).dequant_section]


# The activations of shaders/glu.wgsl, as WGSL expressions of g (the same clamps, see there).
GLU_ACTIVATIONS = {
    "silu": "g / (1.0 + exp(min(-g, 80.0)))",
    "gelu_tanh": "(0.5 * g * (1.0 + tanh(clamp(0.7978845608028654 * (g + 0.044715 * g * g * g), -10.0, 10.0))))",
}


def x_input_source(glu: str) -> str:
    """WGSL `fn x_val(i) -> f32`: how a linear kernel reads its input element at flat index i.
    glu "": x[i]; glu "silu" / "gelu_tanh": the gated linear unit act(x[i]) * x[i + cols] of a
    gate | up row (the glu op fused into the linear that consumes it)."""
    src = shader_sections("quant_linear.wgsl")
    if not glu:
        return src["x_plain"]
    if glu not in GLU_ACTIVATIONS:
        raise ValueError(f"unknown GLU activation {glu!r} (known: {', '.join(GLU_ACTIVATIONS)})")
    return fill(src["x_glu"], ACT=GLU_ACTIVATIONS[glu])


# Norms a linear kernel can do on load (one token): "rms", rms_norm(x) * w feeding the linear;
# "post_rms", Gemma's post-norm + residual add + next pre-norm (see quant_linear.wgsl's x_post_norm).
NORMS_ON_LOAD = ("rms", "post_rms")


def _x_input(type_name: str, glu: str, norm: str, row_kind: bool) -> tuple[str, str]:
    """(WGSL of x_val -- and for a norm on load, its bindings, x_prologue, norm_sum and inv_rms --,
    the x_prologue call main makes first)."""
    if not norm:
        return x_input_source(glu), ""
    if norm not in NORMS_ON_LOAD:
        raise ValueError(f"unknown norm on load {norm!r} (known: {', '.join(NORMS_ON_LOAD)})")
    if glu:
        raise ValueError("a linear kernel takes a glu or a norm on load, not both")
    src = shader_sections("quant_linear.wgsl")
    first = 3 + len(plane_row_words(type_name, 256))  # the bindings after the weight planes
    section = {"rms": "x_norm", "post_rms": "x_post_norm"}[norm]
    x_val = fill(src[section], NB=first, NB1=first + 1, NB2=first + 2)
    if row_kind:  # one lane writes the new residual
        call = "    x_prologue(0u, 1u, lid, wid.x + wid.y + wid.z == 0u && lid == 0u);\n"
    else:
        call = "    x_prologue(lid, WG, lid, wid.x + wid.y + wid.z == 0u);\n"
    return src["norm_sum_row" if row_kind else "norm_sum_shared"] + src["norm_scale"] + x_val, call


def _check_workgroup_size(workgroup_size: int) -> None:
    if workgroup_size < 8 or workgroup_size > 1024 or workgroup_size & (workgroup_size - 1):
        raise ValueError(f"workgroup_size must be a power of two in [8, 1024], got {workgroup_size}")


LINEAR_KINDS = ("subgroup", "shared", "row")


@dataclass(frozen=True)
class LinearVariant:
    """How linear_shader spreads a (rows, cols) weight over workgroups and invocations.

    kind "subgroup": a workgroup computes `rows` output rows (a few); its invocations stride over
    those rows' 8-weight units, each activation unit is loaded once for all of them, and the
    partial sums are reduced with subgroupAdd (needs the "subgroup" device feature; the subgroup
    size is read at run time) and a small shared array. What a GPU wants: adjacent invocations
    read adjacent words, a few rows per workgroup.
    kind "shared": the same with a shared-memory tree reduction; works on every adapter.
    kind "row": every invocation walks whole rows on its own (rows / workgroup_size of them,
    workgroup_size apart), block by block, loading each weight word once; no shared memory, no
    barrier. What a CPU adapter (lavapipe) wants: it runs a workgroup's invocations as the SIMD
    lanes of one thread, turns every load from a per-lane address into a loop over the lanes and
    pays a fixed cost per workgroup, while arithmetic is nearly free. Uncoalesced reads make it a
    poor choice for a GPU.
    x_broadcast (row kind; needs the "subgroup" feature): the activations are shared within
    subgroups of that many lanes by subgroupBroadcast, each lane loading 1 / x_broadcast of them.
    A pipeline whose subgroups turn out to have another size takes plain loads (still correct);
    so does a type whose step is narrower than x_broadcast (the float types' 8 columns).
    tokens (row kind): tokens per pass; each weight step is read once for that many tokens.
    Any variant computes any number of tokens; 1 is what one-token (decode) steps want, and the
    least code to compile (lavapipe takes seconds for the bigger ones).
    """

    kind: str = "shared"
    workgroup_size: int = 64
    rows: int = LINEAR_ROWS_PER_WORKGROUP  # output rows per workgroup
    x_broadcast: int = 0
    tokens: int = 1

    def __post_init__(self):
        if self.kind not in LINEAR_KINDS:
            raise ValueError(f"linear variant kind must be one of {LINEAR_KINDS}, got {self.kind!r}")
        _check_workgroup_size(self.workgroup_size)
        if self.kind == "row":
            if self.rows % self.workgroup_size or self.rows // self.workgroup_size not in (1, 2, 4, 8):
                raise ValueError(f"row variant: rows ({self.rows}) must be 1, 2, 4 or 8 times "
                                 f"workgroup_size ({self.workgroup_size})")
            xb = self.x_broadcast
            if xb and (xb not in (4, 8, 16, 32) or self.workgroup_size % xb):
                raise ValueError(f"row variant: x_broadcast must be 0, 4, 8, 16 or 32 and divide workgroup_size "
                                 f"({self.workgroup_size}), got {xb}")
            if not 1 <= self.tokens <= LINEAR_MAX_TOKENS_PER_PASS:
                raise ValueError(f"row variant: tokens per pass must be in 1..{LINEAR_MAX_TOKENS_PER_PASS}, "
                                 f"got {self.tokens}")
        else:
            if not 1 <= self.rows <= 16:
                raise ValueError(f"{self.kind} variant: rows per workgroup must be in 1..16, got {self.rows}")
            if self.x_broadcast or self.tokens != 1:
                raise ValueError(f"{self.kind} variant: x_broadcast and tokens are for the row kind only")

    @property
    def rows_per_invocation(self) -> int:
        return self.rows // self.workgroup_size if self.kind == "row" else 1

    @property
    def needs_subgroups(self) -> bool:
        """Does the shader use subgroup operations (the device needs the "subgroup" feature)?"""
        return self.kind == "subgroup" or self.x_broadcast > 0

    @property
    def needs_f16(self) -> bool:
        """The mat-vec kernels compute in f32 (matmul.Tiles may not)."""
        return False

    @property
    def key(self) -> str:
        """A short stable name, e.g. "subgroup-wg64-r4" or "row-wg8-r64-b8-t2" (what the tuning cache stores)."""
        return (f"{self.kind}-wg{self.workgroup_size}-r{self.rows}" + (f"-b{self.x_broadcast}" if self.x_broadcast else "")
                + (f"-t{self.tokens}" if self.tokens != 1 else ""))

    @classmethod
    def from_key(cls, key: str) -> LinearVariant:
        """The inverse of `key`; ValueError for anything else."""
        m = re.fullmatch(r"([a-z]+)-wg(\d+)-r(\d+)(?:-b(\d+))?(?:-t(\d+))?", str(key))
        if m is None:
            raise ValueError(f"not a linear variant key: {key!r} (expected kind-wgN-rN[-bN][-tN])")
        try:
            return cls(m[1], int(m[2]), int(m[3]), int(m[4] or 0), int(m[5] or 1))
        except ValueError as e:
            raise ValueError(f"not a linear variant key: {key!r} ({e})") from None

    def tokens_per_pass(self, type_name: str) -> int:
        """Tokens sharing one dequantized weight unit in the several-token path: the row kind's
        `tokens`, else as many as the shared reduction's storage holds (at most 4)."""
        if self.kind == "row":
            return self.tokens
        per_token = 4 * self.rows * (self.workgroup_size if self.kind == "shared" else self._max_subgroups())
        return max(1, min(LINEAR_MAX_TOKENS_PER_PASS, _MAX_WORKGROUP_STORAGE // per_token))

    def _max_subgroups(self) -> int:
        return max(1, self.workgroup_size // _MIN_SUBGROUP_SIZE)


def row_step_cols(type_name: str) -> int:
    """Columns the row kind reads per step of a row of this type (the activations one step holds
    per token: what makes several tokens per pass costly to compile)."""
    return quant_type(type_name).row_step_cols


def _variant(variant: LinearVariant | None, workgroup_size: int, subgroup_size: int) -> LinearVariant:
    if variant is not None:
        if not isinstance(variant, LinearVariant):
            raise TypeError(f"variant must be a LinearVariant, got {type(variant).__name__}")
        return variant
    if subgroup_size < 0:
        raise ValueError(f"subgroup_size must be >= 0, got {subgroup_size}")
    return LinearVariant("subgroup" if subgroup_size > 0 else "shared", workgroup_size)


EMULATED_SUBGROUP_WIDTHS = (4, 8, 16, 32, 64, 128)


@cache  # one text per (type, variant, glu, norm): a model compiles the same few many times
def linear_shader(type_name: str, *, workgroup_size: int = 64, subgroup_size: int = 0,
                  variant: LinearVariant | None = None, glu: str = "", norm: str = "",
                  emulate_subgroups: int = 0) -> str:
    """WGSL for y[t, y_offset + r] (+)= sum_c x[t, c] * W[r, c], r < rows, t < n_tokens.
    With glu (an activation of GLU_ACTIVATIONS) x[t, c] is act(x[t, c]) * x[t, c + cols] instead,
    read from rows of 2 * cols (x_stride at least that).

    With norm (one of NORMS_ON_LOAD; one token only: n_tokens must be 1) the input is normed as
    it is loaded, with the norm's epsilon in the parameters' norm_eps (f32 bits) and its buffers
    bound after the planes: "rms", x[c] / rms(x) * w[c] (binding: w); "post_rms", x is the
    previous linear's output o, the kernel also writes the new residual h = r + o / rms(o) * w_post
    and reads h[c] / rms(h) * w_pre (bindings: r, w_post | w_pre, h -- never r itself).

    Bindings (group 0): 0 uniform LinearParams, 1 x (f32, read), 2 y (f32, read_write),
    3 + i plane i of the PackedWeight. The work split is `variant` (see LinearVariant); without
    one, workgroup_size and subgroup_size give the few-rows-per-workgroup kinds: subgroup_size
    > 0 reduces with subgroupAdd (the device must have the "subgroup" feature; the size itself
    is read at run time, never assumed), 0 with shared memory (works everywhere). Dispatch with
    linear_dispatch and the same variant. Subgroup code has no `enable subgroups;` line: wgpu's
    shader compiler (naga) rejects that directive and takes subgroup operations from the device
    feature instead.

    emulate_subgroups (the subgroup kind): subgroups of this many invocations (one of
    EMULATED_SUBGROUP_WIDTHS) emulated in workgroup memory, the subgroup builtins computed from
    the invocation index -- a device has one subgroup size, GPUs have 8 to 128, and this runs the
    kernel's subgroup bookkeeping with each of them (tests).
    """
    check_type(type_name)
    v = _variant(variant, workgroup_size, subgroup_size)
    if emulate_subgroups and (v.kind != "subgroup" or emulate_subgroups not in EMULATED_SUBGROUP_WIDTHS):
        raise ValueError(f"emulate_subgroups={emulate_subgroups}: needs the subgroup kind (got {v.kind}) and a "
                         f"width in {EMULATED_SUBGROUP_WIDTHS}")
    if v.kind == "row":
        return _row_linear_shader(type_name, v, glu, norm)
    src = shader_sections("quant_linear.wgsl")
    x_val, prologue = _x_input(type_name, glu, norm, row_kind=False)
    rows, wg = v.rows, v.workgroup_size
    tt = 1 if norm else v.tokens_per_pass(type_name)  # a norm on load: one token
    if v.kind == "subgroup":
        max_sg = v._max_subgroups()
        reduce_decl = fill(src["reduce_subgroup"], MAX_SG=f"{max_sg}u", RED_SIZE=max_sg * rows * tt)
        sg_params = ", sg_lane: u32, sg_id: u32, n_sg: u32"
        sg_builtins = (",\n        @builtin(subgroup_invocation_id) sg_lane: u32,"
                       "\n        @builtin(subgroup_id) sg_id: u32,"
                       "\n        @builtin(num_subgroups) n_sg: u32")
        sg_args = ", sg_lane, sg_id, n_sg"
        sg_locals = ""
        reduce_body, reduce_total = src["reduce_subgroup_body"], src["reduce_subgroup_total"]
        if emulate_subgroups:
            w = emulate_subgroups
            reduce_decl += fill(src["emulated_subgroups"], SGW=f"{w}u", WG=f"{wg}u")
            sg_builtins = ""
            sg_locals = (f"    let sg_lane = lid % {w}u;\n    let sg_id = lid / {w}u;\n"
                         f"    let n_sg = {-(-wg // w)}u;")
            reduce_body = reduce_body.replace("subgroupAdd(acc[i])", "sg_add(acc[i], lid)")
    else:
        reduce_decl = fill(src["reduce_shared"], RED_SIZE=wg * rows * tt)
        sg_params = sg_builtins = sg_args = sg_locals = ""
        reduce_body, reduce_total = src["reduce_shared_body"], src["reduce_shared_total"]
    passes = []
    for nt in sorted({1, tt}):
        values = f"{rows * nt}u"
        passes.append(fill(src["pass"], PASS=nt, NT=f"{nt}u", V=values, SG_PARAMS=sg_params,
                            REDUCE=fill(reduce_body, V=values).rstrip("\n"),
                            TOTAL=fill(reduce_total, V=values).rstrip("\n")))
    main = fill(src["main"], WG=wg, SG_BUILTINS=sg_builtins, SG_ARGS=sg_args, TT_PASS=tt, SG_LOCALS=sg_locals,
                PROLOGUE=prologue)
    header = fill(src["header"], WG=f"{wg}u", ROWS=f"{rows}u", TT=f"{tt}u", X_VAL=x_val)
    return "\n".join([f"// linear kernel for {type_name} weights\n", dequant_source(type_name), src["params"], header,
                      reduce_decl, *passes, main])


def _row_linear_shader(type_name: str, v: LinearVariant, glu: str, norm: str) -> str:
    """The row kind: quant_linear.wgsl's row sections (header, the type's block reader, main) and
    generated code in between whose loops over tokens and over a step's vec4s are written out (a
    CPU adapter keeps values in registers only where array indices are constants)."""
    src = shader_sections("quant_linear.wgsl")
    qt = quant_type(type_name)
    x_val, prologue = _x_input(type_name, glu, norm, row_kind=True)
    rpt, wg = v.rows_per_invocation, v.workgroup_size
    tt = 1 if norm else v.tokens_per_pass(type_name)  # a norm on load: one token
    step = qt.row_step_cols
    xb = v.x_broadcast if v.x_broadcast and step % v.x_broadcast == 0 else 0
    nv = step // 4
    arr = f"array<vec4<f32>, {nv}>"

    def vec4(items) -> str:
        return f"vec4<f32>({', '.join(items)})"

    load = [f"// x[t, c0 .. c0 + {step - 1}] as {nv} vec4s",
            f"fn load_xs(t: u32, c0: u32, lane: u32, xshare: bool) -> {arr} {{"]
    if xb:
        load.append(f"    if (xshare) {{  // lane i loads columns c0 + i, c0 + i + {xb}, ..., the others take them over")
        load += [f"        let v{m} = x_at(t, c0 + lane + {m * xb}u);" for m in range(step // xb)]
        items = (vec4(f"subgroupBroadcast(v{e // xb}, {e % xb}u)" for e in range(4 * k, 4 * k + 4)) for k in range(nv))
        load += [f"        return {arr}({', '.join(items)});", "    }"]
    items = (vec4(f"x_at(t, c0 + {4 * k + i}u)" for i in range(4)) for k in range(nv))
    load += [f"    return {arr}({', '.join(items)});", "}", "",
             f"fn dot_step(w: {arr}, xs: {arr}) -> vec4<f32> {{",
             "    return " + " + ".join(f"w[{k}] * xs[{k}]" for k in range(nv)) + ";", "}"]
    passes = ["\n".join(load)]
    for nt in (tt,):
        body = [f"// rows row + r * WG (r < RPT), tokens t0 .. t0 + {nt - 1}; an invocation past the last row",
                "// computes a copy of it and stores nothing (a subgroup stays whole for subgroupBroadcast)",
                f"fn row_pass_{nt}(row: u32, t0: u32, lane: u32, xshare: bool) {{"]
        body += [f"    let tk{t} = min(t0 + {t}u, prm().n_tokens - 1u);" for t in range(nt)]
        body += [f"    var acc: array<vec4<f32>, {rpt * nt}>;  // [row][token], four partial sums each",
                 "    var heads: array<Head, RPT>;",
                 "    let nb = n_blocks(prm().cols);",
                 "    for (var b = 0u; b < nb; b++) {",
                 "        for (var r = 0u; r < RPT; r++) {",
                 "            heads[r] = load_head(min(row + r * WG, prm().rows - 1u), b);",
                 "        }",
                 "        for (var j = 0u; j < BLOCK / SUBW; j++) {",
                 "            let c0 = b * BLOCK + j * SUBW;",
                 "            if (c0 >= prm().cols) {  // a row that ends in half a block",
                 "                break;",
                 "            }"]
        body += [f"            let x{t} = load_xs(tk{t}, c0, lane, xshare);" for t in range(nt)]
        body += ["            // a loop, not written out: as fast on lavapipe, and far less code to compile",
                 "            for (var r = 0u; r < RPT; r++) {",
                 "                let rr = min(row + r * WG, prm().rows - 1u);",
                 "                let w = sub_weights(rr, b, j, heads[r]);"]
        acc = (lambda t: f"acc[r * {nt}u + {t}u]") if nt > 1 else (lambda t: "acc[r]")
        body += [f"                {acc(t)} += dot_step(w, x{t});" for t in range(nt)]
        body += ["            }", "        }", "    }", "    for (var r = 0u; r < RPT; r++) {"]
        body += [f"        store_y(row + r * WG, t0 + {t}u, hsum({acc(t)}));" for t in range(nt)]
        body += ["    }", "}"]
        passes.append("\n".join(body))
    if xb:
        builtins = (",\n        @builtin(subgroup_invocation_id) lane: u32,"
                    "\n        @builtin(subgroup_size) sg_size: u32,"
                    "\n        @builtin(num_subgroups) n_sg: u32")
        share = "let xshare = sg_size == XB && n_sg * XB == WG;  // whole subgroups of XB lanes"
    else:
        builtins, share = "", "let xshare = false;\n    let lane = 0u;"
    header = fill(src["row_header"], WG=f"{wg}u", ROWS=f"{v.rows}u", RPT=f"{rpt}u", TT=f"{tt}u", XB=f"{xb}u",
                   X_VAL=x_val)
    blocks = "".join(src[section] for section in qt.row_sections)
    main = fill(src["row_main"], WG=wg, BUILTINS=builtins, XSHARE=share, TT_PASS=tt, PROLOGUE=prologue)
    return "\n".join([f"// linear kernel for {type_name} weights, variant {v.key}\n", dequant_source(type_name),
                      src["params"], header, blocks, *passes, main])


def linear_dispatch(type_name: str, rows: int, n_tokens: int, *, workgroup_size: int = 64,
                    max_per_dim: int = 65535, variant: LinearVariant | None = None) -> tuple[int, int, int]:
    """Workgroup counts for linear_shader over `rows` output rows and `n_tokens` tokens.

    The row groups are folded into x * y when there are more than max_per_dim of them (the
    shader skips the extra groups); z spreads token tiles and may be any count >= 1.
    """
    check_type(type_name)
    v = _variant(variant, workgroup_size, 0)
    groups = max(1, -(-rows // v.rows))
    gx = min(groups, max_per_dim)
    gy = -(-groups // gx)
    if gy > max_per_dim:
        raise ValueError(f"{rows} rows need {groups} workgroups, more than {max_per_dim} ** 2")
    tiles = 1 if n_tokens <= 1 else -(-n_tokens // v.tokens_per_pass(type_name))
    return gx, gy, min(tiles, max_per_dim)


def embed_shader(type_name: str) -> str:
    """WGSL: y[t * y_stride + c] = scale * W[ids[t] - row_start, c] for the tokens of this piece.

    Bindings (group 0): 0 uniform EmbedParams, 1 ids (u32, read), 2 y (f32, read_write),
    3 + i plane i. Tokens whose id is outside [row_start, row_start + rows) are not written.
    With scale == 1 the values are bit-identical to gguf.quants.dequantize. Dispatch with
    embed_dispatch.
    """
    src = shader_sections("quant_embed.wgsl")
    return "\n".join([f"// embedding lookup for {type_name} weights\n", dequant_source(type_name),
                      fill(src["main"], WG=EMBED_WORKGROUP_SIZE)])


def embed_dispatch(type_name: str, cols: int, n_tokens: int) -> tuple[int, int, int]:
    """Workgroup counts for embed_shader: x over the row's 8-weight units, y * z over tokens."""
    check_type(type_name)
    units = -(-cols // 8)
    gx = max(1, -(-units // EMBED_WORKGROUP_SIZE))
    gy = max(1, min(n_tokens, 65535))
    return gx, gy, max(1, -(-n_tokens // gy))


__all__ = ["LINEAR_KINDS", "QUANT_TYPES", "SUPPORTED_TYPES", "WIDENS_TO_Q8_0", "LinearVariant", "PackedWeight",
           "QuantType", "check_type", "dequant_source", "device_type", "embed_dispatch", "embed_shader",
           "linear_dispatch", "linear_shader", "pack", "plane_row_words", "quant_type", "row_step_cols", "split_rows",
           "stacked_runs", "widen_to_q8_0"]
