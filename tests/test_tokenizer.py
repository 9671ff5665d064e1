"""Tokenizer tests: llama.cpp parity on real vocabularies, round trips, the disk cache, and errors."""

import functools
import json
import re
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from wgpu_llm import tokenizer as tokenizer_mod
from wgpu_llm.gguf_file import GGUFError, GGUFFile
from wgpu_llm.tokenizer import Tokenizer

GOLDEN = Path(__file__).parent / "golden"
MODEL_FIXTURES = {"gemma3-270m": "gemma_path", "smollm2-135m": "smollm_path"}


@functools.cache
def _read_metadata(path) -> dict:
    return GGUFFile(path).metadata


@functools.cache
def _tokenizer(path) -> Tokenizer:
    return Tokenizer.from_metadata(_read_metadata(path))


@pytest.fixture(scope="module", params=list(MODEL_FIXTURES))
def model(request):
    """(name, metadata, Tokenizer) for each real model."""
    path = request.getfixturevalue(MODEL_FIXTURES[request.param])
    return request.param, _read_metadata(path), _tokenizer(path)


@pytest.fixture(scope="module")
def corpus():
    texts = json.loads((GOLDEN / "corpus.json").read_text(encoding="utf-8"))
    assert isinstance(texts, list) and all(isinstance(t, str) for t in texts)
    return texts


def test_corpus_is_varied(corpus):
    assert len(corpus) >= 40
    assert "" in corpus and " " in corpus
    assert any("<|im_start|>" in t for t in corpus) and any("<start_of_turn>" in t for t in corpus)


# ---------------------------------------------------------------- llama.cpp parity
def test_ids_match_llama_cpp(model):
    name, _, tok = model
    golden_path = GOLDEN / f"{name}.json"
    if not golden_path.exists():
        pytest.fail(f"{golden_path.name} missing: tests/golden/make_golden.py writes llama.cpp's ids")
    entries = json.loads(golden_path.read_text(encoding="utf-8"))["tokenize"]
    assert entries, f"{golden_path.name} has no tokenize entries"
    mismatches = []
    for entry in entries:  # made by llama.cpp with add_bos=True, special=True
        ours = tok.encode(entry["text"], add_special=True)
        if ours != entry["ids"]:
            mismatches.append(f"{entry['text']!r}:\n  llama.cpp {entry['ids']}\n  ours      {ours}")
    assert not mismatches, f"{len(mismatches)}/{len(entries)} texts differ:\n" + "\n".join(mismatches)


