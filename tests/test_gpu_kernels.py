"""Every WGSL kernel of ours vs its numpy twin in cpu_fallback/ops.py.

Fresh random inputs, odd sizes, outputs poisoned with NaN before each run (an element the kernel
forgets to write fails), NMSE = sum((gpu - ref)^2) / sum(ref^2) within 1e-7 for elementwise
kernels and 5e-4 for reductions / attention; NaN never passes. Skipped only without an adapter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cpu_fallback import ops
from wgpu_llm.gpu import kernels as K

ELTWISE_TOL = 1e-7
REDUCE_TOL = 5e-4
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cfg(rt):
    return K.choose_config(rt.caps)


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % (1 << 32))


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.all(np.isfinite(got)), f"{np.sum(~np.isfinite(got))} non-finite values"
    return float(np.sum((got.astype(np.float64) - ref) ** 2) / max(np.sum(ref.astype(np.float64) ** 2), 1e-30))


class Bufs:
    """Upload inputs, poison outputs, run kernels, read buffers back."""

    def __init__(self, rt):
        self.rt = rt
        self.shapes = {}

    def up(self, array: np.ndarray):
        buf = self.rt.upload(np.ascontiguousarray(array))
        self.shapes[id(buf)] = (array.shape, array.dtype)
        return buf

    def out(self, shape, dtype=np.float32):
        poison = np.full(shape, np.nan, np.float32) if dtype == np.float32 else np.full(shape, 0xDEADBEEF, np.uint32)
        return self.up(poison)

    def run(self, kernels, pos0=0, n_tokens=0, read=()):
        from wgpu_llm.gpu.runtime import Program

        outs = [(b, 0, int(np.prod(self.shapes[id(b)][0])) * 4) for b in read]
        prog = Program(self.rt, list(kernels), "test", outs)
        got = prog.run(pos0, n_tokens)
        return [g.view(self.shapes[id(b)][1]).reshape(self.shapes[id(b)][0]) for g, b in zip(got, read)]


def view(buf, offset=0, stride=None, width=None):
    return K.View(buf, offset, stride if stride is not None else width)


def rope_ref(x, pos0, head_dim, n_rot, base, neox, freq_scale=1.0):
    """ops.rope of x's rows at positions pos0, pos0 + 1, ..."""
    cos, sin = ops.rope_tables(np.arange(pos0, pos0 + x.shape[0]), n_rot, base, freq_scale)
    return ops.rope(x, cos, sin, head_dim, n_rot, neox)


# ---- rms_norm ----
@pytest.mark.parametrize("n,width,group", [(5, 300, 300), (3, 4 * 64, 64), (1, 2048, 2048), (2, 9 * 33, 33)])
def test_rms_norm(rt, cfg, rng, n, width, group):
    b = Bufs(rt)
    x = rng.standard_normal((n, width)).astype(np.float32) * 3
    w = rng.standard_normal(group).astype(np.float32)
    bx, bw, by = b.up(x), b.up(w), b.out((n, width))
    k = K.rms_norm(cfg, n, width, group, 1e-6, view(bx, width=width), bw, view(by, width=width))
    (got,) = b.run([k], read=[by])
    assert nmse(got, ops.rms_norm(x, w, 1e-6)) <= REDUCE_TOL / 100


