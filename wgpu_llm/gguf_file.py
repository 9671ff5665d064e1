"""Open and validate a GGUF file; typed access to its metadata and tensors.

The header is read by a small bounds-checked parser of our own, so a truncated, corrupted or
hostile file gives a `GGUFError` naming the file, the field or tensor, the bad value and what was
expected -- never a crash, a hang, or an allocation in proportion to a bogus count. (gguf-py's
GGUFReader builds a numpy view per array item: ~30 s for Gemma 3's 262144-token vocabulary, so it
is not used for opening; gguf-py still supplies the type tables and every dequantizer.)
Tensor data stays in a read-only memory map.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_KEY_BYTES = 1 << 16

# GGUF value types: id -> (name, fixed size in bytes or None)
_VALUE_TYPES = {
    0: ("uint8", 1), 1: ("int8", 1), 2: ("uint16", 2), 3: ("int16", 2), 4: ("uint32", 4),
    5: ("int32", 4), 6: ("float32", 4), 7: ("bool", 1), 8: ("string", None), 9: ("array", None),
    10: ("uint64", 8), 11: ("int64", 8), 12: ("float64", 8),
}


class GGUFError(ValueError):
    """The file is not a GGUF file this runtime can use; the message says where and why."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # GGML type name, e.g. "Q4_K"
    type_id: int
    shape: tuple[int, ...]  # numpy order (rows first): a GGUF [cols, rows] matrix is (rows, cols)
    offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


def _ggml_types():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}


