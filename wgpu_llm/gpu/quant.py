"""Quantized weights on the GPU: repacking GGUF tensors into u32 planes, and the WGSL kernels
that read them (mat-vec / mat-mul "linear" and embedding lookup).

Weights stay quantized in GPU memory; the kernels dequantize in registers. GGUF blocks that
are not a multiple of 4 bytes (Q8_0 34 B, Q4_0 18 B, Q5_0 22 B, Q6_K 210 B) are split at load
into planes a shader can read as ``array<u32>``: the quants in one plane, the f16 block
scales in another. Types whose blocks are already word-sized (Q4_1, Q5_1, Q4_K, Q5_K) keep
their GGUF bytes as a single plane (no copy). Every plane is row-major with a fixed number of
words per weight row, so a piece of rows is a slice of each plane (``split_rows``). F32, F16
and BF16 rows are zero-padded to a multiple of 8 columns (their cols need not be).

The per-type dequantization lives in ``shaders/quant_dequant.wgsl`` and matches gguf-py's
``gguf.quants.dequantize`` bit for bit; the kernels are ``shaders/quant_linear.wgsl`` and
``shaders/quant_embed.wgsl``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")

# type -> (weights per block, bytes per block), as in GGUF
_BLOCKS = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}

LINEAR_ROWS_PER_WORKGROUP = 4  # output rows one linear workgroup computes
LINEAR_MAX_TOKENS_PER_PASS = 4  # tokens sharing one dequantized weight unit (several-token path)
EMBED_WORKGROUP_SIZE = 64
_MAX_WORKGROUP_STORAGE = 16384  # bytes; WebGPU's default limit
_MIN_SUBGROUP_SIZE = 4  # WebGPU guarantees subgroups of at least 4 invocations


def _check_type(type_name: str) -> None:
    if type_name not in SUPPORTED_TYPES:
        raise ValueError(f"weight type {type_name!r} is not supported on the GPU "
                         f"(supported: {', '.join(SUPPORTED_TYPES)})")


def _padded_cols(cols: int) -> int:
    return -(-cols // 8) * 8


def plane_row_words(type_name: str, cols: int) -> list[int]:
    """u32 words per weight row of each plane of a packed (rows, cols) tensor of this type."""
    _check_type(type_name)
    block = _BLOCKS[type_name][0]
    if cols <= 0 or cols % block:
        raise ValueError(f"{type_name}: cols {cols} is not a positive multiple of the block size {block}")
    nb = cols // block
    halves = (nb + 1) // 2  # f16 block scales, two per word
    return {
        "F32": [_padded_cols(cols)], "F16": [_padded_cols(cols) // 2], "BF16": [_padded_cols(cols) // 2],
        "Q8_0": [8 * nb, halves], "Q4_0": [4 * nb, halves], "Q4_1": [5 * nb], "Q5_0": [5 * nb, halves],
        "Q5_1": [6 * nb], "Q4_K": [36 * nb], "Q5_K": [44 * nb], "Q6_K": [52 * nb, halves],
    }[type_name]


@dataclass
class PackedWeight:
    """A (rows, cols) weight matrix repacked for the GPU kernels of this module."""

    type_name: str
    rows: int  # weight rows (outputs) in this piece
    cols: int  # columns (inputs)
    planes: list[np.ndarray]  # 1-D uint32 arrays, one storage buffer each, in binding order (3, 4, ...)

    def nbytes(self) -> int:
        return sum(int(p.nbytes) for p in self.planes)


def _words(a: np.ndarray) -> np.ndarray:
    """A C-contiguous byte array (any shape) as a flat uint32 array; a view when possible."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint32)


def _scale_plane(blocks: np.ndarray, rows: int, start: int) -> np.ndarray:
    """The f16 at byte `start` of each (rows * nb, block_bytes) block, two per word, rows padded."""
    halves = np.ascontiguousarray(blocks[:, start:start + 2]).view(np.uint16).reshape(rows, -1)
    if halves.shape[1] % 2:
        halves = np.concatenate([halves, np.zeros((rows, 1), np.uint16)], axis=1)
    return halves.reshape(-1).view(np.uint32)


