"""The wgpu backend: device choice (device.py), runtime plumbing (runtime.py), our own WGSL
kernels (kernels.py + shaders/), quantized weights (quant.py) and the graph compiler (backend.py).

Importing this package does not touch the GPU; `GpuBackend` and the helpers below load wgpu lazily.
"""

from __future__ import annotations

from .device import GpuUnavailable, choose_adapter, list_adapters
from .runtime import GpuError

__all__ = ["GpuBackend", "GpuError", "GpuUnavailable", "choose_adapter", "list_adapters"]


def __getattr__(name):
    if name == "GpuBackend":
        from .backend import GpuBackend

        return GpuBackend
    raise AttributeError(name)
