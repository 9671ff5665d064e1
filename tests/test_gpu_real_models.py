"""Real models on the GPU backend vs the same external truth as the numpy backend
(tests/golden/<model>.json: transformers-float32 greedy continuations, which the numpy backend
reproduces on every prompt, see test_real_models.py).

- the golden 32-token continuation, teacher-forced (a subset of prompts by default, every prompt
  under the `golden` marker). One step over prompt +
  continuation gives the logits after every prefix; the greedy continuation is the golden one
  exactly when the argmax after each prefix is the next golden token. This runs the prefill
  kernels (tiled mat-mat, flash attention) at every position of every prompt.
- two prompts (six more under `golden`): real greedy generation through the GPU-resident decode
  loop (mat-vec kernels, decode attention over the KV cache, argmax on the GPU), 32 tokens. Not all
  twenty: on a software adapter Gemma 3 decodes about 2 tokens/s, and the teacher-forced sweep
  already checks the greedy token after every prefix of every prompt.
- Gemma 3 past its sliding window (900 tokens), as on the numpy backend.
The LLMs hold an f32 KV cache whatever the adapter (the f16 cache a hardware GPU gets by default
is held to f32's logits in test_kv_cache_f16.py), so these check the kernels against f32 truth.
"""

import pytest
from test_real_models import MODELS, SUBSET, check_long_context, load_golden, same_continuation

from wgpu_llm import LLM

pytestmark = [pytest.mark.slow, pytest.mark.gpu]


@pytest.fixture(scope="module", params=MODELS)
def model(request, adapter):  # adapter: skips where there is none
    return LLM(request.param, backend="gpu", n_ctx=512, kv_cache="f32"), load_golden(request.param)


def golden_continuation(case, eog) -> list[int]:
    """The golden greedy tokens, up to and including an end-of-generation token."""
    out = []
    for token in case["transformers_greedy"]:
        out.append(token)
        if token in eog:
            break
    return out


@pytest.mark.parametrize("n_prompts", [pytest.param(SUBSET, id="subset"),
                                       pytest.param(None, id="all", marks=pytest.mark.golden)])
def test_teacher_forced_continuations(model, n_prompts):
    llm, golden = model
    eog = llm.tokenizer.eog_ids
    mismatches = []
    cases = golden["prompts"][:n_prompts]
    for n, case in enumerate(cases):
        prompt, cont = case["ids"], golden_continuation(case, eog)
        logits = llm.logits(prompt + cont[:-1])
        predicted = logits[len(prompt) - 1:].argmax(axis=1).tolist()
        if predicted != cont:
            first = next(i for i, (a, b) in enumerate(zip(predicted, cont)) if a != b)
            mismatches.append(f"prompt {n}: token {first} is {predicted[first]}, golden {cont[first]}")
    print(f"{golden['model']} on the GPU: {len(cases) - len(mismatches)}/{len(cases)} "
          f"teacher-forced continuations equal transformers-f32")
    assert not mismatches, mismatches


@pytest.mark.parametrize("prompts", [pytest.param(slice(0, 2), id="two"),
                                     pytest.param(slice(2, 8), id="six-more", marks=pytest.mark.golden)])
def test_greedy_decode_loop(model, prompts):
    llm, golden = model
    cases = golden["prompts"][prompts]
    results = []
    for case in cases:
        out = llm.generate(case["ids"], max_tokens=len(case["transformers_greedy"]) or 32, temperature=0)
        results.append(same_continuation(out.tokens, case["transformers_greedy"], llm.tokenizer.eog_ids))
    print(f"{golden['model']} on the GPU: {sum(results)}/{len(results)} greedy continuations (decode loop) "
          f"equal transformers-f32")
    assert all(results), results


def test_long_context_past_the_sliding_window(adapter):
    check_long_context(LLM("gemma3-270m", backend="gpu", n_ctx=1024, kv_cache="f32"))