def test_known_ids_gemma(gemma_path):
    tok = _tokenizer(gemma_path)
    assert (tok.n_vocab, tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (262144, 2, 1, True, False)
    end_of_turn = tok.token_id("<end_of_turn>")
    assert {tok.eos_id, end_of_turn} <= tok.eog_ids
    assert tok.encode("<start_of_turn>user") == [2, tok.token_id("<start_of_turn>"), tok.token_id("user")]
    assert tok.encode("", add_special=True) == [2] and tok.encode("", add_special=False) == []
    # Gemma's user-defined whitespace tokens are cut out before merging, as llama.cpp does
    assert tok.encode("a  b", add_special=False)[1] == tok.token_id("  ")
    assert tok.encode("\n\n\n", add_special=False) == [tok.token_id("\n\n\n")]
    assert tok.token_bytes(tok.token_id("<0x0A>")) == b"\n"
    assert tok.token_bytes(tok.token_id("▁the")) == b" the"
    assert tok.token_bytes(end_of_turn) == b"" and tok.token_bytes(tok.bos_id) == b""


def test_known_ids_smollm(smollm_path):
    tok = _tokenizer(smollm_path)
    assert (tok.n_vocab, tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (49152, 1, 2, False, False)
    assert {tok.token_id("<|im_end|>"), tok.token_id("<|endoftext|>")} <= tok.eog_ids
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.token_id("<|im_start|>") and ids[-1] == tok.token_id("<|im_end|>")
    assert tok.encode("2024", add_special=False) == [tok.token_id(d) for d in "2024"]  # digits split singly
    assert tok.token_bytes(tok.token_id("Ġthe")) == b" the"
    assert tok.token_bytes(tok.token_id("Ċ")) == b"\n"


# ---------------------------------------------------------------- decoding
def test_decode_round_trip(model, corpus):
    _, _, tok = model
    for text in corpus:
        ids = tok.encode(text, add_special=False)
        # special tokens written in the text come back only when they are rendered
        assert tok.decode(ids, skip_special=False) == text, repr(text)
        if all(tok.token_bytes(i) for i in ids):  # no control tokens in the text
            assert tok.decode(ids) == text, repr(text)
            assert tok.decode(tok.encode(text)) == text, repr(text)  # the added BOS is dropped


def test_token_bytes_stream_matches_decode(model, corpus):
    _, _, tok = model
    for text in corpus:
        ids = tok.encode(text, add_special=True)
        streamed = b"".join(tok.token_bytes(i) for i in ids)
        assert streamed == tok.decode_bytes(ids)
        assert streamed.decode("utf-8") == tok.decode(ids)


def test_decode_rejects_bad_ids(model):
    _, _, tok = model
    for bad in (-1, tok.n_vocab):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode([bad])


# ---------------------------------------------------------------- cache
def test_cache_is_written_and_reused(model, corpus, tmp_path, monkeypatch):
    name, metadata, tok = model
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    cold = Tokenizer.from_metadata(metadata, cache_key=f"test-{name}")
    t_cold = time.perf_counter() - t0
    path = tmp_path / "tokenizers" / f"test-{name}.json"
    assert path.is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded, not rebuilt")

    monkeypatch.setattr(Tokenizer, "_build_hf", no_rebuild)
    t0 = time.perf_counter()
    warm = Tokenizer.from_metadata(metadata, cache_key=f"test-{name}")
    t_warm = time.perf_counter() - t0
    for text in corpus:
        assert warm.encode(text) == cold.encode(text) == tok.encode(text), repr(text)
    print(f"{name}: cold build {t_cold:.2f}s, cached load {t_warm:.2f}s")


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path))
    path = tmp_path / "tokenizers" / "tiny.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    tok = Tokenizer.from_metadata(_tiny_spm(), cache_key="tiny")
    assert tok.encode("ab") == [1, 9]
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    # a cache file of another vocabulary is not used either
    other = _tiny_spm()
    other["tokenizer.ggml.tokens"] = other["tokenizer.ggml.tokens"][:-1] + ["▁ba"]
    Tokenizer.from_metadata(other, cache_key="tiny")
    assert json.loads(path.read_text())["model"]["vocab"]["▁ba"] == 10
    # nor one built with another pre-tokenizer
    Tokenizer.from_metadata(_tiny_gpt2(), cache_key="tiny-gpt2")
    qwen2 = Tokenizer.from_metadata({**_tiny_gpt2(), "tokenizer.ggml.pre": "qwen2"}, cache_key="tiny-gpt2")
    assert qwen2.encode("12") == [7, 8]
    cached = json.loads((path.parent / "tiny-gpt2.json").read_text())
    assert cached["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == tokenizer_mod._QWEN2_RE


# ---------------------------------------------------------------- small hand-made vocabularies
def _tiny_spm() -> dict:
    tokens = ["<unk>", "<s>", "</s>", "<0x41>", "<0xC3>", "<0xA9>", "▁", "a", "b", "▁ab", "ab"]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0],
        "tokenizer.ggml.token_type": [2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }


def _tiny_gpt2() -> dict:
    tokens = ["<|endoftext|>", "<|im_end|>", "a", "b", "Ġ", "ab", "Ġab", "1", "2"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 1, 1, 1, 1, 1, 1, 1, 1],
        "tokenizer.ggml.merges": ["a b", "Ġ ab"],
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
    }


