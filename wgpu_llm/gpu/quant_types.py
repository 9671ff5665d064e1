"""The weight types the GPU kernels read: one QuantType per GGUF type, registered by its ggml type
id in QUANT_TYPES, holding every fact the GPU side needs of that type -- its block (weights and
bytes), how its blocks are repacked into u32 planes and the words per row of each plane, the step
of the row kind of linear, the type it can be widened to, and the WGSL sections that read it.

GGUF blocks that are not a multiple of 4 bytes (Q8_0 34 B, Q4_0 18 B, Q5_0 22 B, IQ4_NL 18 B,
Q3_K 110 B, Q6_K 210 B) are split at load into planes a shader can read as ``array<u32>``: the f16
block scale in one plane, the rest of each block in another (SplitScale). Types whose blocks are
already word-sized (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K, IQ4_XS) keep their GGUF bytes as a single plane,
without a copy (WordBlocks). F32, F16 and BF16 rows are zero-padded to a multiple of 8 columns
(FloatType). Every plane is row-major with a fixed number of words per weight row.

Adding a type:
- one entry in the table at the bottom of this file: its name, ggml type id and block as in
  gguf-py (tests/test_gpu_quant_types.py checks them against ``gguf.GGML_QUANT_SIZES``), its
  layout (the class), the row kind's step and its WGSL section names;
- its WGSL: a ``//! NAME`` section in shaders/quant_dequant.wgsl (the dequantizer, bit for bit
  ``gguf.quants.dequantize``) and a ``//! row_NAME`` section in shaders/quant_linear.wgsl (the row
  kind's block reader);
- its test data: the byte offsets of its f16 fields in ``F16_FIELDS`` of tests/test_gpu_quant.py,
  whose tests then compare every kernel with gguf-py's numpy dequantizer for the new type too, and
  the type in README's list of supported types (tests/test_readme_families.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ROW_PAD_COLS = 8  # float rows are zero-padded to a multiple of this many columns


def _padded_cols(cols: int) -> int:
    return -(-cols // ROW_PAD_COLS) * ROW_PAD_COLS


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


@dataclass(frozen=True, kw_only=True)
class QuantType(ABC):
    """A GGUF weight type as the GPU kernels read it. A subclass says how its blocks become planes."""

    name: str  # the GGML type name, e.g. "Q4_K"
    type_id: int  # its gguf.GGMLQuantizationType value
    block_size: int  # weights per block (1 for the float types)
    block_bytes: int  # bytes per block in GGUF
    row_step_cols: int  # columns the row kind of linear reads per step of a row (its row sections)
    dequant_section: str  # the section of shaders/quant_dequant.wgsl that dequantizes it
    row_sections: tuple[str, ...]  # the sections of shaders/quant_linear.wgsl of the row kind's block reader
    # Q4_0 / Q5_0: the signed quants (n_blocks, 32) of its blocks, which are Q8_0 blocks with the
    # same f16 scale at byte 0 (its quants fit in an int8): such a type widens to Q8_0 losslessly
    q8_0_quants: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def widens_to(self) -> str | None:
        """The type this one can be re-encoded as without changing a value, if any."""
        return "Q8_0" if self.q8_0_quants is not None else None

    def n_blocks(self, cols: int) -> int:
        """Blocks per row of `cols` columns; ValueError unless cols is a positive multiple of the block."""
        if cols <= 0 or cols % self.block_size:
            raise ValueError(f"{self.name}: cols {cols} is not a positive multiple of the block size {self.block_size}")
        return cols // self.block_size

    @abstractmethod
    def plane_row_words(self, cols: int) -> list[int]:
        """u32 words per weight row of each plane of a packed (rows, cols) tensor, in binding order."""

    @abstractmethod
    def pack_planes(self, raw: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
        """The planes (flat uint32) of a (rows, cols) tensor from its GGUF bytes (flat uint8, size checked)."""


@dataclass(frozen=True, kw_only=True)
class FloatType(QuantType):
    """F32 / F16 / BF16: one plane of the values, rows zero-padded to a multiple of 8 columns."""

    def plane_row_words(self, cols: int) -> list[int]:
        self.n_blocks(cols)  # checks cols
        return [_padded_cols(cols) * self.block_bytes // 4]

    def pack_planes(self, raw: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
        return [_float_plane(raw.view(np.uint32 if self.block_bytes == 4 else np.uint16), rows, cols)]


@dataclass(frozen=True, kw_only=True)
class WordBlocks(QuantType):
    """Blocks a whole number of words long: one plane, the GGUF bytes as they are (no copy)."""

    d_word: int = 0  # the word of a block holding the f16 d (and m / dmin); tune.py puts small scales there

    def __post_init__(self):
        if self.block_bytes % 4:
            raise ValueError(f"{self.name}: {self.block_bytes}-byte blocks are not whole words")
        if not 0 <= self.d_word < self.block_bytes // 4:
            raise ValueError(f"{self.name}: a block has no word {self.d_word} (it has {self.block_bytes // 4})")

    def plane_row_words(self, cols: int) -> list[int]:
        return [self.n_blocks(cols) * self.block_bytes // 4]

    def pack_planes(self, raw: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
        return [_words(raw)]


@dataclass(frozen=True, kw_only=True)
class SplitScale(QuantType):
    """Blocks of 4k + 2 bytes: the rest of each block (quants, sub-block scales) in a first plane,
    the f16 block scale d at byte `scale_at` (the first or the last two bytes) in a second one, two
    per word, each row padded to a whole word."""

    scale_at: int

    def __post_init__(self):
        if (self.block_bytes - 2) % 4 or self.scale_at not in (0, self.block_bytes - 2):
            raise ValueError(f"{self.name}: a {self.block_bytes}-byte block with its scale at byte {self.scale_at} "
                             f"does not split into a word-sized rest and an f16 at either end")

    def plane_row_words(self, cols: int) -> list[int]:
        nb = self.n_blocks(cols)
        return [nb * (self.block_bytes - 2) // 4, (nb + 1) // 2]

    def pack_planes(self, raw: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
        blocks = raw.reshape(-1, self.block_bytes)
        rest = blocks[:, 2:] if self.scale_at == 0 else blocks[:, :self.scale_at]
        return [_words(rest), _scale_plane(blocks, rows, self.scale_at)]


def _q4_0_quants(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 (d, 16 bytes of nibbles): weight j in the low nibble of byte j, weight j + 16 in the high; q - 8."""
    nibbles = blocks[:, 2:]
    return np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int16) - 8


