"""What every architecture file shares: reading hyper-parameters, checking tensor shapes, and
refusing what a family's graph does not implement (unknown metadata of the architecture, unused
tensors): a file that needs more than the graph computes must fail by name, never load and compute
something else."""

from __future__ import annotations

import re

from ..gguf_file import GGUFError, GGUFFile

_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.")


def weight_shapes(gf: GGUFFile) -> dict[str, tuple[int, int]]:
    """GGUF tensor name -> (rows, cols) as the graph sees it (a 1-D tensor of n is (1, n))."""
    shapes = {}
    for name, info in gf.tensors.items():
        shape = info.shape
        shapes[name] = (1, shape[0]) if len(shape) == 1 else (int(shape[-2]), int(shape[-1]))
    return shapes


def check_tensors(gf: GGUFFile, expected: dict[str, tuple[int, ...]]) -> None:
    """Every expected tensor must exist with exactly the expected (numpy-order) shape."""
    for name, shape in expected.items():
        info = gf.tensor(name)
        if tuple(info.shape) != tuple(shape):
            raise GGUFError(f"{gf.path}: tensor {name!r} has shape {info.shape}, expected {tuple(shape)}")


def positive(gf: GGUFFile, key: str, value: int) -> int:
    if value <= 0:
        raise GGUFError(f"{gf.path}: metadata {key!r} = {value}: expected a positive integer")
    return value


def block_count(gf: GGUFFile) -> int:
    """`<arch>.block_count`, at most the number of blocks the file has tensors of.

    Checked before anything is built per block: the graph, the expected tensor list and the KV
    cache all grow with it, so a bogus count (up to 2^64 - 1) in a small file must fail here, not
    after minutes of building and gigabytes of lists. A count below the file's blocks leaves
    tensors unused, which check_all_tensors_used refuses by name."""
    key = f"{gf.architecture}.block_count"
    n = positive(gf, key, gf.require(key, int))
    blocks = {m.group(1) for name in gf.tensors if (m := _BLOCK_TENSOR.match(name))}
    if n > len(blocks):
        raise GGUFError(f"{gf.path}: metadata {key!r} = {n}: the file has tensors of {len(blocks)} blocks "
                        f"(blk.N.*)")
    return n


def positive_float(gf: GGUFFile, key: str, value: float) -> float:
    if not 0 < value < float("inf"):  # NaN fails too
        raise GGUFError(f"{gf.path}: metadata {key!r} = {value}: expected a positive finite number")
    return value


def output_weight(gf: GGUFFile) -> str:
    """The output head: `output.weight`, or the token embedding when the two are tied."""
    return "output.weight" if "output.weight" in gf.tensors else "token_embd.weight"


# metadata every family reads the same way, or that never changes the computation
COMMON_KEYS = frozenset({
    "context_length", "embedding_length", "block_count", "feed_forward_length", "vocab_size",
    "attention.head_count", "attention.head_count_kv", "attention.key_length", "attention.value_length",
    "attention.layer_norm_rms_epsilon", "rope.freq_base",
    # rope scaling: the type is checked by the family (only "none" and "linear" are implemented); the
    # others only describe a linear scaling's origin
    "rope.scaling.type", "rope.scaling.factor", "rope.scaling.original_context_length", "rope.scaling.finetuned",
    # expert counts: refused unless 0 (check_no_experts); the expert tensors would be unused anyway
    "expert_count", "expert_used_count",
})

# what a tensor the graph does not use usually means, by name suffix (for the error message)
_UNUSED_TENSOR_HINTS = {
    "rope_freqs.weight": "Llama 3.1+ rope frequency factors are not implemented",
    "rope_factors_long.weight": "LongRoPE frequency factors are not implemented",
    "rope_factors_short.weight": "LongRoPE frequency factors are not implemented",
    ".bias": "biases are not implemented for this architecture",
    "_exps.weight": "mixture-of-experts layers are not implemented",
}


def check_metadata(gf: GGUFFile, known: frozenset[str]) -> None:
    """Every `<arch>.*` metadata key must be one the family knows (`known`: the suffixes after
    `<arch>.`); any other may change the math (a soft-cap, a multiplier, a new rope) and is refused."""
    prefix = f"{gf.architecture}."
    for key, value in gf.metadata.items():
        if key.startswith(prefix) and key[len(prefix):] not in known:
            raise GGUFError(f"{gf.path}: metadata {key!r} = {_short(value)} is not implemented by the "
                            f"{gf.architecture!r} graph (it may change what the model computes); refusing "
                            f"to run a different model than the file describes")


