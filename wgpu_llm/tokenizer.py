"""Tokenizer built from a GGUF file's vocabulary metadata, matching llama.cpp token for token.

The merge work is done by HuggingFace ``tokenizers`` (a Rust BPE model); the parts that are
specific to llama.cpp are reproduced here in Python:

* special-token partitioning: before any merging, llama.cpp cuts every control, user-defined
  and unknown token out of the raw text, longest token text first (``tokenizer_st_partition``);
  each remaining fragment is then tokenized on its own;
* SPM ("llama") vocabularies carry scores, not merges. llama.cpp repeatedly merges the adjacent
  pair whose concatenation is the vocab token with the highest score. A BPE model whose merge
  list contains every (left, right) split of every token, ranked by the merged token's score,
  does the same (this is how transformers converts GGUF llama vocabs); unknown characters fall
  back to the ``<0xXX>`` byte tokens;
* "gpt2" byte-level BPE vocabularies split the text with the pre-tokenizer regexes that
  llama.cpp associates with ``tokenizer.ggml.pre``, each regex applied in turn with its matches
  isolated; where llama.cpp's own regex engine reads a regex otherwise than the original tokenizer
  would (no upper/lower-case classes outside ASCII, no "~" among the symbols), it is written here as
  llama.cpp reads it. A name not listed is refused;
* BOS/EOS insertion, end-of-generation ids and detokenization follow ``llama-vocab.cpp``.
"""

from __future__ import annotations

import numbers
import os
import re
import tempfile

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

from .gguf_file import GGUFError

# tokenizer.ggml.token_type values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_RE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
              r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
             r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Tekken's and GPT-4o's upper/lower-case letter runs as llama.cpp rewrites them: its regex engine
# knows no \p{Lu}/\p{Ll}, so a letter outside ASCII counts as both upper and lower case.
_TEKKEN_RE = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
              r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
              r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_RE = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
             r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
             r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
             r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
             r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek's letters: the cased scripts, by range as llama.cpp lists them (escaped: characters that
# Unicode normalization would replace, e.g. the Ohm sign)
_DEEPSEEK_LETTERS = (
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅ"
    "ὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿ"
    "ⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃")
_DEEPSEEK_CJK = "[一-龥ࠀ-一가-\ud7ff]+"  # U+0800..U+4E00 holds much more than CJK: kept as llama.cpp has it
_SEED_CODER_RE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}"
                  r"| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+")
