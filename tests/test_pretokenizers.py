"""Every tokenizer.ggml.pre of byte-level BPE vocabularies against llama.cpp, token for token.

The golden file (tests/golden/make_pretok_golden.py) holds a vocabulary whose merges cross every
pre-tokenizer boundary, adversarial texts, and llama.cpp's ids for each name: a text split
anywhere else than where llama.cpp splits it gets other ids.
"""

import functools
import json
from pathlib import Path

import pytest

from wgpu_llm.gguf_file import GGUFError
from wgpu_llm.tokenizer import _PRE_TYPES, Tokenizer

GOLDEN = Path(__file__).parent / "golden" / "pretokenizers.json"


@functools.cache
def _golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def _metadata(pre: str) -> dict:
    """The metadata make_pretok_golden.py writes (tests/tiny_models.py: BOS and EOS are token 0)."""
    g = _golden()
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": g["tokens"],
        "tokenizer.ggml.token_type": [3] + [1] * (len(g["tokens"]) - 1),
        "tokenizer.ggml.merges": g["merges"],
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
    }


def test_golden_covers_every_known_name():
    assert sorted(_golden()["by_pre"]) == sorted(_PRE_TYPES), "run tests/golden/make_pretok_golden.py"


def test_corpus_is_adversarial():
    texts = "".join(_golden()["texts"])
    for what, sample in [("a whitespace run", "   \t"), ("\\r\\n", "\r\n"), ("an upper-case contraction", "'RE"),
                         ("a run of 10 digits", "1234567890"), ("CJK", "漢字"), ("Arabic", "العربية"),
                         ("a combining mark", "e\u0301"), ("an emoji with ZWJ", "\u200d"), ("a tab in code", "\n\t")]:
        assert sample in texts, f"the pre-tokenizer corpus lacks {what}"


def test_merges_cross_pre_tokenizer_boundaries():
    """Otherwise splitting in the wrong place would give the same ids and the parity test could not fail."""
    merges = set(_golden()["merges"])
    # (Ġ is a space, Ċ a newline in the byte-level alphabet)
    for merge in ("Ġ a", "e Ġ", "0 0", "23 4", "' s", "Ċ Ġ", ", Ġ", "Ġ 1", "Ġ '", "< /", "ĠĠ ĠĠ"):
        assert merge in merges, merge
    ids = _golden()["ids"]
    assert len(ids) >= 10, "pre-tokenizers that llama.cpp tells apart give the same ids"


def test_whole_word_tokens_test_ignored_merges():
    """Tokens no merge makes come out only where a piece that is a token skips the merges (llama3, tekken)."""
    g = _golden()
    made = {m.replace(" ", "") for m in g["merges"]}
    unmade = {i for i, t in enumerate(g["tokens"]) if len(t) > 1 and t not in made} - {0}
    assert len(unmade) >= 20
    for pre, ignores in (("llama-bpe", True), ("tekken", True), ("dbrx", False), ("qwen2", False)):
        used = {i for ids in g["ids"][g["by_pre"][pre]["ids"]] for i in ids}
        assert bool(used & unmade) == ignores, pre


@pytest.mark.parametrize("pre", sorted(_PRE_TYPES))
def test_ids_match_llama_cpp(pre):
    g = _golden()
    expected = g["ids"][g["by_pre"][pre]["ids"]]
    tok = Tokenizer.from_metadata(_metadata(pre))
    mismatches = []
    for text, ids in zip(g["texts"], expected, strict=True):
        ours = tok.encode(text, add_special=True)
        if ours != ids:
            mismatches.append(f"{text!r}:\n  llama.cpp {ids}\n  ours      {ours}")
    assert not mismatches, f"pre={pre}: {len(mismatches)}/{len(expected)} texts differ:\n" + "\n".join(mismatches)


@pytest.mark.parametrize("pre", sorted(_PRE_TYPES))
def test_decode_matches_llama_cpp(pre):
    """llama.cpp's detokenize of its own ids (remove_special, no unparse_special): the text again, but
    for the special token and the spaces cleaned up where the pre-tokenizer says so."""
    g = _golden()
    ids, changed = g["ids"][g["by_pre"][pre]["ids"]], g["decoded"][g["by_pre"][pre]["decoded"]]
    tok = Tokenizer.from_metadata(_metadata(pre))
    mismatches = []
    for i, (text, row) in enumerate(zip(g["texts"], ids, strict=True)):
        expected, ours = changed.get(str(i), text), tok.decode(row)
        if ours != expected:
            mismatches.append(f"{text!r}:\n  llama.cpp {expected!r}\n  ours      {ours!r}")
    assert not mismatches, f"pre={pre}: {len(mismatches)}/{len(ids)} texts differ:\n" + "\n".join(mismatches)


@pytest.mark.parametrize("pre", ["gpt2", "kimi-k2", "superbpe", "Qwen2", "llama 3", "unknown"])
def test_unknown_pre_is_refused(pre):
    with pytest.raises(GGUFError, match=f"tokenizer.ggml.pre' = '{pre}'"):
        Tokenizer.from_metadata(_metadata(pre))