def check_equal(gf: GGUFFile, key: str, value, expected, why: str) -> None:
    """An optional key that must equal what the graph assumes (when present)."""
    if value is not None and value != expected:
        raise GGUFError(f"{gf.path}: metadata {key!r} = {value}: only {expected} is implemented ({why})")


def attention_heads(gf: GGUFFile, d_model: int, head_size: str) -> tuple[int, int, int]:
    """(n_head, n_kv_head, head_dim) from `<arch>.attention.*`. head_size says where the head size
    comes from: "key_length" (that key, by default d_model / head_count), "required key_length"
    (that key, which must be there) or "d_model" (d_model / head_count: a d_model-wide query; the
    key_length and value_length keys, when present, must say the same). Value heads are as wide as
    key heads in every family here."""
    a = gf.architecture
    n_head = positive(gf, f"{a}.attention.head_count", gf.require(f"{a}.attention.head_count", int))
    kv = f"{a}.attention.head_count_kv"
    n_kv_head = positive(gf, kv, gf.require(kv, int) if head_size == "required key_length" else gf.get(kv, int, n_head))
    if n_head % n_kv_head:
        raise GGUFError(f"{gf.path}: head_count {n_head} is not a multiple of head_count_kv {n_kv_head}")
    key = f"{a}.attention.key_length"
    if head_size == "d_model":
        if d_model % n_head:
            raise GGUFError(f"{gf.path}: head_count {n_head} does not divide embedding_length {d_model}")
        head_dim = d_model // n_head
        check_equal(gf, key, gf.get(key, int), head_dim, "heads of embedding_length / head_count")
    elif head_size == "required key_length":
        head_dim = positive(gf, key, gf.require(key, int))
    else:
        head_dim = positive(gf, key, gf.get(key, int, d_model // n_head))
    check_equal(gf, f"{a}.attention.value_length", gf.get(f"{a}.attention.value_length", int), head_dim,
                "value heads as wide as key heads")
    return n_head, n_kv_head, head_dim


def vocab_rows(gf: GGUFFile) -> int:
    """The vocabulary size: the rows of token_embd.weight (`<arch>.vocab_size`, when present, must agree)."""
    n_vocab = gf.tensor("token_embd.weight").shape[0]
    check_equal(gf, f"{gf.architecture}.vocab_size", gf.get(f"{gf.architecture}.vocab_size", int), n_vocab,
                "the rows of token_embd.weight")
    return n_vocab


def rotary_dims(gf: GGUFFile, head_dim: int, required: bool = False) -> int:
    """`<arch>.rope.dimension_count`: an even number of dimensions of each head that rotate (by
    default all of them; `required` where no default would be right, as with partial rotary)."""
    key = f"{gf.architecture}.rope.dimension_count"
    n_rot = gf.require(key, int) if required else gf.get(key, int, head_dim)
    if not (0 < n_rot <= head_dim and n_rot % 2 == 0):
        raise GGUFError(f"{gf.path}: metadata '{key}' = {n_rot}: expected an even number in 2..{head_dim} "
                        f"(the head size)")
    return n_rot


def rope_freq_scale(gf: GGUFFile) -> float:
    """1 / factor for linear rope scaling, 1 for none; any other scaling type is refused."""
    a = gf.architecture
    scaling = gf.get(f"{a}.rope.scaling.type", str, "none")
    factor = gf.get(f"{a}.rope.scaling.factor", float, 1.0)
    if scaling not in ("none", "linear"):
        raise GGUFError(f"{gf.path}: metadata '{a}.rope.scaling.type' = {scaling!r}: only 'none' and 'linear' "
                        f"rope scaling are implemented")
    if scaling == "linear":
        if not 0 < factor < float("inf"):
            raise GGUFError(f"{gf.path}: metadata '{a}.rope.scaling.factor' = {factor}: expected a positive number")
        return 1.0 / factor
    return 1.0


def check_no_experts(gf: GGUFFile) -> None:
    a = gf.architecture
    for key in (f"{a}.expert_count", f"{a}.expert_used_count"):
        check_equal(gf, key, gf.get(key, int, None), 0, "mixture-of-experts layers are not implemented")


def check_all_tensors_used(gf: GGUFFile, used: set[str]) -> None:
    """Every tensor of the file must be read by the graph: one it ignores would make it another model."""
    unused = sorted(set(gf.tensors) - used)
    if unused:
        hint = next((h for suffix, h in _UNUSED_TENSOR_HINTS.items() if unused[0].endswith(suffix)), None)
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise GGUFError(f"{gf.path}: tensor {unused[0]!r}{more} is not used by the {gf.architecture!r} graph"
                        f"{': ' + hint if hint else ''}; refusing to run a different model than the file describes")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
