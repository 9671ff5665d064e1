"""The numpy backend: runs a model graph in float32 with BLAS matmuls. The numerical reference.

Weights are dequantized once at load with gguf-py's dequantizers; the weights of a multi-weight
`linear` (QKV, gate+up) are concatenated into one matrix so the step does one matmul for them.
The KV cache is preallocated for the whole context: (n_ctx, n_kv_head*head_dim) per layer.
"""

from __future__ import annotations

import numpy as np

from wgpu_llm.graph import Graph

from . import ops


class CpuBackend:
    name = "cpu"

    def __init__(self, gguf_file, n_ctx: int):
        self.gf = gguf_file
        self.n_ctx = n_ctx
        self.weights: dict[tuple[str, ...], np.ndarray] = {}  # (names...) -> float32 matrix
        self.k_cache: dict[int, np.ndarray] = {}  # layer -> (n_ctx, kv_width)
        self.v_cache: dict[int, np.ndarray] = {}

    def describe(self) -> str:
        return "numpy (CPU)"

    # ---- load ----
    def _weight(self, names: tuple[str, ...]) -> np.ndarray:
        if names not in self.weights:
            parts = [self._weight((n,)) for n in names] if len(names) > 1 else [self.gf.dequantize(names[0])]
            self.weights[names] = parts[0] if len(parts) == 1 else np.ascontiguousarray(np.concatenate(parts))
        return self.weights[names]

    def _prepare(self, graph: Graph) -> None:
        """Dequantize what the graph reads; keep only fused matrices for multi-weight linears."""
        wanted = {op.weights for op in graph.ops if op.weights}
        for names in wanted:
            self._weight(names)
        used_alone = {names for names in wanted if len(names) == 1}
        for names in [k for k in self.weights if len(k) == 1 and k not in used_alone]:
            del self.weights[names]  # only needed as a part of a fused matrix
        for layer, (n_kv, head_dim) in graph.kv_layers().items():
            if layer not in self.k_cache:
                self.k_cache[layer] = np.zeros((self.n_ctx, n_kv * head_dim), np.float32)
                self.v_cache[layer] = np.zeros((self.n_ctx, n_kv * head_dim), np.float32)

    # ---- compile / run ----
    def compile(self, graph: Graph, n_tokens: int):
        """A callable step(token_ids (n_tokens,), pos0) -> output activation (rows, width)."""
        self._prepare(graph)
        return _CpuStep(self, graph, n_tokens)


class _CpuStep:
    def __init__(self, backend: CpuBackend, graph: Graph, n_tokens: int):
        self.backend, self.graph, self.n_tokens = backend, graph, n_tokens

    def __call__(self, token_ids: np.ndarray, pos0: int) -> np.ndarray:
        b, n = self.backend, self.n_tokens
        if len(token_ids) != n:
            raise ValueError(f"step compiled for {n} tokens got {len(token_ids)}")
        if pos0 + n > b.n_ctx:
            raise ValueError(f"positions {pos0}..{pos0 + n - 1} exceed the context size {b.n_ctx}")
        positions = np.arange(pos0, pos0 + n)
        env: dict[str, np.ndarray] = {}
        for op in self.graph.ops:
            p = op.p
            args = [env[i] for i in op.inputs]
            if op.kind == "embed":
                y = ops.embed(b._weight(op.weights), token_ids, p["scale"])
            elif op.kind == "rms_norm":
                y = ops.rms_norm(args[0], b._weight(op.weights), p["eps"])
            elif op.kind == "linear":
                y = ops.linear(args[0], b._weight(op.weights))
            elif op.kind == "slice":
                y = args[0][:, p["start"]:p["start"] + self.graph.widths[op.out]]
            elif op.kind == "rope":
                y = ops.rope(args[0], positions, p["head_dim"], p["n_rot"], p["base"], p["neox"], p["freq_scale"])
            elif op.kind == "attention":
                q, k, v = args
                layer = p["layer"]
                b.k_cache[layer][pos0:pos0 + n] = k
                b.v_cache[layer][pos0:pos0 + n] = v
                y = ops.attention(q, b.k_cache[layer], b.v_cache[layer], pos0, p["n_head"], p["n_kv_head"],
                                  p["head_dim"], p["scale"], p["window"])
            elif op.kind == "glu":
                y = ops.glu(args[0], p["activation"])
            elif op.kind == "add":
                y = args[0] + args[1]
            elif op.kind == "scale":
                y = args[0] * np.float32(p["factor"])
            elif op.kind == "last_row":
                y = args[0][-1:]
            else:
                raise NotImplementedError(f"cpu backend: op {op.kind!r}")
            env[op.out] = y
        return env[self.graph.output]
