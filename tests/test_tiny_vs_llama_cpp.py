"""The model graphs vs llama.cpp on tiny random models (golden logits from make_tiny_golden.py)."""

from pathlib import Path

import numpy as np
import pytest

from tiny_models import write_tiny_model
from wgpu_llm import LLM

GOLDEN = np.load(Path(__file__).parent / "golden" / "tiny_llama_cpp.npz")
CASES = {
    "llama-F32": ("llama", "F32", {}, 1e-5),
    # llama.cpp multiplies Q8_0 weights with activations quantized to 8 bits: a looser match
    "llama-Q8_0-untied": ("llama", "Q8_0", {"tied_output": False}, 2e-3),
    "gemma3-F32": ("gemma3", "F32", {}, 1e-5),
    "gemma3-F16-mha": ("gemma3", "F16", {"n_kv_head": 4}, 1e-4),
}


def nmse(a, b):
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_llama_cpp(name, tmp_path):
    arch, qtype, extra, tol = CASES[name]
    llm = LLM(write_tiny_model(tmp_path / f"{name}.gguf", arch, qtype, **extra), backend="cpu", n_batch=16)
    ours = llm.logits(GOLDEN["tokens"].tolist())
    ref = GOLDEN[name]
    assert not np.isnan(ours).any()
    assert nmse(ours, ref) < tol, nmse(ours, ref)
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.9
