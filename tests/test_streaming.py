"""Streaming on the real models (numpy backend): the streamed pieces are exactly the generated
text, whose truth is the UTF-8 decoding of the generated tokens' bytes; a character split over
tokens is never emitted in halves; a stop string that spans two tokens is cut and never streamed."""

import pytest

from wgpu_llm import LLM

pytestmark = pytest.mark.slow

# prompts whose greedy continuation has characters split over several byte tokens
SPLIT_PROMPTS = {
    "gemma3-270m": "Musical symbols: the treble clef 𝄞, the bass clef",
    "smollm2-135m": "The Chinese word for 'water' is",
}


@pytest.fixture(scope="module", params=list(SPLIT_PROMPTS))
def named(request):
    return request.param, LLM(request.param, backend="cpu", n_ctx=256)


def raw_text(llm, tokens) -> str:
    return b"".join(llm.tokenizer.token_bytes(t) for t in tokens).decode("utf-8")


def is_split(llm, token) -> bool:
    try:
        llm.tokenizer.token_bytes(token).decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_split_characters_stream_whole(named):
    name, llm = named
    prompt = SPLIT_PROMPTS[name]
    out = llm.generate(prompt, max_tokens=16, temperature=0)
    assert any(is_split(llm, t) for t in out.tokens), "the prompt no longer splits a character: choose another"
    pieces = list(llm.stream(prompt, max_tokens=16, temperature=0))
    assert "".join(pieces) == out.text == raw_text(llm, out.tokens)
    for piece in pieces:
        assert piece and "\ufffd" not in piece  # never half a character


def test_stop_string_spanning_two_tokens(named):
    _, llm = named
    prompt = "The capital of France is Paris. The capital of Germany is"
    full = llm.generate(prompt, max_tokens=24, temperature=0)
    texts = [raw_text(llm, [t]) if not is_split(llm, t) else "" for t in full.tokens]
    # a stop string made of the end of one token's text and the start of the next one's
    for k in range(len(texts) - 1):
        a, b = texts[k].strip(), texts[k + 1]
        if len(a) >= 1 and len(b.strip()) >= 1:
            stop = texts[k][-2:] + b[:2]
            start = sum(len(t) for t in texts[:k]) + len(texts[k]) - len(texts[k][-2:])
            if full.text.find(stop) == start:
                break
    else:
        pytest.fail(f"no two-token stop string found in {full.text!r}")
    cut = llm.generate(prompt, max_tokens=24, temperature=0, stop=[stop])
    assert cut.text == full.text[:start] and cut.finish_reason == "stop"
    pieces = list(llm.stream(prompt, max_tokens=24, temperature=0, stop=[stop]))
    assert "".join(pieces) == cut.text
    # the tokens up to the one completing the stop string were generated, no more
    assert cut.tokens == full.tokens[:k + 2]
