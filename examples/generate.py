"""Greedy generation with the default model (Gemma 3 270M), or a GGUF file given as argument."""

import sys

from wgpu_llm import LLM

llm = LLM(sys.argv[1] if len(sys.argv) > 1 else None, backend="auto")
print(llm.backend_reason)
out = llm.generate("The three primary colors are", max_tokens=40, temperature=0.0)
print(out.text)
print(out.stats)
