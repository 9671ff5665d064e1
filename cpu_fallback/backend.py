"""The numpy backend: runs a model graph in float32 with BLAS matmuls. The numerical reference.

Weights are dequantized once at load with gguf-py's dequantizers; the weights of a multi-weight
`linear` (QKV, gate+up) are concatenated into one matrix so the step does one matmul for them.
The KV cache is preallocated for the whole context: (n_kv_head, n_ctx, head_dim) per layer; a step's
spans (wgpu_llm.graph.Span) say which rows belong to which sequence and where its cache starts.
kv_type="f16" holds it in float16 (half the memory; ops.attention reads it back as float32).

weights_dtype="float16" keeps the matrices (not the norm and bias vectors) in float16: half the
weight memory, for models whose float32 weights do not fit. Each linear op converts its weight to
float32 in blocks of rows and accumulates in float32 (ops.linear); the cost is speed and rounding,
measured in the README ("Memory").

`compile` turns the graph into a list of small closures over buffers allocated once, each calling
the op's function in ops.py (the reference the GPU kernels are tested against) with `out=` its
buffer, so a step writes every activation in place; only attention's score matrix, whose size
grows with the position, is a temporary. Slices and last_row are views. An activation takes over
the buffer of one that has been read for the last time (never one of its own op's inputs), so a
step holds a few buffers, not one per op.
"""

from __future__ import annotations

import time

import numpy as np

from wgpu_llm.graph import Graph, Op, Span, capture_names, check_spans
from wgpu_llm.memory import KV_BYTES, WEIGHTS_DTYPES, check_kv_type

from . import ops


