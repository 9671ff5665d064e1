"""Split-KV decode attention (flash-decoding: kernels.attention_split, shaders/attention.wgsl with
SPLIT and shaders/attention_merge.wgsl) against the numpy reference cpu_fallback.ops.attention.

The same harness as the one-workgroup kernel's tests (test_gpu_kernels.run_attention: the cache
rows of the step's positions start as NaN, the output is poisoned with NaN) with the partial
results' buffer poisoned too. Position 0 (one key: every split but the first is empty), visible
lengths on both sides of the split boundaries, more splits than keys, GQA, windows, soft-capping,
head sizes 64 / 128 / 256, chunks of several rows, the output over q, and a batched step whose
rows sit at different positions of different sequences of one cache.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gpu_kernels import REDUCE_TOL, Bufs, _attention_case, cfg, nmse, run_attention  # noqa: F401  (cfg: a fixture)

from cpu_fallback import ops
from wgpu_llm.gpu import kernels as K

pytestmark = pytest.mark.gpu


def run_split_case(rt, cfg, n, pos0, n_head, n_kv, hd, window, splits, softcap=0.0, in_place=False, seed=0,
                   n_ctx=None) -> float:
    rng = np.random.default_rng(seed)

    def make_kernel(scale, *views):
        part = rt.upload(np.full(K.split_part_floats(n, n_head, hd, splits), np.nan, np.float32))
        return K.attention_split(cfg, n, n_head, n_kv, hd, scale, window, *views, part, splits, softcap=softcap)

    # peaked softmaxes (q x 2): a split merged with the wrong weight shows
    got_y, got_kc, got_vc, ref, kc, vc, qkv = run_attention(rt, rng, n, pos0, n_head, n_kv, hd, window, make_kernel,
                                                            n_ctx or pos0 + n + 5, in_place, q_gain=2.0,
                                                            softcap=softcap)
    error = nmse(got_y[:, :n_head * hd], ref)
    assert error <= REDUCE_TOL, f"n={n} pos0={pos0} heads {n_head}/{n_kv} hd={hd} window={window} " \
                                f"splits={splits}: NMSE {error:.3g}"
    assert np.array_equal(got_kc[:pos0 + n], kc[:pos0 + n]) and np.array_equal(got_vc[:pos0 + n], vc[:pos0 + n])
    assert np.isnan(got_kc[pos0 + n:]).all() and np.isnan(got_vc[pos0 + n:]).all(), "wrote past the step"
    if in_place:  # k and v columns are inputs of other workgroups: untouched
        assert np.array_equal(got_y[:, n_head * hd:], qkv[:, n_head * hd:])
    return error


def check_attention_variant(rt, cfg, variant: K.AttentionVariant, seed: int = 7) -> None:
    """Run a decode-attention variant (tests/test_gpu_variants.py): the one-workgroup kernel, or the
    split kernel with the variant's split count, 2 and MAX_SPLITS; a decode row and a windowed chunk."""
    if variant.splits == 1:
        rng = np.random.default_rng(seed)
        _attention_case(rt, cfg, rng, 1, 300, 9, 3, 64, 0)
        _attention_case(rt, cfg, rng, 7, 40, 4, 1, 256, 16)
        return
    for splits in sorted({variant.splits, 2, K.MAX_SPLITS}):
        run_split_case(rt, cfg, 1, 700, 4, 1, 256, 0, splits, seed=seed)
        run_split_case(rt, cfg, 7, 40, 9, 3, 64, 16, splits, seed=seed + 1)


@pytest.mark.parametrize("n,pos0,n_head,n_kv,hd,window,splits", [
    (1, 0, 4, 1, 64, 0, 4),  # position 0: one key, three empty splits
    (1, 0, 4, 1, 256, 0, 32),  # the most splits, Gemma-sized heads
    (1, 300, 9, 3, 64, 0, 4),  # GQA 9:3, 76 keys per split
    (1, 255, 4, 1, 128, 0, 4),  # 256 keys: 64 per split, every split full
    (1, 256, 4, 1, 128, 0, 4),  # 257 keys: 65 per split, the last one short
    (1, 127, 4, 2, 64, 0, 4),  # 128 keys: two splits of 64 (at least attn_wg each), two empty
    (1, 128, 4, 2, 64, 0, 4),  # 129 keys: the third split holds one key
    (1, 200, 4, 1, 64, 16, 4),  # window 16: one split, starting inside the cache
    (1, 2999, 4, 1, 256, 512, 2),  # window 512 at a long context: two splits of 256
    (1, 3000, 8, 1, 64, 0, 12),  # a long context over many splits
    (7, 40, 4, 1, 256, 16, 3),  # a chunk of 7 rows, windowed: keys from the cache and the step
    (5, 60, 9, 3, 64, 0, 2),  # a chunk whose rows cross the split boundary at 32 + 1 keys... and 64
])
def test_split_attention(rt, cfg, n, pos0, n_head, n_kv, hd, window, splits):
    run_split_case(rt, cfg, n, pos0, n_head, n_kv, hd, window, splits, n_ctx=max(pos0 + n + 5, 3072 if pos0 > 2000
                                                                                   else 0))


