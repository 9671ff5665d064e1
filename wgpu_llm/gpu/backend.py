"""The wgpu backend: compiles a model graph (wgpu_llm/graph.py) into one fixed list of GPU dispatches.

Same interface as cpu_fallback.backend.CpuBackend: `compile(graph, n_tokens)` returns a step,
`step(token_ids, pos0)` returns the graph's output as float32 (rows, width), and the KV cache
semantics are the same (the attention op stores k, v of positions pos0.. then attends causally).

What happens once, at compile:
- weights are uploaded once per backend, still quantized (quant.pack / split_rows: a table larger
  than one storage binding is split by rows); the weights of one linear op with the same type and
  columns (q, k, v; gate, up) as one stacked matrix, read by one dispatch; norm weights as float32;
- the graph is planned: slices and last_row become views (an offset and a row stride into a
  buffer, which every kernel takes), ops write in place over inputs that die there, and fusions
  remove dispatches: a residual `add` of a linear becomes that linear accumulating into the
  residual; a glu becomes the way the linear reading it loads its input (act(gate) * up); a
  residual `add` of an rms_norm becomes the norm's epilogue, and a whole-row rms_norm of that sum
  (Gemma's post-norm, then the next pre-norm) runs in the same workgroup; a rope of an rms_norm
  (Gemma's q/k norms) runs inside the norm, q's and k's together when they are adjacent; two
  ropes over adjacent columns (q and k of a fused QKV) become one dispatch; the KV-cache store
  happens inside the attention kernel. In a step with one row per sequence (decode, batched
  decode) the attention kernel norms and ropes q and k itself (kernels.HeadPrep). In a one-token
  step the norm before a linear (and Gemma's post-norm + residual add + next pre-norm, the linear
  also writing the new residual) is done by the mat-vec as it loads its input
  (quant.NORMS_ON_LOAD; on a GPU, not on a CPU adapter: norm_on_load_mode), so a llama or
  Gemma 3 decode step is 5 dispatches per layer on a GPU (6 where decode attention splits a long
  context over workgroups and merges them: kernels.attention_variant), 7 on a CPU adapter;
- activations get buffers by liveness from a pool shared by all compiled steps of the backend;
- pipelines, bind groups and every kernel's parameters (one uniform buffer) are created.
What happens per step: the token ids and pos0 are written, all dispatches are recorded into one
compute pass, one submit, and only the output is read back. With sampling on the GPU (argmax, or
a top-k of the logits) only token ids or k candidates come back, and the decode loops feed each
step the previous step's argmax, or the id drawn on the GPU (gpu/sample.py), from GPU memory,
several steps per submit.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from wgpu_llm.graph import Graph, Op, Span, capture_names, check_spans
from wgpu_llm.memory import KV_BYTES, check_kv_type

from . import attention as flash
from . import kernels as K
from . import matmul
from .device import choose_adapter
from .runtime import GpuError, Program, Runtime
from .tune import LinearChoice


@dataclass
class _Act:
    """Where an activation lives: element (r, c) at slot[offset + r * stride + c]."""

    slot: int
    offset: int
    stride: int
    rows: int
    width: int

    def overlaps(self, other: _Act) -> bool:
        if self.slot != other.slot:
            return False
        if self.stride != other.stride:  # conservative: assume they may touch
            return True
        a0, b0 = self.offset, other.offset
        ar = (a0 // self.stride, a0 // self.stride + self.rows)
        br = (b0 // other.stride, b0 // other.stride + other.rows)
        if ar[1] <= br[0] or br[1] <= ar[0]:
            return False
        ac, bc = a0 % self.stride, b0 % other.stride
        return ac < bc + other.width and bc < ac + self.width


@dataclass(frozen=True)
class _NormOnLoad:
    """A norm that a linear does as it loads its input (quant.NORMS_ON_LOAD): the norm weights
    (one buffer; for "post_rms" the post-norm's, then the pre-norm's), the epsilon as f32 bits,
    and for "post_rms" the old residual and the new residual's place."""

    kind: str
    weights: object
    eps_bits: int
    residual: _Act | None = None
    new_residual: _Act | None = None

    def buffers(self, res) -> list[tuple]:
        """The bindings after the weight planes, as (buffer, read_only)."""
        if self.kind == "rms":
            return [(self.weights, True)]
        return [(res(self.residual.slot), True), (self.weights, True), (res(self.new_residual.slot), False)]


# Multiply-adds one dispatch may do per step, ~0.5 s at 1 TFLOP/s: a step of more tokens runs as
# consecutive chunks, so that no dispatch of a large prefill nears an OS GPU watchdog (2 s on
# Windows); see shaders/PORTABILITY.md
MAX_DISPATCH_MACS = 1 << 38


def dispatch_macs_per_token(graph: Graph, n_ctx: int) -> int:
    """The most multiply-adds one op of `graph` does per token of a step: a linear over its stacked
    weights (those after last_row run on one row whatever the step's size), attention over the
    keys a query may see in a context of n_ctx."""
    one_row: set[str] = set()
    most = 1
    for op in graph.ops:
        if op.kind == "last_row" or (op.inputs and all(i in one_row for i in op.inputs)):
            one_row.add(op.out)
            continue
        if op.kind == "linear":
            most = max(most, sum(graph.weight_shapes[w][0] * graph.weight_shapes[w][1] for w in op.weights))
        elif op.kind == "attention":
            p = op.p
            keys = min(n_ctx, p["window"]) if p["window"] > 0 else n_ctx
            most = max(most, 2 * p["n_head"] * p["head_dim"] * keys)
    return most


def _f32_bits(value: float) -> int:
    """A float as the u32 bits of its f32 (a float among a kernel's u32 parameters)."""
    return int(np.array([value], np.float32).view(np.uint32)[0])


ENV_NORM_ON_LOAD = "WGPU_LLM_NORM_ON_LOAD"
NORM_ON_LOAD_MODES = ("auto", "1", "0")


def norm_on_load_mode() -> str:
    """WGPU_LLM_NORM_ON_LOAD: where the linears of one-token steps do the norm before them as they
    load their input (_Compiler._norm_on_load), a dispatch less each.
    auto (the default): where the linear's mat-vec is a GPU kind (subgroup, shared), whose
    invocations share the row's rms between them. Not the row kind (a CPU adapter's), where each
    invocation walks the row alone: on lavapipe that made Gemma 3 270M's decode steps 1.5 times as
    long, for 0.18 ms less host time a step (benchmarks/host_time.py).
    1: every kind. 0: never (the norms are dispatches of their own)."""
    value = os.environ.get(ENV_NORM_ON_LOAD, "auto").strip().lower() or "auto"
    if value not in NORM_ON_LOAD_MODES:
        raise ValueError(f"{ENV_NORM_ON_LOAD}={value!r}: expected one of {', '.join(NORM_ON_LOAD_MODES)}")
    return value


@dataclass
class _Piece:
    first_row: int
    weight: object  # quant.PackedWeight
    planes: list  # GPU buffers


