"""Kernel-variant choice per adapter and the tuning pass (wgpu_llm/gpu/tune.py).

- The heuristic choice for GPU vendors and CPU-type adapters (fake adapters, no GPU needed).
- The tuning cache: file name per adapter identity, merge on write, a corrupt file or entry
  ignored with a warning, the nearest tuned shape standing in for an untuned one.
- On a real adapter (lavapipe is enough): a tiny tuning run, and a backend that then compiles
  its linears with the cached winners (and not with WGPU_LLM_TUNE=0), giving the same logits.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import numpy as np
import pytest

from wgpu_llm.gpu import kernels as K
from wgpu_llm.gpu import quant, tune
from wgpu_llm.gpu.device import AdapterInfo
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
    tune.write_cache(path, info, [_result(a, {"subgroup-wg64-r2": 1e-5}), _result(c, {"shared-wg64-r4": 1e-4})])
    assert tune.read_cache(path) == {a: "subgroup-wg64-r2", b: "subgroup-wg64-r4", c: "shared-wg64-r4"}
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
    bad = [{**good, "winner": "warp-drive-9"}, {**good, "type": "Q9_9"}, {**good, "cols": 100}, {"type": "Q4_K"}, 7]
    path.write_text(json.dumps({"format": tune.CACHE_FORMAT, "linear": [good, *bad]}))
    with pytest.warns(RuntimeWarning, match="ignoring 5 malformed entries"):
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
        assert res.median(res.winner) <= min(res.median(k) for k in keys)
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
