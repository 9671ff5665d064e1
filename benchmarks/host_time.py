"""Where a GPU decode step's host time goes: the greedy decode step of each model recorded, finished,
submitted and read back, each phase timed on the host, with the GPU idle before each command buffer
(so the host does not share the CPU with a software adapter's work).

    python benchmarks/host_time.py [--models gemma3-270m,smollm2-135m|PATH.gguf] [--steps 16] [--json FILE]

Each model's step is the one a GPU runs, with the norms done by the linears as they load their
input (WGPU_LLM_NORM_ON_LOAD=1: a CPU adapter does not do that by default), timed twice: a step
alone in a command buffer (chunk 1), and a command buffer of LOOP_MAX_CHUNK steps, which is what
the decode loop records on a device whose steps are short (a hardware GPU; on lavapipe a step takes
hundreds of milliseconds and the loop records one at a time). Then that command buffer of
LOOP_MAX_CHUNK steps once more with the norms as dispatches of their own (WGPU_LLM_NORM_ON_LOAD=0,
rows with "norm_on_load": false): what doing them in the linears saves the host, and costs the
device (its `wait`). Phases, per step (median over --steps command buffers, after 2 warm-up ones, divided by the
steps in a command buffer):
  record   Python + wgpu-native calls that put the step's dispatches into a command encoder
           (Program.record_pass: ~3 C calls per dispatch) and the copies around them
  finish   wgpu-native's encoding of the recorded passes (validation, resource tracking, barriers)
  submit   the queue submission
  wait     the device computing the steps (not host time: what `wgpu-llm bench` leaves out)
  read     mapping the 4-byte ids and reading them back, after the device is done
`host` is record + finish + submit + read. A software adapter computes on the host's own cores:
right after a step, the host's caches hold its data, not the recorder's, so the first step of a
command buffer records slower than the next ones (a hardware GPU leaves the host's caches alone).
Prints a table; writes JSON stamped like benchmarks/run.py's results (commit, machine, adapter).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wgpu_llm import LLM, bench  # noqa: E402
from wgpu_llm.gpu.backend import ENV_NORM_ON_LOAD, LOOP_MAX_CHUNK  # noqa: E402

PHASES = ("record", "finish", "submit", "wait", "read")


def time_steps(llm: LLM, n_steps: int, chunk: int) -> tuple[dict[str, float], int]:
    """Median seconds per phase and step of greedy decode steps recorded `chunk` to a command
    buffer (as the decode loop does), and a step's dispatch count."""
    step = llm._step(1, False)
    prog, rt = step._greedy_program(), step.backend.rt
    positions = step._positions_buffer()
    u = rt.wgpu.BufferUsage
    staging = rt.buffer(4 * chunk, u.MAP_READ | u.COPY_DST, "host time ids")
    rt.queue.write_buffer(step.ids_buffer, 0, np.array([1], np.uint32))
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for i in range(n_steps + 2):
        t0 = time.perf_counter()
        enc = rt.device.create_command_encoder()
        for j in range(chunk):
            enc.copy_buffer_to_buffer(positions, 16 * (1 + j), prog.step_buffer, 0, 16)
            prog.record_pass(enc)
            enc.copy_buffer_to_buffer(step.ids_buffer, 0, staging, 4 * j, 4)
        t1 = time.perf_counter()
        command_buffer = enc.finish()
        t2 = time.perf_counter()
        submission = rt.submit([command_buffer], chunk * prog.n_dispatches, chunk)
        t3 = time.perf_counter()
        rt.device._poll_wait()  # the device done: what follows is the read's own cost
        t4 = time.perf_counter()
        rt.read_back(staging, 4 * chunk, submission)
        t5 = time.perf_counter()
        if i >= 2:
            for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[phase].append(seconds / chunk)
    return {p: statistics.median(v) for p, v in times.items()}, prog.n_dispatches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gemma3-270m,smollm2-135m", help="comma-separated known names or GGUF paths")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--json", default=None, help="results file (default: benchmarks/results/host-time-<adapter>-<date>.json)")
    args = p.parse_args(argv)
    rows, adapter = [], None
    for spec in args.models.split(","):
        name, path = bench.resolve_model(spec)
        for norm_on_load, chunks in ((True, (1, LOOP_MAX_CHUNK)), (False, (LOOP_MAX_CHUNK,))):
            os.environ[ENV_NORM_ON_LOAD] = str(int(norm_on_load))  # read by the backend LLM opens
            llm = LLM(path, backend="gpu", n_ctx=256)
            info = llm.backend.rt.info
            adapter = {"name": info.name, "type": info.type, "software": info.is_software}
            for chunk in chunks:
                phases, dispatches = time_steps(llm, args.steps, chunk)
                host = sum(v for k, v in phases.items() if k != "wait")
                rows.append({"model": name, "chunk": chunk, "norm_on_load": norm_on_load, "dispatches": dispatches,
                             **{f"{k}_ms": v * 1e3 for k, v in phases.items()}, "host_ms": host * 1e3,
                             "record_finish_us_per_dispatch": (phases["record"] + phases["finish"]) / dispatches * 1e6})
            llm.close()
    cols = ["model", "chunk", "norm_on_load", "dispatches", *[f"{k}_ms" for k in PHASES], "host_ms", "record_finish_us_per_dispatch"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(r[c] if isinstance(r[c], str) else (str(r[c]) if isinstance(r[c], int) else f"{r[c]:.3f}")
                         for c in cols))
    stamp = datetime.now(timezone.utc)
    out = Path(args.json or ROOT / "benchmarks" / "results" / f"host-time-{bench._slug(adapter['name'])}-{stamp:%Y-%m-%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": bench.SCHEMA, "date": stamp.isoformat(timespec="seconds"),
           "command": "python benchmarks/host_time.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           **bench.git_provenance(ROOT), "machine": bench.machine_info(), "adapter": adapter, "rows": rows}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
