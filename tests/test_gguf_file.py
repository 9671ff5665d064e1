"""GGUF validation: every malformed file gives a GGUFError naming the problem, quickly."""

import re
import struct
import time

import numpy as np
import pytest

from tiny_models import write_tiny_model
from wgpu_llm import LLM, GGUFError, GGUFFile


def _s(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _kv_u32(key: str, value: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, value)


def _kv_str(key: str, value: str) -> bytes:
    return _s(key) + struct.pack("<I", 8) + _s(value)


def _tensor_info(name: str, dims, type_id: int, offset: int) -> bytes:
    return _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", type_id, offset)


def _file(tmp_path, kvs=(), tensors=(), data=b"", version=3, n_kv=None, n_tensors=None, magic=b"GGUF"):
    header = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = header + b"".join(kvs) + b"".join(tensors)
    body += b"\0" * (-len(body) % 32) + data
    path = tmp_path / "crafted.gguf"
    path.write_bytes(body)
    return path


def _expect(path, *fragments):
    t0 = time.perf_counter()
    with pytest.raises(GGUFError) as err:
        GGUFFile(path)
    assert time.perf_counter() - t0 < 2.0
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_valid_crafted_file(tmp_path):
    path = _file(tmp_path, [_kv_str("general.architecture", "llama"), _kv_u32("llama.block_count", 1)],
                 [_tensor_info("w", [32, 2], 0, 0)], np.arange(64, dtype=np.float32).tobytes())
    gf = GGUFFile(path)
    assert gf.metadata["llama.block_count"] == 1
    assert gf.tensors["w"].shape == (2, 32)
    assert np.array_equal(gf.dequantize("w").ravel(), np.arange(64, dtype=np.float32))


def test_not_a_file(tmp_path):
    _expect(tmp_path / "missing.gguf", "no such file")
    (tmp_path / "empty.gguf").write_bytes(b"")
    _expect(tmp_path / "empty.gguf", "empty")


def test_bad_magic(tmp_path):
    _expect(_file(tmp_path, magic=b"GGML"), "bad magic")


def test_bad_version(tmp_path):
    _expect(_file(tmp_path, version=7), "version 7")


def test_truncated_header(tmp_path):
    path = tmp_path / "short.gguf"
    path.write_bytes(b"GGUF\x03\x00")
    _expect(path, "too small")


def test_bogus_counts_fail_fast(tmp_path):
    _expect(_file(tmp_path, n_kv=2**62), "kv_count")
    _expect(_file(tmp_path, n_tensors=2**40), "tensor_count")


def test_huge_array_and_string_lengths(tmp_path):
    huge_array = _s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2**50)
    _expect(_file(tmp_path, [huge_array]), "tokenizer.ggml.tokens", "cannot fit")
    huge_string = _s("general.name") + struct.pack("<IQ", 8, 2**60)
    _expect(_file(tmp_path, [huge_string]), "general.name", "truncated")


def test_unknown_value_type(tmp_path):
    _expect(_file(tmp_path, [_s("general.x") + struct.pack("<I", 99)]), "general.x", "unknown value type 99")


def test_duplicate_key(tmp_path):
    kv = _kv_u32("general.alignment", 32)
    _expect(_file(tmp_path, [kv, kv]), "appears twice")


def test_bad_alignment(tmp_path):
    _expect(_file(tmp_path, [_kv_u32("general.alignment", 48)]), "general.alignment", "power of two")


def test_unknown_tensor_type(tmp_path):
    _expect(_file(tmp_path, [_kv_str("general.architecture", "llama")], [_tensor_info("w", [32], 77, 0)],
                  b"\0" * 128), "'w'", "unknown GGML type id 77")


def test_tensor_dims(tmp_path):
    kvs = [_kv_str("general.architecture", "llama")]
    _expect(_file(tmp_path, kvs, [_tensor_info("w", [], 0, 0)]), "n_dims 0")
    _expect(_file(tmp_path, kvs, [_tensor_info("w", [32, 0], 0, 0)]), "dims")
    # Q8_0 rows must be a whole number of 32-element blocks
    _expect(_file(tmp_path, kvs, [_tensor_info("w", [40, 2], 8, 0)], b"\0" * 256), "not a multiple", "Q8_0")


def test_tensor_beyond_end_of_file(tmp_path):
    kvs = [_kv_str("general.architecture", "llama")]
    _expect(_file(tmp_path, kvs, [_tensor_info("w", [32, 4], 0, 0)], b"\0" * 100), "'w'", "beyond the end")
    _expect(_file(tmp_path, kvs, [_tensor_info("w", [32], 0, 2**62)], b"\0" * 128), "beyond the end")
    _expect(_file(tmp_path, kvs, [_tensor_info("w", [2**39, 2**39], 0, 0)], b"\0" * 128), "'w'")


