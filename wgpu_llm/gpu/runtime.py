"""The device-side plumbing: buffers, a buffer pool, a pipeline cache, and GPU error reporting.

Errors: wgpu-py raises validation / out-of-memory / shader-compile errors from the call that
caused them; `Runtime.guard(what)` turns them into `GpuError` naming the kernel or step. Errors
that arrive outside a call (device lost, errors found while the queue runs) are only logged by
wgpu-py, so a handler on its logger collects them and `Runtime.check(what)` raises them after
every submit -- a failing step never returns silently wrong numbers.

WebGPU's error scopes (`device.push_error_scope` / `pop_error_scope`) and `device.lost` are not
implemented by wgpu-py 0.32 (both raise NotImplementedError): it reports each call's error from
the call itself, and device loss through its logger, which is what the two paths above catch.
Guards wrap buffer creation, pipeline and bind group creation, uploads, and each submission with
its readback -- never a single dispatch: recording a dispatch costs ~1 us of host time (`Program.record_pass`
calls wgpu-native directly) and cannot fail on its own (its errors surface when the pass ends or
the encoder finishes), so a decode step pays one guard per command buffer.

WGPU_LLM_INJECT_GPU_FAULT makes the runtime fail on purpose, for tests of what happens above it:
"load" -- every buffer creation reports out of memory; "after_steps:N" -- the submission that
would run a step past the first N reports the device lost (see `FaultInjection`).
"""

from __future__ import annotations

import functools
import math
import logging
import os
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from wgpu_llm.backends import GpuError
from wgpu_llm.memory import describe_bytes

from . import kernels as K
from .device import AdapterInfo, adapter_info, binding_limit, request_device


ENV_INJECT_FAULT = "WGPU_LLM_INJECT_GPU_FAULT"

# An operating system resets a GPU whose command buffer runs for about 2 seconds (Windows' TDR):
# on a hardware adapter, a Program whose run took longer than this splits its later runs into
# command buffers submitted one by one, sized from that measured time to about half of it each.
# A software adapter runs on the host's threads, which no GPU watchdog watches: no bound there.
MAX_SUBMIT_S = 0.5
ENV_MAX_SUBMIT_S = "WGPU_LLM_MAX_SUBMIT_S"  # another bound, on any adapter (tests: a tiny one splits every step)


def max_submit_seconds(software: bool = False) -> float:
    value = os.environ.get(ENV_MAX_SUBMIT_S, "").strip()
    if not value:
        return float("inf") if software else MAX_SUBMIT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{ENV_MAX_SUBMIT_S}={value!r}: expected a number of seconds > 0")
    return seconds


@dataclass(frozen=True)
class FaultInjection:
    """A GPU failure made on purpose (tests only), from WGPU_LLM_INJECT_GPU_FAULT:
    "load": every buffer creation fails as out of memory (a model cannot load);
    "after_steps:N": once N steps were submitted, the next submission finds the device lost."""

    at_load: bool = False
    after_steps: int | None = None

    @staticmethod
    def from_env() -> FaultInjection:
        value = os.environ.get(ENV_INJECT_FAULT, "").strip()
        if not value:
            return FaultInjection()
        if value == "load":
            return FaultInjection(at_load=True)
        kind, _, n = value.partition(":")
        if kind == "after_steps" and n.isdigit():
            return FaultInjection(after_steps=int(n))
        raise ValueError(f"{ENV_INJECT_FAULT}={value!r}: expected 'load' or 'after_steps:N' (N >= 0)")

    @property
    def note(self) -> str:
        return f"injected by {ENV_INJECT_FAULT}"


class _ErrorLog(logging.Handler):
    """Collects error records that wgpu-py logs instead of raising (device lost, queue errors)."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record):
        with self._lock:
            self.messages.append(record.getMessage())

    def add(self, message: str) -> None:
        """Collect a message as if wgpu had logged it (an injected fault)."""
        with self._lock:
            self.messages.append(message)

    def take(self) -> list[str]:
        with self._lock:
            out, self.messages = self.messages, []
        return out


_WGPU_LOG = _ErrorLog()


def _watch_wgpu_log() -> None:
    """Attach the collector to wgpu's logger (after wgpu is imported: it installs its own logger class)."""
    import wgpu  # noqa: F401

    logger = logging.getLogger("wgpu")
    if _WGPU_LOG not in logger.handlers:
        logger.addHandler(_WGPU_LOG)


