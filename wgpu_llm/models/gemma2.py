"""`gemma2` architecture: Gemma 2 (2B, 9B, 27B).

Gemma's block (sqrt(d_model)-scaled embedding, GELU-tanh gated FFN, NeoX rope, the tied output
head) with Gemma 2's additions: the attention and FFN outputs get their own RMSNorm before the
residual add (as Gemma 3, but without q/k norms); attention scores are soft-capped,
cap * tanh(s / cap), before the mask and softmax, and so are the final logits; even layers
(0, 2, ...) attend only to a sliding window, odd layers to the whole context (llama.cpp's swa
pattern 2). GGUF stores Gemma's norm weights with the +1 already folded in.

The query scale: Gemma 2 scales queries by query_pre_attn_scalar^-0.5, which GGUF does not carry;
llama.cpp (and so this graph) takes d_model / n_head for the 46-layer 27B model, where it differs
from the head size, and the head size (`attention.key_length`) for every other model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import (COMMON_KEYS, attention_heads, block_count, check_all_tensors_used, check_metadata, check_no_experts,
                   check_tensors, positive, positive_float, rope_freq_scale, vocab_rows, weight_shapes)

KNOWN_KEYS = COMMON_KEYS | {"attention.sliding_window", "attn_logit_softcapping", "final_logit_softcapping"}
# llama.cpp's values when a file does not carry them (Gemma 2's own)
DEFAULT_SLIDING_WINDOW = 4096
DEFAULT_ATTN_SOFTCAP = 50.0
DEFAULT_FINAL_SOFTCAP = 30.0
LAYERS_27B = 46  # the one model whose query scale is d_model / n_head (llama.cpp picks it by depth)


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
    rope_freq_scale: float
    sliding_window: int
    attn_softcap: float
    final_softcap: float
    norm_eps: float

    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        a = gf.architecture
        check_metadata(gf, KNOWN_KEYS)
        check_no_experts(gf)
        d_model = positive(gf, f"{a}.embedding_length", gf.require(f"{a}.embedding_length", int))
        n_head, n_kv_head, head_dim = attention_heads(gf, d_model, "key_length")
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
            rope_base=positive_float(gf, f"{a}.rope.freq_base", gf.get(f"{a}.rope.freq_base", float, 10000.0)),
            rope_freq_scale=rope_freq_scale(gf),
            sliding_window=positive(gf, f"{a}.attention.sliding_window",
                                    gf.get(f"{a}.attention.sliding_window", int, DEFAULT_SLIDING_WINDOW)),
            attn_softcap=positive_float(gf, f"{a}.attn_logit_softcapping",
                                        gf.get(f"{a}.attn_logit_softcapping", float, DEFAULT_ATTN_SOFTCAP)),
            final_softcap=positive_float(gf, f"{a}.final_logit_softcapping",
                                         gf.get(f"{a}.final_logit_softcapping", float, DEFAULT_FINAL_SOFTCAP)),
            norm_eps=positive_float(gf, f"{a}.attention.layer_norm_rms_epsilon",
                                    gf.require(f"{a}.attention.layer_norm_rms_epsilon", float)),
        )

    def is_sliding(self, layer: int) -> bool:
        return layer % 2 == 0

    @property
    def query_scale(self) -> float:
        return 1.0 / math.sqrt(self.d_model / self.n_head if self.n_layer == LAYERS_27B else self.head_dim)

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        d, hd, f = self.d_model, self.head_dim, self.d_ff
        q, kv = self.n_head * hd, self.n_kv_head * hd
        shapes = {"token_embd.weight": (self.n_vocab, d), "output_norm.weight": (d,)}
        for i in range(self.n_layer):
            b = f"blk.{i}"
            shapes.update({
                f"{b}.attn_norm.weight": (d,), f"{b}.attn_q.weight": (q, d), f"{b}.attn_k.weight": (kv, d),
                f"{b}.attn_v.weight": (kv, d), f"{b}.attn_output.weight": (d, q),
                f"{b}.post_attention_norm.weight": (d,), f"{b}.ffn_norm.weight": (d,),
                f"{b}.ffn_gate.weight": (f, d), f"{b}.ffn_up.weight": (f, d), f"{b}.ffn_down.weight": (d, f),
                f"{b}.post_ffw_norm.weight": (d,),
            })
        return shapes


def build_graph(gf: GGUFFile, all_logits: bool) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only."""
    cfg = Config.from_gguf(gf)
    check_tensors(gf, cfg.expected_tensors())
    g = Graph(weight_shapes(gf))
    hd, eps = cfg.head_dim, cfg.norm_eps
    q_width, kv_width = cfg.n_head * hd, cfg.n_kv_head * hd
    rope = dict(head_dim=hd, n_rot=hd, base=cfg.rope_base, neox=True, freq_scale=cfg.rope_freq_scale)

    x = g.embed("token_embd.weight", scale=math.sqrt(cfg.d_model))
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        h = g.rms_norm(x, f"{b}.attn_norm.weight", eps)
        q, k, v = g.split(g.linear(h, [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"]),
                          [q_width, kv_width, kv_width])
        a = g.attention(g.rope(q, **rope), g.rope(k, **rope), v, layer=i, n_head=cfg.n_head,
                        n_kv_head=cfg.n_kv_head, head_dim=hd, scale=cfg.query_scale,
                        window=cfg.sliding_window if cfg.is_sliding(i) else 0, softcap=cfg.attn_softcap)
        a = g.rms_norm(g.linear(a, [f"{b}.attn_output.weight"]), f"{b}.post_attention_norm.weight", eps)
        x = g.add(x, a)
        h = g.rms_norm(x, f"{b}.ffn_norm.weight", eps)
        f = g.glu(g.linear(h, [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"]), "gelu_tanh")
        f = g.rms_norm(g.linear(f, [f"{b}.ffn_down.weight"]), f"{b}.post_ffw_norm.weight", eps)
        x = g.add(x, f)
    if not all_logits:
        x = g.last_row(x)
    x = g.rms_norm(x, "output_norm.weight", eps)
    # the tied head: llama.cpp reads token_embd.weight here and never an `output.weight`
    logits = g.linear(x, ["token_embd.weight"])
    g.set_output(g.softcap(logits, cfg.final_softcap, name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