def test_tiny_spm():
    tok = Tokenizer.from_metadata(_tiny_spm())
    # llama defaults: BOS added, a space prefixed; "▁ab" wins over "ab" + "▁" by score order
    assert tok.add_bos and not tok.add_eos
    assert tok.encode("ab") == [1, 9]
    assert tok.encode("ab", add_special=False) == [9]
    # unknown characters fall back to their UTF-8 bytes
    assert tok.encode("é", add_special=False) == [6, 4, 5]
    # llama.cpp's detokenize drops the prefixed space, except after a BOS it removes
    assert tok.decode(tok.encode("ab é", add_special=False)) == "ab é"
    assert tok.decode(tok.encode("ab é")) == " ab é"
    assert tok.decode([1, 9], skip_special=False) == "<s> ab"


def test_tiny_gpt2_and_eog_detection():
    tok = Tokenizer.from_metadata(_tiny_gpt2())
    assert not tok.add_bos
    assert tok.encode(" ab12<|im_end|>") == [6, 7, 8, 1]
    # "<|im_end|>" is typed normal in this vocab; llama.cpp makes it a control token that ends generation
    assert tok.eog_ids == {0, 1}
    assert tok.token_bytes(1) == b"" and tok.decode([6, 1]) == " ab"


M = "tokenizer.ggml."


@pytest.mark.parametrize("change, message", [
    ({M + "model": "bert"}, f"'{M}model' = 'bert': expected 'llama' (SentencePiece) or 'gpt2' (BPE)"),
    ({M + "model": None}, f"'{M}model' is missing: expected 'llama' (SentencePiece) or 'gpt2' (BPE)"),
    ({M + "model": ["llama"]}, f"'{M}model' = ['llama']: expected a string"),
    ({M + "tokens": None}, f"'{M}tokens' is missing: expected an array of strings"),
    ({M + "tokens": []}, f"'{M}tokens' is empty: a vocabulary needs at least one token"),
    ({M + "tokens": "ab"}, f"'{M}tokens' = 'ab': expected an array of strings"),
    ({M + "tokens": ["a", 7]}, f"'{M}tokens' item #1 = 7: expected an array of strings"),
    ({M + "scores": [0.0] * 3}, f"'{M}scores' has 3 items: expected 11 (one per token of {M}tokens)"),
    ({M + "scores": None}, f"'{M}scores' is missing: expected an array of numbers (one per token, 11)"),
    ({M + "scores": 0.5}, f"'{M}scores' = 0.5: expected an array of numbers (one per token, 11)"),
    ({M + "scores": ["0"] * 11}, f"'{M}scores' item #0 = '0': expected an array of numbers (one per token, 11)"),
    ({M + "token_type": [1] * 12}, f"'{M}token_type' has 12 items: expected 11 (one per token of {M}tokens)"),
    ({M + "token_type": 3}, f"'{M}token_type' = 3: expected an array of integers (one per token, 11)"),
    ({M + "token_type": [1.0] * 11}, f"'{M}token_type' item #0 = 1.0: expected an array of integers (one per "
                                     f"token, 11)"),
    ({M + "token_type": [True] * 11}, f"'{M}token_type' item #0 = True: expected an array of integers (one per "
                                      f"token, 11)"),
    ({M + "bos_token_id": 11}, f"'{M}bos_token_id' = 11: expected a token id in [0, 11)"),
    ({M + "eos_token_id": -1}, f"'{M}eos_token_id' = -1: expected a token id in [0, 11)"),
    ({M + "eos_token_id": "2"}, f"'{M}eos_token_id' = '2': expected an integer"),
    ({M + "eot_token_id": 2.0}, f"'{M}eot_token_id' = 2.0: expected an integer"),
    ({M + "add_bos_token": "yes"}, f"'{M}add_bos_token' = 'yes': expected a bool"),
    ({M + "add_space_prefix": 1}, f"'{M}add_space_prefix' = 1: expected a bool"),
    ({M + "token_type": [2, 3, 3, 6, 6, 6, 1, 1, 6, 1, 1]},
     f"'{M}tokens' item #8 = 'b' has token_type 6 (a byte) but is not of the form <0xNN>"),
    ({M + "tokens": ["<unk>", "<s>", "</s>", "<0x4G>", "<0xC3>", "<0xA9>", "▁", "a", "b", "▁ab", "ab"]},
     f"'{M}tokens' item #3 = '<0x4G>' has token_type 6 (a byte) but is not of the form <0xNN>"),
    ({M + "tokens": ["<unk>", "<s>", "</s>", "<0x 1>", "<0xC3>", "<0xA9>", "▁", "a", "b", "▁ab", "ab"]},
     f"'{M}tokens' item #3 = '<0x 1>' has token_type 6 (a byte) but is not of the form <0xNN>"),
])
def test_bad_spm_metadata(change, message):
    """Each malformed value is a GGUFError naming the file, the key and what was expected."""
    with pytest.raises(GGUFError) as err:
        Tokenizer.from_metadata({**_tiny_spm(), **change}, source="m.gguf")
    assert str(err.value) == f"m.gguf: metadata {message}"


