"""`gpt2` architecture: GPT-2 (small, medium, large, XL) and models converted as it.

Pre-norm blocks with LayerNorm (mean-subtracted, with a bias): LayerNorm -> attention from one
fused QKV projection with a bias, no rotary embedding -> output projection with a bias ->
residual, LayerNorm -> up projection with a bias -> GELU (tanh) -> down projection with a bias ->
residual. Positions come from a learned table (`position_embd.weight`, one row per position of
the training context) added to the token embedding. The output head is `output.weight`, or the
token embedding when the file has none (GPT-2 ties them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import (COMMON_KEYS, attention_heads, block_count, check_all_tensors_used, check_metadata, check_no_experts,
                   check_tensors, output_weight, positive, positive_float, vocab_rows, weight_shapes)

KNOWN_KEYS = COMMON_KEYS | {"attention.layer_norm_epsilon"}


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
    norm_eps: float

    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        a = gf.architecture
        check_metadata(gf, KNOWN_KEYS)
        check_no_experts(gf)
        d_model = positive(gf, f"{a}.embedding_length", gf.require(f"{a}.embedding_length", int))
        n_head, n_kv_head, head_dim = attention_heads(gf, d_model, "d_model")  # the query is d_model wide (llama.cpp's gpt2 graph)
        n_vocab = vocab_rows(gf)
        return cls(
            n_vocab=n_vocab,
            n_ctx_train=positive(gf, f"{a}.context_length", gf.require(f"{a}.context_length", int)),
            d_model=d_model,
            n_layer=block_count(gf),
            d_ff=positive(gf, f"{a}.feed_forward_length", gf.require(f"{a}.feed_forward_length", int)),
            n_head=n_head,
            n_kv_head=n_kv_head,
            head_dim=head_dim,
            norm_eps=positive_float(gf, f"{a}.attention.layer_norm_epsilon",
                                    gf.require(f"{a}.attention.layer_norm_epsilon", float)),
        )

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        d, f = self.d_model, self.d_ff
        qkv = d + 2 * self.n_kv_head * self.head_dim
        shapes = {"token_embd.weight": (self.n_vocab, d), "position_embd.weight": (self.n_ctx_train, d),
                  "output_norm.weight": (d,), "output_norm.bias": (d,)}
        for i in range(self.n_layer):
            b = f"blk.{i}"
            shapes.update({
                f"{b}.attn_norm.weight": (d,), f"{b}.attn_norm.bias": (d,),
                f"{b}.attn_qkv.weight": (qkv, d), f"{b}.attn_qkv.bias": (qkv,),
                f"{b}.attn_output.weight": (d, d), f"{b}.attn_output.bias": (d,),
                f"{b}.ffn_norm.weight": (d,), f"{b}.ffn_norm.bias": (d,),
                f"{b}.ffn_up.weight": (f, d), f"{b}.ffn_up.bias": (f,),
                f"{b}.ffn_down.weight": (d, f), f"{b}.ffn_down.bias": (d,),
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
    kv_width = cfg.n_kv_head * hd

    def linear(x: str, name: str) -> str:  # every projection of GPT-2 has a bias
        return g.bias(g.linear(x, [f"{name}.weight"]), [f"{name}.bias"])

    x = g.pos_embed(g.embed("token_embd.weight"), "position_embd.weight")
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        h = g.layer_norm(x, f"{b}.attn_norm.weight", f"{b}.attn_norm.bias", eps)
        q, k, v = g.split(linear(h, f"{b}.attn_qkv"), [cfg.d_model, kv_width, kv_width])
        a = g.attention(q, k, v, layer=i, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, head_dim=hd,
                        scale=1.0 / math.sqrt(hd))
        x = g.add(x, linear(a, f"{b}.attn_output"))
        h = g.layer_norm(x, f"{b}.ffn_norm.weight", f"{b}.ffn_norm.bias", eps)
        x = g.add(x, linear(g.gelu(linear(h, f"{b}.ffn_up")), f"{b}.ffn_down"))
    if not all_logits:
        x = g.last_row(x)
    x = g.layer_norm(x, "output_norm.weight", "output_norm.bias", eps)
    g.set_output(g.linear(x, [head], name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
