"""Flash-attention style causal attention for prefill chunks (shaders/flash_attention.wgsl).

`flash_attention` takes the same arguments as `kernels.attention` (the one-query-per-workgroup
kernel that decode keeps, or its split form kernels.attention_split) and has the same semantics: it stores the step's k, v rows into the
caches at pos0.., then runs causal (optionally windowed) GQA attention over the cache. A
workgroup takes a block of query slots of one KV head (all heads of a GQA group share the K / V
tiles), walks the visible keys tile by tile with an online softmax and keeps its outputs in
registers; the score matrix never exists beyond one BQ x BKV tile in workgroup memory.
`choose_flash_tiles` sizes the tiles for a head size within the device's limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import kernels as K


@dataclass(frozen=True)
class FlashTiles:
    """bq query slots x bkv keys per tile, wg threads; the rest follows from the head size."""

    bq: int = 16
    bkv: int = 32
    wg: int = 64
    sq: int = 2  # scores per thread: sq slots x sk keys; (bq / sq) * (bkv / sk) == wg
    sk: int = 4
    dc: int = 64  # head dims per score chunk

    def __post_init__(self):
        if (self.bq // self.sq) * (self.bkv // self.sk) != self.wg or self.bq % self.sq or self.bkv % self.sk:
            raise ValueError(f"{self}: (bq / sq) * (bkv / sk) must equal wg")
        if self.dc % 4 or self.dc < 4:
            raise ValueError(f"{self}: dc must be a positive multiple of 4")

    def layout(self, head_dim: int) -> dict[str, int]:
        """The shader constants for this head size (head_dim a multiple of 4)."""
        if head_dim % 4 or head_dim <= 0:
            raise ValueError(f"flash attention needs head_dim a positive multiple of 4, got {head_dim}")
        hd4 = head_dim // 4
        dc4 = min(self.dc // 4, hd4)
        best = None
        oq = 1
        while oq <= self.bq:  # output sub-tile: oq slots x od4 vec4s, fewest loads per multiply-add
            noq = self.bq // oq
            if self.bq % oq == 0 and self.wg % noq == 0:
                nod = self.wg // noq
                od4 = -(-hd4 // nod)
                if nod <= hd4 and (best is None or oq + od4 < best[0]):
                    best = (oq + od4, oq, od4, nod)
            oq *= 2
        if best is None:  # more threads than slots x dim vec4s: some threads idle along dims
            oq = max(1, self.bq // self.wg)
            best = (0, oq, 1, self.wg // (self.bq // oq))
        _, oq, od4, nod = best
        qk = (self.bq + self.bkv) * dc4
        vk = self.bkv
        while vk > 1 and vk * hd4 > qk:
            vk //= 2
        return {"HD4": hd4, "BQ": self.bq, "BKV": self.bkv, "DC4": dc4, "VK": vk, "WG": self.wg, "SQ": self.sq,
                "SK": self.sk, "OQ": oq, "OD4": od4, "NOD": nod, "TILE": max(qk, vk * hd4)}

    def shared_bytes(self, head_dim: int) -> int:
        c = self.layout(head_dim)
        return 16 * c["TILE"] + 4 * (self.bq * self.bkv + 3 * self.bq)


# software adapters (every workgroup-memory load is a per-lane loop there) want the largest
# per-thread tiles: measured on lavapipe, 128 queries x 9 heads of 64 dims took 0.35x the time of
# the default tiles, 0.16x that of the one-query-per-workgroup kernel
SOFTWARE_TILES = FlashTiles(32, 32, 16, 8, 8, 64)


def choose_flash_tiles(caps, head_dim: int) -> FlashTiles:
    """Tiles for this head size that fit the device's workgroup memory and invocation limits
    (a software adapter's first unless WGPU_LLM_FORCE_HARDWARE_KERNELS=1)."""
    from .device import software_kernels

    max_shared = int(getattr(caps, "max_workgroup_storage", 16384))
    max_inv = int(getattr(caps, "max_invocations", 256))
    software = software_kernels(getattr(caps, "info", None))
    first = [SOFTWARE_TILES] if software else []
    for t in (*first, FlashTiles(), FlashTiles(16, 16, 32, 2, 4, 32), FlashTiles(8, 16, 16, 2, 4, 16)):
        if t.wg <= max_inv and t.shared_bytes(head_dim) <= max_shared:
            return t
    raise ValueError(f"no flash-attention tiles fit head_dim {head_dim} in {max_shared} bytes of workgroup memory")


def supported(head_dim: int) -> bool:
    return head_dim > 0 and head_dim % 4 == 0


def flash_attention(cfg: K.KernelConfig, rows: int, n_head: int, n_kv_head: int, head_dim: int, scale: float,
                    window: int, q: K.View, k: K.View, v: K.View, k_cache, v_cache, y: K.View,
                    label: str = "flash attention", tiles: FlashTiles = FlashTiles(),
                    softcap: float = 0.0, kv_type: str = "f32") -> K.Kernel:
    """Store the step's k, v rows into the caches at pos0.., then causal (windowed) GQA attention
    of the step's `rows` queries; arguments as kernels.attention (kv_type: the caches' element type)."""
    if n_head % n_kv_head:
        raise ValueError(f"n_head {n_head} is not a multiple of n_kv_head {n_kv_head}")
    K.check_kv_type(kv_type, head_dim, label)
    consts = tiles.layout(head_dim)
    group = n_head // n_kv_head
    params = [("rows", "u32", rows), ("n_head", "u32", n_head), ("group", "u32", group),
              ("kv_width", "u32", n_kv_head * head_dim), ("window", "u32", window), ("scale", "f32", scale),
              ("softcap", "f32", softcap),
              ("q_off", "u32", q.offset), ("q_stride", "u32", q.stride),
              ("k_off", "u32", k.offset), ("k_stride", "u32", k.stride),
              ("v_off", "u32", v.offset), ("v_stride", "u32", v.stride),
              ("y_off", "u32", y.offset), ("y_stride", "u32", y.stride)]
    roles = [K.Role("q", q.buffer), K.Role("k", k.buffer), K.Role("v", v.buffer),
             *K.kv_cache_roles(k_cache, v_cache, kv_type), K.Role("y", y.buffer, write=True)]
    n_blocks = -(-rows * group // tiles.bq)
    return K.build("flash_attention", label, params, roles, K.fold_grid(n_blocks * n_kv_head, cfg.max_per_dim),
                   flags={"KV_F16": kv_type == "f16"}, consts=consts, uses_step=True)


__all__ = ["FlashTiles", "choose_flash_tiles", "flash_attention", "supported"]
