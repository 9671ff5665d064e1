"""The f16 KV cache (kv_type "f16" / LLM(kv_cache=...)): numpy twin, GPU kernels, whole models,
plumbing, and its accuracy against the f32 cache on the real models.

- numpy: ops.attention over float16 caches is the float32 attention of keys and values rounded to
  float16 (nearest even) as they are stored; a prompt cut into steps gives what one step gives.
- GPU: the attention kernels over packed halves (shaders/kv_cache.wgsl: decode in one workgroup and
  split, batched rows, flash prefill; GQA, windows, soft-capping) against the numpy twin given the
  halves the kernel stored (each within one f16 ulp of the value: WGSL lets pack2x16float round
  either way), to KV_F16_KERNEL_TOL; cache rows past the step untouched (poisoned).
- tiny models: GPU f16 vs CPU f16 logits and greedy tokens; the estimates of the memory checks.
- LLM / CLI: kv_cache="auto" | "f16" | "f32", the "auto" rule, a bad value's error.
- real models (slow): the CPU backend's logits with an f16 cache vs an f32 one, within
  KV_F16_LOGITS_TOL at every position of a prompt and its greedy continuation.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from test_gpu_kernels import Bufs, cfg, nmse  # noqa: F401  (cfg is a fixture)
from tiny_models import write_tiny_model

from cpu_fallback import ops
from wgpu_llm import LLM, memory
from wgpu_llm.gpu import attention as A
from wgpu_llm.gpu import kernels as K
from wgpu_llm.tolerances import KV_F16_KERNEL_TOL, KV_F16_LOGITS_TOL, KV_F16_NEAR_TIE

gpu = pytest.mark.gpu


def heads(rows: np.ndarray, n_kv: int, hd: int) -> np.ndarray:
    """(positions, n_kv * hd) rows -> (n_kv, positions, hd), the numpy backend's cache layout."""
    return rows.reshape(rows.shape[0], n_kv, hd).transpose(1, 0, 2)


# ---- the numpy twin ----
@pytest.mark.parametrize("n,pos0,window,softcap", [(1, 30, 0, 0.0), (7, 20, 0, 0.0), (9, 25, 6, 0.0),
                                                   (20, 5, 0, 2.0)])
def test_numpy_f16_cache_is_attention_over_rounded_keys_and_values(n, pos0, window, softcap):
    rng = np.random.default_rng(n + pos0)
    n_head, n_kv, hd, n_ctx = 9, 3, 64, 48
    q = rng.standard_normal((n, n_head * hd)).astype(np.float32) * 2
    k, v = (rng.standard_normal((n, n_kv * hd)).astype(np.float32) for _ in range(2))
    kc16, vc16 = (rng.standard_normal((n_kv, n_ctx, hd)).astype(np.float16) for _ in range(2))
    kc32, vc32 = kc16.astype(np.float32), vc16.astype(np.float32)
    rounded = [x.astype(np.float16).astype(np.float32) for x in (k, v)]
    scale = 1 / np.sqrt(hd)
    got = ops.attention(q, k, v, kc16, vc16, pos0, n_head, scale, window, softcap)
    ref = ops.attention(q, *rounded, kc32, vc32, pos0, n_head, scale, window, softcap)
    assert nmse(got, ref) <= 1e-13
    assert np.array_equal(kc16[:, pos0:pos0 + n], heads(k, n_kv, hd).astype(np.float16))  # nearest even
    assert np.array_equal(vc16[:, pos0:pos0 + n], heads(v, n_kv, hd).astype(np.float16))
    unrounded = ops.attention(q, k, v, kc32.copy(), vc32.copy(), pos0, n_head, scale, window, softcap)
    assert nmse(unrounded, ref) > 1e-10  # the rounding shows: the comparisons above can fail