class _Cursor:
    """Bounds-checked little-endian reads over the file's bytes."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}")

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what}: needs {n} bytes at offset {self.pos}, file is {self.size} bytes (truncated?)")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.unpack("<Q", f"{what} length")
        if limit is not None and n > limit:
            raise self.fail(f"{what}: length {n} exceeds the limit of {limit} bytes")
        start = self.take(n, what)
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q",
                   11: "<q", 12: "<d"}
_ARRAY_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8",
                 11: "<i8", 12: "<f8"}


def _read_value(cur: _Cursor, vtype: int, key: str):
    """Read one metadata value, checking its type and bounds."""
    if vtype not in _VALUE_TYPES:
        raise cur.fail(f"metadata {key!r}: unknown value type {vtype} (expected 0..12)")
    if vtype == 8:
        return cur.string(f"metadata {key!r} string")
    if vtype != 9:
        value = cur.unpack(_SCALAR_FORMATS[vtype], f"metadata {key!r} value")
        return bool(value) if vtype == 7 else value
    item_type = cur.unpack("<I", f"metadata {key!r} array type")
    count = cur.unpack("<Q", f"metadata {key!r} array length")
    if item_type not in _VALUE_TYPES or item_type == 9:
        raise cur.fail(f"metadata {key!r}: unsupported array item type {item_type}")
    item_size = _VALUE_TYPES[item_type][1] or 8  # a string needs at least its 8-byte length
    if count * item_size > cur.size - cur.pos:
        raise cur.fail(f"metadata {key!r}: array of {count} items cannot fit in the "
                       f"{cur.size - cur.pos} bytes left in the file")
    if item_type == 8:
        return _read_strings(cur, count, f"metadata {key!r} item")
    start = cur.take(count * item_size, f"metadata {key!r} array data")
    values = np.frombuffer(cur.buf, dtype=_ARRAY_DTYPES[item_type], count=count, offset=start).tolist()
    return [bool(v) for v in values] if item_type == 7 else values


_U64 = struct.Struct("<Q")


def _read_strings(cur: _Cursor, count: int, what: str) -> list[str]:
    """count strings: cur.string's checks in one tight loop (a vocabulary has 262144 of them); at the
    first string that does not fit or decode, cur.string reads it again and raises its message."""
    buf, pos, size, out = cur.buf, cur.pos, cur.size, []
    try:
        for _ in range(count):
            n = _U64.unpack_from(buf, pos)[0] if pos + 8 <= size else -1
            if n < 0 or pos + 8 + n > size:
                break
            out.append(str(buf[pos + 8:pos + 8 + n], "utf-8"))
            pos += 8 + n
    except UnicodeDecodeError:
        pass
    cur.pos = pos
    while len(out) < count:  # (only when the loop above stopped early: this raises)
        out.append(cur.string(what))
    return out


def _read_layout(path: Path, buf) -> tuple[dict, list[TensorInfo]]:
    """Read header, metadata and tensor infos; check every tensor's type, dims and byte range."""
    cur = _Cursor(buf, path)
    if cur.size < 24:
        raise cur.fail(f"file is {cur.size} bytes, too small for a GGUF header (24 bytes)")
    magic = bytes(buf[0:4])
    if magic != b"GGUF":
        raise cur.fail(f"bad magic {magic!r}, expected b'GGUF' (not a GGUF file)")
    cur.pos = 4
    version = cur.unpack("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        raise cur.fail(f"GGUF version {version} is not supported (expected one of {SUPPORTED_VERSIONS})")
    n_tensors = cur.unpack("<Q", "tensor_count")
    n_kv = cur.unpack("<Q", "kv_count")
    # each kv needs >= 8+1+4+1 bytes and each tensor info >= 8+1+4+8+4+8: bound the counts by the file
    if n_kv * 14 > cur.size:
        raise cur.fail(f"kv_count {n_kv} is impossible for a file of {cur.size} bytes")
    if n_tensors * 33 > cur.size:
        raise cur.fail(f"tensor_count {n_tensors} is impossible for a file of {cur.size} bytes")

    alignment = DEFAULT_ALIGNMENT
    metadata = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}", MAX_KEY_BYTES)
        if key in metadata:
            raise cur.fail(f"metadata key {key!r} appears twice")
        vtype = cur.unpack("<I", f"metadata {key!r} type")
        metadata[key] = value = _read_value(cur, vtype, key)
        if key == "general.alignment":
            if vtype != 4 or value == 0 or value & (value - 1):
                raise cur.fail(f"general.alignment = {value!r} (type {vtype}): expected a uint32 power of two")
            alignment = value

    ggml_types = _ggml_types()
    raw = []
    names = set()
    for i in range(n_tensors):
        name = cur.string(f"tensor #{i} name", MAX_KEY_BYTES)
        if name in names:
            raise cur.fail(f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = cur.unpack("<I", f"tensor {name!r} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r}: n_dims {n_dims}, expected 1..{MAX_DIMS}")
        dims = [cur.unpack("<Q", f"tensor {name!r} dim") for _ in range(n_dims)]
        type_id = cur.unpack("<I", f"tensor {name!r} type")
        offset = cur.unpack("<Q", f"tensor {name!r} offset")
        raw.append((name, dims, type_id, offset))

    data_start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, dims, type_id, offset in raw:
        if type_id not in ggml_types:
            raise cur.fail(f"tensor {name!r}: unknown GGML type id {type_id}")
        type_name, block, block_bytes = ggml_types[type_id]
        if any(d == 0 or d > 1 << 40 for d in dims):
            raise cur.fail(f"tensor {name!r}: dims {dims} out of range (each 1..2^40)")
        if dims[0] % block:
            raise cur.fail(f"tensor {name!r}: first dim {dims[0]} is not a multiple of the {type_name} "
                           f"block size {block}")
        n_elements = int(np.prod(np.array(dims, dtype=object)))
        n_bytes = n_elements // block * block_bytes
        start = data_start + offset
        if offset % alignment:
            raise cur.fail(f"tensor {name!r}: offset {offset} is not aligned to {alignment}")
        if start + n_bytes > cur.size:
            raise cur.fail(f"tensor {name!r}: bytes [{start}, {start + n_bytes}) lie beyond the end of the "
                           f"file ({cur.size} bytes; truncated?)")
        tensors.append(TensorInfo(name, type_name, type_id, tuple(int(d) for d in reversed(dims)), start, n_bytes))
    return metadata, tensors


class GGUFFile:
    """A validated GGUF file: `metadata` (key -> python value), `tensors` (name -> TensorInfo)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise GGUFError(f"{self.path}: is a directory, not a GGUF file")
        if not self.path.is_file():
            raise GGUFError(f"{self.path}: no such file")
        self.file_size = self.path.stat().st_size
        if self.file_size == 0:
            raise GGUFError(f"{self.path}: file is empty")
        # read-only memory map: tensor data is paged in on use, never copied wholesale
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        # parsed through a memoryview: slicing the memmap itself makes a numpy object per string
        # (seconds for a 262144-token vocabulary)
        self.metadata, tensor_list = _read_layout(self.path, memoryview(self._data))
        self.tensors: dict[str, TensorInfo] = {t.name: t for t in tensor_list}
        self.architecture = self.require("general.architecture", str)

    # ---- typed metadata ----
    def get(self, key: str, kind: type, default=None):
        if key not in self.metadata:
            return default
        return self._check(key, kind, self.metadata[key])

    def require(self, key: str, kind: type):
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: required metadata {key!r} is missing")
        return self._check(key, kind, self.metadata[key])

    def _check(self, key: str, kind: type, value):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, bool):
            raise GGUFError(f"{self.path}: metadata {key!r} = {value!r}: expected an integer")
        if not isinstance(value, kind):
            raise GGUFError(f"{self.path}: metadata {key!r} = {_short(value)}: expected {kind.__name__}")
        if kind is int and value < 0:
            raise GGUFError(f"{self.path}: metadata {key!r} = {value}: expected a non-negative integer")
        return value

    # ---- tensors ----
    def tensor(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise GGUFError(f"{self.path}: required tensor {name!r} is missing")
        return self.tensors[name]

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored (a read-only memory-mapped uint8 view)."""
        info = self.tensor(name)
        return self._data[info.offset:info.offset + info.n_bytes]

    def raw_bytes(self, start: int, end: int) -> bytes:
        return self._data[start:end].tobytes()

    def dequantize(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """float32 array of the tensor's numpy shape, via gguf-py's dequantizers.

        Works through the rows in chunks so the dequantizer's temporaries stay small; writes into
        `out` (a float32 array of the tensor's shape, e.g. rows of a fused matrix) when given.
        """
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize

        info = self.tensor(name)
        qtype = GGMLQuantizationType(info.type_id)
        rows = info.shape[0] if len(info.shape) > 1 else 1
        cols = info.n_elements // rows
        if out is None:
            out = np.empty(info.shape, np.float32)
        flat = out.reshape(rows, cols)
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        row_bytes = cols // block * block_bytes
        raw = self.raw(name).reshape(rows, row_bytes)
        step = max(1, (1 << 24) // max(row_bytes, 1))  # ~16 MiB of input per chunk
        for start in range(0, rows, step):
            chunk = raw[start:start + step]
            if qtype == GGMLQuantizationType.F32:
                flat[start:start + step] = chunk.view(np.float32)
                continue
            try:
                flat[start:start + step] = dequantize(np.asarray(chunk), qtype).reshape(-1, cols)
            except NotImplementedError:
                raise GGUFError(f"{self.path}: tensor {name!r} has type {info.type_name}, which this runtime "
                                f"cannot dequantize") from None
            chunk_at = info.offset + start * row_bytes
            self.release_pages(chunk_at, chunk_at + len(chunk) * row_bytes)
        return out

    def release_pages(self, start: int = 0, end: int | None = None) -> None:
        """Let the OS drop the file pages in [start, end) that this process touched (e.g. once a
        tensor lives elsewhere as float32 or on the GPU), so they stop counting as its memory.

        The mapping stays valid: a later read faults the pages back in from the page cache.
        """
        mm = getattr(self._data, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        end = self.file_size if end is None else min(end, self.file_size)
        start -= start % mmap.PAGESIZE
        if end > start:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, {self.architecture}, {len(self.tensors)} tensors)"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."