@pytest.mark.parametrize("change, message", [
    ({M + "merges": None}, f"'{M}merges' is missing: a gpt2 vocab needs an array of 'left right' merges"),
    ({M + "merges": "a b"}, f"'{M}merges' = 'a b': expected an array of strings"),
    ({M + "merges": ["a b", "ab"]}, f"'{M}merges' item #1 = 'ab': expected 'left right'"),
    ({M + "merges": ["a b", 1]}, f"'{M}merges' item #1 = 1: expected an array of strings"),
    ({M + "merges": ["a b", "z b"]}, f"'{M}merges' item #1 = 'z b': 'z' is not a token of the vocabulary"),
    ({M + "merges": ["b Ġ"]}, f"'{M}merges' item #0 = 'b Ġ': 'bĠ' is not a token of the vocabulary"),
    ({M + "pre": "no-such-pre"}, f"'{M}pre' = 'no-such-pre': not a pre-tokenizer of gpt2 vocabularies this "
                                 f"runtime knows (known: "),
    ({M + "pre": ["gpt2"]}, f"'{M}pre' = ['gpt2']: expected a string"),
])
def test_bad_gpt2_metadata(change, message):
    with pytest.raises(GGUFError) as err:
        Tokenizer.from_metadata({**_tiny_gpt2(), **change}, source="m.gguf")
    assert str(err.value).startswith(f"m.gguf: metadata {message}")


def test_errors_without_a_source_name_the_key_only():
    with pytest.raises(GGUFError, match=rf"^metadata '{M}tokens' is empty"):
        Tokenizer.from_metadata({**_tiny_gpt2(), M + "tokens": []})


def test_long_token_builds_quickly():
    """One 100000-character token in a SentencePiece vocabulary: splitting it at every position
    would take hours; only the splits into two token lengths are tried."""
    md = _tiny_spm()
    md[M + "tokens"] = md[M + "tokens"][:-1] + ["a" * 100_000]
    t0 = time.process_time()
    tok = Tokenizer.from_metadata(md)
    assert time.process_time() - t0 < 1.0
    assert tok.token_bytes(10) == b"a" * 100_000
    # the splits that can exist are still merges: "a" + "b" -> "ab" when both lengths occur
    assert tokenizer_mod._spm_merges({"a": 0, "b": 1, "ab": 2, "x" * 50: 3}, [0.0, 0.0, -1.0, -2.0]) == [("a", "b")]


