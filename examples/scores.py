"""Score a sentence: per-token log-probabilities from `LLM.logits`."""

import numpy as np

from wgpu_llm import LLM

llm = LLM(backend="cpu")
ids = llm.tokenize("Paris is the capital of France.")
logits = llm.logits(ids)
logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
for pos in range(1, len(ids)):
    print(f"{llm.detokenize([ids[pos]])!r:>12}  {logprobs[pos - 1, ids[pos]]:7.3f}")
