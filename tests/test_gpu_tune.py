"""Kernel-variant choice per adapter and the tuning pass (wgpu_llm/gpu/tune.py).

- The heuristic choice for GPU vendors and CPU-type adapters (fake adapters, no GPU needed).
- The tuning cache: file name per adapter identity, merge on write, a corrupt file or entry
  ignored with a warning, the nearest tuned shape standing in for an untuned one.
- The tiled mat-mat of prefill steps: its tile-shape candidates, cached tile winners, and the
  choice keeping mat-vec and mat-mat winners apart.
- On a real adapter (lavapipe is enough): a tiny tuning run (mat-vec and mat-mat), and a backend
  that then compiles its linears with the cached winners (and not with WGPU_LLM_TUNE=0), giving the
  same logits; the tuned mat-vec variant and tile shape are the ones the compiled steps dispatch.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import numpy as np
import pytest

from wgpu_llm.gpu import kernels as K
from wgpu_llm.gpu import matmul, quant, tune
from wgpu_llm.gpu.device import AdapterInfo
from wgpu_llm.gpu.matmul import Tiles
from wgpu_llm.gpu.quant import LinearVariant
from wgpu_llm.gpu.runtime import Caps
from wgpu_llm.gpu.tune import LinearCase, LinearChoice

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())  # silences a harmless warning on headless Linux


class _FakeAdapter:
    def __init__(self, description: str):
        self.info = {"description": description, "vendor_id": 0x10DE, "device_id": 0x2330}


def fake_caps(vendor="NVIDIA", name="NVIDIA H100", subgroup_size=32, software=False, max_invocations=1024,
              driver="550.54", backend="Vulkan") -> Caps:
    info = AdapterInfo(0, name, vendor, backend, "cpu" if software else "discrete", software, 1 << 27, 1 << 31,
                       subgroup_size > 0, None, True, True, adapter=_FakeAdapter(driver))
    return Caps(info, subgroup_size > 0, subgroup_size, True, 1 << 27, 1 << 31, 16384, max_invocations, 10, 65535,
                256)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path))
    monkeypatch.delenv(tune.ENV_TUNE, raising=False)
    monkeypatch.delenv(matmul.ENV_PREFILL, raising=False)  # steps of MIN_TILED_TOKENS or more: the mat-mat
    return tmp_path


# ---- the heuristic (no GPU) ----
@pytest.mark.parametrize("vendor,name,sg,want", [
    ("NVIDIA", "NVIDIA H100", 32, "subgroup-wg64-r4"),
    ("AMD", "AMD Radeon RX 7900 XTX", 64, "subgroup-wg64-r4"),
    ("Intel", "Intel(R) Arc(tm) A770", 16, "subgroup-wg64-r4"),
    ("Apple", "Apple M2", 32, "subgroup-wg64-r4"),
    ("Qualcomm", "Adreno (TM) 740", 0, "shared-wg64-r4"),
])
def test_gpus_keep_few_rows_per_workgroup(vendor, name, sg, want):
    cfg = K.choose_config(fake_caps(vendor, name, sg))
    for rows, cols, n in [(576, 576, 1), (262144, 640, 1), (2048, 640, 1), (1536, 576, 16)]:
        assert K.linear_variant(cfg, "Q4_K", rows, cols, n).key == want


def test_cpu_adapters_walk_whole_rows():
    lavapipe = K.choose_config(fake_caps("llvmpipe", "llvmpipe (LLVM 15.0.6, 256 bits)", 8, software=True))
    assert K.linear_variant(lavapipe, "Q4_1", 576, 576, 1).key == "row-wg8-r64-b8"
    assert K.linear_variant(lavapipe, "Q4_1", 192, 576, 1).key == "row-wg8-r32-b8"  # keeps 6 workgroups
    assert K.linear_variant(lavapipe, "Q4_1", 576, 576, 12).key == "row-wg8-r32-b8-t4"  # 4 x 32 activations
    assert K.linear_variant(lavapipe, "Q6_K", 576, 576, 12).key == "row-wg8-r32-b8"  # 1 x 128
    wide = K.choose_config(fake_caps("llvmpipe", "llvmpipe (LLVM 15.0.6, 512 bits)", 16, software=True))
    assert K.linear_variant(wide, "Q8_0", 262144, 640, 1).key == "row-wg16-r128-b16"
    no_subgroups = K.choose_config(fake_caps("Google", "SwiftShader Device (Subzero)", 0, software=True))
    assert K.linear_variant(no_subgroups, "Q6_K", 640, 2048, 1).key == "row-wg8-r64"


def test_candidates():
    gpu = tune.candidates(fake_caps(), LinearCase("Q4_K", 640, 2048))
    assert gpu[0].key == "subgroup-wg64-r4" and len(gpu) > 5 and len({v.key for v in gpu}) == len(gpu)
    assert all(v.kind != "row" or v.workgroup_size == 64 for v in gpu)
    small = tune.candidates(fake_caps(max_invocations=128), LinearCase("Q4_K", 640, 2048))
    assert all(v.workgroup_size <= 128 for v in small)
    no_sg = tune.candidates(fake_caps(subgroup_size=0), LinearCase("Q4_K", 640, 2048))
    assert not any(v.needs_subgroups for v in no_sg)
    cpu = tune.candidates(fake_caps("llvmpipe", "llvmpipe", 8, software=True), LinearCase("Q8_0", 4096, 576), quick=True)
    assert [v.key for v in cpu] == ["row-wg8-r64-b8", "row-wg8-r16-b8", "row-wg8-r32-b8", "subgroup-wg64-r4"]


@pytest.mark.parametrize("type_name", quant.SUPPORTED_TYPES)
def test_timed_weights_have_small_finite_values(type_name):
    """The tuner times random weights of every type: their block scales must be set (random bits
    there would give infinities and NaNs, far slower on some devices than the real weights)."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize
    from test_gpu_quant import unpack

    case = LinearCase(type_name, 3, 512)
    w = quant.PackedWeight(type_name, case.rows, case.cols, tune._random_planes(case, np.random.default_rng(0)))
    values = dequantize(unpack(w), GGMLQuantizationType[type_name])
    assert np.isfinite(values).all() and np.abs(values).max() < 100


