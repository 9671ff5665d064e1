"""The model graphs vs llama.cpp on tiny random models (golden logits from make_tiny_golden.py),
on the numpy backend and on the GPU backend."""

import math
from pathlib import Path

import numpy as np
import pytest

from tiny_models import write_tiny_model
from wgpu_llm import LLM

ROPE_FACTORS = [1.0] * 4 + [1.5, 2.5, 4.0, 6.0, 8.0] + [8.0] * 7  # as in make_tiny_golden.py
PHI3_SHORT = [1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0]  # as in make_tiny_golden.py
PHI3_LONG = [2.0, 3.0, 5.0, 8.0, 12.0, 16.0, 24.0, 32.0]
PHI3_LONGROPE = {"n_ctx": 1024, "extra_metadata": {"phi3.rope.scaling.original_context_length": 256,
                                                   "phi3.rope.scaling.attn_factor": 1.25},
                 "extra_tensors": {"rope_factors_short.weight": PHI3_SHORT, "rope_factors_long.weight": PHI3_LONG}}
PHI4_MINI = {"n_rot": 12, "n_ctx": 1024,
             "extra_metadata": {"phi3.rope.scaling.original_context_length": 256,
                                "phi3.rope.scaling.attn_factor": (1 + math.log(4) / math.log(256)) ** 0.5},
             "extra_tensors": {"rope_factors_short.weight": PHI3_SHORT[:6], "rope_factors_long.weight": PHI3_LONG[:6]}}
