"""The LLM contract on tiny random models (CPU backend): shapes, KV-cache invariants, generation."""

import numpy as np
import pytest

from tiny_models import write_tiny_model
from wgpu_llm import LLM, ContextOverflow

TEXT = "the cat sat on the mat in the sun, then the end"


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3", "granite", "gemma", "gemma3"])
def tiny(request, tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("m") / f"{request.param}.gguf", request.param, "Q8_0",
                            n_ctx=64)
    return LLM(path, backend="cpu", n_batch=8)


def test_tokenize_bos_follows_metadata(tiny):
    ids = tiny.tokenize(TEXT)
    if tiny.file.architecture in ("gemma", "gemma3"):
        assert ids[0] == tiny.tokenizer.bos_id  # add_bos_token = true
    else:
        assert ids[0] != tiny.tokenizer.bos_id  # add_bos_token = false
    assert tiny.detokenize(tiny.tokenize(TEXT, add_special=False)) == TEXT


def test_logits_shape_and_chunking(tiny):
    ids = tiny.tokenize(TEXT)
    assert len(ids) > tiny.n_batch  # several prefill chunks
    logits = tiny.logits(ids)
    assert logits.shape == (len(ids), tiny.n_vocab) and logits.dtype == np.float32
    one_chunk = LLM(tiny.file.path, backend="cpu", n_batch=512).logits(ids)
    # float32 rounding only (BLAS blocks the products differently for other row counts)
    scale = np.abs(logits).max()
    assert np.abs(logits - one_chunk).max() < 2e-6 * scale
    # a prefix gives the same logits: causal, fresh context each call
    assert np.abs(tiny.logits(ids[:5]) - logits[:5]).max() < 2e-6 * scale


def test_decode_steps_equal_prefill(tiny):
    ids = tiny.tokenize(TEXT)
    out = tiny.generate(ids, max_tokens=6, temperature=0)
    full = tiny.logits(ids + out.tokens)
    # each generated token is the argmax of the prefill logits at the previous position
    assert out.tokens == [int(t) for t in full[len(ids) - 1:-1].argmax(axis=1)][:len(out.tokens)]


def test_generate_stats_and_stream_agree(tiny):
    out = tiny.generate(TEXT, max_tokens=8, temperature=0)
    assert out.finish_reason in ("length", "stop")
    assert out.stats["prompt_tokens"] == len(tiny.tokenize(TEXT))
    assert out.stats["generated_tokens"] == len(out.tokens)
    assert out.stats["ttft_s"] > 0 and out.stats["prefill_tokens_per_s"] > 0
    assert (out.stats["decode_tokens_per_s"] > 0) == (len(out.tokens) > 1)
    assert "".join(tiny.stream(TEXT, max_tokens=8, temperature=0)) == out.text
    # the text is the generated tokens' bytes, decoded (no clean-up of spaces, nothing dropped)
    raw = b"".join(tiny.tokenizer.token_bytes(t) for t in out.tokens).decode("utf-8", errors="replace")
    assert out.text == raw


def test_seed_reproducible(tiny):
    a = tiny.generate(TEXT, max_tokens=10, temperature=1.5, seed=3, top_k=0, min_p=0.0)
    b = tiny.generate(TEXT, max_tokens=10, temperature=1.5, seed=3, top_k=0, min_p=0.0)
    assert a.tokens == b.tokens


def test_stop_string_cuts_text(tiny):
    full = tiny.generate(TEXT, max_tokens=12, temperature=0, ignore_eos=True)
    assert len(full.text) >= 4, full.text
    stop = full.text[2:4]
    cut = tiny.generate(TEXT, max_tokens=12, temperature=0, stop=[stop], ignore_eos=True)
    assert cut.text == full.text[:full.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert "".join(tiny.stream(TEXT, max_tokens=12, temperature=0, stop=[stop], ignore_eos=True)) == cut.text


def test_context_overflow_is_clear(tiny):
    ids = [5] * 64
    with pytest.raises(ContextOverflow, match="64 tokens.*context holds 64"):
        tiny.generate(ids, max_tokens=4)
    with pytest.raises(ContextOverflow, match="65 tokens do not fit"):
        tiny.logits([5] * 65)
    # generation stops at the end of the context instead of failing
    out = tiny.generate([5] * 60, max_tokens=50, temperature=0)
    assert len(out.tokens) <= 4 and out.finish_reason in ("length", "stop")


def test_bad_ids_and_arguments(tiny):
    with pytest.raises(ValueError, match="out of range"):
        tiny.logits([tiny.n_vocab])
    with pytest.raises(ValueError, match="no tokens"):
        tiny.logits([])
    with pytest.raises(ValueError, match="temperature"):
        tiny.generate(TEXT, temperature=-1)
    with pytest.raises(ValueError, match="n_ctx"):
        LLM(tiny.file.path, backend="cpu", n_ctx=10**6)
    with pytest.raises(ValueError, match="backend"):
        LLM(tiny.file.path, backend="tpu")


def test_chat_template(tmp_path):
    llm = LLM(write_tiny_model(tmp_path / "chat.gguf", "llama", "F32"), backend="cpu")
    ids = llm.chat_prompt([{"role": "user", "content": "hi"}])
    assert llm.tokenizer.decode(ids, skip_special=False) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] == llm.tokenizer.token_id("<|im_start|>")
    assert len(llm.chat([{"role": "user", "content": "hi"}], max_tokens=3, temperature=0).tokens) <= 3
    with pytest.raises(ValueError, match="message #0"):
        llm.chat_prompt([{"content": "no role"}])