def test_tile_candidates(monkeypatch):
    monkeypatch.delenv(matmul.ENV_PREFILL, raising=False)
    prefill = LinearCase("Q4_K", 640, 2048, 128)
    assert prefill.tiled and not LinearCase("Q4_K", 640, 2048, matmul.MIN_TILED_TOKENS - 1).tiled
    for caps in (fake_caps(), fake_caps(max_invocations=128), fake_caps(subgroup_size=0),
                 fake_caps("llvmpipe", "llvmpipe", 8, software=True)):
        for quick in (True, False):
            tiles = tune.candidates(caps, prefill, quick)
            assert tiles[0] == matmul.choose_tiles(caps, 128) == tune.heuristic(caps, prefill)
            assert len(tiles) >= 3 and len({t.key for t in tiles}) == len(tiles)
            assert all(isinstance(t, Tiles) and t.fits(caps.max_invocations, caps.max_workgroup_storage)
                       and (caps.subgroups or not t.sg) for t in tiles)
            assert all(tune.parse_winner(t.key) == t for t in tiles)
    short = tune.candidates(fake_caps(), LinearCase("Q4_K", 640, 2048, 16))
    assert all(t.bm <= 16 for t in short)  # no tile of many more tokens than the step holds
    monkeypatch.setenv(matmul.ENV_PREFILL, "matvec")  # no mat-mat: the mat-vec variants are tuned
    assert all(isinstance(v, LinearVariant) for v in tune.candidates(fake_caps(), prefill))


def test_tile_keys():
    t = Tiles(64, 128, 32, 32, 8, 8)
    assert t.key == "tiles-64x128x32-32x8-sg8" and Tiles.from_key(t.key) == t
    assert Tiles.from_key(Tiles().key) == Tiles()
    for bad in ("tiles-3x4x5-1x1", "tiles-64x64", "64x64x32/4x4", "subgroup-wg64-r4"):
        with pytest.raises(ValueError, match="not a tile key"):
            Tiles.from_key(bad)
    with pytest.raises(ValueError, match="not a linear variant key"):
        tune.parse_winner("tile-64x64x32-4x4")


