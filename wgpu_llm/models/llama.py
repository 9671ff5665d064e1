"""`llama` architecture: Llama 2, 3, 3.1+ (rope_freqs), SmolLM2, TinyLlama, Mistral-style models.

Pre-norm blocks: RMSNorm -> attention (rotary, grouped-query) -> residual, RMSNorm -> SiLU-gated
FFN -> residual. GGUF stores Q/K already permuted for llama.cpp's "normal" (adjacent-pair) rope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import (COMMON_KEYS, attention_heads, block_count, check_all_tensors_used, check_metadata, check_no_experts,
                   check_tensors, output_weight, positive, positive_float, rope_freq_scale, rotary_dims, vocab_rows,
                   weight_shapes)

KNOWN_KEYS = COMMON_KEYS | {"rope.dimension_count"}


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
    def from_gguf(cls, gf: GGUFFile, known_keys: frozenset[str] = KNOWN_KEYS) -> "Config":
        """known_keys: the `<arch>.*` metadata the family understands (a family built on llama's
        hyper-parameters passes its own)."""
        a = gf.architecture
        check_metadata(gf, known_keys)
        check_no_experts(gf)
        d_model = positive(gf, f"{a}.embedding_length", gf.require(f"{a}.embedding_length", int))
        n_head, n_kv_head, head_dim = attention_heads(gf, d_model, "key_length")
        n_vocab = vocab_rows(gf)
        n_rot = rotary_dims(gf, head_dim)
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
            norm_eps=positive_float(gf, f"{a}.attention.layer_norm_rms_epsilon",
                                    gf.require(f"{a}.attention.layer_norm_rms_epsilon", float)),
        )

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        d, q, kv, f = self.d_model, self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.d_ff
        shapes = {"token_embd.weight": (self.n_vocab, d), "output_norm.weight": (d,)}
        for i in range(self.n_layer):
            b = f"blk.{i}"
            shapes.update({
                f"{b}.attn_norm.weight": (d,), f"{b}.attn_q.weight": (q, d), f"{b}.attn_k.weight": (kv, d),
                f"{b}.attn_v.weight": (kv, d), f"{b}.attn_output.weight": (d, q), f"{b}.ffn_norm.weight": (d,),
                f"{b}.ffn_gate.weight": (f, d), f"{b}.ffn_up.weight": (f, d), f"{b}.ffn_down.weight": (d, f),
            })
        return shapes


def build_graph(gf: GGUFFile, all_logits: bool) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only."""
    cfg = Config.from_gguf(gf)
    check_tensors(gf, cfg.expected_tensors())
    head = output_weight(gf)
    check_tensors(gf, {head: (cfg.n_vocab, cfg.d_model)})
    g = Graph(weight_shapes(gf))
    q_width, kv_width = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    # Llama 3.1+: per-pair frequency divisors (llama3 rope scaling, precomputed by the converter)
    factors = "rope_freqs.weight" if "rope_freqs.weight" in gf.tensors else None
    if factors is not None:
        check_tensors(gf, {factors: (cfg.n_rot // 2,)})
    rope = dict(head_dim=cfg.head_dim, n_rot=cfg.n_rot, base=cfg.rope_base, neox=False,
                freq_scale=cfg.rope_freq_scale, freq_factors=factors)

    x = g.embed("token_embd.weight")
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        h = g.rms_norm(x, f"{b}.attn_norm.weight", cfg.norm_eps)
        qkv = g.linear(h, [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"])
        q, k, v = g.split(qkv, [q_width, kv_width, kv_width])
        q, k = g.rope(q, **rope), g.rope(k, **rope)
        a = g.attention(q, k, v, layer=i, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, head_dim=cfg.head_dim,
                        scale=1.0 / math.sqrt(cfg.head_dim))
        x = g.add(x, g.linear(a, [f"{b}.attn_output.weight"]))
        h = g.rms_norm(x, f"{b}.ffn_norm.weight", cfg.norm_eps)
        f = g.glu(g.linear(h, [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"]), "silu")
        x = g.add(x, g.linear(f, [f"{b}.ffn_down.weight"]))
    if not all_logits:
        x = g.last_row(x)
    x = g.rms_norm(x, "output_norm.weight", cfg.norm_eps)
    g.set_output(g.linear(x, [head], name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