def test_byte_tokens_are_parsed_at_load():
    tok = Tokenizer.from_metadata({**_tiny_spm(), M + "tokens": ["<unk>", "<s>", "</s>", "<0x41>", "<0xc3>",
                                                                 "<0xA9>", "▁", "a", "b", "▁ab", "ab"]})
    assert tok._pieces[3:6] == [b"A", b"\xc3", b"\xa9"]  # lower-case hex digits are bytes too (llama.cpp: strtol)
    assert tok.decode([4, 5]) == "é"


def test_other_pre_tokenizers_build():
    for pre in ("default", "gpt-2", "llama3", "llama-bpe", "qwen2"):
        tok = Tokenizer.from_metadata({**_tiny_gpt2(), "tokenizer.ggml.pre": pre})
        assert tok.decode(tok.encode(" ab ab12")) == " ab ab12"
    assert Tokenizer.from_metadata({**_tiny_gpt2(), "tokenizer.ggml.pre": "llama3"}).add_bos  # llama.cpp default


def test_spm_space_prefix_after_special_tokens():
    tok = Tokenizer.from_metadata(_tiny_spm())
    # llama.cpp cuts special tokens out first and prefixes a space to the text after each one
    assert tok.encode("ab</s>ab") == [1, 9, 2, 9]
    assert tok.encode("</s>ab</s>", add_special=False) == [2, 9, 2]
    # a long text takes the n-gram shortcut; the specials in it are still cut out
    long = "ab" * 600
    ids = tok.encode(long + "</s>ab<s>ab")
    assert ids[-4:] == [2, 9, 1, 9] and ids[:2] == [1, 9]
    assert tok.decode(ids, skip_special=False) == "<s> " + long + "</s> ab<s> ab"


def test_spm_encode_edges():
    tok = Tokenizer.from_metadata(_tiny_spm())
    assert tok.encode("", add_special=False) == [] and tok.encode("") == [1]
    no_prefix = Tokenizer.from_metadata({**_tiny_spm(), "tokenizer.ggml.add_space_prefix": False})
    assert no_prefix.encode("ab") == [1, 10]  # no "▁" in front: the "ab" token, not "▁ab"
    with_eos = Tokenizer.from_metadata({**_tiny_spm(), "tokenizer.ggml.add_eos_token": True})
    assert with_eos.add_eos and with_eos.encode("ab") == [1, 9, 2]


def test_spm_decode_edges():
    tok = Tokenizer.from_metadata(_tiny_spm())
    assert tok.decode([]) == "" and tok.decode_bytes([]) == b""
    assert tok.decode([9, 1, 9]) == "ab ab"  # only a leading BOS is dropped (with the first space kept)
    assert tok.decode_bytes([1, 9]) == b" ab"  # skip_special by default
    assert tok.decode([4]) == "\ufffd"  # half a UTF-8 character is replaced, not an error
    with_eos = Tokenizer.from_metadata({**_tiny_spm(), "tokenizer.ggml.add_eos_token": True})
    assert with_eos.decode([9, 9, 2]) == "ab ab" and with_eos.decode([9, 2, 9]) == "ab ab"
    assert with_eos.decode([9, 8]) == "abb"
    # a trailing EOS is dropped only when the vocab adds one: here EOS is an ordinary token
    plain_eos = {**_tiny_spm(), "tokenizer.ggml.eos_token_id": 8}
    assert Tokenizer.from_metadata(plain_eos).decode([7, 8]) == "ab"
    assert Tokenizer.from_metadata({**plain_eos, "tokenizer.ggml.add_eos_token": True}).decode([7, 8]) == "a"


