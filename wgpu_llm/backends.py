"""Backend choice: "cpu" (numpy), "gpu" (wgpu), or "auto" (a hardware GPU if there is one, else CPU).

A software GPU adapter (lavapipe, SwiftShader, WARP) is used only when asked for: the numpy
backend beats it.
"""

from __future__ import annotations

BACKENDS = ("auto", "gpu", "cpu")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine; the message says why."""


def open_backend(name: str, gguf_file, n_ctx: int, adapter: str | None = None):
    """Returns (backend, reason): the backend instance and one line saying what was chosen and why."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "cpu":
        from cpu_fallback.backend import CpuBackend

        return CpuBackend(gguf_file, n_ctx), "cpu: asked for"
    try:
        from .gpu import device
        from .gpu.backend import GpuBackend
    except ImportError as e:  # wgpu missing or broken
        if name == "gpu":
            raise BackendUnavailable(f"the gpu backend cannot be loaded: {e}") from e
        from cpu_fallback.backend import CpuBackend

        return CpuBackend(gguf_file, n_ctx), f"cpu: the gpu backend cannot be loaded ({e})"
    try:
        chosen, why = device.choose_adapter(allow_software=(name == "gpu"), selector=adapter)
    except device.GpuUnavailable as e:
        if name == "gpu":
            raise BackendUnavailable(str(e)) from None
        from cpu_fallback.backend import CpuBackend

        return CpuBackend(gguf_file, n_ctx), f"cpu: {e}"
    return GpuBackend(gguf_file, n_ctx, adapter=chosen), f"gpu: {why}"
