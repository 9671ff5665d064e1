"""`phi2` architecture: Phi-2 (and Phi-1.5, converted as it).

A parallel block: one LayerNorm (with a bias) feeds both the attention and the FFN, and both
outputs join the residual together, x + (attention(h) + ffn(h)). Attention from a fused QKV
projection (or separate q, k, v, as some converters write them), every projection with a bias, a
NeoX rotary embedding over the first `rope.dimension_count` dimensions of each head (partial
rotary), a non-gated GELU (tanh) FFN, and an output head with a bias. Hyper-parameters as stablelm.
"""

from __future__ import annotations

import math

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import check_all_tensors_used, check_tensors, weight_shapes
from .stablelm import Config

__all__ = ["Config", "build_graph"]


def expected_tensors(cfg: Config, fused_qkv: bool) -> dict[str, tuple[int, ...]]:
    d, kv, f = cfg.d_model, cfg.n_kv_head * cfg.head_dim, cfg.d_ff
    shapes = {"token_embd.weight": (cfg.n_vocab, d), "output_norm.weight": (d,), "output_norm.bias": (d,),
              "output.weight": (cfg.n_vocab, d), "output.bias": (cfg.n_vocab,)}
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        if fused_qkv:
            shapes.update({f"{b}.attn_qkv.weight": (d + 2 * kv, d), f"{b}.attn_qkv.bias": (d + 2 * kv,)})
        else:
            shapes.update({f"{b}.attn_q.weight": (d, d), f"{b}.attn_q.bias": (d,), f"{b}.attn_k.weight": (kv, d),
                           f"{b}.attn_k.bias": (kv,), f"{b}.attn_v.weight": (kv, d), f"{b}.attn_v.bias": (kv,)})
        shapes.update({
            f"{b}.attn_norm.weight": (d,), f"{b}.attn_norm.bias": (d,),
            f"{b}.attn_output.weight": (d, d), f"{b}.attn_output.bias": (d,),
            f"{b}.ffn_up.weight": (f, d), f"{b}.ffn_up.bias": (f,),
            f"{b}.ffn_down.weight": (d, f), f"{b}.ffn_down.bias": (d,),
        })
    return shapes


def build_graph(gf: GGUFFile, all_logits: bool) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only."""
    cfg = Config.from_gguf(gf)
    fused_qkv = "blk.0.attn_qkv.weight" in gf.tensors
    check_tensors(gf, expected_tensors(cfg, fused_qkv))
    g = Graph(weight_shapes(gf))
    hd, eps = cfg.head_dim, cfg.norm_eps
    kv_width = cfg.n_kv_head * hd
    rope = dict(head_dim=hd, n_rot=cfg.n_rot, base=cfg.rope_base, neox=True, freq_scale=cfg.rope_freq_scale)

    def linear(x: str, names: list[str]) -> str:  # every projection of Phi-2 has a bias
        return g.bias(g.linear(x, [f"{n}.weight" for n in names]), [f"{n}.bias" for n in names])

    x = g.embed("token_embd.weight")
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        h = g.layer_norm(x, f"{b}.attn_norm.weight", f"{b}.attn_norm.bias", eps)
        qkv_names = [f"{b}.attn_qkv"] if fused_qkv else [f"{b}.attn_q", f"{b}.attn_k", f"{b}.attn_v"]
        q, k, v = g.split(linear(h, qkv_names), [cfg.d_model, kv_width, kv_width])
        a = g.attention(g.rope(q, **rope), g.rope(k, **rope), v, layer=i, n_head=cfg.n_head,
                        n_kv_head=cfg.n_kv_head, head_dim=hd, scale=1.0 / math.sqrt(hd))
        a = linear(a, [f"{b}.attn_output"])
        f = linear(g.gelu(linear(h, [f"{b}.ffn_up"])), [f"{b}.ffn_down"])
        x = g.add(x, g.add(a, f))  # the parallel residual, summed in llama.cpp's order
    if not all_logits:
        x = g.last_row(x)
    x = g.layer_norm(x, "output_norm.weight", "output_norm.bias", eps)
    g.set_output(g.bias(g.linear(x, ["output.weight"]), ["output.bias"], name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