def test_token_bytes_of_every_kind():
    md = _tiny_gpt2()
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"] + ["<tool>", "☺", "unused"]
    md["tokenizer.ggml.token_type"] = md["tokenizer.ggml.token_type"] + [4, 1, 5]
    tok = Tokenizer.from_metadata(md)
    assert tok.token_bytes(9) == b"<tool>"  # user-defined: its text
    assert tok.token_bytes(10) == "☺".encode()  # outside the byte table: its own UTF-8
    assert tok.token_bytes(11) == b"" and tok.token_bytes(11) == b""  # unused: nothing (also when cached)
    assert tok.token_bytes(0) == b"" and tok.decode([0], skip_special=False) == "<|endoftext|>"
    assert tok.token_bytes(4) == b" " and tok.token_bytes(2) == b"a"
    for bad in (-1, 12, 2.0):
        with pytest.raises(ValueError, match=rf"^token id {bad!r} out of range: expected 0 <= id < 12$"):
            tok.token_bytes(bad)


def test_clean_up_spaces_as_llama_cpp():
    md = _tiny_gpt2()
    extra = ["?", "!", ".", ",", "'", "s", "m", "re", "ve", "S", "x"]
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"] + extra
    md["tokenizer.ggml.token_type"] = md["tokenizer.ggml.token_type"] + [1] * len(extra)
    ids = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
    sp = ids["Ġ"]

    def spaced(*texts):
        return [i for t in texts for i in (sp, ids[t])]

    clean = Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "default"})
    assert clean.decode([ids["a"]] + spaced("?", "!", ".", ",")) == "a?!.,"
    assert clean.decode([ids["a"]] + spaced("'") + [sp, ids["b"]]) == "a'b"
    for tail in ("s", "m", "re", "ve"):
        assert clean.decode([ids["a"]] + spaced("'") + [ids[tail]]) == f"a'{tail}"
    for tail in ("S", "x"):
        assert clean.decode([ids["a"]] + spaced("'") + [ids[tail]]) == f"a '{tail}"
    raw = Tokenizer.from_metadata(md)  # smollm: no clean-up
    assert raw.decode([ids["a"]] + spaced("?", "'") + [ids["s"]]) == "a ? 's"


def test_cache_is_used_only_for_the_same_vocab_and_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path))
    path = tmp_path / "tokenizers" / "k.json"
    gpt2 = _tiny_gpt2()
    swapped = list(gpt2["tokenizer.ggml.tokens"])
    swapped[2], swapped[3] = swapped[3], swapped[2]
    variants = [
        gpt2,
        {**gpt2, "tokenizer.ggml.pre": "llama3"},  # another pre-tokenizer
        {**gpt2, "tokenizer.ggml.pre": "dbrx"},  # the same regexes, but merges not ignored
        {**gpt2, "tokenizer.ggml.tokens": swapped},  # the same size, other texts
        {**gpt2, "tokenizer.ggml.tokens": gpt2["tokenizer.ggml.tokens"] + ["zz"],
         "tokenizer.ggml.token_type": gpt2["tokenizer.ggml.token_type"] + [1]},  # one token more
        _tiny_spm(),  # SentencePiece: a normalizer, byte fallback
    ]  # (merges and scores are not compared: the cache key, a digest of the file's header, covers them)
    for md in variants:
        tok = Tokenizer.from_metadata(md, cache_key="k")
        fresh = Tokenizer.from_metadata(md)
        assert json.loads(path.read_text()) == json.loads(fresh._hf.to_str()), md  # rebuilt for this vocab
        assert tok.encode("ab 12 ab") == fresh.encode("ab 12 ab")
    built = path.read_text()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded, not rebuilt")

    monkeypatch.setattr(Tokenizer, "_build_hf", no_rebuild)
    assert Tokenizer.from_metadata(variants[-1], cache_key="k").encode("ab") == [1, 9]
    assert path.read_text() == built
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others sharing the cache


def test_cache_write_failure_leaves_no_temporary_file(tmp_path, monkeypatch):
    """The cache only saves time: a tokenizer that cannot be written there is still returned."""
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path))

    def full_disk(self, path, *args):
        open(path, "w").write("{half")
        raise Exception("No space left on device (os error 28)")  # what tokenizers raises

    monkeypatch.setattr(HFTokenizer, "save", full_disk)
    assert Tokenizer.from_metadata(_tiny_spm(), cache_key="k").encode("ab") == [1, 9]
    assert list((tmp_path / "tokenizers").iterdir()) == []


