"""`qwen2` architecture: Qwen2 and Qwen2.5 (0.5B ... 72B), dense.

llama's block with biases on the q, k and v projections (none elsewhere) and NeoX-style rope.
The hyper-parameters are llama's.
"""

from __future__ import annotations

import math

from ..gguf_file import GGUFFile
from ..graph import Graph
from .base import check_all_tensors_used, check_tensors, output_weight, weight_shapes
from .llama import Config

__all__ = ["Config", "build_graph"]


def expected_tensors(cfg: Config) -> dict[str, tuple[int, ...]]:
    shapes = cfg.expected_tensors()
    for i in range(cfg.n_layer):
        shapes[f"blk.{i}.attn_q.bias"] = (cfg.n_head * cfg.head_dim,)
        shapes[f"blk.{i}.attn_k.bias"] = (cfg.n_kv_head * cfg.head_dim,)
        shapes[f"blk.{i}.attn_v.bias"] = (cfg.n_kv_head * cfg.head_dim,)
    return shapes


def build_graph(gf: GGUFFile, all_logits: bool) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only."""
    cfg = Config.from_gguf(gf)
    check_tensors(gf, expected_tensors(cfg))
    head = output_weight(gf)
    check_tensors(gf, {head: (cfg.n_vocab, cfg.d_model)})
    g = Graph(weight_shapes(gf))
    hd, eps = cfg.head_dim, cfg.norm_eps
    q_width, kv_width = cfg.n_head * hd, cfg.n_kv_head * hd
    rope = dict(head_dim=hd, n_rot=cfg.n_rot, base=cfg.rope_base, neox=True, freq_scale=cfg.rope_freq_scale)

    x = g.embed("token_embd.weight")
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        h = g.rms_norm(x, f"{b}.attn_norm.weight", eps)
        qkv = g.linear(h, [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"])
        qkv = g.bias(qkv, [f"{b}.attn_q.bias", f"{b}.attn_k.bias", f"{b}.attn_v.bias"])
        q, k, v = g.split(qkv, [q_width, kv_width, kv_width])
        a = g.attention(g.rope(q, **rope), g.rope(k, **rope), v, layer=i, n_head=cfg.n_head,
                        n_kv_head=cfg.n_kv_head, head_dim=hd, scale=1.0 / math.sqrt(hd))
        x = g.add(x, g.linear(a, [f"{b}.attn_output.weight"]))
        h = g.rms_norm(x, f"{b}.ffn_norm.weight", eps)
        f = g.glu(g.linear(h, [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"]), "silu")
        x = g.add(x, g.linear(f, [f"{b}.ffn_down.weight"]))
    if not all_logits:
        x = g.last_row(x)
    x = g.rms_norm(x, "output_norm.weight", eps)
    g.set_output(g.linear(x, [head], name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
