"""What a model will need in memory, estimated before a backend allocates anything, and the refusal
when it will not fit (instead of the OS killing the process or the GPU device being lost).

The estimate is read from the GGUF tensor infos and the graph (its weights, its kv_layers(), its
activation widths) for a given context size, per backend:

- numpy ("cpu"): every weight the graph reads as the backend stores it (float32, or float16 for
  matrices with weights_dtype="float16"; a fused matrix is the same bytes as its parts), the KV
  cache (2 x n_kv_head x n_ctx x head_dim values per layer, 4 bytes each, 2 for an f16 cache:
  KV_BYTES), and a bound on one prefill step's activations, the attention scores of one query
  block and the rope tables.
- wgpu ("gpu"): matrices as the GPU backend uploads them (quantized types stay quantized, types
  without a GPU kernel become F32, see gpu.quant.device_type; rows padded to 8 columns), vectors in
  float32, the KV cache (f32 or f16 values, as on the CPU) and a bound on the step buffers. WebGPU
  does not expose how much memory a device has: what can be checked is that no buffer exceeds the
  adapter's limits (the KV cache of one layer is one storage binding) and, on a software adapter
  (lavapipe, SwiftShader, WARP), whose "device memory" is host memory, the total against the
  host's available memory.

The refusal is `InsufficientMemory`, a MemoryError: it names the model file, what is needed (with
the breakdown) and what is available, and the options. WGPU_LLM_IGNORE_MEMORY_CHECK=1 skips it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

IGNORE_ENV = "WGPU_LLM_IGNORE_MEMORY_CHECK"
WEIGHTS_DTYPES = ("float32", "float16")  # the numpy backend's weight matrices
KV_BYTES = {"f32": 4, "f16": 2}  # the KV cache types (both backends) and their bytes per element
GiB = 1 << 30
# activation buffers live at once in one step: the CPU backend reuses a buffer once its activation
# has been read for the last time, so a step holds the residual, the normed input, a fused QKV or
# gate|up output and a few of the others (the tests check the bound on every tiny architecture)
LIVE_ACTIVATIONS = 6
MATRIX_OPS = ("linear", "embed")  # ops whose weights the GPU backend holds as (quantized) matrices


class InsufficientMemory(MemoryError):
    """The model will not fit in memory with these settings; the message says what is needed, what
    is available and what to do. Raised before anything large is allocated."""


@dataclass
class Estimate:
    backend: str  # "cpu" or "gpu"
    weights: int  # bytes
    kv_cache: int
    activations: int  # a bound
    weights_as: str  # how the weights are held: "float32", "float16 matrices", "as on the GPU"

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def describe(self) -> str:
        return (f"{describe_bytes(self.total)} (weights {describe_bytes(self.weights)} {self.weights_as}, KV cache "
                f"{describe_bytes(self.kv_cache)}, activations up to {describe_bytes(self.activations)})")


def check_kv_type(kv_type, label: str = "") -> None:
    """A ValueError naming a KV cache type that is not one of KV_BYTES (label: what asked for it)."""
    if kv_type not in KV_BYTES:
        where = f"{label}: " if label else ""
        raise ValueError(f"{where}kv_type {kv_type!r} is not one of {', '.join(KV_BYTES)}")


def describe_bytes(n: int) -> str:
    """A size for messages: "16 bytes", "3.5 KiB", "12.0 MiB", "1.50 GiB"."""
    if n < 1024:
        return f"{n} bytes"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    if n < GiB:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / GiB:.2f} GiB"


def ignored() -> bool:
    return os.environ.get(IGNORE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def available_host_memory() -> int | None:
    """Bytes the host can give this process now: psutil when installed, else /proc/meminfo's
    MemAvailable (Linux), else free pages from sysconf; None where nothing says."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def total_host_memory() -> int | None:
    """The host's physical memory in bytes: psutil when installed, else sysconf; None where nothing says."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _weight_sets(graphs) -> dict[tuple[str, ...], str]:
    """Every weight tuple the graphs read -> the kind of the first op reading it."""
    sets: dict[tuple[str, ...], str] = {}
    for graph in graphs:
        for op in graph.ops:
            if op.weights:
                sets.setdefault(op.weights, op.kind)
    return sets


def _kv_bytes(graphs, n_ctx: int, kv_type: str) -> int:
    layers = {}
    for graph in graphs:
        layers.update(graph.kv_layers())
    return sum(2 * n_kv * n_ctx * head_dim * KV_BYTES[kv_type] for n_kv, head_dim in layers.values())


def _activation_bound(gf, graphs, n_ctx: int, n_batch: int) -> int:
    """One prefill step of n_batch rows: LIVE_ACTIVATIONS buffers of the widest activation, the
    all-rows logits, the scores (and their exponentials) of one attention query block, the rope
    tables (cos and sin for every position)."""
    from cpu_fallback.ops import ATTENTION_QUERY_BLOCK

    rows = min(n_batch, n_ctx)
    total = 0
    for graph in graphs:
        widths = graph.widths
        out = widths[graph.output]
        inner = max((w for name, w in widths.items() if name != graph.output), default=out)
        heads = max((op.param("n_head") for op in graph.ops if op.kind == "attention"), default=0)
        rotary = {(op.param("n_rot"), op.param("base"), op.param("freq_scale"), op.weights, op.param("attn_factor"))
                  for op in graph.ops if op.kind == "rope"}
        step = 4 * rows * (LIVE_ACTIVATIONS * inner + out)
        step += 2 * 4 * heads * min(rows, ATTENTION_QUERY_BLOCK) * n_ctx
        step += sum(4 * n_ctx * n_rot for n_rot, *_ in rotary)  # cos and sin: n_rot/2 each
        total = max(total, step)
    return total


def cpu_estimate(gf, graphs, n_ctx: int, n_batch: int, weights_dtype: str = "float32",
                 kv_type: str = "f32") -> Estimate:
    """What CpuBackend will hold: weights exactly as it stores them (see cpu_fallback.backend),
    the KV cache exactly (kv_type "f32" or "f16"), activations bounded."""
    half = weights_dtype == "float16"
    weights = 0
    for names in _weight_sets(graphs):
        infos = [gf.tensor(n) for n in names]
        matrix = any(len(i.shape) > 1 for i in infos)  # the backend's float16 rule
        weights += sum(i.n_elements for i in infos) * (2 if half and matrix else 4)
    return Estimate("cpu", weights, _kv_bytes(graphs, n_ctx, kv_type), _activation_bound(gf, graphs, n_ctx, n_batch),
                    "as float16 matrices" if half else "as float32")


def _gpu_matrix_bytes(gf, names: tuple[str, ...]) -> int:
    from .gpu import quant

    total = 0
    for name in names:
        info = gf.tensor(name)
        cols = info.shape[-1]
        rows = info.n_elements // cols
        # the planes quant.pack makes: float rows padded to a multiple of 8 columns, f16 block
        # scales split off and padded to whole words per row, other blocks as stored
        total += 4 * rows * sum(quant.plane_row_words(quant.device_type(info.type_name), cols))
    return total


def gpu_estimate(gf, graphs, n_ctx: int, n_batch: int, kv_type: str = "f32") -> Estimate:
    """What GpuBackend will allocate: weights as it uploads them (quantized matrices as stored,
    Q4_0/Q5_0 stacked with Q8_0 widened by at most quant.MAX_WIDENING_BYTES each), the KV cache
    exactly (kv_type "f32" or "f16"), step buffers bounded as for the CPU plus the same again for
    per-step parameters and the second graph's pool slots."""
    weights = 0
    for names, kind in _weight_sets(graphs).items():
        if kind in MATRIX_OPS:
            weights += _gpu_matrix_bytes(gf, names)
        else:
            weights += sum(gf.tensor(n).n_elements for n in names) * 4
    return Estimate("gpu", weights, _kv_bytes(graphs, n_ctx, kv_type),
                    2 * _activation_bound(gf, graphs, n_ctx, n_batch), "as on the GPU")