def test_cache_that_cannot_be_created_is_skipped(tmp_path, monkeypatch):
    # (a read-only cache directory, as root meets it nowhere: a file where the directory should be)
    (tmp_path / "tokenizers").write_text("not a directory")
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path))
    assert Tokenizer.from_metadata(_tiny_spm(), cache_key="k").encode("ab") == [1, 9]
    assert (tmp_path / "tokenizers").read_text() == "not a directory"


def test_spm_merges_follow_scores():
    # "▁a" and "ab" compete for the "a" of "▁ab": the higher-scored merge wins, as in llama.cpp
    tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab"]
    md = {**_tiny_spm(), "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1]}
    first = Tokenizer.from_metadata({**md, "tokenizer.ggml.scores": [0.0] * 3 + [-5.0, -6.0, -7.0, -1.0, -2.0]})
    assert first.encode("ab", add_special=False) == [6, 5]
    second = Tokenizer.from_metadata({**md, "tokenizer.ggml.scores": [0.0] * 3 + [-5.0, -6.0, -7.0, -2.0, -1.0]})
    assert second.encode("ab", add_special=False) == [3, 7]


def test_vocab_defaults_and_renames():
    spm = _tiny_spm()
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        del spm[key]
    tok = Tokenizer.from_metadata(spm)  # llama.cpp's SPM defaults: bos 1, eos 2, unk 0
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    assert tok.encode("z", add_special=False) == [6, 0]  # no byte token for "z": the unknown token
    assert Tokenizer.from_metadata({**_tiny_spm(), "tokenizer.ggml.add_bos_token": False}).encode("ab") == [9]
    gpt2 = _tiny_gpt2()
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.token_type",
                "tokenizer.ggml.pre"):
        del gpt2[key]
    gpt2["tokenizer.ggml.tokens"] = gpt2["tokenizer.ggml.tokens"] + ["", "x", "y", "z"]
    tok = Tokenizer.from_metadata(gpt2)  # gpt2 defaults: bos = eos = 11, "default" pre-tokenizer, all normal
    assert (tok.bos_id, tok.eos_id, tok.clean_spaces) == (11, 11, True)
    assert tok.tokens[9] == "[EMPTY_9]" and tok.types == [3, 3] + [1] * 11  # (the two end-of-text texts: control)
    with pytest.raises(GGUFError, match=r"^metadata 'tokenizer\.ggml\.tokens' is empty: a vocabulary needs at least one "
                                        r"token$"):
        Tokenizer.from_metadata({**_tiny_gpt2(), "tokenizer.ggml.tokens": []})


def test_spm_does_not_clean_up_spaces():
    md = _tiny_spm()
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"] + ["?"]
    md["tokenizer.ggml.scores"] = md["tokenizer.ggml.scores"] + [-6.0]
    md["tokenizer.ggml.token_type"] = md["tokenizer.ggml.token_type"] + [1]
    assert Tokenizer.from_metadata(md).decode([7, 6, 11]) == "a ?"


def test_ignore_merges_takes_whole_words_from_the_vocab():
    md = _tiny_gpt2()
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"] + ["ba"]  # no merge makes "ba"
    md["tokenizer.ggml.token_type"] = md["tokenizer.ggml.token_type"] + [1]
    assert Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "llama3"}).encode("ba") == [0, 9]  # BOS, "ba"
    assert Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "dbrx"}).encode("ba") == [3, 2]


