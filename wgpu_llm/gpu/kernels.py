"""Our WGSL kernels (shaders/*.wgsl, one family per file) and how each is specialised and bound.

A shader file holds a kernel body. The loader prepends a generated header -- the `Params` struct
(static per dispatch), the `Step` uniform (pos0, n_tokens, kv_base, or a row table for a batched step; written once per
step), the storage
bindings and an accessor per buffer role (`ld_x(i)`, `st_y(i, v)`) -- and specialises the body:
lines between `#if FLAG` / `#else` / `#endif` are kept or dropped, `{{NAME}}` becomes a constant.
Roles that name the same GPU buffer share one binding (read_write when any of them writes), so a
kernel can run in place without binding a buffer twice, which WebGPU forbids.

Every builder returns a `Kernel`: the WGSL text, its parameter bytes, its buffers and its grid;
runtime.Program turns a list of them into pipelines and bind groups once. Grids over 65535
workgroups fold into 2-D; kernels rebuild the flat workgroup index from `num_workgroups`.
Each kernel's numpy twin is in cpu_fallback/ops.py.
"""

from __future__ import annotations

import re
import string
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from wgpu_llm.memory import check_kv_type as check_kv_type_name


def _shader_dir() -> Path:
    """wgpu_llm/shaders in an installed wheel, shaders/ at the top of a source tree."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "shaders", package.parent / "shaders"):
        if (candidate / "attention.wgsl").is_file():
            return candidate
    raise FileNotFoundError(f"WGSL shaders not found in {package / 'shaders'} or {package.parent / 'shaders'}")


@cache
def shader_sections(file_name: str) -> dict[str, str]:
    """The sections of a shader file assembled in Python (quant.py, matmul.py): the lines after
    a `//! name` line, up to the next one."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in (_shader_dir() / file_name).read_text().splitlines(keepends=True):
        if line.startswith("//! "):
            current = line[4:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "".join(lines) for name, lines in sections.items()}


def fill(template: str, **values) -> str:
    """string.Template substitution of $NAME placeholders in a shader section."""
    return string.Template(template).substitute({k: str(v) for k, v in values.items()})


# ---- per-adapter choices ----
@dataclass(frozen=True)
class KernelConfig:
    """Kernel variants and workgroup sizes for one adapter (all powers of two)."""

    linear_wg: int = 64  # quant.linear_shader workgroup size, one token (decode)
    linear_wg_tokens: int = 64  # the same for steps of several tokens (prefill)
    linear_subgroup: int = 0  # subgroup size handed to quant.linear_shader (0: shared-memory reduction)
    linear_whole_rows: bool = False  # CPU-type adapter: linears use the "row" kind (see linear_variant)
    norm_wg: int = 64  # rms_norm over groups up to 256 columns
    norm_wg_wide: int = 256  # rms_norm over wider groups (whole rows)
    attn_wg: int = 64  # attention: positions per chunk = threads per workgroup
    attn_split: bool = False  # decode attention may split the context over workgroups (attention_variant)
    elt_wg: int = 256  # elementwise kernels
    argmax_wg: int = 256
    max_per_dim: int = 65535


def choose_config(caps) -> KernelConfig:
    """The one place where kernel variants are picked from the adapter; a tuning pass may replace
    the linear choice per shape (wgpu_llm/gpu/tune.py).

    The quantized linear kernels reduce with subgroupAdd where the device has subgroups (they read
    the subgroup size and count at run time, so drivers that vary it per pipeline are fine), a few
    rows per workgroup, adjacent invocations reading adjacent words: what GPUs want. A software
    adapter (lavapipe, SwiftShader, WARP) runs a workgroup's invocations as the SIMD lanes of one
    CPU thread, makes loads from per-lane addresses loops over the lanes and pays a fixed cost
    per workgroup: there every invocation walks whole rows (linear_variant) -- unless
    WGPU_LLM_FORCE_HARDWARE_KERNELS=1 (device.software_kernels). Decode attention splits long
    contexts over workgroups on a GPU only (attention_variant)."""
    from .device import software_kernels

    software = software_kernels(caps.info)
    subgroup = caps.subgroup_size if caps.subgroups and caps.subgroup_size >= 4 else 0
    wide = 256 if caps.max_invocations >= 256 else 64
    return KernelConfig(linear_subgroup=subgroup, linear_whole_rows=software, norm_wg_wide=wide,
                        elt_wg=wide, argmax_wg=wide, max_per_dim=caps.max_per_dim, attn_split=not software)