_BAILINGMOE_RE = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
_PORO_RE = " ?[^(\\s|.,!?…。，、।۔،)]+"
# llama.cpp's \p{S} leaves out "~" (its ASCII symbols are $+<=>^`|), so here it is \p{S} less "~"
_DEEPSEEK3_RE = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}[\p{S}&&[^~]]]?[\p{L}\p{M}]+"
                 r"| ?[\p{P}[\p{S}&&[^~]]]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_REGEXES = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt2": [_GPT2_RE],
    "starcoder": [r"\p{N}", _GPT2_RE],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_RE, r"[0-9][0-9][0-9]"],
    "llama3": [_LLAMA3_RE],
    "qwen2": [_QWEN2_RE],
    "tekken": [_TEKKEN_RE],
    "gpt-4o": [_GPT4O_RE],
    # llama.cpp's "\s+$" matches at the end of each piece (std::regex, one piece at a time);
    # Oniguruma's "$" also matches before a newline, hence "\z"
    "deepseek-llm": ["[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+", "\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+", r"\s+\z",
                     _DEEPSEEK_CJK, r"\p{N}+"],
    "deepseek-coder": ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _DEEPSEEK_CJK, r"\p{N}"],
    "deepseek-v3": [r"\p{N}{1,3}", "[一-龥\u3040-ゟ゠-ヿ]+", _DEEPSEEK3_RE],
    "seed-coder": [_SEED_CODER_RE],
    "bailingmoe": [_BAILINGMOE_RE],
    "poro": [_PORO_RE],
    "viking": [_PORO_RE, r"\p{N}"],
}
# tokenizer.ggml.pre -> (regex set, clean_spaces, ignore_merges, default add_bos), as in llama-vocab.cpp;
# tests/golden/make_pretok_golden.py checks every name against llama.cpp (which knows "gpt-2", not "gpt2")
_PRE_TYPES = {
    "default": ("default", True, False, False),
    "gpt-2": ("gpt2", True, False, False),
    "phi-2": ("gpt2", True, False, False),
    "mpt": ("gpt2", True, False, False),
    "olmo": ("gpt2", True, False, False),
    "jais": ("gpt2", True, False, False),
    "jina-es": ("gpt2", True, False, False),
    "jina-de": ("gpt2", True, False, False),
    "jina-v2-es": ("gpt2", True, False, False),
    "jina-v2-de": ("gpt2", True, False, False),
    "a.x-4.0": ("gpt2", True, False, False),
    "mellum": ("gpt2", True, False, False),
    "exaone4": ("gpt2", True, False, False),
    "trillion": ("gpt2", False, False, False),
    "falcon": ("falcon", True, False, False),
    "smollm": ("starcoder", False, False, False),
    "starcoder": ("starcoder", True, False, False),
    "refact": ("starcoder", True, False, False),
    "codeshell": ("starcoder", True, False, False),
    "exaone": ("starcoder", True, False, False),
    "minerva-7b": ("starcoder", True, False, False),
    "command-r": ("starcoder", False, False, False),
    "llama3": ("llama3", True, True, True),
    "llama-v3": ("llama3", True, True, True),
    "llama-bpe": ("llama3", True, True, True),
    "falcon3": ("llama3", True, True, True),
    "falcon-h1": ("llama3", True, True, True),
    "pixtral": ("llama3", True, True, True),
    "midm-2.0": ("llama3", True, True, True),
    "lfm2": ("llama3", True, True, True),
    "dbrx": ("llama3", True, False, False),
    "smaug-bpe": ("llama3", True, False, False),
    "qwen2": ("qwen2", False, False, False),
    "deepseek-r1-qwen": ("qwen2", False, False, False),
    "megrez": ("qwen2", True, False, False),
    "stablelm2": ("qwen2", True, False, False),
    "tekken": ("tekken", False, True, True),
    "gpt-4o": ("gpt-4o", False, False, False),
    "llama4": ("gpt-4o", False, False, False),
    "deepseek-llm": ("deepseek-llm", False, False, False),
    "deepseek-coder": ("deepseek-coder", False, False, False),
    "deepseek-v3": ("deepseek-v3", False, False, False),
    "hunyuan-dense": ("deepseek-v3", False, False, False),
    "hunyuan": ("qwen2", False, False, False),
    "seed-coder": ("seed-coder", False, False, False),
    "bailingmoe": ("bailingmoe", False, False, False),
    "poro-chat": ("poro", False, False, False),
    "bloom": ("poro", True, False, False),
    "gpt3-finnish": ("poro", True, False, False),
    "viking": ("viking", False, False, False),
}