@pytest.mark.parametrize("merge", [1, " ab", "ab"])
def test_bad_merge_is_named(merge):
    with pytest.raises(GGUFError, match=rf"'tokenizer\.ggml\.merges' item #1 = {re.escape(repr(merge))}: expected"):
        Tokenizer.from_metadata({**_tiny_gpt2(), "tokenizer.ggml.merges": ["a b", merge]})


def _special_vocab(extra: list[str], **ids) -> Tokenizer:
    """The tiny gpt2 vocab plus `extra` texts (typed normal), ids given by text: eot="x1" -> eot_token_id."""
    md = _tiny_gpt2()
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"] + extra
    md["tokenizer.ggml.token_type"] = md["tokenizer.ggml.token_type"] + [NORMAL_TYPE] * len(extra)
    for key, text in ids.items():
        md[f"tokenizer.ggml.{key}_token_id"] = md["tokenizer.ggml.tokens"].index(text)
    return Tokenizer.from_metadata(md)


NORMAL_TYPE, CONTROL_TYPE, USER_DEFINED_TYPE = 1, 3, 4


@pytest.mark.parametrize("extra, ids, eog, types", [
    # end-of-generation ids from the metadata, whatever their text
    (["x1", "x2", "x3", "x4", "x5", "x6"], dict(eot="x1", eom="x2", fim_pad="x3", fim_rep="x4", fim_sep="x5"),
     {"x1", "x2", "x3", "x4", "x5"}, {"x6": NORMAL_TYPE}),
    (["x1"], dict(eos="x1"), {"x1"}, {}),
    # an id from the metadata wins over a text found by name; found ones become control tokens
    (["x1", "<|eot_id|>", "<|fim_prefix|>"], dict(eot="x1"), {"x1", "<|eot_id|>"},
     {"x1": NORMAL_TYPE, "<|eot_id|>": CONTROL_TYPE, "<|fim_prefix|>": CONTROL_TYPE}),
    (["<|file_sep|>", "<|eom_id|>"], {}, {"<|file_sep|>", "<|eom_id|>"}, {"<|file_sep|>": CONTROL_TYPE}),
    # gpt-oss: these texts are user-defined
    (["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"], {}, set(),
     {t: USER_DEFINED_TYPE for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")}),
    # o200k_harmony: with <|call|> and <|return|> or <|flush|>, <|end|> does not end generation
    (["<|end|>", "<|call|>", "<|return|>"], {}, {"<|call|>", "<|return|>"}, {"<|end|>": USER_DEFINED_TYPE}),
    (["<|end|>", "<|calls|>", "<|flush|>"], {}, {"<|calls|>", "<|flush|>"}, {"<|end|>": USER_DEFINED_TYPE}),
    (["<|end|>", "<|return|>"], {}, {"<|end|>", "<|return|>"}, {"<|end|>": CONTROL_TYPE}),
    (["<|end|>", "<|call|>"], {}, {"<|end|>", "<|call|>"}, {"<|end|>": CONTROL_TYPE}),
    (["<|call|>", "<|return|>"], {}, {"<|call|>", "<|return|>"}, {}),
    # </s> is an ordinary token next to <|tool_response> or a <|plamo:eos|> eos
    (["</s>", "<|tool_response>"], {}, {"<|tool_response>"}, {"</s>": NORMAL_TYPE}),
    (["</s>", "<|plamo:eos|>"], dict(eos="<|plamo:eos|>"), {"<|plamo:eos|>"}, {"</s>": NORMAL_TYPE}),
    (["</s>"], {}, {"</s>"}, {"</s>": CONTROL_TYPE}),
    (["<|tool_response>"], {}, {"<|tool_response>"}, {}),
])
def test_end_of_generation_as_llama_cpp(extra, ids, eog, types):
    tok = _special_vocab(extra, **ids)
    assert {tok.tokens[i] for i in tok.eog_ids} == eog | {"<|endoftext|>", "<|im_end|>"}  # (the tiny vocab's own)
    for text, kind in types.items():
        assert tok.types[tok.token_id(text)] == kind, text
