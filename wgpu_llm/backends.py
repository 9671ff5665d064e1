"""Backend choice: "cpu" (numpy), "gpu" (wgpu), or "auto" (a hardware GPU if there is one, else CPU).

A software GPU adapter (lavapipe, SwiftShader, WARP) is used only when asked for: the numpy
backend beats it.

Given the graphs, the model's memory needs are checked before a backend allocates (see
wgpu_llm.memory): a backend that will not fit raises memory.InsufficientMemory, except that "auto"
falls back from a GPU it does not fit to the CPU if it fits there. "auto" falls back the same way
when the GPU fails while the model loads (a device that cannot be opened, a GPU error creating
buffers or pipelines, a lost device), saying so in one line on stderr; "gpu" raises the error
(gpu.GpuError naming what was being done).

The KV cache type: "f32", "f16" (half the cache's memory; logits within the README's stated bound
of f32's) on either backend, or "auto": f16 on a hardware GPU adapter with the shader-f16 feature
(gpu.kernels.auto_kv_type), f32 on a software adapter and on the CPU.

The activations of the prefill mat-mat: "f32" (default) or "f16", a GPU option -- the tiled
mat-mat (gpu/matmul.py, Tiles.f16) stages its activation and dequantized weight tiles in f16 and
runs its dot products in f16, accumulating in f32, on an adapter with shader-f16; f32 on one
without (the backend's `activations` and describe() say so). The decode mat-vec and everything
else stay f32. The CPU computes in f32 only: backend "cpu" with "f16" is a ValueError; "auto"
that ends on the CPU runs f32 and its reason line says so.
"""

from __future__ import annotations

import sys

from . import memory

BACKENDS = ("auto", "gpu", "cpu")
KV_CACHES = ("auto", *memory.KV_BYTES)  # LLM(kv_cache=...), --kv-cache
ACTIVATIONS = ("f32", "f16")  # LLM(activations=...), --activations: the prefill mat-mat's (a GPU option)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine; the message says why."""


class GpuError(RuntimeError):
    """A GPU operation failed (validation, out of memory, shader compilation, device lost); the
    message says what was being done and carries wgpu's own message. Raised by wgpu_llm.gpu; it
    lives here, beside the fallback that reacts to it, so that importing it loads no GPU code."""


def one_line(error: BaseException) -> str:
    """An error's message on one line (wgpu's messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def open_backend(name: str, gguf_file, n_ctx: int, adapter: str | None = None, graphs=(),
                 n_batch: int = 512, weights_dtype: str = "float32", load=None, kv_cache: str = "auto",
                 activations: str = "f32"):
    """Returns (backend, reason): the backend instance and one line saying what was chosen and why.
    graphs: the graphs the backend will run, for the memory check (none given: no check);
    weights_dtype: the numpy backend's ("float32" or "float16");
    kv_cache: "auto", "f16" or "f32" (the module docstring; the backend's `kv_type` says what it got);
    activations: "f32" or "f16" (the module docstring; the GPU backend's `activations` says what it got);
    load: load(backend) loads the model onto the chosen backend (uploads weights, compiles a
    step); GPU failures in it count as the GPU failing to load (see the module docstring)."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")
    check_kv_cache(kv_cache)
    check_activations(activations, name)

    def cpu(reason: str):
        reason += cpu_activations_note(activations)
        from cpu_fallback.backend import CpuBackend

        kv_type = "f32" if kv_cache == "auto" else kv_cache
        if graphs:
            memory.check_cpu(gguf_file.path, gguf_file, graphs, n_ctx, n_batch, weights_dtype, kv_type=kv_type)
        backend = CpuBackend(gguf_file, n_ctx, weights_dtype, kv_type)
        if load is not None:
            load(backend)
        return backend, reason

    def fall_back(problem: str, error: Exception):
        """The CPU instead of a GPU that cannot run the model, said once on stderr; the GPU's
        error itself when the model does not fit the CPU either."""
        try:
            fallback = cpu(f"cpu: {problem} ({one_line(error)})")
        except memory.InsufficientMemory:
            raise error from None
        print(f"wgpu-llm: {problem}, using the CPU: {one_line(error)}", file=sys.stderr)
        return fallback

    if name == "cpu":
        return cpu("cpu: asked for")
    try:
        from .gpu import device
        from .gpu.backend import GpuBackend
        from .gpu.kernels import auto_kv_type
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
    info = device.adapter_info(chosen)
    kv_type = auto_kv_type(info) if kv_cache == "auto" else kv_cache
    if graphs:
        try:
            memory.check_gpu(gguf_file.path, gguf_file, graphs, n_ctx, n_batch, info, kv_type=kv_type)
        except memory.InsufficientMemory as e:
            if name == "gpu":
                raise
            return fall_back("the model does not fit the GPU", e)
    try:
        backend = _load_gpu(GpuBackend, gguf_file, n_ctx, chosen, load, kv_type, activations)
    except (device.GpuUnavailable, GpuError) as e:
        if name == "gpu":
            raise
        return fall_back("the GPU failed while loading the model", e)
    return backend, f"gpu: {why}"


def check_kv_cache(kv_cache) -> None:
    """A ValueError naming a KV cache choice that is not one of KV_CACHES."""
    if kv_cache not in KV_CACHES:
        raise ValueError(f"kv_cache {kv_cache!r} is not one of {', '.join(KV_CACHES)}")


def check_activations(activations, backend: str = "gpu") -> None:
    """A ValueError naming an activations choice that is not one of ACTIVATIONS, or "f16" asked of
    the CPU backend (which computes in f32 only)."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations {activations!r} is not one of {', '.join(ACTIVATIONS)}")
    if activations == "f16" and backend == "cpu":
        raise ValueError("activations 'f16' is a GPU option (the prefill mat-mat's f16 tiles): "
                         "the cpu backend computes in f32; use activations='f32' or backend 'gpu' / 'auto'")


def cpu_activations_note(activations: str) -> str:
    """What the reason line of a CPU backend standing in for a GPU adds about the activations asked for."""
    return "" if activations == "f32" else "; activations f32 (f16 is a GPU option)"


def _load_gpu(backend_class, gguf_file, n_ctx: int, adapter, load, kv_type: str = "f32", activations: str = "f32"):
    """Open the GPU backend and load the model onto it; a wgpu error that escaped the runtime's
    guards becomes a GpuError too."""
    import wgpu

    try:
        backend = backend_class(gguf_file, n_ctx, adapter=adapter, kv_type=kv_type, activations=activations)
        if load is not None:
            load(backend)
    except (wgpu.GPUError, wgpu.GPUPipelineError) as e:
        raise GpuError(f"loading the model on the GPU: {type(e).__name__}: {e}") from e
    return backend