class GpuBackend:
    name = "gpu"

    def __init__(self, gguf_file, n_ctx: int, adapter=None, kv_type: str = "f32", activations: str = "f32"):
        """kv_type: the KV cache's element type, "f32" or "f16" (halves packed two to a u32 word and
        read back into f32 math: half the cache's memory and reads, on any adapter; see
        shaders/kv_cache.wgsl and the README's accuracy figures).
        activations: "f32" or "f16": the prefill mat-mat (matmul.py, Tiles.f16) stages its
        activation and weight tiles in f16 and multiplies in f16 into f32 sums. Only that kernel:
        the decode mat-vec and every other op stay f32, and so do all buffers. Needs the adapter's
        shader-f16; without it the backend runs f32, says so once on stderr, and `activations`
        and describe() say "f32" (`activations_asked` keeps what was asked for)."""
        from wgpu_llm.backends import check_activations

        from . import quant  # noqa: F401  (fail early when the quantized-weight kernels are missing)

        check_kv_type(kv_type)
        check_activations(activations)
        self.norm_on_load = norm_on_load_mode()

        t0 = time.perf_counter()
        if adapter is None:
            adapter, self.adapter_reason = choose_adapter(allow_software=True)
        else:
            self.adapter_reason = "adapter given by the caller"
            adapter = getattr(adapter, "adapter", None) or adapter  # an AdapterInfo from list_adapters()
        self.gf = gguf_file
        self.n_ctx = n_ctx
        self.kv_type = kv_type
        self.rt = Runtime(adapter)
        self.cfg = K.choose_config(self.rt.caps)
        self.activations_asked = activations
        self.activations = activations if (activations == "f32" or self.rt.caps.shader_f16) else "f32"
        if self.activations != activations:
            print(f"wgpu-llm: activations {activations} asked for, but {self.rt.info.name} has no shader-f16: "
                  f"the prefill mat-mat runs in f32", file=sys.stderr)
        self.linear_choice = LinearChoice.for_runtime(self.rt, self.cfg)  # tuned winners if cached, else heuristic
        self._matrices: dict[tuple[str, ...], list[_Piece]] = {}  # GGUF names (stacked) -> row pieces
        self._vectors: dict[tuple[str, ...], object] = {}  # GGUF names -> float32 buffer
        self._rope: dict[tuple, object] = {}  # (n_rot, base, freq_scale) -> float32 buffer
        self.k_cache: dict[int, object] = {}  # layer -> (n_ctx, n_kv_head * head_dim) buffer of kv_type
        self.v_cache: dict[int, object] = {}
        self.weight_bytes = 0  # bytes of weights on the device
        self.f32_fallback: dict[str, list[str]] = {}  # GGUF type without a GPU kernel -> tensors held as F32
        self.timings = {"device_s": time.perf_counter() - t0, "weights_s": 0.0, "compile_s": 0.0}
        self.tracer = None  # a wgpu_llm.trace.Trace while tracing: steps then run timed, op by op

    def describe(self) -> str:
        """The adapter, the KV cache type when it is not f32, the prefill activations when f16 (or
        f16 asked for without shader-f16), and the weight types held as float32 because no GPU
        kernel reads them."""
        text = self.rt.info.describe()
        if self.kv_type != "f32":
            text += f"; KV cache {self.kv_type}"
        if self.activations != "f32":
            text += f"; prefill activations {self.activations}"
        elif self.activations_asked != "f32":
            text += f"; prefill activations f32 ({self.activations_asked} asked for: no shader-f16)"
        if self.f32_fallback:
            text += "; no GPU kernel for " + ", ".join(
                f"{t} ({len(names)} tensors)" for t, names in sorted(self.f32_fallback.items())) + ": held as F32"
        return text

    def _note_f32_fallback(self, name: str, type_name: str) -> None:
        """Say once per type, on stderr, that its tensors are dequantized to float32 on the device."""
        if type_name not in self.f32_fallback:
            print(f"wgpu-llm: no GPU kernel for {type_name} weights ({name} and others of that type): "
                  f"dequantized to F32 on the device (more memory, same results)", file=sys.stderr)
        self.f32_fallback.setdefault(type_name, []).append(name)

    @property
    def allocated_bytes(self) -> int:
        """Device memory in buffers: weights, KV caches, activations, per-step parameters."""
        return self.rt.allocated_bytes

    def close(self) -> None:
        """Free every device buffer now: weights, KV caches, the activation pool and the buffers of
        every step compiled so far (those steps must not run again). Closing twice does nothing."""
        for table in (self._matrices, self._vectors, self._rope, self.k_cache, self.v_cache):
            table.clear()
        self.rt.close()

    def compile(self, graph: Graph, n_tokens: int, batched: bool = False, capture=None):
        """A callable step(token_ids (n_tokens,), pos0, base=0) -> output activation (rows, width)
        float32. batched: a step whose rows are n_tokens sequences, one row each (`step.spans`), at
        most max_batch_rows(graph).
        capture: activation names (or "all") that each run copies aside for `step.read_captured()`:
        those the GPU materialises, not those a fusion keeps inside one kernel (wgpu_llm.verify)."""
        per_step = self.max_tokens_per_step(graph)
        if batched and n_tokens > self.max_batch_rows(graph):
            raise ValueError(f"a batched step takes at most {self.max_batch_rows(graph)} sequences, not {n_tokens}")
        if n_tokens > per_step:
            if capture:
                raise ValueError(f"capturing activations needs a step of at most {per_step} tokens on this "
                                 f"device, not {n_tokens}")
            return _ChunkedStep(self, graph, n_tokens, per_step)
        t0 = time.perf_counter()
        step = _Compiler(self, graph, n_tokens, batched, capture).build()
        self.timings["compile_s"] += time.perf_counter() - t0
        return step

    def counters(self) -> tuple[float, int]:
        """(CPU seconds spent inside waits for the device's results, dispatches submitted) so far:
        the host's own time in a span of steps is the CPU time of the thread running them less the
        waits' (CPU time, not wall time: a software adapter's threads share the host's cores, and
        the host thread waiting for a core is not host work)."""
        return self.rt.wait_cpu_s, self.rt.dispatches

    def max_batch_rows(self, graph: Graph) -> int:
        """Sequences one batched step may hold (the step uniform's row table, one binding's rows)."""
        return min(K.MAX_BATCH_ROWS, self.max_tokens_per_step(graph))

    def max_tokens_per_step(self, graph: Graph) -> int:
        """How many tokens one step may hold: every activation must fit one storage binding
        (all-position logits of a 262144-token vocabulary take 1 MiB per token), and no dispatch
        may do more than MAX_DISPATCH_MACS multiply-adds."""
        by_binding = self.rt.caps.max_binding // (4 * max(graph.widths.values()))
        by_work = MAX_DISPATCH_MACS // dispatch_macs_per_token(graph, self.n_ctx)
        return max(1, min(by_binding, by_work))

    # ---- weights (uploaded once per backend) ----
    def _shape(self, name: str) -> tuple[int, int]:
        shape = self.gf.tensor(name).shape
        return (1, shape[0]) if len(shape) == 1 else (int(np.prod(shape[:-1])), shape[-1])

    def _stacked_runs(self, names) -> list[tuple[list[str], str]]:
        from . import quant

        info = [(n, quant.device_type(self.gf.tensor(n).type_name), *self._shape(n)) for n in names]
        return quant.stacked_runs(info)

    def weight_groups(self, names) -> list[tuple[str, ...]]:
        """The weights of one linear op as the device holds them: runs stacked into one matrix."""
        return [tuple(run) for run, _ in self._stacked_runs(names)]

    def matrix(self, names) -> list[_Piece]:
        """The device pieces of one weight, or of weights stacked by rows (see quant.stacked_runs)."""
        names = (names,) if isinstance(names, str) else tuple(names)
        if names not in self._matrices:
            from . import quant

            t0 = time.perf_counter()
            runs = self._stacked_runs(names)
            if len(runs) != 1:
                raise ValueError(f"weights {', '.join(names)} differ in type or columns; they cannot be stacked")
            type_name, cols = runs[0][1], self._shape(names[0])[1]
            rows = sum(self._shape(n)[0] for n in names)
            raw = []
            for n in names:
                own = self.gf.tensor(n).type_name
                if own == type_name:
                    raw.append(np.asarray(self.gf.raw(n)).reshape(-1))
                elif type_name == "F32":  # a type without a GPU kernel: float32 on the device
                    self._note_f32_fallback(n, own)
                    raw.append(self.gf.dequantize(n).reshape(-1).view(np.uint8))
                else:  # stacked with Q8_0 weights
                    raw.append(quant.widen_to_q8_0(own, self.gf.raw(n)))
            packed = quant.pack(type_name, raw[0] if len(raw) == 1 else np.concatenate(raw), rows, cols)
            del raw
            label = "+".join(names)
            try:
                split = quant.split_rows(packed, self.rt.caps.max_binding)
            except ValueError as e:  # one row is larger than a binding: no piece can hold it
                raise GpuError(f"weight {label}: {e}; this adapter cannot run it") from None
            pieces = []
            for first, piece in split:
                planes = [self.rt.upload(p, f"{label}[{first}:] plane {i}") for i, p in enumerate(piece.planes)]
                self.weight_bytes += piece.nbytes()
                pieces.append(_Piece(first, piece, planes))
            self._matrices[names] = pieces
            self.timings["weights_s"] += time.perf_counter() - t0
        return self._matrices[names]

    def vector(self, names):
        """A float32 buffer of one vector weight, or of several side by side."""
        names = (names,) if isinstance(names, str) else tuple(names)
        if names not in self._vectors:
            data = np.concatenate([self.gf.dequantize(n).reshape(-1).astype(np.float32) for n in names])
            self._vectors[names] = self.rt.upload(data, "+".join(names))
            self.weight_bytes += data.nbytes
        return self._vectors[names]

    def rope_freqs(self, n_rot: int, base: float, freq_scale: float, factors: tuple[str, ...] = ()):
        """The rope op's per-pair frequencies (factors: () or the tensor of frequency divisors)."""
        key = (n_rot, base, freq_scale, factors)
        if key not in self._rope:
            divisors = self.gf.dequantize(factors[0]) if factors else None
            self._rope[key] = self.rt.upload(K.rope_freqs(n_rot, base, freq_scale, divisors), f"rope freqs {key}")
        return self._rope[key]

    def kv_cache(self, layer: int, width: int):
        if layer not in self.k_cache:
            nbytes = self.n_ctx * width * KV_BYTES[self.kv_type]
            if nbytes > self.rt.caps.max_binding:
                unit = "floats" if self.kv_type == "f32" else "halves"
                raise GpuError(f"layer {layer}: a KV cache of {self.n_ctx} x {width} {unit} ({nbytes} bytes) exceeds "
                               f"the device's storage binding limit of {self.rt.caps.max_binding} bytes; "
                               f"use a smaller n_ctx")
            self.k_cache[layer] = self.rt.storage(nbytes, f"k cache {layer}")
            self.v_cache[layer] = self.rt.storage(nbytes, f"v cache {layer}")
        return self.k_cache[layer], self.v_cache[layer]


