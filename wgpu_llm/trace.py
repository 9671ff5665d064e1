"""Tracing: where the time of a generation goes -- per step kind, per model section, per op.

Turn it on with `LLM(..., trace=True)`, the environment variable WGPU_LLM_TRACE=1, or
`wgpu-llm run --trace` (which prints `Trace.report()` after the text; `--trace-json PATH` also
writes the trace in Chrome's trace event format, for chrome://tracing or ui.perfetto.dev).

While a trace is attached (`backend.tracer`), backends run each step op by op and time every op:
the GPU backend records one compute pass per dispatch whose start and end write GPU timestamps
(the adapter's "timestamp-query" feature; without it each dispatch is submitted alone and timed
on the host), the numpy backend times each op's closure with time.perf_counter. Untraced, none of
this runs: a step checks one attribute, and the GPU keeps its single pass per step.

Backends report raw measurements -- (op index or dispatch label, seconds) per step -- and know
nothing of the model. The trace derives each op's section from the graph alone: the embedding
lookup; "attention" or "ffn" of layer N by the blk.N.* weights an op reads (attn_*, post_attention
norm vs ffn_*, post_ffw norm), an op without weights belonging to the section of the newest op
whose output it reads; the norm over output_norm; the output head (the op producing the graph's
output); sampling (the GPU's argmax / repeat_penalty / top-k / sample kernels and the host's sampler).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

ENV = "WGPU_LLM_TRACE"
SECTIONS = ("embedding", "attention", "ffn", "final norm", "output head", "sampling", "other")
_SAMPLING_KERNELS = ("argmax", "top_k", "repeat_penalty", "sample")
_OP_KINDS = ("embed", "rms_norm", "linear", "rope", "attention", "glu", "add", "scale", "copy")
_BLK = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight)?$")


def enabled_by_env() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass
class OpRecord:
    section: str  # one of SECTIONS
    layer: int | None
    kind: str  # the graph op's kind, or the GPU kernel's (a fused kernel is named by what it runs)
    name: str  # the graph activation it computes (or the host sampler)
    shape: str
    weight: str
    seconds: float
    bytes: int | None  # weight + activation (+ KV cache) bytes read and written; None when unknown
    start: float = 0.0  # seconds since the trace began (ops of a step laid end to end)
    dispatches: int = 1
    kernel: str = ""  # what ran it, where that differs from the op kind (GPU: "matmul", "flash attention")


@dataclass
class StepRecord:
    kind: str  # "prefill" or "decode"
    n_tokens: int
    pos0: int
    wall_s: float  # host time of the traced step (timed runs are slower than untraced ones)
    start: float  # seconds since the trace began
    ops: list[OpRecord] = field(default_factory=list)


@dataclass
class _OpInfo:
    section: str
    layer: int | None
    kind: str
    rows: int
    shape: str
    weight: str
    bytes: int | None


class _GraphInfo:
    """Sections, shapes and byte counts of one graph's ops (the part that does not depend on pos0)."""

    def __init__(self, graph, tensors: dict):
        self.graph = graph
        self.producer: dict[str, int] = {}
        self.ops: list[_OpInfo] = []
        rows_of: dict[str, object] = {}  # activation -> "n" (the step's tokens) or 1
        for i, op in enumerate(graph.ops):
            rows = 1 if op.kind == "last_row" else (rows_of.get(op.inputs[0], "n") if op.inputs else "n")
            rows_of[op.out] = rows
            section, layer = self._section(op, graph)
            self.ops.append(_OpInfo(section, layer, op.kind, rows, *self._shape(op, graph, tensors)))
            self.producer[op.out] = i

    def _section(self, op, graph) -> tuple[str, int | None]:
        if op.kind == "embed":
            return "embedding", None
        if op.out == graph.output:
            return "output head", None
        for w in op.weights:
            m = _BLK.match(w)
            if m:
                part = m.group(2)
                return ("ffn" if part.startswith(("ffn", "post_ffw", "post_ffn")) else "attention"), int(m.group(1))
            if w.startswith("output_norm"):
                return "final norm", None
        sources = [self.producer[x] for x in op.inputs if x in self.producer]
        if sources:
            src = self.ops[max(sources)]
            if src.section == "output head":  # an op over the logits (a custom graph's output view)
                return "other", None
            return src.section, src.layer
        return "other", None

    @staticmethod
    def _shape(op, graph, tensors) -> tuple[str, str, int | None]:
        """(shape text with R for the step's rows, weight text, bytes per row or fixed bytes)."""
        w_out = graph.widths[op.out]
        w_in = graph.widths[op.inputs[0]] if op.inputs else w_out
        p = op.p
        if op.kind == "embed":
            t = tensors.get(op.weights[0])
            row_bytes = t[2] // max(1, t[1][0]) if t else 4 * w_out
            return f"Rx{w_out}", _weight_text(op.weights, tensors), ("per_row", row_bytes + 4 * w_out)
        if op.kind == "linear":
            wbytes = sum(tensors[w][2] for w in op.weights if w in tensors)
            return (f"Rx{w_in} -> Rx{w_out}", _weight_text(op.weights, tensors),
                    ("fixed+row", wbytes, 4 * (w_in + w_out)))
        if op.kind == "rms_norm":
            group = graph.weight_shapes[op.weights[0]][1]
            return f"Rx{w_out}" + (f" in groups of {group}" if group != w_out else ""), \
                _weight_text(op.weights, tensors), ("fixed+row", 4 * group, 8 * w_out)
        if op.kind == "attention":
            kv = p["n_kv_head"] * p["head_dim"]
            win = f", window {p['window']}" if p["window"] else ""
            return (f"q Rx{p['n_head']}x{p['head_dim']}, kv {p['n_kv_head']}x{p['head_dim']}{win}", "",
                    ("attention", 4 * (2 * w_out + 2 * kv), 8 * kv, p["window"]))
        if op.kind == "glu":
            return f"Rx{w_in} -> Rx{w_out} {p['activation']}", "", ("per_row", 4 * (w_in + w_out))
        if op.kind == "add":
            return f"Rx{w_out}", "", ("per_row", 12 * w_out)
        if op.kind in ("rope", "scale"):
            return f"Rx{w_out}", "", ("per_row", 8 * w_out)
        return f"Rx{w_out}", "", None  # views (slice, last_row): no work

    def describe(self, i: int, n_tokens: int, pos0: int) -> tuple[str, int | None]:
        """(shape, bytes) of op i in a step of n_tokens at pos0."""
        info = self.ops[i]
        rows = n_tokens if info.rows == "n" else 1
        shape = info.shape.replace("R", str(rows))
        b = info.bytes
        if b is None:
            return shape, None
        if b[0] == "per_row":
            return shape, rows * b[1]
        if b[0] == "fixed+row":
            return shape, b[1] + rows * b[2]
        _, per_row, per_pos, window = b  # attention: every row reads the cache positions it sees
        seen = sum(min(pos0 + r + 1, window) if window else pos0 + r + 1 for r in range(rows))
        return shape + f", {pos0 + rows} positions", rows * per_row + seen * per_pos


