"""Which GPU to run on: list what wgpu sees, pick the best adapter, request a device from it.

`choose_adapter` prefers real hardware (discrete > integrated > anything else; Vulkan, Metal and
D3D12 over OpenGL). Software rasterizers (Mesa lavapipe/llvmpipe, SwiftShader, Microsoft WARP, any
adapter that calls itself a CPU) are taken only when the caller allows them -- i.e. when the user
asked for the GPU backend explicitly -- or when a selector names one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass, field

ENV_SELECTOR = "WGPU_LLM_ADAPTER"
# "1": every adapter gets the kernel choices of a hardware GPU (the subgroup / shared mat-vec, the
# hardware mat-mat and flash-attention tiles), software ones included -- so that lavapipe runs,
# and tests, the code a real GPU runs
ENV_FORCE_HARDWARE = "WGPU_LLM_FORCE_HARDWARE_KERNELS"
# bytes: a lower storage-binding limit than the device's, for every size decision (weight row
# pieces, the buffer pool, the KV cache, tokens per step); tests use it to make a software adapter
# split what only a small GPU would have to split
ENV_MAX_BINDING = "WGPU_LLM_MAX_BINDING_BYTES"

# features the runtime uses when the adapter has them
OPTIONAL_FEATURES = ("subgroup", "shader-f16", "timestamp-query")
# limits requested at the adapter's own maximum (the WebGPU defaults are far lower)
RAISED_LIMITS = (
    "max-storage-buffer-binding-size",
    "max-buffer-size",
    "max-compute-workgroup-storage-size",
    "max-compute-invocations-per-workgroup",
    "max-storage-buffers-per-shader-stage",
)

_SOFTWARE_NAMES = ("llvmpipe", "lavapipe", "swiftshader", "softpipe", "microsoft basic render", "warp")
_TYPE_RANK = {"discretegpu": 0, "discrete": 0, "integratedgpu": 1, "integrated": 1}
_BACKEND_RANK = {"vulkan": 0, "metal": 0, "d3d12": 0}  # anything else (OpenGL, ...) ranks 1


class GpuUnavailable(RuntimeError):
    """No usable GPU adapter (or the one asked for does not exist / cannot give a device)."""


@dataclass(frozen=True)
class AdapterInfo:
    index: int  # position in wgpu's enumeration: what a numeric selector refers to
    name: str
    vendor: str
    backend: str  # Vulkan / Metal / D3D12 / OpenGL
    type: str  # discrete / integrated / cpu / virtual / unknown
    is_software: bool
    max_storage_binding: int  # bytes
    max_buffer: int  # bytes
    subgroups: bool
    subgroup_sizes: tuple[int, int] | None  # (min, max) as wgpu reports them, else None
    shader_f16: bool
    timestamp_query: bool
    adapter: object = field(repr=False, compare=False, default=None)

    def describe(self) -> str:
        return f"wgpu {self.backend}: {self.name} ({self.type}{', software' if self.is_software else ''})"

    @property
    def binding_limit(self) -> int:
        """The largest storage binding the runtime plans with (see `binding_limit`)."""
        return binding_limit(self.max_storage_binding, self.max_buffer)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "adapter"}


def _norm_type(adapter_type: str) -> str:
    t = adapter_type.lower().replace("_", "").replace("-", "")
    return {"discretegpu": "discrete", "integratedgpu": "integrated", "virtualgpu": "virtual"}.get(t, t or "unknown")


def _norm_backend(backend: str) -> str:
    return {"opengl": "OpenGL", "gl": "OpenGL", "vulkan": "Vulkan", "metal": "Metal", "d3d12": "D3D12"}.get(
        backend.lower(), backend)


def software_kernels(info) -> bool:
    """Does this adapter (an AdapterInfo) get the kernel choices made for software adapters
    (the "row" mat-vec, the large mat-mat and flash-attention tiles)? Yes for a software adapter,
    unless WGPU_LLM_FORCE_HARDWARE_KERNELS=1 asks for the hardware choices everywhere."""
    value = os.environ.get(ENV_FORCE_HARDWARE, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{ENV_FORCE_HARDWARE}={value!r}: expected 1 (hardware kernel choices on every adapter) "
                         f"or 0 / unset")
    return value != "1" and bool(getattr(info, "is_software", False))


def binding_override() -> int | None:
    """WGPU_LLM_MAX_BINDING_BYTES as an int (None when unset); ValueError naming a bad value."""
    value = os.environ.get(ENV_MAX_BINDING, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 4096 or n % 4:
        raise ValueError(f"{ENV_MAX_BINDING}={value!r}: expected a byte count, a multiple of 4 of at least 4096")
    return n


# Kernels index their bindings with u32 element offsets (array<u32> / array<f32>): bindings below
# 4 GiB keep every such offset below 2^30, and every product like row * stride inside one binding
# far from 2^32, whatever a driver reports (see shaders/PORTABILITY.md)
MAX_INDEXED_BINDING = (1 << 32) - 4


def binding_limit(max_storage_binding: int, max_buffer: int) -> int:
    """The largest buffer a kernel may bind: a binding can be no larger than a buffer, and drivers
    report a max_storage_buffer_binding_size above max_buffer_size (lavapipe, some NVIDIA
    drivers), so the smaller of the two, below 4 GiB (MAX_INDEXED_BINDING) -- lowered further by
    WGPU_LLM_MAX_BINDING_BYTES."""
    limit = min(int(max_storage_binding), int(max_buffer), MAX_INDEXED_BINDING)
    override = binding_override()
    return limit if override is None else min(limit, override)


_RUNTIME_DIR: list[str] = []  # the private XDG_RUNTIME_DIR made for this process, if any


def quiet_vulkan_environment() -> None:
    """Give the process a valid XDG_RUNTIME_DIR when it has none: Vulkan loads Mesa's window-system
    code, whose Wayland client prints "error: XDG_RUNTIME_DIR is invalid or not set in the
    environment." on every adapter enumeration (a dozen lines per run on a headless machine)
    otherwise. The directory is private (mode 0700), empty, and removed at exit."""
    current = os.environ.get("XDG_RUNTIME_DIR", "")
    if current.startswith("/") and os.path.isdir(current):
        return
    if not _RUNTIME_DIR:
        path = tempfile.mkdtemp(prefix="wgpu-llm-runtime-")
        _RUNTIME_DIR.append(path)
        atexit.register(shutil.rmtree, path, True)
    os.environ["XDG_RUNTIME_DIR"] = _RUNTIME_DIR[0]


def _subgroup_sizes(info) -> tuple[int, int] | None:
    """(min, max) subgroup size from the adapter info: the spec's keys, or wgpu-py 0.32's
    misspelt "stackgroup_*" ones (which hold the spec's defaults, 4 and 128, not a driver reading)."""
    for prefix in ("subgroup", "stackgroup"):
        lo, hi = info.get(f"{prefix}_min_size"), info.get(f"{prefix}_max_size")
        if lo and hi:
            return int(lo), int(hi)
    return None


def adapter_info(adapter, index: int = -1) -> AdapterInfo:
    """Describe one wgpu adapter."""
    info = adapter.info
    name = info.get("device") or info.get("description") or "unknown adapter"
    vendor = info.get("vendor") or f"0x{info.get('vendor_id', 0):04x}"
    kind = _norm_type(str(info.get("adapter_type", "unknown")))
    lowered = f"{name} {vendor} {info.get('description', '')}".lower()
    software = kind == "cpu" or any(s in lowered for s in _SOFTWARE_NAMES)
    features = set(adapter.features)
    limits = adapter.limits
    return AdapterInfo(
        index=index,
        name=name,
        vendor=vendor,
        backend=_norm_backend(str(info.get("backend_type", "unknown"))),
        type=kind,
        is_software=software,
        max_storage_binding=int(limits["max-storage-buffer-binding-size"]),
        max_buffer=int(limits["max-buffer-size"]),
        subgroups="subgroup" in features or "subgroups" in features,
        subgroup_sizes=_subgroup_sizes(info),
        shader_f16="shader-f16" in features,
        timestamp_query="timestamp-query" in features,
        adapter=adapter,
    )


def list_adapters() -> list[AdapterInfo]:
    """Every adapter wgpu can see (an empty list when there is none or wgpu cannot load)."""
    quiet_vulkan_environment()
    try:
        import wgpu

        adapters = wgpu.gpu.enumerate_adapters_sync()
    except (ImportError, OSError, RuntimeError):  # no wgpu-native library / no driver: nothing to list
        return []
    return [adapter_info(a, i) for i, a in enumerate(adapters)]


def _rank(a: AdapterInfo) -> tuple:
    return (a.is_software, _TYPE_RANK.get(a.type, 2), _BACKEND_RANK.get(a.backend.lower(), 1), a.index)


def choose_adapter(allow_software: bool, selector: str | None = None):
    """Pick an adapter: (wgpu adapter, one-line reason). Raises GpuUnavailable.

    selector: an index into `list_adapters()` or a case-insensitive substring of the adapter's
    name / vendor / backend; defaults to the environment variable WGPU_LLM_ADAPTER. A selected
    adapter is used even if it is a software one.
    """
    adapters = list_adapters()
    if selector is None:
        selector = os.environ.get(ENV_SELECTOR) or None
    if not adapters:
        raise GpuUnavailable("no GPU adapter found: wgpu sees no Vulkan/Metal/D3D12/OpenGL device "
                             "(install a GPU driver, or Mesa's lavapipe for a software Vulkan device)")
    listing = "; ".join(f"[{a.index}] {a.describe()}" for a in adapters)
    if selector is not None:
        sel = str(selector).strip()
        if sel.isdigit():
            idx = int(sel)
            if idx >= len(adapters):
                raise GpuUnavailable(f"adapter index {idx} out of range; adapters: {listing}")
            picked = adapters[idx]
        else:
            matches = [a for a in adapters
                       if sel.lower() in f"{a.name} {a.vendor} {a.backend}".lower()]
            if not matches:
                raise GpuUnavailable(f"no adapter matches {sel!r}; adapters: {listing}")
            picked = min(matches, key=_rank)
        return picked.adapter, f"selected {picked.describe()} by {sel!r}"
    usable = [a for a in adapters if allow_software or not a.is_software]
    if not usable:
        raise GpuUnavailable(f"only software adapters found ({listing}); they are used only when the GPU "
                             f"backend is asked for explicitly or selected with {ENV_SELECTOR}")
    best = min(usable, key=_rank)
    why = "software adapter (no hardware GPU found)" if best.is_software else f"best {best.type} adapter"
    return best.adapter, f"{best.describe()}: {why}"


def request_device(adapter):
    """A device with the adapter's own limits for what LLM kernels need, and the optional features
    (subgroups, shader-f16, timestamp queries) that the adapter has."""
    features = set(adapter.features)
    wanted = []
    for f in OPTIONAL_FEATURES:
        if f in features or (f == "subgroup" and "subgroups" in features):
            wanted.append(f if f in features else "subgroups")
    limits = {k: adapter.limits[k] for k in RAISED_LIMITS if k in adapter.limits}
    try:
        return adapter.request_device_sync(label="wgpu-llm", required_features=wanted, required_limits=limits)
    except Exception as e:  # whatever the driver raises, the caller gets "no GPU"
        raise GpuUnavailable(f"{adapter_info(adapter).describe()}: device request failed: {e}") from e