K_SHAPE = {"d_model": 256, "n_head": 4, "head_dim": 64, "d_ff": 256, "n_layer": 1}
N_CTX = 64  # the contexts llama.cpp ran in (make_tiny_golden.py)
LONG_CONTEXT = {"phi3-F32-phi4-mini-long-context": 512}
GOLDEN = np.load(Path(__file__).parent / "golden" / "tiny_llama_cpp.npz")
CASES = {
    "llama-F32": ("llama", "F32", {}, 1e-5),
    # llama.cpp multiplies Q8_0 weights with activations quantized to 8 bits: a looser match
    "llama-Q8_0-untied": ("llama", "Q8_0", {"tied_output": False}, 2e-3),
    "gemma3-F32": ("gemma3", "F32", {}, 1e-5),
    "gemma3-F16-mha": ("gemma3", "F16", {"n_kv_head": 4}, 1e-4),
    "qwen2-F32": ("qwen2", "F32", {}, 1e-5),
    "qwen2-Q8_0-untied": ("qwen2", "Q8_0", {"tied_output": False}, 2e-3),
    "qwen3-F32": ("qwen3", "F32", {}, 1e-5),
    "qwen3-Q8_0-untied": ("qwen3", "Q8_0", {"tied_output": False}, 2e-3),
    "gemma-F32": ("gemma", "F32", {"n_kv_head": 4}, 1e-5),
    "granite-F32": ("granite", "F32", {}, 1e-5),
    "granite-Q8_0-untied": ("granite", "Q8_0", {"tied_output": False}, 2e-3),
    "olmo2-F32-untied": ("olmo2", "F32", {"tied_output": False}, 1e-5),
    # soft-capped attention scores and logits, post-norms, sliding window on even layers
    "gemma2-F32": ("gemma2", "F32", {}, 1e-5),
    "gemma2-Q8_0": ("gemma2", "Q8_0", {}, 2e-3),
    # heads wider than d_model / n_head: queries scaled by key_length^-0.5, but (d_model / n_head)^-0.5 in a
    # 46-layer model, as llama.cpp's 27B (the other scale there: NMSE 8e-3)
    "gemma2-F32-wide-heads": ("gemma2", "F32", {"head_dim": 32}, 1e-5),
    "gemma2-F32-wide-heads-46-layers": ("gemma2", "F32", {"head_dim": 32, "n_layer": 46}, 1e-5),
    # LayerNorms and biases, learned positions; llama.cpp's GELU reads a float16 table (measured 2e-7)
    "gpt2-F32": ("gpt2", "F32", {"n_kv_head": 4}, 1e-5),
    "gpt2-Q8_0-untied": ("gpt2", "Q8_0", {"n_kv_head": 4, "tied_output": False}, 2e-3),
    # LayerNorms, partial rotary (4 / 6 of 16 dimensions); stablelm with q, k, v biases; phi2's parallel block
    "stablelm-F32": ("stablelm", "F32", {"n_rot": 4, "tied_output": False}, 1e-5),
    "stablelm-Q8_0": ("stablelm", "Q8_0", {"n_rot": 4, "tied_output": False}, 2e-3),
    "phi2-F32": ("phi2", "F32", {"n_rot": 6, "n_kv_head": 4, "tied_output": False}, 1e-5),
    "phi2-F32-split-qkv": ("phi2", "F32", {"n_rot": 6, "n_kv_head": 4, "tied_output": False, "fused_qkv": False},
                           1e-5),
    "phi2-Q8_0": ("phi2", "Q8_0", {"n_rot": 6, "n_kv_head": 4, "tied_output": False}, 2e-3),
    "llama31-F32-wide-heads": ("llama", "F32", {"head_dim": 32, "extra_tensors": {"rope_freqs.weight": ROPE_FACTORS}},
                               1e-5),
    # fused QKV and gate | up; LongRoPE's short factors and attention factor (llama.cpp's long factors, or no
    # attention factor: NMSE 0.1 to 1), also over 8 of 16 dimensions; llama.cpp leaves phi3's sliding window
    # unapplied, and so does the graph
    "phi3-F32": ("phi3", "F32", {}, 1e-5),
    "phi3-Q8_0-untied": ("phi3", "Q8_0", {"tied_output": False}, 2e-3),
    "phi3-F32-longrope": ("phi3", "F32", PHI3_LONGROPE, 1e-5),
    "phi3-F32-partial-rotary": ("phi3", "F32", {
        "n_rot": 8, "n_ctx": 1024, "extra_metadata": {"phi3.rope.scaling.original_context_length": 256},
        "extra_tensors": {"rope_factors_short.weight": PHI3_SHORT[:4], "rope_factors_long.weight": PHI3_LONG[:4]}},
        1e-5),
    "phi3-F32-sliding-window": ("phi3", "F32", {"extra_metadata": {"phi3.attention.sliding_window": 8}}, 1e-5),
    # Phi-4-mini-like: the attention factor over 12 of 16 dimensions, with the short factors in a context up to the
    # original one and the long factors past it (each golden vs the other: NMSE 0.9)
    "phi3-F32-phi4-mini": ("phi3", "F32", PHI4_MINI, 1e-5),
    "phi3-F32-phi4-mini-long-context": ("phi3", "F32", PHI4_MINI, 1e-5),
    # the k-quants and i-quants gguf-py cannot write, as random blocks (256-column rows for the 256-blocks); the
    # bound of Q8_0's (activations quantized to 8 bits): measured 6e-8 (Q5_K) to 1.1e-3 (IQ4_XS)
    "llama-IQ4_NL": ("llama", "IQ4_NL", {}, 2e-3),
    "llama-IQ4_XS": ("llama", "IQ4_XS", K_SHAPE, 2e-3),
    "llama-Q2_K": ("llama", "Q2_K", K_SHAPE, 2e-3),
    "llama-Q3_K": ("llama", "Q3_K", K_SHAPE, 2e-3),
    "llama-Q4_K": ("llama", "Q4_K", K_SHAPE, 2e-3),
    "llama-Q5_K": ("llama", "Q5_K", K_SHAPE, 2e-3),
    "llama-Q6_K": ("llama", "Q6_K", K_SHAPE, 2e-3),
}


def nmse(a, b):
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


