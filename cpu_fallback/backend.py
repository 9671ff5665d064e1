"""The numpy backend: runs a model graph in float32 with BLAS matmuls. The numerical reference.

Weights are dequantized once at load with gguf-py's dequantizers; the weights of a multi-weight
`linear` (QKV, gate+up) are concatenated into one matrix so the step does one matmul for them.
The KV cache is preallocated for the whole context: (n_ctx, n_kv_head*head_dim) per layer.

`compile` turns the graph into a list of small closures over buffers allocated once, so a step
writes every activation in place (matmuls with `out=`); only attention's score matrix, whose size
grows with the position, is a temporary. An activation takes over the buffer of one that has been
read for the last time (never one of its own op's inputs), so a step holds a few buffers, not one
per op.
"""

from __future__ import annotations

import time

import numpy as np

from wgpu_llm.graph import Graph, Op

from . import ops


class CpuBackend:
    name = "cpu"
    tracer = None  # a wgpu_llm.trace.Trace while tracing: each op's closure is then timed

    def __init__(self, gguf_file, n_ctx: int):
        self.gf = gguf_file
        self.n_ctx = n_ctx
        self.weights: dict[tuple[str, ...], np.ndarray] = {}  # (names...) -> float32 matrix
        self.k_cache: dict[int, np.ndarray] = {}  # layer -> (n_kv_head, n_ctx, head_dim)
        self.v_cache: dict[int, np.ndarray] = {}
        self._rope_tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def describe(self) -> str:
        return "numpy (CPU)"

    # ---- load ----
    def _weight(self, names: tuple[str, ...]) -> np.ndarray:
        """The float32 matrix of one tensor, or of several stacked by rows (a fused linear)."""
        if names not in self.weights:
            infos = [self.gf.tensor(n) for n in names]
            if len(names) == 1:
                self.weights[names] = self.gf.dequantize(names[0])
            else:  # dequantize each part straight into its rows of the fused matrix
                fused = np.empty((sum(i.shape[0] for i in infos), infos[0].shape[1]), np.float32)
                start = 0
                for info in infos:
                    self.gf.dequantize(info.name, out=fused[start:start + info.shape[0]])
                    start += info.shape[0]
                self.weights[names] = fused
        return self.weights[names]

    def _prepare(self, graph: Graph) -> None:
        """Dequantize what the graph reads, once; allocate the KV cache."""
        for names in {op.weights for op in graph.ops if op.weights}:
            self._weight(names)
        self.gf.release_pages()
        for layer, (n_kv, head_dim) in graph.kv_layers().items():
            if layer not in self.k_cache:  # one (positions, head_dim) block per KV head: GEMM-friendly
                self.k_cache[layer] = np.zeros((n_kv, self.n_ctx, head_dim), np.float32)
                self.v_cache[layer] = np.zeros((n_kv, self.n_ctx, head_dim), np.float32)

    def rope_table(self, n_rot: int, base: float, freq_scale: float):
        """cos, sin for every position of the context: (n_ctx, n_rot/2) each, computed once."""
        key = (n_rot, base, freq_scale)
        if key not in self._rope_tables:
            self._rope_tables[key] = ops.rope_tables(np.arange(self.n_ctx), n_rot, base, freq_scale)
        return self._rope_tables[key]

    # ---- compile / run ----
    def compile(self, graph: Graph, n_tokens: int):
        """A callable step(token_ids (n_tokens,), pos0) -> output activation (rows, width)."""
        self._prepare(graph)
        return _CpuStep(self, graph, n_tokens)


