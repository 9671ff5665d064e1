"""Quantized-weight GPU kernels (wgpu_llm/gpu/quant.py) against gguf-py and numpy.

- pack / split_rows: plane layout and row pieces, no GPU needed.
- embed_shader with scale 1 is a dequantizer: bit-identical to gguf.quants.dequantize.
- linear_shader vs float64 numpy x @ dequantize(W).T by NMSE, odd sizes, every kernel variant
  (the GPU kinds with both reductions, the CPU "row" kind with and without shared activations)
  for every type.

The GPU tests run on any wgpu adapter (lavapipe is enough) through a small harness below,
and skip with the reason when there is none.
"""

from __future__ import annotations

import os
import struct
import tempfile

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize
from conftest import no_gpu

from cpu_fallback import ops
from wgpu_llm.gpu import quant
from wgpu_llm.gpu.quant_types import FloatType, WordBlocks

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())  # silences a harmless warning on headless Linux

TYPES = quant.SUPPORTED_TYPES
QUANTIZABLE = ("BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # gguf-py can quantize these
# byte offsets of the f16 fields of each block (they must hold finite values)
F16_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "IQ4_NL": (0,),
              "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_XS": (0,)}
POISON = np.uint32(0x7FC0DEAD)  # a NaN no kernel computes: an element still holding it was not written
LINEAR_NMSE = 5e-4


# ---- random GGUF-valid tensors ----

def block_cols(type_name: str, n_blocks: int) -> int:
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0] * n_blocks


def random_halves(rng, n: int) -> np.ndarray:
    """Small finite f16 values of both signs, with some zeros (+0 and -0), subnormals and large
    values up to the f16 maximum (extreme block scales)."""
    h = (rng.standard_normal(n) * 0.02).astype(np.float16)
    kind = rng.integers(0, 16, n)
    h[kind == 0] = np.float16(0.0)
    h[kind == 1] = np.float16(-0.0)
    h[kind == 2] = (rng.integers(1, 1024, (kind == 2).sum()) * 2.0 ** -24 * rng.choice([-1, 1], (kind == 2).sum())
                    ).astype(np.float16)  # subnormal
    h[kind == 3] = (rng.uniform(1e3, 65504.0, (kind == 3).sum()) * rng.choice([-1, 1], (kind == 3).sum())
                    ).astype(np.float16)
    return h


def random_tensor(type_name: str, rows: int, cols: int, rng, source: str = "random") -> np.ndarray:
    """GGUF bytes (uint8, rows * row_bytes) of a random (rows, cols) tensor.

    source "quantize": gguf-py quantizes random floats (types in QUANTIZABLE); "random": random
    bytes with the f16 fields set to small finite values (any block bytes are then valid).
    """
    qtype = GGMLQuantizationType[type_name]
    if type_name == "F32":
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8).reshape(-1)
    if type_name == "F16":
        values = rng.standard_normal(rows * cols).astype(np.float16)
        values[::7] = random_halves(rng, values[::7].size)
        return values.view(np.uint8)
    if source == "quantize" or type_name == "BF16":
        data = rng.standard_normal((rows, cols)).astype(np.float32)
        data[:, ::5] *= 4.0  # some spread within blocks
        return np.ascontiguousarray(quantize(data, qtype)).view(np.uint8).reshape(-1)
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for offset in F16_FIELDS[type_name]:
        blocks[:, offset:offset + 2] = random_halves(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)


