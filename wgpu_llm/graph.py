"""The backend-neutral op set and the graph a model builds for one forward step.

A model file describes one step over ``n`` tokens (the prompt chunk in prefill, one token in
decode) as a list of ops over named activations. Every activation is a float32 matrix of shape
(n_rows, width); ``n_rows`` is the step's token count, except after ``last_row`` where it is 1.
Weights are referred to by their GGUF tensor names; the backend owns how they are stored.
Row ``r`` of the step sits at sequence position ``pos0 + r``; ``pos0`` and the token ids are the
step's only run-time inputs, so a backend compiles a graph once per token count and reuses it.

Several sequences share a backend by owning disjoint ranges of its KV cache (a server's slots): a
step's rows then come as ``Span``s, each one sequence's consecutive tokens with its own ``pos0`` and
the cache row ``base`` where its position 0 lives. Position-dependent ops (rope, pos_embed,
attention) work span by span; every other op treats the step's rows alike, so the decode steps of
several sequences run as one step over one row each (a batched decode: one mat-mat per weight).

Ops (``out = op(inputs...)``):
  embed(table)                       rows of ``table`` picked by the step's token ids, times ``scale``
  rms_norm(x, weight)                x / rms(x) * weight, over groups of len(weight) columns
                                     (so a (n, n_head*head_dim) tensor with a head_dim weight is
                                     normalised per head)
  layer_norm(x, weight, bias)        (x - mean(x)) / sqrt(var(x) + eps) * weight + bias, over groups of
                                     len(weight) columns (GPT-2's LayerNorm)
  linear(x, weights)                 x @ W.T for each weight, outputs concatenated along columns
  bias(x, vectors)                   x + the vectors side by side (a linear's biases), on every row
  rope(x)                            rotary embedding per head at positions pos0+r; ``neox``
                                     rotates pairs (i, i+n_rot/2), otherwise adjacent pairs (2i, 2i+1);
                                     pair i turns by pos * freq_scale * base^(-2i/n_rot) / factor_i,
                                     factor_i from the optional weight (Llama 3.1's rope_freqs), else 1
  attention(q, k, v)                 writes k, v into the KV cache of ``layer`` at the step's
                                     positions, then causal attention of q over the cache (GQA:
                                     head h reads kv head h // (n_head / n_kv_head)); ``window`` > 0
                                     limits each query to the last ``window`` positions;
                                     ``softcap`` > 0 turns each scaled score s into
                                     softcap * tanh(s / softcap) before the mask and softmax (Gemma 2)
  glu(x)                             act(x[:, :F]) * x[:, F:] with F = width / 2 (gate | up)
  gelu(x)                            gelu_tanh(x) on every element (a non-gated FFN's activation)
  pos_embed(x, table)                x + rows pos0..pos0+n-1 of ``table`` (learned position embeddings)
  add(a, b)                          a + b
  scale(x)                           x * factor
  softcap(x)                         cap * tanh(x / cap) (Gemma 2's final-logit soft-capping)
  last_row(x)                        the last row only, shape (1, width)
The graph's ``output`` names the activation the step returns (logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACTIVATIONS = ("silu", "gelu_tanh")


@dataclass(frozen=True)
class Span:
    """n consecutive rows of a step: one sequence's tokens at positions pos0 .. pos0 + n - 1, whose
    KV cache holds position p at cache row base + p."""

    pos0: int
    n: int
    base: int = 0


def check_spans(spans, n_tokens: int, n_ctx: int) -> None:
    """ValueError unless the spans cover exactly n_tokens rows and each stays inside the cache."""
    if sum(s.n for s in spans) != n_tokens:
        raise ValueError(f"step compiled for {n_tokens} tokens got spans of {sum(s.n for s in spans)}")
    for s in spans:
        if s.n < 1 or s.pos0 < 0 or s.base < 0 or s.base + s.pos0 + s.n > n_ctx:
            raise ValueError(f"positions {s.pos0}..{s.pos0 + s.n - 1} at cache row {s.base} exceed the "
                             f"context size {n_ctx}")


def capture_names(graph: "Graph", capture) -> frozenset[str]:
    """The activations a backend's `compile(..., capture=)` copies aside on every run: None for
    none, "all" for every op's output, else the given names (each one some op's output)."""
    if not capture:
        return frozenset()
    outs = {op.out for op in graph.ops}
    if capture == "all":
        return frozenset(outs)
    names = frozenset([capture] if isinstance(capture, str) else capture)
    unknown = sorted(names - outs)
    if unknown:
        raise KeyError(f"capture: no op of the graph computes {', '.join(map(repr, unknown))}")
    return names


@dataclass(frozen=True)
class Op:
    kind: str
    out: str
    inputs: tuple[str, ...]  # activation names
    weights: tuple[str, ...] = ()  # GGUF tensor names
    params: tuple[tuple[str, object], ...] = ()  # static attributes, hashable

    def param(self, key: str):
        return dict(self.params)[key]

    @property
    def p(self) -> dict:
        return dict(self.params)


@dataclass
class Graph:
    """Ops in execution order; built with the methods below, which return the output's name."""

    weight_shapes: dict[str, tuple[int, int]]  # GGUF name -> (rows, cols) as a matrix; 1-D -> (1, n)
    ops: list[Op] = field(default_factory=list)
    widths: dict[str, int] = field(default_factory=dict)
    output: str | None = None
    _count: int = 0

    def _new(self, kind: str, inputs, width: int, weights=(), name: str | None = None, **params) -> str:
        for i in inputs:
            if i not in self.widths:
                raise KeyError(f"{kind}: unknown input activation {i!r}")
        self._count += 1
        out = name or f"{kind}_{self._count}"
        if out in self.widths:
            raise KeyError(f"{kind}: activation {out!r} defined twice")
        self.widths[out] = width
        self.ops.append(Op(kind, out, tuple(inputs), tuple(weights), tuple(sorted(params.items()))))
        return out

    def _rows(self, weight: str) -> int:
        return self.weight_shapes[weight][0]

    def _cols(self, weight: str) -> int:
        return self.weight_shapes[weight][1]

    # ---- ops ----
    def embed(self, table: str, scale: float = 1.0, name: str | None = None) -> str:
        return self._new("embed", (), self._cols(table), (table,), name, scale=float(scale))

    def rms_norm(self, x: str, weight: str, eps: float, name: str | None = None) -> str:
        group = self._cols(weight)
        if self.widths[x] % group:
            raise ValueError(f"rms_norm: width {self.widths[x]} of {x!r} is not a multiple of {weight} ({group})")
        return self._new("rms_norm", (x,), self.widths[x], (weight,), name, eps=float(eps))

    def layer_norm(self, x: str, weight: str, bias: str, eps: float, name: str | None = None) -> str:
        group = self._cols(weight)
        if self.weight_shapes[bias] != (1, group) or self._rows(weight) != 1:
            raise ValueError(f"layer_norm: {weight} and {bias} are not two vectors of one length")
        if self.widths[x] % group:
            raise ValueError(f"layer_norm: width {self.widths[x]} of {x!r} is not a multiple of {weight} ({group})")
        return self._new("layer_norm", (x,), self.widths[x], (weight, bias), name, eps=float(eps))

    def linear(self, x: str, weights: list[str] | tuple[str, ...], name: str | None = None) -> str:
        for w in weights:
            if self._cols(w) != self.widths[x]:
                raise ValueError(f"linear: {w} expects {self._cols(w)} inputs, {x!r} has {self.widths[x]}")
        width = sum(self._rows(w) for w in weights)
        return self._new("linear", (x,), width, tuple(weights), name)

    def bias(self, x: str, vectors: list[str] | tuple[str, ...], name: str | None = None) -> str:
        width = sum(self._cols(v) for v in vectors)
        if any(self._rows(v) != 1 for v in vectors) or width != self.widths[x]:
            raise ValueError(f"bias: {', '.join(vectors)} are not vectors of {self.widths[x]} values in all")
        return self._new("bias", (x,), width, tuple(vectors), name)

    def split(self, x: str, widths: list[int]) -> list[str]:
        if sum(widths) != self.widths[x]:
            raise ValueError(f"split: {widths} does not add up to width {self.widths[x]} of {x!r}")
        outs, start = [], 0
        for w in widths:
            outs.append(self._new("slice", (x,), w, start=start))
            start += w
        return outs

    def rope(self, x: str, head_dim: int, n_rot: int, base: float, neox: bool, freq_scale: float = 1.0,
             freq_factors: str | None = None, attn_factor: float = 1.0, name: str | None = None) -> str:
        """attn_factor multiplies the rotated dimensions only (llama.cpp's rope scales its cos and sin;
        the dimensions past n_rot pass through unscaled)."""
        if self.widths[x] % head_dim or n_rot > head_dim or n_rot % 2:
            raise ValueError(f"rope: bad head_dim {head_dim} / n_rot {n_rot} for width {self.widths[x]}")
        if not 0 < attn_factor < float("inf"):
            raise ValueError(f"rope: attn_factor {attn_factor} (expected a positive finite number)")
        if freq_factors is not None and self.weight_shapes[freq_factors] != (1, n_rot // 2):
            raise ValueError(f"rope: {freq_factors} has shape {self.weight_shapes[freq_factors]}, "
                             f"expected {n_rot // 2} factors")
        weights = (freq_factors,) if freq_factors is not None else ()
        return self._new("rope", (x,), self.widths[x], weights, name, head_dim=head_dim, n_rot=n_rot,
                         base=float(base), neox=bool(neox), freq_scale=float(freq_scale),
                         attn_factor=float(attn_factor))

    def attention(self, q: str, k: str, v: str, layer: int, n_head: int, n_kv_head: int, head_dim: int,
                  scale: float, window: int = 0, softcap: float = 0.0, name: str | None = None) -> str:
        if self.widths[q] != n_head * head_dim or self.widths[k] != n_kv_head * head_dim \
                or self.widths[v] != n_kv_head * head_dim or n_head % n_kv_head:
            raise ValueError("attention: q/k/v widths do not match the head counts")
        if not 0 <= softcap < float("inf"):
            raise ValueError(f"attention: softcap {softcap} (0 for none, else a positive cap)")
        return self._new("attention", (q, k, v), n_head * head_dim, (), name, layer=int(layer), n_head=n_head,
                         n_kv_head=n_kv_head, head_dim=head_dim, scale=float(scale), window=int(window),
                         softcap=float(softcap))

    def glu(self, x: str, activation: str, name: str | None = None) -> str:
        if activation not in ACTIVATIONS or self.widths[x] % 2:
            raise ValueError(f"glu: activation {activation!r} / width {self.widths[x]}")
        return self._new("glu", (x,), self.widths[x] // 2, (), name, activation=activation)

    def gelu(self, x: str, name: str | None = None) -> str:
        return self._new("gelu", (x,), self.widths[x], (), name)

    def pos_embed(self, x: str, table: str, name: str | None = None) -> str:
        if self._cols(table) != self.widths[x]:
            raise ValueError(f"pos_embed: {table} has {self._cols(table)} columns, {x!r} {self.widths[x]}")
        return self._new("pos_embed", (x,), self.widths[x], (table,), name)

    def add(self, a: str, b: str, name: str | None = None) -> str:
        if self.widths[a] != self.widths[b]:
            raise ValueError(f"add: widths {self.widths[a]} != {self.widths[b]}")
        return self._new("add", (a, b), self.widths[a], (), name)

    def scale(self, x: str, factor: float, name: str | None = None) -> str:
        return self._new("scale", (x,), self.widths[x], (), name, factor=float(factor))

    def softcap(self, x: str, cap: float, name: str | None = None) -> str:
        if not 0 < cap < float("inf"):
            raise ValueError(f"softcap: cap {cap} must be a positive number")
        return self._new("softcap", (x,), self.widths[x], (), name, cap=float(cap))

    def last_row(self, x: str, name: str | None = None) -> str:
        return self._new("last_row", (x,), self.widths[x], (), name)

    def set_output(self, x: str) -> None:
        self.output = x

    def weights_used(self) -> set[str]:
        """Names of every tensor some op reads."""
        return {w for op in self.ops for w in op.weights}

    def kv_layers(self) -> dict[int, tuple[int, int]]:
        """layer -> (n_kv_head, head_dim) for every attention op: what the KV cache must hold."""
        return {op.param("layer"): (op.param("n_kv_head"), op.param("head_dim"))
                for op in self.ops if op.kind == "attention"}
