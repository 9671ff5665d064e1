"""Mutations of a valid GGUF file: one malformed (or still valid) variant per call, described in words.

Families, each picked with its weight in FAMILIES:
  field     one number of the layout overwritten in place: version, tensor/kv counts, key and
            string lengths, value and array item types, array lengths and items, tensor n_dims,
            dims, GGML types and offsets (the rest of the file then reads differently);
  value     one key/value written again with another value or type, or dropped, doubled, added;
  vocab     the tokenizer's metadata: long, empty, duplicated or badly typed tokens, byte tokens
            that are not <0xNN>, token types, scores and merges of the wrong kind or length, token
            ids out of range, unknown tokenizer models and pre-tokenizers, chat templates;
  tensor    one tensor info written again: dims, type, offset, name; dropped, doubled or added;
  flip      a few random bytes changed (mostly in the header);
  truncate  the file cut short (in the header, at a field boundary, or in the tensor data).
A semantic mutation re-encodes only what it changes: the rest of the file stays byte-identical.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass, replace
from functools import cached_property

import gguf_layout as L
from gguf_layout import KV, Layout, TensorEntry

INTERESTING_INTS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 33, 63, 64, 127, 128, 255, 256, 1000, 1023, 1024, 4095,
                    4096, 65535, 65536, 10**6, 2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**40 + 1, 2**53,
                    2**62, 2**63 - 1, 2**63, 2**64 - 1]
NEGATIVE_INTS = [-1, -2, -256, -2**31, -2**63]
INTERESTING_FLOATS = [0.0, -0.0, -1.0, 1.0, 1e-45, 1e-30, 3.4e38, 1e300, math.nan, math.inf, -math.inf]
BAD_BYTE_TOKENS = ["<0xZZ>", "<0x1>", "<0x100>", "abc", "", "<0x4G>", "<0x 1>", "<0x-1>", "0x41", "<0X41>"]
# templates that do not compile, and one that does (a template's own raise_exception is a runtime
# refusal of the conversation, not a malformed file: not among these)
TEMPLATES = ["{% for %}", "{{", "{% if messages %}", "{{ messages[0]['content'] | nosuchfilter }}",
             "{% endfor %}", "{% for m in messages %}{{ m.content }}", "{{ messages[0].content }}"]
ARCH_KEYS = ["context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
             "attention.head_count_kv", "attention.key_length", "attention.value_length",
             "attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base",
             "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor", "attention.sliding_window",
             "expert_count", "vocab_size", "logit_scale", "attn_logit_softcapping", "final_logit_softcapping"]
TOKENIZER_KEYS = ["model", "pre", "tokens", "token_type", "scores", "merges", "bos_token_id", "eos_token_id",
                  "unknown_token_id", "padding_token_id", "eot_token_id", "eom_token_id", "add_bos_token",
                  "add_eos_token", "add_space_prefix"]
GGML_TYPE_IDS = list(range(0, 42)) + [2**31, 2**32 - 1]


@dataclass(frozen=True)
class Seed:
    """A valid model to mutate: its layout, the bytes before its tensor data, and the data (or, for
    a large file, only the data's size: a mutant's data is then left as zeros, a sparse file)."""
    name: str
    layout: Layout
    head: bytes
    data: bytes
    data_size: int
    kv_blobs: tuple[bytes, ...]
    tensor_blobs: tuple[bytes, ...]

    @classmethod
    def from_file(cls, name: str, path, keep_data: bool = True) -> Seed:
        with open(path, "rb") as f:
            buf = f.read(1 << 16)
            layout = None
            while layout is None:  # read on until the header parses (a vocabulary may be megabytes)
                try:
                    layout = L.parse(buf)
                except struct.error:
                    more = f.read(len(buf))
                    if not more:
                        raise
                    buf += more
            head = buf[:layout.data_start]
            if len(buf) < layout.data_start:
                head += f.read(layout.data_start - len(buf))
            f.seek(0, 2)
            size = f.tell()
            data = b""
            if keep_data:
                f.seek(layout.data_start)
                data = f.read()
        return cls(name, layout, head, data, size - layout.data_start,
                   tuple(L.encode_kv(kv) for kv in layout.kvs), tuple(L.encode_tensor(t) for t in layout.tensors))

    @property
    def size(self) -> int:
        return len(self.head) + self.data_size

    @cached_property
    def content(self) -> bytes:
        """The file's bytes as kept: all of them, or only the head of a large file."""
        return self.head + self.data

    @property
    def arch(self) -> str:
        return next((kv.value for kv in self.layout.kvs if kv.key == "general.architecture"), "")