@pytest.mark.parametrize("backend", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_llama_cpp(name, backend, tmp_path, request):
    arch, qtype, extra, tol = CASES[name]
    if backend == "gpu":
        request.getfixturevalue("adapter")  # skips (fails under WGPU_LLM_REQUIRE_GPU=1) without one
    llm = LLM(write_tiny_model(tmp_path / f"{name}.gguf", arch, qtype, **extra), backend=backend,
              n_ctx=LONG_CONTEXT.get(name, N_CTX), n_batch=16)
    ours = llm.logits(GOLDEN["tokens"].tolist())
    ref = GOLDEN[name]
    assert not np.isnan(ours).any()
    assert nmse(ours, ref) < tol, nmse(ours, ref)
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cpu_step_reuses_buffers(arch, tmp_path):
    """A compiled step holds a few activation buffers, not one per op, and still computes the same
    logits when run again (every buffer is rewritten before it is read)."""
    from cpu_fallback.backend import CpuBackend
    from wgpu_llm.gguf_file import GGUFFile
    from wgpu_llm.models import architecture

    gf = GGUFFile(write_tiny_model(tmp_path / f"{arch}.gguf", arch, "F32", n_layer=4))
    graph = architecture(gf).build_graph(gf, all_logits=True)
    step = CpuBackend(gf, 64).compile(graph, 9)
    ids = np.array(GOLDEN["tokens"][:9])
    first = step(ids, 0).copy()
    assert len(step.buffers) <= 8 < len(graph.ops) // 4, (len(step.buffers), len(graph.ops))
    assert np.array_equal(step(ids, 0), first)


@pytest.mark.parametrize("arch,extra,message", [
    # Stable LM 2 12B's per-head q/k norms
    ("stablelm", {"extra_tensors": {"blk.0.attn_q_norm.weight": np.ones((4, 16), np.float32)}},
     "tensor 'blk.0.attn_q_norm.weight' is not used by the 'stablelm' graph"),
    ("gemma2", {"extra_metadata": {"gemma2.rope.freq_base_swa": 10000.0}},
     "'gemma2.rope.freq_base_swa' = 10000.0 is not implemented by the 'gemma2' graph"),
    ("gemma2", {"extra_metadata": {"gemma2.final_logit_softcapping": 0.0}},
     "'gemma2.final_logit_softcapping' = 0.0: expected a positive finite number"),
    ("gpt2", {"extra_metadata": {"gpt2.rope.dimension_count": 16}},
     "'gpt2.rope.dimension_count' = 16 is not implemented"),
    # a position table shorter than the training context
    ("gpt2", {"extra_metadata": {"gpt2.context_length": 512}},
     r"tensor 'position_embd.weight' has shape \(256, 64\), expected \(512, 64\)"),
    ("phi2", {"extra_metadata": {"phi2.attention.key_length": 32}}, "'phi2.attention.key_length' = 32: only 16"),
])
def test_variants_not_implemented_are_refused(arch, extra, message, tmp_path):
    from wgpu_llm.gguf_file import GGUFError

    kw = {"tied_output": False} if arch in ("stablelm", "phi2") else {}
    with pytest.raises(GGUFError, match=message):
        LLM(write_tiny_model(tmp_path / f"{arch}.gguf", arch, "F32", **kw, **extra), backend="cpu")


@pytest.mark.parametrize("backend", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_context_past_the_position_table_is_refused(backend, tmp_path, request):
    """A backend whose context holds more positions than the learned table refuses the graph by name."""
    from cpu_fallback.backend import CpuBackend
    from wgpu_llm.gguf_file import GGUFFile
    from wgpu_llm.models import architecture

    gf = GGUFFile(write_tiny_model(tmp_path / "gpt2.gguf", "gpt2", "F32", n_kv_head=4, n_ctx=32))
    graph = architecture(gf).build_graph(gf, all_logits=False)
    if backend == "gpu":
        from wgpu_llm.gpu.backend import GpuBackend

        adapter = request.getfixturevalue("adapter")
        make = lambda n_ctx: GpuBackend(gf, n_ctx, adapter)  # noqa: E731
    else:
        make = lambda n_ctx: CpuBackend(gf, n_ctx)  # noqa: E731
    with pytest.raises(ValueError, match="a context of 33 positions exceeds the 32 rows of position_embd.weight"):
        make(33).compile(graph, 1)
    assert make(32).compile(graph, 1)(np.array([5]), 31).shape == (1, 267)  # the last position is fine
