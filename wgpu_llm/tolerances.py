"""How far the GPU backend's result of one op may lie from the numpy reference's, as NMSE
= sum((gpu - ref)^2) / sum(ref^2), the two given the same inputs.

Each is about 10x the largest NMSE measured on lavapipe, over the op table of
tests/test_ops_parity.py (random weights and activations; every op form, a prefill chunk, a decode
step, a short chunk) and over `wgpu-llm verify` of gemma3-270m and smollm2-135m (prompt and 3
decode steps). Real activations are less kind than random ones -- outliers, sharp softmaxes,
logits that cancel -- and set most of the values:
  ELTWISE_TOL 0      embed, slice, last_row, add, bias, scale, pos_embed: one correctly rounded
                     float32 operation (or none) per element on both sides, so bit-identical
                     (measured 0 everywhere)
  ROPE_TOL    1e-13  rope: sin / cos evaluated on the GPU vs numpy's (measured <= 1e-14)
  NORM_TOL    3e-12  rms_norm, glu, gelu, softcap: sums / exp / tanh in another order or
                     implementation (measured <= 2.1e-13: on a decode step's single row, a few ulp
                     of the row's one scale factor; WGSL's inverseSqrt is accurate to 2 ulp)
  DOT_TOL     1e-11  linear and layer_norm: dot products / centring sums in another order
                     (measured <= 9.3e-13: smollm2's logits, sums that cancel)
  ATTN_TOL    3e-11  attention (soft-capped too): score dot products in another order and the
                     softmax's exp, which WGSL only asks to be accurate to 3 + 2|x| ulp
                     (measured <= 3.6e-12, gemma3's decode steps)

The f16 KV cache (kv_type "f16"; tests/test_kv_cache_f16.py):
  KV_F16_KERNEL_TOL 3e-11  GPU attention over packed halves vs ops.attention over the halves the
                     kernel stored (each checked to lie next to its value: WGSL lets pack2x16float
                     round either way), so the same math as ATTN_TOL's in another order (measured
                     <= 4.7e-13 on lavapipe, whose every stored half is numpy's nearest even; a
                     kernel that does not round the step's own keys to f16 measures ~2e-8)
  KV_F16_LOGITS_TOL 4e-5   the numpy backend's logits with an f16 cache vs an f32 one, at every
                     position of a 67/68-token prompt and 16 tokens of f32's greedy continuation
                     (measured max 3.6e-6 on smollm2-135m, 1.0e-7 on gemma3-270m)
  KV_F16_NEAR_TIE   1e-2   the greedy continuations may part only where f32's top two logits are
                     this close (measured: smollm2-135m parts at its 8th token, " life" vs
                     " culture", a gap of 1e-4; gemma3-270m's 16 tokens are equal)

The prefill mat-mat with f16 staged tiles (Tiles.f16, activations="f16"; tests/test_gpu_matmul.py):
  MATMUL_F16_KERNEL_TOL 2e-6  the kernel vs its numpy twin, which rounds x and the dequantized
                     weights to float16 and sums the products in float64 (F32, F16, Q8_0, Q4_0,
                     Q4_K weights of a model's range, x ~ 3 N(0, 1); measured <= 2.1e-7 on
                     lavapipe): what is left is the f16 rounding of each vec4 dot product (four
                     products, three adds, in f16) before it joins the f32 sum, not modelled
  MATMUL_F16_TOL    3e-6   the same kernel vs the f32 kernel on the same inputs (measured <= 3.0e-7)
  ACTIVATIONS_F16_LOGITS_TOL 3e-4  the stated accuracy bound of activations="f16": the GPU
                     backend's prefill logits with f16 mat-mat tiles vs f32 ones, at every position
                     of a 44/45-token prompt run as one tiled step (tests/test_activations_f16.py;
                     measured on lavapipe max 2.7e-5 (mean 4.9e-6) on smollm2-135m Q4_1, max
                     2.8e-6 (mean 8.5e-7) on gemma3-270m Q4_K_M; 8 greedy tokens equal on both)

`wgpu-llm verify` (wgpu_llm/verify.py) holds each op of a real model to OP_TOLERANCE of its kind;
ops one fused GPU kernel runs together, to the largest tolerance among their kinds.
"""

from __future__ import annotations

ELTWISE_TOL = 0.0
ROPE_TOL = 1e-13
NORM_TOL = 3e-12
DOT_TOL = 1e-11
ATTN_TOL = 3e-11
KV_F16_KERNEL_TOL = ATTN_TOL
KV_F16_LOGITS_TOL = 4e-5
KV_F16_NEAR_TIE = 1e-2
MATMUL_F16_KERNEL_TOL = 2e-6
MATMUL_F16_TOL = 3e-6
ACTIVATIONS_F16_LOGITS_TOL = 3e-4

OP_TOLERANCE = {
    "embed": ELTWISE_TOL, "slice": ELTWISE_TOL, "last_row": ELTWISE_TOL, "add": ELTWISE_TOL,
    "bias": ELTWISE_TOL, "scale": ELTWISE_TOL, "pos_embed": ELTWISE_TOL,
    "rope": ROPE_TOL,
    "rms_norm": NORM_TOL, "glu": NORM_TOL, "gelu": NORM_TOL, "softcap": NORM_TOL,
    "layer_norm": DOT_TOL, "linear": DOT_TOL,
    "attention": ATTN_TOL,
}


def op_tolerance(kinds) -> float:
    """The NMSE allowed for the result of ops of these kinds computed together (a fused kernel)."""
    kinds = set(kinds)
    unknown = sorted(kinds - OP_TOLERANCE.keys())
    if unknown:
        raise KeyError(f"no tolerance for op kinds {', '.join(unknown)} (wgpu_llm/tolerances.py)")
    return max(OP_TOLERANCE[k] for k in kinds)
