"""Backend choice: "cpu" (numpy), "gpu" (wgpu), or "auto" (a hardware GPU if there is one, else CPU).

A software GPU adapter (lavapipe, SwiftShader, WARP) is used only when asked for: the numpy
backend beats it.

Given the graphs, the model's memory needs are checked before a backend allocates (see
wgpu_llm.memory): a backend that will not fit raises memory.InsufficientMemory, except that "auto"
falls back from a GPU it does not fit to the CPU if it fits there.
"""

from __future__ import annotations

import sys

from . import memory

BACKENDS = ("auto", "gpu", "cpu")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine; the message says why."""


def open_backend(name: str, gguf_file, n_ctx: int, adapter: str | None = None, graphs=(),
                 n_batch: int = 512, weights_dtype: str = "float32"):
    """Returns (backend, reason): the backend instance and one line saying what was chosen and why.
    graphs: the graphs the backend will run, for the memory check (none given: no check);
    weights_dtype: the numpy backend's ("float32" or "float16")."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")

    def cpu(reason: str):
        from cpu_fallback.backend import CpuBackend

        if graphs:
            memory.check_cpu(gguf_file.path, gguf_file, graphs, n_ctx, n_batch, weights_dtype)
        return CpuBackend(gguf_file, n_ctx, weights_dtype), reason

    if name == "cpu":
        return cpu("cpu: asked for")
    try:
        from .gpu import device
        from .gpu.backend import GpuBackend
    except ImportError as e:  # wgpu missing or broken
        if name == "gpu":
            raise BackendUnavailable(f"the gpu backend cannot be loaded: {e}") from e
        return cpu(f"cpu: the gpu backend cannot be loaded ({e})")
    try:
        chosen, why = device.choose_adapter(allow_software=(name == "gpu"), selector=adapter)
    except device.GpuUnavailable as e:
        if name == "gpu":
            raise BackendUnavailable(str(e)) from None
        return cpu(f"cpu: {e}")
    if graphs:
        try:
            memory.check_gpu(gguf_file.path, gguf_file, graphs, n_ctx, n_batch, device.adapter_info(chosen))
        except memory.InsufficientMemory as e:
            if name == "gpu":
                raise
            try:
                fallback = cpu(f"cpu: the model does not fit the GPU ({e})")
            except memory.InsufficientMemory:
                raise e from None
            print(f"wgpu-llm: the model does not fit the GPU, using the CPU: {e}", file=sys.stderr)
            return fallback
    return GpuBackend(gguf_file, n_ctx, adapter=chosen), f"gpu: {why}"