def _float_plane(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """F32 / F16 / BF16 values (flat, rows * cols) with rows zero-padded to a multiple of 8."""
    padded = _padded_cols(cols)
    if padded == cols:
        return _words(values)
    out = np.zeros((rows, padded), values.dtype)
    out[:, :cols] = values.reshape(rows, cols)
    return out.reshape(-1).view(np.uint32)


def pack(type_name: str, raw: np.ndarray, rows: int, cols: int) -> PackedWeight:
    """Repack a GGUF tensor's bytes into u32 planes (quantized data is never expanded).

    raw: the tensor's bytes as stored in GGUF (uint8, rows * row_bytes), e.g. a read-only
    memory map; cols is the GGUF row length (the matrix is (rows, cols)).
    """
    _check_type(type_name)
    block, block_bytes = _BLOCKS[type_name]
    plane_row_words(type_name, cols)  # checks cols
    if rows <= 0:
        raise ValueError(f"{type_name}: rows must be positive, got {rows}")
    nb = cols // block
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(f"{type_name}: raw must be the tensor's bytes (uint8), got {raw.dtype}")
    expected = rows * nb * block_bytes
    if raw.size != expected:
        raise ValueError(f"{type_name}: raw has {raw.size} bytes, a ({rows}, {cols}) tensor needs {expected}")
    raw = raw.reshape(-1)

    if type_name == "F32":
        planes = [_float_plane(raw.view(np.uint32), rows, cols)]
    elif type_name in ("F16", "BF16"):
        planes = [_float_plane(raw.view(np.uint16), rows, cols)]
    elif type_name in ("Q4_1", "Q5_1", "Q4_K", "Q5_K"):  # word-sized blocks: as stored
        planes = [_words(raw)]
    else:
        blocks = raw.reshape(rows * nb, block_bytes)
        if type_name == "Q6_K":  # ql, qh, scales (208 bytes) | d
            planes = [_words(blocks[:, :208]), _scale_plane(blocks, rows, 208)]
        else:  # Q8_0, Q4_0, Q5_0: d | quants (Q5_0: qh, then the nibbles)
            planes = [_words(blocks[:, 2:]), _scale_plane(blocks, rows, 0)]
    packed = PackedWeight(type_name, rows, cols, planes)
    for plane, words in zip(packed.planes, plane_row_words(type_name, cols)):
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


# ---- shaders ----

def _shader_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "shaders", here.parent / "shaders"):  # installed wheel, source tree
        if (candidate / "quant_linear.wgsl").is_file():
            return candidate
    raise FileNotFoundError(f"quant_*.wgsl shaders not found next to {here}")


@cache
def _sections(file_name: str) -> dict[str, str]:
    """A WGSL file's sections: lines after a `//! name` line, up to the next one."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in (_shader_dir() / file_name).read_text().splitlines(keepends=True):
        if line.startswith("//! "):
            current = line[4:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "".join(lines) for name, lines in sections.items()}


def _fill(template: str, **values) -> str:
    return string.Template(template).substitute({k: str(v) for k, v in values.items()})


def _dequant_source(type_name: str) -> str:
    _check_type(type_name)
    sections = _sections("quant_dequant.wgsl")
    return sections["common"] + sections[type_name]


def _check_workgroup_size(workgroup_size: int) -> None:
    if workgroup_size < 8 or workgroup_size > 1024 or workgroup_size & (workgroup_size - 1):
        raise ValueError(f"workgroup_size must be a power of two in [8, 1024], got {workgroup_size}")


def _tokens_per_pass(workgroup_size: int) -> int:
    """Tokens per pass in the several-token path, bounded by the shared reduction's storage."""
    room = _MAX_WORKGROUP_STORAGE // (4 * LINEAR_ROWS_PER_WORKGROUP * workgroup_size)
    return max(1, min(LINEAR_MAX_TOKENS_PER_PASS, room))