def test_rms_norm_residual_in_place_and_strided(rt, cfg, rng):
    """y = res + norm(x) * w written over res; x read from a column slice of a wider buffer."""
    n, width, off = 4, 129, 7
    b = Bufs(rt)
    big = rng.standard_normal((n, width + 20)).astype(np.float32)
    res = rng.standard_normal((n, width)).astype(np.float32)
    w = rng.standard_normal(width).astype(np.float32)
    bbig, bw, bres = b.up(big), b.up(w), b.up(res)
    k = K.rms_norm(cfg, n, width, width, 1e-5, K.View(bbig, off, width + 20), bw, view(bres, width=width),
                   residual=view(bres, width=width))
    (got,) = b.run([k], read=[bres])
    ref = res + ops.rms_norm(np.ascontiguousarray(big[:, off:off + width]), w, 1e-5)
    assert nmse(got, ref) <= REDUCE_TOL / 100


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("in_place", [False, True])
def test_rms_norm_rope(rt, cfg, rng, neox, in_place):
    n, heads, hd, n_rot, pos0 = 3, 3, 64, 48, 37
    width = heads * hd
    b = Bufs(rt)
    x = rng.standard_normal((n, width)).astype(np.float32)
    w = rng.standard_normal(hd).astype(np.float32)
    bx, bw = b.up(x), b.up(w)
    by = bx if in_place else b.out((n, width))
    freqs = b.up(K.rope_freqs(n_rot, 10000.0, 0.5))
    k = K.rms_norm(cfg, n, width, hd, 1e-6, view(bx, width=width), bw, view(by, width=width),
                   rope={"n_rot": n_rot, "neox": neox}, rope_freqs=freqs)
    (got,) = b.run([k], pos0=pos0, n_tokens=n, read=[by])
    ref = rope_ref(ops.rms_norm(x, w, 1e-6), pos0, hd, n_rot, 10000.0, neox, 0.5)
    assert nmse(got, ref) <= REDUCE_TOL / 100


def test_rms_norm_two_weights_with_rope(rt, cfg, rng):
    """q and k heads side by side: heads before w_split use w[:hd], the others w[hd:]; in place."""
    n, q_heads, k_heads, hd, pos0 = 3, 4, 2, 32, 11
    width = (q_heads + k_heads) * hd
    b = Bufs(rt)
    x = rng.standard_normal((n, width + 16)).astype(np.float32)  # + v columns, untouched
    wq, wk = rng.standard_normal(hd).astype(np.float32), rng.standard_normal(hd).astype(np.float32)
    bx, bw = b.up(x), b.up(np.concatenate([wq, wk]))
    freqs = b.up(K.rope_freqs(hd, 10000.0, 1.0))
    k = K.rms_norm(cfg, n, width, hd, 1e-6, view(bx, stride=width + 16), bw, view(bx, stride=width + 16),
                   rope={"n_rot": hd, "neox": True}, rope_freqs=freqs, w_split=q_heads)
    (got,) = b.run([k], pos0=pos0, n_tokens=n, read=[bx])
    q_ref = rope_ref(ops.rms_norm(x[:, :q_heads * hd], wq, 1e-6), pos0, hd, hd, 10000.0, True)
    k_ref = rope_ref(ops.rms_norm(x[:, q_heads * hd:width], wk, 1e-6), pos0, hd, hd, 10000.0, True)
    assert nmse(got[:, :width], np.concatenate([q_ref, k_ref], axis=1)) <= REDUCE_TOL / 100
    assert np.array_equal(got[:, width:], x[:, width:])


@pytest.mark.parametrize("in_place", [True, False])
def test_rms_norm_then_next_norm(rt, cfg, rng, in_place):
    """y = res + norm(x) * w, then z = norm(y) * w2 in the same dispatch (Gemma's post-norm + pre-norm)."""
    n, width = 3, 640
    b = Bufs(rt)
    x = rng.standard_normal((n, width)).astype(np.float32)
    res = rng.standard_normal((n, width)).astype(np.float32) * 4
    w, w2 = rng.standard_normal(width).astype(np.float32), rng.standard_normal(width).astype(np.float32)
    bx, bw, bw2, bres, bz = b.up(x), b.up(w), b.up(w2), b.up(res), b.out((n, width))
    by = bres if in_place else b.out((n, width))
    k = K.rms_norm(cfg, n, width, width, 1e-6, view(bx, width=width), bw, view(by, width=width),
                   residual=view(bres, width=width), then=(bw2, 1e-5, view(bz, width=width)))
    got_y, got_z = b.run([k], read=[by, bz])
    y_ref = res + ops.rms_norm(x, w, 1e-6)
    assert nmse(got_y, y_ref) <= REDUCE_TOL / 100
    assert nmse(got_z, ops.rms_norm(y_ref, w2, 1e-5)) <= REDUCE_TOL / 100
    with pytest.raises(ValueError, match="second norm"):
        K.rms_norm(cfg, n, width, 64, 1e-6, view(bx, width=width), bw, view(by, width=width),
                   residual=view(bres, width=width), then=(bw2, 1e-5, view(bz, width=width)))


