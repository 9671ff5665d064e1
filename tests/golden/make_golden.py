"""Regenerate the external-truth ("golden") files the test suite compares against.

For each real model of ``wgpu_llm.zoo`` this writes ``tests/golden/<model>.json`` holding

* ``tokenize``: llama.cpp's tokenization of every string in ``tests/golden/corpus.json``
  (``add_bos=True, special=True``, i.e. BOS only where the GGUF asks for it, special tokens parsed);
* ``prompts``: for a fixed set of prompts, llama.cpp's tokenization, llama.cpp's CPU greedy
  continuation (32 tokens), the greedy continuation of Hugging Face ``transformers`` in float32 on
  the same ids (weights dequantized from the same GGUF), and transformers' top-128 logits at the
  last prompt position.

Usage::

    python tests/golden/make_golden.py [--model NAME]

Needs ``llama-cpp-python``, ``transformers`` (with GGUF support, i.e. the ``gguf`` package) and
``torch``; runs on the CPU with 2 threads and is deterministic. A continuation that hits an
end-of-generation token stops there and keeps that token as its last id (both engines).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

# Before torch (libgomp) starts: let idle OpenMP threads sleep instead of spinning. On a small,
# shared CPU a spinning peer turns every tiny attention op into a multi-millisecond stall (20x
# slower generation); it changes no numbers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wgpu_llm import zoo

MODELS = ("gemma3-270m", "smollm2-135m")
N_NEW = 32
TOP_LOGITS = 128
N_THREADS = 2  # torch
# llama.cpp's CPU results do not depend on its thread count (each output row is reduced by one
# thread), while its spin-waiting thread pool degrades badly when the cores are shared; one thread
# is both fast enough for these small models and robust.
LLAMA_THREADS = 1
N_CTX = 512

CORPUS_PATH = HERE / "corpus.json"
# Only used when corpus.json is absent (the committed golden files are made with the real corpus).
PLACEHOLDER_CORPUS = [
    "",
    "Hello, world!",
    " leading space and  double  spaces",
    "Numbers: 1234567890 3.14159",
    "Ünïcödé — “quotes” 日本語 🙂",
    "line one\nline two\n\n\ttabbed",
]

# The same prompts for both models; the one chat-formatted prompt (index CHAT_INDEX) is written in
# each model's own chat markup (see CHAT_TEMPLATES).
PROMPTS = [
    "Once upon a time, there was a little",
    "The old lighthouse keeper climbed the stairs one last time. When he reached the top, he saw",
    "The capital of France is",
    "Water boils at 100 degrees Celsius at sea level. At the top of Mount Everest, water boils at",
    "In 1969, Neil Armstrong became the first person to",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import numpy as np\n\nx = np.linspace(0, 1, 11)\nprint(",
    "<html>\n<head>\n  <title>My Page</title>\n</head>\n<body>\n  <h1>",
    "Here is a list of five fruits:\n1. Apple\n2.",
    "Why is the sky blue? The main reason is",
    (
        "Question: A farmer has 12 cows and buys 7 more. Then he sells 4 of them. "
        "How many cows does the farmer have now?\nAnswer:"
    ),
    "Q: What is 15 + 27?\nA:",
    "La capitale de l'Allemagne est",
    "Der schnellste Weg von Berlin nach München ist",
    "El agua hierve a cien grados porque",
    "東京は日本の首都で、",
    "Привет! Как у тебя дела сегодня?",
    None,  # chat-formatted prompt, filled per model
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    (
        "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide "
        "to make their own food. During this process, oxygen is released into the air. The main "
        "pigment involved is called"
    ),
]
CHAT_INDEX = PROMPTS.index(None)
CHAT_QUESTION = "What are three good names for a pet turtle?"
CHAT_TEMPLATES = {
    "gemma3-270m": "<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n",
    "smollm2-135m": "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n",
}

# End-of-generation ids for transformers' greedy decoding, as in each model's official Hugging Face
# generation_config.json. The GGUF loader only knows tokenizer.ggml.eos_token_id: for Gemma 3 that
# is <eos> (1), but the official config also stops at <end_of_turn> (106), and so does llama.cpp
# (it treats <end_of_turn> as end-of-generation), so without it a chat answer would run on past the
# end of its turn. For SmolLM2 the GGUF's eos (2, <|im_end|>) is the official one.
GENERATION_EOS = {
    "gemma3-270m": [1, 106],
    "smollm2-135m": [2],
}


def prompts_for(model: str) -> list[str]:
    out = list(PROMPTS)
    out[CHAT_INDEX] = CHAT_TEMPLATES[model].format(q=CHAT_QUESTION)
    return out


def load_corpus() -> tuple[list[str], bool]:
    if CORPUS_PATH.exists():
        corpus = json.loads(CORPUS_PATH.read_text(encoding="utf-8"))
        assert isinstance(corpus, list) and all(isinstance(s, str) for s in corpus), CORPUS_PATH
        return corpus, True
    return list(PLACEHOLDER_CORPUS), False


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# llama.cpp


def llama_cpp_part(path: Path, corpus: list[str], prompts: list[str]) -> dict:
    import llama_cpp
    import numpy as np

    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tokenize = [{"text": t, "ids": vocab.tokenize(t.encode("utf-8"), add_bos=True, special=True)}
                for t in corpus]
    prompt_ids = [vocab.tokenize(p.encode("utf-8"), add_bos=True, special=True) for p in prompts]
    del vocab

    llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_batch=N_CTX, n_threads=LLAMA_THREADS,
                          n_threads_batch=LLAMA_THREADS, n_gpu_layers=0, seed=0, verbose=False)
    n_vocab = llm.n_vocab()
    vocab_ptr = llm._model.vocab
    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab_ptr, t)]
    greedy = []
    for ids in prompt_ids:
        assert len(ids) + N_NEW <= N_CTX
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        while len(out) < N_NEW:
            # Greedy decoding (top-k 1, temperature 0, no penalties) is the argmax of the logits
            # llama.cpp computed for the last evaluated position.
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
            tok = int(np.argmax(logits))
            out.append(tok)
            if tok in eog:
                break
            llm.eval([tok])
        greedy.append(out)
    del llm
    return {"version": llama_cpp.__version__, "tokenize": tokenize, "prompt_ids": prompt_ids,
            "greedy": greedy, "eog": eog}


# ----------------------------------------------------------------------------------------------
# transformers


def load_transformers(model_name: str, path: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    # Cross-check what transformers' GGUF loader derived against the reference configs on the
    # Hugging Face hub (google/gemma-3-270m, HuggingFaceTB/SmolLM2-135M-Instruct); a mismatch is
    # fixed here rather than silently producing wrong "truth". (With transformers 5.x everything
    # below already comes out right; the checks make a regression of the loader loud.)
    if model_name == "gemma3-270m":
        expected = {
            "model_type": "gemma3_text", "hidden_size": 640, "num_hidden_layers": 18,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "intermediate_size": 2048, "vocab_size": 262144, "sliding_window": 512,
            "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": None, "attn_logit_softcapping": None,
            "tie_word_embeddings": True,
            # every 6th layer is global (full) attention, the rest sliding-window
            "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                            for i in range(18)],
            # global layers use the GGUF's rope.freq_base (1e6); the local (sliding) layers use
            # 10000, which the GGUF does not store (llama.cpp hardcodes it for gemma3 too)
            "rope_parameters": {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
        }
    else:
        expected = {
            "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
            "intermediate_size": 1536, "vocab_size": 49152, "hidden_act": "silu",
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
        }
    for key, value in expected.items():
        got = getattr(config, key, None)
        if got != value:
            print(f"  config fix: {key} {got!r} -> {value!r}")
            setattr(config, key, value)

    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, config=config, dtype=torch.float32,
        attn_implementation="eager")
    model.eval()
    if model_name == "gemma3-270m":
        assert type(model).__name__ == "Gemma3ForCausalLM", type(model)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), \
        "expected tied input/output embeddings"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - depends on transformers' GGUF tokenizer support
        print(f"  transformers could not build a tokenizer from the GGUF: {e}")
        tokenizer = None
    return model, tokenizer


def transformers_part(model_name: str, path: Path, prompt_ids: list[list[int]]) -> dict:
    import torch
    from transformers import GenerationConfig

    model, tokenizer = load_transformers(model_name, path)
    eos = GENERATION_EOS[model_name]
    gen_config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=N_NEW, repetition_penalty=1.0,
        eos_token_id=eos, pad_token_id=model.config.pad_token_id,
        bos_token_id=model.config.bos_token_id)
    greedy, logits_top = [], []
    with torch.inference_mode():
        for ids in prompt_ids:
            x = torch.tensor([ids], dtype=torch.long)
            mask = torch.ones_like(x)
            logits = model(input_ids=x, attention_mask=mask).logits[0, -1].float()
            top = torch.topk(logits, TOP_LOGITS)
            logits_top.append({"ids": [int(i) for i in top.indices],
                               "values": [round(float(v), 5) for v in top.values]})
            out = model.generate(input_ids=x, attention_mask=mask, generation_config=gen_config)
            new = [int(t) for t in out[0, len(ids):]]
            # generate() pads finished sequences only in batches; strip defensively after an EOS
            for k, t in enumerate(new):
                if t in eos:
                    new = new[:k + 1]
                    break
            greedy.append(new)
    return {"model": model, "tokenizer": tokenizer, "greedy": greedy, "logits": logits_top}


# ----------------------------------------------------------------------------------------------
# output


def _dump(obj) -> str:
    """JSON with one line per corpus entry / prompt field: compact, yet diffable."""
    def c(v):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))

    lines = ["{"]
    head = [k for k in obj if k not in ("tokenize", "prompts")]
    for k in head:
        lines.append(f"  {c(k)}: {c(obj[k])},")
    lines.append('  "tokenize": [')
    lines.append(",\n".join(f"    {c(e)}" for e in obj["tokenize"]))
    lines.append("  ],")
    lines.append('  "prompts": [')
    blocks = []
    for p in obj["prompts"]:
        inner = ",\n".join(f"      {c(k)}: {c(v)}" for k, v in p.items())
        blocks.append("    {\n" + inner + "\n    }")
    lines.append(",\n".join(blocks))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def make(model_name: str, corpus: list[str], show: bool = False) -> dict:
    import torch
    import transformers

    t0 = time.time()
    path = zoo.model_path(model_name)
    prompts = prompts_for(model_name)
    print(f"== {model_name} ({path.name})")

    lc = llama_cpp_part(path, corpus, prompts)
    print(f"  llama.cpp done in {time.time() - t0:.0f}s (end-of-generation ids: {lc['eog']})")
    for p, ids in zip(prompts, lc["prompt_ids"]):
        assert 5 <= len(ids) <= 60, (p, len(ids))

    hf = transformers_part(model_name, path, lc["prompt_ids"])
    print(f"  transformers done in {time.time() - t0:.0f}s")

    out = {
        "model": model_name,
        "gguf_sha256": sha256_of(path),
        "llama_cpp_python": lc["version"],
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenize": lc["tokenize"],
        "prompts": [
            {"prompt": p, "ids": ids, "llama_cpp_greedy": g_lc, "transformers_greedy": g_hf,
             "transformers_last_logits": lg}
            for p, ids, g_lc, g_hf, lg in zip(prompts, lc["prompt_ids"], lc["greedy"],
                                             hf["greedy"], hf["logits"])
        ],
    }
    target = HERE / f"{model_name}.json"
    target.write_text(_dump(out), encoding="utf-8")
    assert json.loads(target.read_text(encoding="utf-8")) == out

    # ---- summary
    tok = hf["tokenizer"]
    n = len(prompts)
    first = sum(e["llama_cpp_greedy"][0] == e["transformers_greedy"][0] for e in out["prompts"])
    full = sum(e["llama_cpp_greedy"] == e["transformers_greedy"] for e in out["prompts"])
    print(f"  wrote {target.relative_to(REPO)} ({target.stat().st_size / 1024:.0f} KiB, "
          f"{len(corpus)} corpus strings, {n} prompts) in {time.time() - t0:.0f}s")
    print(f"  first greedy token, transformers == llama.cpp: {first}/{n}")
    print(f"  full {N_NEW}-token continuation, transformers == llama.cpp: {full}/{n}")
    for i, e in enumerate(out["prompts"]):
        a, b = e["llama_cpp_greedy"], e["transformers_greedy"]
        common = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        if a != b:
            note = ""
            if common == 0:
                v = e["transformers_last_logits"]["values"]
                note = f"; transformers' top-2 logit margin there is only {v[0] - v[1]:.3f}"
            print(f"    prompt {i}: continuations agree on the first {common} tokens "
                  f"(lengths {len(a)} / {len(b)}){note}")
    # Informational only: the golden ids are llama.cpp's. (Known difference: the tokenizer that
    # transformers builds from the Gemma 3 GGUF does not treat the user-defined whitespace-run
    # tokens (ids 138-167, "  " .. 31 spaces) as longest-match specials the way SentencePiece and
    # llama.cpp do, so runs of more than 31 spaces split differently.)
    if tok is None:
        print("  transformers tokenization: no tokenizer built from the GGUF")
    else:
        same = 0
        for i, e in enumerate(out["prompts"]):
            hf_ids = tok(e["prompt"])["input_ids"]
            if hf_ids == e["ids"]:
                same += 1
            else:
                print(f"    prompt {i}: transformers tokenization differs: {hf_ids} vs llama.cpp {e['ids']}")
        print(f"  transformers tokenization of the prompt == llama.cpp: {same}/{n}")
        same_c = 0
        for e in out["tokenize"]:
            hf_ids = tok(e["text"])["input_ids"]
            if hf_ids == e["ids"]:
                same_c += 1
            else:
                print(f"    corpus {e['text'][:40]!r}: transformers tokenization differs: "
                      f"{hf_ids} vs llama.cpp {e['ids']}")
        print(f"  transformers tokenization of the corpus strings == llama.cpp: "
              f"{same_c}/{len(out['tokenize'])}")
        if show:
            for e in out["prompts"]:
                print(f"    {e['prompt']!r}\n      llama.cpp:    "
                      f"{tok.decode(e['llama_cpp_greedy'])!r}\n      transformers: "
                      f"{tok.decode(e['transformers_greedy'])!r}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=MODELS, action="append",
                    help="only this model (may repeat); default: all")
    ap.add_argument("--show", action="store_true",
                    help="also print both continuations decoded to text")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(N_THREADS)
    torch.manual_seed(0)
    corpus, real = load_corpus()
    if not real:
        print(f"WARNING: {CORPUS_PATH.name} not found; tokenizing a placeholder corpus")
    t0 = time.time()
    for name in args.model or MODELS:
        make(name, corpus, show=args.show)
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
