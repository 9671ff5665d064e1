"""The registry of weight types the GPU kernels read (wgpu_llm/gpu/quant_types.py) against gguf-py
and the WGSL files: ids, blocks, plane sizes and section names of every registered type. No GPU."""

from __future__ import annotations

import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from wgpu_llm.gpu import quant_types
from wgpu_llm.gpu.kernels import shader_sections
from wgpu_llm.gpu.quant_types import QUANT_TYPES, SUPPORTED_TYPES, FloatType, SplitScale, WordBlocks, quant_type

TYPES = list(QUANT_TYPES.values())


@pytest.mark.parametrize("qt", TYPES, ids=lambda qt: qt.name)
def test_type_agrees_with_gguf_py(qt):
    ggml = GGMLQuantizationType[qt.name]
    assert qt.type_id == int(ggml) and QUANT_TYPES[int(ggml)] is qt  # keyed by its own ggml id
    assert (qt.block_size, qt.block_bytes) == GGML_QUANT_SIZES[ggml]
    assert quant_type(qt.name) is qt


def test_names_are_the_registry_in_order():
    assert SUPPORTED_TYPES == tuple(qt.name for qt in TYPES)
    assert len(set(SUPPORTED_TYPES)) == len(TYPES) == 15


@pytest.mark.parametrize("qt", TYPES, ids=lambda qt: qt.name)
def test_planes_hold_the_blocks(qt):
    """The words of a row of 3 blocks hold its GGUF bytes plus at most the padding of a row (scale
    words, float columns up to a multiple of 8)."""
    cols = 3 * qt.block_size
    words = qt.plane_row_words(cols)
    row_bytes = 3 * qt.block_bytes
    if isinstance(qt, WordBlocks):
        assert words == [row_bytes // 4]
    elif isinstance(qt, SplitScale):
        assert len(words) == 2 and 4 * words[0] == row_bytes - 3 * 2 and words[1] == 2  # 3 f16 scales in 2 words
    else:
        assert isinstance(qt, FloatType) and words == [8 * qt.block_bytes // 4]  # 3 columns padded to 8
    with pytest.raises(ValueError, match=f"{qt.name}: cols .* block size {qt.block_size}"):
        qt.plane_row_words(qt.block_size + 1 if qt.block_size > 1 else 0)


@pytest.mark.parametrize("qt", TYPES, ids=lambda qt: qt.name)
def test_wgsl_sections_exist(qt):
    assert qt.dequant_section in shader_sections("quant_dequant.wgsl")
    linear = shader_sections("quant_linear.wgsl")
    assert qt.row_sections and all(section in linear for section in qt.row_sections)


def test_widening_types():
    assert [qt.name for qt in TYPES if qt.widens_to] == ["Q4_0", "Q5_0"]
    assert all(qt.widens_to == "Q8_0" for qt in TYPES if qt.widens_to)


def test_unsupported_type_is_named():
    message = r"weight type 'IQ2_XXS' is not supported on the GPU \(supported: F32, .*IQ4_XS\)"
    with pytest.raises(ValueError, match=message):
        quant_type("IQ2_XXS")


def test_layouts_that_cannot_be_packed_are_refused():
    common = dict(type_id=99, block_size=32, row_step_cols=32, dequant_section="X", row_sections=("row_X",))
    with pytest.raises(ValueError, match="X: 18-byte blocks are not whole words"):
        quant_types.WordBlocks(name="X", block_bytes=18, **common)
    with pytest.raises(ValueError, match="X: a block has no word 5"):
        quant_types.WordBlocks(name="X", block_bytes=20, d_word=5, **common)
    with pytest.raises(ValueError, match="X: a 18-byte block with its scale at byte 4"):
        quant_types.SplitScale(name="X", block_bytes=18, scale_at=4, **common)
    with pytest.raises(ValueError, match="X: a 20-byte block"):
        quant_types.SplitScale(name="X", block_bytes=20, scale_at=0, **common)