# ---- rope ----
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("hd,n_rot,pos0", [(64, 64, 0), (64, 32, 1000), (256, 256, 4093), (10, 6, 3)])
def test_rope(rt, cfg, rng, neox, hd, n_rot, pos0):
    n, heads = 5, 3
    width = heads * hd
    b = Bufs(rt)
    x = rng.standard_normal((n, width)).astype(np.float32)
    bx, by = b.up(x), b.out((n, width))
    freqs = b.up(K.rope_freqs(n_rot, 1e6 if hd == 256 else 10000.0))
    k = K.rope(cfg, n, width, hd, n_rot, neox, freqs, view(bx, width=width), view(by, width=width))
    (got,) = b.run([k], pos0=pos0, n_tokens=n, read=[by])
    ref = rope_ref(x, pos0, hd, n_rot, 1e6 if hd == 256 else 10000.0, neox)
    assert nmse(got, ref) <= ELTWISE_TOL


def test_rope_in_place_on_slice(rt, cfg, rng):
    """q and k roped in place inside a fused qkv buffer; the v columns stay untouched."""
    n, hd, nq, nkv = 3, 64, 9, 3
    width = (nq + 2 * nkv) * hd
    b = Bufs(rt)
    qkv = rng.standard_normal((n, width)).astype(np.float32)
    bqkv = b.up(qkv)
    freqs = b.up(K.rope_freqs(hd, 1e5))
    kq = K.rope(cfg, n, (nq + nkv) * hd, hd, hd, False, freqs, K.View(bqkv, 0, width), K.View(bqkv, 0, width))
    (got,) = b.run([kq], pos0=11, n_tokens=n, read=[bqkv])
    ref = qkv.copy()
    ref[:, :(nq + nkv) * hd] = rope_ref(qkv[:, :(nq + nkv) * hd], 11, hd, hd, 1e5, False)
    assert nmse(got, ref) <= ELTWISE_TOL
    assert np.array_equal(got[:, (nq + nkv) * hd:], qkv[:, (nq + nkv) * hd:])


# ---- attention ----
def run_attention(rt, rng, n, pos0, n_head, n_kv, hd, window, make_kernel, n_ctx, in_place=False, q_gain=1.0,
                  softcap=0.0):
    """Run an attention kernel on q | k | v side by side in one buffer, as the fused QKV projection
    leaves them, with the cache rows from pos0 on NaN (the kernel must write the step's rows before
    anyone could read them). make_kernel(scale, q, k, v, k_cache, v_cache, y) builds the kernel
    (or the list of a split kernel's dispatches);
    softcap: the reference's score soft-capping (the kernel's is make_kernel's).

    Returns the output buffer (all its columns) and both caches as read back, the numpy reference
    output, the caches as they should be, and the input qkv."""
    kvw = n_kv * hd
    b = Bufs(rt)
    qkv = rng.standard_normal((n, (n_head + 2 * n_kv) * hd)).astype(np.float32)
    qkv[:, :n_head * hd] *= q_gain
    stride = qkv.shape[1]
    kc = rng.standard_normal((n_ctx, kvw)).astype(np.float32)
    vc = rng.standard_normal((n_ctx, kvw)).astype(np.float32)
    kc[pos0:] = np.nan
    vc[pos0:] = np.nan
    bqkv, bkc, bvc = b.up(qkv), b.up(kc), b.up(vc)
    by = bqkv if in_place else b.out((n, n_head * hd))
    ystride = stride if in_place else n_head * hd
    scale = 1.0 / np.sqrt(hd)
    kernel = make_kernel(scale, K.View(bqkv, 0, stride), K.View(bqkv, n_head * hd, stride),
                         K.View(bqkv, n_head * hd + kvw, stride), bkc, bvc, K.View(by, 0, ystride))
    kernels = kernel if isinstance(kernel, list) else [kernel]  # a split kernel's passes
    got_y, got_kc, got_vc = b.run(kernels, pos0=pos0, n_tokens=n, read=[by, bkc, bvc])
    kc[pos0:pos0 + n] = qkv[:, n_head * hd:n_head * hd + kvw]
    vc[pos0:pos0 + n] = qkv[:, n_head * hd + kvw:]
    # the reference's cache: one (positions, head_dim) block per KV head, positions before pos0 filled
    k_heads, v_heads = (np.zeros((n_kv, n_ctx, hd), np.float32) for _ in range(2))
    k_heads[:, :pos0] = kc[:pos0].reshape(pos0, n_kv, hd).transpose(1, 0, 2)
    v_heads[:, :pos0] = vc[:pos0].reshape(pos0, n_kv, hd).transpose(1, 0, 2)
    ref = ops.attention(qkv[:, :n_head * hd], qkv[:, n_head * hd:n_head * hd + kvw], qkv[:, n_head * hd + kvw:],
                        k_heads, v_heads, pos0, n_head, scale, window, softcap)
    return got_y, got_kc, got_vc, ref, kc, vc, qkv


