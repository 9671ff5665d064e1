"""Every kernel variant the backend can choose runs here, against numpy, on whatever adapter the
machine has: the variants other adapters would choose (wgpu_llm.gpu.variants) included.

The parity tests are parametrised by the registry, so a variant the registry lists cannot go
untested; test_registry_holds_every_choice makes sure the registry lists every variant the
choosers pick on a wider range of adapters and shapes than it asks them about.
"""

import itertools

import pytest

from test_gpu_flash_attention import run_case
from test_gpu_kernels import cfg  # noqa: F401  (a fixture)
from test_gpu_matmul import CASES as MATMUL_CASES
from test_gpu_matmul import check as check_matmul
from test_gpu_matmul import check_f16 as check_matmul_f16
from test_gpu_split_attention import check_attention_variant
from test_kv_cache_f16 import check_f16_attention_variant, check_f16_flash
from test_gpu_quant import LINEAR_CASES, check_linear, gpu  # noqa: F401  (gpu is a fixture)
from wgpu_llm.gpu import kernels as K
from wgpu_llm.gpu import matmul, variants
from wgpu_llm.gpu.attention import choose_flash_tiles

REGISTRY = variants.chosen()


def params(family: str):
    return [pytest.param(c.variant, id=k) for k, c in REGISTRY[family].items()]


def test_registry_holds_every_choice(monkeypatch):
    """Adapters of every subgroup size and limit, every token count up to 600, every head size:
    the choosers pick nothing the registry (a few adapters, a few shapes) does not list."""
    monkeypatch.delenv("WGPU_LLM_FORCE_HARDWARE_KERNELS", raising=False)
    adapters = [variants.Adapter(f"{'software' if sw else 'GPU'} sg{sg} inv{inv} shared{shared}", sw, sg, inv, shared)
                for sw, sg, inv, shared in itertools.product((True, False), (0, 4, 8, 16, 32, 64, 128),
                                                             (256, 1024), (16384, 32768, 65536))
                if not (sw and sg > 16)]  # a CPU's SIMD lanes: 4 to 16
    wide = variants.Shapes(rows=(1, 31, 32, 33, 255, 256, 257, 1024, 4096, 262144), tokens=tuple(range(1, 601)),
                           head_dims=tuple(range(4, 516, 4)), contexts=(1, 255, 256, 257, 512, 513, 4096, 1 << 20))
    found = variants.chosen(adapters, wide)
    for family in variants.FAMILIES:
        missing = set(found[family]) - set(REGISTRY[family])
        assert not missing, f"{family}: chosen but not in the registry (add its adapter or shape): {missing}"


def test_registry_follows_the_choosers():
    """The registry's adapters get what the choosers give them (it is not a list of its own)."""
    lavapipe = variants.ADAPTERS[0]
    assert K.linear_variant(K.choose_config(lavapipe), "Q4_K", 4096, 1024, 1).key in REGISTRY["mat-vec"]
    assert lavapipe.name in REGISTRY["mat-vec"]["row-wg8-r64-b8"].adapters
    assert matmul.choose_tiles(lavapipe, 70).key in REGISTRY["mat-mat tiles"]
    assert lavapipe.name in REGISTRY["mat-mat tiles"][matmul.choose_tiles(lavapipe, 70, f16=True).key].adapters
    no_f16 = next(a for a in variants.ADAPTERS if not a.shader_f16)  # activations="f16" gets f32 tiles there
    assert not any(no_f16.name in c.adapters for c in REGISTRY["mat-mat tiles"].values() if c.variant.f16)
    f16_tiles = {k for k, c in REGISTRY["mat-mat tiles"].items() if c.variant.f16}
    assert f16_tiles == {k + "-f16" for k, c in REGISTRY["mat-mat tiles"].items()
                         if not c.variant.f16 and any(a != no_f16.name for a in c.adapters)}
    assert variants.key(choose_flash_tiles(lavapipe, 64)) in REGISTRY["flash tiles"]
    assert "GPU, subgroups of 32" in REGISTRY["mat-vec"]["subgroup-wg64-r4"].adapters
    assert REGISTRY["decode attention"]["one-workgroup"].adapters[0] == lavapipe.name
    assert "GPU, subgroups of 32" in REGISTRY["decode attention"]["split-kv"].adapters
    assert "GPU, subgroups of 32" in REGISTRY["decode attention"]["split-kv-f16-cache"].adapters
    assert lavapipe.name in REGISTRY["decode attention"]["one-workgroup-f16-cache"].adapters  # asked for
    assert set(REGISTRY["kv cache"]) == {"kv-cache-f32", "kv-cache-f16"}
    for family in variants.FAMILIES:  # every adapter chooses something in every family
        named = {a for c in REGISTRY[family].values() for a in c.adapters}
        assert named == {a.name for a in variants.ADAPTERS}, family


@pytest.mark.gpu
@pytest.mark.parametrize("variant", params("mat-vec"))
def test_every_mat_vec_variant(gpu, variant):  # noqa: F811
    if variant.needs_subgroups and not gpu.subgroup_size:
        pytest.skip("this adapter has no subgroups")
    for type_name in ("Q4_K", "F16"):  # 256-column steps, 1 token per pass; 8-column steps, up to 4
        for case in (LINEAR_CASES[1], LINEAR_CASES[3]):  # one token; 17 tokens, strided, offset
            check_linear(gpu, type_name, *case, variant=variant)


@pytest.mark.gpu
@pytest.mark.parametrize("tiles", params("mat-mat tiles"))
def test_every_mat_mat_tiles(gpu, tiles):  # noqa: F811
    if tiles.f16:  # against the numpy twin of f16 staging, and the f32 kernel (weights of a model's range)
        if "shader-f16" not in gpu.device.features:
            pytest.skip("this adapter has no shader-f16")
        check_matmul_f16(gpu, "Q4_K", *MATMUL_CASES[2], tiles=tiles, seed=3)
        return
    check_matmul(gpu, "Q4_K", *MATMUL_CASES[2], tiles=tiles, seed=3)  # 70 tokens: several token tiles


@pytest.mark.gpu
@pytest.mark.parametrize("tiles", params("flash tiles"))
def test_every_flash_tiles(rt, cfg, tiles):  # noqa: F811
    run_case(rt, cfg, 33, 20, 4, 1, 256, 0, tiles=tiles, seed=4)
    run_case(rt, cfg, 70, 0, 9, 3, 64, 16, tiles=tiles, seed=5)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", params("decode attention"))
def test_every_decode_attention(rt, cfg, variant):  # noqa: F811
    if variant.kv_type == "f16":
        check_f16_attention_variant(rt, cfg, variant)
    else:
        check_attention_variant(rt, cfg, variant)


@pytest.mark.gpu
@pytest.mark.parametrize("cache", params("kv cache"))
def test_every_kv_cache(rt, cfg, cache):  # noqa: F811
    """The prefill kernel over each cache type (decode attention's variants carry theirs)."""
    if cache.kv_type == "f16":
        check_f16_flash(rt, cfg)
    else:
        run_case(rt, cfg, 33, 20, 4, 1, 256, 0, seed=8)