def _options(n_ctx: int, fits_f16: bool | None, other: str) -> str:
    opts = ["a smaller quantization of the model", f"a shorter --ctx-size (n_ctx, now {n_ctx})"]
    if fits_f16 is not None:
        opts.append("--cpu-weights f16 (weights_dtype='float16'), which fits" if fits_f16 else
                    "--cpu-weights f16 (weights_dtype='float16') halves the weights but does not fit either")
    opts.append(f"the {other} backend (--backend {other})")
    return f"options: {'; '.join(opts)}; {IGNORE_ENV}=1 skips this check"


def check_cpu(path, gf, graphs, n_ctx: int, n_batch: int, weights_dtype: str = "float32",
              available=None, kv_type: str = "f32") -> Estimate:
    """The CPU estimate; raises InsufficientMemory when it exceeds the host's available memory."""
    est = cpu_estimate(gf, graphs, n_ctx, n_batch, weights_dtype, kv_type)
    free = (available or available_host_memory)()
    if free is None or est.total <= free or ignored():
        return est
    fits_f16 = None
    if weights_dtype == "float32":
        fits_f16 = cpu_estimate(gf, graphs, n_ctx, n_batch, "float16", kv_type).total <= free
    raise InsufficientMemory(
        f"{os.path.basename(str(path))}: the cpu backend needs {est.describe()}, but the host has "
        f"{describe_bytes(free)} available; {_options(n_ctx, fits_f16, 'gpu')}")


def check_gpu(path, gf, graphs, n_ctx: int, n_batch: int, info, available=None, kv_type: str = "f32") -> Estimate:
    """The GPU estimate against the adapter `info` (a gpu.device.AdapterInfo): one layer's KV cache
    is one storage binding; on a software adapter the total must fit the host's available memory.
    Raises InsufficientMemory."""
    est = gpu_estimate(gf, graphs, n_ctx, n_batch, kv_type)
    if ignored():
        return est
    name = os.path.basename(str(path))
    layers = {}
    for graph in graphs:
        layers.update(graph.kv_layers())
    widest = max((n_kv * head_dim for n_kv, head_dim in layers.values()), default=0)
    limit = min(info.max_storage_binding, info.max_buffer)
    one_layer = n_ctx * widest * KV_BYTES[kv_type]
    if one_layer > limit:
        raise InsufficientMemory(
            f"{name}: the gpu backend needs {est.describe()}, with one layer's K (and V) cache of "
            f"{describe_bytes(one_layer)} in one buffer, but {info.name} binds at most {describe_bytes(limit)} "
            f"per buffer; "
            f"{_options(n_ctx, None, 'cpu')}")
    if info.is_software:
        free = (available or available_host_memory)()
        if free is not None and est.total > free:
            raise InsufficientMemory(
                f"{name}: the gpu backend needs {est.describe()}, but {info.name} is a software adapter "
                f"using host memory, of which {describe_bytes(free)} is available; {_options(n_ctx, None, 'cpu')}")
    return est