def _attention_case(rt, cfg, rng, n, pos0, n_head, n_kv, hd, window, n_ctx=None, in_place=False, softcap=0.0):
    def make_kernel(scale, *views):
        return K.attention(cfg, n, n_head, n_kv, hd, scale, window, *views, softcap=softcap)

    got_y, got_kc, got_vc, ref, kc, vc, _ = run_attention(rt, rng, n, pos0, n_head, n_kv, hd, window, make_kernel,
                                                          n_ctx or pos0 + n + 3, in_place, softcap=softcap)
    got = got_y[:, :n_head * hd]
    assert nmse(got, ref) <= REDUCE_TOL
    assert np.array_equal(got_kc[:pos0 + n], kc[:pos0 + n])
    assert np.array_equal(got_vc[:pos0 + n], vc[:pos0 + n])
    return nmse(got, ref)


@pytest.mark.parametrize("n,pos0,n_head,n_kv,hd,window", [
    (7, 0, 4, 1, 64, 0),  # prefill from the start, GQA 4:1
    (7, 5, 9, 3, 64, 0),  # prefill continuing a context, GQA 9:3
    (1, 300, 9, 3, 64, 0),  # decode
    (1, 300, 4, 1, 256, 0),  # decode, Gemma-sized heads
    (7, 40, 4, 1, 256, 16),  # prefill with a sliding window smaller than the context
    (1, 200, 4, 1, 64, 16),  # decode with a window
    (3, 2, 2, 2, 32, 100),  # window larger than the context
])
def test_attention(rt, cfg, rng, n, pos0, n_head, n_kv, hd, window):
    _attention_case(rt, cfg, rng, n, pos0, n_head, n_kv, hd, window)


def test_attention_softcap(rt, cfg, rng):
    """Gemma 2's soft-capped scores (cap 1.5 against scores of about N(0, 1): most are squashed),
    windowed and not; a cap that does not reach the kernel fails the comparison."""
    _attention_case(rt, cfg, rng, 3, 20, 4, 2, 64, 0, softcap=1.5)
    _attention_case(rt, cfg, rng, 1, 30, 8, 4, 256, 16, softcap=1.5)


def test_attention_in_place_output(rt, cfg, rng):
    _attention_case(rt, cfg, rng, 5, 9, 9, 3, 64, 0, in_place=True)


def test_attention_long_context(rt, cfg, rng):
    """A few thousand positions: the online softmax runs over many chunks."""
    _attention_case(rt, cfg, rng, 1, 3000, 4, 1, 64, 0, n_ctx=3072)
    _attention_case(rt, cfg, rng, 2, 2999, 4, 1, 64, 512, n_ctx=3072)


