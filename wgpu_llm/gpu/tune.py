"""Tuning the quantized linear kernels on the device at hand, and the per-adapter cache of winners.

A linear dispatch runs one of two kernel families, as matmul.prefill_path decides for its token
count: the mat-vec of quant.py (decode steps, short chunks), whose variant (quant.LinearVariant)
`kernels.linear_variant` picks from what the adapter says about itself, or the tiled mat-mat of
matmul.py (prefill chunks), whose tile shape (matmul.Tiles) `matmul.choose_tiles` picks. `tune`
times the candidates of the right family for linear shapes (a model's own: `model_cases`) on the
actual device and keeps the fastest per shape. The winners go to one JSON file per adapter,
``zoo.cache_dir() / "tuning" / "<vendor>-<device>-<hash>.json"``, the hash taken over the adapter's
identity (vendor, device, backend, driver). A GPU backend reads that file when it starts
(`LinearChoice.for_runtime`) and uses, for each linear, the winner of the nearest tuned shape of
the same weight type, phase (one token, or several) and kernel family, else the heuristic.

Environment (WGPU_LLM_TUNE): "0" ignores the cache (heuristic choices only); "auto" tunes each
linear shape missing from the cache when a backend first compiles it (about a second per shape on
a GPU, tens of seconds on a software adapter) and caches it; unset or anything else reads the
cache and never tunes by itself. `wgpu-llm tune [MODEL]` runs a tuning pass.

Timing: each sample records `reps` dispatches of one candidate into one compute pass, submits and
waits. The dispatches read copies of the weight in turn (a model step reads each weight once from
memory, not from a cache that one small weight dispatched again and again would sit in). Timers:
on a software adapter the process CPU time (its threads run in this process; this leaves out what
else the machine is busy with), weighted by how evenly the workgroups spread over its threads
(one per CPU), which CPU time does not see; else the device's timestamp queries around the pass
when it has them (wgpu-py does not expose their tick length, so they are scaled to seconds by the
wall time of the same samples); else the wall time. Candidates are interleaved round by round,
the clearly slower ones are dropped after two rounds, and the winner has the lowest median.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import kernels as K
from . import matmul, quant
from .device import software_kernels
from .matmul import Tiles
from .quant import LinearVariant
from .quant_types import FloatType, WordBlocks

ENV_TUNE = "WGPU_LLM_TUNE"
CACHE_FORMAT = 1
MAX_DISTANCE = 3.0  # log2 units (rows, cols, tokens together) within which a tuned shape stands for another


# ---- what is tuned ----
@dataclass(frozen=True)
class LinearCase:
    """One linear dispatch shape: a (rows, cols) weight of a type, applied to n_tokens tokens."""

    type_name: str
    rows: int
    cols: int
    n_tokens: int = 1

    def __post_init__(self):
        quant.plane_row_words(self.type_name, self.cols)  # checks type and cols
        if self.rows < 1 or self.n_tokens < 1:
            raise ValueError(f"linear case needs rows >= 1 and n_tokens >= 1, got {self.rows}, {self.n_tokens}")

    @property
    def tiled(self) -> bool:
        """Does a step of n_tokens run this linear as the tiled mat-mat (else the mat-vec)?"""
        return matmul.prefill_path(self.n_tokens) == "tiled"

    @property
    def label(self) -> str:
        return f"{self.type_name} {self.rows}x{self.cols}" + (f", {self.n_tokens} tokens" if self.n_tokens > 1 else "")

    def distance(self, other: LinearCase) -> float:
        """How far apart two shapes are in log2 units; inf across types or phases (1 token / several)."""
        if self.type_name != other.type_name or (self.n_tokens == 1) != (other.n_tokens == 1):
            return math.inf
        return (abs(math.log2(self.rows / other.rows)) + abs(math.log2(self.cols / other.cols))
                + abs(math.log2(self.n_tokens / other.n_tokens)))


def model_cases(gguf_file, n_tokens: tuple[int, ...] = (1,), max_binding: int | None = None) -> dict[LinearCase, int]:
    """The linear dispatches of one step of the model: {case: dispatches per step}.

    Adjacent weights of one op are stacked into one matrix as the backend stacks them
    (quant.stacked_runs: same type and columns, or Q4_0 / Q5_0 widened to Q8_0); a matrix
    makes one case per piece when max_binding splits it by rows (as the GPU backend does); types
    without a GPU kernel are uploaded as F32, so they are tuned as F32.
    """
    from wgpu_llm import models

    graph = models.architecture(gguf_file).build_graph(gguf_file, all_logits=False)
    counts: dict[LinearCase, int] = {}
    for op in graph.ops:
        if op.kind != "linear":
            continue
        info = [(n, quant.device_type(gguf_file.tensor(n).type_name), *graph.weight_shapes[n]) for n in op.weights]
        for run, type_name in quant.stacked_runs(info):  # as the backend uploads them: runs of weights stacked
            rows, cols = sum(graph.weight_shapes[n][0] for n in run), graph.weight_shapes[run[0]][1]
            pieces = [rows]
            if max_binding:
                max_rows = max(1, max_binding // (4 * max(quant.plane_row_words(type_name, cols))))
                per_piece = -(-rows // -(-rows // max_rows))  # quant.split_rows: equal pieces
                pieces = [min(per_piece, rows - first) for first in range(0, rows, per_piece)]
            for n in n_tokens:
                for piece_rows in pieces:
                    case = LinearCase(type_name, piece_rows, cols, n)
                    counts[case] = counts.get(case, 0) + 1
    return counts


def parse_winner(key: str) -> LinearVariant | Tiles:
    """A cached winner: a mat-mat tile shape ("tiles-...") or a mat-vec variant; ValueError else."""
    return Tiles.from_key(key) if str(key).startswith("tiles-") else LinearVariant.from_key(key)


def heuristic(caps, case: LinearCase) -> LinearVariant | Tiles:
    """What a backend runs for this case without tuning."""
    if case.tiled:
        return matmul.choose_tiles(caps, case.n_tokens)
    return K.linear_variant(K.choose_config(caps), case.type_name, case.rows, case.cols, case.n_tokens)


def kernel_choices(caps, type_name: str = "Q4_K", rows: int = 2048, cols: int = 1024, head_dim: int = 64
                   ) -> dict[str, str]:
    """What this device runs without tuning (`heuristic`), for `wgpu-llm devices`: the mat-vec
    variant of a decode step, the mat-mat tiles of prefill steps of 16, 32 and 64+ tokens, the
    flash-attention tiles of a head size, the KV cache type `--kv-cache auto` gives."""
    from .attention import choose_flash_tiles

    out = {"mat-vec (1 token)": heuristic(caps, LinearCase(type_name, rows, cols, 1)).key}
    for n in (16, 32, 64):
        case = LinearCase(type_name, rows, cols, n)
        out[f"mat-mat ({n}{'+' if n == 64 else ''} tokens)"] = heuristic(caps, case).key if case.tiled else "mat-vec"
    t = choose_flash_tiles(caps, head_dim)
    out[f"flash attention (head {head_dim})"] = f"{t.bq}x{t.bkv} wg{t.wg} {t.sq}x{t.sk}"
    out["KV cache (auto)"] = K.auto_kv_type(caps.info)
    return out


def candidates(caps, case: LinearCase, quick: bool = False) -> list[LinearVariant] | list[Tiles]:
    """Variants (mat-vec) or tile shapes (mat-mat, for a tiled case) worth timing for this case on
    this adapter, the heuristic choice first."""
    if case.tiled:
        return tile_candidates(caps, case, quick)
    cfg = K.choose_config(caps)
    out = [K.linear_variant(cfg, case.type_name, case.rows, case.cols, case.n_tokens)]
    sg = caps.subgroup_size if caps.subgroups else 0
    if software_kernels(caps.info):
        # whole rows per invocation; how many lanes and rows per workgroup trades the fixed cost
        # per workgroup against keeping every CPU thread busy and the registers in use
        share = sg if sg in (4, 8, 16, 32) else 0
        lanes = max(8, share)
        shapes = [(lanes, n) for n in (2, 4, 8)]
        if not quick:
            shapes += [(lanes, 1)] + [(wg, n) for wg in (2 * lanes, 4 * lanes) for n in (2, 4, 8)]
        passes = (1,)
        if case.n_tokens > 1:  # tokens per pass: one, and as many as fit 128 activations
            passes = sorted({1, max(1, min(4, 128 // quant.row_step_cols(case.type_name), case.n_tokens))})
        out += [LinearVariant("row", wg, wg * n, share, t) for wg, n in shapes for t in passes]
        if share and not quick:
            out.append(LinearVariant("row", lanes, 4 * lanes, 0, passes[-1]))  # x not shared
        out.append(LinearVariant("subgroup" if sg else "shared", 64, 4))  # what a GPU gets
    else:
        kind = "subgroup" if sg else "shared"
        shapes = ((64, 2), (128, 4), (64, 8)) if quick else ((32, 2), (32, 4), (64, 2), (64, 8), (128, 2),
                                                             (128, 4), (128, 8), (256, 4), (256, 8))
        out += [LinearVariant(kind, wg, r) for wg, r in shapes]
        if kind == "subgroup":
            out.append(LinearVariant("shared", 64, 4))
        out.append(LinearVariant("row", 64, 64))
    unique: list[LinearVariant] = []
    for v in out:
        if v not in unique and v.workgroup_size <= caps.max_invocations and (sg or not v.needs_subgroups):
            unique.append(v)
    return unique


def tile_candidates(caps, case: LinearCase, quick: bool = False) -> list[Tiles]:
    """Tile shapes of the mat-mat worth timing for a tiled case, matmul.choose_tiles' first."""
    out = [matmul.choose_tiles(caps, case.n_tokens)]
    sg = caps.subgroup_size if caps.subgroups else 0
    if software_kernels(caps.info):
        # big register tiles, bounded by the time LLVM takes to compile them (see matmul.py);
        # with and without activations shared in subgroups
        shapes = [(16, 64, 32, 16, 8), (32, 64, 32, 32, 8), (16, 64, 32, 8, 8)]
        if not quick:
            shapes += [(64, 128, 32, 32, 8), (32, 128, 32, 16, 16), (16, 128, 32, 16, 16), (16, 32, 32, 16, 8)]
        shares = (sg, 0) if sg > 1 else (0,)
    else:
        # register tiles of 4..8 per side in workgroups up to the invocation limit
        shapes = [(16, 64, 32, 4, 4), (32, 64, 32, 4, 4), (64, 64, 32, 4, 4), (64, 64, 16, 8, 4)]
        if not quick:
            shapes += [(bm, bn, bk, tm, tn) for bm in (16, 32, 64, 128) for bn in (32, 64, 128) for bk in (16, 32)
                       for tm, tn in ((4, 4), (8, 4), (4, 8), (8, 8))]
        shares = (0,)
    most = max(16, 1 << (case.n_tokens - 1).bit_length())  # no tile of many more tokens than the step has
    for bm, bn, bk, tm, tn in shapes:
        for share in shares:
            try:
                t = Tiles(bm, bn, bk, tm, tn, share)
            except ValueError:  # sg does not divide this tile's tokens / columns
                continue
            if bm <= most:
                out.append(t)
    unique: list[Tiles] = []
    for t in out:
        if t not in unique and t.fits(caps.max_invocations, caps.max_workgroup_storage) and (sg or not t.sg):
            unique.append(t)
    return unique


