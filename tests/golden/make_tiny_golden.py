"""Regenerate tests/golden/tiny_llama_cpp.npz: llama.cpp's logits for the tiny random models.

The tiny models (tests/tiny_models.py) are written deterministically, so the test rewrites the
same files and compares our logits at every position with llama.cpp's. Needs llama-cpp-python.

    python tests/golden/make_tiny_golden.py              # every case
    python tests/golden/make_tiny_golden.py phi3-F32     # only these cases; the others are kept as stored
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from tiny_models import write_tiny_model  # noqa: E402

ROPE_FACTORS = [1.0] * 4 + [1.5, 2.5, 4.0, 6.0, 8.0] + [8.0] * 7  # head_dim 32: 16 pairs
# Phi-3 LongRoPE: short / long frequency divisors (8 pairs of a 16-wide head) and the attention factor. llama.cpp
# rounds its context (64 here) up to a multiple of 256 and takes the long factors past the original context
# length, so an original context of 256 keeps it on the short ones, as the graph (the model's usable context)
PHI3_SHORT = [1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0]
PHI3_LONG = [2.0, 3.0, 5.0, 8.0, 12.0, 16.0, 24.0, 32.0]
PHI3_LONGROPE = {"n_ctx": 1024, "extra_metadata": {"phi3.rope.scaling.original_context_length": 256,
                                                   "phi3.rope.scaling.attn_factor": 1.25},
                 "extra_tensors": {"rope_factors_short.weight": PHI3_SHORT, "rope_factors_long.weight": PHI3_LONG}}
# Phi-4-mini-like: rotary over 12 of 16 dimensions (Phi-4-mini: 96 of 128), 6 pairs of LongRoPE factors, and the
# attention factor the converter writes for a context 4 times the original, sqrt(1 + ln 4 / ln 256); opened
# with a context past the original (512: a multiple of 256, as llama.cpp rounds it) it takes the long factors
PHI4_MINI = {"n_rot": 12, "n_ctx": 1024,
             "extra_metadata": {"phi3.rope.scaling.original_context_length": 256,
                                "phi3.rope.scaling.attn_factor": (1 + math.log(4) / math.log(256)) ** 0.5},
             "extra_tensors": {"rope_factors_short.weight": PHI3_SHORT[:6], "rope_factors_long.weight": PHI3_LONG[:6]}}
K_SHAPE = {"d_model": 256, "n_head": 4, "head_dim": 64, "d_ff": 256, "n_layer": 1}
N_CTX = 64  # the context every case runs in, except these
LONG_CONTEXT = {"phi3-F32-phi4-mini-long-context": 512}
# (arch, type, extra writer args); sequences longer than gemma2/3's sliding window of 8
CASES = {
    "llama-F32": ("llama", "F32", {}),
    "llama-Q8_0-untied": ("llama", "Q8_0", {"tied_output": False}),
    "gemma3-F32": ("gemma3", "F32", {}),
    "gemma3-F16-mha": ("gemma3", "F16", {"n_kv_head": 4}),
    "qwen2-F32": ("qwen2", "F32", {}),
    "qwen2-Q8_0-untied": ("qwen2", "Q8_0", {"tied_output": False}),
    "qwen3-F32": ("qwen3", "F32", {}),
    "qwen3-Q8_0-untied": ("qwen3", "Q8_0", {"tied_output": False}),
    "gemma-F32": ("gemma", "F32", {"n_kv_head": 4}),
    "granite-F32": ("granite", "F32", {}),
    "granite-Q8_0-untied": ("granite", "Q8_0", {"tied_output": False}),
    "olmo2-F32-untied": ("olmo2", "F32", {"tied_output": False}),
    "gemma2-F32": ("gemma2", "F32", {}),
    "gemma2-Q8_0": ("gemma2", "Q8_0", {}),
    # heads wider than d_model / n_head: the query scale is key_length's, except at 46 layers (27B)
    "gemma2-F32-wide-heads": ("gemma2", "F32", {"head_dim": 32}),
    "gemma2-F32-wide-heads-46-layers": ("gemma2", "F32", {"head_dim": 32, "n_layer": 46}),
    "gpt2-F32": ("gpt2", "F32", {"n_kv_head": 4}),
    "gpt2-Q8_0-untied": ("gpt2", "Q8_0", {"n_kv_head": 4, "tied_output": False}),
    # partial rotary: 4 of 16 (stablelm), 6 of 16 (phi2) dimensions per head
    "stablelm-F32": ("stablelm", "F32", {"n_rot": 4, "tied_output": False}),
    "stablelm-Q8_0": ("stablelm", "Q8_0", {"n_rot": 4, "tied_output": False}),
    "phi2-F32": ("phi2", "F32", {"n_rot": 6, "n_kv_head": 4, "tied_output": False}),
    "phi2-F32-split-qkv": ("phi2", "F32", {"n_rot": 6, "n_kv_head": 4, "tied_output": False, "fused_qkv": False}),
    "phi2-Q8_0": ("phi2", "Q8_0", {"n_rot": 6, "n_kv_head": 4, "tied_output": False}),
    # Llama 3.1-style rope frequency divisors, and heads wider than d_model / n_head
    "llama31-F32-wide-heads": ("llama", "F32", {"head_dim": 32, "extra_tensors": {"rope_freqs.weight": ROPE_FACTORS}}),
    # fused QKV and gate | up; tied and untied heads; LongRoPE (short factors, attention factor), also over 8 of 16
    # dimensions; a sliding window of 8 that llama.cpp does not apply to phi3
    "phi3-F32": ("phi3", "F32", {}),
    "phi3-Q8_0-untied": ("phi3", "Q8_0", {"tied_output": False}),
    "phi3-F32-longrope": ("phi3", "F32", PHI3_LONGROPE),
    "phi3-F32-partial-rotary": ("phi3", "F32", {
        "n_rot": 8, "n_ctx": 1024, "extra_metadata": {"phi3.rope.scaling.original_context_length": 256},
        "extra_tensors": {"rope_factors_short.weight": PHI3_SHORT[:4], "rope_factors_long.weight": PHI3_LONG[:4]}}),
    "phi3-F32-sliding-window": ("phi3", "F32", {"extra_metadata": {"phi3.attention.sliding_window": 8}}),
    "phi3-F32-phi4-mini": ("phi3", "F32", PHI4_MINI),
    "phi3-F32-phi4-mini-long-context": ("phi3", "F32", PHI4_MINI),
    # the k-quants and i-quants gguf-py cannot write, as random blocks (256-column rows for the 256-blocks)
    "llama-IQ4_NL": ("llama", "IQ4_NL", {}),
    "llama-IQ4_XS": ("llama", "IQ4_XS", K_SHAPE),
    "llama-Q2_K": ("llama", "Q2_K", K_SHAPE),
    "llama-Q3_K": ("llama", "Q3_K", K_SHAPE),
    "llama-Q4_K": ("llama", "Q4_K", K_SHAPE),
    "llama-Q5_K": ("llama", "Q5_K", K_SHAPE),
    "llama-Q6_K": ("llama", "Q6_K", K_SHAPE),
}
TOKENS = [(i * 37 + 11) % 250 + 4 for i in range(40)]


def _without_repacked_weights() -> None:
    """llama.cpp's CPU backend repacks quantized weights into extra buffer types (AMX, AVX-512 tiles)
    where the CPU has them; with these tiny shapes that path crashes (llama-cpp-python 0.3.36 on an
    AMX machine). The plain CPU buffers compute the same products (activations quantized alike)."""
    import llama_cpp.llama_cpp as C

    default = C.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    C.llama_model_default_params = params


def main(names: list[str]) -> None:
    from llama_cpp import Llama, __version__

    _without_repacked_weights()

    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(unknown)} (known: {', '.join(CASES)})")
    out = {"tokens": np.array(TOKENS, np.int32), "llama_cpp_python": np.array(__version__)}
    if names:  # keep every other case as stored (made by the same llama-cpp-python, or the file says otherwise)
        with np.load(HERE / "tiny_llama_cpp.npz") as stored:
            if str(stored["llama_cpp_python"]) != __version__ or stored["tokens"].tolist() != TOKENS:
                raise SystemExit(f"the stored goldens come from llama-cpp-python {stored['llama_cpp_python']}: "
                                 f"regenerate every case")
            out.update({name: stored[name] for name in CASES if name not in names and name in stored})
    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, qtype, extra) in CASES.items():
            if names and name not in names:
                continue
            path = write_tiny_model(Path(tmp) / f"{name}.gguf", arch, qtype, **extra)
            model = Llama(str(path), logits_all=True, n_ctx=LONG_CONTEXT.get(name, N_CTX), n_batch=64, verbose=False,
                          n_threads=2)
            model.eval(TOKENS)
            out[name] = np.array(model.scores[:len(TOKENS)], dtype=np.float32)
            print(f"{name}: logits {out[name].shape}")
            del model
    np.savez_compressed(HERE / "tiny_llama_cpp.npz", **{k: out[k] for k in ["tokens", "llama_cpp_python", *CASES]})


if __name__ == "__main__":
    main(sys.argv[1:])