def test_split_attention_softcap_and_in_place(rt, cfg):
    """Gemma 2's soft-capped scores, windowed and not; the output written over q."""
    run_split_case(rt, cfg, 1, 700, 4, 1, 256, 0, 3, softcap=3.0, seed=1)
    run_split_case(rt, cfg, 1, 700, 8, 4, 128, 300, 4, softcap=3.0, seed=2)
    run_split_case(rt, cfg, 5, 90, 9, 3, 64, 0, 3, in_place=True, seed=3)


def test_split_attention_matches_one_workgroup(rt, cfg):
    """One split is the one-workgroup kernel's computation: the same numbers to rounding."""
    run_split_case(rt, cfg, 1, 500, 4, 1, 64, 0, 1, seed=4)
    run_split_case(rt, cfg, 3, 10, 2, 2, 32, 0, 1, seed=5)


def test_split_attention_batched_rows(rt, cfg):
    """A batched decode step: row r is one sequence's only row, at position pos[r] of that sequence,
    whose cache starts at row base[r] of the shared cache; positions on both sides of the split
    boundaries and 0. The step's own k, v go to each sequence's cache row base + pos."""
    from wgpu_llm.gpu.runtime import Program

    rng = np.random.default_rng(6)
    n_head, n_kv, hd, splits, window = 4, 2, 64, 4, 0
    positions = [0, 63, 64, 255, 256, 700]
    slot = 1024  # cache rows per sequence
    kvw = n_kv * hd
    n = len(positions)
    b = Bufs(rt)
    qkv = (rng.standard_normal((n, (n_head + 2 * kvw // hd) * hd)) * np.repeat([2.0, 1.0, 1.0],
           [n_head * hd, kvw, kvw])).astype(np.float32)
    stride = qkv.shape[1]
    kc = rng.standard_normal((n * slot, kvw)).astype(np.float32)
    vc = rng.standard_normal((n * slot, kvw)).astype(np.float32)
    bqkv, bkc, bvc, by = b.up(qkv), b.up(kc), b.up(vc), b.out((n, n_head * hd))
    part = b.out((K.split_part_floats(n, n_head, hd, splits),))
    kernels = K.attention_split(cfg, n, n_head, n_kv, hd, 1 / np.sqrt(hd), window, K.View(bqkv, 0, stride),
                                K.View(bqkv, n_head * hd, stride), K.View(bqkv, n_head * hd + kvw, stride), bkc, bvc,
                                K.View(by, 0, n_head * hd), part, splits)
    outs = [(buf, 0, 4 * int(np.prod(b.shapes[id(buf)][0]))) for buf in (by, bkc, bvc)]
    rows = np.array([(pos, r * slot) for r, pos in enumerate(positions)], np.uint32)
    got_y, got_kc, got_vc = (g.view(np.float32).reshape(b.shapes[id(buf)][0])
                             for g, buf in zip(Program(rt, kernels, "test", outs).run(0, n, rows=rows),
                                               (by, bkc, bvc)))
    for r, pos in enumerate(positions):
        own = kc[r * slot:r * slot + pos].reshape(pos, n_kv, hd).transpose(1, 0, 2)
        k_heads, v_heads = (np.zeros((n_kv, pos + 1, hd), np.float32) for _ in range(2))
        k_heads[:, :pos] = own
        v_heads[:, :pos] = vc[r * slot:r * slot + pos].reshape(pos, n_kv, hd).transpose(1, 0, 2)
        q, k, v = qkv[r:r + 1, :n_head * hd], qkv[r:r + 1, n_head * hd:n_head * hd + kvw], qkv[r:r + 1, -kvw:]
        ref = ops.attention(q, k, v, k_heads, v_heads, pos, n_head, 1 / np.sqrt(hd), window)
        assert nmse(got_y[r:r + 1], ref) <= REDUCE_TOL, f"row {r} at position {pos}"
        assert np.array_equal(got_kc[r * slot + pos], k[0]) and np.array_equal(got_vc[r * slot + pos], v[0])
    untouched = np.ones(n * slot, bool)
    untouched[[r * slot + pos for r, pos in enumerate(positions)]] = False
    assert np.array_equal(got_kc[untouched], kc[untouched]) and np.array_equal(got_vc[untouched], vc[untouched])


def test_attention_variant_rule():
    """The rule: a GPU splits contexts longer than SPLIT_KEYS (or a shorter window) into one split
    per SPLIT_KEYS keys, at most MAX_SPLITS; a software adapter never splits."""
    gpu, software = K.KernelConfig(attn_split=True), K.KernelConfig(attn_split=False)
    assert K.attention_variant(gpu, 256, 0).splits == 1
    assert K.attention_variant(gpu, 257, 0).splits == 2
    assert K.attention_variant(gpu, 2048, 0).splits == 2048 // K.SPLIT_KEYS
    assert K.attention_variant(gpu, 2048, 512).splits == 512 // K.SPLIT_KEYS
    assert K.attention_variant(gpu, 1 << 20, 0).splits == K.MAX_SPLITS
    assert K.attention_variant(software, 1 << 20, 0).splits == 1
    assert K.attention_variant(gpu, 300, 0).key == "split-kv"
    assert K.attention_variant(software, 300, 0).key == "one-workgroup"
    with pytest.raises(ValueError, match="n_ctx"):
        K.attention_variant(gpu, 0, 0)
    with pytest.raises(ValueError, match="splits"):
        K.attention_split(gpu, 1, 4, 1, 64, 1.0, 0, *[K.View(None, 0, 1)] * 3, None, None, K.View(None, 0, 1),
                          None, 0)
