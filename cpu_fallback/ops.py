"""The numpy reference of every graph op (float32). GPU kernels are tested against these.

Shapes: activations are (n_rows, width) float32; see wgpu_llm/graph.py for what each op means.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_SQRT_2_OVER_PI = np.float32(0.7978845608028654)


def embed(table: np.ndarray, token_ids: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """table: (n_vocab, d) float32; token_ids: (n,) -> (n, d)."""
    out = table[token_ids]
    if scale != 1.0:
        out *= np.float32(scale)
    return out


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Normalise each group of len(weight) columns of x by its root mean square."""
    n, width = x.shape
    group = weight.shape[-1]
    xg = x.reshape(n, width // group, group)
    mean_sq = np.mean(xg * xg, axis=-1, keepdims=True, dtype=np.float32)
    return (xg / np.sqrt(mean_sq + np.float32(eps)) * weight.reshape(group)).reshape(n, width)


def linear(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x: (n, k), weight: (m, k) as stored in GGUF (one row per output) -> (n, m)."""
    return x @ weight.T


def rope_tables(positions: np.ndarray, n_rot: int, base: float, freq_scale: float = 1.0):
    """cos, sin of shape (n, n_rot/2) for the given positions."""
    inv_freq = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    angles = np.outer(positions.astype(np.float64) * freq_scale, inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope(x: np.ndarray, positions: np.ndarray, head_dim: int, n_rot: int, base: float, neox: bool,
         freq_scale: float = 1.0) -> np.ndarray:
    """Rotary embedding of each head of x (n, n_heads*head_dim) at the given positions (n,).

    neox: pairs (i, i + n_rot/2) rotate together (GPT-NeoX / Gemma layout); otherwise adjacent
    pairs (2i, 2i+1) (the original / llama.cpp "normal" layout). Columns past n_rot pass through.
    """
    n, width = x.shape
    cos, sin = rope_tables(positions, n_rot, base, freq_scale)
    xh = x.reshape(n, width // head_dim, head_dim)
    out = xh.copy()
    half = n_rot // 2
    if neox:
        a, b = xh[..., :half], xh[..., half:n_rot]
        out[..., :half] = a * cos[:, None] - b * sin[:, None]
        out[..., half:n_rot] = a * sin[:, None] + b * cos[:, None]
    else:
        a, b = xh[..., 0:n_rot:2], xh[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos[:, None] - b * sin[:, None]
        out[..., 1:n_rot:2] = a * sin[:, None] + b * cos[:, None]
    return out.reshape(n, width)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos0: int, n_head: int,
              n_kv_head: int, head_dim: int, scale: float, window: int = 0) -> np.ndarray:
    """Causal attention of q (n, n_head*head_dim), rows at positions pos0.., over the cache.

    k_cache, v_cache: (n_ctx_used, n_kv_head*head_dim) holding positions 0..pos0+n-1 (the step's
    own keys included). window > 0: a query at position p sees keys in (p - window, p].
    Returns (n, n_head*head_dim).
    """
    total = pos0 + q.shape[0]
    k_heads = k_cache[:total].reshape(total, n_kv_head, head_dim).transpose(1, 0, 2)
    v_heads = v_cache[:total].reshape(total, n_kv_head, head_dim).transpose(1, 0, 2)
    out = np.empty(q.shape, np.float32)
    attention_heads(q, k_heads, v_heads, pos0, n_head, scale, window, out)
    return out


ATTENTION_QUERY_BLOCK = 64  # queries per block of a long step (measured on 2 cores: 64 beat 128..512)


def attention_heads(q: np.ndarray, k_heads: np.ndarray, v_heads: np.ndarray, pos0: int, n_head: int,
                    scale: float, window: int, out: np.ndarray) -> None:
    """attention() over a cache already split by KV head, k_heads, v_heads (n_kv_head, total, head_dim),
    written into out (n, n_head*head_dim).

    A long step runs in blocks of queries, each over the keys it can see (up to its last query,
    from its first query's window on): half the work of the full causal square, and scores of
    (heads, block, keys) instead of (heads, n, keys) in memory.
    """
    n = q.shape[0]
    k_t = k_heads.transpose(0, 2, 1)  # (kv, head_dim, total)
    if n > 16:  # a contiguous copy makes the score products about 2x faster; worth it past decode
        k_t = np.ascontiguousarray(k_t)
    for b0 in range(0, n, ATTENTION_QUERY_BLOCK):
        b1 = min(n, b0 + ATTENTION_QUERY_BLOCK)
        lo = max(0, pos0 + b0 - window + 1) if window > 0 else 0  # keys before lo: outside every window
        hi = pos0 + b1
        # positions relative to key lo: the masks only compare query and key positions
        _attention_block(q[b0:b1], k_t[:, :, lo:hi], v_heads[:, lo:hi], pos0 + b0 - lo, n_head, scale, window,
                         out[b0:b1])


@cache
def _causal_mask(n: int) -> np.ndarray:
    """(n, n - 1) additive mask of the last n - 1 keys of a block of n queries ending at the last key:
    -inf where the key comes after the query (the first key of those is query 0's own)."""
    return np.triu(np.full((n, n - 1), -np.inf, np.float32))


def _attention_block(q: np.ndarray, k_t: np.ndarray, v_heads: np.ndarray, pos0: int, n_head: int,
                     scale: float, window: int, out: np.ndarray) -> None:
    """k_t: the keys transposed, (n_kv_head, head_dim, total). The query heads sharing a KV head
    are stacked into one matrix so every product is a plain batched GEMM over KV heads (numpy
    hands those to BLAS; broadcast batch dims it does not)."""
    n = q.shape[0]
    n_kv_head, head_dim, total = k_t.shape
    group = n_head // n_kv_head
    # scaled into a new array (never in place: q may be the caller's)
    qh = np.multiply(q.reshape(n, n_kv_head, group, head_dim).transpose(1, 2, 0, 3), np.float32(scale), order="C")
    qh = qh.reshape(n_kv_head, group * n, head_dim)  # rows: (query head in group, token)
    scores = np.matmul(qh, k_t)  # (kv, group*n, total)
    # -inf where a key is not visible: without a window, the keys after the first query (those
    # columns only); with one, keys before a query's window too (every column)
    per_query = scores.reshape(n_kv_head, group, n, total)
    if window > 0:
        qpos = pos0 + np.arange(n)[:, None]
        kpos = np.arange(total)[None, :]
        per_query += np.where((kpos > qpos) | (kpos <= qpos - window), np.float32(-np.inf), np.float32(0))
    elif n > 1:  # keys pos0 + 1 .. total - 1, total = pos0 + n; a single query sees every key
        per_query[..., pos0 + 1:] += _causal_mask(n)  # broadcast over heads
    # softmax numerators in place; each row normalised after the product with V (fewer divisions)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    sums = scores.sum(axis=-1, keepdims=True)
    heads = np.matmul(scores, v_heads)  # (kv, group*n, d)
    heads /= sums
    np.copyto(out.reshape(n, n_kv_head, group, head_dim), heads.reshape(n_kv_head, group, n, head_dim).transpose(2, 0, 1, 3))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(_SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)))


def glu(x: np.ndarray, activation: str) -> np.ndarray:
    """x = [gate | up] along columns -> act(gate) * up."""
    half = x.shape[1] // 2
    act = {"silu": silu, "gelu_tanh": gelu_tanh}[activation]
    return act(x[:, :half]) * x[:, half:]


def glu_into(x: np.ndarray, activation: str, out: np.ndarray) -> None:
    """glu(x, activation) written into out (rows, half), in place, with no temporaries."""
    half = x.shape[1] // 2
    g, u = x[:, :half], x[:, half:]
    if activation == "silu":  # g / (1 + exp(-g))
        np.negative(g, out=out)
        np.exp(out, out=out)
        out += np.float32(1.0)
        np.divide(g, out, out=out)
    elif activation == "gelu_tanh":  # 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3)))
        np.multiply(g, g, out=out)
        out *= np.float32(0.044715)
        out += np.float32(1.0)
        out *= g
        out *= _SQRT_2_OVER_PI
        np.tanh(out, out=out)
        out += np.float32(1.0)
        out *= g
        out *= np.float32(0.5)
    else:
        raise ValueError(f"unknown GLU activation {activation!r}")
    out *= u


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def argmax(logits: np.ndarray) -> np.ndarray:
    """Index of the largest value per row (lowest index on ties)."""
    return np.argmax(logits, axis=-1)