def test_choice_keeps_mat_vec_and_mat_mat_winners_apart():
    caps = fake_caps()
    tuned = {LinearCase("Q4_K", 640, 2048, 16): "shared-wg256-r8",
             LinearCase("Q4_K", 640, 2048, 128): "tiles-32x32x16-4x4",
             LinearCase("Q4_K", 8192, 2048, 128): "tiles-64x128x32-8x8"}  # 256 threads, 24 KiB: too big here
    choice = LinearChoice(caps, K.choose_config(caps), tuned)
    assert choice.tiles("Q4_K", 640, 2048, 128) == Tiles(32, 32, 16, 4, 4)
    assert choice.tiles("Q4_K", 1024, 2048, 64) == Tiles(32, 32, 16, 4, 4)  # the nearest tuned shape
    assert choice("Q4_K", 640, 2048, 128).key == "shared-wg256-r8"  # a mat-vec asks: mat-vec winners only
    assert choice.tiles("Q4_K", 640, 2048, 16) == Tiles(32, 32, 16, 4, 4)  # a mat-mat asks: mat-mat winners only
    assert choice.tiles("Q4_K", 8192, 2048, 128) == matmul.choose_tiles(caps, 128)  # does not fit: heuristic
    assert choice.tiles("Q6_K", 640, 2048, 128) == matmul.choose_tiles(caps, 128)  # another type
    assert choice.sources == {"tuned": 4, "heuristic": 2}


def test_f16_tiles_need_shader_f16():
    """A cached f16 tile winner (key "...-f16") is used only on a device with shader-f16."""
    import dataclasses

    caps = fake_caps()
    f16 = Tiles(32, 32, 16, 4, 4, f16=True)
    tuned = {LinearCase("Q4_K", 640, 2048, 128): f16.key}
    assert LinearChoice(caps, K.choose_config(caps), tuned).tiles("Q4_K", 640, 2048, 128) == f16
    no_f16 = dataclasses.replace(caps, shader_f16=False)
    choice = LinearChoice(no_f16, K.choose_config(no_f16), tuned)
    assert choice.tiles("Q4_K", 640, 2048, 128) == matmul.choose_tiles(no_f16, 128)  # the heuristic's f32 tiles


# ---- the cache (no GPU) ----
def test_cache_path_per_adapter_identity(cache_dir):
    a = tune.cache_path(fake_caps().info)
    assert a.parent == cache_dir / "tuning" and a.suffix == ".json"
    assert a.name.startswith("nvidia-nvidia-h100-") and all(c.isalnum() or c in "-." for c in a.name)
    assert tune.cache_path(fake_caps().info) == a  # stable
    assert tune.cache_path(fake_caps(driver="555.42").info) != a  # another driver: tuned again
    assert tune.cache_path(fake_caps(backend="D3D12").info) != a
    odd = tune.cache_path(fake_caps("AMD", "AMD Radeon / RX: 7900 XTX (RADV NAVI31) \\ ../..").info)
    assert odd.parent == cache_dir / "tuning" and "/" not in odd.name[:-5] and ".." not in odd.name


def _result(case: LinearCase, times: dict[str, float]) -> tune.CaseResult:
    return tune.CaseResult(case, {k: [t, t * 1.1, t * 0.9] for k, t in times.items()}, timer="wall")


