"""A file that needs more than a family's graph computes is refused by name, never run as another model."""

import numpy as np
import pytest

from tiny_models import write_tiny_model
from wgpu_llm import LLM
from wgpu_llm.gguf_file import GGUFError


def load(tmp_path, arch="llama", name=None, **kw):
    return LLM(write_tiny_model(tmp_path / f"{name or arch}.gguf", arch, "F32", **kw), backend="cpu")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_plain_tiny_models_load(arch, tmp_path):
    assert load(tmp_path, arch).n_vocab > 0


@pytest.mark.parametrize("arch,name,hint", [
    ("llama", "rope_factors_long.weight", "LongRoPE frequency factors are not implemented"),
    ("llama", "blk.0.attn_q.bias", "biases are not implemented"),
    ("gemma3", "blk.1.ffn_gate_exps.weight", "mixture-of-experts"),
    ("gemma3", "blk.0.layer_output_scale", "refusing to run a different model"),
    ("phi3", "blk.0.attn_qkv.bias", "biases are not implemented"),
    ("phi3", "output.bias", "biases are not implemented"),
])
def test_unused_tensor_is_refused(arch, name, hint, tmp_path):
    with pytest.raises(GGUFError, match=f"{arch}.gguf: tensor '{name}' is not used by the '{arch}' graph.*{hint}"):
        load(tmp_path, arch, extra_tensors={name: np.ones(16, np.float32)})


@pytest.mark.parametrize("arch,key,value,message", [
    ("llama", "llama.rope.scaling.type", "yarn", "'llama.rope.scaling.type' = 'yarn': only 'none' and 'linear'"),
    ("llama", "llama.rope.scaling.type", "longrope", "only 'none' and 'linear' rope scaling"),
    ("gemma3", "gemma3.final_logit_softcapping", 30.0, "'gemma3.final_logit_softcapping' = 30.0 is not implemented"),
    ("llama", "llama.logit_scale", 0.25, "'llama.logit_scale' = 0.25 is not implemented by the 'llama' graph"),
    ("llama", "llama.expert_count", 8, "'llama.expert_count' = 8: only 0 is implemented"),
    ("llama", "llama.vocab_size", 7, "'llama.vocab_size' = 7: only 267 is implemented"),
    ("llama", "llama.rope.dimension_count", 15, "'llama.rope.dimension_count' = 15: expected an even number"),
    ("llama", "llama.rope.freq_base", float("nan"), "'llama.rope.freq_base' = nan: expected a positive finite"),
    ("gemma3", "gemma3.attention.layer_norm_rms_epsilon", float("inf"), "= inf: expected a positive finite"),
    ("llama", "llama.rope.scaling.factor", 0.0, "'llama.rope.scaling.factor' = 0.0"),
    ("phi3", "phi3.rope.scaling.type", "longrope", "only 'none' and 'linear' rope scaling"),
    ("phi3", "phi3.attention.scale", 0.5, "'phi3.attention.scale' = 0.5 is not implemented by the 'phi3' graph"),
    ("phi3", "phi3.expert_count", 16, "'phi3.expert_count' = 16: only 0 is implemented"),
    ("phi3", "phi3.attention.key_length", 32, "'phi3.attention.key_length' = 32: only 16 is implemented"),
    ("phi3", "phi3.rope.scaling.attn_factor", 0.0, "'phi3.rope.scaling.attn_factor' = 0.0: expected a positive"),
])
def test_unimplemented_metadata_is_refused(arch, key, value, message, tmp_path):
    extra = {key: value}
    if key.endswith("scaling.factor"):
        extra[f"{arch}.rope.scaling.type"] = "linear"
    # a key the tiny writer already sets is written again last: GGUF keeps the later one
    with pytest.raises(GGUFError, match=message.replace("(", "\\(").replace("+", "\\+")):
        load(tmp_path, arch, extra_metadata=extra)


def test_linear_rope_scaling_is_applied(tmp_path):
    plain = load(tmp_path, "llama")
    scaled = load(tmp_path, "llama", name="scaled", extra_metadata={"llama.rope.scaling.type": "linear",
                                                                    "llama.rope.scaling.factor": 4.0})
    assert scaled.config.rope_freq_scale == 0.25 and plain.config.rope_freq_scale == 1.0
    ids = plain.tokenize("the cat sat on the mat")
    assert not np.allclose(plain.logits(ids)[1:], scaled.logits(ids)[1:])


PHI3_FACTORS = {"rope_factors_short.weight": np.linspace(1.0, 4.0, 8), "rope_factors_long.weight": np.linspace(2, 8, 8)}


def _rope_factors(llm) -> set:
    return {w for op in llm._graphs[False].ops if op.kind == "rope" for w in op.weights}


def test_phi3_longrope_factors_follow_the_context(tmp_path):
    """As llama.cpp: the short LongRoPE factors up to the original context length, the long ones past it, up
    to the file's context length; without long factors, nothing says how to rotate past the original."""
    kw = dict(n_ctx=1024, extra_metadata={"phi3.rope.scaling.original_context_length": 256})
    path = write_tiny_model(tmp_path / "longrope.gguf", "phi3", "F32", extra_tensors=PHI3_FACTORS, **kw)
    assert _rope_factors(LLM(path, backend="cpu", n_ctx=256)) == {"rope_factors_short.weight"}
    long = LLM(path, backend="cpu")  # the default context: min(4096, 1024)
    assert long.n_ctx == 1024 and _rope_factors(long) == {"rope_factors_long.weight"}
    with pytest.raises(ValueError, match=r"n_ctx=1025 must be in 1..1024"):
        LLM(path, backend="cpu", n_ctx=1025)
    short = {"rope_factors_short.weight": PHI3_FACTORS["rope_factors_short.weight"]}
    short_only = write_tiny_model(tmp_path / "short.gguf", "phi3", "F32", extra_tensors=short, **kw)
    assert LLM(short_only, backend="cpu").n_ctx == 256
    with pytest.raises(ValueError, match=r"n_ctx=257 must be in 1..256"):
        LLM(short_only, backend="cpu", n_ctx=257)
    plain = write_tiny_model(tmp_path / "plain.gguf", "phi3", "F32", **kw)
    assert LLM(plain, backend="cpu", n_ctx=1024).n_ctx == 1024


def test_phi3_rope_factors_and_partial_rotary(tmp_path):
    with pytest.raises(GGUFError, match=r"tensor 'rope_factors_short.weight' has shape \(8,\), expected \(4,\)"):
        load(tmp_path, "phi3", n_rot=8, extra_tensors=PHI3_FACTORS)