def test_numpy_chunked_prefill_is_one_step():
    """9 tokens as steps of 5, 3 and 1 or as one step: the same outputs and caches (a step's own
    keys count as stored, f16, like a later step's view of them)."""
    rng = np.random.default_rng(3)
    n_head, n_kv, hd, n_ctx = 4, 2, 32, 16
    q = rng.standard_normal((9, n_head * hd)).astype(np.float32) * 2
    k, v = (rng.standard_normal((9, n_kv * hd)).astype(np.float32) for _ in range(2))
    caches = [np.zeros((n_kv, n_ctx, hd), np.float16) for _ in range(4)]
    whole = ops.attention(q, k, v, caches[0], caches[1], 0, n_head, 0.2, 0, 0.0)
    parts = [ops.attention(q[a:b], k[a:b], v[a:b], caches[2], caches[3], a, n_head, 0.2, 0, 0.0)
             for a, b in ((0, 5), (5, 8), (8, 9))]
    assert nmse(np.concatenate(parts), whole) <= 1e-13
    assert np.array_equal(caches[0], caches[2]) and np.array_equal(caches[1], caches[3])


# ---- the GPU kernels ----
def check_stored(got: np.ndarray, values: np.ndarray) -> int:
    """The halves a kernel stored for `values` (float32): each the nearest-even half or the other
    neighbour (WGSL leaves the direction to the implementation); returns how many are not nearest-even."""
    nearest = values.astype(np.float16)
    assert np.all(np.abs(got.astype(np.float64) - values) <= np.spacing(np.abs(nearest)).astype(np.float64)), \
        "a stored half is not next to its value"
    return int(np.sum(got != nearest))


def run_f16_attention(rt, rng, n, pos0, n_head, n_kv, hd, window, make_kernel, n_ctx, softcap=0.0) -> float:
    """Run an attention kernel over packed f16 caches (cache rows from pos0 on poisoned with NaN
    halves), q | k | v side by side as the fused QKV projection leaves them; check what it stored;
    returns the NMSE of its output against ops.attention over the same halves."""
    kvw = n_kv * hd
    b = Bufs(rt)
    qkv = rng.standard_normal((n, (n_head + 2 * n_kv) * hd)).astype(np.float32)
    qkv[:, :n_head * hd] *= 2.0  # peaked softmaxes
    stride = qkv.shape[1]
    kc, vc = (rng.standard_normal((n_ctx, kvw)).astype(np.float16) for _ in range(2))
    kc[pos0:] = vc[pos0:] = np.nan
    bqkv, bkc, bvc = b.up(qkv), b.up(kc.view(np.uint32)), b.up(vc.view(np.uint32))
    by = b.out((n, n_head * hd))
    kernel = make_kernel(1 / np.sqrt(hd), K.View(bqkv, 0, stride), K.View(bqkv, n_head * hd, stride),
                         K.View(bqkv, n_head * hd + kvw, stride), bkc, bvc, K.View(by, 0, n_head * hd))
    got_y, got_kc, got_vc = b.run(kernel if isinstance(kernel, list) else [kernel], pos0=pos0, n_tokens=n,
                                  read=[by, bkc, bvc])
    got_kc, got_vc = (g.view(np.float16) for g in (got_kc, got_vc))
    q, k, v = qkv[:, :n_head * hd], qkv[:, n_head * hd:n_head * hd + kvw], qkv[:, n_head * hd + kvw:]
    check_stored(got_kc[pos0:pos0 + n], k)
    check_stored(got_vc[pos0:pos0 + n], v)
    assert np.array_equal(got_kc[:pos0], kc[:pos0]) and np.array_equal(got_vc[:pos0], vc[:pos0])
    assert np.isnan(got_kc[pos0 + n:]).all() and np.isnan(got_vc[pos0 + n:]).all(), "wrote past the step"
    # the reference over the halves the kernel stored: what a later step reads back
    k_heads, v_heads = heads(got_kc[:pos0 + n], n_kv, hd).copy(), heads(got_vc[:pos0 + n], n_kv, hd).copy()
    stored_k, stored_v = (g[pos0:pos0 + n].astype(np.float32) for g in (got_kc, got_vc))
    ref = ops.attention(q, stored_k, stored_v, k_heads, v_heads, pos0, n_head, 1 / np.sqrt(hd), window, softcap)
    return nmse(got_y, ref)


