"""Flash-attention style prefill attention (wgpu_llm/gpu/attention.py, shaders/flash_attention.wgsl)
against the numpy reference cpu_fallback.ops.attention.

Queries, keys and values side by side in one buffer as the fused QKV projection leaves them; the
cache rows of the step's positions start as NaN (the kernel must store the step's k, v there and
read the step's own keys from the inputs), rows past the step must stay untouched, the output is
poisoned with NaN. NMSE <= 5e-4 (in practice ~1e-13). Chunks of 7 / 33 / 70 queries from position 0
and from later positions, GQA 4:1 and 9:3, a sliding window, head sizes 64 and 256 (Gemma), the
output written in place over q, and several tile shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gpu_kernels import cfg, nmse, run_attention  # noqa: F401  (cfg is a fixture)

from wgpu_llm.gpu import attention as A

TOL = 5e-4
pytestmark = pytest.mark.gpu


def run_case(rt, cfg, n, pos0, n_head, n_kv, hd, window, tiles=None, in_place=False, seed=0, softcap=0.0) -> float:
    rng = np.random.default_rng(seed)
    tiles = tiles or A.choose_flash_tiles(rt.caps, hd)

    def make_kernel(scale, *views):
        return A.flash_attention(cfg, n, n_head, n_kv, hd, scale, window, *views, tiles=tiles, softcap=softcap)

    # peaked softmaxes (q x 2), where a wrong running max shows
    got_y, got_kc, got_vc, ref, kc, vc, qkv = run_attention(rt, rng, n, pos0, n_head, n_kv, hd, window, make_kernel,
                                                            pos0 + n + 5, in_place, q_gain=2.0, softcap=softcap)
    error = nmse(got_y[:, :n_head * hd], ref)
    assert error <= TOL, f"n={n} pos0={pos0} heads {n_head}/{n_kv} hd={hd} window={window} {tiles}: NMSE {error:.3g}"
    assert np.array_equal(got_kc[:pos0 + n], kc[:pos0 + n]) and np.array_equal(got_vc[:pos0 + n], vc[:pos0 + n])
    assert np.isnan(got_kc[pos0 + n:]).all() and np.isnan(got_vc[pos0 + n:]).all(), "wrote past the step"
    if in_place:  # k and v columns are inputs of other workgroups: untouched
        assert np.array_equal(got_y[:, n_head * hd:], qkv[:, n_head * hd:])
    return error


@pytest.mark.parametrize("n,pos0,n_head,n_kv,hd,window", [
    (7, 0, 4, 1, 64, 0),  # a short chunk from the start, GQA 4:1
    (33, 0, 9, 3, 64, 0),  # GQA 9:3: query blocks cut through a row's heads
    (70, 0, 4, 1, 256, 0),  # Gemma-sized heads, several key tiles
    (33, 37, 9, 3, 64, 0),  # a chunk continuing a context: keys from the cache and the step
    (70, 100, 4, 1, 256, 16),  # window 16: most key tiles invisible, a window inside a chunk
    (7, 29, 9, 3, 256, 16),  # window reaching back into the cache
    (70, 3, 9, 3, 64, 600),  # window larger than the context
])
def test_flash_attention(rt, cfg, n, pos0, n_head, n_kv, hd, window):
    run_case(rt, cfg, n, pos0, n_head, n_kv, hd, window)


@pytest.mark.parametrize("tiles", [
    A.FlashTiles(),  # the hardware default
    A.FlashTiles(16, 16, 32, 2, 4, 32),  # smaller key tiles, two score chunks for 64 dims
    A.FlashTiles(8, 16, 16, 2, 4, 16),
    A.SOFTWARE_TILES,  # fewer threads than query slots
], ids=lambda t: f"bq{t.bq}-bkv{t.bkv}-wg{t.wg}")
def test_flash_attention_tiles(rt, cfg, tiles):
    run_case(rt, cfg, 33, 20, 4, 1, 256, 0, tiles=tiles, seed=1)
    run_case(rt, cfg, 70, 0, 9, 3, 64, 16, tiles=tiles, seed=2)


def test_flash_attention_softcap(rt, cfg):
    """Gemma 2's soft-capped scores (cap 3 against the peaked scores of q x 2), over several key
    tiles, windowed and not, with the software tiles and the default ones."""
    run_case(rt, cfg, 70, 0, 4, 1, 256, 0, seed=6, softcap=3.0)
    run_case(rt, cfg, 33, 37, 9, 3, 64, 16, seed=7, softcap=3.0)
    run_case(rt, cfg, 33, 20, 4, 1, 64, 0, tiles=A.FlashTiles(), seed=8, softcap=3.0)


def test_flash_attention_in_place_and_odd_heads(rt, cfg):
    run_case(rt, cfg, 33, 9, 9, 3, 64, 0, in_place=True, seed=3)
    run_case(rt, cfg, 9, 4, 2, 2, 32, 0, seed=4)  # no GQA, 32-dim heads (the tiny test models)
    run_case(rt, cfg, 12, 0, 6, 2, 20, 5, seed=5)  # a head size that is no multiple of the tiles


def test_flash_tiles_layout_and_limits():
    for hd in (20, 32, 64, 128, 256):
        for t in (A.FlashTiles(), A.SOFTWARE_TILES, A.FlashTiles(8, 16, 16, 2, 4, 16)):
            c = t.layout(hd)
            assert (t.bq // c["OQ"]) * c["NOD"] == t.wg and c["NOD"] * c["OD4"] >= hd // 4, (hd, t, c)
            assert t.bkv % c["VK"] == 0 and c["TILE"] >= c["VK"] * c["HD4"]
        info = type("Info", (), {"is_software": False})
        caps = type("Caps", (), {"info": info, "max_workgroup_storage": 16384, "max_invocations": 256})
        assert A.choose_flash_tiles(caps, hd).shared_bytes(hd) <= 16384
    assert A.FlashTiles().shared_bytes(256) <= 16384
    assert not A.supported(30) and A.supported(64)
    with pytest.raises(ValueError):
        A.FlashTiles(16, 32, 64, 3, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        A.FlashTiles().layout(30)
