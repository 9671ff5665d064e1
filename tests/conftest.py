import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import tiny_models

from wgpu_llm import zoo  # noqa: E402


@pytest.fixture(scope="session")
def gemma_path():
    return zoo.model_path("gemma3-270m")


@pytest.fixture(scope="session")
def smollm_path():
    return zoo.model_path("smollm2-135m")