def decode_kernel(cfg, n, n_head, n_kv, hd, window, softcap=0.0, splits=1, rt=None):
    """make_kernel for run_f16_attention: the one-workgroup kernel, or the split one (splits > 1)."""
    def make(scale, *views):
        if splits == 1:
            return K.attention(cfg, n, n_head, n_kv, hd, scale, window, *views, softcap=softcap, kv_type="f16")
        part = rt.upload(np.full(K.split_part_floats(n, n_head, hd, splits), np.nan, np.float32))
        return K.attention_split(cfg, n, n_head, n_kv, hd, scale, window, *views, part, splits, softcap=softcap,
                                 kv_type="f16")
    return make


def flash_kernel(rt, cfg, n, n_head, n_kv, hd, window, softcap=0.0, tiles=None):
    def make(scale, *views):
        return A.flash_attention(cfg, n, n_head, n_kv, hd, scale, window, *views,
                                 tiles=tiles or A.choose_flash_tiles(rt.caps, hd), softcap=softcap, kv_type="f16")
    return make


DECODE_CASES = [  # n, pos0, n_head, n_kv, hd, window, softcap, splits
    (1, 300, 9, 3, 64, 0, 0.0, 1),  # decode, GQA 9:3
    (1, 300, 4, 1, 256, 0, 0.0, 1),  # Gemma-sized heads
    (1, 200, 4, 1, 64, 16, 0.0, 1),  # a window
    (3, 20, 4, 2, 64, 0, 1.5, 1),  # a short chunk, soft-capped
    (7, 40, 4, 1, 256, 16, 0.0, 1),  # a windowed chunk: keys from the cache and the step
    (1, 700, 4, 1, 256, 0, 0.0, 4),  # split
    (1, 0, 4, 1, 64, 0, 0.0, 4),  # split, one key: empty splits
    (7, 40, 9, 3, 64, 16, 0.0, 3),  # split, windowed chunk
    (1, 700, 8, 4, 128, 300, 3.0, 4),  # split, windowed, soft-capped
]


@gpu
@pytest.mark.parametrize("n,pos0,n_head,n_kv,hd,window,softcap,splits", DECODE_CASES)
def test_decode_attention_f16(rt, cfg, n, pos0, n_head, n_kv, hd, window, softcap, splits):
    rng = np.random.default_rng(pos0 + n)
    make = decode_kernel(cfg, n, n_head, n_kv, hd, window, softcap, splits, rt)
    error = run_f16_attention(rt, rng, n, pos0, n_head, n_kv, hd, window, make, pos0 + n + 5, softcap)
    assert error <= KV_F16_KERNEL_TOL, f"NMSE {error:.3g}"


FLASH_CASES = [  # n, pos0, n_head, n_kv, hd, window, softcap
    (33, 37, 9, 3, 64, 0, 0.0),  # a chunk continuing a context, GQA 9:3
    (70, 100, 4, 1, 256, 16, 0.0),  # Gemma-sized heads, a window
    (70, 0, 4, 1, 256, 0, 3.0),  # soft-capped, from the start
    (12, 0, 6, 2, 20, 5, 0.0),  # a head size that is no multiple of the tiles
]


@gpu
@pytest.mark.parametrize("n,pos0,n_head,n_kv,hd,window,softcap", FLASH_CASES)
def test_flash_attention_f16(rt, cfg, n, pos0, n_head, n_kv, hd, window, softcap):
    rng = np.random.default_rng(pos0 + n)
    make = flash_kernel(rt, cfg, n, n_head, n_kv, hd, window, softcap)
    error = run_f16_attention(rt, rng, n, pos0, n_head, n_kv, hd, window, make, pos0 + n + 5, softcap)
    assert error <= KV_F16_KERNEL_TOL, f"NMSE {error:.3g}"


