"""The numpy reference of every graph op (float32): the very functions the numpy backend runs,
so the GPU kernels are tested against the code that computes the CPU path's results.

Shapes: activations are (n_rows, width) float32; see wgpu_llm/graph.py for what each op means.
Every op takes `out=`, a preallocated float32 (n_rows, width) array it writes (the backend's step
buffers), and returns it; without one it allocates. `out` must not overlap the op's inputs.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_SQRT_2_OVER_PI = np.float32(0.7978845608028654)


def _out(out: np.ndarray | None, rows: int, width: int) -> np.ndarray:
    return np.empty((rows, width), np.float32) if out is None else out


def embed(table: np.ndarray, token_ids: np.ndarray, scale: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """table: (n_vocab, d) float32 or float16; token_ids: (n,) -> rows of table times scale, (n, d)."""
    out = _out(out, len(token_ids), table.shape[1])
    if table.dtype == out.dtype:
        np.take(table, token_ids, axis=0, out=out)
    else:  # a float16 table
        out[...] = table[token_ids]
    if scale != 1.0:
        np.multiply(out, np.float32(scale), out=out)
    return out


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """Normalise each group of len(weight) columns of x by its root mean square, times weight."""
    n, width = x.shape
    weight = weight.reshape(-1)
    group = weight.shape[0]
    out = _out(out, n, width)
    xg, og = x.reshape(n, -1, group), out.reshape(n, -1, group)
    mean_sq = np.einsum("rgi,rgi->rg", xg, xg)[..., None]  # sums of squares; x may be a strided view
    mean_sq *= np.float32(1.0 / group)
    mean_sq += np.float32(eps)
    np.sqrt(mean_sq, out=mean_sq)
    np.divide(xg, mean_sq, out=og)
    np.multiply(og, weight, out=og)
    return out


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
               out: np.ndarray | None = None) -> np.ndarray:
    """Each group of len(weight) columns of x minus its mean, over its standard deviation, times
    weight plus bias (the variance of the centred values, as ggml_norm)."""
    n, width = x.shape
    weight, bias = weight.reshape(-1), bias.reshape(-1)
    group = weight.shape[0]
    out = _out(out, n, width)
    xg, og = x.reshape(n, -1, group), out.reshape(n, -1, group)
    mean = xg.sum(axis=-1, keepdims=True, dtype=np.float32)
    mean *= np.float32(1.0 / group)
    np.subtract(xg, mean, out=og)
    var = np.einsum("rgi,rgi->rg", og, og)[..., None]
    var *= np.float32(1.0 / group)
    var += np.float32(eps)
    np.sqrt(var, out=var)
    og /= var
    og *= weight
    og += bias
    return out


def linear(x: np.ndarray, weight: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x: (n, k), weight: (m, k) as stored in GGUF (one row per output) -> x @ weight.T, (n, m).
    A float16 weight is converted to float32 in blocks of rows, so the product accumulates in
    float32 and the converted copy never exceeds F16_BLOCK_BYTES."""
    out = _out(out, x.shape[0], weight.shape[0])
    if weight.dtype == np.float32:
        if 1 < x.shape[0] <= THIN_ROWS and weight.nbytes > THIN_MIN_BYTES:
            return _thin_linear(x, weight, out)
        return np.matmul(x, weight.T, out=out)
    rows = max(1, F16_BLOCK_BYTES // (4 * weight.shape[1]))
    for start in range(0, weight.shape[0], rows):
        block = weight[start:start + rows].astype(np.float32)
        np.matmul(x, block.T, out=out[:, start:start + rows])
    return out


F16_BLOCK_BYTES = 1 << 21  # float32 rows converted at once from a float16 weight: about L2-sized

# A product with a few rows (a batched decode step: one row per sequence) and a weight larger than
# a core's cache. OpenBLAS's sgemm packs the whole weight for it and runs 3-4x below memory
# bandwidth (Gemma 3's 262144 x 640 head: 35 ms for 1 row, 130-140 ms for 2-8 rows). In row blocks
# that stay in cache, one BLAS thread each, and one Python thread per core (BLAS calls release the
# GIL), the weight is read once at about the bandwidth of one row: 40-70 ms for 2-8 rows.
THIN_ROWS = 16
THIN_MIN_BYTES = 1 << 21
THIN_BLOCK_ELEMENTS = 1 << 19  # rows x columns x weight rows of one block product: OpenBLAS's
# small-matrix kernels take products up to about 10^6 of them; the best of 2^16..2^21 at 2, 4, 8 rows


def _thin_linear(x: np.ndarray, weight: np.ndarray, out: np.ndarray) -> np.ndarray:
    pool, workers, blas = _thin_workers()
    block = max(16, THIN_BLOCK_ELEMENTS // (x.shape[0] * x.shape[1]))
    starts = range(0, weight.shape[0], block)
    share = -(-len(starts) // workers)

    def part(first: int) -> None:
        for start in starts[first:first + share]:
            np.matmul(x, weight[start:start + block].T, out=out[:, start:start + block])

    with blas.limit(limits=1):
        for f in [pool.submit(part, first) for first in range(0, len(starts), share)]:
            f.result()
    return out


@cache
def _thin_workers():
    """(a pool of one thread per BLAS thread, its size, the BLAS libraries' controller): made once."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    threads = max([lib["num_threads"] for lib in blas.info()] + [1])
    return ThreadPoolExecutor(threads, thread_name_prefix="wgpu-llm-linear"), threads, blas


def rope_tables(positions: np.ndarray, n_rot: int, base: float, freq_scale: float = 1.0,
                factors: np.ndarray | None = None, attn_factor: float = 1.0):
    """cos, sin of shape (n, n_rot/2) for the given positions (angles in float64, then float32);
    factors: (n_rot/2,) divisors of each pair's frequency (Llama 3.1's rope_freqs), or None;
    attn_factor: multiplies both tables, so the rotated dimensions come out scaled by it."""
    inv_freq = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if factors is not None:
        inv_freq = inv_freq / np.asarray(factors, np.float64).reshape(-1)
    angles = np.outer(positions.astype(np.float64) * freq_scale, inv_freq)
    return (attn_factor * np.cos(angles)).astype(np.float32), (attn_factor * np.sin(angles)).astype(np.float32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, head_dim: int, n_rot: int, neox: bool,
         out: np.ndarray | None = None) -> np.ndarray:
    """Rotary embedding of each head of x (n, n_heads*head_dim); cos, sin: (n, n_rot/2), the rows of
    rope_tables for the rows' positions.

    neox: pairs (i, i + n_rot/2) rotate together (GPT-NeoX / Gemma layout); otherwise adjacent
    pairs (2i, 2i+1) (the original / llama.cpp "normal" layout). Columns past n_rot pass through.
    """
    n, width = x.shape
    out = _out(out, n, width)
    xh, oh = x.reshape(n, -1, head_dim), out.reshape(n, -1, head_dim)
    half = n_rot // 2
    if neox:
        a, b, oa, ob = xh[..., :half], xh[..., half:n_rot], oh[..., :half], oh[..., half:n_rot]
    else:
        a, b, oa, ob = xh[..., 0:n_rot:2], xh[..., 1:n_rot:2], oh[..., 0:n_rot:2], oh[..., 1:n_rot:2]
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    tmp = np.empty(oa.shape, np.float32)
    np.multiply(a, cos, out=oa)  # a cos - b sin
    np.multiply(b, sin, out=tmp)
    np.subtract(oa, tmp, out=oa)
    np.multiply(a, sin, out=ob)  # a sin + b cos
    np.multiply(b, cos, out=tmp)
    np.add(ob, tmp, out=ob)
    if n_rot < head_dim:
        oh[..., n_rot:] = xh[..., n_rot:]
    return out


ATTENTION_QUERY_BLOCK = 64  # queries per block of a long step (measured on 2 cores: 64 beat 128..512)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos0: int,
              n_head: int, scale: float, window: int = 0, softcap: float = 0.0,
              out: np.ndarray | None = None) -> np.ndarray:
    """Store k, v (n, n_kv_head*head_dim) at positions pos0..pos0+n-1 of the KV cache, then causal
    attention of q (n, n_head*head_dim), row r at position pos0 + r, over the cache.

    k_cache, v_cache: (n_kv_head, n_ctx, head_dim), one (positions, head_dim) block per KV head
    (GEMM-friendly), positions 0..pos0-1 already filled; float32, or float16 (an f16 cache: k and v
    are rounded to nearest even as they are stored, the keys and values read back as float32, so
    the step's own rows count as stored, like a later step's view of them). GQA: query head h reads KV head
    h // (n_head / n_kv_head). window > 0: a query at position p sees keys in (p - window, p].
    softcap > 0: each scaled score s becomes softcap * tanh(s / softcap) before the mask and softmax.
    Returns (n, n_head*head_dim).

    A long step runs in blocks of queries, each over the keys it can see (up to its last query,
    from its first query's window on): half the work of the full causal square, and scores of
    (heads, block, keys) instead of (heads, n, keys) in memory.
    """
    n = q.shape[0]
    n_kv_head, _, head_dim = k_cache.shape
    total = pos0 + n
    k_cache[:, pos0:total] = k.reshape(n, n_kv_head, head_dim).transpose(1, 0, 2)
    v_cache[:, pos0:total] = v.reshape(n, n_kv_head, head_dim).transpose(1, 0, 2)
    out = _out(out, n, q.shape[1])
    first = max(0, pos0 - window + 1) if window > 0 else 0  # keys before it: outside every window
    k_t = k_cache[:, first:total].transpose(0, 2, 1)  # (kv, head_dim, keys first .. total - 1)
    if n > 16:  # a contiguous copy makes the score products about 2x faster; worth it past decode
        k_t = np.ascontiguousarray(k_t, dtype=np.float32)
    else:
        k_t = k_t.astype(np.float32, copy=False)  # a view of a float32 cache, a copy of a float16 one
    for b0 in range(0, n, ATTENTION_QUERY_BLOCK):
        b1 = min(n, b0 + ATTENTION_QUERY_BLOCK)
        lo = max(0, pos0 + b0 - window + 1) if window > 0 else 0  # keys before lo: outside every window
        hi = pos0 + b1
        # positions relative to key lo: the masks only compare query and key positions
        _attention_block(q[b0:b1], k_t[:, :, lo - first:hi - first], v_cache[:, lo:hi].astype(np.float32, copy=False),
                         pos0 + b0 - lo, n_head, scale, window, softcap, out[b0:b1])
    return out



@cache
def _causal_mask(n: int) -> np.ndarray:
    """(n, n - 1) additive mask of the last n - 1 keys of a block of n queries ending at the last key:
    -inf where the key comes after the query (the first key of those is query 0's own)."""
    return np.triu(np.full((n, n - 1), -np.inf, np.float32))


def _attention_block(q: np.ndarray, k_t: np.ndarray, v_heads: np.ndarray, pos0: int, n_head: int,
                     scale: float, window: int, cap: float, out: np.ndarray) -> None:
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
    if cap > 0:
        softcap(scores, cap, scores)
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


def glu(x: np.ndarray, activation: str, out: np.ndarray | None = None) -> np.ndarray:
    """x = [gate | up] along columns -> act(gate) * up, (rows, half), in place with no temporaries."""
    half = x.shape[1] // 2
    out = _out(out, x.shape[0], half)
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
    return out


def softcap(x: np.ndarray, cap: float, out: np.ndarray | None = None) -> np.ndarray:
    """cap * tanh(x / cap): values squashed into (-cap, cap), nearly x where |x| << cap (any shape)."""
    out = np.empty_like(x) if out is None else out
    np.multiply(x, np.float32(1.0 / cap), out=out)
    np.tanh(out, out=out)
    out *= np.float32(cap)
    return out


def gelu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) on every element."""
    out = _out(out, *x.shape)
    np.multiply(x, x, out=out)
    out *= np.float32(0.044715)
    out += np.float32(1.0)
    out *= x
    out *= _SQRT_2_OVER_PI
    np.tanh(out, out=out)
    out += np.float32(1.0)
    out *= x
    out *= np.float32(0.5)
    return out


def pos_embed(x: np.ndarray, table: np.ndarray, pos0: int, out: np.ndarray | None = None) -> np.ndarray:
    """x plus rows pos0 .. pos0 + n - 1 of table (learned position embeddings)."""
    n = x.shape[0]
    if pos0 + n > table.shape[0]:
        raise ValueError(f"positions {pos0}..{pos0 + n - 1} exceed the position table's {table.shape[0]} rows")
    return np.add(x, table[pos0:pos0 + n], out=_out(out, *x.shape))


def add(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.add(a, b, out=_out(out, *a.shape))


def scale(x: np.ndarray, factor: float, out: np.ndarray | None = None) -> np.ndarray:
    return np.multiply(x, np.float32(factor), out=_out(out, *x.shape))