# ---- timing ----
@dataclass
class CaseResult:
    """Timings of one case: seconds per dispatch, one per round, for each candidate's variant key."""

    case: LinearCase
    samples: dict[str, list[float]] = field(default_factory=dict)
    timer: str = "wall"  # "cpu", "timestamp" or "wall"
    dropped: set = field(default_factory=set)  # keys left out after two rounds (clearly slower)
    count: int = 1  # dispatches of this case per model step (for reports)

    def median(self, key: str) -> float:
        return float(np.median(self.samples[key])) if self.samples.get(key) else math.inf

    def ranking(self) -> list[str]:
        """Keys from fastest to slowest: the candidates timed every round first."""
        return sorted(self.samples, key=lambda k: (k in self.dropped, self.median(k)))

    @property
    def winner(self) -> str:
        return self.ranking()[0]


def _random_planes(case: LinearCase, rng) -> list[np.ndarray]:
    """Planes of a random weight of this type: random bits with small normal f16 scales (NaN,
    infinity and subnormal arithmetic can be far slower on a CPU, so it stays out of the timings)."""
    qt = quant.quant_type(case.type_name)
    words = qt.plane_row_words(case.cols)
    if isinstance(qt, FloatType):
        values = rng.standard_normal(case.rows * words[0] * (1 if case.type_name == "F32" else 2)).astype(np.float32)
        if case.type_name == "F16":
            values = values.astype(np.float16)
        elif case.type_name == "BF16":
            values = (values.view(np.uint32) >> 16).astype(np.uint16)
        return [values.view(np.uint32)]
    planes = [rng.integers(0, 1 << 32, case.rows * n, dtype=np.uint32) for n in words]
    scales = np.uint32(0x2000_2000)  # two f16 2^-7
    if isinstance(qt, WordBlocks):  # the word of each block that holds d (and m / dmin)
        planes[0][qt.d_word::qt.block_bytes // 4] = scales
    else:  # a plane of f16 block scales
        planes[1][:] = scales
    return planes


class _Bench:
    """One case on the device: a random weight (in copies), activations, one pipeline per candidate.

    Uses the runtime's device directly (not its caches or byte counts) and frees its buffers."""

    def __init__(self, rt, case: LinearCase, seed: int = 0, cold_bytes: int = 64 << 20, max_copies: int = 64):
        wgpu = rt.wgpu
        self.rt, self.case, self.device = rt, case, rt.device
        self.buffers = []
        rng = np.random.default_rng(seed)
        n, rows, cols = case.n_tokens, case.rows, case.cols
        self.params = self._upload(np.array([n, rows, cols, cols, rows, 0, 0, 0], np.uint32), wgpu.BufferUsage.UNIFORM)
        self.x = self._upload(rng.standard_normal(n * cols).astype(np.float32), wgpu.BufferUsage.STORAGE)
        self.y = self._upload(np.zeros(n * rows, np.float32), wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
        planes = _random_planes(case, rng)
        n_copies = max(1, min(max_copies, cold_bytes // sum(int(p.nbytes) for p in planes)))
        self.copies = [[self._upload(p, wgpu.BufferUsage.STORAGE) for p in planes] for _ in range(n_copies)]
        self.use_timestamps = "timestamp-query" in set(self.device.features)
        if self.use_timestamps:
            self.query_set = self.device.create_query_set(type=wgpu.QueryType.timestamp, count=2)
            self.resolved = self._buffer(16, wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
        self.staging = self._buffer(16, wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)
        self.calls: dict[str, tuple] = {}
        self.next_copy = 0

    def _buffer(self, size: int, usage):
        buf = self.device.create_buffer(size=max(16, -(-size // 16) * 16), usage=usage)
        self.buffers.append(buf)
        return buf

    def _upload(self, data: np.ndarray, usage):
        buf = self._buffer(data.nbytes, usage | self.rt.wgpu.BufferUsage.COPY_DST)
        self.rt.queue.write_buffer(buf, 0, np.ascontiguousarray(data))
        return buf

    def prepare(self, variant: LinearVariant | Tiles) -> None:
        """Compile the variant (or tile shape) and bind its buffers (outside any timing)."""
        c = self.case
        if isinstance(variant, Tiles):  # the mat-mat: the same bindings and parameters as the mat-vec
            code = matmul.matmul_shader(c.type_name, variant)
            grid = matmul.matmul_dispatch(c.rows, c.n_tokens, variant, self.rt.caps.max_per_dim)
        else:
            code = quant.linear_shader(c.type_name, variant=variant)
            grid = quant.linear_dispatch(c.type_name, c.rows, c.n_tokens, variant=variant,
                                         max_per_dim=self.rt.caps.max_per_dim)
        with self.rt.guard(f"compiling linear variant {variant.key} for {c.label}"):
            module = self.device.create_shader_module(label=variant.key, code=code)
            pipe = self.device.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": "main"})
            layout = pipe.get_bind_group_layout(0)
            groups = [self.device.create_bind_group(layout=layout, entries=[
                {"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                for i, b in enumerate([self.params, self.x, self.y, *planes])]) for planes in self.copies]
        self.calls[variant.key] = (pipe, groups, grid)

    def run(self, key: str, reps: int) -> tuple[float, float, float | None]:
        """(wall seconds, process CPU seconds, timestamp ticks or None) of `reps` dispatches in one
        pass, from submit until the results can be read."""
        wgpu = self.rt.wgpu
        pipe, groups, grid = self.calls[key]
        with self.rt.guard(f"timing linear variant {key} for {self.case.label}"):
            enc = self.device.create_command_encoder()
            writes = None
            if self.use_timestamps:
                writes = {"query_set": self.query_set, "beginning_of_pass_write_index": 0, "end_of_pass_write_index": 1}
            cp = enc.begin_compute_pass(timestamp_writes=writes)
            cp.set_pipeline(pipe)
            for _ in range(reps):
                cp.set_bind_group(0, groups[self.next_copy % len(groups)])
                cp.dispatch_workgroups(*grid)
                self.next_copy += 1
            cp.end()
            if self.use_timestamps:
                enc.resolve_query_set(self.query_set, 0, 2, self.resolved, 0)
                enc.copy_buffer_to_buffer(self.resolved, 0, self.staging, 0, 16)
            else:
                enc.copy_buffer_to_buffer(self.y, 0, self.staging, 0, 4)
            command = enc.finish()
            c0, t0 = time.process_time(), time.perf_counter()
            self.rt.queue.submit([command])
            self.staging.map_sync(wgpu.MapMode.READ, 0, 16)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            try:
                stamps = np.frombuffer(self.staging.read_mapped(0, 16, copy=True), np.uint64)
            finally:
                self.staging.unmap()
        ticks = float(stamps[1] - stamps[0]) if self.use_timestamps and stamps[1] > stamps[0] else None
        return wall, cpu, ticks

    def close(self) -> None:
        for buf in self.buffers:
            buf.destroy()
        self.buffers = []


def measure(rt, case: LinearCase, variants: list[LinearVariant] | list[Tiles], *, rounds: int = 5,
            sample_s: float = 0.02, max_reps: int = 256, prune: float = 1.5, progress=None) -> CaseResult:
    """Time every variant on `case`: `rounds` interleaved samples of about `sample_s` seconds each
    (at least one dispatch, at most max_reps); after two rounds, variants slower than `prune` times
    the fastest are dropped. progress(case, key, round) is called after each sample."""
    if not variants:
        raise ValueError(f"{case.label}: no candidate variants to time")
    keys = list(dict.fromkeys(v.key for v in variants))
    bench = _Bench(rt, case)
    try:
        for v in variants:
            bench.prepare(v)
        reps = {}
        for key in keys:  # first-run costs, then how many dispatches make a sample
            bench.run(key, 1)
            reps[key] = int(min(max_reps, max(1, sample_s // max(bench.run(key, 1)[0], 1e-7))))
        timer = "cpu" if rt.caps.info.is_software else "timestamp" if bench.use_timestamps else "wall"
        raw: dict[str, list[tuple[float, float, float | None]]] = {k: [] for k in keys}
        alive = list(keys)
        for r in range(rounds):
            for key in alive[r % len(alive):] + alive[:r % len(alive)]:
                raw[key].append(bench.run(key, reps[key]))
                if progress:
                    progress(case, key, r)
            if timer == "timestamp" and any(t is None for k in alive for _, _, t in raw[k]):
                timer = "wall"  # a pass without a valid timestamp pair: no ranking by timestamps
            if r == 1 and len(alive) > 2:
                best = {k: min(_seconds(s, timer, 1.0) / reps[k] for s in raw[k]) for k in alive}
                alive = [k for k in alive if best[k] <= prune * min(best.values())]
        scale = 1.0
        if timer == "timestamp":  # seconds per tick, from the wall time of the same samples
            scale = sum(s[0] for k in keys for s in raw[k]) / sum(s[2] for k in keys for s in raw[k])
        result = CaseResult(case, timer=timer, dropped=set(keys) - set(alive))
        for key in keys:
            spread = _spread(bench.calls[key][2]) if timer == "cpu" else 1.0
            result.samples[key] = [_seconds(s, timer, scale) * spread / reps[key] for s in raw[key]]
        return result
    finally:
        bench.close()


def _spread(grid: tuple[int, int, int]) -> float:
    """How much longer than CPU time / threads a software adapter takes for this many workgroups
    when its threads (one per CPU) share them out evenly and the last round leaves some idle."""
    threads = max(1, os.cpu_count() or 1)
    groups = grid[0] * grid[1] * grid[2]
    return -(-groups // threads) * threads / groups


def _seconds(sample: tuple[float, float, float | None], timer: str, scale: float) -> float:
    wall, cpu, ticks = sample
    return cpu if timer == "cpu" else ticks * scale if timer == "timestamp" else wall


def tune(rt, cases, *, quick: bool = False, rounds: int = 5, sample_s: float = 0.02, progress=None,
         save: bool = True) -> list[CaseResult]:
    """Time the candidates of every case on `rt`'s device; the winners are merged into the adapter's
    cache file when `save`. cases: LinearCases, or {case: dispatches per step}."""
    counts = cases if isinstance(cases, dict) else {c: 1 for c in cases}
    results = []
    for case, count in counts.items():
        res = measure(rt, case, candidates(rt.caps, case, quick), rounds=rounds, sample_s=sample_s,
                      progress=progress)
        res.count = count
        results.append(res)
    if save and results:
        write_cache(cache_path(rt.info), rt.info, results)
    return results


# ---- the cache ----
def adapter_identity(info) -> dict:
    """What identifies an adapter and its driver (a device.AdapterInfo)."""
    raw = dict(getattr(getattr(info, "adapter", None), "info", None) or {})
    return {"vendor": str(info.vendor), "device": str(info.name), "backend": str(info.backend),
            "driver": str(raw.get("description", "")), "vendor_id": int(raw.get("vendor_id", 0) or 0),
            "device_id": int(raw.get("device_id", 0) or 0)}


def cache_path(info) -> Path:
    """zoo.cache_dir() / "tuning" / "<vendor>-<device>-<hash of the identity>.json"; a software
    adapter under WGPU_LLM_FORCE_HARDWARE_KERNELS=1 has a file of its own (its winners are of
    other kernel families)."""
    from wgpu_llm import zoo

    ident = adapter_identity(info)
    if getattr(info, "is_software", False) and not software_kernels(info):
        ident["kernels"] = "hardware"
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{ident['vendor']}-{ident['device']}".lower()).strip("-")[:48] or "adapter"
    return zoo.cache_dir() / "tuning" / f"{slug}-{digest}.json"


def read_cache(path: Path) -> dict[LinearCase, str]:
    """{case: winner variant key} from a cache file; {} when there is none. A file that cannot be
    read or parsed, or holds something else than `write_cache` writes, is ignored with a warning;
    so are single malformed entries."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("linear"), list):
            raise ValueError(f"not a format-{CACHE_FORMAT} tuning cache")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        warnings.warn(f"ignoring the tuning cache {path}: {e}", RuntimeWarning, stacklevel=2)
        return {}
    out, bad = {}, 0
    for entry in data["linear"]:
        try:
            case = LinearCase(str(entry["type"]), int(entry["rows"]), int(entry["cols"]), int(entry["n_tokens"]))
            out[case] = parse_winner(entry["winner"]).key
        except (KeyError, TypeError, ValueError):
            bad += 1
    if bad:
        warnings.warn(f"ignoring {bad} malformed entries of the tuning cache {path}", RuntimeWarning, stacklevel=2)
    return out


def write_cache(path: Path, info, results: list[CaseResult]) -> None:
    """Merge `results` into the cache file (a case tuned again replaces its entry), atomically."""
    entries = {}
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
        if isinstance(old, dict) and old.get("format") == CACHE_FORMAT:
            entries = {(e["type"], e["rows"], e["cols"], e["n_tokens"]): e for e in old.get("linear", [])}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        entries = {}  # an unreadable cache is replaced
    for res in results:
        c = res.case
        entries[(c.type_name, c.rows, c.cols, c.n_tokens)] = {
            "type": c.type_name, "rows": c.rows, "cols": c.cols, "n_tokens": c.n_tokens, "winner": res.winner,
            "timer": res.timer, "median_us": {k: round(res.median(k) * 1e6, 2) for k in res.ranking()}}
    data = {"format": CACHE_FORMAT, "adapter": adapter_identity(info), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "linear": sorted(entries.values(), key=lambda e: (e["type"], e["n_tokens"], e["rows"], e["cols"]))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)  # a reader never sees half a file


# ---- the choice the backend uses ----
class LinearChoice:
    """choice(type_name, rows, cols, n_tokens) -> quant.LinearVariant for the mat-vec, and
    choice.tiles(type_name, rows, cols, n_tokens) -> matmul.Tiles for the tiled mat-mat: the tuned
    winner (of that kernel family) of the nearest tuned shape of that type and phase (within
    MAX_DISTANCE), else the heuristic (`heuristic`). `sources` counts which of the two each call used."""

    def __init__(self, caps, cfg, tuned: dict[LinearCase, str] | None = None, *, rt=None, auto: bool = False):
        self.caps, self.cfg, self.rt, self.auto = caps, cfg, rt, auto
        self.tuned = dict(tuned or {})
        self.sources = {"tuned": 0, "heuristic": 0}

    @classmethod
    def for_runtime(cls, rt, cfg) -> LinearChoice:
        """The choice for a backend on `rt`: the adapter's cache unless WGPU_LLM_TUNE=0 (see the module)."""
        mode = os.environ.get(ENV_TUNE, "").strip().lower()
        if mode in ("0", "off", "false", "no"):
            return cls(rt.caps, cfg, rt=rt)
        return cls(rt.caps, cfg, read_cache(cache_path(rt.info)), rt=rt, auto=mode == "auto")

    def usable(self, variant: LinearVariant | Tiles) -> bool:
        """Can this device run it (a cache may come from another driver version's limits)?"""
        if isinstance(variant, Tiles):
            fits = variant.fits(self.caps.max_invocations, self.caps.max_workgroup_storage)
        else:
            fits = variant.workgroup_size <= self.caps.max_invocations
        f16 = getattr(self.caps, "shader_f16", False) or not variant.needs_f16
        return fits and f16 and (self.caps.subgroups or not variant.needs_subgroups)

    def _choose(self, case: LinearCase, tiled: bool) -> LinearVariant | Tiles:
        if self.auto and case not in self.tuned and self.rt is not None:
            self.tuned[case] = tune(self.rt, [case], quick=True, rounds=3)[0].winner
        best, dist = None, MAX_DISTANCE
        for other, key in self.tuned.items():
            d = case.distance(other)
            if d <= dist and key.startswith("tiles-") == tiled:  # a winner of the kernel family asked for
                best, dist = key, d
        if best is not None:
            variant = parse_winner(best)
            if self.usable(variant):
                self.sources["tuned"] += 1
                return variant
        self.sources["heuristic"] += 1
        if tiled:
            return matmul.choose_tiles(self.caps, case.n_tokens)
        return K.linear_variant(self.cfg, case.type_name, case.rows, case.cols, case.n_tokens)

    def __call__(self, type_name: str, rows: int, cols: int, n_tokens: int) -> LinearVariant:
        """The mat-vec variant of a (rows, cols) weight applied to n_tokens tokens."""
        return self._choose(LinearCase(type_name, rows, cols, n_tokens), tiled=False)

    def tiles(self, type_name: str, rows: int, cols: int, n_tokens: int) -> Tiles:
        """The mat-mat tile shape of a (rows, cols) weight applied to a prefill chunk of n_tokens."""
        return self._choose(LinearCase(type_name, rows, cols, n_tokens), tiled=True)


__all__ = ["CACHE_FORMAT", "ENV_TUNE", "CaseResult", "LinearCase", "LinearChoice", "adapter_identity", "cache_path",
           "candidates", "heuristic", "kernel_choices", "measure", "model_cases", "parse_winner", "read_cache", "tile_candidates", "tune",
           "write_cache"]
