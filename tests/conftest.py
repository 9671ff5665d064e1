import os
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


def gpu_required() -> bool:
    """WGPU_LLM_REQUIRE_GPU=1 (set by CI, which installs a software adapter): a missing or broken
    adapter fails the GPU tests instead of skipping them, so they cannot pass by not running."""
    return os.environ.get("WGPU_LLM_REQUIRE_GPU") == "1"


def no_gpu(reason: str):
    """Skip a GPU test for want of an adapter, or fail it where one is required."""
    if gpu_required():
        pytest.fail(f"WGPU_LLM_REQUIRE_GPU=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def adapter():
    """The adapter GPU tests run on (a software one is fine); the test skips where there is none
    (fails under WGPU_LLM_REQUIRE_GPU=1)."""
    try:
        from wgpu_llm.gpu.device import GpuUnavailable, choose_adapter
    except ImportError as e:
        no_gpu(f"the gpu backend cannot be loaded: {e}")
    try:
        found, _ = choose_adapter(allow_software=True)
    except GpuUnavailable as e:
        no_gpu(f"no GPU adapter: {e}")
    return found


@pytest.fixture(scope="module")
def rt(adapter):
    """A GPU runtime (device, pool, pipeline cache) on that adapter."""
    from wgpu_llm.gpu.runtime import Runtime

    return Runtime(adapter)


@pytest.fixture
def opened(monkeypatch) -> dict:
    """The keyword arguments of the last LLM(...) the CLI opened (it takes LLM from the package)."""
    import wgpu_llm

    kwargs = {}

    class Spy(wgpu_llm.LLM):
        def __init__(self, *args, **kw):
            kwargs.update(kw)
            super().__init__(*args, **kw)

    monkeypatch.setattr(wgpu_llm, "LLM", Spy)
    return kwargs