@gpu
@pytest.mark.parametrize("splits", [1, 4])
def test_batched_rows_f16(rt, cfg, splits):
    """A batched decode step over one shared f16 cache: row r at position pos[r] of the sequence
    whose cache starts at row base[r]; each row's own k, v go to its row, nothing else changes."""
    from wgpu_llm.gpu.runtime import Program

    rng = np.random.default_rng(6)
    n_head, n_kv, hd = 4, 2, 64
    positions = [0, 63, 64, 255, 300]
    slot, kvw, n = 512, n_kv * hd, len(positions)
    b = Bufs(rt)
    qkv = rng.standard_normal((n, (n_head + 2 * n_kv) * hd)).astype(np.float32)
    stride = qkv.shape[1]
    kc, vc = (rng.standard_normal((n * slot, kvw)).astype(np.float16) for _ in range(2))
    bqkv, bkc, bvc, by = b.up(qkv), b.up(kc.view(np.uint32)), b.up(vc.view(np.uint32)), b.out((n, n_head * hd))
    views = (K.View(bqkv, 0, stride), K.View(bqkv, n_head * hd, stride), K.View(bqkv, n_head * hd + kvw, stride),
             bkc, bvc, K.View(by, 0, n_head * hd))
    if splits == 1:
        kernels = [K.attention(cfg, n, n_head, n_kv, hd, 1 / np.sqrt(hd), 0, *views, kv_type="f16")]
    else:
        part = b.out((K.split_part_floats(n, n_head, hd, splits),))
        kernels = K.attention_split(cfg, n, n_head, n_kv, hd, 1 / np.sqrt(hd), 0, *views, part, splits,
                                    kv_type="f16")
    outs = [(buf, 0, 4 * int(np.prod(b.shapes[id(buf)][0]))) for buf in (by, bkc, bvc)]
    rows = np.array([(pos, r * slot) for r, pos in enumerate(positions)], np.uint32)
    got_y, got_kc, got_vc = Program(rt, kernels, "test", outs).run(0, n, rows=rows)
    got_y = got_y.view(np.float32).reshape(n, n_head * hd)
    got_kc, got_vc = (g.view(np.float16).reshape(n * slot, kvw) for g in (got_kc, got_vc))
    for r, pos in enumerate(positions):
        at = r * slot + pos
        q, k, v = qkv[r:r + 1, :n_head * hd], qkv[r:r + 1, n_head * hd:n_head * hd + kvw], qkv[r:r + 1, -kvw:]
        check_stored(got_kc[at:at + 1], k)
        check_stored(got_vc[at:at + 1], v)
        k_heads = heads(got_kc[r * slot:at + 1], n_kv, hd).copy()
        v_heads = heads(got_vc[r * slot:at + 1], n_kv, hd).copy()
        ref = ops.attention(q, got_kc[at:at + 1].astype(np.float32), got_vc[at:at + 1].astype(np.float32),
                            k_heads, v_heads, pos, n_head, 1 / np.sqrt(hd), 0)
        assert nmse(got_y[r:r + 1], ref) <= KV_F16_KERNEL_TOL, f"row {r} at position {pos}"
    untouched = np.ones(n * slot, bool)
    untouched[[r * slot + pos for r, pos in enumerate(positions)]] = False
    assert np.array_equal(got_kc[untouched], kc[untouched]) and np.array_equal(got_vc[untouched], vc[untouched])


