"""`stablelm` architecture: StableLM (3B 4E1T, Zephyr), Stable LM 2 (1.6B), and the Config that
phi2 shares.

llama's block with LayerNorms (mean-subtracted, with a bias) instead of RMSNorms, a NeoX rotary
embedding over the first `rope.dimension_count` dimensions of each head only (partial rotary; the
rest pass through), and optional q, k, v biases (Stable LM 2 1.6B: all three or none). The
output head is always `output.weight`. Stable LM 2 12B's per-head q/k norms and parallel residual
(no ffn_norm) are not implemented: such a file is refused (unused q/k norm tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import (COMMON_KEYS, attention_heads, block_count, check_all_tensors_used, check_metadata, check_no_experts,
                   check_tensors, positive, positive_float, rope_freq_scale, rotary_dims, vocab_rows, weight_shapes)

KNOWN_KEYS = COMMON_KEYS | {"rope.dimension_count", "attention.layer_norm_epsilon"}


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
    n_rot: int
    rope_base: float
    rope_freq_scale: float
    norm_eps: float

    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        a = gf.architecture
        check_metadata(gf, KNOWN_KEYS)
        check_no_experts(gf)
        d_model = positive(gf, f"{a}.embedding_length", gf.require(f"{a}.embedding_length", int))
        n_head, n_kv_head, head_dim = attention_heads(gf, d_model, "d_model")  # the query is d_model wide (llama.cpp's graphs of both families)
        n_vocab = vocab_rows(gf)
        n_rot = rotary_dims(gf, head_dim, required=True)  # partial rotary: no default would be right
        return cls(
            n_vocab=n_vocab,
            n_ctx_train=positive(gf, f"{a}.context_length", gf.require(f"{a}.context_length", int)),
            d_model=d_model,
            n_layer=block_count(gf),
            d_ff=positive(gf, f"{a}.feed_forward_length", gf.require(f"{a}.feed_forward_length", int)),
            n_head=n_head,
            n_kv_head=n_kv_head,
            head_dim=head_dim,
            n_rot=n_rot,
            rope_base=positive_float(gf, f"{a}.rope.freq_base", gf.get(f"{a}.rope.freq_base", float, 10000.0)),
            rope_freq_scale=rope_freq_scale(gf),
            norm_eps=positive_float(gf, f"{a}.attention.layer_norm_epsilon",
                                    gf.require(f"{a}.attention.layer_norm_epsilon", float)),
        )

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        d, kv, f = self.d_model, self.n_kv_head * self.head_dim, self.d_ff
        shapes = {"token_embd.weight": (self.n_vocab, d), "output_norm.weight": (d,), "output_norm.bias": (d,),
                  "output.weight": (self.n_vocab, d)}
        for i in range(self.n_layer):
            b = f"blk.{i}"
            shapes.update({
                f"{b}.attn_norm.weight": (d,), f"{b}.attn_norm.bias": (d,),
                f"{b}.attn_q.weight": (d, d), f"{b}.attn_k.weight": (kv, d), f"{b}.attn_v.weight": (kv, d),
                f"{b}.attn_output.weight": (d, d), f"{b}.ffn_norm.weight": (d,), f"{b}.ffn_norm.bias": (d,),
                f"{b}.ffn_gate.weight": (f, d), f"{b}.ffn_up.weight": (f, d), f"{b}.ffn_down.weight": (d, f),
            })
        return shapes


def build_graph(gf: GGUFFile, all_logits: bool) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only."""
    cfg = Config.from_gguf(gf)
    check_tensors(gf, cfg.expected_tensors())
    g = Graph(weight_shapes(gf))
    hd, eps = cfg.head_dim, cfg.norm_eps
    kv_width = cfg.n_kv_head * hd
    rope = dict(head_dim=hd, n_rot=cfg.n_rot, base=cfg.rope_base, neox=True, freq_scale=cfg.rope_freq_scale)

    x = g.embed("token_embd.weight")
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        h = g.layer_norm(x, f"{b}.attn_norm.weight", f"{b}.attn_norm.bias", eps)
        qkv = g.linear(h, [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"])
        biases = [f"{b}.attn_q.bias", f"{b}.attn_k.bias", f"{b}.attn_v.bias"]
        if all(name in gf.tensors for name in biases):  # Stable LM 2 1.6B; a partial set stays unused: refused
            check_tensors(gf, {f"{b}.attn_q.bias": (cfg.d_model,), f"{b}.attn_k.bias": (kv_width,),
                               f"{b}.attn_v.bias": (kv_width,)})
            qkv = g.bias(qkv, biases)
        q, k, v = g.split(qkv, [cfg.d_model, kv_width, kv_width])
        a = g.attention(g.rope(q, **rope), g.rope(k, **rope), v, layer=i, n_head=cfg.n_head,
                        n_kv_head=cfg.n_kv_head, head_dim=hd, scale=1.0 / math.sqrt(hd))
        x = g.add(x, g.linear(a, [f"{b}.attn_output.weight"]))
        h = g.layer_norm(x, f"{b}.ffn_norm.weight", f"{b}.ffn_norm.bias", eps)
        f = g.glu(g.linear(h, [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"]), "silu")
        x = g.add(x, g.linear(f, [f"{b}.ffn_down.weight"]))
    if not all_logits:
        x = g.last_row(x)
    x = g.layer_norm(x, "output_norm.weight", "output_norm.bias", eps)
    g.set_output(g.linear(x, ["output.weight"], name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