# Token texts that llama.cpp treats as end of generation (and forces to control type).
_EOG_TEXTS = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
}
# Other token texts llama.cpp detects by name when the metadata gives no id; all become control,
# and the fim pad/repo/sep ones also end generation.
_DETECTED_TEXTS = {
    "eot": {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
            "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"},
    "eom": {"<|eom_id|>"},
    "fim_pre": {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"},
    "fim_suf": {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"},
    "fim_mid": {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"},
    "fim_pad": {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
    "fim_rep": {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
    "fim_sep": {"<|file_sep|>"},
}
_LEGACY_ID_KEYS = {"fim_pre": "prefix", "fim_suf": "suffix", "fim_mid": "middle"}
_P = "tokenizer.ggml."
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable character table."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


def _spm_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of every token into two vocab tokens, best merged-token score first.

    Only the split points where both sides have the length of some token are tried: the work is
    (number of distinct token lengths) per token, not the square of the token's length (one token
    of 100000 characters would otherwise take hours)."""
    lengths = {len(t) for t in vocab}
    split_at = sorted(lengths)
    merges = []
    for text, tid in vocab.items():
        score = scores[tid]
        n = len(text)
        for k in split_at:
            if k >= n:
                break
            if n - k in lengths:
                left, right = text[:k], text[k:]
                if left in vocab and right in vocab:
                    merges.append((-score, vocab[left], vocab[right], left, right))
    # Equal scores (llama.cpp then prefers the leftmost pair) fall back to id order here; real SPM
    # vocabularies give their normal tokens distinct scores, so this only orders control/byte tokens.
    merges.sort()
    return [(m[3], m[4]) for m in merges]


class _Fields:
    """Typed reads of the tokenizer metadata. A missing or malformed value is a GGUFError naming the
    file (when known), the key and what was expected, raised before anything is built from it."""

    _KINDS = {str: "string", int: "integer", float: "number"}

    def __init__(self, metadata: dict, source):
        self.md, self.prefix = metadata, f"{source}: " if source is not None else ""

    def fail(self, key: str, what: str) -> GGUFError:
        return GGUFError(f"{self.prefix}metadata {key!r} {what}")

    def string(self, key: str) -> str | None:
        value = self.md.get(key)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, f"= {_short(value)}: expected a string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.md.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"= {_short(value)}: expected a bool")
        return value

    def integer(self, key: str) -> int | None:
        value = self.md.get(key)
        if value is not None and not _is_int(value):
            raise self.fail(key, f"= {_short(value)}: expected an integer")
        return None if value is None else int(value)

    def array(self, key: str, kind: type, n: int | None = None, default: list | None = None,
              missing: str | None = None) -> list:
        """A list of `kind` items (float: any number), of n items when n is given; `default` when the
        key is absent, or with no default an error (`missing`: what to say)."""
        value = self.md.get(key)
        what = f"an array of {self._KINDS[kind]}s" + (f" (one per token, {n})" if n is not None else "")
        if value is None:
            if default is None:
                raise self.fail(key, f"is missing: {missing or 'expected ' + what}")
            return default
        if not isinstance(value, (list, tuple)):
            raise self.fail(key, f"= {_short(value)}: expected {what}")
        if n is not None and len(value) != n:
            raise self.fail(key, f"has {len(value)} items: expected {n} (one per token of {_P}tokens)")
        exact = {str: (str,), int: (int,), float: (float, int)}[kind]
        if not all(type(v) in exact for v in value):  # the fast check (GGUF arrays are of one type) failed
            good = {str: lambda v: isinstance(v, str), int: _is_int,
                    float: lambda v: _is_int(v) or isinstance(v, numbers.Real) and not isinstance(v, bool)}[kind]
            for i, item in enumerate(value):
                if not good(item):
                    raise self.fail(key, f"item #{i} = {_short(item)}: expected {what}")
        return list(value)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Tokenizer:
    """GGUF vocabulary tokenizer; ``encode`` gives the ids llama.cpp gives with parse_special=True."""

    def __init__(self, metadata: dict, hf: HFTokenizer | None = None, source: str | os.PathLike | None = None):
        """metadata: the GGUF file's; hf: a tokenizer built before for the same vocabulary (the cache);
        source: the file, named in every error (a GGUFError naming the key and what is wrong)."""
        md = _Fields(metadata, source)
        self.model = md.string(_P + "model")
        if self.model not in ("llama", "gpt2"):
            raise md.fail(_P + "model", f"= {self.model!r}: expected 'llama' (SentencePiece) or 'gpt2' (BPE)"
                          if self.model is not None else "is missing: expected 'llama' (SentencePiece) or 'gpt2' (BPE)")
        self.spm = self.model == "llama"
        tokens = md.array(_P + "tokens", str)
        if not tokens:
            raise md.fail(_P + "tokens", "is empty: a vocabulary needs at least one token")
        n = self.n_vocab = len(tokens)
        # llama.cpp renames empty tokens so that every text is unique and non-empty
        self.tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.types = md.array(_P + "token_type", int, n, [NORMAL] * n)
        self.scores = md.array(_P + "scores", float, n, None if self.spm else [0.0] * n)

        pre = md.string(_P + "pre") or "default"
        regex_set = None
        if self.spm:
            self.clean_spaces, ignore_merges, default_bos = False, False, True
        elif pre in _PRE_TYPES:
            regex_set, self.clean_spaces, ignore_merges, default_bos = _PRE_TYPES[pre]
        else:
            raise md.fail(_P + "pre", f"= {pre!r}: not a pre-tokenizer of gpt2 vocabularies this runtime knows "
                                      f"(known: {', '.join(sorted(_PRE_TYPES))})")
        self.add_space_prefix = md.flag(_P + "add_space_prefix", self.spm)
        self.add_bos = md.flag(_P + "add_bos_token", default_bos)
        self.add_eos = md.flag(_P + "add_eos_token", False)

        # token id lookups; as in llama.cpp a duplicated text maps to its last id
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        defaults = {"bos": 1, "eos": 2, "unk": 0} if self.spm else {"bos": 11, "eos": 11}
        ids = {}
        for name, stem in [("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("eot", "eot"), ("eom", "eom"),
                          ("fim_pre", "fim_pre"), ("fim_suf", "fim_suf"), ("fim_mid", "fim_mid"),
                          ("fim_pad", "fim_pad"), ("fim_rep", "fim_rep"), ("fim_sep", "fim_sep")]:
            key = f"{_P}{stem}_token_id"
            if key not in metadata:
                key = f"{_P}{_LEGACY_ID_KEYS.get(name, stem)}_token_id"
            value = md.integer(key)
            if value is not None and not 0 <= value < n:
                if name in ("bos", "eos"):
                    raise md.fail(key, f"= {value}: expected a token id in [0, {n})")
                value = None  # llama.cpp ignores an out-of-range optional id
            if value is None and defaults.get(name, n) < n:
                value = defaults[name]
            ids[name] = value
        self.bos_id, self.eos_id, self.unk_id = ids["bos"], ids["eos"], ids["unk"]
        if self.add_bos and self.bos_id is None:
            raise md.fail(_P + "add_bos_token", f"is true but the vocab has no {_P}bos_token_id")
        if self.add_eos and self.eos_id is None:
            raise md.fail(_P + "add_eos_token", f"is true but the vocab has no {_P}eos_token_id")
        self._find_special_tokens(ids)

        # special-token partition order: longest UTF-8 text first (llama.cpp's cache_special_tokens)
        special = [i for i, t in enumerate(self.types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
        self._special = sorted(((self.tokens[i], i) for i in special), key=lambda p: (-len(p[0].encode()), p[1]))
        self._pieces: list[bytes | None] = [None] * n  # token_bytes cache
        self._parse_byte_tokens(md)
        merges = None if self.spm else self._gpt2_merges(md)
        self._regex_set, self._ignore_merges = regex_set, ignore_merges
        self._hf = hf if hf is not None else self._build_hf(merges)

    def _parse_byte_tokens(self, md: _Fields) -> None:
        """A byte token stands for the byte its text `<0xNN>` names: parsed here, so that a text of
        another form fails at load and not when the token is first generated."""
        for i, kind in enumerate(self.types):
            if kind == BYTE:
                text = self.tokens[i]
                if not _BYTE_TOKEN.fullmatch(text):
                    raise md.fail(_P + "tokens", f"item #{i} = {_short(text)} has token_type {BYTE} (a byte) but is "
                                                 f"not of the form <0xNN>")
                self._pieces[i] = bytes([int(text[3:5], 16)])

    def _gpt2_merges(self, md: _Fields) -> list[tuple[str, str]]:
        """'left right' pairs; both sides and what they merge into must be tokens (the BPE model
        cannot hold a merge of texts it does not know)."""
        key = _P + "merges"
        merges = md.array(key, str, missing="a gpt2 vocab needs an array of 'left right' merges")
        pairs = []
        for i, m in enumerate(merges):
            pos = m.find(" ", 1)  # as llama.cpp: the first space after position 0
            if pos < 0:
                raise md.fail(key, f"item #{i} = {_short(m)}: expected 'left right'")
            left, right = m[:pos], m[pos + 1:]
            for text in (left, right, left + right):
                if text not in self._ids:
                    raise md.fail(key, f"item #{i} = {_short(m)}: {_short(text)} is not a token of the vocabulary")
            pairs.append((left, right))
        return pairs

    def _find_special_tokens(self, ids: dict) -> None:
        """End-of-generation ids and token type fix-ups, as llama.cpp's load_vocab does them."""
        types = self.types = list(self.types)
        for name, texts in _DETECTED_TEXTS.items():
            if ids.get(name) is None:
                found = sorted(self._ids[t] for t in texts if t in self._ids)
                if found:  # llama.cpp takes whichever its hash map yields first; take the lowest id
                    ids[name] = found[0]
                    types[found[0]] = CONTROL
        for text in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss
            if text in self._ids:
                types[self._ids[text]] = USER_DEFINED
        eog = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep", "eos", "eot", "eom") if ids.get(k) is not None}
        for text in _EOG_TEXTS & self._ids.keys():
            eog.add(self._ids[text])
            types[self._ids[text]] = CONTROL
        texts = {self.tokens[i] for i in eog}
        has_call = bool(texts & {"<|call|>", "<|calls|>"})
        if "<|end|>" in texts and has_call and texts & {"<|return|>", "<|flush|>"}:
            eog.discard(self._ids["<|end|>"])  # o200k_harmony / solar-open: <|end|> does not end generation
            types[self._ids["<|end|>"]] = USER_DEFINED
        if "</s>" in texts and texts & {"<|tool_response>", "<|plamo:eos|>"}:
            eog.discard(self._ids["</s>"])
            types[self._ids["</s>"]] = NORMAL
        self.eog_ids: set[int] = eog

    # ------------------------------------------------------------------ building
    def _pipeline(self, hf: HFTokenizer) -> None:
        """Set the text-processing stages around the BPE model."""
        if self.spm:
            # no pre-tokenizer: SPM merges across spaces; the optional leading space is added in encode()
            hf.normalizer = normalizers.Replace(" ", "▁")
            hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        else:
            hf.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _PRE_REGEXES[self._regex_set]]
                + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            hf.decoder = decoders.ByteLevel()

    def _build_hf(self, merges: list[tuple[str, str]] | None) -> HFTokenizer:
        vocab = dict(self._ids)
        if self.spm:
            unk = self.tokens[self.unk_id] if self.unk_id is not None else None
            model = BPE(vocab, _spm_merges(vocab, self.scores), unk_token=unk, byte_fallback=True)
        else:
            model = BPE(vocab, merges, ignore_merges=self._ignore_merges)
        hf = HFTokenizer(model)
        self._pipeline(hf)
        # Make the serialized tokenizer usable on its own; encode() partitions special tokens itself.
        hf.add_special_tokens([AddedToken(t, special=self.types[i] != USER_DEFINED, normalized=False)
                               for t, i in sorted(self._special, key=lambda p: p[1])])
        return hf

    def _cache_matches(self) -> bool:
        """Whether a tokenizer loaded from the cache was built for this vocabulary by this code."""
        hf, expected = self._hf, HFTokenizer(BPE())
        self._pipeline(expected)
        for stage in ("normalizer", "pre_tokenizer", "decoder"):
            got, want = getattr(hf, stage), getattr(expected, stage)
            if (got is None) != (want is None) or (got is not None and got.__getstate__() != want.__getstate__()):
                return False
        model = hf.model
        if not isinstance(model, BPE) or (model.byte_fallback, model.ignore_merges) != (self.spm, self._ignore_merges):
            return False
        if hf.get_vocab_size(with_added_tokens=True) != len(self._ids):
            return False
        step = max(1, self.n_vocab // 97)
        return all(hf.id_to_token(i) == self.tokens[i] for i in range(0, self.n_vocab, step)
                   if self._ids[self.tokens[i]] == i)

    @classmethod
    def from_metadata(cls, metadata: dict, cache_key: str | None = None,
                      source: str | os.PathLike | None = None) -> Tokenizer:
        """Build from GGUF metadata; with ``cache_key`` the HF tokenizer JSON is cached on disk.
        source: the file the metadata comes from, named in errors."""
        if cache_key is None:
            return cls(metadata, source=source)
        from wgpu_llm import zoo

        path = zoo.cache_dir() / "tokenizers" / f"{cache_key}.json"
        if path.exists():
            try:
                tok = cls(metadata, hf=HFTokenizer.from_file(str(path)), source=source)
                if tok._cache_matches():
                    return tok
            except Exception:  # corrupt or stale cache file (or bad metadata, raised again below): rebuild
                pass
        tok = cls(metadata, source=source)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        except OSError:  # a read-only cache: the tokenizer is built again next time, nothing is lost
            return tok
        os.close(fd)
        try:
            tok._hf.save(tmp)
            os.chmod(tmp, 0o644)  # mkstemp creates it private
            os.replace(tmp, path)  # atomic, so concurrent readers never see half a file
        except Exception:  # a full disk (tokenizers raises a plain Exception): the cache is only a shortcut
            pass
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return tok

    # ------------------------------------------------------------------ encoding
    def token_id(self, text: str) -> int | None:
        """Id of the token whose text is exactly ``text`` (e.g. "<end_of_turn>"), or None."""
        return self._ids.get(text)

    def _partition(self, text: str) -> list[str | int]:
        """Split text around special tokens (llama.cpp tokenizer_st_partition, parse_special=True)."""
        specials = self._special
        if len(text) > 1024:
            # skip the ~6k `in` scans of a long text for tokens whose first 4 characters never occur
            grams = {text[i:i + 4] for i in range(len(text) - 3)}
            specials = [(s, i) for s, i in specials if len(s) < 4 or s[:4] in grams]
        parts: list[str | int] = [text]
        for special, tid in specials:
            if special not in text:
                continue
            out: list[str | int] = []
            for part in parts:
                if isinstance(part, int) or special not in part:
                    out.append(part)
                    continue
                for k, piece in enumerate(part.split(special)):
                    if k:
                        out.append(tid)
                    if piece:
                        out.append(piece)
            parts = out
        return parts

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids: list[int] = []
        if add_special and self.add_bos:
            ids.append(self.bos_id)
        prev_special = True
        for part in self._partition(text) if text else []:
            if isinstance(part, int):
                ids.append(part)
                prev_special = True
                continue
            if self.spm and self.add_space_prefix and prev_special:
                part = " " + part  # llama.cpp prefixes a space at the start and after each special token
            # (encode_batch would be no faster on these fragments and starts a thread pool)
            ids.extend(self._hf.encode(part, add_special_tokens=False).ids)
            prev_special = False
        if add_special and self.add_eos:
            ids.append(self.eos_id)
        return ids

    # ------------------------------------------------------------------ decoding
    def _piece(self, token_id: int, special: bool) -> bytes:
        """llama.cpp token_to_piece: the bytes a token stands for."""
        if not (isinstance(token_id, numbers.Integral) and 0 <= token_id < self.n_vocab):
            raise ValueError(f"token id {token_id!r} out of range: expected 0 <= id < {self.n_vocab}")
        token_id = int(token_id)
        kind = self.types[token_id]
        if kind in (CONTROL, UNKNOWN):
            return self.tokens[token_id].encode() if special else b""
        piece = self._pieces[token_id]
        if piece is None:
            text = self.tokens[token_id]
            if kind == USER_DEFINED:
                piece = text.encode()
            elif kind == NORMAL and self.spm:
                piece = text.replace("▁", " ").encode()
            elif kind == NORMAL:
                # byte-level characters back to bytes (a character outside the table keeps its UTF-8)
                piece = b"".join(bytes([_BYTE_DECODER[c]]) if c in _BYTE_DECODER else c.encode() for c in text)
            else:  # unused / undefined types produce nothing
                piece = b""
            self._pieces[token_id] = piece
        return piece

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token's text, for byte-exact streaming (control tokens give b"")."""
        return self._piece(token_id, special=False)

    def decode_bytes(self, ids: list[int], skip_special: bool = True) -> bytes:
        """llama.cpp detokenize(remove_special=skip_special, unparse_special=not skip_special)."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        out = []
        for k, tid in enumerate(ids):
            piece = self._piece(tid, special=not skip_special)
            if k == 0 and remove_space and piece.startswith(b" "):
                piece = piece[1:]
            out.append(piece)
        text = b"".join(out)
        if self.clean_spaces:  # clean_up_tokenization_spaces, as llama.cpp's three passes
            text = re.sub(rb" ([?!.,])", rb"\1", text)
            text = re.sub(rb" ' ", rb"'", text)
            text = re.sub(rb" '(?=[sm]|re|ve)", rb"'", text)
        return text

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Tokenizer(model={self.model!r}, n_vocab={self.n_vocab}, bos={self.bos_id}, eos={self.eos_id})"