def linear_variant(cfg: KernelConfig, type_name: str, rows: int, cols: int, n_tokens: int):
    """The heuristic quant.LinearVariant of one linear dispatch: a (rows, cols) weight of type
    type_name applied to n_tokens tokens (tune.LinearChoice uses tuned winners where it has them).

    GPU: 4 rows per workgroup of linear_wg (one token) or linear_wg_tokens invocations, reduced
    with subgroupAdd or in shared memory. CPU-type adapter: the row kind in workgroups of one
    subgroup (8 lanes at least) sharing x by subgroupBroadcast when the adapter has subgroups;
    one token: 8 rows per invocation where that still makes 4 workgroups, else 4 (measured on
    lavapipe, 2 cores, every linear shape of SmolLM2 and Gemma 3: 1 or 2 rows per invocation were
    5-50% slower, 16 or 32 lanes within a few % either way); several tokens: 4 rows per invocation
    and up to 128 activations (4 tokens of a 32-column step) per pass."""
    from .quant import LinearVariant, row_step_cols

    if cfg.linear_whole_rows:
        share = cfg.linear_subgroup if cfg.linear_subgroup in (4, 8, 16, 32) else 0
        wg = max(8, share)
        if n_tokens == 1:
            return LinearVariant("row", wg, (8 if rows >= 4 * 8 * wg else 4) * wg, share)
        return LinearVariant("row", wg, 4 * wg, share, max(1, min(4, 128 // row_step_cols(type_name))))
    wg = cfg.linear_wg if n_tokens == 1 else cfg.linear_wg_tokens
    return LinearVariant("subgroup" if cfg.linear_subgroup else "shared", wg)


def check_kv_type(kv_type: str, head_dim: int, label: str) -> None:
    """The attention kernels store the cache two elements at a time (a u32 word of two halves)."""
    check_kv_type_name(kv_type, label)
    if head_dim % 2:
        raise ValueError(f"{label}: head_dim {head_dim} is odd; the attention kernels need an even head size")


def auto_kv_type(info) -> str:
    """The KV cache type "auto" means on a GPU adapter (a device.AdapterInfo or anything with
    is_software and shader_f16): f16 on a hardware GPU with the shader-f16 feature -- the mark of
    native half-precision support, where halving the cache's reads pays -- else f32. A software
    adapter keeps f32 unless WGPU_LLM_FORCE_HARDWARE_KERNELS=1 (device.software_kernels), the
    rule of the other kernel choices. The f16 cache itself needs no feature (kv_cache.wgsl)."""
    from .device import software_kernels

    return "f16" if getattr(info, "shader_f16", False) and not software_kernels(info) else "f32"


@dataclass(frozen=True)
class AttentionVariant:
    """How the one-query-per-workgroup attention (decode steps, batched steps, short chunks) runs:
    splits = 1: one workgroup per (row, head) scans the row's whole visible context; splits > 1:
    flash-decoding, each (row, head) over `splits` workgroups then a merge (attention_split);
    kv_type: the cache's element type (shaders/kv_cache.wgsl)."""

    splits: int = 1
    kv_type: str = "f32"

    @property
    def key(self) -> str:
        kind = "one-workgroup" if self.splits == 1 else "split-kv"
        return kind if self.kv_type == "f32" else f"{kind}-{self.kv_type}-cache"


SPLIT_KEYS = 256  # visible keys per split at the longest context a step can see
MAX_SPLITS = 32


def attention_variant(cfg: KernelConfig, n_ctx: int, window: int, kv_type: str = "f32") -> AttentionVariant:
    """The rule for splitting decode attention over the context: on a GPU (cfg.attn_split), a
    step whose rows may see more than SPLIT_KEYS keys (n_ctx, or the window when smaller) gets one
    split per SPLIT_KEYS of them, at most MAX_SPLITS: a decode step has only rows x heads
    workgroups otherwise, too few to fill a GPU, each walking the whole context. Steps are compiled
    once for every position, so the count comes from the longest visible context; at run time
    each row's visible keys are shared evenly among the splits (at least attn_wg keys each) and
    splits past them do nothing.
    A software adapter keeps one workgroup per (row, head): there a decode step's heads already
    spread over the few cores, and splitting adds a dispatch and work. Measured on lavapipe (2
    shared cores, two runs), one attention dispatch of Gemma 3 270M's 4 heads of 256 dims over a
    whole context of 64 / 512 / 2048 keys, CPU time: one workgroup per head 1.6-2.1 / 15 /
    43-57 ms, 2 splits 1.8-2.2 / 9-16 / 52-58 ms, 8 splits 2.5-2.9 / 10-15 / 47-59 ms: no
    consistent gain at long contexts, a loss at short ones.
    WGPU_LLM_FORCE_HARDWARE_KERNELS=1 takes the GPU rule there. kv_type is the backend's, carried along."""
    if n_ctx < 1:
        raise ValueError(f"attention_variant: n_ctx must be >= 1, got {n_ctx}")
    if not cfg.attn_split:
        return AttentionVariant(1, kv_type)
    visible = min(n_ctx, window) if window > 0 else n_ctx
    return AttentionVariant(min(MAX_SPLITS, -(-visible // SPLIT_KEYS)), kv_type)


# ---- the dispatch description ----
@dataclass(frozen=True)
class Role:
    """A buffer as a kernel sees it: accessor names ld_<name> / st_<name>, element type."""

    name: str
    buffer: object
    write: bool = False
    elem: str = "f32"


@dataclass
class Kernel:
    label: str
    source: str
    entry: str
    params: bytes  # contents of the binding-0 uniform
    uses_step: bool  # binding 1 = the step uniform (pos0, n_tokens, kv_base)
    buffers: list  # [(binding, buffer, read_only)] for bindings >= 2 (or >= 1 for foreign kernels)
    grid: tuple[int, int, int]
    explicit_layout: bool = True  # False: let wgpu derive the layout (kernels written elsewhere)


def fold_grid(n: int, max_per_dim: int = 65535) -> tuple[int, int, int]:
    """n workgroups as an (x, y, 1) grid with x, y <= max_per_dim; kernels skip flat ids >= n."""
    n = max(1, int(n))
    if n <= max_per_dim:
        return (n, 1, 1)
    y = -(-n // max_per_dim)
    x = -(-n // y)
    if y > max_per_dim:
        raise ValueError(f"{n} workgroups do not fit a {max_per_dim}^2 grid")
    return (x, y, 1)


def _pack_params(fields: list[tuple[str, str, float]]) -> tuple[str, bytes]:
    """(WGSL struct text, bytes) for [(name, 'u32'|'i32'|'f32', value)], padded to 16 bytes."""
    fields = list(fields)
    while len(fields) % 4:
        fields.append((f"_pad{len(fields)}", "u32", 0))
    fmt = {"u32": "I", "i32": "i", "f32": "f"}
    data = b"".join(struct.pack("<" + fmt[t], (float(v) if t == "f32" else int(v))) for _, t, v in fields)
    body = "\n".join(f"    {n}: {t}," for n, t, _ in fields)
    return f"struct Params {{\n{body}\n}}\n", data


@cache
def _shader_text(name: str) -> str:
    return (_shader_dir() / f"{name}.wgsl").read_text()


def specialise(text: str, flags: dict[str, bool], consts: dict[str, object]) -> str:
    """Apply #if/#else/#endif on FLAGS and replace {{NAME}} with constants."""
    out, stack = [], []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#if "):
            name = s[4:].strip()
            neg = name.startswith("!")
            value = bool(flags.get(name.lstrip("!"), False))
            stack.append(value != neg)
            continue
        if s == "#else":
            stack[-1] = not stack[-1]
            continue
        if s == "#endif":
            stack.pop()
            continue
        if all(stack):
            out.append(line)
    if stack:
        raise ValueError("unbalanced #if in shader")
    text = "\n".join(out)

    def sub(m):
        key = m.group(1)
        if key not in consts:
            raise KeyError(f"shader constant {{{{{key}}}}} not given")
        v = consts[key]
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return f"{v}u"
        return repr(float(v))

    return re.sub(r"\{\{(\w+)\}\}", sub, text)


MAX_BATCH_ROWS = 64  # rows of a batched step, one per sequence: the Step uniform's row table
STEP_BYTES = 16 + 16 * MAX_BATCH_ROWS
# The step uniform. A step of one sequence: row r sits at position pos0 + r, its K/V at cache row
# kv_base + position. A batched step (batched = 1, a decode step of several sequences): row r is one
# sequence's only row, at position rows[r].x, its cache starting at row rows[r].y.
STEP_WGSL = ("struct Step { pos0: u32, n_tokens: u32, kv_base: u32, batched: u32, "
             f"rows: array<vec4<u32>, {MAX_BATCH_ROWS}>, }}")
STEP_FUNCTIONS = """
fn row_pos(row: u32) -> u32 { if (S.batched == 0u) { return S.pos0 + row; } return S.rows[row].x; }
fn row_base(row: u32) -> u32 { if (S.batched == 0u) { return S.kv_base; } return S.rows[row].y; }
// the position and the row of the first of the step's rows that belong to row's sequence
fn span_pos0(row: u32) -> u32 { if (S.batched == 0u) { return S.pos0; } return S.rows[row].x; }
fn span_row0(row: u32) -> u32 { if (S.batched == 0u) { return 0u; } return row; }"""


def build(family: str, label: str, params: list, roles: list[Role], grid, *, flags=None, consts=None,
          uses_step: bool = False, entry: str = "main") -> Kernel:
    """Specialise shaders/<family>.wgsl and describe one dispatch of it."""
    struct_text, pbytes = _pack_params(params)
    header = [struct_text, "@group(0) @binding(0) var<uniform> P: Params;"]
    if uses_step:
        header += [STEP_WGSL, "@group(0) @binding(1) var<uniform> S: Step;", STEP_FUNCTIONS]
    groups: list[list[Role]] = []
    for r in roles:
        for g in groups:
            if g[0].buffer is r.buffer:
                if g[0].elem != r.elem:
                    raise ValueError(f"{label}: buffer bound as {g[0].elem} and {r.elem}")
                g.append(r)
                break
        else:
            groups.append([r])
    buffers = []
    for i, g in enumerate(groups):
        binding = 2 + i
        write = any(r.write for r in g)
        access = "read_write" if write else "read"
        elem = g[0].elem
        header.append(f"@group(0) @binding({binding}) var<storage, {access}> buf{binding}: array<{elem}>;")
        for r in g:
            header.append(f"fn ld_{r.name}(i: u32) -> {elem} {{ return buf{binding}[i]; }}")
            if r.write:
                header.append(f"fn st_{r.name}(i: u32, v: {elem}) {{ buf{binding}[i] = v; }}")
        buffers.append((binding, g[0].buffer, not write))
    header.append("fn flat_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }")
    body = specialise(_shader_text(family), flags or {}, consts or {})
    if "sincos(" in body:  # the shared accurate sin/cos (shaders/sincos.wgsl)
        body = _shader_text("sincos") + "\n" + body
    if "kv_round" in body:  # the KV cache's accessors, f32 or packed f16 (shaders/kv_cache.wgsl)
        body = specialise(_shader_text("kv_cache"), flags or {}, {}) + "\n" + body
    source = "\n".join(header) + "\n\n" + body
    return Kernel(label, source, entry, pbytes, uses_step, buffers, tuple(grid), True)


@dataclass(frozen=True)
class View:
    """Rows of an activation inside a buffer: element (r, c) is at offset + r * stride + c."""

    buffer: object
    offset: int
    stride: int


# ---- kernels ----
def rms_norm(cfg: KernelConfig, rows: int, width: int, group: int, eps: float, x: View, w, y: View,
             residual: View | None = None, rope: dict | None = None, rope_freqs=None, label="rms_norm",
             w_split: int | None = None, then: tuple | None = None) -> Kernel:
    """y = x / rms(x) * w per group of `group` columns [+ residual] [then rope per group].

    w_split: groups from this one on take the weights at w[group:] (w holds two vectors);
    then (w2, eps2, z: View): with a residual on whole rows, also z = y / rms(y) * w2."""
    n_groups = width // group
    wg = cfg.norm_wg if group <= 256 else cfg.norm_wg_wide
    if then is not None and (residual is None or rope is not None or n_groups != 1):
        raise ValueError(f"{label}: a second norm needs a residual, whole rows and no rope")
    params = [("rows", "u32", rows), ("n_groups", "u32", n_groups), ("group", "u32", group),
              ("eps", "f32", eps), ("x_off", "u32", x.offset), ("x_stride", "u32", x.stride),
              ("y_off", "u32", y.offset), ("y_stride", "u32", y.stride),
              ("w_split", "u32", n_groups if w_split is None else w_split)]
    roles = [Role("x", x.buffer), Role("w", w)]
    if residual is not None:
        params += [("r_off", "u32", residual.offset), ("r_stride", "u32", residual.stride)]
        roles.append(Role("res", residual.buffer))
    if rope is not None:
        params += [("n_rot", "u32", rope["n_rot"]), ("neox", "u32", int(rope["neox"])),
                   ("attn_factor", "f32", rope.get("attn_factor", 1.0))]
        roles.append(Role("freq", rope_freqs))
    roles.append(Role("y", y.buffer, write=True))
    if then is not None:
        w2, eps2, z = then
        params += [("eps2", "f32", eps2), ("z_off", "u32", z.offset), ("z_stride", "u32", z.stride)]
        roles += [Role("w2", w2), Role("z", z.buffer, write=True)]
    return build("rms_norm", label, params, roles, fold_grid(rows * n_groups, cfg.max_per_dim),
                 flags={"RESIDUAL": residual is not None, "ROPE": rope is not None, "NEXT": then is not None},
                 consts={"WG": wg, "GROUP": group}, uses_step=rope is not None)


def rope(cfg: KernelConfig, rows: int, width: int, head_dim: int, n_rot: int, neox: bool, freqs, x: View, y: View,
         label="rope", attn_factor: float = 1.0) -> Kernel:
    """Rotary embedding per head at positions pos0 + row; freqs: (n_rot/2,) f32 buffer;
    attn_factor: multiplies the rotated dimensions (cos and sin), as llama.cpp's rope does."""
    if head_dim % 2 or n_rot % 2 or n_rot > head_dim:
        raise ValueError(f"rope: head_dim {head_dim} / n_rot {n_rot}")
    n_heads = width // head_dim
    total = rows * n_heads * (head_dim // 2)
    params = [("rows", "u32", rows), ("n_heads", "u32", n_heads), ("head_dim", "u32", head_dim),
              ("n_rot", "u32", n_rot), ("neox", "u32", int(neox)), ("attn_factor", "f32", attn_factor),
              ("total", "u32", total),
              ("x_off", "u32", x.offset), ("x_stride", "u32", x.stride),
              ("y_off", "u32", y.offset), ("y_stride", "u32", y.stride)]
    roles = [Role("x", x.buffer), Role("freq", freqs), Role("y", y.buffer, write=True)]
    return build("rope", label, params, roles, fold_grid(-(-total // cfg.elt_wg), cfg.max_per_dim),
                 consts={"WG": cfg.elt_wg}, uses_step=True)


@dataclass(frozen=True)
class HeadPrep:
    """What attention does to the raw q and k heads first, in place of the ops before it: each
    head's rms norm (norm_w: q's head_dim weights then k's, or None for no norm), then the rotary
    embedding (kernels.rope's parameters). Only for steps with one row per sequence."""

    n_rot: int
    neox: bool
    attn_factor: float
    freqs: object  # (n_rot/2,) f32 buffer
    norm_w: object = None
    eps: float = 0.0


def attention(cfg: KernelConfig, rows: int, n_head: int, n_kv_head: int, head_dim: int, scale: float,
              window: int, q: View, k: View, v: View, k_cache, v_cache, y: View, label="attention",
              softcap: float = 0.0, kv_type: str = "f32", prep: HeadPrep | None = None,
              batched: bool = False) -> Kernel:
    """Store the step's k, v rows into the caches at pos0.., then causal (windowed) GQA attention;
    softcap > 0: scores s become softcap * tanh(s / softcap) before the softmax;
    kv_type "f16": the caches hold halves, two to a u32 (kv_cache_roles);
    prep: q and k are raw and prepared first (HeadPrep), for one row (batched: one per sequence)."""
    check_kv_type(kv_type, head_dim, label)
    params = _attention_params(rows, n_head, n_kv_head, head_dim, scale, window, softcap, q, k, v, y, 1)
    roles = [Role("q", q.buffer), Role("k", k.buffer), Role("v", v.buffer), *kv_cache_roles(k_cache, v_cache, kv_type),
             Role("y", y.buffer, write=True)]
    params, roles, flags = _with_prep(prep, rows, batched, head_dim, params, roles, label)
    return build("attention", label, params, roles, fold_grid(rows * n_head, cfg.max_per_dim),
                 flags={"KV_F16": kv_type == "f16", **flags}, consts=_attention_consts(cfg, head_dim), uses_step=True)


def _with_prep(prep: HeadPrep | None, rows: int, batched: bool, head_dim: int, params: list, roles: list, label: str):
    """The attention kernel's parameters, roles and flags with a HeadPrep's added."""
    if prep is None:
        return params, roles, {}
    if rows > 1 and not batched:
        raise ValueError(f"{label}: preparing q and k in attention needs one row per sequence, not {rows} rows")
    if prep.n_rot % 2 or prep.n_rot > head_dim:
        raise ValueError(f"{label}: n_rot {prep.n_rot} for heads of {head_dim}")
    params = params + [("n_rot", "u32", prep.n_rot), ("neox", "u32", int(prep.neox)),
                       ("attn_factor", "f32", prep.attn_factor), ("eps", "f32", prep.eps)]
    roles = roles + [Role("freq", prep.freqs)] + ([] if prep.norm_w is None else [Role("qk_w", prep.norm_w)])
    return params, roles, {"PREP": True, "QK_NORM": prep.norm_w is not None}


def kv_cache_roles(k_cache, v_cache, kv_type: str) -> list[Role]:
    """The caches as the attention kernels bind them: f32 elements, or u32 words of two halves."""
    elem = "u32" if kv_type == "f16" else "f32"
    return [Role("kc", k_cache, write=True, elem=elem), Role("vc", v_cache, write=True, elem=elem)]


def attention_split(cfg: KernelConfig, rows: int, n_head: int, n_kv_head: int, head_dim: int, scale: float,
                    window: int, q: View, k: View, v: View, k_cache, v_cache, y: View, part, splits: int,
                    label="attention", softcap: float = 0.0, kv_type: str = "f32", prep: HeadPrep | None = None,
                    batched: bool = False) -> list[Kernel]:
    """`attention` as two dispatches (flash-decoding): (row, head, split) workgroups each over a
    contiguous range of the row's visible keys, writing their max, sum and unnormalised output to
    `part` (a buffer of at least split_part_floats(...) floats); then one workgroup per (row, head)
    merging them into y. The first dispatch stores the step's k, v rows (it reads the step's own
    keys from k, v, so no split waits for that store). prep: as attention's."""
    if splits < 1:
        raise ValueError(f"{label}: splits must be >= 1, got {splits}")
    if n_head % n_kv_head:
        raise ValueError(f"{label}: n_head {n_head} is not a multiple of n_kv_head {n_kv_head}")
    check_kv_type(kv_type, head_dim, label)
    consts = _attention_consts(cfg, head_dim)
    params = _attention_params(rows, n_head, n_kv_head, head_dim, scale, window, softcap, q, k, v, y, splits)
    roles = [Role("q", q.buffer), Role("k", k.buffer), Role("v", v.buffer), *kv_cache_roles(k_cache, v_cache, kv_type),
             Role("part", part, write=True)]
    params, roles, flags = _with_prep(prep, rows, batched, head_dim, params, roles, label)
    partial = build("attention", f"{label} (splits)", params, roles,
                    fold_grid(rows * n_head * splits, cfg.max_per_dim),
                    flags={"SPLIT": True, "KV_F16": kv_type == "f16", **flags}, consts=consts, uses_step=True)
    merge_params = [("rows", "u32", rows), ("n_head", "u32", n_head), ("splits", "u32", splits),
                    ("y_off", "u32", y.offset), ("y_stride", "u32", y.stride)]
    merge = build("attention_merge", f"{label} (merge)", merge_params,
                  [Role("part", part), Role("y", y.buffer, write=True)],
                  fold_grid(rows * n_head, cfg.max_per_dim), consts={"WG": cfg.attn_wg, "HD": head_dim})
    return [partial, merge]


def split_part_floats(rows: int, n_head: int, head_dim: int, splits: int) -> int:
    """Floats of attention_split's part buffer: m, l and head_dim outputs per (row, head, split)."""
    return rows * n_head * splits * (head_dim + 2)


def _attention_consts(cfg: KernelConfig, head_dim: int) -> dict:
    return {"WG": cfg.attn_wg, "HD": head_dim, "DPT": -(-head_dim // cfg.attn_wg)}


def _attention_params(rows, n_head, n_kv_head, head_dim, scale, window, softcap, q: View, k: View, v: View, y: View,
                      splits: int) -> list:
    return [("rows", "u32", rows), ("n_head", "u32", n_head), ("group", "u32", n_head // n_kv_head),
              ("kv_width", "u32", n_kv_head * head_dim), ("window", "u32", window), ("scale", "f32", scale),
              ("softcap", "f32", softcap),
              ("q_off", "u32", q.offset), ("q_stride", "u32", q.stride),
              ("k_off", "u32", k.offset), ("k_stride", "u32", k.stride),
              ("v_off", "u32", v.offset), ("v_stride", "u32", v.stride),
              ("y_off", "u32", y.offset), ("y_stride", "u32", y.stride), ("splits", "u32", splits)]


def glu(cfg: KernelConfig, rows: int, half: int, activation: str, x: View, y: View, label="glu") -> Kernel:
    """y = act(x[:, :half]) * x[:, half:] with act silu or gelu_tanh."""
    if activation not in ("silu", "gelu_tanh"):
        raise ValueError(f"glu: activation {activation!r}")
    total = rows * half
    params = [("rows", "u32", rows), ("half", "u32", half), ("total", "u32", total),
              ("x_off", "u32", x.offset), ("x_stride", "u32", x.stride),
              ("y_off", "u32", y.offset), ("y_stride", "u32", y.stride)]
    roles = [Role("x", x.buffer), Role("y", y.buffer, write=True)]
    return build("glu", label, params, roles, fold_grid(-(-total // cfg.elt_wg), cfg.max_per_dim),
                 flags={"GELU": activation == "gelu_tanh"}, consts={"WG": cfg.elt_wg})


def _eltwise(cfg, op: str, rows: int, width: int, a: View, b: View | None, y: View, factor: float, label,
             b_at_pos: bool = False) -> Kernel:
    total = rows * width
    params = [("rows", "u32", rows), ("width", "u32", width), ("total", "u32", total), ("factor", "f32", factor),
              ("a_off", "u32", a.offset), ("a_stride", "u32", a.stride),
              ("b_off", "u32", b.offset if b else 0), ("b_stride", "u32", b.stride if b else 0),
              ("y_off", "u32", y.offset), ("y_stride", "u32", y.stride)]
    roles = [Role("a", a.buffer)] + ([Role("b", b.buffer)] if b else []) + [Role("y", y.buffer, write=True)]
    return build("eltwise", label, params, roles, fold_grid(-(-total // cfg.elt_wg), cfg.max_per_dim),
                 flags={"ADD": op == "add", "SCALE": op == "scale", "SOFTCAP": op == "softcap", "GELU": op == "gelu",
                        "B_AT_POS": b_at_pos},
                 consts={"WG": cfg.elt_wg}, uses_step=b_at_pos)


def add(cfg, rows, width, a: View, b: View, y: View, label="add") -> Kernel:
    return _eltwise(cfg, "add", rows, width, a, b, y, 1.0, label)


def scale(cfg, rows, width, factor: float, x: View, y: View, label="scale") -> Kernel:
    return _eltwise(cfg, "scale", rows, width, x, None, y, factor, label)


def softcap(cfg, rows, width, cap: float, x: View, y: View, label="softcap") -> Kernel:
    """y = cap * tanh(x / cap)."""
    return _eltwise(cfg, "softcap", rows, width, x, None, y, cap, label)


def gelu(cfg, rows, width, x: View, y: View, label="gelu") -> Kernel:
    """y = gelu_tanh(x) on every element."""
    return _eltwise(cfg, "gelu", rows, width, x, None, y, 1.0, label)


def pos_embed(cfg, rows, width, x: View, table: View, y: View, label="pos_embed") -> Kernel:
    """y = x + rows pos0 .. pos0 + rows - 1 of table."""
    return _eltwise(cfg, "add", rows, width, x, table, y, 1.0, label, b_at_pos=True)


def layer_norm(cfg: KernelConfig, rows: int, width: int, group: int, eps: float, x: View, wb, y: View,
               label="layer_norm") -> Kernel:
    """y = (x - mean) / sqrt(var + eps) * w + b per group of `group` columns; wb holds w then b."""
    n_groups = width // group
    params = [("rows", "u32", rows), ("n_groups", "u32", n_groups), ("group", "u32", group), ("eps", "f32", eps),
              ("x_off", "u32", x.offset), ("x_stride", "u32", x.stride),
              ("y_off", "u32", y.offset), ("y_stride", "u32", y.stride)]
    roles = [Role("x", x.buffer), Role("w", wb), Role("y", y.buffer, write=True)]
    return build("layer_norm", label, params, roles, fold_grid(rows * n_groups, cfg.max_per_dim),
                 consts={"WG": cfg.norm_wg if group <= 256 else cfg.norm_wg_wide})


def copy(cfg, rows, width, x: View, y: View, label="copy") -> Kernel:
    """Strided copy (a slice or a row materialised for a consumer that cannot take an offset)."""
    return _eltwise(cfg, "copy", rows, width, x, None, y, 1.0, label)


def argmax(cfg, rows: int, width: int, x: View, out, out_offset: int = 0, label="argmax") -> Kernel:
    """out[out_offset + r] = index of the largest x in row r (lowest index on ties), u32."""
    params = [("rows", "u32", rows), ("width", "u32", width), ("x_off", "u32", x.offset),
              ("x_stride", "u32", x.stride), ("out_off", "u32", out_offset)]
    roles = [Role("x", x.buffer), Role("out", out, write=True, elem="u32")]
    return build("argmax", label, params, roles, fold_grid(rows, cfg.max_per_dim), consts={"WG": cfg.argmax_wg})


def rope_freqs(n_rot: int, base: float, freq_scale: float = 1.0, factors: np.ndarray | None = None) -> np.ndarray:
    """freq_scale * base^(-2i/n_rot) / factors[i] for i < n_rot/2, computed in float64 like
    ops.rope_tables (factors: Llama 3.1's rope_freqs, or None for 1)."""
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if factors is not None:
        inv = inv / np.asarray(factors, np.float64).reshape(-1)
    return (inv * freq_scale).astype(np.float32)


def foreign(label: str, source: str, params: bytes, buffers: list, grid, entry: str = "main") -> Kernel:
    """A kernel written elsewhere (quant.py): binding 0 = params uniform, then `buffers` from 1."""
    return Kernel(label, source, entry, params, False, [(1 + i, b, ro) for i, (b, ro) in enumerate(buffers)],
                  tuple(grid), explicit_layout=False)
