"""`wgpu-llm verify`: the GPU backend against the numpy reference on this machine, op by op.

The model runs a prompt (a prefill, then a few greedy decode steps fed the GPU's choices) on the
GPU backend with every activation the GPU materialises captured (`compile(..., capture="all")`),
then twice on the numpy backend with the same token ids:
- from the prompt ("end to end"): what the CPU alone computes. Rounding differences compound
  through the layers here, so these numbers are shown, never judged;
- replayed on the GPU's activations (`step.replay`): each op reads the GPU's values of its inputs
  (attention also the GPU's k and v of earlier steps, stored in the KV cache as it runs), so its
  result differs from the GPU's by that one op's rounding alone. This is what is judged, against
  the tolerance of the op's kind (wgpu_llm/tolerances.py, measured by tests/test_ops_parity.py):
  a faulty kernel shows at its own op, and the ops after it, given its output, agree again.
Ops the GPU fuses into one kernel (a residual add into a linear, a rope into a norm, ...) have no
GPU value of their own: the reference computes them from the nearest materialised inputs and the
comparison happens at the fused kernel's output, under the largest tolerance of the fused kinds.

Divergence is NMSE = sum((gpu - ref)^2) / sum(ref^2) over the activation, and the largest absolute
difference; a non-finite GPU value where the reference is finite diverges infinitely.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .tolerances import op_tolerance
from .trace import op_sections

DEFAULT_PROMPT = "The capital of France is"
DEFAULT_DECODE_STEPS = 3


@dataclass
class Step:
    kind: str  # "prefill" or "decode"
    n_tokens: int
    pos0: int

    def describe(self) -> str:
        return f"{self.kind} of {self.n_tokens} token{'s' * (self.n_tokens != 1)} at position {self.pos0}"


@dataclass
class OpCheck:
    """One activation of one step: the GPU's value against the reference's."""

    step: int  # index into Report.steps
    op: int  # index of the op in the graph
    name: str  # the activation
    kinds: tuple[str, ...]  # the op's kind, after those fused into the same GPU kernel
    section: str  # as wgpu_llm.trace names it: "attention", "ffn", "embedding", ...
    layer: int | None
    weights: tuple[str, ...]
    nmse: float  # against the reference on the GPU's inputs
    max_abs: float
    tolerance: float
    e2e_nmse: float  # against the reference from the prompt (compounded; not judged)
    e2e_max_abs: float

    @property
    def ok(self) -> bool:
        return self.nmse <= self.tolerance  # False for NaN

    def where(self) -> str:
        return f"layer {self.layer} {self.section}" if self.layer is not None else self.section

    def what(self) -> str:
        text = f"{self.name} ({'+'.join(self.kinds)}"
        return text + (f" over {', '.join(self.weights)})" if self.weights else ")")


@dataclass
class Report:
    model: str
    gpu: str  # the adapter, as the GPU backend describes it
    prompt: str
    tokens: list[int]  # the prompt's, then those fed to the decode steps (the GPU's greedy choices)
    steps: list[Step]
    checks: list[OpCheck]
    fused: dict[str, int]  # what the GPU fused -> how many ops it took away from the graph
    gpu_next: list[int]  # the greedy next token of every step: GPU
    cpu_next: list[int]  # and the reference from the prompt
    not_materialised: list[str] = field(default_factory=list)  # activations no GPU kernel writes

    @property
    def failures(self) -> list[OpCheck]:
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def first_failure(self) -> OpCheck | None:
        """The first op above its tolerance, in execution order (steps, then ops)."""
        return self.failures[0] if self.failures else None

    def to_dict(self) -> dict:
        first = self.first_failure()
        return {
            "model": self.model, "gpu": self.gpu, "prompt": self.prompt, "tokens": self.tokens,
            "steps": [asdict(s) for s in self.steps],
            "ok": self.ok,
            "first_failure": None if first is None else _check_dict(first, self.steps),
            "n_checks": len(self.checks), "n_failures": len(self.failures),
            "fused": self.fused, "not_materialised": self.not_materialised,
            "gpu_next_tokens": self.gpu_next, "cpu_next_tokens": self.cpu_next,
            "checks": [_check_dict(c, self.steps) for c in self.checks],
        }


def _check_dict(c: OpCheck, steps: list[Step]) -> dict:
    d = asdict(c)
    d["kinds"] = list(c.kinds)
    d["weights"] = list(c.weights)
    d["ok"] = c.ok
    d["step_kind"] = steps[c.step].kind
    for key in ("nmse", "max_abs", "e2e_nmse", "e2e_max_abs"):  # JSON has no inf / NaN
        if not np.isfinite(d[key]):
            d[key] = str(d[key])
    return d


def divergence(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(NMSE, max abs difference) of got against ref, in float64. Elements non-finite on either
    side count only where the two are not the same infinity: then both are inf."""
    if got.shape != ref.shape:
        raise ValueError(f"shapes differ: {got.shape} vs {ref.shape}")
    g, r = got.astype(np.float64), ref.astype(np.float64)
    finite = np.isfinite(g) & np.isfinite(r)
    if not finite.all():
        if np.any(~finite & ~(g == r)):  # NaN, or an infinity on one side only
            return float("inf"), float("inf")
        g, r = g[finite], r[finite]
    if g.size == 0:
        return 0.0, 0.0
    diff = g - r
    num, den = float(np.sum(diff * diff)), float(np.sum(r * r))
    nmse = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    return nmse, float(np.max(np.abs(diff)))