def reference(type_name: str, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.asarray(dequantize(raw, GGMLQuantizationType[type_name]), np.float32).reshape(rows, cols)


def nmse(a: np.ndarray, b: np.ndarray) -> float:
    """sum((a-b)^2) / sum(b^2) in float64; NaN anywhere gives NaN, which fails a <= check."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sum((a - b) ** 2) / np.sum(b * b))


def unpack(w: quant.PackedWeight) -> np.ndarray:
    """Rebuild the GGUF bytes from the planes (the layout documented in quant_dequant.wgsl)."""
    rows, cols, qt = w.rows, w.cols, quant.quant_type(w.type_name)
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[qt.name]]
    nb = cols // block
    planes = [p.view(np.uint8).reshape(rows, -1) for p in w.planes]
    if isinstance(qt, FloatType):
        return np.ascontiguousarray(planes[0][:, :cols * block_bytes]).reshape(-1)
    if isinstance(qt, WordBlocks):
        return planes[0].reshape(-1)
    quants = planes[0].reshape(rows * nb, -1)
    scales = planes[1][:, :2 * nb].reshape(rows * nb, 2)
    parts = [quants, scales] if qt.scale_at else [scales, quants]  # d at the end of a block (Q3_K, Q6_K) or first
    return np.concatenate(parts, axis=1).reshape(-1)


# ---- pack / split_rows (no GPU) ----

@pytest.mark.parametrize("type_name", TYPES)
def test_pack_layout_round_trip(type_name):
    rng = np.random.default_rng(1)
    cols = 77 if type_name in ("F32", "F16", "BF16") else block_cols(type_name, 3)  # odd: padded scale rows
    rows = 5
    raw = random_tensor(type_name, rows, cols, rng)
    w = quant.pack(type_name, raw, rows, cols)
    assert (w.type_name, w.rows, w.cols) == (type_name, rows, cols)
    words = quant.plane_row_words(type_name, cols)
    assert len(w.planes) == len(words)
    for plane, n in zip(w.planes, words):
        assert plane.dtype == np.uint32 and plane.ndim == 1 and plane.size == rows * n
    assert w.nbytes() == 4 * rows * sum(words)
    assert np.array_equal(unpack(w), raw)
    # never expanded to float32: at most the GGUF bytes plus the per-row padding of scales / floats
    assert w.nbytes() <= raw.nbytes + rows * (4 + 8 * GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1])


@pytest.mark.parametrize("type_name", [t for t in TYPES if isinstance(quant.quant_type(t), WordBlocks)])
def test_pack_word_sized_blocks_are_not_copied(type_name):
    cols = block_cols(type_name, 2)
    raw = random_tensor(type_name, 3, cols, np.random.default_rng(2))
    raw.flags.writeable = False  # as from a read-only memory map
    w = quant.pack(type_name, raw, 3, cols)
    assert np.shares_memory(w.planes[0], raw)


def test_pack_rejects_bad_input():
    raw = np.zeros(34 * 2, np.uint8)
    with pytest.raises(ValueError, match=r"IQ2_XXS.*not supported.*Q8_0"):
        quant.pack("IQ2_XXS", raw, 1, 256)
    with pytest.raises(ValueError, match="block size 32"):
        quant.pack("Q8_0", raw, 1, 48)
    with pytest.raises(ValueError, match="needs 102"):
        quant.pack("Q8_0", raw, 3, 32)
    with pytest.raises(ValueError, match="not supported"):
        quant.linear_shader("IQ2_XXS")
    with pytest.raises(ValueError, match="not supported"):
        quant.embed_shader("TQ1_0")


@pytest.mark.parametrize("type_name", ["Q8_0", "Q6_K", "F16"])
def test_split_rows_pieces(type_name):
    rows = 23
    cols = 40 if type_name == "F16" else block_cols(type_name, 3)
    raw = random_tensor(type_name, rows, cols, np.random.default_rng(3))
    w = quant.pack(type_name, raw, rows, cols)
    words = quant.plane_row_words(type_name, cols)
    limit = 4 * max(words) * 9 + 3  # 9 rows fit: 23 rows -> 3 pieces of 8, 8, 7
    pieces = quant.split_rows(w, limit)
    assert [(first, piece.rows) for first, piece in pieces] == [(0, 8), (8, 8), (16, 7)]
    for first, piece in pieces:
        assert (piece.type_name, piece.cols) == (type_name, cols)
        for plane, full, n in zip(piece.planes, w.planes, words):
            assert plane.nbytes <= limit and plane.size == piece.rows * n
            assert np.array_equal(plane, full[first * n:(first + piece.rows) * n])
    assert np.array_equal(np.concatenate([unpack(p) for _, p in pieces]), raw)
    assert quant.split_rows(w, 1 << 20) == [(0, w)]
    with pytest.raises(ValueError, match="binding limit"):
        quant.split_rows(w, 4 * max(words) - 4)


def test_split_rows_gemma_embedding_size():
    # Gemma 3's 262144 x 640 Q8_0 table: 160 MiB of quants -> two pieces under a 128 MiB binding
    rows, cols = 262144, 640
    words = quant.plane_row_words("Q8_0", cols)
    w = quant.PackedWeight("Q8_0", rows, cols, [np.empty(rows * n, np.uint32) for n in words])
    pieces = quant.split_rows(w, 128 << 20)
    assert [(first, p.rows) for first, p in pieces] == [(0, 131072), (131072, 131072)]
    assert all(plane.nbytes <= 128 << 20 for _, p in pieces for plane in p.planes)


@pytest.mark.parametrize("type_name", quant.WIDENS_TO_Q8_0)
def test_widen_to_q8_0_is_lossless(type_name):
    """Random blocks (every bit pattern of the quants) dequantize to the same floats as Q8_0."""
    rows, cols = 13, 96
    raw = random_tensor(type_name, rows, cols, np.random.default_rng(7))
    wide = quant.widen_to_q8_0(type_name, raw)
    assert wide.size == rows * cols // 32 * 34
    assert np.array_equal(reference("Q8_0", wide, rows, cols), reference(type_name, raw, rows, cols))
    with pytest.raises(ValueError, match="cannot be widened"):
        quant.widen_to_q8_0("Q4_1", random_tensor("Q4_1", 1, 32, np.random.default_rng(0)))


def test_stacked_runs():
    def runs(*weights):
        return quant.stacked_runs(list(weights))

    # same type and columns: one run; a different type or width starts a new one
    assert runs(("q", "Q4_K", 64, 256), ("k", "Q4_K", 32, 256), ("v", "Q6_K", 32, 256)) == [
        (["q", "k"], "Q4_K"), (["v"], "Q6_K")]
    assert runs(("a", "F32", 8, 64), ("b", "F32", 8, 32)) == [(["a"], "F32"), (["b"], "F32")]
    # Gemma 3 270M's attention: Q5_0 q and k stacked with a Q8_0 v as Q8_0 (small: widened)
    assert runs(("q", "Q5_0", 1024, 640), ("k", "Q5_0", 256, 640), ("v", "Q8_0", 256, 640)) == [
        (["q", "k", "v"], "Q8_0")]
    assert runs(("q", "Q4_0", 64, 64), ("k", "Q5_0", 64, 64)) == [(["q", "k"], "Q8_0")]
    # no lossless common type (Q4_1 has an offset), or too many widened bytes (a 7B model's q, k)
    assert runs(("q", "Q4_1", 64, 64), ("v", "Q8_0", 64, 64)) == [(["q"], "Q4_1"), (["v"], "Q8_0")]
    assert runs(("q", "Q5_0", 4096, 4096), ("k", "Q5_0", 4096, 4096), ("v", "Q8_0", 4096, 4096)) == [
        (["q", "k"], "Q5_0"), (["v"], "Q8_0")]


def test_dispatch_sizes():
    assert quant.linear_dispatch("Q4_K", 37, 1) == (10, 1, 1)
    assert quant.linear_dispatch("Q4_K", 262144, 1) == (65535, 2, 1)  # folded: 65536 row groups
    gx, gy, gz = quant.linear_dispatch("Q8_0", 37, 17, max_per_dim=4)
    assert gx <= 4 and gy <= 4 and gx * gy * quant.LINEAR_ROWS_PER_WORKGROUP >= 37 and gz >= 1
    row = quant.LinearVariant("row", 8, 64, 8)  # 64 rows per workgroup, 1 token per pass
    assert quant.linear_dispatch("Q8_0", 262144, 1, variant=row) == (4096, 1, 1)
    assert quant.linear_dispatch("Q8_0", 203, 3, variant=row) == (4, 1, 3)
    assert quant.linear_dispatch("Q8_0", 203, 3, variant=quant.LinearVariant("row", 8, 16)) == (13, 1, 3)
    assert quant.linear_dispatch("Q8_0", 203, 3, variant=quant.LinearVariant("row", 8, 16, 8, 4)) == (13, 1, 1)


def test_linear_variant_keys_and_checks():
    for v in [quant.LinearVariant(), quant.LinearVariant("subgroup", 128, 8), quant.LinearVariant("row", 8, 64, 8),
              quant.LinearVariant("row", 32, 32, 4), quant.LinearVariant("row", 16, 128)]:
        assert quant.LinearVariant.from_key(v.key) == v
    assert quant.LinearVariant("row", 8, 64, 8).key == "row-wg8-r64-b8"
    assert quant.LinearVariant("subgroup", 64, 4).needs_subgroups
    assert quant.LinearVariant("row", 8, 8, 8).needs_subgroups and not quant.LinearVariant("row", 8, 8).needs_subgroups
    for bad in ["row-wg8-r12", "row-wg8-r8-b3", "row-wg8-r8-b16", "shared-wg64-r4-b8", "shared-wg64-r32",
                "subgroup-wg48-r4", "tiled-wg64-r4", "row-wg8", "", "row-wg8-r8-x8"]:
        with pytest.raises(ValueError, match="not a linear variant key"):
            quant.LinearVariant.from_key(bad)
    # the default kinds are what linear_shader(workgroup_size=, subgroup_size=) always built
    for t in ("Q4_K", "F16"):
        assert quant.linear_shader(t, subgroup_size=8) == quant.linear_shader(
            t, variant=quant.LinearVariant("subgroup", 64, 4))
        assert quant.linear_shader(t, workgroup_size=16) == quant.linear_shader(
            t, variant=quant.LinearVariant("shared", 16, 4))
    assert quant.embed_dispatch("Q8_0", 640, 3) == (2, 3, 1)
    assert quant.embed_dispatch("F32", 77, 70000) == (1, 65535, 2)


# ---- a small wgpu harness ----

class Gpu:
    """One device; run(shader, uniform, inputs, output, dispatch) -> the output buffer's contents."""

    def __init__(self, wgpu, adapter):
        self.wgpu = wgpu
        self.adapter = adapter
        features = [f for f in ("subgroup", "shader-f16") if f in adapter.features]
        limits = {k: adapter.limits[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size")}
        self.device = adapter.request_device_sync(required_features=features, required_limits=limits)
        self._pipelines = {}
        self.subgroup_size = self._probe_subgroup_size() if "subgroup" in features else 0

    def _pipeline(self, source: str):
        if source not in self._pipelines:
            module = self.device.create_shader_module(code=source)
            self._pipelines[source] = self.device.create_compute_pipeline(
                layout="auto", compute={"module": module, "entry_point": "main"})
        return self._pipelines[source]

    def _buffer(self, data: np.ndarray, extra_usage=0):
        usage = self.wgpu.BufferUsage.STORAGE | self.wgpu.BufferUsage.COPY_DST | extra_usage
        data = np.ascontiguousarray(data)
        if data.nbytes == 0:
            data = np.zeros(1, np.uint32)
        return self.device.create_buffer_with_data(data=data, usage=usage)

    def run(self, source: str, uniform: bytes, inputs: list[np.ndarray], output: np.ndarray,
            planes: list[np.ndarray], dispatch: tuple[int, int, int], after: list[np.ndarray] = ()):
        """Bindings: 0 uniform, 1 the input, 2 the output (read back), 3.. planes, then `after`.
        With `after`: (the output, the `after` buffers as the kernel left them)."""
        wgpu = self.wgpu
        pipeline = self._pipeline(source)
        ubuf = self.device.create_buffer_with_data(data=uniform, usage=wgpu.BufferUsage.UNIFORM)
        out = self._buffer(output, wgpu.BufferUsage.COPY_SRC)
        extra = [self._buffer(a, wgpu.BufferUsage.COPY_SRC) for a in after]
        resources = [ubuf, *[self._buffer(a) for a in inputs], out, *[self._buffer(p) for p in planes], *extra]
        bind_group = self.device.create_bind_group(
            layout=pipeline.get_bind_group_layout(0),
            entries=[{"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                     for i, b in enumerate(resources)])
        encoder = self.device.create_command_encoder()
        compute = encoder.begin_compute_pass()
        compute.set_pipeline(pipeline)
        compute.set_bind_group(0, bind_group)
        compute.dispatch_workgroups(*dispatch)
        compute.end()
        self.device.queue.submit([encoder.finish()])
        result = np.frombuffer(self.device.queue.read_buffer(out), output.dtype).copy()
        if not after:
            return result
        return result, [np.frombuffer(self.device.queue.read_buffer(b), a.dtype).copy() for a, b in zip(after, extra)]

    def _probe_subgroup_size(self) -> int:
        source = """
        @group(0) @binding(0) var<uniform> u: vec4<u32>;
        @group(0) @binding(1) var<storage, read> unused: array<u32>;
        @group(0) @binding(2) var<storage, read_write> out: array<u32>;
        @compute @workgroup_size(64)
        fn main(@builtin(subgroup_size) size: u32) { out[0] = size + unused[0] * u.x; }
        """
        return int(self.run(source, bytes(16), [np.zeros(1, np.uint32)], np.zeros(1, np.uint32), [],
                            (1, 1, 1))[0])


@pytest.fixture(scope="module")
def gpu():
    try:
        import wgpu
    except ImportError as e:
        no_gpu(f"wgpu cannot be loaded: {e}")
    adapters = wgpu.gpu.enumerate_adapters_sync()
    if not adapters:
        no_gpu("no wgpu adapter (no GPU and no software Vulkan such as lavapipe / mesa-vulkan-drivers)")
    # any adapter will do; prefer one with subgroups (both reductions get tested) and not the GL backend
    adapters.sort(key=lambda a: ("subgroup" not in a.features, "OpenGL" in a.summary))
    return Gpu(wgpu, adapters[0])


def linear_variants(gpu_: Gpu) -> list[quant.LinearVariant]:
    """Every kind of linear kernel this device can run, in shapes that reach every code path."""
    V, sg = quant.LinearVariant, gpu_.subgroup_size
    out = [V("shared", 64, 4),  # the GPU kind without subgroups
           V("row", 16, 16, 0, 4),  # CPU kind: 1 row per invocation, 4 tokens per pass, x not shared
           V("row", 8, 32, 0, 2),  # 4 rows per invocation, 2 tokens per pass
           V("row", 8, 64)]  # 8 rows per invocation, 1 token per pass
    if sg:
        out.append(V("subgroup", 64, 4))  # the GPU kind
    if sg in (4, 8, 16, 32):
        lanes = max(8, sg)
        out += [V("row", lanes, 8 * lanes, sg),  # 8 rows per invocation, 1 token per pass, x shared
                V("row", lanes, 4 * lanes, sg, 3),  # 3 tokens per pass (a partial last pass), x shared
                V("row", 4 * lanes, 8 * lanes, sg)]  # several subgroups per workgroup
        other = 4 if sg != 4 else 8  # a size the subgroups do not have: each lane loads all of x
        out.append(V("row", max(8, other), 2 * max(8, other), other))
    return out


def poisoned(n: int) -> np.ndarray:
    return np.full(n, POISON, np.uint32).view(np.float32)


def embed_run(gpu_: Gpu, w: quant.PackedWeight, row_start: int, ids: np.ndarray, y: np.ndarray, y_stride: int,
              scale: float) -> np.ndarray:
    uniform = struct.pack("<5If2I", len(ids), w.rows, w.cols, row_start, y_stride, scale, 0, 0)
    return gpu_.run(quant.embed_shader(w.type_name), uniform, [ids.astype(np.uint32)], y, w.planes,
                    quant.embed_dispatch(w.type_name, w.cols, len(ids)))


# ---- embedding / dequantization ----

EMBED_CASES = [(t, "random") for t in TYPES if t != "BF16"] + [(t, "quantize") for t in QUANTIZABLE]


@pytest.mark.gpu
@pytest.mark.parametrize(("type_name", "source"), EMBED_CASES)
def test_embed_is_bit_exact_dequantizer(gpu, type_name, source):
    rng = np.random.default_rng(10)
    rows = 29
    cols = 77 if type_name in ("F32", "F16", "BF16") else block_cols(type_name, 3)
    raw = random_tensor(type_name, rows, cols, rng, source)
    expected = reference(type_name, raw, rows, cols)
    w = quant.pack(type_name, raw, rows, cols)
    # two pieces, as for a table over the binding limit: each writes only its own tokens
    pieces = quant.split_rows(w, 4 * max(quant.plane_row_words(type_name, cols)) * 16)
    assert len(pieces) == 2
    ids = np.array([0, rows - 1, 14, 15, 3, rows - 1, 0, 27], np.uint32)
    y_stride = cols + 3
    y = poisoned(len(ids) * y_stride)
    for first, piece in pieces:
        y = embed_run(gpu, piece, first, ids, y, y_stride, 1.0)
    y = y.reshape(len(ids), y_stride)
    got, want = y[:, :cols].view(np.uint32), expected[ids].view(np.uint32)
    bad = np.argwhere(got != want)
    assert bad.size == 0, (f"{len(bad)} of {got.size} values differ, first at (token, col) {tuple(bad[0])}: "
                           f"got {y[tuple(bad[0])]!r} want {expected[ids][tuple(bad[0])]!r}")
    assert (y[:, cols:].view(np.uint32) == POISON).all()  # nothing past the row


@pytest.mark.gpu
@pytest.mark.parametrize("type_name", TYPES)
def test_embed_scaled_and_other_tokens_untouched(gpu, type_name):
    rng = np.random.default_rng(11)
    rows = 12
    cols = 40 if type_name in ("F32", "F16", "BF16") else block_cols(type_name, 2)
    raw = random_tensor(type_name, rows, cols, rng)
    w = quant.pack(type_name, raw, rows, cols)
    expected = reference(type_name, raw, rows, cols)
    scale = 25.298221  # sqrt(640), as Gemma scales its embedding
    row_start = 100  # this piece holds table rows 100..111
    ids = np.array([100, 99, 111, 112, 105, 0], np.uint32)
    y = embed_run(gpu, w, row_start, ids, poisoned(len(ids) * cols), cols, scale).reshape(len(ids), cols)
    inside = (ids >= row_start) & (ids < row_start + rows)
    want = ops.embed(expected, ids[inside] - row_start, scale)  # the CPU backend's embedding
    assert nmse(y[inside], want) <= 1e-12  # one f32 multiply on both sides: bit-identical on lavapipe
    assert (y[~inside].view(np.uint32) == POISON).all()


# ---- linear ----

# (rows, n_tokens, y_offset, extra y columns, accumulate, x_stride padding)
LINEAR_CASES = [
    (37, 1, 0, 0, 0, 0),
    (203, 1, 5, 9, 1, 3),
    (37, 3, 2, 4, 1, 0),
    (203, 17, 11, 2, 0, 5),
]


def linear_run(gpu_: Gpu, w: quant.PackedWeight, x: np.ndarray, x_stride: int, y: np.ndarray, y_stride: int,
               y_offset: int, accumulate: int, variant: quant.LinearVariant, dispatch=None) -> np.ndarray:
    n_tokens = x.size // x_stride
    uniform = struct.pack("<8I", n_tokens, w.rows, w.cols, x_stride, y_stride, y_offset, accumulate, 0)
    dispatch = dispatch or quant.linear_dispatch(w.type_name, w.rows, n_tokens, variant=variant)
    return gpu_.run(quant.linear_shader(w.type_name, variant=variant), uniform, [x], y, w.planes, dispatch)


def linear_io(rng, rows: int, cols: int, n_tokens: int, y_offset: int, y_extra: int, accumulate: bool, x_pad: int,
              x_scale: float = 1.0):
    """A linear kernel's x and y as its tests give them: x ~ x_scale N(0, 1) with NaN in each row's
    padding (never to be read), y poisoned but for the output columns `region`, which hold `before`
    where the kernel accumulates. Returns (x, x_stride, y, y_stride, region, before)."""
    x_stride = cols + x_pad
    x = np.full((n_tokens, x_stride), np.nan, np.float32)
    x[:, :cols] = rng.standard_normal((n_tokens, cols)) * x_scale
    y_stride = y_offset + rows + y_extra
    y = poisoned(n_tokens * y_stride).reshape(n_tokens, y_stride)
    region = (slice(None), slice(y_offset, y_offset + rows))
    before = rng.standard_normal((n_tokens, rows)).astype(np.float32)
    if accumulate:
        y[region] = before
    return x, x_stride, y, y_stride, region, before


def assert_only_region_written(y: np.ndarray, region) -> None:
    outside = np.ones(y.shape, bool)
    outside[region] = False
    assert (y[outside].view(np.uint32) == POISON).all(), "wrote outside its output columns"


def check_product(type_name, cols, rows, n_tokens, y_offset, y_extra, accumulate, x_pad, run, seed=0,
                  label="") -> float:
    """y[:, y_offset:][:, :rows] (+)= x @ W.T by `run(w, x, x_stride, y, y_stride, y_offset,
    accumulate)` vs float64 numpy: NaN in x's row padding (never read), y poisoned (every element
    written, nothing outside the piece's columns). Returns the NMSE."""
    rng = np.random.default_rng(seed)
    source = "quantize" if type_name in QUANTIZABLE else "random"
    raw = random_tensor(type_name, rows, cols, rng, source)
    w = quant.pack(type_name, raw, rows, cols)
    weights = reference(type_name, raw, rows, cols).astype(np.float64)
    x, x_stride, y, y_stride, region, before = linear_io(rng, rows, cols, n_tokens, y_offset, y_extra, accumulate, x_pad)
    got = run(w, x.reshape(-1), x_stride, y.reshape(-1), y_stride, y_offset, accumulate).reshape(n_tokens, y_stride)
    want = x[:, :cols].astype(np.float64) @ weights.T + (before if accumulate else 0.0)
    error = nmse(got[region], want)
    assert error <= LINEAR_NMSE, f"{type_name} {label} rows {rows} tokens {n_tokens}: NMSE {error:.3g}"
    assert_only_region_written(got, region)
    return error


def check_linear(gpu_, type_name, rows, n_tokens, y_offset, y_extra, accumulate, x_pad, variant,
                 seed=0, dispatch=None) -> float:
    # more 8-weight units per row than threads per workgroup, and not a multiple of it
    cols = 653 if type_name in ("F32", "F16", "BF16") else block_cols(type_name, 3 if block_cols(type_name, 1) == 256 else 21)

    def run(w, x, x_stride, y, y_stride, y_offset_, accumulate_):
        return linear_run(gpu_, w, x, x_stride, y, y_stride, y_offset_, accumulate_, variant, dispatch)
    return check_product(type_name, cols, rows, n_tokens, y_offset, y_extra, accumulate, x_pad, run, seed,
                         variant.key)


@pytest.mark.gpu
@pytest.mark.parametrize("type_name", TYPES)
def test_linear_matches_numpy(gpu, type_name):
    for variant in linear_variants(gpu):
        for case in LINEAR_CASES:
            error = check_linear(gpu, type_name, *case, variant=variant)
            assert error <= 1e-10, f"{case} {variant.key}: NMSE {error:.3g}"


@pytest.mark.gpu
def test_linear_any_grid(gpu):
    # folded row groups (x * y covers more groups than rows need) and token tiles in any z count
    for variant in linear_variants(gpu):
        groups = -(-37 // variant.rows)
        fold = next(n for n in range(2, groups + 2) if n * n >= groups)  # an x * y grid of at least 2 x 2
        check_linear(gpu, "Q4_K", 37, 17, 1, 0, 0, 0, variant,
                     dispatch=quant.linear_dispatch("Q4_K", 37, 17, max_per_dim=fold, variant=variant))
        check_linear(gpu, "Q8_0", 37, 17, 0, 0, 1, 0, variant, dispatch=(40, 1, 2))
        check_linear(gpu, "Q6_K", 37, 6, 0, 0, 0, 0, variant, dispatch=(40, 1, 9))


def glu_case(type_name: str, rows: int, n_tokens: int, x_pad: int, rng):
    """A weight and gate | up input rows (NaN padding past them): (packed weight, x, x_stride,
    float64 weights, the glu'd input per activation)."""
    cols = 653 if type_name in ("F32", "F16", "BF16") else block_cols(type_name, 3 if block_cols(type_name, 1) == 256 else 21)
    raw = random_tensor(type_name, rows, cols, rng, "quantize" if type_name in QUANTIZABLE else "random")
    w = quant.pack(type_name, raw, rows, cols)
    x_stride = 2 * cols + x_pad
    x = np.full((n_tokens, x_stride), np.nan, np.float32)
    x[:, :2 * cols] = rng.standard_normal((n_tokens, 2 * cols)) * 2
    gated = {act: ops.glu(x[:, :2 * cols], act).astype(np.float64) for act in quant.GLU_ACTIVATIONS}
    return w, x, x_stride, reference(type_name, raw, rows, cols).astype(np.float64), gated


@pytest.mark.gpu
@pytest.mark.parametrize("type_name", ["F16", "Q4_1", "Q5_0", "Q6_K"])
def test_linear_glu_input(gpu, type_name):
    """The glu fused into the linear reading it: x holds gate | up rows, the kernel reads act(gate) * up."""
    rng = np.random.default_rng(11)
    for variant in linear_variants(gpu):
        for act in quant.GLU_ACTIVATIONS:
            for rows, n_tokens, x_pad in [(37, 1, 0), (45, 3, 5)]:
                w, x, x_stride, weights, gated = glu_case(type_name, rows, n_tokens, x_pad, rng)
                uniform = struct.pack("<8I", n_tokens, rows, w.cols, x_stride, rows, 0, 0, 0)
                got = gpu.run(quant.linear_shader(type_name, variant=variant, glu=act), uniform, [x.reshape(-1)],
                              poisoned(n_tokens * rows), w.planes,
                              quant.linear_dispatch(type_name, rows, n_tokens, variant=variant))
                error = nmse(got.reshape(n_tokens, rows), gated[act] @ weights.T)
                assert error <= 1e-10, f"{variant.key} {act} {rows}x{n_tokens}: NMSE {error:.3g}"
    with pytest.raises(ValueError, match="unknown GLU activation"):
        quant.linear_shader("Q4_1", glu="relu")


@pytest.mark.gpu
@pytest.mark.parametrize("type_name", ["F16", "Q8_0", "Q5_0", "Q4_K"])
def test_linear_norm_on_load(gpu, type_name):
    """A norm done on load, against the numpy twin (ops.rms_norm, ops.add): "rms" reads
    rms_norm(x) * w; "post_rms" (Gemma) writes h = r + rms_norm(o) * w_post from workgroup 0 and
    reads rms_norm(h) * w_pre. Enough rows for several workgroups, so that the ones that do not
    write h still norm it right."""
    rng = np.random.default_rng(12)
    eps = 1e-6
    for variant in linear_variants(gpu):
        for rows in (37, 3 * variant.rows + 5):
            w, x, _, weights, _ = glu_case(type_name, rows, 1, 0, rng)
            cols = w.cols
            o = (x[:, :cols] * 3).astype(np.float32)
            r = rng.standard_normal((1, cols)).astype(np.float32) * 5
            w_post, w_pre = (rng.standard_normal(cols).astype(np.float32) for _ in range(2))
            uniform = struct.pack("<7If", 1, rows, cols, cols, rows, 0, 0, eps)
            grid = quant.linear_dispatch(type_name, rows, 1, variant=variant)

            got = gpu.run(quant.linear_shader(type_name, variant=variant, norm="rms"), uniform, [o.reshape(-1)],
                          poisoned(rows), w.planes, grid, after=[w_pre])[0]
            want = ops.rms_norm(o, w_pre, eps).astype(np.float64) @ weights.T
            error = nmse(got.reshape(1, rows), want)
            assert error <= 1e-10, f"rms {variant.key} {rows} rows: NMSE {error:.3g}"

            got, (_, _, h) = gpu.run(quant.linear_shader(type_name, variant=variant, norm="post_rms"), uniform,
                                     [o.reshape(-1)], poisoned(rows), w.planes, grid,
                                     after=[r.reshape(-1), np.concatenate([w_post, w_pre]), poisoned(cols)])
            h_want = ops.add(r, ops.rms_norm(o, w_post, eps))
            assert np.allclose(h, h_want.reshape(-1), rtol=1e-5, atol=1e-5), f"post_rms {variant.key}: new residual"
            want = ops.rms_norm(h_want, w_pre, eps).astype(np.float64) @ weights.T
            error = nmse(got.reshape(1, rows), want)
            assert error <= 1e-10, f"post_rms {variant.key} {rows} rows: NMSE {error:.3g}"
    with pytest.raises(ValueError, match="unknown norm on load"):
        quant.linear_shader("Q8_0", norm="layer")
    with pytest.raises(ValueError, match="not both"):
        quant.linear_shader("Q8_0", norm="rms", glu="silu")


@pytest.mark.gpu
def test_linear_workgroup_sizes(gpu):
    # workgroups smaller than the values reduced (8 < 4 rows x 4 tokens), large ones, other row counts
    V, sg = quant.LinearVariant, gpu.subgroup_size
    variants = [V("shared", 8), V("shared", 256), V("shared", 32, 1), V("shared", 128, 16), V("row", 64, 512),
                V("row", 32, 64)]
    if sg:
        variants += [V("subgroup", 32), V("subgroup", 64, 16), V("subgroup", 256, 2)]
    rng = np.random.default_rng(5)
    rows, cols, n_tokens = 45, 512, 5
    raw = random_tensor("Q5_K", rows, cols, rng)
    w = quant.pack("Q5_K", raw, rows, cols)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    want = x.astype(np.float64) @ reference("Q5_K", raw, rows, cols).T.astype(np.float64)
    uniform = struct.pack("<8I", n_tokens, rows, cols, cols, rows, 0, 0, 0)
    for variant in variants:
        got = gpu.run(quant.linear_shader("Q5_K", variant=variant), uniform, [x], poisoned(n_tokens * rows),
                      w.planes, quant.linear_dispatch("Q5_K", rows, n_tokens, variant=variant))
        assert nmse(got.reshape(n_tokens, rows), want) <= 1e-10, variant.key


@pytest.mark.gpu
@pytest.mark.parametrize("width", [8, 16, 32, 64, 128])
def test_linear_subgroup_kind_at_every_subgroup_width(gpu, width):
    """The subgroup kind's reduction with subgroups of 8 to 128 invocations (what GPUs have; the
    adapter here has one size) emulated in workgroup memory: subgroups smaller than, as large as
    and larger than the workgroup, one token and several (the partial sums of every subgroup of
    every row and token kept apart), one row per workgroup and sixteen."""
    V = quant.LinearVariant
    rng = np.random.default_rng(width)
    rows, cols = 45, 512
    raw = random_tensor("Q5_K", rows, cols, rng)
    w = quant.pack("Q5_K", raw, rows, cols)
    weights = reference("Q5_K", raw, rows, cols).T.astype(np.float64)
    for n_tokens in (1, 5):
        x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
        want = x.astype(np.float64) @ weights
        uniform = struct.pack("<8I", n_tokens, rows, cols, cols, rows, 0, 0, 0)
        for variant in (V("subgroup", 32), V("subgroup", 64), V("subgroup", 64, 16), V("subgroup", 256, 1)):
            source = quant.linear_shader("Q5_K", variant=variant, emulate_subgroups=width)
            assert "subgroupAdd(" not in source and "subgroup_invocation_id" not in source
            got = gpu.run(source, uniform, [x], poisoned(n_tokens * rows), w.planes,
                          quant.linear_dispatch("Q5_K", rows, n_tokens, variant=variant))
            assert nmse(got.reshape(n_tokens, rows), want) <= 1e-10, (width, variant.key, n_tokens)
    with pytest.raises(ValueError, match="needs the subgroup kind"):
        quant.linear_shader("Q5_K", variant=V("shared", 64), emulate_subgroups=width)


# ---- real weights ----

@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("model", ["gemma_path", "smollm_path"])
def test_real_model_weights(gpu, model, request):
    """Every weight type of the real models: sampled rows bit-exact, and a mat-vec by NMSE."""
    from wgpu_llm.gguf_file import GGUFFile

    gguf_file = GGUFFile(request.getfixturevalue(model))
    limit = gpu.device.limits["max-storage-buffer-binding-size"]
    largest = {}
    for info in gguf_file.tensors.values():
        if len(info.shape) == 2 and info.n_bytes > largest.get(info.type_name, (0, None))[0]:
            largest[info.type_name] = (info.n_bytes, info)
    rng = np.random.default_rng(7)
    for _, info in largest.values():
        rows, cols = info.shape
        raw = gguf_file.raw(info.name)
        row_bytes = info.n_bytes // rows
        w = quant.pack(info.type_name, raw, rows, cols)
        ids = np.unique(np.concatenate([[0, rows - 1], rng.integers(0, rows, 6)])).astype(np.uint32)
        want = np.stack([reference(info.type_name, raw[i * row_bytes:(i + 1) * row_bytes], 1, cols)[0] for i in ids])
        y = poisoned(len(ids) * cols)
        for first, piece in quant.split_rows(w, limit):
            y = embed_run(gpu, piece, first, ids, y, cols, 1.0)
        assert np.array_equal(y.reshape(len(ids), cols).view(np.uint32), want.view(np.uint32)), info.name
        if rows * cols <= 16 << 20:  # a mat-vec over the whole matrix (not the 262144-row tables)
            x = rng.standard_normal((2, cols)).astype(np.float32)
            weights = reference(info.type_name, raw, rows, cols).astype(np.float64)
            for variant in (linear_variants(gpu)[-1], quant.LinearVariant("shared", 64, 4)):  # a CPU and a GPU kind
                got = linear_run(gpu, w, x.reshape(-1), cols, poisoned(2 * rows), rows, 0, 0, variant)
                error = nmse(got.reshape(2, rows), x.astype(np.float64) @ weights.T)
                assert error <= LINEAR_NMSE, f"{info.name} {variant.key}: NMSE {error:.3g}"