def test_cache_round_trip_and_merge(cache_dir):
    info = fake_caps().info
    path = tune.cache_path(info)
    a, b = LinearCase("Q4_K", 640, 2048), LinearCase("Q8_0", 131072, 640)
    tune.write_cache(path, info, [_result(a, {"subgroup-wg64-r4": 3e-5, "subgroup-wg128-r8": 2e-5}),
                                  _result(b, {"subgroup-wg64-r4": 1e-3})])
    assert tune.read_cache(path) == {a: "subgroup-wg128-r8", b: "subgroup-wg64-r4"}
    c = LinearCase("Q4_K", 640, 2048, 16)
    d = LinearCase("Q4_K", 640, 2048, 128)
    tune.write_cache(path, info, [_result(a, {"subgroup-wg64-r2": 1e-5}), _result(c, {"shared-wg64-r4": 1e-4}),
                                  _result(d, {"tiles-64x64x32-4x4": 1e-3, "tiles-32x64x32-4x4": 2e-3})])
    assert tune.read_cache(path) == {a: "subgroup-wg64-r2", b: "subgroup-wg64-r4", c: "shared-wg64-r4",
                                     d: "tiles-64x64x32-4x4"}
    data = json.loads(path.read_text())
    assert data["adapter"]["device"] == "NVIDIA H100" and data["adapter"]["driver"] == "550.54"
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("content", ["{not json", "", '{"format": 99, "linear": []}', "[1, 2]", "\udcff"])
def test_corrupt_cache_is_ignored_with_a_warning(cache_dir, content):
    path = tune.cache_path(fake_caps().info)
    path.parent.mkdir(parents=True)
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.warns(RuntimeWarning, match="ignoring the tuning cache"):
        assert tune.read_cache(path) == {}
    # and a new tuning pass replaces it
    tune.write_cache(path, fake_caps().info, [_result(LinearCase("Q8_0", 64, 64), {"shared-wg64-r4": 1e-5})])
    assert tune.read_cache(path) == {LinearCase("Q8_0", 64, 64): "shared-wg64-r4"}


def test_malformed_entries_are_skipped_with_a_warning(cache_dir):
    path = tune.cache_path(fake_caps().info)
    path.parent.mkdir(parents=True)
    good = {"type": "Q4_K", "rows": 640, "cols": 1024, "n_tokens": 1, "winner": "subgroup-wg32-r2"}
    bad = [{**good, "winner": "warp-drive-9"}, {**good, "type": "Q9_9"}, {**good, "cols": 100}, {"type": "Q4_K"}, 7,
           {**good, "n_tokens": 64, "winner": "tiles-64x64x7-4x4"}]
    path.write_text(json.dumps({"format": tune.CACHE_FORMAT, "linear": [good, *bad]}))
    with pytest.warns(RuntimeWarning, match="ignoring 6 malformed entries"):
        assert tune.read_cache(path) == {LinearCase("Q4_K", 640, 1024): "subgroup-wg32-r2"}


def test_choice_takes_the_nearest_tuned_shape():
    caps = fake_caps()
    cfg = K.choose_config(caps)
    tuned = {LinearCase("Q4_K", 640, 2048): "subgroup-wg128-r8", LinearCase("Q4_K", 4096, 2048): "subgroup-wg32-r2",
             LinearCase("Q4_K", 640, 2048, 64): "shared-wg256-r8", LinearCase("Q8_0", 640, 2048): "row-wg32-r64-b8"}
    choice = LinearChoice(caps, cfg, tuned)
    assert choice("Q4_K", 640, 2048, 1).key == "subgroup-wg128-r8"
    assert choice("Q4_K", 1024, 2048, 1).key == "subgroup-wg128-r8"  # nearer 640 than 4096 rows
    assert choice("Q4_K", 8192, 1536, 1).key == "subgroup-wg32-r2"
    assert choice("Q4_K", 640, 2048, 16).key == "shared-wg256-r8"  # the several-token phase
    assert choice("Q4_K", 64, 256, 1).key == "subgroup-wg64-r4"  # too far from anything tuned: heuristic
    assert choice("Q6_K", 640, 2048, 1).key == "subgroup-wg64-r4"  # another type: heuristic
    assert choice("Q8_0", 640, 2048, 1).key == "row-wg32-r64-b8"
    assert choice.sources == {"tuned": 5, "heuristic": 2}
    no_sg = LinearChoice(fake_caps(subgroup_size=0), K.choose_config(fake_caps(subgroup_size=0)), tuned)
    assert no_sg("Q4_K", 640, 2048, 1).key == "shared-wg64-r4"  # a cached variant this device cannot run


