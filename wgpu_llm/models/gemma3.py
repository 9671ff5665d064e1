"""`gemma3` architecture (text): Gemma 3 270M / 1B / 4B ... language model.

Differences from llama: the embedding is scaled by sqrt(d_model); q and k get a per-head RMSNorm;
GELU-tanh gated FFN; the attention and FFN outputs get their own RMSNorm before the residual add;
five of every six layers attend only to a sliding window and use the local rope base, the sixth
is global with the long-context rope base (and rope scaling, when the file has it). GGUF stores
Gemma's norm weights with the +1 already folded in, so every norm is a plain RMSNorm here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import (COMMON_KEYS, attention_heads, block_count, check_all_tensors_used, check_metadata, check_no_experts,
                   check_tensors, output_weight, positive, positive_float, rope_freq_scale, vocab_rows, weight_shapes)

SLIDING_WINDOW_PATTERN = 6  # layer i is global when (i + 1) % 6 == 0 (as llama.cpp and HF's config)
LOCAL_ROPE_BASE = 10000.0  # HF rope_local_base_freq; GGUF files usually do not carry it
KNOWN_KEYS = COMMON_KEYS | {"rope.freq_base_swa", "attention.sliding_window"}


@dataclass(frozen=True)
class Config:
    n_vocab: int
    n_ctx_train: int
    d_model: int
    n_layer: int
    d_ff: int
    n_head: int
    n_kv_head: int
    head_dim: int
    rope_base: float
    rope_base_local: float
    rope_freq_scale: float
    sliding_window: int
    norm_eps: float

    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        a = gf.architecture
        check_metadata(gf, KNOWN_KEYS)
        check_no_experts(gf)
        d_model = positive(gf, f"{a}.embedding_length", gf.require(f"{a}.embedding_length", int))
        n_head, n_kv_head, head_dim = attention_heads(gf, d_model, "required key_length")
        return cls(
            n_vocab=vocab_rows(gf),
            n_ctx_train=positive(gf, f"{a}.context_length", gf.require(f"{a}.context_length", int)),
            d_model=d_model,
            n_layer=block_count(gf),
            d_ff=positive(gf, f"{a}.feed_forward_length", gf.require(f"{a}.feed_forward_length", int)),
            n_head=n_head,
            n_kv_head=n_kv_head,
            head_dim=head_dim,
            rope_base=positive_float(gf, f"{a}.rope.freq_base", gf.get(f"{a}.rope.freq_base", float, 1000000.0)),
            rope_base_local=positive_float(gf, f"{a}.rope.freq_base_swa",
                                           gf.get(f"{a}.rope.freq_base_swa", float, LOCAL_ROPE_BASE)),
            rope_freq_scale=rope_freq_scale(gf),
            sliding_window=positive(gf, f"{a}.attention.sliding_window",
                                    gf.require(f"{a}.attention.sliding_window", int)),
            norm_eps=positive_float(gf, f"{a}.attention.layer_norm_rms_epsilon",
                                    gf.require(f"{a}.attention.layer_norm_rms_epsilon", float)),
        )

    def is_sliding(self, layer: int) -> bool:
        return (layer + 1) % SLIDING_WINDOW_PATTERN != 0

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        d, hd, f = self.d_model, self.head_dim, self.d_ff
        q, kv = self.n_head * hd, self.n_kv_head * hd
        shapes = {"token_embd.weight": (self.n_vocab, d), "output_norm.weight": (d,)}
        for i in range(self.n_layer):
            b = f"blk.{i}"
            shapes.update({
                f"{b}.attn_norm.weight": (d,), f"{b}.attn_q.weight": (q, d), f"{b}.attn_k.weight": (kv, d),
                f"{b}.attn_v.weight": (kv, d), f"{b}.attn_q_norm.weight": (hd,), f"{b}.attn_k_norm.weight": (hd,),
                f"{b}.attn_output.weight": (d, q), f"{b}.post_attention_norm.weight": (d,),
                f"{b}.ffn_norm.weight": (d,), f"{b}.ffn_gate.weight": (f, d), f"{b}.ffn_up.weight": (f, d),
                f"{b}.ffn_down.weight": (d, f), f"{b}.post_ffw_norm.weight": (d,),
            })
        return shapes


def build_graph(gf: GGUFFile, all_logits: bool) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only."""
    cfg = Config.from_gguf(gf)
    check_tensors(gf, cfg.expected_tensors())
    head = output_weight(gf)
    check_tensors(gf, {head: (cfg.n_vocab, cfg.d_model)})
    g = Graph(weight_shapes(gf))
    hd, eps = cfg.head_dim, cfg.norm_eps
    q_width, kv_width = cfg.n_head * hd, cfg.n_kv_head * hd

    x = g.embed("token_embd.weight", scale=math.sqrt(cfg.d_model))
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        sliding = cfg.is_sliding(i)
        rope = dict(head_dim=hd, n_rot=hd, neox=True,
                    base=cfg.rope_base_local if sliding else cfg.rope_base,
                    freq_scale=1.0 if sliding else cfg.rope_freq_scale)
        h = g.rms_norm(x, f"{b}.attn_norm.weight", eps)
        q, k, v = g.split(g.linear(h, [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"]),
                          [q_width, kv_width, kv_width])
        q = g.rope(g.rms_norm(q, f"{b}.attn_q_norm.weight", eps), **rope)
        k = g.rope(g.rms_norm(k, f"{b}.attn_k_norm.weight", eps), **rope)
        a = g.attention(q, k, v, layer=i, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, head_dim=hd,
                        scale=1.0 / math.sqrt(hd), window=cfg.sliding_window if sliding else 0)
        a = g.rms_norm(g.linear(a, [f"{b}.attn_output.weight"]), f"{b}.post_attention_norm.weight", eps)
        x = g.add(x, a)
        h = g.rms_norm(x, f"{b}.ffn_norm.weight", eps)
        f = g.glu(g.linear(h, [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"]), "gelu_tanh")
        f = g.rms_norm(g.linear(f, [f"{b}.ffn_down.weight"]), f"{b}.post_ffw_norm.weight", eps)
        x = g.add(x, f)
    if not all_logits:
        x = g.last_row(x)
    x = g.rms_norm(x, "output_norm.weight", eps)
    g.set_output(g.linear(x, [head], name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