def check_f16_attention_variant(rt, cfg, variant: K.AttentionVariant, seed: int = 7) -> None:
    """Run a decode-attention variant over an f16 cache (tests/test_gpu_variants.py): a decode row
    and a windowed chunk, with the variant's split count."""
    rng = np.random.default_rng(seed)
    for n, pos0, n_head, n_kv, hd, window in ((1, 300, 4, 1, 256, 0), (7, 40, 9, 3, 64, 16)):
        make = decode_kernel(cfg, n, n_head, n_kv, hd, window, splits=variant.splits, rt=rt)
        error = run_f16_attention(rt, rng, n, pos0, n_head, n_kv, hd, window, make, pos0 + n + 5)
        assert error <= KV_F16_KERNEL_TOL, f"{variant.key}: NMSE {error:.3g}"


def check_f16_flash(rt, cfg, seed: int = 8) -> None:
    """The flash kernel over an f16 cache with this adapter's tiles (tests/test_gpu_variants.py)."""
    rng = np.random.default_rng(seed)
    for n, pos0, n_head, n_kv, hd, window in ((33, 20, 4, 1, 256, 0), (70, 0, 9, 3, 64, 16)):
        make = flash_kernel(rt, cfg, n, n_head, n_kv, hd, window)
        error = run_f16_attention(rt, rng, n, pos0, n_head, n_kv, hd, window, make, pos0 + n + 5)
        assert error <= KV_F16_KERNEL_TOL, f"flash attention: NMSE {error:.3g}"


def test_kernels_refuse_bad_kv_types():
    views = [K.View(None, 0, 1)] * 3
    with pytest.raises(ValueError, match="kv_type 'f8' is not one of f32, f16"):
        K.attention(K.KernelConfig(), 1, 4, 1, 64, 1.0, 0, *views, None, None, K.View(None, 0, 1), kv_type="f8")
    with pytest.raises(ValueError, match="head_dim 63 is odd"):
        A.flash_attention(K.KernelConfig(), 1, 4, 1, 63, 1.0, 0, *views, None, None, K.View(None, 0, 1),
                          kv_type="f16")


# ---- whole tiny models ----
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("kv16")
    return {arch: str(write_tiny_model(d / f"{arch}.gguf", arch, "Q8_0", n_ctx=256, **shape))
            for arch, shape in (("llama", {}), ("gemma3", {"n_layer": 6, "n_kv_head": 1, "head_dim": 32,
                                                          "d_ff": 128, "sliding_window": 4}))}


@gpu
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tiny_models_gpu_f16_vs_cpu_f16(tiny, adapter, arch):
    from test_gpu_backend import NMSE_TOL, compare_backends

    errors, gpu_backend, _ = compare_backends(tiny[arch], adapter, n_prefill=7, n_decode=5, kv_type="f16")
    assert gpu_backend.kv_type == "f16" and "KV cache f16" in gpu_backend.describe()
    assert max(errors) <= NMSE_TOL, errors


@gpu
def test_tiny_model_greedy_tokens_gpu_f16_equal_cpu_f16(tiny, adapter):
    cpu = LLM(tiny["gemma3"], backend="cpu", n_ctx=64, kv_cache="f16")
    gpu_llm = LLM(tiny["gemma3"], backend="gpu", n_ctx=64, kv_cache="f16")
    prompt = list(range(5, 17))
    want = cpu.generate(prompt, 12, temperature=0, ignore_eos=True).tokens
    assert gpu_llm.generate(prompt, 12, temperature=0, ignore_eos=True).tokens == want


@pytest.mark.parametrize("backend", ["cpu", pytest.param("gpu", marks=gpu)])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_memory_estimate_follows_the_kv_type(tiny, arch, backend, request):
    if backend == "gpu":
        request.getfixturevalue("adapter")  # skips where there is none
    llm = LLM(tiny[arch], backend=backend, n_ctx=64, kv_cache="f16")
    caches = [*llm.backend.k_cache.values(), *llm.backend.v_cache.values()]
    if backend == "cpu":
        assert {c.dtype for c in caches} == {np.dtype(np.float16)}
    held = sum(c.nbytes if backend == "cpu" else c.size for c in caches)
    estimate = memory.cpu_estimate if backend == "cpu" else memory.gpu_estimate
    graphs = list(llm._graphs.values())
    assert estimate(llm.file, graphs, 64, llm.n_batch, kv_type="f16").kv_cache == held
    assert estimate(llm.file, graphs, 64, llm.n_batch).kv_cache == 2 * held