# ---- on a real adapter ----
@pytest.mark.gpu
def test_tiny_tuning_run(rt, cache_dir):
    cases = {LinearCase("Q4_0", 96, 256): 3, LinearCase("Q8_0", 40, 64, 3): 1}
    seen, pipelines, allocated = [], rt.n_pipelines, rt.allocated_bytes
    results = tune.tune(rt, cases, quick=True, rounds=3, sample_s=0.002, progress=lambda *a: seen.append(a))
    assert [r.case for r in results] == list(cases) and [r.count for r in results] == [3, 1]
    for res in results:
        keys = [v.key for v in tune.candidates(rt.caps, res.case, quick=True)]
        assert sorted(res.samples) == sorted(keys) and res.winner in keys and res.winner not in res.dropped
        assert res.timer == ("cpu" if rt.caps.info.is_software else "timestamp" if rt.info.timestamp_query else "wall")
        assert all(len(res.samples[k]) == (2 if k in res.dropped else 3) for k in keys)
        assert all(t > 0 and np.isfinite(t) for ts in res.samples.values() for t in ts)
        # the lowest median of those timed every round (a dropped one's two samples may since have
        # become lower than the others' three)
        assert res.median(res.winner) == min(res.median(k) for k in keys if k not in res.dropped)
    assert len(seen) >= 2 * sum(len(r.samples) for r in results)
    assert tune.read_cache(tune.cache_path(rt.info)) == {r.case: r.winner for r in results}
    assert (rt.n_pipelines, rt.allocated_bytes) == (pipelines, allocated)  # the runtime's own state is untouched


