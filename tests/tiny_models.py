"""Tiny random-weight GGUF models (llama, qwen2/3, granite, olmo2, gemma, gemma2, gemma3, gpt2, stablelm,
phi2, phi3) written with GGUFWriter.

Deterministic for a given seed, so a file written twice is byte-identical. The vocabularies are
small but real: a byte-level BPE (gpt2-style) for llama, qwen2/3, granite, olmo2, gpt2, stablelm, phi2, phi3,
a SentencePiece-style one with byte fallback for gemma, gemma2 and gemma3, so the whole LLM API runs
on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

LAYER_NORM_ARCHS = ("gpt2", "stablelm", "phi2")  # LayerNorms with biases
FUSED_QKV_ARCHS = ("gpt2", "phi2")  # GPT-2's tensor layout (_add_gpt2_blocks)
BLOCK = {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "IQ4_NL": 32,
         "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "Q2_K": 256, "Q3_K": 256, "IQ4_XS": 256}


def _bytes_to_unicode() -> list[str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def gpt2_vocab():
    """tokens, token_types, merges: 256 byte tokens, a few merges, <|endoftext|> (id 0) and <|im_end|>."""
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "o n", "Ġ s"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _bytes_to_unicode()
    tokens += ["".join(m.split(" ")) for m in merges]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    return tokens, types, merges


def spm_vocab():
    """tokens, scores, token_types: <pad> <eos> <bos> <unk>, 256 byte tokens, some pieces with scores."""
    pieces = ["▁", "▁the", "▁a", "e", "t", "a", "o", "n", "▁t", "he", "in", "er", "s", "▁s", "i", "r", "h",
              "<start_of_turn>", "<end_of_turn>"]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [3, 3, 3, 2] + [6] * 256 + [1] * (len(pieces) - 2) + [3, 3]
    scores = [0.0] * 260 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


# k-quants and i-quants gguf-py cannot quantize: (block bytes, byte offsets of the f16 (super-)block
# scales, the largest |sub-block scale x quant| a block holds, which the f16 scale multiplies)
RANDOM_BLOCKS = {"Q2_K": (84, (80, 82), 15 * 3), "Q3_K": (110, (108,), 32 * 4), "Q4_K": (144, (0, 2), 63 * 15),
                 "Q5_K": (176, (0, 2), 63 * 31), "Q6_K": (210, (208,), 128 * 32), "IQ4_NL": (18, (0,), 127),
                 "IQ4_XS": (136, (0,), 32 * 127)}


def _random_blocks(rng, rows: int, cols: int, qtype: str, scale: float) -> np.ndarray:
    """Random blocks (any quants and sub-block scales are valid) whose f16 block scales keep the
    weights within a few times `scale` whatever the type: (rows, row bytes) uint8, as quantize gives."""
    size, fields, reach = RANDOM_BLOCKS[qtype]
    raw = rng.integers(0, 256, (rows * cols // BLOCK[qtype], size), dtype=np.uint8)
    d = np.full(len(raw), 2 * scale / reach, np.float16).view(np.uint8).reshape(-1, 2)
    for offset in fields:
        raw[:, offset:offset + 2] = d
    return raw.reshape(rows, -1)


def _add_weight(w: GGUFWriter, rng, name: str, rows: int, cols: int, qtype: str, scale: float = 0.2) -> None:
    data = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    if qtype in RANDOM_BLOCKS:
        t = GGMLQuantizationType[qtype]
        w.add_tensor(name, _random_blocks(rng, rows, cols, qtype, scale), raw_dtype=t)
    elif qtype == "F32":
        w.add_tensor(name, data)
    elif qtype == "F16":
        w.add_tensor(name, data.astype(np.float16))
    else:
        t = GGMLQuantizationType[qtype]
        w.add_tensor(name, quantize(data, t), raw_dtype=t)


def _add_norm(w: GGUFWriter, rng, name: str, n: int) -> None:
    w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))


def _add_bias(w: GGUFWriter, rng, name: str, n: int) -> None:
    w.add_tensor(name, (0.5 * rng.standard_normal(n)).astype(np.float32))


def _add_gpt2_blocks(w: GGUFWriter, rng, n_layer: int, d: int, qkv: list, f: int, n_positions: int,
                     types: dict) -> None:
    """GPT-2's blocks: LayerNorms with biases, the (name, rows) projections of qkv (one fused or
    three), every projection biased; n_positions > 0:
    a learned position table and an ffn_norm (GPT-2), else neither (phi2's parallel block)."""
    if n_positions:
        _add_weight(w, rng, "position_embd.weight", n_positions, d, "F32", 0.5)
    for i in range(n_layer):
        b = f"blk.{i}"
        for name, rows, cols in ([(n, rows, d) for n, rows in qkv] + [("attn_output", d, d), ("ffn_up", f, d),
                                                                      ("ffn_down", d, f)]):
            _add_weight(w, rng, f"{b}.{name}.weight", rows, cols, types[name])
            _add_bias(w, rng, f"{b}.{name}.bias", rows)
        for name in ("attn_norm", "ffn_norm") if n_positions else ("attn_norm",):
            _add_norm(w, rng, f"{b}.{name}.weight", d)
            _add_bias(w, rng, f"{b}.{name}.bias", d)


def write_tiny_model(path: str | Path, arch: str = "llama", qtype: str = "F32", *, seed: int = 0,
                     n_layer: int = 2, d_model: int = 64, n_head: int = 4, n_kv_head: int = 2, head_dim: int = 16,
                     d_ff: int = 96, n_ctx: int = 256, sliding_window: int = 8, tied_output: bool = True,
                     n_rot: int | None = None, fused_qkv: bool = True,
                     layer_types: dict[str, str] | None = None, extra_metadata: dict | None = None,
                     extra_tensors: dict[str, np.ndarray] | None = None, n_vocab: int | None = None,
                     vocab: tuple[list[str], list[int], list[str]] | None = None, pre: str | None = None) -> Path:
    """Write a random-weight model; d_model/d_ff/head_dim*n_head must be multiples of the type's block.
    layer_types: another type for some weights of every layer, e.g. {"attn_v": "Q8_0"}.
    n_rot: rotated dimensions per head (partial rotary), default head_dim.
    fused_qkv: gpt2 / phi2 layout with one attn_qkv (else attn_q, attn_k, attn_v, each with a bias).
    extra_metadata: more keys (str, float, bool or int values; ints written as uint32).
    extra_tensors: more float32 tensors, by name.
    n_vocab: pad a gpt2-style vocabulary to this many tokens (ones no merge produces), for a model
    with a real one's embedding and output-head shapes.
    vocab: (tokens, token types, merges) in place of gpt2_vocab(); pre: its tokenizer.ggml.pre
    (default: "qwen2" for qwen archs, else "default"), and then no add_bos_token key, so that
    whether a BOS is added is that pre-tokenizer's default."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}-{qtype}")
    w.add_uint32(f"{arch}.context_length", n_ctx)
    w.add_uint32(f"{arch}.embedding_length", d_model)
    w.add_uint32(f"{arch}.block_count", n_layer)
    w.add_uint32(f"{arch}.feed_forward_length", d_ff)
    w.add_uint32(f"{arch}.attention.head_count", n_head)
    w.add_uint32(f"{arch}.attention.head_count_kv", n_kv_head)
    w.add_uint32(f"{arch}.attention.key_length", head_dim)
    w.add_uint32(f"{arch}.attention.value_length", head_dim)
    if arch in LAYER_NORM_ARCHS:
        w.add_float32(f"{arch}.attention.layer_norm_epsilon", 1e-5)
    else:
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    if arch in ("llama", "qwen2", "qwen3", "granite", "olmo2", "gpt2", "stablelm", "phi2", "phi3"):
        if arch != "gpt2":  # gpt2: learned positions, no rope
            w.add_float32(f"{arch}.rope.freq_base", 10000.0)
            w.add_uint32(f"{arch}.rope.dimension_count", n_rot or head_dim)
        tokens, types, merges = vocab or gpt2_vocab()
        if arch == "phi3":  # llama.cpp sets attributes of Phi-3's special tokens (by the model's name): they must exist
            tokens, types = tokens + ["<unk>", "<s>", "</s>", "<|end|>"], types + [3, 3, 3, 3]
        if n_vocab is not None and n_vocab > len(tokens):
            types = types + [1] * (n_vocab - len(tokens))
            tokens = tokens + [f"<unused{i}>" for i in range(n_vocab - len(tokens))]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre or ("qwen2" if arch.startswith("qwen") else "default"))
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
        if pre is None:
            w.add_add_bos_token(False)
        if arch == "granite":  # multipliers unlike 1 (and 1/sqrt(head_dim)), so each one matters
            w.add_float32(f"{arch}.logit_scale", 4.0)
            w.add_float32(f"{arch}.residual_scale", 0.5)
            w.add_float32(f"{arch}.embedding_scale", 3.0)
            w.add_float32(f"{arch}.attention.scale", 0.2)
        w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    elif arch in ("gemma", "gemma2", "gemma3"):
        w.add_float32(f"{arch}.rope.freq_base", 1000000.0 if arch == "gemma3" else 10000.0)
        if arch in ("gemma2", "gemma3"):
            w.add_uint32(f"{arch}.attention.sliding_window", sliding_window)
        if arch == "gemma2":  # caps near the scores' and logits' size (not Gemma 2's 50 / 30), so both matter
            w.add_float32(f"{arch}.attn_logit_softcapping", 2.0)
            w.add_float32(f"{arch}.final_logit_softcapping", 5.0)
        tokens, scores, types = spm_vocab()
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(False)
    else:
        raise ValueError(arch)
    for key, value in (extra_metadata or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    n_vocab = len(tokens)
    q, kv = n_head * head_dim, n_kv_head * head_dim
    embd_type = "F32" if d_model % BLOCK[qtype] else qtype
    _add_weight(w, rng, "token_embd.weight", n_vocab, d_model, embd_type, 1.0)
    _add_norm(w, rng, "output_norm.weight", d_model)
    if arch in LAYER_NORM_ARCHS:
        _add_bias(w, rng, "output_norm.bias", d_model)
    if not tied_output:
        _add_weight(w, rng, "output.weight", n_vocab, d_model, qtype)
        if arch == "phi2":
            _add_bias(w, rng, "output.bias", n_vocab)
    types = {name: qtype for name in ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up",
                                      "ffn_down")}
    types.update(layer_types or {})
    if arch in FUSED_QKV_ARCHS:
        qkv = [("attn_qkv", q + 2 * kv)] if fused_qkv else [("attn_q", q), ("attn_k", kv), ("attn_v", kv)]
        _add_gpt2_blocks(w, rng, n_layer, d_model, qkv, d_ff, n_ctx if arch == "gpt2" else 0, types)
    for i in range(n_layer if arch == "phi3" else 0):  # fused q | k | v and gate | up, no biases
        b = f"blk.{i}"
        _add_norm(w, rng, f"{b}.attn_norm.weight", d_model)
        _add_weight(w, rng, f"{b}.attn_qkv.weight", q + 2 * kv, d_model, types["attn_qkv"])
        _add_weight(w, rng, f"{b}.attn_output.weight", d_model, q, types["attn_output"])
        _add_norm(w, rng, f"{b}.ffn_norm.weight", d_model)
        _add_weight(w, rng, f"{b}.ffn_up.weight", 2 * d_ff, d_model, types["ffn_up"])
        _add_weight(w, rng, f"{b}.ffn_down.weight", d_model, d_ff, types["ffn_down"])
    for i in range(n_layer if arch not in FUSED_QKV_ARCHS + ("phi3",) else 0):
        b = f"blk.{i}"
        if arch != "olmo2":  # olmo2 normalises block outputs instead (the post-norms below)
            _add_norm(w, rng, f"{b}.attn_norm.weight", d_model)
        _add_weight(w, rng, f"{b}.attn_q.weight", q, d_model, types["attn_q"])
        _add_weight(w, rng, f"{b}.attn_k.weight", kv, d_model, types["attn_k"])
        _add_weight(w, rng, f"{b}.attn_v.weight", kv, d_model, types["attn_v"])
        _add_weight(w, rng, f"{b}.attn_output.weight", d_model, q, types["attn_output"])
        if arch != "olmo2":
            _add_norm(w, rng, f"{b}.ffn_norm.weight", d_model)
        _add_weight(w, rng, f"{b}.ffn_gate.weight", d_ff, d_model, types["ffn_gate"])
        _add_weight(w, rng, f"{b}.ffn_up.weight", d_ff, d_model, types["ffn_up"])
        _add_weight(w, rng, f"{b}.ffn_down.weight", d_model, d_ff, types["ffn_down"])
        if arch in ("gemma3", "qwen3"):
            _add_norm(w, rng, f"{b}.attn_q_norm.weight", head_dim)
            _add_norm(w, rng, f"{b}.attn_k_norm.weight", head_dim)
        if arch in LAYER_NORM_ARCHS:  # stablelm: the norms' biases
            _add_bias(w, rng, f"{b}.attn_norm.bias", d_model)
            _add_bias(w, rng, f"{b}.ffn_norm.bias", d_model)
        if arch in ("qwen2", "stablelm"):  # biases of q, k and v
            for name, width in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
                w.add_tensor(f"{b}.{name}.bias", (0.5 * rng.standard_normal(width)).astype(np.float32))
        if arch == "olmo2":  # q/k norms over the whole projection
            _add_norm(w, rng, f"{b}.attn_q_norm.weight", q)
            _add_norm(w, rng, f"{b}.attn_k_norm.weight", kv)
        if arch in ("gemma2", "gemma3", "olmo2"):
            _add_norm(w, rng, f"{b}.post_attention_norm.weight", d_model)
            _add_norm(w, rng, f"{b}.post_ffw_norm.weight", d_model)
    for name, data in (extra_tensors or {}).items():
        w.add_tensor(name, np.asarray(data, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