class _Compiler:
    """Plans one graph for one token count: views, fusions, in-place ops, buffer slots, kernels."""

    def __init__(self, be: GpuBackend, graph: Graph, n_tokens: int, batched: bool = False, capture=None):
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        if graph.output is None:
            raise ValueError("graph has no output")
        self.be, self.g, self.n, self.batched = be, graph, n_tokens, batched
        self.cfg = be.cfg
        ops = graph.ops
        self.uses: dict[str, list[int]] = defaultdict(list)
        for i, op in enumerate(ops):
            for name in op.inputs:
                self.uses[name].append(i)
        end = len(ops)
        self.last_use = {op.out: max(self.uses[op.out], default=i) for i, op in enumerate(ops)}
        self.last_use[graph.output] = end
        self.acts: dict[str, _Act] = {}
        self.slot_size: list[int] = []  # floats
        self.slot_refs: list[int] = []
        self.free_slots: list[int] = []
        self.intents: list = []  # callables(resolve) -> Kernel or [Kernel, ...], in execution order
        self.absorbed: dict[int, str] = {}  # op index -> how it was fused away
        self.temps: list[int] = []  # slots of copies made for the op being planned
        self.glu_inputs: dict[str, str] = {}  # glu output fused into its reader -> activation
        self.head_preps: dict[int, K.HeadPrep] = {}  # attention op index -> q / k preparation folded in
        self.normed_inputs: dict[str, _NormOnLoad] = {}  # a norm's output its linear computes on load
        self.held: dict[int, list[int]] = defaultdict(list)  # op index -> slots kept alive until it is planned
        self.matvec_variants: dict[str, list] = {}  # linear op output -> its pieces' variants, chosen ahead
        self.ids = be.rt.storage(4 * n_tokens, "token ids")
        self.capture = capture_names(graph, capture)
        # names defined for the planner's bookkeeping whose place never holds the op's own value
        # (a linear whose residual add accumulates into it, a glu its linear computes on the fly)
        self.unmaterialised: set[str] = set()
        self.captures: dict[str, tuple] = {}  # name -> (buffer, rows, width) of its copy

    # ---- slots and views ----
    def _new(self, rows: int, width: int) -> _Act:
        need = rows * width
        fitting = [s for s in self.free_slots if self.slot_size[s] >= need]
        if fitting:
            slot = min(fitting, key=lambda s: self.slot_size[s])
        elif self.free_slots:  # grow the largest free slot rather than add one
            slot = max(self.free_slots, key=lambda s: self.slot_size[s])
            self.slot_size[slot] = need
        else:
            slot = len(self.slot_size)
            self.slot_size.append(need)
            self.slot_refs.append(0)
        if slot in self.free_slots:
            self.free_slots.remove(slot)
        if need * 4 > self.be.rt.caps.max_binding:
            advice = "run fewer tokens per step" if rows > 1 else "one row does not fit: this adapter cannot run it"
            raise GpuError(f"an activation of {rows} x {width} floats ({need * 4} bytes) exceeds the device's storage "
                           f"binding limit ({self.be.rt.caps.max_binding} bytes); {advice}")
        return _Act(slot, 0, width, rows, width)

    def _define(self, name: str, act: _Act) -> _Act:
        self.acts[name] = act
        self.slot_refs[act.slot] += 1
        return act

    def _release_dead(self, i: int, names) -> None:
        for name in names:
            if name in self.acts and self.last_use.get(name, -1) <= i:
                self._unref(self.acts.pop(name).slot)

    def _unref(self, slot: int) -> None:
        self.slot_refs[slot] -= 1
        if self.slot_refs[slot] == 0:
            self.free_slots.append(slot)

    def _others_overlap(self, name: str, i: int, ignore=()) -> bool:
        """Does any other activation still read at or after op i share `name`'s place?"""
        me = self.acts[name]
        return any(other != name and other not in ignore and self.last_use.get(other, -1) >= i and act.overlaps(me)
                   for other, act in self.acts.items())

    def _can_overwrite(self, name: str, i: int, ignore=()) -> bool:
        """Op i may write over `name`: op i is its last reader and nothing else lives in its place."""
        return name != self.g.output and self.last_use[name] <= i and not self._others_overlap(name, i, ignore)

    def _can_fold_into(self, name: str, i: int, j: int) -> bool:
        """Op i may write (its result added in) over `name`, whose last reader is the absorbed op
        j > i: nothing reads `name` between i and j, and nothing else lives in its place."""
        return (name != self.g.output and self.last_use[name] == j
                and all(u < i or u == j for u in self.uses[name]) and not self._others_overlap(name, i))

    # ---- planning ----
    def plan(self) -> None:
        for i, op in enumerate(self.g.ops):
            if i not in self.absorbed:
                handler = getattr(self, f"_op_{op.kind}", None)
                if handler is None:
                    raise NotImplementedError(f"gpu backend: op {op.kind!r}")
                before = set(self.absorbed)
                handler(i, op)
                for slot in self.temps:
                    self._unref(slot)
                self.temps = []
                if self.capture:
                    self._capture({i} | (set(self.absorbed) - before))
            self._release_dead(i, op.inputs + (op.out,))
            for slot in self.held.pop(i, ()):
                self._unref(slot)

    def _capture(self, done) -> None:
        """Copy the wanted outputs of the ops just planned (op indices `done`) into buffers of their
        own, right after the kernels that wrote them: later ops may write over their places."""
        for k in sorted(done):
            name = self.g.ops[k].out
            if name not in self.capture or name not in self.acts or name in self.unmaterialised:
                continue
            act = self.acts[name]
            buf = self.be.rt.storage(4 * act.rows * act.width, f"capture {name}")
            self.captures[name] = (buf, act.rows, act.width)
            self.intents.append(lambda res, act=act, buf=buf, name=name: K.copy(
                self.cfg, act.rows, act.width, self._view(res, act), K.View(buf, 0, act.width), f"{name}: capture"))

    def _consumer(self, i: int, kind: str) -> tuple[int, Op] | None:
        """(j, op j) when op i's output has exactly one reader, op j of this kind."""
        out = self.g.ops[i].out
        if out == self.g.output or len(self.uses[out]) != 1:
            return None
        j = self.uses[out][0]
        return (j, self.g.ops[j]) if self.g.ops[j].kind == kind else None

    def _residual_of(self, i: int, rows: int) -> tuple[int, Op, str] | None:
        """(j, add op, residual name) when op i's only reader is add(residual, op i) and the residual
        already exists with the same rows."""
        found = self._consumer(i, "add")
        if found is None:
            return None
        j, add = found
        out = self.g.ops[i].out
        r_name = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
        if r_name == out or r_name not in self.acts or self.acts[r_name].rows != rows:
            return None
        return j, add, r_name

    def _op_embed(self, i, op):
        from . import quant

        be, n = self.be, self.n
        (table,) = op.weights
        y = self._define(op.out, self._new(n, self.g.widths[op.out]))
        scale_bits = _f32_bits(op.param("scale"))
        for pc in be.matrix(table):
            w = pc.weight
            params = np.array([n, w.rows, w.cols, pc.first_row, y.stride, scale_bits, 0, 0], np.uint32).tobytes()

            def make(res, pc=pc, w=w, params=params):
                return K.foreign(f"{op.out}: embed {table}[{pc.first_row}:]", quant.embed_shader(w.type_name), params,
                                 [(self.ids, True), (res(y.slot), False)] + [(p, True) for p in pc.planes],
                                 quant.embed_dispatch(w.type_name, w.cols, n))
            self.intents.append(make)

    def _op_slice(self, i, op):
        x = self.acts[op.inputs[0]]
        self._define(op.out, _Act(x.slot, x.offset + op.param("start"), x.stride, x.rows, self.g.widths[op.out]))

    def _op_last_row(self, i, op):
        x = self.acts[op.inputs[0]]
        self._define(op.out, _Act(x.slot, x.offset + (x.rows - 1) * x.stride, x.stride, 1, x.width))

    def _op_linear(self, i, op):
        x = self.acts[op.inputs[0]]
        fused = self._residual_of(i, x.rows)
        if fused is not None:
            j, add, r_name = fused
            a = self.acts[r_name]
            if a.slot != x.slot and self._can_fold_into(r_name, i, j):
                # residual + linear: the linear accumulates into the residual's place
                self.absorbed[j] = "residual add fused into linear"
                self.unmaterialised.add(op.out)
                x = self._contiguous(op.inputs[0], x)
                self._define(op.out, _Act(a.slot, a.offset, a.stride, a.rows, a.width))
                self._define(add.out, _Act(a.slot, a.offset, a.stride, a.rows, a.width))
                self._emit_linear(op, x, a, accumulate=True)
                return
        x = self._contiguous(op.inputs[0], x)
        y = self._define(op.out, self._new(x.rows, self.g.widths[op.out]))
        self._emit_linear(op, x, y, accumulate=False)

    def _emit_linear(self, op: Op, x: _Act, y: _Act, accumulate: bool) -> None:
        """One dispatch per stacked weight matrix and row piece: the mat-vec kernel (quant.py), or
        for many tokens the tiled mat-mat (matmul.py), which takes the same bindings and parameters
        and dequantizes each weight tile once per tile of tokens."""
        from . import quant

        cfg, base = self.cfg, 0
        glu = self.glu_inputs.get(op.inputs[0], "")
        norm = self.normed_inputs.get(op.inputs[0])
        tiled = matmul.prefill_path(x.rows) == "tiled"
        assert norm is None or (x.rows == 1 and not tiled), "a norm on load is for one-token steps"
        assert norm is None or norm.kind == "rms" or y.slot not in (norm.residual.slot, norm.new_residual.slot)
        norm_kind, norm_eps = (norm.kind, norm.eps_bits) if norm else ("", 0)
        chosen = iter(self.matvec_variants.pop(op.out, ()))
        for group in self.be.weight_groups(op.weights):
            wname = "+".join(group)
            for pc in self.be.matrix(group):
                w = pc.weight
                params = np.array([x.rows, w.rows, w.cols, x.stride, y.stride, y.offset + base + pc.first_row,
                                   int(accumulate), norm_eps], np.uint32).tobytes()
                if tiled:  # the tuned tile shape of this piece's shape, else matmul.choose_tiles'
                    tiles = self.be.linear_choice.tiles(w.type_name, w.rows, w.cols, x.rows)
                    tiles = tiles.with_f16(self.be.activations == "f16")  # the f32 shape, f16 tiles or not
                    kind, grid = "matmul", matmul.matmul_dispatch(w.rows, x.rows, tiles, cfg.max_per_dim)
                    shader = (lambda w=w, tiles=tiles: matmul.matmul_shader(w.type_name, tiles, glu))
                else:
                    variant = next(chosen, None) or self.be.linear_choice(w.type_name, w.rows, w.cols, x.rows)
                    kind = "normed linear" if norm else "linear"  # the trace tells them apart
                    grid = quant.linear_dispatch(w.type_name, w.rows, x.rows, variant=variant,
                                                 max_per_dim=cfg.max_per_dim)
                    shader = (lambda w=w, variant=variant: quant.linear_shader(w.type_name, variant=variant, glu=glu,
                                                                               norm=norm_kind))

                def make(res, pc=pc, params=params, grid=grid, wname=wname, kind=kind, shader=shader):
                    after = norm.buffers(res) if norm else []
                    return K.foreign(f"{op.out}: {kind} {wname}[{pc.first_row}:]", shader(), params,
                                     [(res(x.slot), True), (res(y.slot), False)] + [(p, True) for p in pc.planes]
                                     + after, grid)
                self.intents.append(make)
            base += sum(self.g.weight_shapes[n][0] for n in group)

    def _contiguous(self, name: str, x: _Act) -> _Act:
        """x itself when it starts at offset 0 (the quantized kernels take a row stride but no
        offset), else a copy in a temporary slot freed once the consumer is planned."""
        if x.offset == 0:
            return x
        y = self._new(x.rows, x.width)
        self.slot_refs[y.slot] += 1
        self.temps.append(y.slot)
        self.intents.append(lambda res: K.copy(self.cfg, x.rows, x.width, self._view(res, x), self._view(res, y),
                                               f"{name}: copy"))
        return y

    def _view(self, res, act: _Act) -> K.View:
        return K.View(res(act.slot), act.offset, act.stride)

    def _out_place(self, i: int, out_name: str, candidates, rows: int, width: int) -> _Act:
        """Define out_name over an input that dies at op i (same shape), else in a new slot --
        also when the input sits at an offset and a linear reads the result (it would need a copy)."""
        feeds_linear = any(self.g.ops[u].kind == "linear" for u in self.uses[out_name])
        for name in candidates:
            a = self.acts[name]
            if a.offset and feeds_linear:
                continue
            if a.width == width and a.rows == rows and self._can_overwrite(name, i):
                return self._define(out_name, _Act(a.slot, a.offset, a.stride, rows, width))
        return self._define(out_name, self._new(rows, width))

    def _prep_in_attention(self, i: int) -> bool:
        """Fold the preparation of q and k starting at op i -- rope(rms_norm(q)), rope(rms_norm(k)),
        or rope(q), rope(k) -- into the attention reading them (kernels.HeadPrep), where each query
        row is its sequence's only row of the step (decode, batched decode): one dispatch less."""
        ops = self.g.ops
        normed = ops[i].kind == "rms_norm"
        j = i + (4 if normed else 2)  # the attention
        if not (self.n == 1 or self.batched) or j >= len(ops) or ops[j].kind != "attention":
            return False
        if [op.kind for op in ops[i:j]] != (["rms_norm", "rope"] * 2 if normed else ["rope"] * 2):
            return False
        att = ops[j]
        hd = att.param("head_dim")
        if normed:
            q_norm, q_rope, k_norm, k_rope = ops[i:j]
            if not (q_rope.inputs[0] == q_norm.out and k_rope.inputs[0] == k_norm.out
                    and self.uses[q_norm.out] == [i + 1] and self.uses[k_norm.out] == [i + 3]
                    and k_norm.param("eps") == q_norm.param("eps")
                    and self.g.weight_shapes[q_norm.weights[0]][1] == hd == self.g.weight_shapes[k_norm.weights[0]][1]):
                return False
            q_raw, k_raw = q_norm.inputs[0], k_norm.inputs[0]
        else:
            q_rope, k_rope = ops[i:j]
            q_raw, k_raw = q_rope.inputs[0], k_rope.inputs[0]
        if not (att.inputs[:2] == (q_rope.out, k_rope.out)
                and self.uses[q_rope.out] == [j] == self.uses[k_rope.out]
                and (q_rope.params, q_rope.weights) == (k_rope.params, k_rope.weights)
                and q_rope.param("head_dim") == hd and q_raw in self.acts and k_raw in self.acts
                and not self.capture & {op.out for op in ops[i:j]}):
            return False
        for k in range(i, j):
            self.absorbed[k] = "q / k norm and rope done by the attention kernel" if normed else \
                "rope done by the attention kernel"
        for name, raw in ((q_rope.out, q_raw), (k_rope.out, k_raw)):  # the raw heads, prepared as attention reads them
            self.unmaterialised.add(name)
            a = self.acts[raw]
            self._define(name, _Act(a.slot, a.offset, a.stride, a.rows, a.width))
        p = q_rope.p
        self.head_preps[j] = K.HeadPrep(
            p["n_rot"], p["neox"], p["attn_factor"], self.be.rope_freqs(p["n_rot"], p["base"], p["freq_scale"],
                                                                        q_rope.weights),
            self.be.vector(q_norm.weights + k_norm.weights) if normed else None, q_norm.param("eps") if normed else 0.0)
        return True

    def _norm_on_load(self, i: int, op: Op) -> bool:
        """Fold the norm at op i into the linear reading it (quant.NORMS_ON_LOAD), in a one-token
        step: rms_norm(x) -> linear ("rms"), or Gemma's post-norm + residual add + next pre-norm
        -> linear ("post_rms", the linear also writing the new residual, into a new slot: the
        old one is read by every workgroup). Every workgroup recomputes the row's rms: a few
        loads of one row, against a dispatch less for the host to record (benchmarks/host_time.py
        compares both on a device, with WGPU_LLM_NORM_ON_LOAD=0)."""
        ops, x = self.g.ops, self.acts[op.inputs[0]]
        if (self.be.norm_on_load == "0" or self.n != 1 or x.offset
                or self.g.weight_shapes[op.weights[0]][1] != x.width):
            return False
        fused = self._residual_of(i, x.rows)
        if fused is None:
            norm, at, names = op, i, [op.out]
        else:
            j, add, r_name = fused
            norm = ops[j + 1] if j + 1 < len(ops) else None
            if (norm is None or norm.kind != "rms_norm" or norm.inputs[0] != add.out
                    or self.g.weight_shapes[norm.weights[0]][1] != x.width or norm.param("eps") != op.param("eps")
                    or self.acts[r_name].offset):
                return False
            at, names = j + 1, [op.out, add.out, norm.out]
        found = self._consumer(at, "linear")
        if found is None or self.capture & set(names):
            return False
        if self.be.norm_on_load == "auto" and any(v.kind == "row" for v in self._matvec_variants(found[1])):
            return False
        if fused is not None and self._consumer(found[0], "add") is not None:
            return False  # the linear might add into the new residual it writes
        eps_bits = _f32_bits(op.param("eps"))
        if fused is None:
            self.absorbed[i] = "rms_norm done by the linear reading it"
            on_load = _NormOnLoad("rms", self.be.vector(op.weights), eps_bits)
        else:
            k = found[0]
            self.absorbed[i] = self.absorbed[j] = self.absorbed[j + 1] = \
                "post-norm, residual add and pre-norm done by the linear reading them"
            r = self.acts[r_name]
            new_r = self._define(add.out, self._new(1, x.width))
            for slot in (r.slot, new_r.slot):  # read and written by the linear: not its output's place
                self.slot_refs[slot] += 1
                self.held[k].append(slot)
            on_load = _NormOnLoad("post_rms", self.be.vector(op.weights + norm.weights), eps_bits, r, new_r)
        self.unmaterialised.add(norm.out)
        self.normed_inputs[norm.out] = on_load
        self._define(norm.out, _Act(x.slot, x.offset, x.stride, x.rows, x.width))  # the linear reads x
        return True

    def _matvec_variants(self, op: Op) -> list:
        """The mat-vec variant of each piece of a one-token linear op, in _emit_linear's order,
        chosen once: _emit_linear takes these."""
        if op.out not in self.matvec_variants:
            self.matvec_variants[op.out] = [
                self.be.linear_choice(pc.weight.type_name, pc.weight.rows, pc.weight.cols, 1)
                for group in self.be.weight_groups(op.weights) for pc in self.be.matrix(group)]
        return self.matvec_variants[op.out]

    def _op_rms_norm(self, i, op):
        if self._prep_in_attention(i) or self._norm_on_load(i, op):
            return
        x = self.acts[op.inputs[0]]
        weights = op.weights
        group = self.g.weight_shapes[weights[0]][1]
        residual = rope = second = None  # second: (weights, eps, place) of a chained second norm
        w_split = None
        fused = self._residual_of(i, x.rows)
        if fused is not None:
            # residual + rms_norm(x): the add is the norm's epilogue, in place over the residual
            # when it dies there
            j, add, r_name = fused
            residual = self.acts[r_name]
            self.absorbed[j] = "residual add fused into rms_norm"
            out_name = add.out
            if self._can_fold_into(r_name, i, j):
                y = self._define(out_name, _Act(residual.slot, residual.offset, residual.stride, x.rows, x.width))
            else:
                y = self._define(out_name, self._new(x.rows, x.width))
            nxt = self.g.ops[j + 1] if j + 1 < len(self.g.ops) else None
            if (nxt is not None and nxt.kind == "rms_norm" and nxt.inputs[0] == add.out and group == x.width
                    and self.g.weight_shapes[nxt.weights[0]][1] == x.width):
                # the norm reading the new residual (a post-norm's sum, then the next pre-norm) in
                # the same workgroup, which holds the whole row
                self.absorbed[j + 1] = "rms_norm fused into the previous rms_norm"
                z = self._define(nxt.out, self._new(x.rows, x.width))
                second = (self.be.vector(nxt.weights), nxt.param("eps"), z)
        else:
            out_name = op.out
            found = self._consumer(i, "rope")
            if found is not None and found[1].param("head_dim") == group and group <= 1024:  # head in shared memory
                # rope(rms_norm(x)) per head: the rotation runs on the normalised head in the norm
                j, rope = found
                self.absorbed[j] = "rope fused into rms_norm"
                out_name = rope.out
                pair = self._norm_rope_pair(i, op, rope)
                if pair is not None:
                    # q and k of a fused QKV: both head norms and ropes in one dispatch, in place
                    k_norm, k_rope, k = pair
                    self.absorbed[i + 2] = self.absorbed[i + 3] = "merged with the previous head norm and rope"
                    self._define(out_name, _Act(x.slot, x.offset, x.stride, x.rows, x.width))
                    self._define(k_rope.out, _Act(k.slot, k.offset, k.stride, k.rows, k.width))
                    w_split = x.width // group
                    weights = weights + k_norm.weights
                    x = y = _Act(x.slot, x.offset, x.stride, x.rows, x.width + k.width)
            if w_split is None:
                y = self._out_place(i, out_name, [op.inputs[0]], x.rows, x.width)
        w = self.be.vector(weights)
        eps = op.param("eps")
        rope_args = freqs = None
        if rope is not None:
            p = rope.p
            rope_args = {"n_rot": p["n_rot"], "neox": p["neox"], "attn_factor": p["attn_factor"]}
            freqs = self.be.rope_freqs(p["n_rot"], p["base"], p["freq_scale"], rope.weights)
        def make(res):
            then = None if second is None else (second[0], second[1], self._view(res, second[2]))
            return K.rms_norm(self.cfg, x.rows, x.width, group, eps, self._view(res, x), w, self._view(res, y),
                              residual=self._view(res, residual) if residual is not None else None,
                              rope=rope_args, rope_freqs=freqs, label=f"{out_name}: rms_norm", w_split=w_split,
                              then=then)
        self.intents.append(make)

    def _norm_rope_pair(self, i: int, op: Op, rope: Op):
        """(k norm, k rope, k's place) when ops i .. i + 3 are rope(rms_norm(q)), rope(rms_norm(k))
        with the same rope and group over adjacent columns of one buffer, both dying there."""
        ops = self.g.ops
        if i + 3 >= len(ops) or self.uses[op.out] != [i + 1]:
            return None
        k_norm, k_rope = ops[i + 2], ops[i + 3]
        qn, kn = op.inputs[0], k_norm.inputs[0]
        if not (k_norm.kind == "rms_norm" and k_rope.kind == "rope"
                and (k_rope.params, k_rope.weights) == (rope.params, rope.weights)
                and k_rope.inputs[0] == k_norm.out and self.uses[k_norm.out] == [i + 3]
                and k_norm.param("eps") == op.param("eps") and kn in self.acts
                and self.g.weight_shapes[k_norm.weights[0]] == self.g.weight_shapes[op.weights[0]]):
            return None
        q, k = self.acts[qn], self.acts[kn]
        if not (k.slot == q.slot and k.stride == q.stride and k.rows == q.rows and k.offset == q.offset + q.width
                and self._can_overwrite(qn, i) and self._can_overwrite(kn, i + 2, ignore=(qn,))):
            return None
        return k_norm, k_rope, k

    def _op_rope(self, i, op):
        if self._prep_in_attention(i):
            return
        xname = op.inputs[0]
        x = self.acts[xname]
        ops = self.g.ops
        # q and k of a fused QKV projection: one dispatch when the second rope is the next op,
        # has the same parameters and reads the columns right after the first one's
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        if (nxt is not None and nxt.kind == "rope" and (nxt.params, nxt.weights) == (op.params, op.weights)
                and nxt.inputs[0] in self.acts):
            k_name = nxt.inputs[0]
            k = self.acts[k_name]
            if (k.slot == x.slot and k.stride == x.stride and k.rows == x.rows and k.offset == x.offset + x.width
                    and self._can_overwrite(xname, i) and self._can_overwrite(k_name, i + 1, ignore=(xname,))):
                self.absorbed[i + 1] = "rope merged with the previous rope"
                self._define(op.out, _Act(x.slot, x.offset, x.stride, x.rows, x.width))
                self._define(nxt.out, _Act(k.slot, k.offset, k.stride, k.rows, k.width))
                both = _Act(x.slot, x.offset, x.stride, x.rows, x.width + k.width)
                self._emit_rope(op, both, both)
                return
        y = self._out_place(i, op.out, [xname], x.rows, x.width)
        self._emit_rope(op, x, y)

    def _emit_rope(self, op: Op, x: _Act, y: _Act) -> None:
        p = op.p
        freqs = self.be.rope_freqs(p["n_rot"], p["base"], p["freq_scale"], op.weights)
        self.intents.append(lambda res: K.rope(self.cfg, x.rows, x.width, p["head_dim"], p["n_rot"], p["neox"], freqs,
                                               self._view(res, x), self._view(res, y), f"{op.out}: rope",
                                               attn_factor=p["attn_factor"]))

    def _op_attention(self, i, op):
        p = op.p
        qn, kn, vn = op.inputs
        q, k, v = self.acts[qn], self.acts[kn], self.acts[vn]
        kc, vc = self.be.kv_cache(p["layer"], p["n_kv_head"] * p["head_dim"])
        y = self._out_place(i, op.out, [qn], q.rows, q.width)

        if matmul.prefill_path(q.rows) == "tiled" and flash.supported(p["head_dim"]) and not self.batched:
            # a block of queries per workgroup, K / V tiles shared, online softmax
            tiles = flash.choose_flash_tiles(self.be.rt.caps, p["head_dim"])

            def make(res):
                return flash.flash_attention(self.cfg, q.rows, p["n_head"], p["n_kv_head"], p["head_dim"], p["scale"],
                                             p["window"], self._view(res, q), self._view(res, k), self._view(res, v),
                                             kc, vc, self._view(res, y),
                                             f"{op.out}: flash attention layer {p['layer']}", tiles,
                                             softcap=p["softcap"], kv_type=self.be.kv_type)
            self.intents.append(make)
            return

        label = f"{op.out}: attention layer {p['layer']}"
        splits = K.attention_variant(self.cfg, self.be.n_ctx, p["window"]).splits
        prep = {"prep": self.head_preps.get(i), "batched": self.batched}
        if splits > 1:  # flash-decoding: (row, head, split) workgroups, then a merge
            part = self._new(K.split_part_floats(q.rows, p["n_head"], p["head_dim"], splits), 1)
            self.slot_refs[part.slot] += 1
            self.temps.append(part.slot)

            def make_split(res):
                return K.attention_split(self.cfg, q.rows, p["n_head"], p["n_kv_head"], p["head_dim"], p["scale"],
                                         p["window"], self._view(res, q), self._view(res, k), self._view(res, v),
                                         kc, vc, self._view(res, y), res(part.slot), splits, label,
                                         softcap=p["softcap"], kv_type=self.be.kv_type, **prep)
            self.intents.append(make_split)
            return

        def make(res):
            return K.attention(self.cfg, q.rows, p["n_head"], p["n_kv_head"], p["head_dim"], p["scale"], p["window"],
                               self._view(res, q), self._view(res, k), self._view(res, v), kc, vc,
                               self._view(res, y), label, softcap=p["softcap"], kv_type=self.be.kv_type, **prep)
        self.intents.append(make)

    def _op_glu(self, i, op):
        x = self.acts[op.inputs[0]]
        half = x.width // 2
        if self._consumer(i, "linear") is not None and x.offset == 0:
            # the linear reads act(gate) * up as it loads its input: the glu's output is a view
            # of the gate columns (keeping gate and up alive) that the linear knows to combine
            self.absorbed[i] = "glu fused into the linear reading it"
            self.unmaterialised.add(op.out)
            self.glu_inputs[op.out] = op.param("activation")
            self._define(op.out, _Act(x.slot, x.offset, x.stride, x.rows, half))
            return
        feeds_linear = any(self.g.ops[u].kind == "linear" for u in self.uses[op.out])
        if self._can_overwrite(op.inputs[0], i) and not (x.offset and feeds_linear):
            # act(gate) * up over the gate columns, keeping the input's row stride
            y = self._define(op.out, _Act(x.slot, x.offset, x.stride, x.rows, half))
        else:
            y = self._define(op.out, self._new(x.rows, half))
        act = op.param("activation")
        self.intents.append(lambda res: K.glu(self.cfg, x.rows, half, act, self._view(res, x), self._view(res, y),
                                              f"{op.out}: glu {act}"))

    def _op_add(self, i, op):
        an, bn = op.inputs
        a, b = self.acts[an], self.acts[bn]
        y = self._out_place(i, op.out, [an, bn], a.rows, a.width)
        self.intents.append(lambda res: K.add(self.cfg, a.rows, a.width, self._view(res, a), self._view(res, b),
                                              self._view(res, y), f"{op.out}: add"))

    def _op_bias(self, i, op):
        x = self.acts[op.inputs[0]]
        y = self._out_place(i, op.out, [op.inputs[0]], x.rows, x.width)
        vector = K.View(self.be.vector(op.weights), 0, 0)  # stride 0: the same values on every row
        self.intents.append(lambda res: K.add(self.cfg, x.rows, x.width, self._view(res, x), vector,
                                              self._view(res, y), f"{op.out}: bias"))

    def _op_scale(self, i, op):
        x = self.acts[op.inputs[0]]
        y = self._out_place(i, op.out, [op.inputs[0]], x.rows, x.width)
        f = op.param("factor")
        self.intents.append(lambda res: K.scale(self.cfg, x.rows, x.width, f, self._view(res, x), self._view(res, y),
                                                f"{op.out}: scale"))

    def _op_layer_norm(self, i, op):
        x = self.acts[op.inputs[0]]
        group = self.g.weight_shapes[op.weights[0]][1]
        y = self._out_place(i, op.out, [op.inputs[0]], x.rows, x.width)
        wb, eps = self.be.vector(op.weights), op.param("eps")  # weight then bias
        self.intents.append(lambda res: K.layer_norm(self.cfg, x.rows, x.width, group, eps, self._view(res, x), wb,
                                                     self._view(res, y), f"{op.out}: layer_norm"))

    def _op_gelu(self, i, op):
        x = self.acts[op.inputs[0]]
        y = self._out_place(i, op.out, [op.inputs[0]], x.rows, x.width)
        self.intents.append(lambda res: K.gelu(self.cfg, x.rows, x.width, self._view(res, x), self._view(res, y),
                                               f"{op.out}: gelu"))

    def _op_pos_embed(self, i, op):
        x = self.acts[op.inputs[0]]
        (name,) = op.weights
        rows, width = self.g.weight_shapes[name]
        if self.be.n_ctx > rows:
            raise ValueError(f"a context of {self.be.n_ctx} positions exceeds the {rows} rows of {name}; "
                             f"use n_ctx <= {rows}")
        table = K.View(self.be.vector(op.weights), 0, width)  # float32, row-major
        y = self._out_place(i, op.out, [op.inputs[0]], x.rows, x.width)
        self.intents.append(lambda res: K.pos_embed(self.cfg, x.rows, x.width, self._view(res, x), table,
                                                    self._view(res, y), f"{op.out}: pos_embed {name}"))

    def _op_softcap(self, i, op):
        x = self.acts[op.inputs[0]]
        y = self._out_place(i, op.out, [op.inputs[0]], x.rows, x.width)
        cap = op.param("cap")
        self.intents.append(lambda res: K.softcap(self.cfg, x.rows, x.width, cap, self._view(res, x),
                                                  self._view(res, y), f"{op.out}: softcap"))

    # ---- assembly ----
    def build(self) -> _GpuStep:
        self.plan()
        rt = self.be.rt
        buffers = rt.pool.assign([4 * s for s in self.slot_size], "activations")
        res = buffers.__getitem__
        made = [make(res) for make in self.intents]
        kernel_list = [k for m in made for k in (m if isinstance(m, list) else [m])]
        out = self.acts[self.g.output]
        width = self.g.widths[self.g.output]
        if out.stride == width:
            outputs = [(res(out.slot), 4 * out.offset, 4 * out.rows * width)]
        else:
            outputs = [(res(out.slot), 4 * (out.offset + r * out.stride), 4 * width) for r in range(out.rows)]
        label = f"step of {self.n} tokens"
        program = Program(rt, kernel_list, label, outputs)

        head = _Head(self._view(res, out), out.rows, width, self.g.output)
        vocab = [self.g.weight_shapes[op.weights[0]][0] for op in self.g.ops if op.kind == "embed"]
        step = _GpuStep(self.be, program, kernel_list, head, self.ids, self.n, (out.rows, width), self.absorbed,
                        min(vocab, default=None), self.g, self.captures)
        step.batched = self.batched
        return step


