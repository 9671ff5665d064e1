"""Regenerate tests/golden/tiny_llama_cpp.npz: llama.cpp's logits for the tiny random models.

The tiny models (tests/tiny_models.py) are written deterministically, so the test rewrites the
same files and compares our logits at every position with llama.cpp's. Needs llama-cpp-python.

    python tests/golden/make_tiny_golden.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from tiny_models import write_tiny_model  # noqa: E402

# (arch, type, extra writer args); sequences longer than gemma3's sliding window of 8
CASES = {
    "llama-F32": ("llama", "F32", {}),
    "llama-Q8_0-untied": ("llama", "Q8_0", {"tied_output": False}),
    "gemma3-F32": ("gemma3", "F32", {}),
    "gemma3-F16-mha": ("gemma3", "F16", {"n_kv_head": 4}),
}
TOKENS = [(i * 37 + 11) % 250 + 4 for i in range(40)]


def main() -> None:
    from llama_cpp import Llama, __version__

    out = {"tokens": np.array(TOKENS, np.int32), "llama_cpp_python": np.array(__version__)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, qtype, extra) in CASES.items():
            path = write_tiny_model(Path(tmp) / f"{name}.gguf", arch, qtype, **extra)
            model = Llama(str(path), logits_all=True, n_ctx=64, n_batch=64, verbose=False, n_threads=2)
            model.eval(TOKENS)
            out[name] = np.array(model.scores[:len(TOKENS)], dtype=np.float32)
            print(f"{name}: logits {out[name].shape}")
            del model
    np.savez_compressed(HERE / "tiny_llama_cpp.npz", **out)


if __name__ == "__main__":
    main()