@pytest.mark.parametrize("normed,neox,hd,n_rot,n_head,n_kv,pos0,splits", [
    (True, True, 256, 256, 4, 1, 300, 1),  # Gemma 3: q / k head norms, neox rope
    (False, False, 64, 64, 9, 3, 40, 1),  # llama: rope only, adjacent pairs
    (True, False, 128, 64, 8, 2, 700, 4),  # partial rotary, split over the context
    (False, True, 64, 32, 4, 2, 0, 2),  # position 0
])
def test_attention_prepares_q_and_k(rt, cfg, rng, normed, neox, hd, n_rot, n_head, n_kv, pos0, splits):
    """A decode step's attention given the raw q and k (kernels.HeadPrep): the output and the cache
    of numpy's per-head rms norm and rope, then attention."""
    base, eps = 10000.0, 1e-6
    b = Bufs(rt)
    w = rng.standard_normal(2 * hd).astype(np.float32) if normed else None
    prep = K.HeadPrep(n_rot, neox, 1.0, b.up(K.rope_freqs(n_rot, base)), None if w is None else b.up(w), eps)

    def make_kernel(scale, *views):
        if splits == 1:
            return K.attention(cfg, 1, n_head, n_kv, hd, scale, 0, *views, prep=prep)
        part = rt.upload(np.full(K.split_part_floats(1, n_head, hd, splits), np.nan, np.float32))
        return K.attention_split(cfg, 1, n_head, n_kv, hd, scale, 0, *views, part, splits, prep=prep)

    n_ctx = pos0 + 4
    got_y, got_kc, got_vc, _, kc, vc, qkv = run_attention(rt, rng, 1, pos0, n_head, n_kv, hd, 0, make_kernel, n_ctx)
    q, k, v = np.split(qkv, [n_head * hd, (n_head + n_kv) * hd], axis=1)
    if normed:
        q, k = ops.rms_norm(q, w[:hd], eps), ops.rms_norm(k, w[hd:], eps)
    q, k = rope_ref(q, pos0, hd, n_rot, base, neox), rope_ref(k, pos0, hd, n_rot, base, neox)
    cache = [c[:pos0].reshape(pos0, n_kv, hd).transpose(1, 0, 2) for c in (kc, vc)]
    k_heads, v_heads = (np.concatenate([c, np.zeros((n_kv, n_ctx - pos0, hd), np.float32)], axis=1) for c in cache)
    ref = ops.attention(q, k, v, k_heads, v_heads, pos0, n_head, 1.0 / np.sqrt(hd))
    assert nmse(got_y[:, :n_head * hd], ref) <= REDUCE_TOL
    assert nmse(got_kc[pos0:pos0 + 1], k) <= ELTWISE_TOL, "the prepared key goes to the cache"
    assert np.array_equal(got_kc[:pos0], kc[:pos0]) and np.array_equal(got_vc[:pos0 + 1], vc[:pos0 + 1])
    with pytest.raises(ValueError, match="one row per sequence"):
        whole = K.View(b.up(qkv), 0, qkv.shape[1])
        K.attention(cfg, 2, n_head, n_kv, hd, 1.0, 0, whole, whole, whole, b.up(kc), b.up(vc), whole, prep=prep)


# ---- glu, add, scale, copy ----
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_glu(rt, cfg, rng, activation):
    n, half = 3, 333
    b = Bufs(rt)
    x = rng.standard_normal((n, 2 * half)).astype(np.float32) * 4
    x[0, :4] = [-200.0, 200.0, -90.0, 90.0]  # saturating arguments must not give NaN
    bx, by = b.up(x), b.out((n, half))
    k = K.glu(cfg, n, half, activation, view(bx, width=2 * half), view(by, width=half))
    (got,) = b.run([k], read=[by])
    with np.errstate(over="ignore"):
        ref = ops.glu(x, activation)
    assert nmse(got, ref) <= ELTWISE_TOL


def test_eltwise_add_scale_copy(rt, cfg, rng):
    n, width = 5, 777
    b = Bufs(rt)
    a = rng.standard_normal((n, width)).astype(np.float32)
    c = rng.standard_normal((n, width + 10)).astype(np.float32)
    ba, bc = b.up(a), b.up(c)
    b_add, b_scale, b_copy = b.out((n, width)), b.out((n, width)), b.out((n, 9))
    ks = [K.add(cfg, n, width, view(ba, width=width), K.View(bc, 3, width + 10), view(b_add, width=width)),
          K.scale(cfg, n, width, 0.37, view(ba, width=width), view(b_scale, width=width)),
          K.copy(cfg, n, 9, K.View(bc, 100, width + 10), view(b_copy, width=9))]
    got_add, got_scale, got_copy = b.run(ks, read=[b_add, b_scale, b_copy])
    assert nmse(got_add, a + c[:, 3:3 + width]) <= ELTWISE_TOL
    assert nmse(got_scale, a * np.float32(0.37)) <= ELTWISE_TOL
    assert np.array_equal(got_copy, c[:, 100:109])


