"""`gemma` architecture: Gemma 1 (2B, 7B).

llama's pre-norm block with Gemma's choices: the embedding is scaled by sqrt(d_model), the FFN is
GELU(tanh)-gated, rope rotates NeoX-style pairs, the head size comes from `attention.key_length`
(256), and the output head is always the token embedding. GGUF stores the norm weights with
Gemma's +1 already folded in, so every norm is a plain RMSNorm.
"""

from __future__ import annotations

import math

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import check_all_tensors_used, check_tensors, weight_shapes
from .llama import Config

__all__ = ["Config", "build_graph"]


def build_graph(gf: GGUFFile, all_logits: bool) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only."""
    cfg = Config.from_gguf(gf)
    check_tensors(gf, cfg.expected_tensors())
    g = Graph(weight_shapes(gf))
    hd, eps = cfg.head_dim, cfg.norm_eps
    q_width, kv_width = cfg.n_head * hd, cfg.n_kv_head * hd
    rope = dict(head_dim=hd, n_rot=cfg.n_rot, base=cfg.rope_base, neox=True, freq_scale=cfg.rope_freq_scale)

    x = g.embed("token_embd.weight", scale=math.sqrt(cfg.d_model))
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        h = g.rms_norm(x, f"{b}.attn_norm.weight", eps)
        q, k, v = g.split(g.linear(h, [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"]),
                          [q_width, kv_width, kv_width])
        a = g.attention(g.rope(q, **rope), g.rope(k, **rope), v, layer=i, n_head=cfg.n_head,
                        n_kv_head=cfg.n_kv_head, head_dim=hd, scale=1.0 / math.sqrt(hd))
        x = g.add(x, g.linear(a, [f"{b}.attn_output.weight"]))
        h = g.rms_norm(x, f"{b}.ffn_norm.weight", eps)
        f = g.glu(g.linear(h, [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"]), "gelu_tanh")
        x = g.add(x, g.linear(f, [f"{b}.ffn_down.weight"]))
    if not all_logits:
        x = g.last_row(x)
    x = g.rms_norm(x, "output_norm.weight", eps)
    # the tied head: llama.cpp reads token_embd.weight here and never an `output.weight`
    g.set_output(g.linear(x, ["token_embd.weight"], name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