def linear_shader(type_name: str, *, workgroup_size: int = 64, subgroup_size: int = 0) -> str:
    """WGSL for y[t, y_offset + r] (+)= sum_c x[t, c] * W[r, c], r < rows, t < n_tokens.

    Bindings (group 0): 0 uniform LinearParams, 1 x (f32, read), 2 y (f32, read_write),
    3 + i plane i of the PackedWeight. subgroup_size > 0: reduce with subgroupAdd (the device
    must have the "subgroup" feature; the size itself is read at run time, never assumed);
    0: a shared-memory reduction that works everywhere. Dispatch with linear_dispatch.
    The subgroup variant has no `enable subgroups;` line: wgpu's shader compiler (naga) rejects
    that directive and takes subgroup operations from the device feature instead.
    """
    _check_type(type_name)
    _check_workgroup_size(workgroup_size)
    if subgroup_size < 0:
        raise ValueError(f"subgroup_size must be >= 0, got {subgroup_size}")
    src = _sections("quant_linear.wgsl")
    rows, tt = LINEAR_ROWS_PER_WORKGROUP, _tokens_per_pass(workgroup_size)
    use_subgroups = subgroup_size > 0
    if use_subgroups:
        max_sg = max(1, workgroup_size // _MIN_SUBGROUP_SIZE)
        reduce_decl = _fill(src["reduce_subgroup"], MAX_SG=f"{max_sg}u", RED_SIZE=max_sg * rows * tt)
        sg_params = ", sg_lane: u32, sg_id: u32, n_sg: u32"
        sg_builtins = (",\n        @builtin(subgroup_invocation_id) sg_lane: u32,"
                       "\n        @builtin(subgroup_id) sg_id: u32,"
                       "\n        @builtin(num_subgroups) n_sg: u32")
        sg_args = ", sg_lane, sg_id, n_sg"
        reduce_body, reduce_total = src["reduce_subgroup_body"], src["reduce_subgroup_total"]
    else:
        reduce_decl = _fill(src["reduce_shared"], RED_SIZE=workgroup_size * rows * tt)
        sg_params = sg_builtins = sg_args = ""
        reduce_body, reduce_total = src["reduce_shared_body"], src["reduce_shared_total"]
    passes = []
    for nt in sorted({1, tt}):
        values = f"{rows * nt}u"
        passes.append(_fill(src["pass"], PASS=nt, NT=f"{nt}u", V=values, SG_PARAMS=sg_params,
                            REDUCE=_fill(reduce_body, V=values).rstrip("\n"),
                            TOTAL=_fill(reduce_total, V=values).rstrip("\n")))
    main = _fill(src["main"], WG=workgroup_size, SG_BUILTINS=sg_builtins, SG_ARGS=sg_args, TT_PASS=tt)
    header = _fill(src["header"], WG=f"{workgroup_size}u", ROWS=f"{rows}u", TT=f"{tt}u")
    return "\n".join([f"// linear kernel for {type_name} weights\n", _dequant_source(type_name), header,
                      reduce_decl, *passes, main])


def linear_dispatch(type_name: str, rows: int, n_tokens: int, *, workgroup_size: int = 64,
                    max_per_dim: int = 65535) -> tuple[int, int, int]:
    """Workgroup counts for linear_shader over `rows` output rows and `n_tokens` tokens.

    The row groups are folded into x * y when there are more than max_per_dim of them (the
    shader skips the extra groups); z spreads token tiles and may be any count >= 1.
    """
    _check_type(type_name)
    _check_workgroup_size(workgroup_size)
    groups = max(1, -(-rows // LINEAR_ROWS_PER_WORKGROUP))
    gx = min(groups, max_per_dim)
    gy = -(-groups // gx)
    if gy > max_per_dim:
        raise ValueError(f"{rows} rows need {groups} workgroups, more than {max_per_dim} ** 2")
    tiles = 1 if n_tokens <= 1 else -(-n_tokens // _tokens_per_pass(workgroup_size))
    return gx, gy, min(tiles, max_per_dim)


def embed_shader(type_name: str) -> str:
    """WGSL: y[t * y_stride + c] = scale * W[ids[t] - row_start, c] for the tokens of this piece.

    Bindings (group 0): 0 uniform EmbedParams, 1 ids (u32, read), 2 y (f32, read_write),
    3 + i plane i. Tokens whose id is outside [row_start, row_start + rows) are not written.
    With scale == 1 the values are bit-identical to gguf.quants.dequantize. Dispatch with
    embed_dispatch.
    """
    src = _sections("quant_embed.wgsl")
    return "\n".join([f"// embedding lookup for {type_name} weights\n", _dequant_source(type_name),
                      _fill(src["main"], WG=EMBED_WORKGROUP_SIZE)])


def embed_dispatch(type_name: str, cols: int, n_tokens: int) -> tuple[int, int, int]:
    """Workgroup counts for embed_shader: x over the row's 8-weight units, y * z over tokens."""
    _check_type(type_name)
    units = -(-cols // 8)
    gx = max(1, -(-units // EMBED_WORKGROUP_SIZE))
    gy = max(1, min(n_tokens, 65535))
    return gx, gy, max(1, -(-n_tokens // gy))


__all__ = ["SUPPORTED_TYPES", "PackedWeight", "embed_dispatch", "embed_shader", "linear_dispatch", "linear_shader",
           "pack", "plane_row_words", "split_rows"]
