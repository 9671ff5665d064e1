"""The tiled mat-mat for prefill (wgpu_llm/gpu/matmul.py, shaders/matmul.wgsl) against numpy.

- every weight type: y[t, y_offset + r] (+)= x @ W.T vs float64 numpy on gguf-py's dequantized
  weights, NMSE <= 5e-4, odd rows and token counts (partial tiles on both sides), a row stride
  with NaN padding that must never be read, NaN-poisoned outputs (an unwritten element fails,
  and nothing outside the piece's columns may be written), y_offset and accumulate;
- the tile shapes the device would pick and a few others, folded grids, fewer z workgroups than
  token tiles;
- the choice between the tiled path and the mat-vec (env WGPU_LLM_PREFILL), and whole tiny
  models with the tiled path forced, against the numpy backend.
The mat-mat has the mat-vec's bindings and uniform, so the same small harness runs both.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from test_gpu_quant import (  # noqa: F401  (gpu is a fixture)
    assert_only_region_written,
    block_cols,
    check_product,
    gpu,
    linear_io,
    nmse,
    poisoned,
    reference,
)

from wgpu_llm.gpu import matmul, quant

TYPES = quant.SUPPORTED_TYPES
SMALL = matmul.Tiles(32, 32, 16, 4, 4)  # quick to compile: the per-type sweep
# (rows, n_tokens, y_offset, extra y columns, accumulate, x_stride padding)
CASES = [(37, 5, 0, 0, 0, 0), (203, 33, 5, 9, 1, 3), (37, 70, 2, 4, 1, 0)]


def run_matmul(gpu_, w: quant.PackedWeight, x: np.ndarray, x_stride: int, y: np.ndarray, y_stride: int,
               y_offset: int, accumulate: int, tiles: matmul.Tiles, dispatch=None) -> np.ndarray:
    n_tokens = x.size // x_stride
    uniform = struct.pack("<8I", n_tokens, w.rows, w.cols, x_stride, y_stride, y_offset, accumulate, 0)
    dispatch = dispatch or matmul.matmul_dispatch(w.rows, n_tokens, tiles)
    return gpu_.run(matmul.matmul_shader(w.type_name, tiles), uniform, [x], y, w.planes, dispatch)


def check(gpu_, type_name, rows, n_tokens, y_offset, y_extra, accumulate, x_pad, tiles, seed=0, dispatch=None,
          cols=None) -> float:
    if cols is None:  # several K-steps, the last one partial for the float types
        cols = 277 if type_name in ("F32", "F16", "BF16") else block_cols(type_name, 2 if block_cols(type_name, 1) == 256 else 7)

    def run(w, x, x_stride, y, y_stride, y_offset_, accumulate_):
        return run_matmul(gpu_, w, x, x_stride, y, y_stride, y_offset_, accumulate_, tiles, dispatch)
    return check_product(type_name, cols, rows, n_tokens, y_offset, y_extra, accumulate, x_pad, run, seed, str(tiles))


@pytest.mark.gpu
@pytest.mark.parametrize("type_name", TYPES)
def test_matmul_every_type(gpu, type_name):
    for case in CASES:
        error = check(gpu, type_name, *case, tiles=SMALL)
        assert error <= 1e-10, f"{case}: NMSE {error:.3g}"  # float32 sums of exact weights


@pytest.mark.gpu
@pytest.mark.parametrize("tiles", [
    matmul.Tiles(),  # the hardware default: 64 x 64, 4 x 4 per thread
    matmul.Tiles(16, 64, 8, 8, 4),  # K-steps of one 8-weight unit, 8 tokens per thread
    matmul.Tiles(8, 16, 24, 4, 8),  # K-steps straddling quant blocks
], ids=str)
def test_matmul_tile_shapes(gpu, tiles):
    for type_name, case in [("Q4_K", CASES[1]), ("F16", CASES[2]), ("Q5_0", CASES[0])]:
        check(gpu, type_name, *case, tiles=tiles, seed=1)


@pytest.mark.gpu
def test_matmul_device_tiles(gpu):
    """The shape choose_tiles picks for this adapter (the large register tiles on a software one)."""
    class Caps:  # what choose_tiles reads, from the harness's adapter
        info = type("Info", (), {"is_software": any(s in gpu.adapter.summary.lower()
                                                    for s in ("llvmpipe", "lavapipe", "swiftshader", "cpu"))})
        max_invocations = 256
        max_workgroup_storage = gpu.device.limits["max-compute-workgroup-storage-size"]

    tiles = matmul.choose_tiles(Caps, 70)
    assert tiles.fits(256, Caps.max_workgroup_storage)
    check(gpu, "Q6_K", 203, 70, 3, 1, 1, 2, tiles=tiles, seed=2)


@pytest.mark.gpu
def test_matmul_any_grid(gpu):
    # row tiles folded into x * y (extra workgroups skip), and z smaller than the token tiles (loop)
    check(gpu, "Q8_0", 203, 33, 1, 0, 0, 0, SMALL, dispatch=(3, 3, 1))
    check(gpu, "Q4_1", 37, 70, 0, 2, 1, 1, SMALL, dispatch=(2, 1, 2))
    gx, gy, gz = matmul.matmul_dispatch(203, 70, SMALL, max_per_dim=4)
    assert gx <= 4 and gy <= 4 and gx * gy * SMALL.bn >= 203 and gz == 3
    check(gpu, "Q6_K", 203, 70, 0, 0, 0, 0, SMALL, dispatch=(gx, gy, gz))


@pytest.mark.gpu
@pytest.mark.parametrize("type_name", ["F32", "Q5_0", "Q4_K"])
def test_matmul_glu_input(gpu, type_name):
    """The glu fused into the mat-mat: x holds gate | up rows, the kernel reads act(gate) * up."""
    from test_gpu_quant import glu_case

    rng = np.random.default_rng(12)
    rows, n_tokens = 70, 33
    w, x, x_stride, weights, gated = glu_case(type_name, rows, n_tokens, 3, rng)
    for act in quant.GLU_ACTIVATIONS:
        uniform = struct.pack("<8I", n_tokens, rows, w.cols, x_stride, rows, 0, 0, 0)
        got = gpu.run(matmul.matmul_shader(type_name, SMALL, act), uniform, [x.reshape(-1)],
                      poisoned(n_tokens * rows), w.planes, matmul.matmul_dispatch(rows, n_tokens, SMALL))
        error = nmse(got.reshape(n_tokens, rows), gated[act] @ weights.T)
        assert error <= 1e-10, f"{act}: NMSE {error:.3g}"


def test_tiles_validation_and_sizes():
    t = matmul.Tiles(64, 128, 32, 16, 16)
    assert (t.threads, t.shared_bytes, str(t)) == (32, 24576, "64x128x32/16x16")
    assert not t.fits(256, 16384) and t.fits(256, 32768)
    for bad in [(64, 64, 30, 4, 4), (64, 64, 32, 3, 4), (60, 64, 32, 8, 4), (64, 64, 0, 4, 4)]:
        with pytest.raises(ValueError):
            matmul.Tiles(*bad)
    with pytest.raises(ValueError, match="not supported"):
        matmul.matmul_shader("IQ2_XXS")
    assert matmul.matmul_dispatch(262144, 512) == (4096, 1, 8)
    assert matmul.matmul_dispatch(37, 1, max_per_dim=65535) == (1, 1, 1)


def test_choose_tiles_fit_the_device():
    info = type("Info", (), {})
    for software in (False, True):
        info.is_software = software
        for shared, invocations in [(16384, 256), (32768, 256), (49152, 1024), (16384, 64)]:
            caps = type("Caps", (), {"info": info, "max_workgroup_storage": shared, "max_invocations": invocations})
            for n in (2, 8, 16, 33, 512):
                t = matmul.choose_tiles(caps, n)
                assert t.fits(invocations, shared), (software, shared, invocations, n, t)


def test_prefill_path(monkeypatch):
    monkeypatch.delenv(matmul.ENV_PREFILL, raising=False)
    assert matmul.prefill_path(1) == "matvec"
    assert matmul.prefill_path(matmul.MIN_TILED_TOKENS - 1) == "matvec"
    assert matmul.prefill_path(matmul.MIN_TILED_TOKENS) == "tiled"
    monkeypatch.setenv(matmul.ENV_PREFILL, "tiled")
    assert matmul.prefill_path(2) == "tiled" and matmul.prefill_path(1) == "matvec"
    monkeypatch.setenv(matmul.ENV_PREFILL, "matvec")
    assert matmul.prefill_path(512) == "matvec"
    monkeypatch.setenv(matmul.ENV_PREFILL, "fast")
    with pytest.raises(ValueError, match="WGPU_LLM_PREFILL"):
        matmul.prefill_path(512)


# ---- whole models: the tiled path in the backend ----

@pytest.mark.gpu
@pytest.mark.parametrize("arch,qtype", [("llama", "Q4_1"), ("gemma3", "Q8_0"), ("llama", "IQ4_NL"), ("llama", "Q3_K")])
def test_tiny_model_tiled_prefill(adapter, tmp_path, monkeypatch, arch, qtype):
    """Prefill steps with the mat-mat and flash attention (forced for any token count), then decode
    steps with the mat-vec, against the numpy backend; the compiled step shows which kernels ran."""
    from test_gpu_backend import GEMMA_SHAPE, NMSE_TOL, compare_backends
    from tiny_models import BLOCK, write_tiny_model

    from wgpu_llm.gguf_file import GGUFFile
    from wgpu_llm.models import architecture

    monkeypatch.setenv(matmul.ENV_PREFILL, "tiled")
    shape = GEMMA_SHAPE if arch == "gemma3" else {}
    if BLOCK[qtype] == 256:  # rows of whole super-blocks
        shape = {"d_model": 256, "n_head": 4, "head_dim": 64, "d_ff": 256, "n_layer": 1}
    path = write_tiny_model(tmp_path / f"{arch}-{qtype}.gguf", arch, qtype, **shape)
    errors, backend, decode_step = compare_backends(path, adapter, n_prefill=11, n_decode=3)
    assert max(errors) <= NMSE_TOL, errors
    assert not any("matmul" in s or "flash attention" in s for s in decode_step.program.labels)
    gf = GGUFFile(path)
    prefill = backend.compile(architecture(gf).build_graph(gf, all_logits=True), 11)
    labels = prefill.program.labels
    assert any("matmul" in s for s in labels) and any("flash attention" in s for s in labels)
    assert not any(": linear " in s or ": attention " in s for s in labels), labels


# ---- f16 staged tiles (Tiles.f16, GpuBackend(activations="f16")) ----

F16_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K")


def moderate_tensor(type_name: str, rows: int, cols: int, rng, f16_scale: float = 1.0) -> np.ndarray:
    """GGUF bytes of a random tensor whose weights lie in a model's range (|w| well inside f16's),
    unlike random_tensor's extreme block scales, which the f16 staging would overflow; F16 ones
    ~ f16_scale N(0, 1))."""
    from test_gpu_quant import F16_FIELDS, QUANTIZABLE, random_tensor

    if type_name == "F16":
        return (rng.standard_normal(rows * cols) * f16_scale).astype(np.float16).view(np.uint8)
    if type_name == "F32" or type_name in QUANTIZABLE:
        return random_tensor(type_name, rows, cols, rng, "quantize")
    raw = random_tensor(type_name, rows, cols, rng).copy()
    block_bytes = quant_block_bytes(type_name)
    blocks = raw.reshape(-1, block_bytes)
    for offset in F16_FIELDS[type_name]:  # block scales ~0.01: weights up to ~10
        blocks[:, offset:offset + 2] = (rng.uniform(0.002, 0.01, len(blocks))
                                        ).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw


def quant_block_bytes(type_name: str) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]


def check_f16(gpu_, type_name, rows, n_tokens, y_offset, y_extra, accumulate, x_pad, tiles, seed=0,
              cols=None, x_scale=3.0, f32_tol=None, f16_scale=1.0) -> tuple[float, float]:
    """The mat-mat with f16 staged tiles vs its numpy twin (x and the dequantized weights rounded
    to float16, products summed in float64), within MATMUL_F16_KERNEL_TOL; and vs the f32 kernel
    (tiles.with_f16(False), same inputs) within MATMUL_F16_TOL (or f32_tol). The twin saturates x
    to f16's range as the kernel does (x_scale: x ~ x_scale N(0, 1)). NaN x padding, poisoned y and the
    untouched columns as in check_product. Returns (NMSE vs the twin, NMSE vs f32)."""
    from wgpu_llm.tolerances import MATMUL_F16_KERNEL_TOL, MATMUL_F16_TOL

    tiles = tiles.with_f16()
    if cols is None:
        cols = 277 if type_name in ("F32", "F16") else block_cols(type_name, 2 if block_cols(type_name, 1) == 256
                                                                     else 7)
    rng = np.random.default_rng(seed)
    raw = moderate_tensor(type_name, rows, cols, rng, f16_scale)
    w = quant.pack(type_name, raw, rows, cols)
    weights = reference(type_name, raw, rows, cols)
    x, x_stride, y, y_stride, region, before = linear_io(rng, rows, cols, n_tokens, y_offset, y_extra, accumulate, x_pad,
                                                         x_scale)

    def run(t):
        out = run_matmul(gpu_, w, x.reshape(-1), x_stride, y.reshape(-1).copy(), y_stride, y_offset, accumulate, t)
        return out.reshape(n_tokens, y_stride)
    got, got32 = run(tiles), run(tiles.with_f16(False))
    half = np.float16
    staged = np.clip(x[:, :cols], -65504.0, 65504.0).astype(half).astype(np.float64)
    twin = (staged @ weights.astype(half).astype(np.float64).T
            + (before if accumulate else 0.0))
    label = f"{type_name} {tiles} rows {rows} tokens {n_tokens} cols {cols}"
    assert np.isfinite(got[region]).all(), label
    e_twin, e_f32 = nmse(got[region], twin), nmse(got[region], got32[region])
    assert e_twin <= MATMUL_F16_KERNEL_TOL, f"{label}: NMSE vs the f16 twin {e_twin:.3g}"
    assert e_f32 <= (MATMUL_F16_TOL if f32_tol is None else f32_tol), f"{label}: NMSE vs the f32 kernel {e_f32:.3g}"
    assert_only_region_written(got, region)
    return e_twin, e_f32


@pytest.mark.gpu
@pytest.mark.parametrize("type_name", F16_TYPES)
def test_matmul_f16_every_type(gpu, type_name):
    """Partial token and row tiles, NaN x padding, y_offset and accumulate (CASES), padded columns
    (the float types' 277), over the small tiles and one with subgroup sharing where there is any."""
    if "shader-f16" not in gpu.device.features:
        pytest.skip("this adapter has no shader-f16")
    tiles = [SMALL] + ([matmul.Tiles(16, 64, 32, 16, 8, gpu.subgroup_size)] if gpu.subgroup_size in (4, 8, 16) else [])
    for t in tiles:
        for case in CASES:
            check_f16(gpu, type_name, *case, tiles=t, seed=5)


@pytest.mark.gpu
def test_matmul_f16_saturates_large_activations(gpu):
    """x beyond f16's range (|x| up to ~4e5; weights ~1e-3 so that no f16 product or dot overflows)
    is staged as +-65504, as the twin does: finite results, and far from the f32 kernel's."""
    if "shader-f16" not in gpu.device.features:
        pytest.skip("this adapter has no shader-f16")
    e_twin, e_f32 = check_f16(gpu, "F16", 37, 33, 0, 0, 0, 0, SMALL, seed=6, x_scale=1e5, f32_tol=1.0, f16_scale=1e-3)
    assert e_f32 > 1e-3  # the saturation shows


def test_tiles_f16_key_and_sizes():
    t = matmul.Tiles(64, 128, 32, 32, 8, 8)
    h = t.with_f16()
    assert h != t and h.key == "tiles-64x128x32-32x8-sg8-f16" and str(h) == "64x128x32/32x8/sg8/f16"
    assert matmul.Tiles.from_key(h.key) == h and matmul.Tiles.from_key(t.key) == t
    assert h.shared_bytes * 2 == t.shared_bytes and h.needs_f16 and not t.needs_f16
    assert matmul.matmul_shader("Q4_0", h).startswith("enable f16;") and "vec4<f16>" in matmul.matmul_shader("Q4_0", h)
    f32_source = matmul.matmul_shader("Q4_0", t)
    assert "enable f16" not in f32_source and "array<vec4<f16>" not in f32_source
    info = type("Info", (), {"is_software": True})
    caps = type("Caps", (), {"info": info, "max_workgroup_storage": 32768, "max_invocations": 1024})
    assert matmul.choose_tiles(caps, 70, f16=True) == matmul.choose_tiles(caps, 70).with_f16()