@dataclass(frozen=True)
class Caps:
    """What kernels may assume about the device."""

    info: AdapterInfo
    subgroups: bool
    subgroup_size: int  # measured on this device (0 without the subgroup feature)
    shader_f16: bool
    max_binding: int  # bytes: the largest buffer a kernel binds, device.binding_limit (every size decision uses it)
    max_buffer: int
    max_workgroup_storage: int
    max_invocations: int
    max_storage_buffers: int
    max_per_dim: int
    uniform_align: int


class Runtime:
    """One device with its queue, pools and caches."""

    def __init__(self, adapter):
        import wgpu

        self.wgpu = wgpu
        _watch_wgpu_log()
        self.adapter = adapter
        self.faults = FaultInjection.from_env()
        self.steps_submitted = 0  # model steps sent to the queue (what after_steps:N counts)
        self.info = adapter_info(adapter)
        self.max_submit_s = max_submit_seconds(software=self.info.is_software)
        _WGPU_LOG.take()
        self.device = request_device(adapter)
        self.queue = self.device.queue
        lim = self.device.limits
        features = set(self.device.features)
        subgroups = "subgroup" in features or "subgroups" in features
        self._pipelines: dict[tuple[str, str], tuple[object, object]] = {}
        self.caps = Caps(
            info=self.info,
            subgroups=subgroups,
            subgroup_size=0,
            shader_f16="shader-f16" in features,
            max_binding=binding_limit(lim["max-storage-buffer-binding-size"], lim["max-buffer-size"]),
            max_buffer=int(lim["max-buffer-size"]),
            max_workgroup_storage=int(lim["max-compute-workgroup-storage-size"]),
            max_invocations=int(lim["max-compute-invocations-per-workgroup"]),
            max_storage_buffers=int(lim["max-storage-buffers-per-shader-stage"]),
            max_per_dim=int(lim["max-compute-workgroups-per-dimension"]),
            uniform_align=max(16, int(lim["min-uniform-buffer-offset-alignment"])),
        )
        self.timestamp_query = "timestamp-query" in features  # GPU timestamps for traced runs
        self.allocated_bytes = 0  # every buffer created on the device so far
        self._live = weakref.WeakSet()  # every buffer not yet garbage-collected: close() destroys them
        self.bytes_uploaded = 0
        # CPU seconds the waiting threads spent inside waits for the device's results (read_back):
        # counters() lets a caller take them out of its thread's CPU time
        self.wait_cpu_s = 0.0
        self.dispatches = 0  # compute dispatches submitted to the queue so far (submit)
        self.pool = BufferPool(self)
        self._map_lock = threading.Lock()  # read_back's one map callback and its status
        self._map_status = [None]
        self._map_callback_info, self._map_callback = _map_callback(self._map_status)
        if subgroups:
            self.caps = Caps(**{**self.caps.__dict__, "subgroup_size": self._probe_subgroup_size()})

    # ---- errors ----
    @contextmanager
    def guard(self, what: str):
        """Run wgpu calls; any wgpu error becomes a GpuError that names `what`."""
        wgpu = self.wgpu
        try:
            yield
        except (wgpu.GPUError, wgpu.GPUPipelineError, MemoryError) as e:
            # wgpu sometimes logs the error it raises as well: take those copies along
            logged = [m for m in _WGPU_LOG.take() if m.strip() != str(e).strip()]
            kind = "out of memory" if isinstance(e, MemoryError) else type(e).__name__
            raise GpuError("\n".join([f"{what}: {kind}: {e}", *logged])) from e
        self.check(what)

    def check(self, what: str) -> None:
        """Raise the errors wgpu logged since the last check (device lost, queue errors)."""
        messages = _WGPU_LOG.take()
        if messages:
            raise GpuError(f"{what}: " + "\n".join(messages))

    # ---- buffers ----
    def buffer(self, nbytes: int, usage, label: str = ""):
        """A new buffer; wgpu validates the size against the device's limits (a GpuError with
        wgpu's message, naming the buffer)."""
        nbytes = max(16, -(-int(nbytes) // 16) * 16)
        with self.guard(f"creating the {label!r} buffer ({describe_bytes(nbytes)})"):
            if self.faults.at_load:
                raise MemoryError(self.faults.note)
            buf = self.device.create_buffer(label=label, size=nbytes, usage=usage)
        self.allocated_bytes += nbytes
        self._live.add(buf)
        return buf

    def close(self) -> None:
        """Free the device memory of every buffer now (not whenever the garbage collector gets to
        it) and drop the pool and the pipelines; the runtime must not be used afterwards."""
        for buf in list(self._live):
            buf.destroy()  # wgpu frees the memory once any work already submitted is done with it
        self._live = weakref.WeakSet()
        self.pool.buffers = []
        self._pipelines.clear()

    def storage(self, nbytes: int, label: str = ""):
        u = self.wgpu.BufferUsage
        return self.buffer(nbytes, u.STORAGE | u.COPY_SRC | u.COPY_DST, label)

    def upload(self, array: np.ndarray, label: str = "", usage=None):
        """A new storage buffer holding `array` (any dtype; bytes as they are)."""
        data = np.ascontiguousarray(array)
        nbytes = max(16, -(-data.nbytes // 16) * 16)
        u = self.wgpu.BufferUsage
        buf = self.buffer(nbytes, usage or (u.STORAGE | u.COPY_DST | u.COPY_SRC), label)
        if data.nbytes:
            flat = data.reshape(-1).view(np.uint8)
            if data.nbytes % 4:
                flat = np.concatenate([flat, np.zeros(4 - data.nbytes % 4, np.uint8)])
            with self.guard(f"uploading {label!r} ({describe_bytes(data.nbytes)})"):
                self.queue.write_buffer(buf, 0, flat)
        self.bytes_uploaded += data.nbytes
        return buf

    def submit(self, command_buffers: list, dispatches: int, steps: int = 1) -> int | None:
        """Submit command buffers holding `steps` model steps of `dispatches` compute dispatches in
        all (both counted), inside the caller's guard, which raises what the submission reports.
        Returns the submission's index for read_back (None where wgpu-native's is not available)."""
        limit = self.faults.after_steps
        if limit is not None and self.steps_submitted + steps > limit:
            _WGPU_LOG.add(f"The WGPU device was lost ({self.faults.note} after {limit} steps)")
            return None
        self.steps_submitted += steps
        self.dispatches += dispatches
        native = _native_submission()
        if native is None:
            self.queue.submit(command_buffers)
            return None
        ffi, lib = native
        handles = ffi.new("WGPUCommandBuffer[]", [cb._internal for cb in command_buffers])
        return int(lib.wgpuQueueSubmitForIndex(self.queue._internal, len(command_buffers), handles))

    def read_back(self, buf, nbytes: int, submission: int | None = None) -> np.ndarray:
        """The first nbytes of a MAP_READ buffer (a uint8 copy), blocking until the device has
        written them: the CPU time the wait itself takes (wgpu-native may spin) goes into wait_cpu_s
        (so the rest of the thread's CPU time is host work). Inside the caller's guard.

        submission: the index `submit` returned for the work that writes the buffer. Then only that
        work is waited for, not what was submitted after it (wgpu-py's map_sync waits for the whole
        queue), so a decode loop can keep a second command buffer running meanwhile. The map itself
        calls wgpu-native directly: wgpu-py's map_async makes a callback and wakes its poll thread
        on every call, ~0.5 ms of host time per read on a 2-core host, ~0.02 ms this way."""
        native = _native_submission()
        t0 = time.thread_time()
        if native is None:
            buf.map_sync(self.wgpu.MapMode.READ, 0, nbytes)
            self.wait_cpu_s += time.thread_time() - t0
            try:
                return np.frombuffer(buf.read_mapped(0, nbytes, copy=False), np.uint8).copy()
            finally:
                buf.unmap()
        ffi, lib = native
        device = self.device._internal
        with self._map_lock:
            index = ffi.NULL if submission is None else ffi.new("WGPUSubmissionIndex *", submission)
            lib.wgpuDevicePoll(device, True, index)
            self.wait_cpu_s += time.thread_time() - t0
            self._map_status[0] = None
            lib.wgpuBufferMapAsync(buf._internal, lib.WGPUMapMode_Read, 0, nbytes, self._map_callback_info[0])
            lib.wgpuDevicePoll(device, False, ffi.NULL)  # the work is done: this poll maps the buffer
            if self._map_status[0] is None:  # not yet (another submission in the way): wait for the queue
                lib.wgpuDevicePoll(device, True, ffi.NULL)
            if self._map_status[0] != lib.WGPUMapAsyncStatus_Success:
                raise GpuError(f"mapping {buf.label or 'a buffer'} for reading failed (status {self._map_status[0]})")
            try:
                data = lib.wgpuBufferGetConstMappedRange(buf._internal, 0, nbytes)
                if data == ffi.NULL:
                    raise GpuError(f"{buf.label or 'a buffer'}: no mapped range of {nbytes} bytes")
                return np.frombuffer(ffi.buffer(data, nbytes), np.uint8).copy()
            finally:
                lib.wgpuBufferUnmap(buf._internal)

    def read(self, buf, nbytes: int | None = None, offset: int = 0) -> np.ndarray:
        """Copy a buffer back to the host (slow path for tests; steps use their own staging)."""
        with self.guard("reading a buffer back"):
            data = self.queue.read_buffer(buf, offset, nbytes)
        return np.frombuffer(data, np.uint8).copy()

    # ---- pipelines ----
    def pipeline(self, source: str, entry: str, label: str, layout_entries: list | None = None):
        """(compute pipeline, bind group layout), cached by (source, entry point).

        layout_entries: explicit bind group layout entries, or None to let wgpu derive the layout
        from the shader (used for kernels written elsewhere)."""
        key = (source, entry)
        if key not in self._pipelines:
            with self.guard(f"compiling kernel {label}"):
                module = self.device.create_shader_module(label=label, code=source)
                if layout_entries is None:
                    pipe = self.device.create_compute_pipeline(
                        label=label, layout="auto", compute={"module": module, "entry_point": entry})
                    bgl = pipe.get_bind_group_layout(0)
                else:
                    bgl = self.device.create_bind_group_layout(label=label, entries=layout_entries)
                    layout = self.device.create_pipeline_layout(label=label, bind_group_layouts=[bgl])
                    pipe = self.device.create_compute_pipeline(
                        label=label, layout=layout, compute={"module": module, "entry_point": entry})
            self._pipelines[key] = (pipe, bgl)
        return self._pipelines[key]

    @property
    def n_pipelines(self) -> int:
        return len(self._pipelines)

    def bind_group(self, bgl, entries: list, label: str):
        with self.guard(f"binding buffers of kernel {label}"):
            return self.device.create_bind_group(label=label, layout=bgl, entries=entries)

    # ---- probing ----
    def _probe_subgroup_size(self) -> int:
        """The subgroup size the driver uses for a 1-D compute workgroup (lavapipe 8, NVIDIA 32, ...)."""
        src = """
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(subgroup_size) sg: u32) {
    if (li == 0u) { out[0] = sg; }
}
"""
        try:
            pipe, bgl = self.pipeline(src, "main", "probe_subgroup_size")
            buf = self.storage(16, "probe")
            bg = self.bind_group(bgl, [{"binding": 0, "resource": {"buffer": buf}}], "probe")
            with self.guard("probing the subgroup size"):
                enc = self.device.create_command_encoder()
                cp = enc.begin_compute_pass()
                cp.set_pipeline(pipe)
                cp.set_bind_group(0, bg)
                cp.dispatch_workgroups(1)
                cp.end()
                self.queue.submit([enc.finish()])
            size = int(self.read(buf, 4).view(np.uint32)[0])
        except GpuError:
            return 0
        return size if 1 <= size <= 256 else 0


class BufferPool:
    """Intermediate-activation buffers, shared by every compiled step of a backend.

    Steps run one at a time in queue order -- the GPU finishes one before the next starts, also
    when a decode loop submits several without reading anything back -- so two compiled graphs
    may use the same physical buffers. A compile asks for a list of slot sizes; slot i gets
    the pool's i-th buffer by size rank, grown (replaced by a larger one) when too small -- a step
    compiled earlier keeps the buffers it bound.
    """

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.buffers: list = []  # largest first

    def assign(self, sizes: list[int], label: str) -> list:
        order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
        out = [None] * len(sizes)
        for rank, i in enumerate(order):
            need = max(16, -(-sizes[i] // 256) * 256)
            if rank < len(self.buffers) and self.buffers[rank].size >= need:
                out[i] = self.buffers[rank]
                continue
            size = max(need, min(_round_size(need), self.rt.caps.max_binding))
            buf = self.rt.storage(size, f"{label} pool[{rank}]")
            if rank < len(self.buffers):
                self.buffers[rank] = buf
            else:
                self.buffers.append(buf)
            out[i] = buf
        self.buffers.sort(key=lambda b: -b.size)
        return out

    @property
    def nbytes(self) -> int:
        return sum(b.size for b in self.buffers)


def _round_size(n: int) -> int:
    """Round up to 1/8 steps of a power of two so later, slightly larger graphs reuse buffers."""
    if n <= 4096:
        return 4096
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


class Program:
    """A fixed list of kernels, made ready once: pipelines, one uniform buffer holding every
    kernel's parameters, bind groups, grids. `run` writes pos0 (and any given inputs), records
    every dispatch into one compute pass, copies the wanted outputs to a staging buffer, submits
    once and reads the staging buffer back -- or, once a run took longer than the runtime's
    max_submit_s, in `parts` command buffers of consecutive dispatches submitted one by one.
    `record_pass` / `record_outputs` put the same commands into a caller's encoder (decode loops
    that submit several steps at once). `run(timed=True)` records one pass per dispatch instead
    and times each (tracing)."""

    def __init__(self, rt: Runtime, kernels: list, label: str, outputs: list[tuple] = ()):
        """outputs: [(buffer, byte offset, nbytes)] copied back after the pass, in order."""
        u = rt.wgpu.BufferUsage
        self.rt, self.label = rt, label
        self.step_buffer = rt.buffer(K.STEP_BYTES, u.UNIFORM | u.COPY_DST, f"{label} step")
        align = rt.caps.uniform_align
        offsets, total = [], 0
        for k in kernels:
            offsets.append(total)
            total += -(-max(16, len(k.params)) // align) * align
        blob = np.zeros(max(total, 16), np.uint8)
        for k, off in zip(kernels, offsets):
            blob[off:off + len(k.params)] = np.frombuffer(k.params, np.uint8)
        self.param_buffer = rt.upload(blob, f"{label} params", usage=u.UNIFORM | u.COPY_DST)
        self.calls = []
        for k, off in zip(kernels, offsets):
            entries = [{"binding": 0, "resource": {"buffer": self.param_buffer, "offset": off,
                                                   "size": max(16, len(k.params))}}]
            layout = None
            if k.explicit_layout:
                S = rt.wgpu.ShaderStage.COMPUTE
                layout = [{"binding": 0, "visibility": S, "buffer": {"type": "uniform"}}]
                if k.uses_step:
                    layout.append({"binding": 1, "visibility": S, "buffer": {"type": "uniform"}})
                for binding, _, read_only in k.buffers:
                    layout.append({"binding": binding, "visibility": S,
                                   "buffer": {"type": "read-only-storage" if read_only else "storage"}})
            if k.uses_step:
                entries.append({"binding": 1, "resource": {"buffer": self.step_buffer, "offset": 0,
                                                       "size": K.STEP_BYTES}})
            for binding, buf, _ in k.buffers:
                if buf.size > rt.caps.max_binding:
                    raise GpuError(f"kernel {k.label}: a {buf.size}-byte buffer exceeds the device's storage "
                                   f"binding limit of {rt.caps.max_binding} bytes")
                entries.append({"binding": binding, "resource": {"buffer": buf, "offset": 0, "size": buf.size}})
            pipe, bgl = rt.pipeline(k.source, k.entry, k.label, layout)
            bg = rt.bind_group(bgl, entries, k.label)
            self.calls.append((pipe, bg, k.grid))
        self.outputs = list(outputs)
        self.out_bytes = sum(n for _, _, n in self.outputs)
        self.staging = None
        if self.out_bytes:
            self.staging = rt.buffer(self.out_bytes, u.MAP_READ | u.COPY_DST, f"{label} staging")
        self.n_dispatches = len(self.calls)
        self.labels = [k.label for k in kernels]  # what each dispatch computes, in order
        self._native = _native_calls(self.calls)
        self.parts = 1  # command buffers a run is submitted in (grows from measured run times)

    def record_pass(self, enc, start: int = 0, stop: int | None = None) -> None:
        """Record the dispatches [start:stop] (default all) into one compute pass of `enc`."""
        cp = enc.begin_compute_pass()
        if self._native is not None:
            set_pipeline, set_bind_group, dispatch, no_offsets = _native_functions()
            pass_handle = cp._internal
            if start:  # the pipeline may have been set by a dispatch before `start`
                set_pipeline(pass_handle, self.calls[start][0]._internal)
            for pipe, bg, x, y, z in self._native[start:stop]:
                if pipe is not None:
                    set_pipeline(pass_handle, pipe)
                set_bind_group(pass_handle, 0, bg, 0, no_offsets)
                dispatch(pass_handle, x, y, z)
        else:
            last = None
            for pipe, bg, grid in self.calls[start:stop]:
                if pipe is not last:
                    cp.set_pipeline(pipe)
                    last = pipe
                cp.set_bind_group(0, bg)
                cp.dispatch_workgroups(*grid)
        cp.end()

    def record_outputs(self, enc) -> None:
        """Copy the wanted outputs into the staging buffer (after the pass)."""
        at = 0
        for buf, off, n in self.outputs:
            enc.copy_buffer_to_buffer(buf, off, self.staging, at, n)
            at += n

    def run(self, pos0: int = 0, n_tokens: int = 0, writes: list[tuple] = (), timed: bool = False,
            kv_base: int = 0, rows=None) -> list[np.ndarray]:
        """Run the kernels once; writes: [(buffer, numpy array)] uploaded first. Returns the
        outputs as uint8 arrays (copies). timed: also measure every dispatch (one pass each, GPU
        timestamps where the device has them) into `self.last_times` (seconds, in order)."""
        rt = self.rt
        with rt.guard(f"running {self.label}"):
            if rows is None:
                rt.queue.write_buffer(self.step_buffer, 0, np.array([pos0, n_tokens, kv_base, 0], np.uint32))
            else:  # a batched step: rows = (n, 2) positions and cache bases, one row per sequence
                table = np.zeros((1 + len(rows), 4), np.uint32)
                table[0] = (0, n_tokens, 0, 1)
                table[1:, :2] = rows
                rt.queue.write_buffer(self.step_buffer, 0, table)
            for buf, data in writes:
                rt.queue.write_buffer(buf, 0, np.ascontiguousarray(data))
            t0 = time.perf_counter()
            if timed:
                enc = self._record_timed(rt.device.create_command_encoder())
            else:
                enc = self._submit_parts()
            self.record_outputs(enc)
            submission = rt.submit([enc.finish()], self.n_dispatches)  # (a timed run submits them one by one before)
            if timed and self._ts is not None:
                self.last_times = self._read_timestamps()
            if not self.out_bytes:
                return []
            data = rt.read_back(self.staging, self.out_bytes, submission)
            if not timed:
                self._size_parts(time.perf_counter() - t0)
        out, at = [], 0
        for _, _, n in self.outputs:
            out.append(data[at:at + n])
            at += n
        return out

    def _submit_parts(self):
        """Submit all but the last of the run's `parts` command buffers; return the encoder
        holding the last part (the caller adds the output copies and submits it)."""
        rt, n = self.rt, self.n_dispatches
        bounds = [n * i // self.parts for i in range(self.parts + 1)]
        for start, stop in zip(bounds[:-2], bounds[1:-1]):
            enc = rt.device.create_command_encoder()
            self.record_pass(enc, start, stop)
            rt.submit([enc.finish()], 0, steps=0)
        enc = rt.device.create_command_encoder()
        self.record_pass(enc, bounds[-2], bounds[-1])
        return enc

    def _size_parts(self, seconds: float) -> None:
        """After a run of `seconds` (submission to results): more parts if a part ran longer than
        the runtime's bound, each then about half of it (dispatches taken as equally long)."""
        bound = self.rt.max_submit_s
        if seconds / self.parts > bound:
            self.parts = min(self.n_dispatches, max(self.parts + 1, math.ceil(2 * seconds / bound)))

    # ---- timed runs (tracing) ----
    _ts = None  # (query sets, resolve buffer, staging buffer, seconds per tick), made at the first timed run
    _probe = None  # (source, mappable) buffers of timed runs without timestamp queries
    last_times: tuple[float, ...] = ()  # seconds of each dispatch in the last timed run

    def _record_timed(self, enc):
        """Record one compute pass per dispatch. With timestamp queries each pass writes the GPU
        clock at its start and end (resolved after the passes); without, every dispatch is
        submitted on its own and timed on the host while waiting for it (coarse)."""
        rt = self.rt
        if not rt.timestamp_query:
            self._ts = None
            if self._probe is None:  # a copy into `wait` after each dispatch: mapping it waits for the queue
                u = rt.wgpu.BufferUsage
                self._probe = (rt.storage(16, f"{self.label} probe"),
                               rt.buffer(16, u.MAP_READ | u.COPY_DST, f"{self.label} wait"))
            src, probe = self._probe
            times = []
            rt.queue.submit([enc.finish()])
            for call in self.calls:
                enc = rt.device.create_command_encoder()
                _one_dispatch_pass(enc, call)
                enc.copy_buffer_to_buffer(src, 0, probe, 0, 16)
                t0 = time.perf_counter()
                rt.queue.submit([enc.finish()])
                probe.map_sync(rt.wgpu.MapMode.READ, 0, 16)
                times.append(time.perf_counter() - t0)
                probe.unmap()
            self.last_times = times
            return rt.device.create_command_encoder()
        if self._ts is None:
            u = rt.wgpu.BufferUsage
            n = 2 * len(self.calls)
            sets = [rt.device.create_query_set(label=f"{self.label} timestamps", type="timestamp",
                                               count=min(_QUERIES_PER_SET, n - i))
                    for i in range(0, n, _QUERIES_PER_SET)]
            resolve = rt.buffer(8 * n, u.QUERY_RESOLVE | u.COPY_SRC, f"{self.label} timestamps")
            staging = rt.buffer(8 * n, u.MAP_READ | u.COPY_DST, f"{self.label} timestamps staging")
            self._ts = (sets, resolve, staging, timestamp_period_ns(rt) * 1e-9)
        sets, resolve, staging, _ = self._ts
        for d, call in enumerate(self.calls):
            qs, first = sets[2 * d // _QUERIES_PER_SET], 2 * d % _QUERIES_PER_SET
            _one_dispatch_pass(enc, call, timestamp_writes={"query_set": qs, "beginning_of_pass_write_index": first,
                                                            "end_of_pass_write_index": first + 1})
        n = 2 * len(self.calls)
        for j, qs in enumerate(sets):
            enc.resolve_query_set(qs, 0, min(_QUERIES_PER_SET, n - j * _QUERIES_PER_SET), resolve,
                                  8 * j * _QUERIES_PER_SET)
        enc.copy_buffer_to_buffer(resolve, 0, staging, 0, 8 * n)
        return enc

    @property
    def timestamps(self) -> bool:
        """Whether timed runs measure with GPU timestamp queries."""
        return self._ts is not None

    def _read_timestamps(self) -> list[float]:
        _, _, staging, tick_s = self._ts
        n = 2 * len(self.calls)
        staging.map_sync(self.rt.wgpu.MapMode.READ, 0, 8 * n)
        try:
            ticks = np.frombuffer(staging.read_mapped(0, 8 * n, copy=False), np.uint64).astype(np.int64)
        finally:
            staging.unmap()
        begin, end = ticks[0::2], ticks[1::2]
        return [max(0, int(e - b)) * tick_s for b, e in zip(begin, end)]


_QUERIES_PER_SET = 4096  # WebGPU's limit on a query set's size


@functools.cache
def _native_functions():
    """wgpu-native's C functions that record a compute pass, called without wgpu-py's wrappers:
    (set pipeline, set bind group, dispatch, NULL); None on another wgpu backend.

    A decode step records ~150 dispatches, and wgpu-py spends ~5 us of Python per dispatch around
    three C calls of well under 1 us (an error scope per call, argument conversion). Recording
    errors do not need that scope: wgpu-native keeps them in the encoder and reports them when the
    pass ends or the encoder finishes (wrapped calls, inside the caller's guard), and anything it
    reports otherwise reaches wgpu's logger, which `Runtime.check` reads."""
    try:
        from wgpu.backends.wgpu_native._ffi import ffi, lib

        return (lib.wgpuComputePassEncoderSetPipeline, lib.wgpuComputePassEncoderSetBindGroup,
                lib.wgpuComputePassEncoderDispatchWorkgroups, ffi.NULL)
    except (ImportError, AttributeError):
        return None


@functools.cache
def _native_submission():
    """(ffi, lib) of wgpu-native, whose submissions have indices a poll can wait for one by one;
    None on another wgpu backend."""
    try:
        from wgpu.backends.wgpu_native._ffi import ffi, lib

        lib.wgpuQueueSubmitForIndex, lib.wgpuDevicePoll  # noqa: B018 -- both must exist
        return ffi, lib
    except (ImportError, AttributeError):
        return None


def _map_callback(status: list) -> tuple:
    """wgpu-native's map callback info for Runtime.read_back, and the callback it points to (both
    to be kept alive by the runtime), made once: the callback writes its status into status[0].
    (None, None) on another wgpu backend."""
    native = _native_submission()
    if native is None:
        return None, None
    ffi, lib = native

    @ffi.callback("void(WGPUMapAsyncStatus, WGPUStringView, void *, void *)")
    def on_mapped(result, _message, _userdata1, _userdata2):
        status[0] = result

    info = ffi.new("WGPUBufferMapCallbackInfo *", {"mode": lib.WGPUCallbackMode_AllowProcessEvents,
                                                   "callback": on_mapped})
    return info, on_mapped


def _native_calls(calls: list) -> list | None:
    """The calls as (pipeline handle or None where the previous dispatch set it already, bind
    group handle, x, y, z) for record_pass's native path; None where that path is not available.
    The handles stay valid while `calls` holds their objects (the Program keeps both)."""
    if _native_functions() is None:
        return None
    out, last = [], None
    for pipe, bg, grid in calls:
        handles = (getattr(pipe, "_internal", None), getattr(bg, "_internal", None))
        if None in handles:  # not wgpu-native objects
            return None
        x, y, z = (*grid, 1, 1)[:3]
        out.append((None if pipe is last else handles[0], handles[1], int(x), int(y), int(z)))
        last = pipe
    return out


def _one_dispatch_pass(enc, call, **pass_args) -> None:
    """Record one (pipeline, bind group, grid) dispatch as a compute pass of its own."""
    pipe, bg, grid = call
    cp = enc.begin_compute_pass(**pass_args)
    cp.set_pipeline(pipe)
    cp.set_bind_group(0, bg)
    cp.dispatch_workgroups(*grid)
    cp.end()


def timestamp_period_ns(rt: Runtime) -> float:
    """Nanoseconds per GPU timestamp tick (wgpu-native reports the device's period; 1 elsewhere)."""
    try:
        from wgpu.backends.wgpu_native._api import libf

        period = float(libf.wgpuQueueGetTimestampPeriod(rt.queue._internal))
    except (ImportError, AttributeError, TypeError):  # another wgpu backend, or an older wgpu-native
        return 1.0
    return period if period > 0 else 1.0
