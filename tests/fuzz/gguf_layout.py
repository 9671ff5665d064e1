"""The byte layout of a valid GGUF file, field by field, and the writer that puts one back together.

The fuzzer needs what a reader does not keep: where every header field, count, length, type,
dimension and offset lies in the file (to overwrite it in place), and each key's value type (to
write the file again with one value changed). gguf-py's GGUFReader has both, but takes ~30 s on
Gemma 3's 262144-token vocabulary; this parser is a few dozen lines and takes well under a second.
It reads the fuzzer's own seed files, which are valid: it checks nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

STRING, ARRAY = 8, 9
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                  12: "<d"}
INT_TYPES = {0: (0, 2**8 - 1), 1: (-2**7, 2**7 - 1), 2: (0, 2**16 - 1), 3: (-2**15, 2**15 - 1),
             4: (0, 2**32 - 1), 5: (-2**31, 2**31 - 1), 10: (0, 2**64 - 1), 11: (-2**63, 2**63 - 1)}
FLOAT_TYPES = (6, 12)
BOOL = 7
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class Field:
    """One fixed-size number of the file: where it is, its struct format, what it is."""
    offset: int
    fmt: str
    group: str  # kind of field, e.g. "kv_count", "array_length", "tensor_dim" (the fuzzer picks by kind)
    name: str  # which one, for the mutation's description


@dataclass
class KV:
    key: str
    vtype: int
    value: object  # int / float / bool / str (bytes: raw, maybe not UTF-8) / list of those
    item_type: int | None = None  # for arrays


@dataclass
class TensorEntry:
    name: str
    dims: list[int]  # GGUF order (columns first)
    type_id: int
    offset: int  # relative to the data section


@dataclass(frozen=True)
class ItemOffsets:
    """Where the items of one array lie (a string item: its length field), kept as plain offsets
    (a vocabulary has hundreds of thousands)."""
    key: str
    item_type: int
    offsets: list[int]


@dataclass
class Layout:
    version: int
    kvs: list[KV]
    tensors: list[TensorEntry]
    alignment: int
    data_start: int  # absolute offset of the tensor data section
    fields: list[Field] = field(default_factory=list)  # every number but array items
    items: list[ItemOffsets] = field(default_factory=list)  # array items, per array
    boundaries: list[int] = field(default_factory=list)  # where each number or string ends


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0
        self.fields: list[Field] = []
        self.items: list[ItemOffsets] = []
        self.boundaries: list[int] = []

    def number(self, fmt: str, group: str | None = None, name: str = ""):
        if group is not None:
            self.fields.append(Field(self.pos, fmt, group, name))
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        self.boundaries.append(self.pos)
        return value

    def string(self, group: str | None, name: str = "") -> str | bytes:
        n = self.number("<Q", group, name)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        self.boundaries.append(self.pos)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw


def parse(buf: bytes) -> Layout:
    """The layout of a valid GGUF file's bytes (the header; tensor data is not read)."""
    r = _Reader(buf)
    r.pos = 4
    version = r.number("<I", "version", "version")
    n_tensors = r.number("<Q", "tensor_count", "tensor_count")
    n_kv = r.number("<Q", "kv_count", "kv_count")
    kvs, alignment = [], DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = r.string("key_length", f"kv #{i} key length")
        vtype = r.number("<I", "value_type", f"{key!r} value type")
        if vtype == ARRAY:
            item_type = r.number("<I", "array_type", f"{key!r} array item type")
            count = r.number("<Q", "array_length", f"{key!r} array length")
            offsets, value = [], []
            for _ in range(count):
                offsets.append(r.pos)
                value.append(r.string(None) if item_type == STRING else r.number(SCALAR_FORMATS[item_type]))
            r.items.append(ItemOffsets(key, item_type, offsets))
            kvs.append(KV(key, vtype, value, item_type))
        elif vtype == STRING:
            kvs.append(KV(key, vtype, r.string("string_length", f"{key!r} string length")))
        else:
            kvs.append(KV(key, vtype, r.number(SCALAR_FORMATS[vtype], "scalar", f"{key!r} value")))
        if key == "general.alignment":
            alignment = kvs[-1].value
    tensors = []
    for i in range(n_tensors):
        name = r.string("tensor_name_length", f"tensor #{i} name length")
        n_dims = r.number("<I", "tensor_n_dims", f"tensor {name!r} n_dims")
        dims = [r.number("<Q", "tensor_dim", f"tensor {name!r} dim {d}") for d in range(n_dims)]
        type_id = r.number("<I", "tensor_type", f"tensor {name!r} type")
        offset = r.number("<Q", "tensor_offset", f"tensor {name!r} offset")
        tensors.append(TensorEntry(name, dims, type_id, offset))
    data_start = -(-r.pos // alignment) * alignment
    return Layout(version, kvs, tensors, alignment, data_start, r.fields, r.items, r.boundaries)


# ---------------------------------------------------------------- writing
def _string(value: str | bytes) -> bytes:
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(data)) + data


def _scalar(vtype: int, value) -> bytes:
    if vtype == STRING:
        return _string(value)
    return struct.pack(SCALAR_FORMATS[vtype], value)


def encode_kv(kv: KV) -> bytes:
    """The key, its type and its value, as in the file."""
    out = [_string(kv.key), struct.pack("<I", kv.vtype)]
    if kv.vtype == ARRAY:
        out.append(struct.pack("<IQ", kv.item_type, len(kv.value)))
        if kv.item_type == STRING:
            out.extend(_string(v) for v in kv.value)
        else:
            out.append(struct.pack(f"<{len(kv.value)}{SCALAR_FORMATS[kv.item_type][1]}", *kv.value))
    else:
        out.append(_scalar(kv.vtype, kv.value))
    return b"".join(out)


def encode_tensor(t: TensorEntry) -> bytes:
    return (_string(t.name) + struct.pack("<I", len(t.dims)) + b"".join(struct.pack("<Q", d) for d in t.dims)
            + struct.pack("<IQ", t.type_id, t.offset))


def header(version: int, n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def assemble(version: int, kv_blobs: list[bytes], tensor_blobs: list[bytes], alignment: int = DEFAULT_ALIGNMENT,
             n_kv: int | None = None, n_tensors: int | None = None) -> bytes:
    """Header, key/values and tensor infos, padded to `alignment`: the bytes before the tensor data."""
    out = header(version, len(tensor_blobs) if n_tensors is None else n_tensors,
                 len(kv_blobs) if n_kv is None else n_kv) + b"".join(kv_blobs) + b"".join(tensor_blobs)
    return out + b"\0" * (-len(out) % alignment)
