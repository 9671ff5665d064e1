"""Every kernel variant the backend can choose without tuning, and on which adapters it does.

The choices are made in a few places -- kernels.linear_variant (the mat-vec kind, workgroup,
rows and tokens per pass), matmul.choose_tiles (the prefill mat-mat's tiles, with f32 or -- for
activations="f16" on an adapter with shader-f16 -- f16 staged tiles), attention.
choose_flash_tiles (the flash-attention tiles), kernels.attention_variant (decode attention in one
workgroup per head or split over the context, over an f32 or f16 cache), the KV cache type
(kernels.auto_kv_type for "auto"; "f16" / "f32" asked for on any adapter) -- from what the adapter
is: software or not
(WGPU_LLM_FORCE_HARDWARE_KERNELS=1 makes a software one choose like a GPU), its subgroup size
and its limits. A test machine has one adapter, so most of those choices never run there by
themselves. `chosen()` asks the choosers for every adapter in ADAPTERS (described, not real) and
every shape in SHAPES, so a test can run each variant on the adapter it has (tests/
test_gpu_variants.py) and `wgpu-llm devices --variants` can list them.

Tuned winners (tune.py, `wgpu-llm tune`) are out of this list: they come from tune.candidates,
a wider set that only a tuning run on an adapter narrows down.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from wgpu_llm.backends import ACTIVATIONS, KV_CACHES

from . import kernels as K
from . import matmul, quant
from .attention import FlashTiles, choose_flash_tiles

FAMILIES = ("mat-vec", "mat-mat tiles", "flash tiles", "decode attention", "kv cache")


@dataclass(frozen=True)
class Adapter:
    """What the choosers read of an adapter (the fields of runtime.Caps they use)."""

    name: str
    software: bool
    subgroup_size: int  # 0: no subgroups
    max_invocations: int = 256
    max_workgroup_storage: int = 16384
    max_per_dim: int = 65535
    shader_f16: bool = True

    @property
    def subgroups(self) -> bool:
        return self.subgroup_size > 0

    @property
    def info(self):  # device.software_kernels reads is_software, kernels.auto_kv_type shader_f16 too
        return SimpleNamespace(is_software=self.software, shader_f16=self.shader_f16)


@dataclass(frozen=True)
class KvCache:
    """A KV cache element type, as attention.wgsl and flash_attention.wgsl read and write it."""

    kv_type: str

    @property
    def key(self) -> str:
        return f"kv-cache-{self.kv_type}"


ADAPTERS = (
    Adapter("software, subgroups of 8 (lavapipe, 256-bit SIMD)", True, 8, 1024, 32768),
    Adapter("software, subgroups of 16 (lavapipe, 512-bit SIMD)", True, 16, 1024, 32768),
    Adapter("software, subgroups of 4", True, 4, 1024, 32768),
    Adapter("software, no subgroups", True, 0, 1024, 32768),
    Adapter("software, no subgroups, WebGPU's default limits", True, 0, 256, 16384),
    Adapter("GPU, subgroups of 32", False, 32, 1024, 49152),
    Adapter("GPU, subgroups of 64", False, 64, 1024, 65536),
    Adapter("GPU, no subgroups, WebGPU's default limits", False, 0, 256, 16384),
    Adapter("GPU, subgroups of 32, no shader-f16", False, 32, 1024, 49152, shader_f16=False),
)


@dataclass(frozen=True)
class Shapes:
    """The shapes the choices depend on: weight rows below and above the row kind's 8-rows
    threshold, token counts on every side of the tile and mat-mat thresholds, head sizes, context
    sizes on both sides of the split attention's threshold."""

    types: tuple[str, ...] = quant.SUPPORTED_TYPES
    rows: tuple[int, ...] = (32, 255, 256, 4096, 262144)
    tokens: tuple[int, ...] = (1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 512)
    head_dims: tuple[int, ...] = (32, 64, 80, 128, 256)
    contexts: tuple[int, ...] = (64, 256, 257, 2048, 131072)


SHAPES = Shapes()


@dataclass
class Choice:
    variant: object  # a quant.LinearVariant, matmul.Tiles, attention.FlashTiles, kernels.AttentionVariant or KvCache
    adapters: list[str]  # the names of the ADAPTERS that choose it


def chosen(adapters=ADAPTERS, shapes: Shapes = SHAPES) -> dict[str, dict[str, Choice]]:
    """family -> variant key -> Choice, for every family in FAMILIES, in the order first chosen.
    Mat-vec variants are for decode steps and for prefill steps below matmul.MIN_TILED_TOKENS."""
    out: dict[str, dict[str, Choice]] = {f: {} for f in FAMILIES}

    def note(family: str, variant, adapter: Adapter) -> None:
        choice = out[family].setdefault(key(variant), Choice(variant, []))
        if adapter.name not in choice.adapters:
            choice.adapters.append(adapter.name)

    for a in adapters:
        cfg = K.choose_config(a)
        for n in shapes.tokens:
            if n < matmul.MIN_TILED_TOKENS:
                for type_name in shapes.types:
                    for rows in shapes.rows:
                        note("mat-vec", K.linear_variant(cfg, type_name, rows, 4096, n), a)
            if n > 1:  # activations="f16" gets f16 tiles where the adapter has shader-f16, else the f32 ones
                for activations in ACTIVATIONS:
                    note("mat-mat tiles", matmul.choose_tiles(a, n, f16=activations == "f16" and a.shader_f16), a)
        for head_dim in shapes.head_dims:
            note("flash tiles", choose_flash_tiles(a, head_dim), a)
        for choice in KV_CACHES:
            kv_type = K.auto_kv_type(a.info) if choice == "auto" else choice
            note("kv cache", KvCache(kv_type), a)
            for n_ctx in shapes.contexts:
                note("decode attention", K.attention_variant(cfg, n_ctx, 0, kv_type), a)
    return out


def key(variant) -> str:
    """The variant's name: LinearVariant, Tiles and AttentionVariant have their own (LinearVariant's
    and Tiles' are the tuning cache's keys); flash-attention tiles: bq x bkv, threads, scores per thread, head dims per score chunk."""
    if isinstance(variant, FlashTiles):
        return f"flash-{variant.bq}x{variant.bkv}-wg{variant.wg}-s{variant.sq}x{variant.sk}-dc{variant.dc}"
    return variant.key


__all__ = ["ADAPTERS", "Adapter", "Choice", "FAMILIES", "KvCache", "SHAPES", "Shapes", "chosen", "key"]