@pytest.mark.gpu
def test_backend_uses_the_cached_winner(cache_dir, monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import write_tiny_model

    from wgpu_llm import LLM
    from wgpu_llm.gguf_file import GGUFFile

    path = write_tiny_model(tmp_path / "llama-q8.gguf", "llama", "Q8_0", tied_output=False)
    ids = [5, 9, 77, 3]
    reference = LLM(path, backend="gpu")  # no cache yet: the heuristic
    assert reference.backend.linear_choice.sources["tuned"] == 0
    want = reference.logits(ids)
    info = reference.backend.rt.info
    # a winner no heuristic picks, for every linear shape of the model
    winner = "row-wg16-r16" if not info.is_software else "shared-wg32-r2"
    cases = tune.model_cases(GGUFFile(path), (1, len(ids)))
    tune.write_cache(tune.cache_path(info), info, [_result(c, {winner: 1e-5}) for c in cases])

    llm = LLM(path, backend="gpu")
    got = llm.logits(ids)
    choice = llm.backend.linear_choice
    assert choice.sources["heuristic"] == 0 and choice.sources["tuned"] > 0
    sources = {src for src, _ in llm.backend.rt._pipelines}
    assert quant.linear_shader("Q8_0", variant=LinearVariant.from_key(winner)) in sources
    assert np.sum((got - want) ** 2) / np.sum(want ** 2) <= 1e-10

    monkeypatch.setenv(tune.ENV_TUNE, "0")  # the cache is not read
    assert LLM(path, backend="gpu").backend.linear_choice.sources["tuned"] == 0
    monkeypatch.delenv(tune.ENV_TUNE)
    tune.cache_path(info).write_text("{")  # corrupt: a warning, the heuristic, the same logits
    with pytest.warns(RuntimeWarning, match="ignoring the tuning cache"):
        llm = LLM(path, backend="gpu")
    assert llm.backend.linear_choice.sources["tuned"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.sum((llm.logits(ids) - want) ** 2) / np.sum(want ** 2) <= 1e-10


@pytest.mark.gpu
def test_tuning_on_first_use(cache_dir, monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import write_tiny_model

    from wgpu_llm import LLM
    from wgpu_llm.gguf_file import GGUFFile

    path = write_tiny_model(tmp_path / "llama-q4.gguf", "llama", "Q4_0", n_layer=1)
    monkeypatch.setenv(tune.ENV_TUNE, "auto")
    llm = LLM(path, backend="gpu")  # builds the decode step: its linear shapes get tuned and cached
    assert llm.backend.linear_choice.sources == {"tuned": sum(tune.model_cases(GGUFFile(path)).values()),
                                                 "heuristic": 0}
    cached = tune.read_cache(tune.cache_path(llm.backend.rt.info))
    assert set(cached) == set(tune.model_cases(GGUFFile(path)))
    monkeypatch.delenv(tune.ENV_TUNE)  # the default: the cache is read, nothing tuned
    again = LLM(path, backend="gpu").backend.linear_choice
    assert again.sources["tuned"] > 0 and again.tuned == cached


# small tile shapes that compile in a moment on a software adapter (its own big ones take seconds)
CHEAP_TILES = [Tiles(16, 32, 16, 4, 4), Tiles(8, 16, 8, 4, 4), Tiles(16, 16, 8, 4, 4)]


@pytest.mark.gpu
def test_tiny_mat_mat_tuning_run(rt, cache_dir, monkeypatch):
    case = LinearCase("Q8_0", 40, 64, 13)
    assert case.tiled
    monkeypatch.setattr(tune, "candidates", lambda caps, c, quick=False: CHEAP_TILES)
    (res,) = tune.tune(rt, [case], quick=True, rounds=3, sample_s=0.002)
    keys = [t.key for t in CHEAP_TILES]
    assert sorted(res.samples) == sorted(keys) and res.winner in keys
    assert all(t > 0 and np.isfinite(t) for ts in res.samples.values() for t in ts)
    # the lowest median of those timed every round (a dropped one's two samples may since have
    # become lower than the others' three)
    assert res.median(res.winner) == min(res.median(k) for k in keys if k not in res.dropped)
    assert tune.read_cache(tune.cache_path(rt.info)) == {case: res.winner}


@pytest.mark.gpu
def test_compiled_steps_dispatch_the_tuned_choices(rt, adapter, cache_dir, tmp_path):
    """Cache a winner no heuristic picks for every linear shape of a model, decode (mat-vec) and
    prefill (tiled mat-mat): the compiled steps' linear kernels are exactly those, and the logits
    still match the numpy backend's."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import write_tiny_model

    from cpu_fallback.backend import CpuBackend
    from wgpu_llm.gguf_file import GGUFFile
    from wgpu_llm.gpu.backend import GpuBackend
    from wgpu_llm.models import architecture

    gf = GGUFFile(write_tiny_model(tmp_path / "llama-q8.gguf", "llama", "Q8_0", n_layer=1, tied_output=False))
    n = 13
    variant = LinearVariant.from_key("shared-wg32-r2" if rt.caps.info.is_software else "row-wg16-r16")
    tiles = CHEAP_TILES[0]
    cases = tune.model_cases(gf, (1, n), rt.caps.max_binding)
    assert {c.tiled for c in cases} == {False, True}
    for c in cases:
        assert tune.heuristic(rt.caps, c).key not in (variant.key, tiles.key)
    tune.write_cache(tune.cache_path(rt.info), rt.info,
                     [_result(c, {tiles.key if c.tiled else variant.key: 1e-5}) for c in cases])

    gpu = GpuBackend(gf, 64, adapter)
    arch = architecture(gf)
    full, last = arch.build_graph(gf, all_logits=True), arch.build_graph(gf, all_logits=False)
    prefill, decode = gpu.compile(full, n), gpu.compile(last, 1)
    assert gpu.linear_choice.sources["heuristic"] == 0 and gpu.linear_choice.sources["tuned"] > 0
    types = {gf.tensor(w).type_name for op in full.ops if op.kind == "linear" for w in op.weights}
    mat_mat = {matmul.matmul_shader(t, tiles, glu) for t in types for glu in ("", "silu")}
    mat_vec = {quant.linear_shader(t, variant=variant, glu=glu, norm=norm) for t in types
               for glu, norm in (("", ""), ("silu", ""), ("", "rms"))}
    pre = [k for k in prefill._kernels if ": matmul " in k.label or ": linear " in k.label]
    dec = [k for k in decode._kernels if ": normed linear " in k.label or ": linear " in k.label]
    assert len(pre) == len(dec) == sum(cases.values()) // 2  # every linear of a step, one kind per step
    assert all(k.source in mat_mat for k in pre), [k.label for k in pre if k.source not in mat_mat]
    assert all(k.source in mat_vec for k in dec), [k.label for k in dec if k.source not in mat_vec]

    cpu = CpuBackend(gf, 64)
    ids = np.random.default_rng(3).integers(0, gf.tensor("token_embd.weight").shape[0], n + 1)
    for step_gpu, step_cpu, chunk, pos0 in ((prefill, cpu.compile(full, n), ids[:n], 0),
                                            (decode, cpu.compile(last, 1), ids[n:], n)):
        want, got = step_cpu(chunk, pos0), step_gpu(chunk, pos0)
        assert np.all(np.isfinite(got)) and np.sum((got - want) ** 2) / np.sum(want ** 2) <= 1e-10
