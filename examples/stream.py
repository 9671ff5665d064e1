"""Stream a sampled completion piece by piece, stopping at a blank line."""

import sys

from wgpu_llm import LLM

llm = LLM(sys.argv[1] if len(sys.argv) > 1 else None)
for piece in llm.stream("Write a haiku about autumn:\n", max_tokens=64, temperature=0.7, top_p=0.9,
                        seed=42, stop=["\n\n"]):
    print(piece, end="", flush=True)
print()
