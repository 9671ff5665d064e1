"""Real models on the GPU backend vs the same external truth as the numpy backend
(tests/golden/<model>.json: transformers-float32 greedy continuations, which the numpy backend
reproduces on every prompt, see test_real_models.py).

- every prompt: the golden 32-token continuation, teacher-forced. One step over prompt +
  continuation gives the logits after every prefix; the greedy continuation is the golden one
  exactly when the argmax after each prefix is the next golden token. This runs the prefill
  kernels (tiled mat-mat, flash attention) at every position of every prompt.
- a few prompts (all with WGPU_LLM_ALL_PROMPTS=1): real greedy generation through the GPU-resident
  decode loop (mat-vec kernels, decode attention over the KV cache, argmax on the GPU), 32 tokens.
"""

import os

import pytest
from test_real_models import MODELS, load_golden, same_continuation

from wgpu_llm import LLM

pytestmark = [pytest.mark.slow, pytest.mark.gpu]
DECODED_PROMPTS = 20 if os.environ.get("WGPU_LLM_ALL_PROMPTS") == "1" else 2


@pytest.fixture(scope="module", params=MODELS)
def model(request, adapter):  # adapter: skips where there is none
    return LLM(request.param, backend="gpu", n_ctx=512), load_golden(request.param)


def golden_continuation(case, eog) -> list[int]:
    """The golden greedy tokens, up to and including an end-of-generation token."""
    out = []
    for token in case["transformers_greedy"]:
        out.append(token)
        if token in eog:
            break
    return out


def test_teacher_forced_continuations_every_prompt(model):
    llm, golden = model
    eog = llm.tokenizer.eog_ids
    mismatches = []
    for n, case in enumerate(golden["prompts"]):
        prompt, cont = case["ids"], golden_continuation(case, eog)
        logits = llm.logits(prompt + cont[:-1])
        predicted = logits[len(prompt) - 1:].argmax(axis=1).tolist()
        if predicted != cont:
            first = next(i for i, (a, b) in enumerate(zip(predicted, cont)) if a != b)
            mismatches.append(f"prompt {n}: token {first} is {predicted[first]}, golden {cont[first]}")
    print(f"{golden['model']} on the GPU: {len(golden['prompts']) - len(mismatches)}/{len(golden['prompts'])} "
          f"teacher-forced continuations equal transformers-f32")
    assert not mismatches, mismatches


def test_greedy_decode_loop(model):
    llm, golden = model
    cases = golden["prompts"][:DECODED_PROMPTS]
    results = []
    for case in cases:
        out = llm.generate(case["ids"], max_tokens=len(case["transformers_greedy"]) or 32, temperature=0)
        results.append(same_continuation(out.tokens, case["transformers_greedy"], llm.tokenizer.eog_ids))
    print(f"{golden['model']} on the GPU: {sum(results)}/{len(results)} greedy continuations (decode loop) "
          f"equal transformers-f32")
    assert all(results), results
