"""Regenerate ``tests/golden/pretokenizers.json``: llama.cpp's ids for every ``tokenizer.ggml.pre``
the runtime knows, on one byte-level BPE vocabulary.

The vocabulary is trained (HuggingFace ``tokenizers``) on the texts with no pre-tokenizer at all, so
its merges cross every boundary a pre-tokenizer draws (space+letter, digit+digit, apostrophe+letter,
newline+space, punctuation+letter, across scripts...): a text split in the wrong place gives other
ids. The texts are ``tests/golden/corpus.json`` and the adversarial ones below.

For each name a tiny GGUF (tests/tiny_models.py) with that ``tokenizer.ggml.pre`` and no
``add_bos_token`` key is read by llama.cpp (``Llama(path, vocab_only=True)``), which tokenizes each
text with ``add_bos=True, special=True`` and decodes those ids again (``decoded``: the texts that do
not come back as they were, e.g. where spaces are cleaned up). Names with equal results share an
entry of ``ids`` / ``decoded``.

Usage::

    python tests/golden/make_pretok_golden.py

Needs ``llama-cpp-python``; a name llama.cpp does not know fails the run.
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
for folder in (REPO, REPO / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from tiny_models import _bytes_to_unicode, write_tiny_model  # noqa: E402

from wgpu_llm.tokenizer import _PRE_TYPES  # noqa: E402

OUT = HERE / "pretokenizers.json"
VOCAB_SIZE = 1024
N_WHOLE_WORDS = 64
SPECIAL = "<|endoftext|>"  # id 0: control, BOS and EOS

# What corpus.json lacks or has too little of; each line aims at a rule that differs between
# pre-tokenizers.
ADVERSARIAL = [
    "1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890",
    "x1y22z333w4444 v55555u666666 t7777777s88888888r999999999 q1234567890p",
    "3.14 1,000,000 1e-10 0x1F 2024-03-15 10:30pm $5 €10 ¥1000 50% #1",
    "'s 'S 're 'RE 'Re 've 'VE 'm 'M 'll 'LL 'Ll 'd 'D 't 'T ' 'x '' ''' 's's",
    "can't CAN'T won't WON'T we're WE'RE you've YOU'VE I'm I'M she'll SHE'LL he'd HE'D it's IT'S",
    "o'clock rock'n'roll ma'am y'all Y'ALL l'homme L'HOMME d'Artagnan",
    "a  b   c    d     e\t\tf \t g\n h \n\n i\r\nj\r\n\r\nk\rl",
    "  \n  \n\n   \t\n\t\t\n",
    "    indented\n        more\n\tand tab\n\t\tdouble\n",
    "trailing spaces   \ntrailing tab\t\ntrailing both \t \n   ",
    "clean up : a , b . c ? d ! e ' f 's g 'm h 're i 've j 'S k ' l",
    "nbsp\u00a0x thin\u2009x em\u2003x ideo\u3000x nel\u0085x ls\u2028x ps\u2029x",
    "HTTPServer getHTTPResponseCode XMLHttpRequest iPhone macOS McDonald's O'NEIL",
    "ÉCOLE École éCOLE ÀÉÎÕÜ àéîõü ǅungla ǈ Ǉ ǉ ẞ ß ﬁ ℃",
    "Ohm \u2126 omega \u03a9 Kelvin \u212a K oxia \u1f7d tonos \u03ce",
    "ΑΒΓ αβγ ὢ ᾯ ώ ΐ Ἴ Привет ПРИВЕТ привет Ǳ ǲ ǳ",
    "e\u0301 a\u0308 n\u0303 o\u0302\u0323 \u0915\u093f \u0928\u092e\u0938\u094d\u0924\u0947",
    "Z\u0334\u0321a\u0336l\u0337g\u0335o\u0338 \u0301leading mark, mark after space \u0308x",
    "你好，世界！「引用」【括号】《书名》～〜；：……——",
    "ひらがなとカタカナと漢字、ｶﾀｶﾅ。ー・「」",
    "한국어 테스트입니다. 안녕하세요! ㅋㅋㅋ",
    "العربية ١٢٣ ٤٥٦ 123 فارسی ۱۲۳ عِلْمٌ",
    "עברית שָׁלוֹם ไทย ภาษาไทย ທ ລາວ",
    "👩\u200d🚀 👨\u200d👩\u200d👧 ☝🏿 🏴\u200d☠️ 1️⃣ #️⃣ 🇩🇪🇫🇷 👍🏻👍🏼 ❤\ufe0f",
    "if (x>=10&&y!=0){return a->b;}\n\tfoo_bar += `baz`; // ~tilde $dollar ^caret |pipe @at",
    "def f(a, *args, **kw):\r\n\treturn [x**2 for x in args if x % 2 == 0]\r\n",
    "<div class=\"a-b\">&nbsp;&lt;tag&gt;</div>\n<!-- comment -->",
    "path/to/file.txt C:\\Users\\me ~/.config https://a.b/c?d=e&f=g#h",
    "cd ~/src && ls ~/bin ~/lib ~/src; x ~= y ~= z ~~ ~",
    "ＡＢＣａｂｃ１２３！？ full－width（括弧）",
    "²³¹ ½ ¾ Ⅻ ⅻ ① ⑩ 𝟘𝟙𝟚 𝐀𝐁𝐂 𝑎𝑏𝑐",
    "...!!!???,,,;;;:::---___***&&&|||^^^~~~```'''\"\"\"",
    "a.b,c;d:e!f?g-h_i*j&k|l^m~n`o'p\"q(r)s[t]u{v}w<x>y=z+",
    "soft\u00adhyphen zero\u200bwidth joiner\u200dx nonjoiner\u200cx bom\ufeffx",
    "\u0001\u0002\u0007\u001b[0m\u007f",
    "vt\u000bff\u000c fs\u001c gs\u001d rs\u001e us\u001f end \u000b\u000c\n x",
]


def texts() -> list[str]:
    corpus = json.loads((HERE / "corpus.json").read_text(encoding="utf-8"))
    return corpus + [t for t in ADVERSARIAL if t not in corpus]


def train_vocab(samples: list[str]) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a byte-level BPE trained on whole texts, plus the most frequent
    words (with a leading space or not) that no merge makes: one token only where merges are ignored
    for a piece that is a whole token (llama3, tekken), so that this rule is tested too."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(samples, trainer)
    state = json.loads(hf.to_str())["model"]
    vocab = state["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens))) and tokens[0] == SPECIAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    byte_char = _bytes_to_unicode()
    words = Counter(w for t in samples for w in re.findall(r" ?[A-Za-z]{3,}", t))
    whole = ["".join(byte_char[b] for b in w.encode()) for w, _ in words.most_common()]
    tokens += [w for w in whole if w not in vocab][:N_WHOLE_WORDS]
    return tokens, [3] + [1] * (len(tokens) - 1), merges


def detokenize(llama, ids: list[int]) -> str:
    """llama.cpp's llama_detokenize(remove_special=True, unparse_special=False): BOS/EOS dropped where
    the vocab adds them, control tokens rendered as nothing, spaces cleaned up where the pre says so."""
    import llama_cpp

    tokens = (llama_cpp.llama_token * len(ids))(*ids)
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(llama._model.vocab, tokens, len(ids), buf, size, True, False)
        if n >= 0:
            return buf.raw[:n].decode("utf-8")
        size = -n  # too small: llama.cpp says how many bytes it needs


def _share(table: dict[str, object], value: object, name: str) -> str:
    """The key of an equal value already in table, else name (added)."""
    key = next((k for k, v in table.items() if v == value), name)
    table.setdefault(key, value)
    return key


def main() -> None:
    import llama_cpp

    samples = texts()
    tokens, types, merges = train_vocab(samples)
    by_pre: dict[str, dict[str, str]] = {}
    ids: dict[str, object] = {}
    decoded: dict[str, object] = {}
    refused = []
    with tempfile.TemporaryDirectory() as tmp:
        for pre in sorted(_PRE_TYPES):
            path = write_tiny_model(Path(tmp) / f"{pre}.gguf", "llama", vocab=(tokens, types, merges), pre=pre)
            try:
                llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
            except ValueError:  # llama.cpp logs why: an unknown pre-tokenizer
                refused.append(pre)
                continue
            got = [llama.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in samples]
            # decoding each text's ids gives the text back, but where spaces are cleaned up: kept by index
            texts_back = {str(i): back for i, (text, row) in enumerate(zip(samples, got))
                          if (back := detokenize(llama, row)) != text}
            del llama
            by_pre[pre] = {"ids": _share(ids, got, pre), "decoded": _share(decoded, texts_back, pre)}
            print(f"{pre:18} -> {by_pre[pre]['ids']:18} {sum(map(len, got))} ids, "
                  f"{len(texts_back)} texts decoded otherwise")
    if refused:
        sys.exit(f"llama.cpp refuses tokenizer.ggml.pre = {', '.join(refused)}: nothing written")
    golden = {"llama_cpp_python": llama_cpp.__version__, "texts": samples, "tokens": tokens, "merges": merges,
              "by_pre": by_pre, "ids": ids, "decoded": decoded}
    OUT.write_text(_compact(golden), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


def _compact(golden: dict) -> str:
    """JSON with one text's ids per line (small diffs when regenerated), every other list on one line."""
    parts = []
    for key, value in golden.items():
        if key == "ids":
            rows = [f"  {json.dumps(k)}: [\n" + ",\n".join("   " + json.dumps(r) for r in v) + "\n  ]"
                    for k, v in value.items()]
            parts.append(f" {json.dumps(key)}: {{\n" + ",\n".join(rows) + "\n }")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


if __name__ == "__main__":
    main()