def test_misaligned_tensor_offset(tmp_path):
    kvs = [_kv_str("general.architecture", "llama")]
    _expect(_file(tmp_path, kvs, [_tensor_info("w", [8], 0, 4)], b"\0" * 64), "not aligned")


def test_truncated_real_file_at_many_points(tmp_path):
    src = write_tiny_model(tmp_path / "tiny.gguf", "llama", "Q8_0")
    data = src.read_bytes()
    for cut in [3, 10, 24, 100, 1000, 5000, len(data) // 2, len(data) - 1]:
        path = tmp_path / "cut.gguf"
        path.write_bytes(data[:cut])
        _expect(path)


def test_missing_architecture(tmp_path):
    _expect(_file(tmp_path, [_kv_u32("general.alignment", 32)]), "general.architecture", "missing")


def test_unknown_architecture_lists_supported(tmp_path):
    path = _file(tmp_path, [_kv_str("general.architecture", "mamba")])
    from wgpu_llm.models import ARCHITECTURES

    assert {"gemma3", "llama"} <= set(ARCHITECTURES)
    supported = re.escape(", ".join(sorted(ARCHITECTURES)))
    with pytest.raises(GGUFError, match=rf"'mamba' is not supported \(supported: {supported}\)"):
        LLM(path, backend="cpu")


def test_missing_hyperparameter_and_tensor(tmp_path):
    src = write_tiny_model(tmp_path / "tiny.gguf", "gemma3", "F32")
    gf = GGUFFile(src)
    assert gf.require("gemma3.block_count", int) == 2
    with pytest.raises(GGUFError, match="'gemma3.nope' is missing"):
        gf.require("gemma3.nope", int)
    with pytest.raises(GGUFError, match="expected str"):
        gf.require("gemma3.block_count", str)
    with pytest.raises(GGUFError, match="'blk.9.attn_q.weight' is missing"):
        gf.tensor("blk.9.attn_q.weight")


def test_wrong_tensor_shape_is_named(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf", "llama", "F32", d_ff=64)
    # claim a different feed_forward_length than the tensors have: rewrite the u32 in place
    data = bytearray(path.read_bytes())
    key = b"llama.feed_forward_length"
    at = data.index(key) + len(key) + 4
    assert struct.unpack_from("<I", data, at)[0] == 64
    struct.pack_into("<I", data, at, 96)
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"'blk.0.ffn_gate.weight' has shape \(64, 64\), expected \(96, 64\)"):
        LLM(path, backend="cpu")


def test_long_values_are_shortened_in_messages(tmp_path):
    path = _file(tmp_path, [_kv_str("general.architecture", "llama"), _kv_str("a.long", "x" * 78),
                            _kv_str("a.short", "y" * 77)])
    gf = GGUFFile(path)
    with pytest.raises(GGUFError) as err:
        gf.require("a.long", int)
    assert str(err.value) == f"{path}: metadata 'a.long' = '{'x' * 76}...: expected int"  # repr: 80 characters
    with pytest.raises(GGUFError) as err:
        gf.get("a.short", float)
    assert str(err.value) == f"{path}: metadata 'a.short' = '{'y' * 77}': expected float"  # 79: kept whole


class _Advice:
    """Stands in for the file's mmap: records madvise calls."""

    def __init__(self):
        self.calls = []

    def madvise(self, *args):
        self.calls.append(args)


def test_release_pages_advises_whole_pages_of_the_file(tmp_path):
    import mmap

    gf = GGUFFile(write_tiny_model(tmp_path / "tiny.gguf", "llama", "F32"))
    size, page = gf.file_size, mmap.PAGESIZE
    assert size > 3 * page
    advice = _Advice()
    gf._data._mmap = advice
    gf.release_pages()
    gf.release_pages(page + 5, 2 * page + 7)
    gf.release_pages(2 * page, 10 * size)
    gf.release_pages(page, page)  # an empty range: nothing
    assert advice.calls == [(mmap.MADV_DONTNEED, 0, size), (mmap.MADV_DONTNEED, page, page + 7),
                            (mmap.MADV_DONTNEED, 2 * page, size - 2 * page)]
    gf._data._mmap = object()  # a mapping without madvise: nothing to do, no error
    gf.release_pages()
    gf._data._mmap = None
    gf.release_pages()


def test_dequantize_matches_gguf_py(tmp_path):
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    gf = GGUFFile(write_tiny_model(tmp_path / "tiny.gguf", "llama", "Q8_0", layer_types={"attn_v": "Q4_0"}))
    kinds = set()
    for name, info in gf.tensors.items():
        want = dequantize(np.asarray(gf.raw(name)), GGMLQuantizationType(info.type_id)).reshape(info.shape)
        got = gf.dequantize(name)
        assert got.dtype == np.float32 and got.shape == info.shape and np.array_equal(got, want), name
        kinds.add((info.type_name, len(info.shape)))
    assert {("Q8_0", 2), ("Q4_0", 2), ("F32", 1)} <= kinds
    out = np.full((2, *gf.tensors["blk.0.attn_v.weight"].shape), np.nan, np.float32)
    assert np.shares_memory(gf.dequantize("blk.0.attn_v.weight", out=out[1]), out[1])
    assert np.array_equal(out[1], gf.dequantize("blk.0.attn_v.weight")) and np.isnan(out[0]).all()


def test_dequantize_unsupported_type(tmp_path):
    kvs = [_kv_str("general.architecture", "llama")]
    path = _file(tmp_path, kvs, [_tensor_info("w", [32, 2], 28, 0)], b"\0" * 512)  # F64: gguf-py has no reader
    with pytest.raises(GGUFError) as err:
        GGUFFile(path).dequantize("w")
    assert str(err.value) == f"{path}: tensor 'w' has type F64, which this runtime cannot dequantize"


def test_dequantize_large_tensors_in_chunks(tmp_path):
    """Tensors over 16 MiB are dequantized in chunks of rows, each chunk's file pages released after it."""
    import mmap

    rows_q, cols_q = 520, 32768  # Q8_0 rows of 34816 bytes: 481 rows per chunk
    blocks = np.zeros((rows_q, cols_q // 32), dtype=[("d", "<f2"), ("q", "i1", 32)])
    rng = np.random.default_rng(0)
    blocks["d"] = rng.uniform(0.5, 2, size=blocks.shape).astype(np.float16)
    blocks["q"] = rng.integers(-128, 128, size=(*blocks.shape, 32))
    want_q = (blocks["d"][..., None].astype(np.float32) * blocks["q"]).reshape(rows_q, cols_q)
    rows_f, cols_f = 1100, 4096  # F32 rows of 16 KiB: 1024 rows per chunk
    want_f = rng.standard_normal((rows_f, cols_f)).astype(np.float32)
    q_bytes = blocks.tobytes()
    tensors = [_tensor_info("q", [cols_q, rows_q], 8, 0), _tensor_info("f", [cols_f, rows_f], 0, len(q_bytes))]
    gf = GGUFFile(_file(tmp_path, [_kv_str("general.architecture", "llama")], tensors, q_bytes + want_f.tobytes()))
    advice = _Advice()
    gf._data._mmap = advice
    assert np.array_equal(gf.dequantize("q"), want_q)
    assert np.array_equal(gf.dequantize("f"), want_f)
    page, at, row_q = mmap.PAGESIZE, gf.tensors["q"].offset, 34816
    end_q = at + rows_q * row_q
    assert advice.calls == [(mmap.MADV_DONTNEED, at - at % page, 481 * row_q + at % page),
                            (mmap.MADV_DONTNEED, (at + 481 * row_q) // page * page,
                             end_q - (at + 481 * row_q) // page * page)]  # F32 rows are views: nothing to release


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _raw(tmp_path, body: bytes, n_kv: int, n_tensors: int = 0, version: int = 3):
    """A file of exactly the header and `body`: no padding after it."""
    path = tmp_path / "raw.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body)
    return path


def _message(path) -> str:
    with pytest.raises(GGUFError) as err:
        GGUFFile(path)
    return str(err.value).removeprefix(f"{path}: ")


def test_values_of_every_kind_up_to_the_last_byte(tmp_path):
    arch = _kv_str("general.architecture", "llama")
    kvs = [arch, _kv("a.empty", 8, _s("")), _kv("a.yes", 7, b"\x01"), _kv("a.no", 7, b"\x00"),
           _kv("a.neg", 5, struct.pack("<i", -1)), _kv("a.zero", 4, struct.pack("<I", 0)),
           _kv("a.bools", 9, struct.pack("<IQ", 7, 2) + b"\x01\x00"),
           _kv("a.u8", 9, struct.pack("<IQ", 0, 2) + b"\x00\x02"),
           _kv("a.u64", 9, struct.pack("<IQ", 10, 1) + struct.pack("<Q", 2**64 - 1)),
           _kv("k" * 65536, 4, struct.pack("<I", 1)),  # the longest key allowed
           _kv("a.strings", 9, struct.pack("<IQ", 8, 2) + _s("") + _s(""))]  # ends exactly at the end of the file
    gf = GGUFFile(_raw(tmp_path, b"".join(kvs), len(kvs)))
    md = gf.metadata
    assert md["a.empty"] == "" and md["a.strings"] == ["", ""] and md["a.u64"] == [2**64 - 1]
    assert md["a.yes"] is True and md["a.no"] is False and md["a.bools"] == [True, False]
    assert md["a.u8"] == [0, 2] and all(type(v) is int for v in md["a.u8"])
    assert gf.get("a.zero", int) == 0 and gf.get("a.zero", float) == 0.0 and type(gf.get("a.zero", float)) is float
    assert gf.require("a.yes", bool) is True and gf.get("a.missing", int, 7) == 7
    for key, kind, message in (("a.neg", int, "= -1: expected a non-negative integer"),
                               ("a.yes", int, "= True: expected an integer"),
                               ("a.yes", float, "= True: expected float")):
        with pytest.raises(GGUFError) as err:
            gf.require(key, kind)
        assert str(err.value) == f"{gf.path}: metadata {key!r} {message}"


@pytest.mark.parametrize("body, n_kv, message", [
    (_s("general.name") + struct.pack("<IQ", 8, 2**63), 1,
     f"metadata 'general.name' string: needs {2**63} bytes at offset 56, file is 56 bytes (truncated?)"),
    (_s("k" * 65537), 1, "metadata key #0: length 65537 exceeds the limit of 65536 bytes"),
    (_s("general.name") + struct.pack("<IQ", 8, 1) + b"\xff", 1,
     "metadata 'general.name' string: not valid UTF-8 (invalid start byte at byte 0)"),
    (_s("a") + struct.pack("<I", 9), 1, "metadata 'a' array type: needs 4 bytes at offset 37, file is 37 bytes (truncated?)"),
    (_s("a") + struct.pack("<IIQ", 9, 2**31 + 1, 0), 1, f"metadata 'a': unsupported array item type {2**31 + 1}"),
    (_s("a") + struct.pack("<IIQ", 9, 9, 0), 1, "metadata 'a': unsupported array item type 9"),
    (_s("a") + struct.pack("<IIQ", 9, 99, 0), 1, "metadata 'a': unsupported array item type 99"),
    (_s("a") + struct.pack("<IIQ", 9, 4, 2**63), 1, f"metadata 'a': array of {2**63} items cannot fit in the 0 bytes "
                                                    "left in the file"),
    (_s("a") + struct.pack("<IIQ", 9, 4, 10) + bytes(39), 1,
     "metadata 'a': array of 10 items cannot fit in the 39 bytes left in the file"),
    (_s("a") + struct.pack("<IIQ", 9, 8, 5) + bytes(39), 1,
     "metadata 'a': array of 5 items cannot fit in the 39 bytes left in the file"),
    (_s("a") + struct.pack("<IIQ", 9, 8, 2) + _s("") + struct.pack("<Q", 1), 1,
     "metadata 'a' item: needs 1 bytes at offset 65, file is 65 bytes (truncated?)"),
    (_s("a") + struct.pack("<I", 4), 1, "metadata 'a' value: needs 4 bytes at offset 37, file is 37 bytes (truncated?)"),
    (_s("a")[:4], 1, "metadata key #0 length: needs 8 bytes at offset 24, file is 28 bytes (truncated?)"),
    (bytes(210 - 24), 15, "metadata key '' appears twice"),  # 15 * 14 bytes fit in 210: read, not refused
    (bytes(210 - 24), 16, "kv_count 16 is impossible for a file of 210 bytes"),
    (b"", 2**63, f"kv_count {2**63} is impossible for a file of 24 bytes"),
])
def test_exact_messages_of_bad_metadata(tmp_path, body, n_kv, message):
    assert _message(_raw(tmp_path, body, n_kv)) == message


@pytest.mark.parametrize("n_tensors, size, message", [
    (34, 1122, "tensor '': n_dims 0, expected 1..4"),  # 34 * 33 bytes fit in 1122: read, not refused
    (35, 1122, "tensor_count 35 is impossible for a file of 1122 bytes"),
    (2**63, 24, f"tensor_count {2**63} is impossible for a file of 24 bytes"),
])
def test_exact_messages_of_bad_tensor_counts(tmp_path, n_tensors, size, message):
    assert _message(_raw(tmp_path, bytes(size - 24), 0, n_tensors)) == message


def test_header_only_and_odd_versions(tmp_path):
    assert _message(_raw(tmp_path, b"", 0)) == "required metadata 'general.architecture' is missing"  # 24 bytes
    assert _message(_raw(tmp_path, b"", 0, version=2**32 - 1)) == \
        f"GGUF version {2**32 - 1} is not supported (expected one of (2, 3))"
    (tmp_path / "23.gguf").write_bytes(b"GGUF" + bytes(19))
    assert _message(tmp_path / "23.gguf") == "file is 23 bytes, too small for a GGUF header (24 bytes)"