def fused_group(graph, i: int, materialised) -> list[int]:
    """Op i and the ops whose outputs it reads but the GPU never materialised (recursively): the
    ops the reference computes from materialised values to compare with op i's GPU value."""
    producer = {op.out: k for k, op in enumerate(graph.ops)}
    group, todo = set(), [i]
    while todo:
        k = todo.pop()
        if k not in group:
            group.add(k)
            todo += [producer[x] for x in graph.ops[k].inputs if x not in materialised and x in producer]
    return sorted(group)


def _argmax_last(logits: np.ndarray) -> int:
    return int(np.argmax(logits[-1]))


def verify(model=None, prompt: str = DEFAULT_PROMPT, decode_steps: int = DEFAULT_DECODE_STEPS,
           n_ctx: int | None = None, adapter: str | None = None, log=None) -> Report:
    """Run the comparison (see the module docstring). model: a GGUF path or known name (default
    the zoo's); log(text): progress lines (default: none)."""
    from cpu_fallback.backend import CpuBackend

    from .api import LLM, ContextOverflow
    from .models import build_graph

    log = log or (lambda text: None)
    if decode_steps < 0:
        raise ValueError(f"decode_steps={decode_steps} must be >= 0")
    llm = LLM(model, backend="gpu", n_ctx=n_ctx, adapter=adapter)
    llm.backend.tracer = None  # time nothing: the steps here are not representative
    gpu = llm.backend
    log(f"gpu: {gpu.describe()}")
    ids = llm.tokenize(prompt)
    if not ids:
        raise ValueError("the prompt has no tokens")
    if len(ids) + decode_steps > llm.n_ctx:
        raise ContextOverflow(f"{len(ids)} prompt tokens and {decode_steps} decode steps do not fit the context "
                              f"of {llm.n_ctx} tokens")
    graph = build_graph(llm.file, all_logits=False, n_ctx=llm.n_ctx)
    per_step = min(llm.n_batch, gpu.max_tokens_per_step(graph))

    # the GPU: the prompt in chunks, then greedy decode steps fed its own choices
    gpu_steps: dict[int, object] = {}
    steps, feeds, gpu_acts, gpu_next = [], [], [], []

    def run_gpu(chunk: list[int], pos0: int, kind: str) -> None:
        n = len(chunk)
        if n not in gpu_steps:
            gpu_steps[n] = gpu.compile(graph, n, capture="all")
        logits = gpu_steps[n](np.array(chunk, np.int32), pos0)
        steps.append(Step(kind, n, pos0))
        feeds.append(chunk)
        gpu_acts.append(gpu_steps[n].read_captured())
        gpu_next.append(_argmax_last(logits))

    log(f"gpu: {len(ids)} prompt tokens, {decode_steps} decode steps")
    for start in range(0, len(ids), per_step):
        run_gpu(ids[start:start + per_step], start, "prefill")
    for d in range(decode_steps):
        run_gpu([gpu_next[-1]], len(ids) + d, "decode")
    tokens = ids + [chunk[0] for s, chunk in zip(steps, feeds) if s.kind == "decode"]

    # the reference: from the prompt, then replayed on the GPU's activations (one KV cache, rewritten)
    cpu = CpuBackend(llm.file, llm.n_ctx, kv_type=gpu.kv_type)  # the same cache rounding as the GPU's
    cpu_steps = {n: cpu.compile(graph, n, capture="all") for n in gpu_steps}
    log("numpy: the same steps from the prompt")
    e2e_acts, cpu_next = [], []
    for s, chunk in zip(steps, feeds):
        step = cpu_steps[s.n_tokens]
        cpu_next.append(_argmax_last(step(np.array(chunk, np.int32), s.pos0)))
        e2e_acts.append(step.read_captured())
    log("numpy: each op on the GPU's inputs")
    sections = op_sections(graph)
    checks = []
    for k, (s, chunk) in enumerate(zip(steps, feeds)):
        step = cpu_steps[s.n_tokens]
        step.replay(np.array(chunk, np.int32), s.pos0, gpu_acts[k])
        local = step.read_captured()
        got = gpu_acts[k]
        for i, op in enumerate(graph.ops):
            if op.out not in got:
                continue
            group = fused_group(graph, i, got)
            nmse, max_abs = divergence(got[op.out], local[op.out])
            e2e_nmse, e2e_max = divergence(got[op.out], e2e_acts[k][op.out])
            section, layer = sections[i]
            checks.append(OpCheck(k, i, op.out, tuple(graph.ops[j].kind for j in group), section, layer,
                                  tuple(w for j in group for w in graph.ops[j].weights), nmse, max_abs,
                                  op_tolerance(graph.ops[j].kind for j in group), e2e_nmse, e2e_max))
    fused = Counter()
    for index, reason in sorted({(i, r) for st in gpu_steps.values() for i, r in st.fused.items()}):
        fused[reason] += 1
    not_materialised = [op.out for op in graph.ops if all(op.out not in a for a in gpu_acts)]
    return Report(str(llm.file.path), gpu.describe(), prompt, tokens, steps, checks, dict(fused), gpu_next, cpu_next,
                  not_materialised)