@dataclass(frozen=True)
class Mutant:
    """The file: `content`, then zeros up to `size` (written sparse)."""
    family: str
    description: str
    content: bytes
    size: int


def _value_fits(vtype: int, value) -> bool:
    lo, hi = L.INT_TYPES[vtype]
    return lo <= value <= hi


def _int_type_for(value: int, prefer: int) -> int:
    if prefer in L.INT_TYPES and _value_fits(prefer, value):
        return prefer
    return 10 if value >= 0 else 11


def _interesting_int(rng: random.Random, current: int | None = None, size: int = 0) -> int:
    choices = INTERESTING_INTS + NEGATIVE_INTS
    if current is not None:
        choices = choices + [current - 1, current + 1, current * 2, current // 2, current + 2**32, -current]
    if size:
        choices = choices + [size, size - 1, size + 1, size // 2]
    return rng.choice(choices)


class _Mutator:
    def __init__(self, seed: Seed, rng: random.Random):
        self.seed, self.rng, self.layout = seed, rng, seed.layout
        self.kvs = list(seed.kv_blobs)
        self.tensors = list(seed.tensor_blobs)

    # ------------------------------------------------------------ output
    def rebuilt(self, family: str, description: str) -> Mutant:
        head = L.assemble(self.layout.version, self.kvs, self.tensors, self.layout.alignment)
        return Mutant(family, description, head + self.seed.data, len(head) + self.seed.data_size)

    def patched(self, family: str, description: str, patches: list[tuple[int, bytes]]) -> Mutant:
        content = bytearray(self.seed.content)
        for offset, raw in patches:
            content[offset:offset + len(raw)] = raw
        return Mutant(family, description, bytes(content), self.seed.size)

    # ------------------------------------------------------------ field: a number overwritten in place
    def field(self) -> Mutant:
        rng, layout = self.rng, self.layout
        groups = sorted({f.group for f in layout.fields} | ({"array_item"} if layout.items else set()))
        group = rng.choice(groups)
        if group == "array_item":
            arr = rng.choice(layout.items)
            k = rng.randrange(len(arr.offsets)) if arr.offsets else None
            if k is None:
                return self.field()
            fmt = "<Q" if arr.item_type == L.STRING else L.SCALAR_FORMATS[arr.item_type]
            what = f"{arr.key!r} item #{k}{' length' if arr.item_type == L.STRING else ''}"
            offset = arr.offsets[k]
        else:
            f = rng.choice([f for f in layout.fields if f.group == group])
            fmt, what, offset = f.fmt, f.name, f.offset
        old = struct.unpack_from(fmt, self.seed.content, offset)[0]
        new = self._new_number(fmt, old)
        raw = bytes([new]) if fmt == "<?" else struct.pack(fmt, new)  # a bool that is neither 0 nor 1
        return self.patched("field", f"{what}: {old!r} -> {new!r}", [(offset, raw)])

    def _new_number(self, fmt: str, old):
        rng = self.rng
        code = fmt[1]
        if code in "fd":
            value = rng.choice(INTERESTING_FLOATS + [old * 1e6, -old, old + 1])
            return value if code == "d" or not math.isfinite(value) or abs(value) < 3.4e38 else math.inf
        if code == "?":
            return rng.choice([2, 255])  # not 0 or 1: written as a raw byte below
        bits = struct.calcsize(fmt) * 8
        signed = code.islower()
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        for _ in range(20):
            value = (_interesting_int(rng, old, self.seed.size) if rng.random() < 0.8
                     else old ^ (1 << rng.randrange(bits)) if not signed or old >= 0 else old - 1)
            if lo <= value <= hi and value != old:
                return value
        return lo if old != lo else hi

    # ------------------------------------------------------------ value: one key/value written again
    def value(self) -> Mutant:
        rng = self.rng
        kvs = self.layout.kvs
        op = rng.choice(["retype", "retype", "number", "string", "delete", "duplicate", "add", "array"])
        i = rng.randrange(len(kvs))
        kv = kvs[i]
        if op == "delete":
            del self.kvs[i]
            return self.rebuilt("value", f"{kv.key!r} removed")
        if op == "duplicate":
            self.kvs.insert(rng.randrange(len(self.kvs) + 1), self.kvs[i])
            return self.rebuilt("value", f"{kv.key!r} written twice")
        if op == "add":
            key = rng.choice([f"{self.seed.arch}.{k}" for k in ARCH_KEYS] + [f"tokenizer.ggml.{k}" for k in
                                                                          TOKENIZER_KEYS] + ["general.alignment"])
            new = self._random_kv(key)
            if any(k.key == key for k in kvs):
                self.kvs = [L.encode_kv(new) if k.key == key else b for k, b in zip(kvs, self.kvs, strict=True)]
            else:
                self.kvs.append(L.encode_kv(new))
            return self.rebuilt("value", f"{key!r} set to {_show(new)}")
        if op == "array" and kv.vtype == L.ARRAY:
            new = self._array_change(kv)
        elif op == "number" and kv.vtype not in (L.STRING, L.ARRAY):
            new = self._random_kv(kv.key, like=kv)
        elif op == "string":
            new = KV(kv.key, L.STRING, self._random_string())
        else:
            new = self._retype(kv)
        self.kvs[i] = L.encode_kv(new)
        return self.rebuilt("value", f"{kv.key!r}: {_show(kv)} -> {_show(new)}")

    def _random_string(self) -> str | bytes:
        rng = self.rng
        return rng.choice(["", "x", "llama", "gemma3", "gpt2", "bogus", "\0", "é" * 3, "a" * rng.choice([300, 70000]),
                           b"\xff\xfe", "none", "linear", "yarn", "[/]", "[bold]x[/i]", "{{ x }}", "%s%n"])

    def _random_kv(self, key: str, like: KV | None = None) -> KV:
        rng = self.rng
        if key == "general.alignment" and rng.random() < 0.7:  # powers of two (valid) and others
            return KV(key, 4, rng.choice([0, 1, 3, 8, 16, 33, 64, 4096, 2**31, 2**32 - 1]))
        kind = rng.choice(["int", "int", "float", "bool", "string", "array"])
        if like is not None and like.vtype in L.INT_TYPES:
            kind = "int"
        elif like is not None and like.vtype in L.FLOAT_TYPES:
            kind = "float"
        if kind == "int":
            value = _interesting_int(rng, like.value if like is not None else None)
            return KV(key, _int_type_for(value, like.vtype if like is not None else 4), value)
        if kind == "float":
            value = rng.choice(INTERESTING_FLOATS)
            return KV(key, 12 if abs(value) > 3.4e38 else rng.choice(L.FLOAT_TYPES), value)
        if kind == "bool":
            return KV(key, L.BOOL, rng.random() < 0.5)
        if kind == "string":
            return KV(key, L.STRING, self._random_string())
        return KV(key, L.ARRAY, [rng.choice(INTERESTING_INTS[:20]) for _ in range(rng.randrange(4))], 4)

    def _retype(self, kv: KV) -> KV:
        """The same key with a value of another type (a scalar where an array belongs, and so on)."""
        rng = self.rng
        v = kv.value
        if kv.vtype == L.ARRAY:
            first = v[0] if v else 0
            choices = [KV(kv.key, L.STRING, ",".join(map(str, v[:8]))),
                       KV(kv.key, kv.item_type, first) if kv.item_type != L.STRING else KV(kv.key, L.STRING, first),
                       KV(kv.key, 4, len(v)),
                       KV(kv.key, L.ARRAY, [], rng.choice([0, 4, 6, 8, 11]))]
            if kv.item_type == L.STRING:
                choices.append(KV(kv.key, L.ARRAY, [len(x) for x in v], rng.choice([4, 5, 10, 11])))
                choices.append(KV(kv.key, L.ARRAY, [float(len(x)) for x in v], 6))
            else:
                choices.append(KV(kv.key, L.ARRAY, [str(x) for x in v], L.STRING))
                numeric = [x for x in v if not isinstance(x, bool)]
                if kv.item_type in L.INT_TYPES:
                    choices.append(KV(kv.key, L.ARRAY, [float(x) for x in numeric], 6))
                    choices.append(KV(kv.key, L.ARRAY, [bool(x) for x in numeric], L.BOOL))
                else:
                    choices.append(KV(kv.key, L.ARRAY, [int(x) if math.isfinite(x) else 0 for x in v], 5))
            return rng.choice(choices)
        if kv.vtype == L.STRING:
            return rng.choice([KV(kv.key, 4, len(v)), KV(kv.key, L.ARRAY, [v], L.STRING),
                               KV(kv.key, L.ARRAY, [1, 2], 4), KV(kv.key, L.BOOL, True), KV(kv.key, 6, 1.5)])
        choices = [KV(kv.key, L.STRING, str(v)), KV(kv.key, L.ARRAY, [v], kv.vtype), KV(kv.key, L.ARRAY, [], kv.vtype),
                   KV(kv.key, L.BOOL, bool(v))]
        if kv.vtype in L.INT_TYPES:
            choices += [KV(kv.key, 6, float(v)), KV(kv.key, 12, float(v) + 0.5),
                        KV(kv.key, t, v) if _value_fits(t := rng.choice(list(L.INT_TYPES)), v) else KV(kv.key, 11, -1)]
        elif kv.vtype in L.FLOAT_TYPES:
            choices += [KV(kv.key, 4, int(v) if math.isfinite(v) and 0 <= v < 2**32 else 0), KV(kv.key, 12, v)]
        else:
            choices += [KV(kv.key, 4, int(v)), KV(kv.key, 0, 2)]
        return rng.choice(choices)

    def _array_change(self, kv: KV) -> KV:
        rng = self.rng
        v = list(kv.value)
        op = rng.choice(["truncate", "empty", "extend", "shuffle", "item"])
        if op == "truncate" and v:
            v = v[:rng.randrange(len(v))]
        elif op == "empty":
            v = []
        elif op == "extend":
            v = v + v[:rng.randrange(1, 5)] if v else [0]
        elif op == "shuffle":
            rng.shuffle(v)
        elif v:
            k = rng.randrange(len(v))
            if kv.item_type == L.STRING:
                v[k] = self._random_string()
            elif kv.item_type in L.FLOAT_TYPES:
                v[k] = rng.choice([f for f in INTERESTING_FLOATS if kv.item_type == 12 or not abs(f) < math.inf
                                   or abs(f) < 3.4e38])
            elif kv.item_type == L.BOOL:
                v[k] = not v[k]
            else:
                lo, hi = L.INT_TYPES[kv.item_type]
                v[k] = max(lo, min(hi, _interesting_int(rng, v[k])))
        return KV(kv.key, L.ARRAY, v, kv.item_type)

    # ------------------------------------------------------------ vocab: the tokenizer's metadata
    def _kv_index(self, key: str) -> int | None:
        return next((i for i, kv in enumerate(self.layout.kvs) if kv.key == key), None)

    def _set(self, key: str, new: KV | None) -> None:
        i = self._kv_index(key)
        if new is None:
            if i is not None:
                del self.kvs[i]
        elif i is None:
            self.kvs.append(L.encode_kv(new))
        else:
            self.kvs[i] = L.encode_kv(new)

    def vocab(self) -> Mutant:
        rng = self.rng
        P = "tokenizer.ggml."
        md = {kv.key: kv for kv in self.layout.kvs}
        tokens = list(md[P + "tokens"].value)
        types = list(md[P + "token_type"].value) if P + "token_type" in md else None
        n = len(tokens)
        ops = ["long_token", "empty_token", "duplicate_token", "drop_tokens", "add_tokens", "byte_token",
               "token_type", "scores", "ids", "model", "pre", "flags", "template", "wrong_kind"]
        if P + "merges" in md:
            ops += ["merges", "merges"]
        op = rng.choice(ops)
        if op == "long_token":
            k = rng.randrange(n)
            length = rng.choice([300, 5000, 100_000, 1_000_000])
            text = rng.choice(["a", "▁", "ab", "<", "é"]) * length
            text = text[:length]
            tokens[k] = text
            self._set(P + "tokens", KV(P + "tokens", L.ARRAY, tokens, L.STRING))
            return self.rebuilt("vocab", f"token #{k} is {length} characters long ({text[:4]!r}...)")
        if op == "empty_token":
            k = rng.randrange(n)
            tokens[k] = ""
            self._set(P + "tokens", KV(P + "tokens", L.ARRAY, tokens, L.STRING))
            return self.rebuilt("vocab", f"token #{k} is empty")
        if op == "duplicate_token":
            a, b = rng.randrange(n), rng.randrange(n)
            tokens[a] = tokens[b]
            self._set(P + "tokens", KV(P + "tokens", L.ARRAY, tokens, L.STRING))
            return self.rebuilt("vocab", f"token #{a} is a copy of #{b} ({tokens[b]!r})")
        if op == "drop_tokens":
            k = rng.choice([0, 1, n // 2, n - 1])
            self._set(P + "tokens", KV(P + "tokens", L.ARRAY, tokens[:k], L.STRING))
            return self.rebuilt("vocab", f"only the first {k} of {n} tokens")
        if op == "add_tokens":
            extra = [f"extra{i}" for i in range(rng.randrange(1, 4))]
            self._set(P + "tokens", KV(P + "tokens", L.ARRAY, tokens + extra, L.STRING))
            return self.rebuilt("vocab", f"{len(extra)} more tokens than the other arrays")
        if op == "byte_token":
            byte_ids = [i for i, t in enumerate(types or []) if t == 6]
            bad = rng.choice(BAD_BYTE_TOKENS)
            if byte_ids and rng.random() < 0.6:
                k = rng.choice(byte_ids)
                tokens[k] = bad
                self._set(P + "tokens", KV(P + "tokens", L.ARRAY, tokens, L.STRING))
                return self.rebuilt("vocab", f"byte token #{k} has the text {bad!r}")
            k = rng.randrange(n)
            types = list(types) if types is not None else [1] * n
            types[k] = 6
            self._set(P + "token_type", KV(P + "token_type", L.ARRAY, types, 5))
            return self.rebuilt("vocab", f"token #{k} ({tokens[k]!r}) typed as a byte token")
        if op == "token_type":
            types = list(types) if types is not None else [1] * n
            kind = rng.choice(["value", "length", "item_type", "scalar"])
            if kind == "value":
                k = rng.randrange(n)
                types[k] = rng.choice([0, 7, 8, 99, 255, 2**31 - 1, -1, -2**31])
                new = KV(P + "token_type", L.ARRAY, types, 5)
                what = f"token_type #{k} = {types[k]}"
            elif kind == "length":
                types = types[:rng.randrange(n)] if rng.random() < 0.5 else types + [1]
                new = KV(P + "token_type", L.ARRAY, types, 5)
                what = f"token_type has {len(types)} entries for {n} tokens"
            elif kind == "item_type":
                t = rng.choice([6, 8, 7, 10])
                items = [str(x) for x in types] if t == 8 else [float(x) for x in types] if t == 6 else \
                    [bool(x) for x in types] if t == 7 else types
                new = KV(P + "token_type", L.ARRAY, items, t)
                what = f"token_type items of type {t}"
            else:
                new = KV(P + "token_type", 5, 1)
                what = "token_type is a scalar"
            self._set(P + "token_type", new)
            return self.rebuilt("vocab", what)
        if op == "scores":
            scores = list(md[P + "scores"].value) if P + "scores" in md else [0.0] * n
            kind = rng.choice(["value", "length", "item_type", "scalar", "missing"])
            if kind == "value":
                k = rng.randrange(n)
                scores[k] = rng.choice([math.nan, math.inf, -math.inf, 1e38])
                new, what = KV(P + "scores", L.ARRAY, scores, 6), f"score #{k} = {scores[k]}"
            elif kind == "length":
                scores = scores[:rng.randrange(n)] if rng.random() < 0.5 else scores + [0.0]
                new, what = KV(P + "scores", L.ARRAY, scores, 6), f"scores has {len(scores)} entries for {n} tokens"
            elif kind == "item_type":
                t = rng.choice([8, 5, 7])
                items = [str(x) for x in scores] if t == 8 else [bool(x) for x in scores] if t == 7 else \
                    [int(x) if math.isfinite(x) else 0 for x in scores]
                new, what = KV(P + "scores", L.ARRAY, items, t), f"scores items of type {t}"
            elif kind == "scalar":
                new, what = KV(P + "scores", 6, 0.5), "scores is a scalar"
            else:
                new, what = None, "scores removed"
            self._set(P + "scores", new)
            return self.rebuilt("vocab", what)
        if op == "merges":
            merges = list(md[P + "merges"].value)
            kind = rng.choice(["no_space", "leading_space", "unknown", "extra_space", "empty", "ints", "long",
                               "scalar", "missing"])
            k = rng.randrange(len(merges)) if merges else 0
            bad = {"no_space": "ab", "leading_space": " ab", "unknown": "zz qq", "extra_space": "a  b",
                   "long": "a " + "b" * 70000}.get(kind)
            if bad is not None:
                merges = merges[:k] + [bad] + merges[k + 1:]
                new, what = KV(P + "merges", L.ARRAY, merges, L.STRING), f"merge #{k} = {bad[:20]!r}"
            elif kind == "empty":
                new, what = KV(P + "merges", L.ARRAY, [], L.STRING), "merges empty"
            elif kind == "ints":
                new, what = KV(P + "merges", L.ARRAY, list(range(len(merges))), 4), "merges of integers"
            elif kind == "scalar":
                new, what = KV(P + "merges", L.STRING, " ".join(merges)), "merges is one string"
            else:
                new, what = None, "merges removed"
            self._set(P + "merges", new)
            return self.rebuilt("vocab", what)
        if op == "ids":
            name = rng.choice(["bos", "eos", "unknown", "padding", "eot", "eom"])
            key = f"{P}{name}_token_id"
            value = rng.choice([n, n - 1, n + 1, -1, 2**32 - 1, 2**63, 0])
            new = KV(key, _int_type_for(value, 4), value) if rng.random() < 0.8 else rng.choice(
                [KV(key, 6, 1.0), KV(key, L.STRING, "1"), KV(key, L.ARRAY, [1], 4), KV(key, L.BOOL, True)])
            self._set(key, new)
            return self.rebuilt("vocab", f"{key} = {_show(new)}")
        if op == "model":
            value = rng.choice(["bert", "", "llama", "gpt2", "ugm", "rwkv", "t5", "none", "wpm", "LLAMA"])
            self._set(P + "model", KV(P + "model", L.STRING, value))
            return self.rebuilt("vocab", f"tokenizer model {value!r}")
        if op == "pre":
            value = rng.choice(["bogus", "", "llama3", "qwen2", "gpt2", "default", "smollm"])
            new = KV(P + "pre", L.STRING, value) if rng.random() < 0.8 else KV(P + "pre", L.ARRAY, ["gpt2"], 8)
            self._set(P + "pre", new)
            return self.rebuilt("vocab", f"pre-tokenizer {_show(new)}")
        if op == "flags":
            key = P + rng.choice(["add_bos_token", "add_eos_token", "add_space_prefix"])
            new = rng.choice([KV(key, L.BOOL, True), KV(key, L.BOOL, False), KV(key, 4, 2), KV(key, L.STRING, "yes"),
                              KV(key, L.ARRAY, [True], L.BOOL)])
            self._set(key, new)
            return self.rebuilt("vocab", f"{key} = {_show(new)}")
        if op == "template":
            key = "tokenizer.chat_template"
            new = rng.choice([KV(key, L.STRING, rng.choice(TEMPLATES)), KV(key, 4, 1), KV(key, L.ARRAY, ["x"], 8)])
            self._set(key, new)
            return self.rebuilt("vocab", f"chat template {_show(new)}")
        # a whole tokenizer array of another kind
        key = P + rng.choice(["tokens", "token_type", "scores", "merges"])
        if key not in md:
            key = P + "tokens"
        new = self._retype(md[key])
        self._set(key, new)
        return self.rebuilt("vocab", f"{key}: {_show(md[key])} -> {_show(new)}")

    # ------------------------------------------------------------ tensor: one tensor info written again
    def tensor(self) -> Mutant:
        rng = self.rng
        infos = self.layout.tensors
        i = rng.randrange(len(infos))
        t = infos[i]
        op = rng.choice(["dim", "dim", "swap", "add_dim", "drop_dim", "type", "offset", "name", "drop",
                         "duplicate", "add", "block"])
        new: TensorEntry | None = None
        if op == "dim":
            d = list(t.dims)
            k = rng.randrange(len(d))
            d[k] = rng.choice([0, 1, 2, d[k] + 1, d[k] * 2, d[k] // 2 or 1, 2**40, 2**40 + 1, 2**63, 2**64 - 1])
            new, what = replace(t, dims=d), f"tensor {t.name!r} dims {t.dims} -> {d}"
        elif op == "swap":
            new, what = replace(t, dims=t.dims[::-1]), f"tensor {t.name!r} dims reversed"
        elif op == "add_dim":
            d = t.dims + [rng.choice([1, 2, 3])]
            new, what = replace(t, dims=d), f"tensor {t.name!r} dims {t.dims} -> {d}"
        elif op == "drop_dim" and len(t.dims) > 1:
            new, what = replace(t, dims=t.dims[:-1]), f"tensor {t.name!r} dims {t.dims} -> {t.dims[:-1]}"
        elif op == "type":
            type_id = rng.choice(GGML_TYPE_IDS)
            new, what = replace(t, type_id=type_id), f"tensor {t.name!r} type {t.type_id} -> {type_id}"
        elif op == "offset":
            a = self.layout.alignment
            offset = rng.choice([0, t.offset + a, max(t.offset - a, 0), t.offset + 1, 2**63, 2**64 - a,
                                 self.seed.data_size, rng.choice(infos).offset])
            new, what = replace(t, offset=offset), f"tensor {t.name!r} offset {t.offset} -> {offset}"
        elif op == "name":
            name = rng.choice([rng.choice(infos).name, "", "x" * 300, "blk.999999.attn_q.weight", "[/]",
                               t.name.replace("blk.", "blk.1") if t.name.startswith("blk.") else "blk.7.ffn_up.weight",
                               "output.weight", "rope_freqs.weight"])
            new, what = replace(t, name=name), f"tensor {t.name!r} renamed {name[:40]!r}"
        elif op == "drop":
            del self.tensors[i]
            return self.rebuilt("tensor", f"tensor {t.name!r} removed")
        elif op == "duplicate":
            self.tensors.append(self.tensors[i])
            return self.rebuilt("tensor", f"tensor {t.name!r} listed twice")
        elif op == "block":
            # a tensor of a far-away block: block indices that do not follow one another
            name = f"blk.{rng.choice([2, 3, 100, 10**6, 2**31])}.attn_norm.weight"
            self.tensors.append(L.encode_tensor(replace(t, name=name)))
            return self.rebuilt("tensor", f"tensor {name!r} added (data of {t.name!r})")
        else:
            name = rng.choice(["output.weight", "blk.0.attn_q.bias", "extra.weight", "position_embd.weight"])
            self.tensors.append(L.encode_tensor(replace(t, name=name)))
            return self.rebuilt("tensor", f"tensor {name!r} added (data of {t.name!r})")
        if new is None:
            return self.tensor()
        self.tensors[i] = L.encode_tensor(new)
        return self.rebuilt("tensor", what)

    # ------------------------------------------------------------ raw bytes
    def _position(self) -> int:
        """A byte position, mostly in the header (where the parsing is)."""
        if self.rng.random() < 0.8 or not self.seed.data:
            return self.rng.randrange(len(self.seed.head))
        return self.rng.randrange(self.seed.size)

    def flip(self) -> Mutant:
        rng = self.rng
        patches, notes = [], []
        for _ in range(rng.choice([1, 1, 2, 4, 8])):
            pos = self._position()
            old = self.seed.content[pos]
            new = old ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
            patches.append((pos, bytes([new])))
            notes.append(f"@{pos} {old:#04x}->{new:#04x}")
        return self.patched("flip", "bytes " + ", ".join(notes), patches)

    def truncate(self) -> Mutant:
        rng = self.rng
        where = rng.random()
        if where < 0.4:
            n = rng.randrange(len(self.seed.head))
        elif where < 0.8:
            n = rng.choice(self.layout.boundaries)
        else:
            n = rng.randrange(len(self.seed.head), self.seed.size) if self.seed.data_size else len(self.seed.head) - 1
        n = max(0, min(n, self.seed.size - 1))
        content = self.seed.content[:n]
        return Mutant("truncate", f"cut at byte {n} of {self.seed.size}", content, n)


FAMILIES = {"field": 25, "value": 20, "vocab": 20, "tensor": 15, "flip": 10, "truncate": 10}


def mutate(seed: Seed, rng: random.Random, family: str | None = None) -> Mutant:
    """One mutant of seed; the family is drawn with the FAMILIES weights unless given."""
    if family is None:
        family = rng.choices(list(FAMILIES), weights=list(FAMILIES.values()))[0]
    return getattr(_Mutator(seed, rng), family)()


def _show(kv: KV) -> str:
    if kv.vtype == L.ARRAY:
        return f"array[{len(kv.value)}] of type {kv.item_type}"
    text = repr(kv.value)
    return f"{text[:40]}{'...' if len(text) > 40 else ''} (type {kv.vtype})"
