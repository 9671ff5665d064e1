"""`granite` architecture: IBM Granite 3.x dense models.

llama's block with four scalar multipliers from the file: the embedding times `embedding_scale`,
each attention and FFN output times `residual_scale` before its residual add, attention scores
times `attention.scale` (instead of 1/sqrt(head_dim)), and the logits divided by `logit_scale`.
Rope is on unless `rope.scaling.finetuned` is false (llama.cpp's switch for Granite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..gguf_file import GGUFFile
from ..graph import Graph
from . import llama
from .base import check_all_tensors_used, check_tensors, output_weight, positive_float, weight_shapes

KNOWN_KEYS = llama.KNOWN_KEYS | {"logit_scale", "residual_scale", "embedding_scale", "attention.scale"}


@dataclass(frozen=True)
class Config(llama.Config):
    logit_scale: float = 1.0
    residual_scale: float = 1.0  # 1: no scaling (llama.cpp skips a 0 or absent value too)
    embedding_scale: float = 1.0
    attention_scale: float = 0.0  # 0: 1/sqrt(head_dim)
    use_rope: bool = True

    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "Config":
        base = llama.Config.from_gguf(gf, KNOWN_KEYS)
        a = gf.architecture

        def optional(key: str) -> float:
            value = gf.get(f"{a}.{key}", float, 0.0)
            return positive_float(gf, f"{a}.{key}", value) if value != 0.0 else 0.0

        return cls(**base.__dict__,
                   logit_scale=positive_float(gf, f"{a}.logit_scale", gf.require(f"{a}.logit_scale", float)),
                   residual_scale=optional("residual_scale") or 1.0,
                   embedding_scale=optional("embedding_scale") or 1.0,
                   attention_scale=optional("attention.scale"),
                   use_rope=gf.get(f"{a}.rope.scaling.finetuned", bool, True))


def build_graph(gf: GGUFFile, all_logits: bool) -> Graph:
    """One forward step; logits for every row when `all_logits`, else for the last row only."""
    cfg = Config.from_gguf(gf)
    check_tensors(gf, cfg.expected_tensors())
    head = output_weight(gf)
    check_tensors(gf, {head: (cfg.n_vocab, cfg.d_model)})
    g = Graph(weight_shapes(gf))
    hd, eps = cfg.head_dim, cfg.norm_eps
    q_width, kv_width = cfg.n_head * hd, cfg.n_kv_head * hd
    rope = dict(head_dim=hd, n_rot=cfg.n_rot, base=cfg.rope_base, neox=False, freq_scale=cfg.rope_freq_scale)

    def residual(x: str, out: str) -> str:
        return g.add(x, g.scale(out, cfg.residual_scale) if cfg.residual_scale != 1.0 else out)

    x = g.embed("token_embd.weight", scale=cfg.embedding_scale)
    for i in range(cfg.n_layer):
        b = f"blk.{i}"
        h = g.rms_norm(x, f"{b}.attn_norm.weight", eps)
        q, k, v = g.split(g.linear(h, [f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"]),
                          [q_width, kv_width, kv_width])
        if cfg.use_rope:
            q, k = g.rope(q, **rope), g.rope(k, **rope)
        a = g.attention(q, k, v, layer=i, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, head_dim=hd,
                        scale=cfg.attention_scale or 1.0 / math.sqrt(hd))
        x = residual(x, g.linear(a, [f"{b}.attn_output.weight"]))
        h = g.rms_norm(x, f"{b}.ffn_norm.weight", eps)
        f = g.glu(g.linear(h, [f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"]), "silu")
        x = residual(x, g.linear(f, [f"{b}.ffn_down.weight"]))
    if not all_logits:
        x = g.last_row(x)
    x = g.rms_norm(x, "output_norm.weight", eps)
    g.set_output(g.scale(g.linear(x, [head]), 1.0 / cfg.logit_scale, name="logits"))
    check_all_tensors_used(gf, g.weights_used())
    return g