def op_sections(graph) -> list[tuple[str, int | None]]:
    """(section, layer) of each op of the graph, in order, as the trace reports them."""
    return [(op.section, op.layer) for op in _GraphInfo(graph, {}).ops]


def _weight_text(names, tensors) -> str:
    """'Q4_1 attn_q+attn_k+attn_v [960x576]'."""
    known = [tensors[n] for n in names if n in tensors]
    if not known:
        return ""
    types = sorted({t[0] for t in known})
    short = "+".join(_BLK.sub(r"\2", n).removesuffix(".weight") for n in names)
    rows = sum(t[1][0] for t in known)
    cols = known[0][1][-1]
    dims = f"{cols}" if len(known[0][1]) == 1 else f"{rows}x{cols}"
    return f"{'/'.join(types)} {short} [{dims}]"


class Trace:
    """Collects traced steps (`record_step`, `record_sampling`) and reports them (`report`, `to_chrome`)."""

    def __init__(self, gguf_file=None, backend: str = "", device: str = ""):
        self.tensors: dict[str, tuple[str, tuple, int]] = {}
        if gguf_file is not None:
            for name, t in gguf_file.tensors.items():
                shape = tuple(int(s) for s in t.shape)
                shape = shape if len(shape) == 1 else (int(_prod(shape[:-1])), shape[-1])
                self.tensors[name] = (t.type_name, shape, int(t.n_bytes))
        self.backend, self.device = backend, device
        self.timer = ""  # how op times were measured (set by the backend's first report)
        self.phase = "prefill"  # the kind of the steps reported next; the generation loop sets it
        self.steps: list[StepRecord] = []
        self.t0 = time.perf_counter()
        self._graphs: dict[int, _GraphInfo] = {}

    def clear(self) -> None:
        self.steps = []
        self.t0 = time.perf_counter()

    # ---- what backends and the generation loop report ----
    def _info(self, graph) -> _GraphInfo:
        key = id(graph)
        if key not in self._graphs or self._graphs[key].graph is not graph:
            self._graphs[key] = _GraphInfo(graph, self.tensors)
        return self._graphs[key]

    def record_step(self, graph, n_tokens: int, pos0: int, keys: list, seconds: list[float], wall_s: float,
                    t_start: float, timer: str = "") -> None:
        """One traced step: keys are op indices of `graph` (one entry per op run) or GPU dispatch
        labels "<activation>: <kernel ...>"; seconds the time of each. Consecutive dispatches of
        the same op and kernel (row pieces of a weight) count as one op."""
        info = self._info(graph)
        if timer:
            self.timer = timer
        step = StepRecord(self.phase, n_tokens, pos0, wall_s, t_start - self.t0)
        at = step.start
        for key, sec in zip(keys, seconds):
            i, kind, kernel = self._resolve(info, key)
            name = graph.ops[i].out if i is not None else str(key).partition(": ")[0]
            last = step.ops[-1] if step.ops else None
            if last is not None and not isinstance(key, int) and last.name == name and last.kernel == kernel:
                last.seconds += sec  # another row piece / stage of the same kernel
                last.dispatches += 1
                at += sec
                continue
            if kind in _SAMPLING_KERNELS:
                width = graph.widths.get(graph.output, 0)
                rows = n_tokens if kind == "argmax" and self._all_rows(info) else 1
                rec = OpRecord("sampling", None, kind, name, f"{rows}x{width}", "", sec, 4 * rows * width, at,
                               kernel=kernel)
            elif i is None:
                rec = OpRecord("other", None, kind, name, "", "", sec, None, at, kernel=kernel)
            else:
                op = info.ops[i]
                shape, nbytes = info.describe(i, n_tokens, pos0)
                rec = OpRecord(op.section, op.layer, kind, name, shape, op.weight, sec, nbytes, at, kernel=kernel)
            step.ops.append(rec)
            at += sec
        self.steps.append(step)

    @staticmethod
    def _all_rows(info: _GraphInfo) -> bool:
        return info.ops[-1].rows == "n"

    @staticmethod
    def _resolve(info: _GraphInfo, key) -> tuple[int | None, str, str]:
        """(op index, op kind, kernel) of a measured key. A GPU label names the activation the
        dispatch computes and its kernel ("flash attention", "matmul", ...): the op kind is the
        graph op's, unless the kernel is another graph op kind (an op fused into its neighbour,
        as rms_norm carrying a residual add) or a sampling kernel."""
        if isinstance(key, int):
            kind = info.graph.ops[key].kind
            return key, kind, kind
        name, _, what = str(key).partition(": ")
        words = []
        for w in what.split():
            if "." in w or "[" in w or w == "layer" or w == "stage":
                break
            words.append(w)
        kernel = " ".join(words) or "kernel"
        i = info.producer.get(name)
        first = words[0] if words else kernel
        if i is None or first in _SAMPLING_KERNELS or first in _OP_KINDS:
            return i, first, kernel
        return i, info.graph.ops[i].kind, kernel

    def record_sampling(self, seconds: float) -> None:
        """Host time spent choosing the token after the last recorded step."""
        if self.steps:
            step = self.steps[-1]
            at = step.ops[-1].start + step.ops[-1].seconds if step.ops else step.start
            step.ops.append(OpRecord("sampling", None, "sampler", "host sampler", "", "", seconds, None, at,
                                     kernel="sampler"))

    # ---- summaries ----
    def kinds(self) -> list[str]:
        return [k for k in ("prefill", "decode") if any(s.kind == k for s in self.steps)]

    def section_means(self, kind: str) -> dict[str, float]:
        """Mean seconds per step of each section (layers' attention and ffn summed over layers)."""
        steps = [s for s in self.steps if s.kind == kind]
        total: dict[str, float] = defaultdict(float)
        for s in steps:
            for op in s.ops:
                total[op.section] += op.seconds
        return {sec: total.get(sec, 0.0) / max(1, len(steps)) for sec in SECTIONS}

    def layer_means(self, kind: str) -> dict[int, dict[str, float]]:
        steps = [s for s in self.steps if s.kind == kind]
        out: dict[int, dict[str, float]] = defaultdict(lambda: {"attention": 0.0, "ffn": 0.0})
        for s in steps:
            for op in s.ops:
                if op.layer is not None and op.section in ("attention", "ffn"):
                    out[op.layer][op.section] += op.seconds / len(steps)
        return dict(sorted(out.items()))

    def op_rows(self, kind: str) -> list[dict]:
        """The ops of a step kind, the same op of every layer folded into one row: calls per step,
        mean ms per step and per call, GB/s over all of them."""
        steps = [s for s in self.steps if s.kind == kind]
        rows: dict[tuple, dict] = {}
        for s in steps:
            for op in s.ops:
                shape = re.sub(r", \d+ positions$", "", op.shape)
                key = (op.section, op.kind, op.kernel, _role(op), shape, op.weight)
                r = rows.setdefault(key, {"section": op.section, "op": _op_text(op),
                                          "shape": shape, "weight": op.weight, "calls": 0, "seconds": 0.0,
                                          "bytes": 0, "bytes_known": True, "order": len(rows)})
                r["calls"] += 1
                r["seconds"] += op.seconds
                if op.bytes is None:
                    r["bytes_known"] = False
                else:
                    r["bytes"] += op.bytes
        n = max(1, len(steps))
        out = []
        for r in sorted(rows.values(), key=lambda r: r["order"]):
            gbs = r["bytes"] / r["seconds"] / 1e9 if r["bytes_known"] and r["seconds"] > 0 and r["bytes"] else None
            out.append({"section": r["section"], "op": r["op"], "shape": r["shape"], "weight": r["weight"],
                        "calls_per_step": r["calls"] / n, "ms_per_step": 1e3 * r["seconds"] / n,
                        "ms_per_call": 1e3 * r["seconds"] / r["calls"], "gb_per_s": gbs})
        return out

    def report(self) -> str:
        """The human-readable report: steps, sections, layers, ops."""
        if not self.steps:
            return "trace: no steps recorded"
        lines = [f"trace: {self.backend} on {self.device}" if self.device else f"trace: {self.backend}",
                 (f"  op times: {self.timer or 'host clock'}; traced steps run op by op, so wall times "
                  "are slower than untraced ones")]
        lines.append("")
        lines.append(f"{'steps':<9}{'count':>6}{'tokens':>8}{'wall ms/step':>14}{'ops ms/step':>13}"
                     f"{'host sampling ms/step':>23}")
        for kind in self.kinds():
            steps = [s for s in self.steps if s.kind == kind]
            tokens = sum(s.n_tokens for s in steps)
            wall = sum(s.wall_s for s in steps)
            host = sum(op.seconds for s in steps for op in s.ops if op.kind == "sampler")
            ops = sum(op.seconds for s in steps for op in s.ops) - host
            n = len(steps)
            lines.append(f"{kind:<9}{n:>6}{tokens:>8}{1e3 * wall / n:>14.3f}{1e3 * ops / n:>13.3f}{1e3 * host / n:>23.3f}")
        for kind in self.kinds():
            means = self.section_means(kind)
            total = sum(means.values())
            n_layers = len(self.layer_means(kind))
            lines += ["", f"{kind + ': time per step by section':<40}{'ms':>10}{'%':>8}"]
            rows = [("embedding", means["embedding"]), (f"layers ({n_layers})", means["attention"] + means["ffn"]),
                    ("  attention", means["attention"]), ("  ffn", means["ffn"]), ("final norm", means["final norm"]),
                    ("output head", means["output head"]), ("sampling", means["sampling"])]
            if means["other"]:
                rows.append(("other", means["other"]))
            rows.append(("all ops", total))
            for label, sec in rows:
                lines.append(f"  {label:<38}{1e3 * sec:>10.3f}{100 * sec / total if total else 0:>8.1f}")
        kinds = self.kinds()
        per_layer = {k: self.layer_means(k) for k in kinds}
        layers = sorted({i for k in kinds for i in per_layer[k]})
        if layers:
            lines += ["", "per layer, ms per step: attention / ffn"]
            lines.append(f"  {'layer':>5}" + "".join(f"{k + ' attn':>16}{k + ' ffn':>15}" for k in kinds))
            for i in layers:
                cells = "".join(f"{1e3 * per_layer[k].get(i, {}).get('attention', 0):>16.3f}"
                                f"{1e3 * per_layer[k].get(i, {}).get('ffn', 0):>15.3f}" for k in kinds)
                lines.append(f"  {i:>5}{cells}")
        for kind in kinds:
            lines += ["", (f"{kind}: per op (the same op of every layer on one row; "
                           "GB/s = weight + activation + KV bytes moved / time)"),
                      (f"  {'section':<12}{'op':<44}{'shape':<40}{'weight':<36}{'calls':>6}{'ms/step':>10}"
                       f"{'ms/call':>10}{'GB/s':>8}")]
            for r in self.op_rows(kind):
                gbs = f"{r['gb_per_s']:.2f}" if r["gb_per_s"] is not None else "-"
                lines.append(f"  {r['section']:<12}{r['op'][:43]:<44}{r['shape'][:39]:<40}{r['weight'][:35]:<36}"
                             f"{r['calls_per_step']:>6.0f}{r['ms_per_step']:>10.3f}{r['ms_per_call']:>10.4f}{gbs:>8}")
        return "\n".join(lines)

    # ---- machine-readable ----
    def to_dict(self) -> dict:
        return {"backend": self.backend, "device": self.device, "timer": self.timer,
                "steps": [{**{k: v for k, v in asdict(s).items() if k != "ops"},
                           "ops": [asdict(op) for op in s.ops]} for s in self.steps],
                "sections_ms_per_step": {k: {sec: 1e3 * v for sec, v in self.section_means(k).items()}
                                         for k in self.kinds()}}

    def to_chrome(self) -> dict:
        """Chrome trace event format: steps on one track, their ops (laid end to end) on another."""
        events = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": f"wgpu-llm {self.backend}"}},
                  {"name": "thread_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "steps"}},
                  {"name": "thread_name", "ph": "M", "pid": 0, "tid": 1, "args": {"name": "ops"}}]
        for s in self.steps:
            events.append({"name": f"{s.kind} pos {s.pos0} ({s.n_tokens} tokens)", "cat": s.kind, "ph": "X",
                           "pid": 0, "tid": 0, "ts": 1e6 * s.start, "dur": 1e6 * s.wall_s,
                           "args": {"n_tokens": s.n_tokens, "pos0": s.pos0}})
            for op in s.ops:
                where = f"layer {op.layer} {op.section}" if op.layer is not None else op.section
                args = {"section": op.section, "layer": op.layer, "activation": op.name, "shape": op.shape,
                        "weight": op.weight, "bytes": op.bytes, "dispatches": op.dispatches}
                if op.bytes and op.seconds > 0:
                    args["GB/s"] = round(op.bytes / op.seconds / 1e9, 3)
                events.append({"name": _op_text(op), "cat": where, "ph": "X", "pid": 0,
                               "tid": 1, "ts": 1e6 * op.start, "dur": 1e6 * op.seconds, "args": args})
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "metadata": {"backend": self.backend, "device": self.device, "timer": self.timer,
                             "sections_ms_per_step": self.to_dict()["sections_ms_per_step"]}}

    def write_json(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_chrome(), f)


def _op_text(op: OpRecord) -> str:
    """'linear attn_q+attn_k+attn_v', 'linear [matmul] ffn_down', 'attention [flash attention]'."""
    kind = op.kind + (f" [{op.kernel}]" if op.kernel and op.kernel.split()[0] != op.kind else "")
    return f"{kind} {_role(op)}".strip()


def _role(op: OpRecord) -> str:
    """What distinguishes an op within its section: its weights' names without the layer prefix."""
    if op.weight:
        return op.weight.split(" ")[1] if " " in op.weight else ""
    return ""


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out