def test_add_in_place_and_2d_grid(rt, cfg, rng):
    """Output over an input, with the grid folded into 2-D (max_per_dim forced small)."""
    small = dataclasses.replace(cfg, max_per_dim=8)
    n, width = 3, 5000  # 15000 elements / 256 per workgroup = 59 workgroups -> an 8 x 8 grid
    b = Bufs(rt)
    a = rng.standard_normal((n, width)).astype(np.float32)
    c = rng.standard_normal((n, width)).astype(np.float32)
    ba, bc = b.up(a), b.up(c)
    k = K.add(small, n, width, view(ba, width=width), view(bc, width=width), view(ba, width=width))
    assert k.grid[1] > 1
    (got,) = b.run([k], read=[ba])
    assert nmse(got, a + c) <= ELTWISE_TOL


def test_fold_grid():
    assert K.fold_grid(10) == (10, 1, 1)
    x, y, z = K.fold_grid(262144 * 7)
    assert x <= 65535 and y <= 65535 and x * y >= 262144 * 7 and z == 1


# ---- argmax ----
def test_argmax(rt, cfg, rng):
    n, width = 4, 50001
    b = Bufs(rt)
    x = rng.standard_normal((n, width)).astype(np.float32)
    x[1, 17] = x[1, 40000] = 50.0  # tie: the lower index wins
    x[2, -1] = 60.0
    x[3, 0] = 70.0
    bx, bout = b.up(x), b.out((n,), np.uint32)
    k = K.argmax(cfg, n, width, view(bx, width=width), bout)
    (got,) = b.run([k], read=[bout])
    assert got.tolist() == np.argmax(x, axis=-1).tolist()  # numpy: the lowest index on ties


# ---- errors ----
def test_shader_error_names_the_kernel(rt):
    from wgpu_llm.gpu.runtime import GpuError

    with pytest.raises(GpuError, match="my_broken_kernel"):
        rt.pipeline("@compute @workgroup_size(1) fn main() { let x: u32 = 1.0; }", "main", "my_broken_kernel")


def test_binding_error_names_the_kernel(rt, cfg):
    """A kernel whose buffer is not a storage buffer fails at compile, naming the kernel."""
    from wgpu_llm.gpu.runtime import GpuError, Program

    u = rt.wgpu.BufferUsage
    not_storage = rt.buffer(64, u.UNIFORM | u.COPY_DST, "not storage")
    good = rt.storage(64)
    k = K.copy(cfg, 1, 4, K.View(good, 0, 4), K.View(not_storage, 0, 4), label="copy_into_uniform")
    with pytest.raises(GpuError, match="copy_into_uniform"):
        Program(rt, [k], "bad program")


@pytest.mark.parametrize("native", [True, False], ids=["native", "wrapped"])
def test_recording_error_names_the_program(rt, cfg, native):
    """A dispatch the device refuses (more workgroups than a grid dimension holds) fails the run
    naming the program, whether the pass is recorded by wgpu-native's functions directly or
    through wgpu-py's wrappers; the runtime works on afterwards."""
    from wgpu_llm.gpu.runtime import GpuError, Program

    x, y = rt.upload(np.arange(4, dtype=np.float32), "x"), rt.storage(16, "y")
    k = K.copy(cfg, 1, 4, K.View(x, 0, 4), K.View(y, 0, 4), label="copy")
    bad = Program(rt, [dataclasses.replace(k, grid=(rt.caps.max_per_dim + 1, 1, 1))], "too wide", [(y, 0, 16)])
    good = Program(rt, [k], "fine", [(y, 0, 16)])
    if native:
        assert bad._native is not None, "wgpu-native's recording functions were not found"
    else:
        bad._native = good._native = None
    with pytest.raises(GpuError, match="^running too wide: "):
        bad.run()
    (out,) = good.run()
    assert out.view(np.float32).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_logged_errors_are_raised(rt):
    """Errors wgpu only logs (device lost, errors found while the queue runs) surface at the next check."""
    import logging

    from wgpu_llm.gpu.runtime import GpuError

    rt.check("before")
    logging.getLogger("wgpu").error("simulated: the device was lost")
    with pytest.raises(GpuError, match="device was lost"):
        rt.check("after a step")
    rt.check("the error was reported once")