def _q5_0_quants(blocks: np.ndarray) -> np.ndarray:
    """Q5_0 (d, the 32-bit qh, 16 bytes of nibbles): bit j of qh is the fifth bit of weight j; q - 16."""
    nibbles = blocks[:, 6:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int16)
    qh = np.ascontiguousarray(blocks[:, 2:6]).view("<u4")
    q |= ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int16) << 4
    return q - 16


def _float(name: str, type_id: int, nbytes: int) -> FloatType:
    return FloatType(name=name, type_id=type_id, block_size=1, block_bytes=nbytes, row_step_cols=8,
                     dequant_section=name, row_sections=("row_float",))


def _words_type(name: str, type_id: int, block: int, nbytes: int, step: int, d_word: int = 0) -> WordBlocks:
    return WordBlocks(name=name, type_id=type_id, block_size=block, block_bytes=nbytes, row_step_cols=step,
                      dequant_section=name, row_sections=(f"row_{name}",), d_word=d_word)


def _split_type(name: str, type_id: int, block: int, nbytes: int, step: int, scale_at: int,
                q8_0_quants=None) -> SplitScale:
    # the row readers of the 32-weight types take their scales two blocks at a time (row_scale_pairs)
    sections = ("row_scale_pairs", f"row_{name}") if scale_at == 0 else (f"row_{name}",)
    return SplitScale(name=name, type_id=type_id, block_size=block, block_bytes=nbytes, row_step_cols=step,
                      dequant_section=name, row_sections=sections, scale_at=scale_at, q8_0_quants=q8_0_quants)


# The registry, in the order README lists the types. Type ids and blocks as gguf-py's
# GGMLQuantizationType and GGML_QUANT_SIZES (tests/test_gpu_quant_types.py checks them).
QUANT_TYPES: dict[int, QuantType] = {t.type_id: t for t in (
    _float("F32", 0, 4),
    _float("F16", 1, 2),
    _float("BF16", 30, 2),
    _split_type("Q8_0", 8, 32, 34, 32, scale_at=0),
    _split_type("Q4_0", 2, 32, 18, 32, scale_at=0, q8_0_quants=_q4_0_quants),
    _words_type("Q4_1", 3, 32, 20, 32),  # d | m
    _split_type("Q5_0", 6, 32, 22, 32, scale_at=0, q8_0_quants=_q5_0_quants),
    _words_type("Q5_1", 7, 32, 24, 32),  # d | m
    _split_type("IQ4_NL", 20, 32, 18, 32, scale_at=0),
    _words_type("Q2_K", 10, 256, 84, 128, d_word=20),  # d | dmin end the block
    _split_type("Q3_K", 11, 256, 110, 128, scale_at=108),
    _words_type("Q4_K", 12, 256, 144, 64),  # d | dmin
    _words_type("Q5_K", 13, 256, 176, 64),  # d | dmin
    _split_type("Q6_K", 14, 256, 210, 128, scale_at=208),
    _words_type("IQ4_XS", 23, 256, 136, 64),  # d | scales_h
)}
_BY_NAME = {t.name: t for t in QUANT_TYPES.values()}
SUPPORTED_TYPES = tuple(_BY_NAME)


def quant_type(type_name: str) -> QuantType:
    """The registered type of this name; ValueError naming it (and the supported ones) otherwise."""
    qt = _BY_NAME.get(type_name)
    if qt is None:
        raise ValueError(f"weight type {type_name!r} is not supported on the GPU "
                         f"(supported: {', '.join(SUPPORTED_TYPES)})")
    return qt


__all__ = ["QUANT_TYPES", "SUPPORTED_TYPES", "FloatType", "QuantType", "SplitScale", "WordBlocks", "quant_type"]
