"""`olmo2` architecture: OLMo 2 (1B ... 32B).

No pre-norms: each block normalises the outputs instead (`post_attention_norm` on the attention
output, `post_ffw_norm` on the FFN output) before the residual add. q and k get an RMSNorm over the
whole projection (all heads together, one weight of n_head*head_dim), before NeoX-style rope.
SiLU-gated FFN, an untied output head. (OLMo 3's sliding-window layers are not implemented: a file
with `attention.sliding_window` is refused by name.)
"""

from __future__ import annotations

import math

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import check_all_tensors_used, check_tensors, weight_shapes
from .llama import Config

__all__ = ["Config", "build_graph"]


def expected_tensors(cfg: Config) -> dict[str, tuple[int, ...]]:
    d, q, kv, f = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.d_ff
    shapes = {"token_embd.weight": (cfg.n_vocab, d), "output_norm.weight": (d,), "output.weight": (cfg.n_vocab, d)}
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        shapes.update({
            f"{b}.attn_q.weight": (q, d), f"{b}.attn_k.weight": (kv, d), f"{b}.attn_v.weight": (kv, d),
            f"{b}.attn_q_norm.weight": (q,), f"{b}.attn_k_norm.weight": (kv,), f"{b}.attn_output.weight": (d, q),
            f"{b}.post_attention_norm.weight": (d,), f"{b}.ffn_gate.weight": (f, d), f"{b}.ffn_up.weight": (f, d),
            f"{b}.ffn_down.weight": (d, f), f"{b}.post_ffw_norm.weight": (d,),
        })
    return shapes


def build_graph(gf: GGUFFile, all_logits: bool) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only."""
    cfg = Config.from_gguf(gf)
    check_tensors(gf, expected_tensors(cfg))
    g = Graph(weight_shapes(gf))
    hd, eps = cfg.head_dim, cfg.norm_eps
    q_width, kv_width = cfg.n_head * hd, cfg.n_kv_head * hd
    rope = dict(head_dim=hd, n_rot=cfg.n_rot, base=cfg.rope_base, neox=True, freq_scale=cfg.rope_freq_scale)

    x = g.embed("token_embd.weight")
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        q, k, v = g.split(g.linear(x, [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"]),
                          [q_width, kv_width, kv_width])
        q = g.rope(g.rms_norm(q, f"{b}.attn_q_norm.weight", eps), **rope)
        k = g.rope(g.rms_norm(k, f"{b}.attn_k_norm.weight", eps), **rope)
        a = g.attention(q, k, v, layer=i, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, head_dim=hd,
                        scale=1.0 / math.sqrt(hd))
        x = g.add(x, g.rms_norm(g.linear(a, [f"{b}.attn_output.weight"]), f"{b}.post_attention_norm.weight", eps))
        f = g.glu(g.linear(x, [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"]), "silu")
        x = g.add(x, g.rms_norm(g.linear(f, [f"{b}.ffn_down.weight"]), f"{b}.post_ffw_norm.weight", eps))
    if not all_logits:
        x = g.last_row(x)
    x = g.rms_norm(x, "output_norm.weight", eps)
    g.set_output(g.linear(x, ["output.weight"], name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