# ---- output ----
_SHORT_SECTION = {"attention": "attn", "embedding": "embed", "final norm": "norm", "output head": "head"}


def _fmt(x: float, digits: int = 1) -> str:
    return "0" if x == 0 else (f"{x:.{digits}e}" if np.isfinite(x) else str(x))


def _layer_label(c: OpCheck) -> str:
    section = _SHORT_SECTION.get(c.section, c.section)
    return f"{c.layer} {section}" if c.layer is not None else section


def print_report(report: Report, console=None) -> None:
    """The table, one row per op (its worst step), a rule between layers; then the verdict."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    worst: dict[int, OpCheck] = {}
    e2e: dict[int, float] = {}
    for c in report.checks:
        if c.op not in worst or not c.nmse <= worst[c.op].nmse:  # NaN wins
            worst[c.op] = c
        e2e[c.op] = max(e2e.get(c.op, 0.0), c.e2e_nmse)
    table = Table(title=f"{Path(report.model).name}: each op's GPU result vs numpy on the GPU's inputs, NMSE "
                        f"(worst of {len(report.steps)} steps)", title_justify="left", box=box.SIMPLE_HEAD,
                  padding=(0, 1), show_edge=False, pad_edge=False)
    for col, justify in (("layer", "left"), ("op", "left"), ("kind", "left"), ("NMSE", "right"),
                         ("max abs", "right"), ("tol", "right"), ("e2e", "right"), ("", "left")):
        # names wrap on a narrow terminal, numbers never
        table.add_column(col, justify=justify, no_wrap=justify == "right", min_width=len(col),
                         overflow="ellipsis" if justify == "right" else "fold")
    previous = None
    for i in sorted(worst):
        c = worst[i]
        if previous is not None and c.layer != previous:
            table.add_section()
        previous = c.layer
        table.add_row(_layer_label(c), c.name, "+".join(c.kinds), _fmt(c.nmse), _fmt(c.max_abs), _fmt(c.tolerance, 0),
                      _fmt(e2e[i]), "ok" if c.ok else "[bold red]OVER[/]")
    console.print(table)
    console.print("e2e: NMSE against numpy run from the prompt on its own, where rounding compounds over layers "
                  "(shown, not judged)")
    console.print(f"prompt: {report.prompt!r}; steps: " + ", ".join(s.describe() for s in report.steps))
    console.print(f"gpu: {report.gpu}")
    if report.fused:
        console.print("fused on the GPU, compared at the fused kernel's output: "
                      + "; ".join(f"{reason} (x{n})" for reason, n in sorted(report.fused.items())))
    agree = sum(a == b for a, b in zip(report.gpu_next, report.cpu_next))
    console.print(f"greedy next token, GPU vs numpy from the prompt: same in {agree} of {len(report.gpu_next)} steps")
    first = report.first_failure()
    if first is None:
        console.print(f"[bold green]OK[/]: all {len(report.checks)} op results within tolerance")
        return
    console.print(f"[bold red]FAIL[/]: {len(report.failures)} of {len(report.checks)} op results above tolerance. "
                  f"First: {first.where()}, {first.what()}, {report.steps[first.step].describe()}: "
                  f"NMSE {_fmt(first.nmse)} > {_fmt(first.tolerance, 0)}, max abs {_fmt(first.max_abs)}")


def main(model, prompt, decode_steps, n_ctx, adapter, as_json: bool) -> int:
    """The command: 0 when every op is within tolerance, 1 when any is not (or it cannot run)."""
    import json

    import click

    from .backends import BackendUnavailable
    from .gguf_file import GGUFError

    def log(text: str) -> None:
        click.echo(f"verify: {text}", err=True)

    try:
        report = verify(model, prompt, decode_steps, n_ctx, adapter, log)
    except (BackendUnavailable, GGUFError, ValueError, RuntimeError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        return 1
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        print_report(report)
    return 0 if report.ok else 1
