"""`phi3` architecture: Phi-3 mini / medium (4k and 128k), Phi-3.5 mini, Phi-4-mini.

llama's block with a fused QKV projection (q | k | v rows, the query d_model wide), a NeoX rotary
embedding over the first `rope.dimension_count` dimensions of each head, and one `ffn_up` holding
the SiLU gate and the up projection together (gate rows first: llama.cpp's swiglu takes the first
half as the gate, as the glu op does). No biases; the output head is `output.weight`, or the token
embedding when the file has none (llama.cpp ties them then).

LongRoPE (the 128k models, Phi-4-mini): `rope_factors_short.weight` / `rope_factors_long.weight`
(n_rot/2 each) divide each pair's frequency, and `rope.scaling.attn_factor` multiplies the rotated
dimensions of q and k (llama.cpp's rope scales its cos and sin by it; with partial rotary the other
dimensions are not scaled). The converter writes that factor, sqrt(1 + ln(s) / ln(original context))
for a context s times the original; llama.cpp applies it as stored, with either set of factors.
llama.cpp takes the long factors when the context it runs in exceeds
`rope.scaling.original_context_length`, else the short ones, so the graph depends on the context
size: build_graph takes it (n_ctx). A file without long factors is usable up to the original
context length only.

`attention.sliding_window`: the converter writes the Hugging Face config's window (2047 for the
4k models, 0 for Phi-4), but llama.cpp turns sliding-window attention off for phi3 ("Phi SWA is
currently disabled") and attends to the whole context; so does this graph, to compute what
llama.cpp computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import (COMMON_KEYS, attention_heads, block_count, check_all_tensors_used, check_metadata, check_no_experts,
                   check_tensors, output_weight, positive, positive_float, rope_freq_scale, rotary_dims, vocab_rows,
                   weight_shapes)

KNOWN_KEYS = COMMON_KEYS | {"rope.dimension_count", "rope.scaling.attn_factor", "attention.sliding_window"}
SHORT_FACTORS, LONG_FACTORS = "rope_factors_short.weight", "rope_factors_long.weight"


@dataclass(frozen=True)
class Config:
    n_vocab: int
    n_ctx_train: int  # the usable context: the original context length when the file has no long factors
    n_ctx_orig: int  # rope.scaling.original_context_length: past it the long factors apply
    d_model: int
    n_layer: int
    d_ff: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_rot: int
    rope_base: float
    rope_freq_scale: float
    rope_attn_factor: float
    rope_factors: bool
    norm_eps: float

    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        a = gf.architecture
        check_metadata(gf, KNOWN_KEYS)
        check_no_experts(gf)
        d_model = positive(gf, f"{a}.embedding_length", gf.require(f"{a}.embedding_length", int))
        # llama.cpp's phi3 tensors: a d_model-wide query and attention output
        n_head, n_kv_head, head_dim = attention_heads(gf, d_model, "d_model")
        n_vocab = vocab_rows(gf)
        n_rot = rotary_dims(gf, head_dim)
        attn_factor = positive_float(gf, f"{a}.rope.scaling.attn_factor",
                                     gf.get(f"{a}.rope.scaling.attn_factor", float, 1.0))
        gf.get(f"{a}.attention.sliding_window", int)  # an integer when present; not applied (see above)
        n_ctx = positive(gf, f"{a}.context_length", gf.require(f"{a}.context_length", int))
        n_ctx_orig = positive(gf, f"{a}.rope.scaling.original_context_length",
                              gf.get(f"{a}.rope.scaling.original_context_length", int, n_ctx))
        rope_factors = SHORT_FACTORS in gf.tensors or LONG_FACTORS in gf.tensors
        if rope_factors and LONG_FACTORS not in gf.tensors:  # nothing says how to rotate past the original
            n_ctx = min(n_ctx, n_ctx_orig)
        return cls(
            n_vocab=n_vocab,
            n_ctx_train=n_ctx,
            n_ctx_orig=n_ctx_orig,
            d_model=d_model,
            n_layer=block_count(gf),
            d_ff=positive(gf, f"{a}.feed_forward_length", gf.require(f"{a}.feed_forward_length", int)),
            n_head=n_head,
            n_kv_head=n_kv_head,
            head_dim=head_dim,
            n_rot=n_rot,
            rope_base=positive_float(gf, f"{a}.rope.freq_base", gf.get(f"{a}.rope.freq_base", float, 10000.0)),
            rope_freq_scale=rope_freq_scale(gf),
            rope_attn_factor=attn_factor,
            rope_factors=rope_factors,
            norm_eps=positive_float(gf, f"{a}.attention.layer_norm_rms_epsilon",
                                    gf.require(f"{a}.attention.layer_norm_rms_epsilon", float)),
        )

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        d, kv, f = self.d_model, self.n_kv_head * self.head_dim, self.d_ff
        shapes = {"token_embd.weight": (self.n_vocab, d), "output_norm.weight": (d,)}
        for i in range(self.n_layer):
            b = f"blk.{i}"
            shapes.update({
                f"{b}.attn_norm.weight": (d,), f"{b}.attn_qkv.weight": (d + 2 * kv, d),
                f"{b}.attn_output.weight": (d, d), f"{b}.ffn_norm.weight": (d,),
                f"{b}.ffn_up.weight": (2 * f, d), f"{b}.ffn_down.weight": (d, f),
            })
        return shapes


def build_graph(gf: GGUFFile, all_logits: bool, n_ctx: int | None = None) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only.
    n_ctx: the context the step runs in (None: at most the original context length), which picks
    the LongRoPE factors as llama.cpp does."""
    cfg = Config.from_gguf(gf)
    check_tensors(gf, cfg.expected_tensors())
    head = output_weight(gf)
    check_tensors(gf, {head: (cfg.n_vocab, cfg.d_model)})
    factors = {name: (cfg.n_rot // 2,) for name in (SHORT_FACTORS, LONG_FACTORS) if name in gf.tensors}
    check_tensors(gf, factors)
    if n_ctx is not None and not 0 < n_ctx <= cfg.n_ctx_train:
        raise ValueError(f"n_ctx={n_ctx} must be in 1..{cfg.n_ctx_train} (the model's usable context)")
    chosen = LONG_FACTORS if n_ctx is not None and n_ctx > cfg.n_ctx_orig else SHORT_FACTORS
    g = Graph(weight_shapes(gf))
    hd, eps = cfg.head_dim, cfg.norm_eps
    kv_width = cfg.n_kv_head * hd
    rope = dict(head_dim=hd, n_rot=cfg.n_rot, base=cfg.rope_base, neox=True, freq_scale=cfg.rope_freq_scale,
                freq_factors=chosen if chosen in factors else None, attn_factor=cfg.rope_attn_factor)
    scale = 1 / math.sqrt(hd)

    x = g.embed("token_embd.weight")
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        h = g.rms_norm(x, f"{b}.attn_norm.weight", eps)
        q, k, v = g.split(g.linear(h, [f"{b}.attn_qkv.weight"]), [cfg.d_model, kv_width, kv_width])
        a = g.attention(g.rope(q, **rope), g.rope(k, **rope), v, layer=i, n_head=cfg.n_head,
                        n_kv_head=cfg.n_kv_head, head_dim=hd, scale=scale)
        x = g.add(x, g.linear(a, [f"{b}.attn_output.weight"]))
        h = g.rms_norm(x, f"{b}.ffn_norm.weight", eps)
        f = g.glu(g.linear(h, [f"{b}.ffn_up.weight"]), "silu")  # gate | up in one weight
        x = g.add(x, g.linear(f, [f"{b}.ffn_down.weight"]))
    if not all_logits:
        x = g.last_row(x)
    x = g.rms_norm(x, "output_norm.weight", eps)
    g.set_output(g.linear(x, [head], name="logits"))
    check_all_tensors_used(gf, g.weights_used() | set(factors))  # the factors for the other context sizes
    return g
