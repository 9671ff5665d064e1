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


@pytest.fixture(scope="module")
def adapter():
    """The adapter GPU tests run on (a software one is fine); the test skips where there is none."""
    from wgpu_llm.gpu.device import GpuUnavailable, choose_adapter

    try:
        found, _ = choose_adapter(allow_software=True)
    except GpuUnavailable as e:
        pytest.skip(f"no GPU adapter: {e}")
    return found


@pytest.fixture(scope="module")
def rt(adapter):
    """A GPU runtime (device, pool, pipeline cache) on that adapter."""
    from wgpu_llm.gpu.runtime import Runtime

    return Runtime(adapter)