class _CpuStep:
    def __init__(self, backend: CpuBackend, graph: Graph, n_tokens: int):
        self.backend, self.graph, self.n_tokens = backend, graph, n_tokens
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
        """A closure run(token_ids, pos0) that computes op into its preallocated buffer."""
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
            table, scale = b._weight(op.weights), np.float32(p["scale"])

            def run(ids, pos0):
                np.take(table, ids, axis=0, out=out)
                if scale != 1:
                    np.multiply(out, scale, out=out)
        elif op.kind == "rms_norm":
            weight = b._weight(op.weights).reshape(-1)
            x = args[0]
            group = weight.shape[0]
            xg, og = x.reshape(rows, -1, group), out.reshape(rows, -1, group)
            mean_sq = np.empty((rows, xg.shape[1], 1), np.float32)
            eps, inv_group = np.float32(p["eps"]), np.float32(1.0 / group)

            def run(ids, pos0):
                np.einsum("rgi,rgi->rg", xg, xg, out=mean_sq[..., 0])
                mean_sq[...] = mean_sq * inv_group + eps
                np.sqrt(mean_sq, out=mean_sq)
                np.divide(xg, mean_sq, out=og)
                np.multiply(og, weight, out=og)
        elif op.kind == "linear":
            weight_t, x = b._weight(op.weights).T, args[0]

            def run(ids, pos0):
                np.matmul(x, weight_t, out=out)
        elif op.kind == "rope":
            run = self._rope(op, args[0], out)
        elif op.kind == "attention":
            run = self._attention(op, args, out)
        elif op.kind == "glu":
            x, act = args[0], p["activation"]

            def run(ids, pos0):
                ops.glu_into(x, act, out)
        elif op.kind == "add":
            x, y = args

            def run(ids, pos0):
                np.add(x, y, out=out)
        elif op.kind == "scale":
            x, factor = args[0], np.float32(p["factor"])

            def run(ids, pos0):
                np.multiply(x, factor, out=out)
        else:
            raise NotImplementedError(f"cpu backend: op {op.kind!r}")
        return run

    def _rope(self, op: Op, x: np.ndarray, out: np.ndarray):
        p = op.p
        head_dim, n_rot = p["head_dim"], p["n_rot"]
        cos_all, sin_all = self.backend.rope_table(n_rot, p["base"], p["freq_scale"])
        rows = x.shape[0]
        xh, oh = x.reshape(rows, -1, head_dim), out.reshape(rows, -1, head_dim)
        half = n_rot // 2
        if p["neox"]:
            a, b, oa, ob = xh[..., :half], xh[..., half:n_rot], oh[..., :half], oh[..., half:n_rot]
        else:
            a, b, oa, ob = xh[..., 0:n_rot:2], xh[..., 1:n_rot:2], oh[..., 0:n_rot:2], oh[..., 1:n_rot:2]
        tmp = np.empty_like(oa)

        def run(ids, pos0):
            cos, sin = cos_all[pos0:pos0 + rows, None], sin_all[pos0:pos0 + rows, None]
            np.multiply(a, cos, out=oa)
            np.multiply(b, sin, out=tmp)
            np.subtract(oa, tmp, out=oa)
            np.multiply(a, sin, out=ob)
            np.multiply(b, cos, out=tmp)
            np.add(ob, tmp, out=ob)
            if n_rot < head_dim:
                oh[..., n_rot:] = xh[..., n_rot:]
        return run

    def _attention(self, op: Op, args, out: np.ndarray):
        p, b = op.p, self.backend
        q, k, v = args
        k_cache, v_cache = b.k_cache[p["layer"]], b.v_cache[p["layer"]]
        rows = q.shape[0]
        n_kv, _, head_dim = k_cache.shape
        k_heads, v_heads = k.reshape(rows, n_kv, head_dim), v.reshape(rows, n_kv, head_dim)

        def run(ids, pos0):
            total = pos0 + rows
            k_cache[:, pos0:total] = k_heads.transpose(1, 0, 2)
            v_cache[:, pos0:total] = v_heads.transpose(1, 0, 2)
            ops.attention_heads(q, k_cache[:, :total], v_cache[:, :total], pos0, p["n_head"], p["scale"],
                                p["window"], out)
        return run

    def __call__(self, token_ids: np.ndarray, pos0: int) -> np.ndarray:
        n = self.n_tokens
        if len(token_ids) != n:
            raise ValueError(f"step compiled for {n} tokens got {len(token_ids)}")
        if pos0 < 0 or pos0 + n > self.backend.n_ctx:
            raise ValueError(f"positions {pos0}..{pos0 + n - 1} exceed the context size {self.backend.n_ctx}")
        ids = np.asarray(token_ids, dtype=np.intp)
        if self.backend.tracer is not None:
            return self._traced(ids, pos0)
        for run in self.program:
            if run is not None:
                run(ids, pos0)
        return self.env[self.graph.output]

    def _traced(self, ids: np.ndarray, pos0: int) -> np.ndarray:
        """The same run with each op's closure timed, reported to the backend's tracer."""
        keys, seconds = [], []
        clock = time.perf_counter
        t_start = clock()
        for i, run in enumerate(self.program):
            if run is not None:
                t0 = clock()
                run(ids, pos0)
                seconds.append(clock() - t0)
                keys.append(i)
        self.backend.tracer.record_step(self.graph, self.n_tokens, pos0, keys, seconds, clock() - t_start, t_start,
                                        timer="host clock (time.perf_counter) per op")
        return self.env[self.graph.output]