class CpuBackend:
    name = "cpu"
    tracer = None  # a wgpu_llm.trace.Trace while tracing: each op's closure is then timed

    def __init__(self, gguf_file, n_ctx: int, weights_dtype: str = "float32", kv_type: str = "f32"):
        if weights_dtype not in WEIGHTS_DTYPES:
            raise ValueError(f"weights_dtype {weights_dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
        check_kv_type(kv_type)
        self.gf = gguf_file
        self.n_ctx = n_ctx
        self.weights_dtype = weights_dtype
        self.kv_type = kv_type
        self.weights: dict[tuple[str, ...], np.ndarray] = {}  # (names...) -> float32 (or float16) matrix
        self.k_cache: dict[int, np.ndarray] = {}  # layer -> (n_kv_head, n_ctx, head_dim)
        self.v_cache: dict[int, np.ndarray] = {}
        self._rope_tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def describe(self) -> str:
        notes = [] if self.weights_dtype == "float32" else ["float16 weights"]
        if self.kv_type != "f32":
            notes.append(f"KV cache {self.kv_type}")
        return f"numpy (CPU, {', '.join(notes)})" if notes else "numpy (CPU)"

    # ---- load ----
    def _weight(self, names: tuple[str, ...]) -> np.ndarray:
        """The float32 matrix of one tensor, or of several stacked by rows (a fused linear), or the
        vectors of several 1-D tensors side by side (a fused linear's biases). With float16 weights,
        matrices are float16 (wgpu_llm.memory.cpu_estimate counts the same bytes)."""
        if names not in self.weights:
            infos = [self.gf.tensor(n) for n in names]
            if all(len(i.shape) == 1 for i in infos):
                self.weights[names] = (self.gf.dequantize(names[0]) if len(names) == 1 else
                                       np.concatenate([self.gf.dequantize(n) for n in names]))
            else:  # dequantize each part straight into its rows of the (fused) matrix
                dtype = np.float16 if self.weights_dtype == "float16" else np.float32
                rows = [int(np.prod(i.shape[:-1])) for i in infos]
                fused = np.empty((sum(rows), infos[0].shape[-1]), dtype)
                start = 0
                for info, n in zip(infos, rows):
                    self.gf.dequantize(info.name, out=fused[start:start + n].reshape(info.shape))
                    start += n
                self.weights[names] = fused if len(names) > 1 else fused.reshape(infos[0].shape)
        return self.weights[names]

    def _prepare(self, graph: Graph) -> None:
        """Dequantize what the graph reads, once; allocate the KV cache."""
        for names in {op.weights for op in graph.ops if op.weights}:
            self._weight(names)
        self.gf.release_pages()
        for layer, (n_kv, head_dim) in graph.kv_layers().items():
            if layer not in self.k_cache:  # one (positions, head_dim) block per KV head: GEMM-friendly
                dtype = np.float16 if self.kv_type == "f16" else np.float32
                self.k_cache[layer] = np.zeros((n_kv, self.n_ctx, head_dim), dtype)
                self.v_cache[layer] = np.zeros((n_kv, self.n_ctx, head_dim), dtype)

    def rope_table(self, n_rot: int, base: float, freq_scale: float, factors: tuple[str, ...] = (),
                   attn_factor: float = 1.0):
        """cos, sin for every position of the context: (n_ctx, n_rot/2) each, computed once.
        factors: () or the name of the tensor of per-pair frequency divisors."""
        key = (n_rot, base, freq_scale, factors, attn_factor)
        if key not in self._rope_tables:
            divisors = self._weight(factors) if factors else None
            self._rope_tables[key] = ops.rope_tables(np.arange(self.n_ctx), n_rot, base, freq_scale, divisors,
                                                     attn_factor)
        return self._rope_tables[key]

    def close(self) -> None:
        """Drop the weight matrices, KV caches and rope tables (steps compiled so far keep what they
        hold until they are dropped too). Closing twice does nothing."""
        for table in (self.weights, self.k_cache, self.v_cache, self._rope_tables):
            table.clear()

    # ---- compile / run ----
    def max_batch_rows(self, graph: Graph) -> int:
        return 1 << 30  # any number of sequences: a step's rows are plain numpy rows

    def compile(self, graph: Graph, n_tokens: int, batched: bool = False, capture=None):
        """A callable step(token_ids (n_tokens,), pos0, base=0) -> output activation (rows, width);
        `step.spans(token_ids, spans)` runs rows of several sequences (see wgpu_llm.graph.Span); any
        step can, so `batched` changes nothing here.
        capture: activation names (or "all") that each run copies aside for `step.read_captured()`;
        `step.replay(...)` runs the step on activations given by the caller (wgpu_llm.verify)."""
        self._prepare(graph)
        return _CpuStep(self, graph, n_tokens, capture)


class _CpuStep:
    def __init__(self, backend: CpuBackend, graph: Graph, n_tokens: int, capture=None):
        self.backend, self.graph, self.n_tokens = backend, graph, n_tokens
        self.capture = capture_names(graph, capture)
        self._captured: dict[str, np.ndarray] = {}
        self.env: dict[str, np.ndarray] = {}  # activation name -> its buffer (or a view of one)
        # buffers are reused once every activation living in them has been read for the last time
        self.last_use = {name: i for i, op in enumerate(graph.ops) for name in op.inputs}
        self.last_use[graph.output] = len(graph.ops)
        self.home: dict[str, int] = {}  # activation name -> index of the buffer it lives in
        self.buffers: list[np.ndarray] = []  # flat float32 buffers
        self.residents: list[int] = []  # live activations per buffer
        self.free: list[int] = []
        self.program = []
        for i, op in enumerate(graph.ops):
            self.program.append(self._compile_op(op))
            self._release(i, op)

    def _buffer(self, op: Op, rows: int) -> np.ndarray:
        """A (rows, width) buffer for op's output: the smallest free one that fits, else a new one."""
        need = rows * self.graph.widths[op.out]
        fitting = [b for b in self.free if self.buffers[b].size >= need]
        if fitting:
            b = min(fitting, key=lambda k: self.buffers[k].size)
            self.free.remove(b)
        else:
            b = len(self.buffers)
            self.buffers.append(np.empty(need, np.float32))
            self.residents.append(0)
        buf = self.buffers[b][:need].reshape(rows, self.graph.widths[op.out])
        self.env[op.out] = buf
        self._settle(op.out, b)
        return buf

    def _settle(self, name: str, b: int) -> None:
        self.home[name] = b
        self.residents[b] += 1

    def _release(self, i: int, op: Op) -> None:
        """After op i: a view lives in its input's buffer; names read for the last time leave theirs."""
        if op.kind in ("slice", "last_row"):
            self._settle(op.out, self.home[op.inputs[0]])
        for name in set(op.inputs) | {op.out}:
            if name in self.home and self.last_use.get(name, -1) <= i:
                b = self.home.pop(name)
                self.residents[b] -= 1
                if self.residents[b] == 0:
                    self.free.append(b)

    def _compile_op(self, op: Op):
        """A closure run(token_ids, spans) that computes op into its preallocated buffer; spans:
        ((span, first row), ...) for the position-dependent ops."""
        b, p = self.backend, op.p
        args = [self.env[i] for i in op.inputs]
        rows = args[0].shape[0] if args else self.n_tokens
        if op.kind == "slice":  # a view: no work at run time
            self.env[op.out] = args[0][:, p["start"]:p["start"] + self.graph.widths[op.out]]
            return None
        if op.kind == "last_row":
            self.env[op.out] = args[0][-1:]
            return None
        out = self._buffer(op, rows)
        if op.kind == "embed":
            table, scale = b._weight(op.weights), p["scale"]

            def run(ids, spans):
                ops.embed(table, ids, scale, out)
        elif op.kind == "rms_norm":
            weight, x, eps = b._weight(op.weights), args[0], p["eps"]

            def run(ids, spans):
                ops.rms_norm(x, weight, eps, out)
        elif op.kind == "linear":
            weight, x = b._weight(op.weights), args[0]

            def run(ids, spans):
                ops.linear(x, weight, out)
        elif op.kind == "rope":
            x, head_dim, n_rot, neox = args[0], p["head_dim"], p["n_rot"], p["neox"]
            cos, sin = b.rope_table(n_rot, p["base"], p["freq_scale"], op.weights, p["attn_factor"])

            def run(ids, spans):
                for s, r in spans:
                    p, e = s.pos0, r + s.n
                    ops.rope(x[r:e], cos[p:p + s.n], sin[p:p + s.n], head_dim, n_rot, neox, out[r:e])
        elif op.kind == "attention":
            q, k, v = args
            k_cache, v_cache = b.k_cache[p["layer"]], b.v_cache[p["layer"]]
            n_head, scale, window, cap = p["n_head"], p["scale"], p["window"], p["softcap"]

            def run(ids, spans):
                for s, r in spans:
                    e, kc, vc = r + s.n, k_cache[:, s.base:], v_cache[:, s.base:]
                    ops.attention(q[r:e], k[r:e], v[r:e], kc, vc, s.pos0, n_head, scale, window, cap, out[r:e])
        elif op.kind == "glu":
            x, act = args[0], p["activation"]

            def run(ids, spans):
                ops.glu(x, act, out)
        elif op.kind == "add":
            x, y = args

            def run(ids, spans):
                ops.add(x, y, out)
        elif op.kind == "bias":
            x, vector = args[0], b._weight(op.weights).reshape(-1)

            def run(ids, spans):
                ops.add(x, vector, out)
        elif op.kind == "scale":
            x, factor = args[0], p["factor"]

            def run(ids, spans):
                ops.scale(x, factor, out)
        elif op.kind == "layer_norm":
            both = b._weight(op.weights)  # the weight and bias vectors side by side
            weight, bias = both[:both.size // 2], both[both.size // 2:]
            x, eps = args[0], p["eps"]

            def run(ids, spans):
                ops.layer_norm(x, weight, bias, eps, out)
        elif op.kind == "gelu":
            x = args[0]

            def run(ids, spans):
                ops.gelu(x, out)
        elif op.kind == "pos_embed":
            x, table = args[0], b._weight(op.weights)
            if b.n_ctx > table.shape[0]:
                raise ValueError(f"a context of {b.n_ctx} positions exceeds the {table.shape[0]} rows of "
                                 f"{op.weights[0]}; use n_ctx <= {table.shape[0]}")

            def run(ids, spans):
                for s, r in spans:
                    ops.pos_embed(x[r:r + s.n], table, s.pos0, out[r:r + s.n])
        elif op.kind == "softcap":
            x, cap = args[0], p["cap"]

            def run(ids, spans):
                ops.softcap(x, cap, out)
        else:
            raise NotImplementedError(f"cpu backend: op {op.kind!r}")
        return run

    def __call__(self, token_ids: np.ndarray, pos0: int, base: int = 0) -> np.ndarray:
        return self.spans(token_ids, [Span(pos0, len(token_ids), base)])

    def spans(self, token_ids: np.ndarray, spans: list[Span]) -> np.ndarray:
        """Run the step over rows of one or several sequences; returns the output activation."""
        n = self.n_tokens
        if len(token_ids) != n:
            raise ValueError(f"step compiled for {n} tokens got {len(token_ids)}")
        check_spans(spans, n, self.backend.n_ctx)
        ids = np.asarray(token_ids, dtype=np.intp)
        starts = np.cumsum([0] + [s.n for s in spans[:-1]])
        located = tuple(zip(spans, (int(r) for r in starts)))
        if self.capture:
            return self._stepwise(ids, located, {})
        if self.backend.tracer is not None:
            return self._traced(ids, located)
        for run in self.program:
            if run is not None:
                run(ids, located)
        return self.env[self.graph.output]

    def replay(self, token_ids: np.ndarray, pos0: int, given: dict[str, np.ndarray], base: int = 0) -> np.ndarray:
        """Run the step with each activation in `given` replaced by the given value as soon as its
        op has computed it (and been captured): every later op reads the given values, the
        attention ops store the given k and v in the KV cache. Capturing all and giving another
        backend's activations yields each op's result on that backend's inputs."""
        for name, value in given.items():
            if name not in self.env:
                raise KeyError(f"replay: the graph has no activation {name!r}")
            if np.shape(value) != self.env[name].shape:
                raise ValueError(f"replay: {name} is {self.env[name].shape} in a step of {self.n_tokens} tokens, "
                                 f"given {np.shape(value)}")
        n = self.n_tokens
        if len(token_ids) != n:
            raise ValueError(f"step compiled for {n} tokens got {len(token_ids)}")
        span = Span(pos0, n, base)
        check_spans([span], n, self.backend.n_ctx)
        return self._stepwise(np.asarray(token_ids, dtype=np.intp), ((span, 0),), given)

    def read_captured(self) -> dict[str, np.ndarray]:
        """The activations compiled with `capture=`, as the last run computed them."""
        return dict(self._captured)

    def _stepwise(self, ids: np.ndarray, spans, given: dict) -> np.ndarray:
        """The run op by op, copying captured outputs aside and putting given values in place."""
        self._captured = {}
        for op, run in zip(self.graph.ops, self.program):
            if run is not None:
                run(ids, spans)
            if op.out in self.capture:
                self._captured[op.out] = self.env[op.out].copy()
            if op.out in given:
                self.env[op.out][...] = given[op.out]
        return self.env[self.graph.output]

    def _traced(self, ids: np.ndarray, spans) -> np.ndarray:
        """The same run with each op's closure timed, reported to the backend's tracer."""
        keys, seconds = [], []
        clock = time.perf_counter
        t_start = clock()
        for i, run in enumerate(self.program):
            if run is not None:
                t0 = clock()
                run(ids, spans)
                seconds.append(clock() - t0)
                keys.append(i)
        self.backend.tracer.record_step(self.graph, self.n_tokens, spans[0][0].pos0, keys, seconds,
                                        clock() - t_start, t_start, timer="host clock (time.perf_counter) per op")
        return self.env[self.graph.output]
