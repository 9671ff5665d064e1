"""What each adapter gets, decided on the host (no GPU needed: fake adapters).

- WGPU_LLM_FORCE_HARDWARE_KERNELS=1 gives a software adapter the choices of a hardware GPU: the
  subgroup / shared mat-vec kinds, the hardware mat-mat tiles, the default flash-attention tiles,
  decode attention split over long contexts,
  and a tuning cache file of its own; a bad value is refused naming the variable.
- Every subgroup size a GPU may have (8 to 128) gives valid variants and shaders on both kinds of
  adapter (the kernels read the size at run time; test_gpu_quant runs the subgroup reduction
  with each width).
- The binding limit every size decision uses: min(max storage binding, max buffer), lowered by
  WGPU_LLM_MAX_BINDING_BYTES; a bad override is refused naming the variable.
"""

from __future__ import annotations

import dataclasses

import pytest
from test_gpu_tune import fake_caps

from wgpu_llm.gpu import attention, device, matmul, quant, tune
from wgpu_llm.gpu import kernels as K

LAVAPIPE = ("llvmpipe", "llvmpipe (LLVM 15.0.6, 256 bits)")
SHAPES = [(576, 576, 1), (49152, 576, 1), (1536, 576, 4), (192, 576, 1)]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (device.ENV_FORCE_HARDWARE, device.ENV_MAX_BINDING, matmul.ENV_PREFILL, tune.ENV_TUNE):
        monkeypatch.delenv(name, raising=False)


def choices(caps) -> dict:
    cfg = K.choose_config(caps)
    return {"matvec": {K.linear_variant(cfg, "Q4_1", r, c, n).kind for r, c, n in SHAPES},
            "tiles": [matmul.choose_tiles(caps, n) for n in (16, 32, 64, 512)],
            "flash": attention.choose_flash_tiles(caps, 64),
            "decode attention": [K.attention_variant(cfg, n_ctx, 0).splits for n_ctx in (64, 2048)]}


def test_forced_hardware_kernels_on_a_software_adapter(monkeypatch):
    # lavapipe's own workgroup-memory limit, which the software flash-attention tiles need
    lavapipe = dataclasses.replace(fake_caps(*LAVAPIPE, 8, software=True), max_workgroup_storage=32768)
    h100 = fake_caps()
    software = choices(lavapipe)
    assert software["matvec"] == {"row"}
    assert all(t.tm >= 16 for t in software["tiles"])  # the large register tiles
    assert software["flash"] == attention.SOFTWARE_TILES
    assert software["decode attention"] == [1, 1]  # one workgroup per head
    monkeypatch.setenv(device.ENV_FORCE_HARDWARE, "1")
    forced = choices(lavapipe)
    assert forced["matvec"] == {"subgroup"}
    assert forced["tiles"] == [matmul._HARDWARE_TILES[b] for b in (16, 32, 64, 64)]
    assert forced["flash"] == attention.FlashTiles()
    assert forced["decode attention"] == [1, 2048 // K.SPLIT_KEYS]  # split over long contexts
    assert forced == choices(dataclasses.replace(lavapipe, info=dataclasses.replace(lavapipe.info, is_software=False)))
    assert choices(h100) == choices(fake_caps())  # hardware adapters: nothing changes
    no_subgroups = fake_caps("Google", "SwiftShader Device (Subzero)", 0, software=True)
    assert choices(no_subgroups)["matvec"] == {"shared"}
    # the tuning pass times the same families, and keeps its winners in a file of their own
    case = tune.LinearCase("Q4_1", 576, 576)
    assert all(v.kind != "row" or v.workgroup_size == 64 for v in tune.candidates(lavapipe, case))
    forced_path = tune.cache_path(lavapipe.info)
    monkeypatch.setenv(device.ENV_FORCE_HARDWARE, "0")
    assert choices(lavapipe) == software and tune.cache_path(lavapipe.info) != forced_path
    assert tune.cache_path(h100.info) == tune.cache_path(fake_caps().info)


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_force_switch_refuses_other_values(monkeypatch, value):
    monkeypatch.setenv(device.ENV_FORCE_HARDWARE, value)
    with pytest.raises(ValueError, match=f"WGPU_LLM_FORCE_HARDWARE_KERNELS={value!r}: expected 1"):
        K.choose_config(fake_caps(*LAVAPIPE, 8, software=True))


@pytest.mark.parametrize("size", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("software", [True, False])
def test_every_subgroup_size_gives_valid_kernels(monkeypatch, size, software):
    """Variants, tiles and shaders for a device of each subgroup size (the subgroup kind for
    hardware; lanes sharing activations only in sizes the row kind and tiles can take)."""
    caps = fake_caps(*LAVAPIPE, size, software=True) if software else fake_caps(subgroup_size=size)
    cfg = K.choose_config(caps)
    for rows, cols, n in SHAPES:
        v = K.linear_variant(cfg, "Q8_0", rows, cols, n)
        assert v.kind == ("row" if software else "subgroup")
        assert v.x_broadcast in ((size,) if size <= 32 and software else (0,))
        assert "fn main" in quant.linear_shader("Q8_0", variant=v)
    for n in (16, 64, 512):
        t = matmul.choose_tiles(caps, n)
        assert t.fits(caps.max_invocations, caps.max_workgroup_storage)
        assert t.sg in ((0, size) if software else (0,)) and (not t.sg or t.tm % t.sg == 0)
        assert "fn main" in matmul.matmul_shader("Q8_0", t)
    case = tune.LinearCase("Q8_0", 576, 576)
    assert all(not v.x_broadcast or v.x_broadcast == size for v in tune.candidates(caps, case))


def test_binding_limit(monkeypatch):
    assert device.binding_limit(1 << 31, 1 << 28) == 1 << 28  # a binding is no larger than a buffer
    assert device.binding_limit(1 << 27, (1 << 31) - 1) == 1 << 27
    # in-shader u32 element offsets stay below 2^30 whatever a driver reports
    assert device.binding_limit(1 << 36, 1 << 40) == device.MAX_INDEXED_BINDING < 1 << 32
    monkeypatch.setenv(device.ENV_MAX_BINDING, str(16 << 20))
    assert device.binding_limit(1 << 27, (1 << 31) - 1) == 16 << 20
    assert device.binding_limit(1 << 20, (1 << 31) - 1) == 1 << 20  # the override only lowers it
    for bad in ("16M", "-4096", "4095", "4098", "1.5e6"):
        monkeypatch.setenv(device.ENV_MAX_BINDING, bad)
        with pytest.raises(ValueError, match=f"WGPU_LLM_MAX_BINDING_BYTES={bad!r}: expected a byte count"):
            device.binding_limit(1 << 27, 1 << 31)


def test_subgroup_sizes_under_either_key_name():
    """wgpu-py 0.32 names the adapter-info keys "stackgroup_min_size" / "_max_size"; the spec and
    later versions "subgroup_..."."""
    assert device._subgroup_sizes({"stackgroup_min_size": 4, "stackgroup_max_size": 128}) == (4, 128)
    assert device._subgroup_sizes({"subgroup_min_size": 32, "subgroup_max_size": 64,
                                   "stackgroup_min_size": 4, "stackgroup_max_size": 128}) == (32, 64)
    assert device._subgroup_sizes({"vendor": "x"}) is None
