"""Tracing (wgpu_llm/trace.py): a traced generation on both backends reports every section with
positive times, per layer and per op; sections come from the graph alone; tracing is off by
default and then changes nothing (same programs, same dispatch count, same tokens)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import no_gpu
from tiny_models import write_tiny_model

from wgpu_llm import LLM
from wgpu_llm.gguf_file import GGUFFile
from wgpu_llm.models import architecture
from wgpu_llm.trace import ENV, Trace

GEMMA_SHAPE = {"n_layer": 6, "n_kv_head": 1, "head_dim": 32, "d_ff": 128, "sliding_window": 4}
PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model_path(request, tmp_path_factory):
    arch = request.param
    return write_tiny_model(tmp_path_factory.mktemp("m") / f"{arch}.gguf", arch, "Q8_0", n_ctx=64,
                            **(GEMMA_SHAPE if arch == "gemma3" else {}))


def _gpu_or_skip(backend: str):
    if backend == "gpu":
        from wgpu_llm.gpu.device import GpuUnavailable, choose_adapter

        try:
            choose_adapter(allow_software=True)
        except GpuUnavailable as e:
            no_gpu(f"no GPU adapter: {e}")


def check_trace(trace: Trace, n_layer: int, kinds=("prefill", "decode"), norm_on_load: bool = False) -> str:
    """norm_on_load (the GPU): a decode step's head does the final norm as it loads its input, so
    the final norm takes no time of its own there."""
    assert trace.kinds() == list(kinds)
    for kind in kinds:
        means = trace.section_means(kind)
        folded = norm_on_load and kind == "decode"
        for section in ("embedding", "attention", "ffn", "output head", "sampling"):
            assert means[section] > 0, (kind, section, means)
        assert (means["final norm"] == 0) if folded else (means["final norm"] > 0), (kind, means)
        assert means["other"] == 0
        layers = trace.layer_means(kind)
        assert sorted(layers) == list(range(n_layer))
        assert all(v["attention"] > 0 and v["ffn"] > 0 for v in layers.values())
        rows = trace.op_rows(kind)
        kinds_seen = {r["op"].split(" ")[0] for r in rows}
        assert {"embed", "linear", "attention"} | (set() if folded else {"rms_norm"}) <= kinds_seen
        head = [r for r in rows if r["section"] == "output head"]
        assert len(head) == 1 and head[0]["gb_per_s"] > 0 and "x" in head[0]["weight"]
        assert ("[normed linear]" in head[0]["op"]) == folded, head
        assert all(r["ms_per_step"] > 0 for r in rows)
    report = trace.report()
    for text in ("prefill", "decode", "embedding", "attention", "ffn", "final norm", "output head", "sampling",
                 "per layer", "per op", "GB/s"):
        assert text in report
    return report


@pytest.mark.parametrize("backend", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "top_k": 40, "seed": 1},
                                      {"temperature": 0.8, "top_k": 0, "seed": 1}])
def test_trace_report_on_both_backends(model_path, backend, sampling, tmp_path):
    _gpu_or_skip(backend)
    llm = LLM(model_path, backend=backend, n_batch=64, trace=True)
    untraced = LLM(model_path, backend=backend, n_batch=64)
    out = llm.generate(PROMPT, max_tokens=4, ignore_eos=True, **sampling)
    assert out.tokens == untraced.generate(PROMPT, max_tokens=4, ignore_eos=True, **sampling).tokens
    steps = llm.trace.steps
    assert [s.kind for s in steps] == ["prefill"] + ["decode"] * 3
    n = len(llm.tokenize(PROMPT))
    assert steps[0].n_tokens == n and [s.pos0 for s in steps[1:]] == [n, n + 1, n + 2]
    report = check_trace(llm.trace, llm.config.n_layer,
                         norm_on_load=backend == "gpu" and not llm.backend.cfg.linear_whole_rows)
    if backend == "gpu":
        assert "timestamp" in llm.trace.timer
        kernels = {op.kind for s in steps for op in s.ops if op.section == "sampling"}
        assert kernels == ({"argmax"} if sampling["temperature"] == 0 else
                           {"top_k", "sample", "sampler"} if sampling["top_k"] else {"sampler"})
    path = tmp_path / "trace.json"
    llm.trace.write_json(path)
    events = json.loads(path.read_text())["traceEvents"]
    assert {e["ph"] for e in events} == {"M", "X"}
    assert sum(e.get("tid") == 0 and e["ph"] == "X" for e in events) == 4  # one event per step
    assert all(e["dur"] >= 0 for e in events if e["ph"] == "X")
    print(report)


@pytest.mark.gpu
def test_gpu_trace_without_timestamp_queries(model_path):
    """An adapter without timestamp queries: every dispatch is timed on the host instead."""
    _gpu_or_skip("gpu")
    llm = LLM(model_path, backend="gpu", n_batch=64, trace=True)
    llm.backend.rt.timestamp_query = False
    llm.generate(PROMPT, max_tokens=3, temperature=0, ignore_eos=True)
    assert "host clock" in llm.trace.timer
    check_trace(llm.trace, llm.config.n_layer, norm_on_load=not llm.backend.cfg.linear_whole_rows)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_off_by_default_and_untouched(model_path, backend, monkeypatch):
    _gpu_or_skip(backend)
    monkeypatch.delenv(ENV, raising=False)
    llm = LLM(model_path, backend=backend)
    assert llm.trace is None and llm.backend.tracer is None
    llm.generate(PROMPT, max_tokens=3, temperature=0)
    if backend == "gpu":
        step = llm._step(1, False)
        gf = GGUFFile(model_path)
        if gf.architecture == "llama":  # the untraced decode step is the same program as always
            norms_apart = llm.backend.cfg.linear_whole_rows  # backend.norm_on_load_mode
            assert step.n_dispatches == (7 if norms_apart else 5) * llm.config.n_layer + (3 if norms_apart else 2)
        traced = LLM(model_path, backend="gpu", trace=True)
        assert traced._step(1, False).n_dispatches == step.n_dispatches
        assert step.program.last_times == ()  # never ran timed
    monkeypatch.setenv(ENV, "1")
    assert LLM(model_path, backend=backend).trace is not None
    monkeypatch.setenv(ENV, "0")
    assert LLM(model_path, backend=backend).trace is None


def test_sections_come_from_the_graph(model_path):
    from wgpu_llm.trace import _GraphInfo

    gf = GGUFFile(model_path)
    graph = architecture(gf).build_graph(gf, all_logits=False)
    info = _GraphInfo(graph, {})
    sections = {op.out: (info.ops[i].section, info.ops[i].layer) for i, op in enumerate(graph.ops)}
    for i, op in enumerate(graph.ops):
        section, layer = sections[op.out]
        names = " ".join(op.weights)
        if op.kind == "embed":
            assert section == "embedding"
        elif op.out == graph.output:
            assert section == "output head"
        elif "output_norm" in names:
            assert section == "final norm"
        elif op.kind == "attention":
            assert section == "attention" and layer == op.param("layer")
        elif op.kind == "glu" or "ffn" in names or "post_ffw" in names:
            assert section == "ffn", (op, section)
        elif "attn" in names or "post_attention" in names or op.kind == "rope":
            assert section == "attention", (op, section)
        if op.weights and op.weights[0].startswith("blk."):
            assert layer == int(op.weights[0].split(".")[1])


def test_cli_run_trace(model_path, tmp_path):
    from wgpu_llm.cli import main

    path = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["run", str(model_path), "-p", PROMPT, "-n", "3", "--temperature", "0",
                                       "--backend", "cpu", "--trace", "--trace-json", str(path)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "decode: time per step by section" in text and "per op" in text
    assert json.loads(path.read_text())["traceEvents"]
