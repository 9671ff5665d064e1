"""Regenerate tests/golden/gemma3-270m-long.json: Gemma 3 270M past its 512-token sliding window.

The prompt is the golden prompts and corpus strings of make_golden.py joined into one long text, cut
to N_TOKENS tokens of llama.cpp's tokenization. transformers float32 (the same GGUF, dequantized; the
config checks of make_golden.py) gives, for every position, the argmax of the logits, and for a few
positions on both sides of the window the top-TOP_LOGITS logits; plus its greedy continuation.

    python tests/golden/make_long_golden.py

Needs llama-cpp-python, transformers and torch (see make_golden.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_golden import (N_THREADS, PROMPTS, load_corpus, load_transformers,  # noqa: E402
                         sha256_of, zoo)

MODEL = "gemma3-270m"
N_TOKENS = 900
N_NEW = 16
TOP_LOGITS = 32
# positions whose full top logits are kept: before, at and well past the window (512) of the
# sliding layers, and the last
LOGIT_POSITIONS = (100, 511, 512, 513, 640, 777, N_TOKENS - 1)


def long_text() -> str:
    corpus, _ = load_corpus()
    return "\n\n".join([p for p in PROMPTS if p] + corpus)


def main() -> None:
    import llama_cpp
    import torch
    import transformers

    torch.set_num_threads(N_THREADS)
    path = zoo.model_path(MODEL)
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    ids = vocab.tokenize(long_text().encode("utf-8"), add_bos=True, special=False)
    assert len(ids) >= N_TOKENS, len(ids)
    ids = ids[:N_TOKENS]
    del vocab

    model, _ = load_transformers(MODEL, path)
    with torch.inference_mode():
        x = torch.tensor([ids], dtype=torch.long)
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float()
        argmax = [int(t) for t in logits.argmax(dim=-1)]
        top = {}
        for pos in LOGIT_POSITIONS:
            t = torch.topk(logits[pos], TOP_LOGITS)
            top[str(pos)] = {"ids": [int(i) for i in t.indices], "values": [round(float(v), 5) for v in t.values]}
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1,
                             max_new_tokens=N_NEW, min_new_tokens=N_NEW, eos_token_id=None)
        greedy = [int(t) for t in out[0, len(ids):]]
    doc = {"model": MODEL, "gguf_sha256": sha256_of(path), "llama_cpp_python": llama_cpp.__version__,
           "transformers": transformers.__version__, "torch": torch.__version__, "ids": ids,
           "transformers_argmax": argmax, "transformers_logits": top, "transformers_greedy": greedy}
    target = HERE / f"{MODEL}-long.json"
    target.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {target.name}: {len(ids)} prompt tokens, greedy {greedy}")


if __name__ == "__main__":
    main()
