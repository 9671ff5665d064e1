"""The examples run as written (real models, numpy backend where `auto` finds no hardware GPU).
Part of the `golden` step: each loads a real model in a fresh process."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = [pytest.mark.slow, pytest.mark.golden]

# example -> a fragment its output must hold
EXPECTED = {
    "generate.py": "decode_tokens_per_s",
    "stream.py": "",
    "chat.py": "",
    "scores.py": "'Paris'",
    "inspect_model.py": "gemma3",
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name):
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stdout.strip(), f"{name} printed nothing"
    assert EXPECTED[name] in result.stdout, result.stdout[-2000:]