# The decode loops (greedy, sampled) put this much device work (measured per step as it runs) into one
# command buffer, at most LOOP_MAX_CHUNK steps: a fast device loses little to the host's
# wake-ups between command buffers, a slow one computes little past a stop string.
LOOP_CHUNK_S = 0.02
LOOP_MAX_CHUNK = 8


@dataclass
class _Head:
    """The step's output as the sampling kernels read it."""

    view: K.View
    rows: int
    width: int
    name: str


class _GpuStep:
    """A compiled step: `step(token_ids, pos0)` -> output (rows, width) float32, like the CPU's.

    Sampling on the GPU, reading back only a few bytes:
    - `step.greedy(token_ids, pos0)` -> the argmax of each output row;
    - `step.top_k(token_ids, pos0, k)` -> the k largest values of the last row and their columns;
    - `step.greedy_loop(token, pos0, n)` -> a decode loop: each step takes its token id from the
      previous step's argmax in GPU memory, steps are submitted ahead of the host, ids come back
      a few at a time;
    - `step.sample_loop(token, pos0, n, params, uniforms, recent)` -> the same with each id drawn
      on the GPU by the sampler chain (repetition penalty, top-k, top-p, min-p, temperature)."""

    max_top_k = 128  # the largest k `top_k` serves (sample.TOP_K_MAX)
    max_repeat_last_n = 256  # the most recent ids the sampled loop's repetition penalty sees (sample.RING)
    batched = False  # compiled for rows of several sequences (see spans)

    def __init__(self, backend: GpuBackend, program: Program, kernels: list, head: _Head, ids_buffer, n_tokens: int,
                 out_shape, fused: dict, n_vocab: int | None, graph: Graph, captures: dict | None = None):
        self.backend, self.program, self.ids_buffer = backend, program, ids_buffer
        self.n_tokens, self.out_shape, self.graph = n_tokens, out_shape, graph
        self.n_dispatches = program.n_dispatches
        self.fused = dict(fused)  # op index -> what it was fused into (for inspection)
        self._n_vocab = n_vocab
        self._kernels, self._head = kernels, head
        self._programs: dict[tuple, Program] = {}  # the step + sampling kernels, made on first use
        self._captures = captures or {}  # name -> (buffer, rows, width): activations each run copies aside
        self._positions = None  # (pos, 1, 0, 0) per context position: the loops copy the step uniform from it
        self._loop_staging: list = []
        self._sampling_buffers = None  # (state, drawn id) of the sampled loop, made on first use

    def _inputs(self, token_ids, pos0: int, base: int = 0) -> list:
        b, n = self.backend, self.n_tokens
        ids = np.asarray(token_ids)
        if ids.shape != (n,):
            raise ValueError(f"step compiled for {n} tokens got {ids.shape[0] if ids.ndim else 'a scalar'}")
        check_spans([Span(pos0, n, base)], n, b.n_ctx)
        if self._n_vocab is not None and (ids.min() < 0 or ids.max() >= self._n_vocab):
            raise ValueError(f"token ids must lie in [0, {self._n_vocab}), got {ids.min()}..{ids.max()}")
        return [(self.ids_buffer, ids.astype(np.uint32))]

    def _run(self, program: Program, token_ids, pos0: int, base: int = 0) -> list[np.ndarray]:
        writes = self._inputs(token_ids, pos0, base)
        tracer = self.backend.tracer
        if tracer is None:
            return program.run(pos0, self.n_tokens, writes, kv_base=base)
        t0 = time.perf_counter()
        parts = program.run(pos0, self.n_tokens, writes, timed=True, kv_base=base)
        timer = ("GPU timestamp queries, one compute pass per dispatch" if program.timestamps else
                 "host clock per dispatch (no timestamp queries: each dispatch submitted and waited for alone)")
        tracer.record_step(self.graph, self.n_tokens, pos0, program.labels, program.last_times,
                           time.perf_counter() - t0, t0, timer=timer)
        return parts

    def __call__(self, token_ids: np.ndarray, pos0: int, base: int = 0) -> np.ndarray:
        parts = self._run(self.program, token_ids, pos0, base)
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)  # a strided output comes back row by row
        return data.view(np.float32).reshape(self.out_shape)

    def read_captured(self) -> dict[str, np.ndarray]:
        """The activations compiled with `capture=`, as the last run left them: float32 (rows, width)."""
        rt = self.backend.rt
        return {name: rt.read(buf, 4 * rows * width).view(np.float32).reshape(rows, width)
                for name, (buf, rows, width) in self._captures.items()}

    def spans(self, token_ids: np.ndarray, spans: list[Span]) -> np.ndarray:
        """The step over one sequence's rows (one Span), or, for a step compiled batched, over one
        row of each of several sequences (Spans of one row)."""
        if len(spans) == 1:
            (s,) = spans
            return self(token_ids, s.pos0, s.base)
        if not self.batched or any(s.n != 1 for s in spans):
            raise ValueError(f"{len(spans)} sequences in one step need a step compiled batched, one row each")
        writes = self._inputs(token_ids, 0)
        check_spans(spans, self.n_tokens, self.backend.n_ctx)
        rows = np.array([(s.pos0, s.base) for s in spans], np.uint32)
        parts = self.program.run(0, self.n_tokens, writes, rows=rows)
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return data.view(np.float32).reshape(self.out_shape)

    # ---- sampling on the GPU ----
    def _greedy_program(self) -> Program:
        """The step plus an argmax per output row, written over the step's own token ids: a next
        run of the program reads them as its input unless new ids are written first."""
        if ("greedy",) not in self._programs:
            h, be = self._head, self.backend
            k = K.argmax(be.cfg, h.rows, h.width, h.view, self.ids_buffer, label=f"{h.name}: argmax")
            self._programs[("greedy",)] = Program(be.rt, [*self._kernels, k], f"{self.program.label}, greedy",
                                                  [(self.ids_buffer, 0, 4 * h.rows)])
        return self._programs[("greedy",)]

    def _top_k_program(self, k: int) -> Program:
        """The step plus a top-k of its last output row (sample.top_k), read back as k pairs."""
        from . import sample

        if ("top_k", k) not in self._programs:
            h, be = self._head, self.backend
            last = K.View(h.view.buffer, h.view.offset + (h.rows - 1) * h.view.stride, h.view.stride)
            n = sample.scratch_bytes(be.cfg, h.width, k)
            scratch = (be.rt.storage(n, "top-k scratch a"), be.rt.storage(n, "top-k scratch b"))
            out = be.rt.storage(8 * k, f"top-{k}")
            kernels = sample.top_k(be.cfg, h.width, k, last, scratch, out, label=f"{h.name}: top_k")
            self._programs[("top_k", k)] = Program(be.rt, [*self._kernels, *kernels], f"{self.program.label}, top-{k}",
                                                   [(out, 0, 8 * k)])
        return self._programs[("top_k", k)]

    def sampling_dispatches(self, kind: str, k: int = 0, penalised: bool = False) -> int:
        """Dispatches of one run of the step with its sampling kernels: "greedy", "top_k" (the
        top k read back) or "sample" (the sampled loop's step: [penalty,] top-k, draw)."""
        if kind == "greedy":
            return self._greedy_program().n_dispatches
        if kind == "sample":
            return self._sample_program(k, penalised).n_dispatches
        return self._top_k_program(k).n_dispatches

    def greedy(self, token_ids: np.ndarray, pos0: int) -> np.ndarray:
        """Run the step; the index of the largest value of each output row (lowest on ties), int64."""
        (data,) = self._run(self._greedy_program(), token_ids, pos0)
        return data.view(np.uint32).astype(np.int64)

    def top_k(self, token_ids: np.ndarray, pos0: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Run the step; (columns int64, values float32) of the k largest values of the last output
        row, largest first, the lower column first on ties (as sampling.top_k_filter)."""
        (data,) = self._run(self._top_k_program(k), token_ids, pos0)
        return _pairs(data, k)

    def _positions_buffer(self):
        if self._positions is None:
            n_ctx = self.backend.n_ctx
            table = np.zeros((n_ctx, 4), np.uint32)
            table[:, 0] = np.arange(n_ctx)
            table[:, 1] = 1
            self._positions = self.backend.rt.upload(table, "decode positions")
        return self._positions

    def _check_loop(self, token: int, pos0: int, n_steps: int) -> None:
        if self.n_tokens != 1 or self._head.rows != 1:
            raise ValueError("a decode loop runs a step of one token with one output row")
        if pos0 < 0 or pos0 + n_steps > self.backend.n_ctx:
            raise ValueError(f"positions {pos0}..{pos0 + n_steps - 1} exceed the context size {self.backend.n_ctx}")
        if self._n_vocab is not None and not 0 <= int(token) < self._n_vocab:
            raise ValueError(f"token ids must lie in [0, {self._n_vocab}), got {token}")

    def greedy_loop(self, token: int, pos0: int, n_steps: int, chunk: int | None = None,
                    stop_ids=()) -> Iterator[int]:
        """Greedy decoding on the GPU: yields the argmax of n_steps consecutive steps at pos0, pos0+1, ...;
        the first is fed `token`, each later one the previous argmax straight from GPU memory.

        Steps go to the GPU `chunk` per command buffer (default: as many as LOOP_CHUNK_S of the
        measured step time holds, 1..LOOP_MAX_CHUNK), each step's id coming back as 4 bytes, once
        per command buffer. The next command buffer is recorded while one runs. Where a step takes
        at most LOOP_CHUNK_S, it is submitted at once, so two are on the GPU while the host waits
        for the first one's ids (the runtime waits for one submission, not the whole queue) and the
        GPU never idles between them; slower steps submit it when the running one's ids are back
        and none of them is in stop_ids (a stop would leave a whole slow step computed for
        nothing). Closing the generator early, or a stop, leaves the queued steps to finish: they
        only write KV-cache rows past the last consumed position, which a later step rewrites
        before it reads them (a step stores its own rows first and reads the cache below pos0)."""
        self._check_loop(token, pos0, n_steps)
        if n_steps <= 0:
            return
        rt = self.backend.rt
        with rt.guard("starting the decode loop"):
            rt.queue.write_buffer(self.ids_buffer, 0, np.array([token], np.uint32))
        yield from self._loop(self._greedy_program(), self.ids_buffer, pos0, n_steps, chunk, stop_ids,
                              lambda t, pos: int(self.greedy(np.array([t]), pos)[0]), token)

    def _sample_state(self):
        """The sampling kernels' state buffer (sample.state_words) and the 4-byte slot of the id drawn."""
        from . import sample

        if self._sampling_buffers is None:
            rt = self.backend.rt
            self._sampling_buffers = (rt.storage(4 * sample.state_words(self.backend.n_ctx), "sampling state"),
                                      rt.storage(4, "drawn id"))
        return self._sampling_buffers

    def _sample_program(self, k: int, penalised: bool) -> Program:
        """The step, a repetition penalty on its last output row (if penalised), the top-k of that
        row and a draw from it (sample.draw), written over the step's own token ids: a next run
        reads the drawn id as its input. The output is the drawn id."""
        from . import sample

        key = ("sample", k, penalised)
        if key not in self._programs:
            h, be = self._head, self.backend
            state, drawn = self._sample_state()
            last = K.View(h.view.buffer, h.view.offset + (h.rows - 1) * h.view.stride, h.view.stride)
            n = sample.scratch_bytes(be.cfg, h.width, k)
            scratch = (be.rt.storage(n, "top-k scratch a"), be.rt.storage(n, "top-k scratch b"))
            pairs = be.rt.storage(8 * k, f"top-{k}")
            kernels = [sample.repeat_penalty(h.width, last, state, f"{h.name}: repeat_penalty")] if penalised else []
            kernels += sample.top_k(be.cfg, h.width, k, last, scratch, pairs, label=f"{h.name}: top_k")
            kernels.append(sample.draw(k, pairs, state, self.ids_buffer, drawn, label=f"{h.name}: sample"))
            self._programs[key] = Program(be.rt, [*self._kernels, *kernels],
                                          f"{self.program.label}, sampled from the top {k}", [(drawn, 0, 4)])
        return self._programs[key]

    def sample_loop(self, token: int, pos0: int, n_steps: int, params, uniforms, recent, chunk: int | None = None,
                    stop_ids=()) -> Iterator[int]:
        """Sampled decoding on the GPU, as greedy_loop but each step's id drawn on the GPU by
        llama.cpp's chain (sampling.Sampler with params: a SamplingParams with 1 <= top_k <= 128,
        temperature > 0, and repeat_last_n <= sample.RING where a penalty applies): repetition
        penalty, top-k, top-p, min-p, temperature, then the draw of step i (at pos0 + i) with
        uniforms[i] (rng.random() of the sampler's generator, drawn by the caller).
        recent: the ids at the positions up to pos0 (the last one `token`), the repetition penalty's
        history; the GPU appends each drawn id. Ids come back once per command buffer (see
        greedy_loop); a candidate that is not finite raises sampling.NonFiniteLogits."""
        from . import sample
        from wgpu_llm.sampling import NonFiniteLogits

        self._check_loop(token, pos0, n_steps)
        if n_steps <= 0:
            return
        if not (params.temperature > 0 and 1 <= params.top_k <= self.max_top_k):
            raise ValueError(f"sampling on the GPU needs temperature > 0 and 1 <= top_k <= {self.max_top_k}")
        if len(uniforms) < n_steps:
            raise ValueError(f"{n_steps} steps need {n_steps} uniforms, got {len(uniforms)}")
        words = sample.settings(params.temperature, params.top_p, params.min_p, params.repeat_penalty,
                                params.repeat_last_n if params.penalised else 0)
        recent = [int(t) for t in recent][-sample.RING:]
        if not recent or recent[-1] != int(token) or len(recent) > pos0 + 1:
            raise ValueError(f"recent ids must end with the token fed to the first step and number at most "
                             f"pos0 + 1 = {pos0 + 1}")
        ring = np.zeros(sample.RING, np.uint32)
        first = pos0 - len(recent) + 1
        ring[np.arange(first, pos0 + 1) % sample.RING] = recent
        prog = self._sample_program(params.top_k, params.penalised)
        state, _ = self._sample_state()
        rt = self.backend.rt
        with rt.guard("starting the sampled decode loop"):
            rt.queue.write_buffer(state, 0, np.concatenate([words, ring]))
            rt.queue.write_buffer(state, 4 * (sample.HEAD + sample.RING + pos0),
                                  np.asarray(uniforms[:n_steps], np.float32).view(np.uint32))
            rt.queue.write_buffer(self.ids_buffer, 0, np.array([token], np.uint32))

        def one_step(t: int, pos: int) -> int:
            (data,) = self._run(prog, np.array([t]), pos)
            return int(data.view(np.uint32)[0])

        for t in self._loop(prog, self._sample_state()[1], pos0, n_steps, chunk, stop_ids, one_step, token):
            if t == sample.NONE:
                raise NonFiniteLogits("the model's logits are not finite (among the top-k candidates on the GPU)")
            yield t

    def _loop(self, prog: Program, result, pos0: int, n_steps: int, chunk: int | None, stop_ids, one_step,
              token: int) -> Iterator[int]:
        """n_steps runs of prog (a step feeding itself: its sampling kernel writes the next input)
        at pos0, pos0+1, ..., each step's id read from the 4-byte `result` buffer; see greedy_loop.
        Traced: one timed step at a time, one_step(token, pos) -> id."""
        stop = {int(t) for t in stop_ids}
        if self.backend.tracer is not None:  # traced: one timed step at a time
            for i in range(n_steps):
                token = one_step(token, pos0 + i)
                yield token
                if token in stop:
                    return
            return
        rt = self.backend.rt
        positions = self._positions_buffer()
        if not self._loop_staging:
            u = rt.wgpu.BufferUsage
            self._loop_staging = [rt.buffer(4 * LOOP_MAX_CHUNK, u.MAP_READ | u.COPY_DST, f"decode loop ids {i}")
                                  for i in range(2)]
        next_pos, end = pos0, pos0 + n_steps
        per_step = None  # measured device seconds per step
        made = 0

        def record() -> _Chunk:
            nonlocal next_pos, made
            if chunk:
                size = chunk
            else:
                size = 1 if per_step is None else int(LOOP_CHUNK_S / max(per_step, 1e-6))
            size = max(1, min(size, LOOP_MAX_CHUNK, end - next_pos))
            c = _Chunk(size, self._loop_staging[made % 2], size * prog.n_dispatches)
            enc = rt.device.create_command_encoder()
            for j in range(size):
                enc.copy_buffer_to_buffer(positions, 16 * (next_pos + j), prog.step_buffer, 0, 16)
                prog.record_pass(enc)
                enc.copy_buffer_to_buffer(result, 0, c.staging, 4 * j, 4)
            c.cb = enc.finish()
            next_pos, made = next_pos + size, made + 1
            return c

        with rt.guard("starting the decode loop"):
            first = record()
            first.submit(rt)
        in_flight = [first]  # submitted, ids not read yet, oldest first
        ahead = None  # recorded, not submitted yet
        last_done = 0.0
        while in_flight:
            with rt.guard("running the decode loop"):
                if ahead is None and next_pos < end:
                    ahead = record()  # while in_flight[0] runs
                # short steps: keep a second command buffer on the GPU while the host waits for the
                # first one's ids, so the GPU does not idle between them; a stop among those ids
                # leaves it computing steps nobody reads, at most ~LOOP_CHUNK_S of device time
                if ahead is not None and len(in_flight) < 2 and per_step is not None and per_step <= LOOP_CHUNK_S:
                    ahead.submit(rt)
                    in_flight.append(ahead)
                    ahead = None
                running = in_flight.pop(0)
                ids = rt.read_back(running.staging, 4 * running.size, running.submission).view(np.uint32).tolist()
                done = time.perf_counter()
                per_step = (done - max(running.t_submit, last_done)) / running.size  # device time, roughly
                last_done = done
                if not stop.isdisjoint(ids):
                    ahead = None
                elif ahead is not None and not in_flight:
                    ahead.submit(rt)
                    in_flight.append(ahead)
                    ahead = None
            for t in ids:
                yield t
                if t in stop:
                    return


@dataclass
class _Chunk:
    """Consecutive decode-loop steps in one command buffer; their ids land in `staging`."""

    size: int
    staging: object
    dispatches: int  # compute dispatches in the command buffer
    cb: object = None  # the command buffer until it is submitted
    t_submit: float = 0.0
    submission: int | None = None  # the runtime's index of the submission (Runtime.read_back)

    def submit(self, rt: Runtime) -> None:
        self.t_submit = time.perf_counter()
        self.submission = rt.submit([self.cb], self.dispatches, steps=self.size)
        self.cb = None


def _pairs(data: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64, values float32) from k (f32 bits, index) u32 pairs, padding dropped."""
    from .sample import NONE

    pairs = data.view(np.uint32).reshape(k, 2)
    keep = pairs[:, 1] != NONE
    return pairs[keep, 1].astype(np.int64), pairs[keep, 0].view(np.float32).copy()


class _ChunkedStep:
    """A step of more tokens than fit the device's bindings, run as consecutive smaller steps
    (the same result: each chunk's attention sees the KV cache the previous chunks wrote)."""

    def __init__(self, backend: GpuBackend, graph: Graph, n_tokens: int, per_step: int):
        self.n_tokens = n_tokens
        sizes = [per_step] * (n_tokens // per_step) + ([n_tokens % per_step] if n_tokens % per_step else [])
        steps = {n: backend.compile(graph, n) for n in set(sizes)}
        self.chunks = [steps[n] for n in sizes]
        self.n_dispatches = sum(s.n_dispatches for s in self.chunks)
        self.fused = self.chunks[0].fused
        self.all_rows = self.chunks[0].out_shape[0] == sizes[0]  # False: the graph keeps the last row only

    def _run(self, token_ids, pos0: int, greedy: bool, base: int = 0) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.shape != (self.n_tokens,):
            raise ValueError(f"step compiled for {self.n_tokens} tokens got {ids.shape[0] if ids.ndim else 'a scalar'}")
        outs, start = [], 0
        for step in self.chunks:
            chunk = ids[start:start + step.n_tokens]
            outs.append(step.greedy(chunk, pos0 + start) if greedy else step(chunk, pos0 + start, base))
            start += step.n_tokens
        return np.concatenate(outs) if self.all_rows else outs[-1]

    def __call__(self, token_ids: np.ndarray, pos0: int, base: int = 0) -> np.ndarray:
        return self._run(token_ids, pos0, greedy=False, base=base)

    spans = _GpuStep.spans

    def greedy(self, token_ids: np.ndarray, pos0: int) -> np.ndarray:
        return self._run(token_ids, pos0, greedy=True)

    def top_k(self, token_ids: np.ndarray, pos0: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top k of the last output row: every chunk but the last runs as a plain step."""
        ids = np.asarray(token_ids)
        if ids.shape != (self.n_tokens,):
            raise ValueError(f"step compiled for {self.n_tokens} tokens got {ids.shape[0] if ids.ndim else 'a scalar'}")
        start = 0
        for step in self.chunks[:-1]:
            step(ids[start:start + step.n_tokens], pos0 + start)
            start += step.n_tokens
        return self.chunks[-1].top_k(ids[start:], pos0 + start, k)