@gpu
def test_gpu_binding_check_counts_halves(tiny, adapter):
    """One layer's cache is one storage binding: 256 x 32 halves are 16 KiB, half of f32's."""
    import dataclasses

    from wgpu_llm.gguf_file import GGUFFile
    from wgpu_llm.gpu.backend import GpuBackend
    from wgpu_llm.gpu.runtime import GpuError

    def backend(kv_type, max_binding):
        be = GpuBackend(GGUFFile(tiny["llama"]), 256, adapter, kv_type=kv_type)
        be.rt.caps = dataclasses.replace(be.rt.caps, max_binding=max_binding)
        return be

    k, v = backend("f16", 16384).kv_cache(0, 32)
    assert k.size == v.size == 16384
    with pytest.raises(GpuError, match=r"layer 0: a KV cache of 256 x 32 halves \(16384 bytes\) exceeds"):
        backend("f16", 16380).kv_cache(0, 32)
    with pytest.raises(GpuError, match=r"256 x 32 floats \(32768 bytes\)"):
        backend("f32", 16384).kv_cache(0, 32)
    with pytest.raises(ValueError, match="kv_type 'f8' is not one of f32, f16"):
        GpuBackend(GGUFFile(tiny["llama"]), 256, adapter, kv_type="f8")


# ---- LLM(kv_cache=...), the "auto" rule, the CLI flag ----
def test_llm_kv_cache_on_the_cpu(tiny):
    assert LLM(tiny["llama"], backend="cpu", n_ctx=32).backend.kv_type == "f32"  # auto: f32 on the CPU
    f16 = LLM(tiny["llama"], backend="cpu", n_ctx=32, kv_cache="f16")
    assert f16.backend.kv_type == "f16" and f16.backend.describe() == "numpy (CPU, KV cache f16)"
    assert LLM(tiny["llama"], backend="cpu", n_ctx=32, kv_cache="f32").backend.kv_type == "f32"


@pytest.mark.parametrize("value", ["f8", "F16", "float16", None])
def test_bad_kv_cache_value(tiny, value):
    with pytest.raises(ValueError, match=f"kv_cache {value!r} is not one of auto, f32, f16"):
        LLM(tiny["llama"], backend="cpu", n_ctx=32, kv_cache=value)


def test_auto_rule(monkeypatch):
    """f16 on a hardware adapter with shader-f16; f32 without it, and on a software adapter unless
    WGPU_LLM_FORCE_HARDWARE_KERNELS=1 gives it the hardware choices."""
    monkeypatch.delenv("WGPU_LLM_FORCE_HARDWARE_KERNELS", raising=False)
    hardware, software = SimpleNamespace(is_software=False, shader_f16=True), SimpleNamespace(is_software=True,
                                                                                              shader_f16=True)
    assert K.auto_kv_type(hardware) == "f16"
    assert K.auto_kv_type(SimpleNamespace(is_software=False, shader_f16=False)) == "f32"
    assert K.auto_kv_type(software) == "f32"
    monkeypatch.setenv("WGPU_LLM_FORCE_HARDWARE_KERNELS", "1")
    assert K.auto_kv_type(software) == "f16"


