"""Real models on the numpy backend vs external truth (tests/golden/make_golden.py).

- greedy 32-token continuations equal transformers-float32's on at least 18 of 20 prompts
- last-position logits close to transformers-float32's (on its top-128 tokens)
"""

import json
from pathlib import Path

import numpy as np
import pytest

from wgpu_llm import LLM

GOLDEN_DIR = Path(__file__).parent / "golden"
MODELS = ["gemma3-270m", "smollm2-135m"]
pytestmark = pytest.mark.slow


def load_golden(name):
    path = GOLDEN_DIR / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path.name} missing: run tests/golden/make_golden.py")
    return json.loads(path.read_text())


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return LLM(request.param, backend="cpu", n_ctx=512), load_golden(request.param)


def same_continuation(ours, theirs, eog):
    """Equal, or equal up to where one side stopped at an end-of-generation token the other emitted."""
    if ours == theirs:
        return True
    n = min(len(ours), len(theirs))
    longer = ours if len(ours) > len(theirs) else theirs
    return ours[:n] == theirs[:n] and len(longer) > n and longer[n] in eog


def test_greedy_matches_transformers(model):
    llm, golden = model
    results = []
    for case in golden["prompts"]:
        out = llm.generate(case["ids"], max_tokens=len(case["transformers_greedy"]) or 32, temperature=0)
        results.append(same_continuation(out.tokens, case["transformers_greedy"], llm.tokenizer.eog_ids))
    print(f"{golden['model']}: {sum(results)}/{len(results)} greedy continuations equal transformers-f32")
    assert sum(results) >= 18, results


def test_last_logits_close_to_transformers(model):
    llm, golden = model
    worst = 0.0
    for case in golden["prompts"][:6]:
        ref = case["transformers_last_logits"]
        ours = llm.logits(case["ids"])[-1]
        ids, values = np.array(ref["ids"]), np.array(ref["values"], np.float32)
        assert int(np.argmax(ours)) == ids[np.argmax(values)]
        err = np.abs(ours[ids] - values).max() / np.abs(values).max()
        worst = max(worst, float(err))
    print(f"{golden['model']}: worst max|ours - transformers| / max|logit| on top-128 = {worst:.2e}")
    assert worst < 1e-3