@gpu
def test_llm_kv_cache_on_the_gpu(tiny, adapter, monkeypatch):
    """On this machine's adapter "auto" follows the rule (lavapipe: a software adapter, f32); with
    the hardware choices forced and shader-f16, f16; explicit types whatever the adapter."""
    from wgpu_llm.gpu.device import adapter_info

    monkeypatch.delenv("WGPU_LLM_FORCE_HARDWARE_KERNELS", raising=False)
    info = adapter_info(adapter)
    assert LLM(tiny["llama"], backend="gpu", n_ctx=32).backend.kv_type == K.auto_kv_type(info)
    monkeypatch.setenv("WGPU_LLM_FORCE_HARDWARE_KERNELS", "1")
    forced = LLM(tiny["llama"], backend="gpu", n_ctx=32)
    assert forced.backend.kv_type == ("f16" if info.shader_f16 else "f32")
    monkeypatch.delenv("WGPU_LLM_FORCE_HARDWARE_KERNELS")
    for kv in ("f16", "f32"):
        assert LLM(tiny["llama"], backend="gpu", n_ctx=32, kv_cache=kv).backend.kv_type == kv


def test_cli_kv_cache_flag(tiny, opened):
    """--kv-cache reaches LLM(kv_cache=...) (the CLI takes LLM from the package when it opens one)."""
    from click.testing import CliRunner

    from wgpu_llm import cli

    base = ["run", tiny["llama"], "-p", "the cat", "-n", "2", "--temperature", "0", "--backend", "cpu"]
    result = CliRunner().invoke(cli.main, [*base, "--kv-cache", "f16"])
    assert result.exit_code == 0, result.output
    assert opened["kv_cache"] == "f16"
    result = CliRunner().invoke(cli.main, base)
    assert result.exit_code == 0 and opened["kv_cache"] == "auto"
    result = CliRunner().invoke(cli.main, [*base, "--kv-cache", "f8"])
    assert result.exit_code == 2 and "'f8' is not one of 'auto', 'f32', 'f16'" in result.output


# ---- the accuracy bound against f32, on the real models ----
PROMPT = ("The history of the bicycle begins in the early nineteenth century, when inventors in Germany and France "
          "built wooden machines that riders pushed along with their feet. Pedals attached to the front wheel came "
          "decades later, and the safety bicycle, with two wheels of equal size and a chain driving the rear one, "
          "made cycling popular with ordinary people. Today")
CONTINUATION = 16


def kv_f16_accuracy(model: str) -> dict:
    """The numpy backend with an f16 cache vs an f32 one: NMSE of the logits at every position of
    PROMPT and of f32's greedy continuation (both fed the same tokens), and the greedy tokens each
    generates on its own; the f32 logits' top-two gap where the continuations first differ."""
    with LLM(model, backend="cpu", n_ctx=256, kv_cache="f32") as llm:
        ids = llm.tokenize(PROMPT)
        want = llm.generate(ids, CONTINUATION, temperature=0, ignore_eos=True).tokens
        ref = llm.logits(ids + want)
    with LLM(model, backend="cpu", n_ctx=256, kv_cache="f16") as llm:
        got = llm.generate(ids, CONTINUATION, temperature=0, ignore_eos=True).tokens
        logits = llm.logits(ids + want)
    per_position = np.sum((logits.astype(np.float64) - ref) ** 2, -1) / np.sum(ref.astype(np.float64) ** 2, -1)
    agree = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), len(want))
    gap = None
    if agree < len(want):
        top = np.sort(ref[len(ids) - 1 + agree])[-2:]
        gap = float(top[1] - top[0])
    return {"prompt_tokens": len(ids), "max_nmse": float(per_position.max()), "agree": agree, "gap": gap}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_f16_cache_accuracy_against_f32(model):
    """Within KV_F16_LOGITS_TOL at every position; greedy continuations equal up to a near-tie of
    f32's own logits (top two within KV_F16_NEAR_TIE), where a difference of that size may flip them."""
    m = kv_f16_accuracy(model)
    print(model, m)
    assert m["max_nmse"] <= KV_F16_LOGITS_TOL, m
    assert m["agree"] == CONTINUATION or m["gap"] <= KV_F16_NEAR_TIE, m
