"""The benchmark engine on a tiny random model: wgpu-llm:cpu only, tiny cases, a few seconds."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import write_tiny_model

from wgpu_llm import bench


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_bench_tiny_model_json(tmp_path):
    model = write_tiny_model(tmp_path / "tiny.gguf", "llama")
    cases = [bench.Case("prefill_24", 24, 1, 2), bench.Case("decode_16", 16, 6, 1),
             bench.Case("too_long", 300, 4, 1)]  # longer than the tiny model's 256-token context
    in_git = (bench.ROOT / ".git").exists()
    head_before = _git(bench.ROOT, "rev-parse", "HEAD") if in_git else None
    doc = bench.run_suite([str(model)], cases, ["wgpu-llm:cpu"], threads=1, timeout=120, log=lambda m: None,
                          command="wgpu-llm bench --engines wgpu-llm:cpu")
    out = tmp_path / "r.json"
    out.write_text(json.dumps(bench._clean_doc(doc)))
    doc = json.loads(out.read_text())

    assert doc["schema"] == bench.SCHEMA and doc["label"] == f"cpu-{doc['machine']['cores']}core"
    for key in ("cpu", "cores", "memory_bytes", "os", "versions"):
        assert key in doc["machine"]
    assert set(doc["load_average"]) == {"before", "after"}
    info = doc["models"]["tiny"]
    assert info["weight_bytes_per_token"]["float32"] > 0 and info["n_ctx"] == 256
    assert doc["engines"]["wgpu-llm:cpu"]["runs"]["tiny"]["status"] == "ok"

    # provenance: the code that ran, how it was asked for, with which versions
    assert doc["command"] == "wgpu-llm bench --engines wgpu-llm:cpu"
    assert doc["date"] <= doc["finished"]
    assert doc["settings"]["repeat"] == {"prefill_24": 2, "decode_16": 1, "too_long": 1}
    assert doc["engines"]["wgpu-llm:cpu"]["versions"]["numpy"] == np.__version__
    assert "adapter" not in doc["engines"]["wgpu-llm:cpu"] and "adapter" not in doc["machine"]
    if in_git:  # HEAD may move while the run goes on in a checkout others commit to
        assert doc["git_commit"] in (head_before, _git(bench.ROOT, "rev-parse", "HEAD"))
        assert isinstance(doc["git_dirty"], bool)
    else:  # an unpacked source archive: no commit to name, and the file says why
        assert doc["git_commit"] is None and doc["git_dirty"] is None and doc["git_note"]

    rows = {r["case"]: r for r in doc["rows"]}
    assert set(rows) == {"prefill_24", "decode_16", "too_long"}
    pre, dec = rows["prefill_24"], rows["decode_16"]
    for r in (pre, dec):
        assert r["engine"] == "wgpu-llm:cpu" and r["model"] == "tiny" and r["status"] == "ok"
        assert r["prefill_tokens_per_s"] > 0 and r["ttft_ms"] > 0 and r["peak_host_mib"] > 0
        assert r["gpu_mib"] is None
    assert len(pre["runs"]) == 2 and pre["decode_tokens_per_s"] is None and len(pre["tokens"]) == 1
    assert dec["decode_tokens_per_s"] > 0 and dec["weight_gb_per_s"] > 0 and len(dec["tokens"]) == 6
    # float32 weights: every tensor but the embedding lookup, and the tied embedding as the output head
    assert dec["weight_bytes_per_token"] == info["weight_bytes_per_token"]["float32"]
    assert rows["too_long"]["status"].startswith("failed") and rows["too_long"]["decode_tokens_per_s"] is None
    assert dec["decode_host_ms_per_token"] is None and dec["decode_dispatches_per_token"] is None  # GPU only


def test_bench_gpu_host_time_and_dispatches(tmp_path, adapter):
    """wgpu-llm:gpu reports the decode tokens' host time (wall time less the wait for the GPU) and
    the dispatches per token: the decode step's kernels plus its argmax, once per token."""
    import io

    from rich.console import Console

    from wgpu_llm import LLM

    model = write_tiny_model(tmp_path / "tiny.gguf", "llama", "Q8_0")
    with LLM(model, backend="gpu") as llm:
        per_token = llm._step(1, False).sampling_dispatches("greedy")
        stats = llm.generate(list(range(3, 19)), max_tokens=9, temperature=0, ignore_eos=True).stats
        wall = 1 / stats["decode_tokens_per_s"]
        assert 0 < stats["decode_host_s_per_token"] <= wall
        assert stats["decode_dispatches_per_token"] == per_token
        # sampled decoding: the draw on the GPU too, in the same loop
        stats = llm.generate(list(range(3, 19)), max_tokens=5, temperature=0.7, top_k=4, seed=0,
                             ignore_eos=True).stats
        assert 0 < stats["decode_host_s_per_token"] <= 1 / stats["decode_tokens_per_s"]
        assert stats["decode_dispatches_per_token"] == llm._step(1, False).sampling_dispatches("sample", 4)
        sampled_per_token = llm._step(1, False).sampling_dispatches("sample", bench.SAMPLED["top_k"])
    cases = [bench.Case("decode_16", 16, 8, 2)]
    doc = bench.run_suite([str(model)], cases, ["wgpu-llm:gpu"], threads=1, timeout=300, log=lambda m: None)
    doc = json.loads(json.dumps(bench._clean_doc(doc)))
    (row,) = doc["rows"]
    assert row["status"] == "ok", row["status"]
    assert 0 < row["decode_host_ms_per_token"] <= 1000 / row["decode_tokens_per_s"] * 1.001
    assert row["decode_dispatches_per_token"] == per_token
    assert all(0 < r["host_s_per_token"] <= 1 / r["decode_tps"] for r in row["runs"])
    out = io.StringIO()
    bench.print_report(doc, Console(file=out, width=250))
    assert "host ms/tok" in out.getvalue() and "dispatches/tok" in out.getvalue()
    assert f"{per_token:.0f}" in out.getvalue()
    # --sampled: the CLI's default sampler, on wgpu-llm's engines only
    doc = bench.run_suite([str(model)], cases, ["wgpu-llm:gpu"], threads=1, timeout=300, log=lambda m: None,
                          sampling=bench.SAMPLED)
    (row,) = doc["rows"]
    assert row["status"] == "ok", row["status"]
    assert doc["settings"]["sampling"] == bench.SAMPLED
    assert row["decode_dispatches_per_token"] == sampled_per_token
    with pytest.raises(ValueError, match="wgpu-llm"):
        bench.run_suite([str(model)], cases, ["llama.cpp:cpu"], sampling=bench.SAMPLED)


def test_bench_gpu_f16_activations_engine(tmp_path, adapter):
    """wgpu-llm:gpu-f16 is the GPU backend with activations="f16", compared with wgpu-llm:gpu in the
    same run (a tiled prefill: the mat-mat with f16 tiles)."""
    from wgpu_llm.gpu.device import adapter_info

    if not adapter_info(adapter).shader_f16:
        pytest.skip("this adapter has no shader-f16")
    model = write_tiny_model(tmp_path / "tiny.gguf", "llama", "Q8_0")
    cases = [bench.Case("prefill_40", 40, 1, 1)]
    doc = bench.run_suite([str(model)], cases, ["wgpu-llm:gpu", "wgpu-llm:gpu-f16"], threads=1, timeout=300,
                          log=lambda m: None)
    rows = {r["engine"]: r for r in doc["rows"]}
    assert [rows[e]["status"] for e in ("wgpu-llm:gpu", "wgpu-llm:gpu-f16")] == ["ok", "ok"]
    descriptions = {e: r["description"] for e, info in doc["engines"].items() for r in info["runs"].values()}
    assert "prefill activations f16" in descriptions["wgpu-llm:gpu-f16"]
    assert "prefill activations" not in descriptions["wgpu-llm:gpu"]
    (ratio,) = bench.ratios(doc["rows"])
    assert (ratio["engine"], ratio["vs"], ratio["metric"]) == ("wgpu-llm:gpu-f16", "wgpu-llm:gpu", "prefill")


def test_weight_bytes_and_prompt(tmp_path):
    model = write_tiny_model(tmp_path / "tiny.gguf", "llama", "Q8_0", tied_output=True)
    from wgpu_llm.gguf_file import GGUFFile

    gf = GGUFFile(model)
    w = bench.weight_bytes_per_token(model)
    assert w["float32"] == sum(t.n_elements * 4 for t in gf.tensors.values())  # tied: embedding = head
    assert w["gguf"] == sum(t.n_bytes for t in gf.tensors.values())
    ids = bench.build_prompt(model, 100)
    assert len(ids) == 100 and ids == bench.build_prompt(model, 200)[:100]


def test_options_and_ratios():
    assert bench.expand_engines(["wgpu-llm", "llama.cpp"], "all", llama_cpp_gpu=False) == [
        "wgpu-llm:cpu", "wgpu-llm:gpu", "llama.cpp:cpu"]
    quick = bench.select_cases(["decode_128"], quick=True, repeat=None)
    assert quick[0].prompt_tokens < 128 and bench.select_cases(None, False, 5)[0].repeat == 5
    row = {"model": "m", "case": "decode_128", "kind": "decode", "status": "ok", "new_tokens": 3,
           "prefill_tokens_per_s": 10.0, "decode_tokens_per_s": 4.0}
    rows = [{**row, "engine": "wgpu-llm:cpu", "tokens": [1, 2, 3]},
            {**row, "engine": "llama.cpp", "tokens": [1, 2, 4], "decode_tokens_per_s": 8.0}]
    (r,) = bench.ratios(rows)
    assert r["vs"] == "llama.cpp" and r["ratio"] == 0.5 and r["same_leading_tokens"] == 2


def test_git_provenance(tmp_path):
    """git_dirty follows the runtime paths only: a changed or new file there, not a changed README."""
    repo = tmp_path / "repo"
    for rel in ("wgpu_llm/api.py", "shaders/a.wgsl", "cpu_fallback/ops.py", "README.md"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x\n")
    _git(repo.parent, "init", "-q", str(repo))
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    head = _git(repo, "rev-parse", "HEAD")

    assert bench.git_provenance(repo) == {"git_commit": head, "git_dirty": False, "git_dirty_paths": [],
                                          "git_note": None}
    (repo / "README.md").write_text("changed\n")
    assert bench.git_provenance(repo)["git_dirty"] is False
    (repo / "cpu_fallback/ops.py").write_text("changed\n")
    (repo / "shaders/new.wgsl").write_text("new\n")
    prov = bench.git_provenance(repo)
    assert prov["git_commit"] == head and prov["git_dirty"] is True
    assert sorted(prov["git_dirty_paths"]) == ["cpu_fallback/ops.py", "shaders/new.wgsl"]

    plain = tmp_path / "plain"  # not a checkout: None, with the reason
    plain.mkdir()
    prov = bench.git_provenance(plain)
    assert prov["git_commit"] is None and prov["git_dirty"] is None and "git" in prov["git_note"]
    prov = bench.git_provenance(repo / "wgpu_llm")  # inside a repository, but not at its top
    assert prov["git_commit"] is None and "not at the top" in prov["git_note"]


def test_llama_cpp_rows_and_command(monkeypatch):
    # llama.cpp's CPU backend is always a row; a GPU build adds its GPU backend next to it
    assert bench.expand_engines(["llama.cpp"], "cpu", llama_cpp_gpu=False) == ["llama.cpp:cpu"]
    assert bench.expand_engines(["wgpu-llm", "llama.cpp"], "gpu", llama_cpp_gpu=True) == [
        "wgpu-llm:gpu", "llama.cpp:cpu", "llama.cpp:gpu"]
    assert bench.expand_engines(["llama.cpp:gpu"], "cpu", llama_cpp_gpu=False) == ["llama.cpp:gpu"]
    cpu = {"name": "CPU", "description": "AMD EPYC"}
    vk = {"name": "Vulkan0", "description": "llvmpipe (LLVM 15.0.6, 256 bits)"}
    assert bench._gpu_devices({"gpu_backend": "vulkan", "devices": [cpu, vk]}) == [vk]
    assert bench._gpu_devices({"gpu_backend": "vulkan", "devices": [cpu]}) == []  # the engine refuses this
    assert bench._gpu_devices({"gpu_backend": "vulkan", "devices": None}) is None  # an old build: unknown

    monkeypatch.setattr("sys.argv", [str(Path("benchmarks") / "run.py")])
    assert bench.command_line(["--models", "a b.gguf"]) == "python benchmarks/run.py --models 'a b.gguf'"
    monkeypatch.setattr("sys.argv", ["/usr/bin/wgpu-llm", "bench"])
    assert bench.command_line(["--quick"]) == "wgpu-llm bench --quick"


@pytest.mark.gpu
def test_host_time_breakdown(tmp_path, adapter):
    """benchmarks/host_time.py times each phase of a decode step, alone in a command buffer and
    LOOP_MAX_CHUNK to one, then with the norms as dispatches of their own, and stamps its results
    file."""
    from wgpu_llm.gpu.backend import LOOP_MAX_CHUNK

    model = write_tiny_model(tmp_path / "tiny.gguf", "llama", "Q8_0")
    out = tmp_path / "host.json"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "host_time.py"), "--models", str(model),
                           "--steps", "3", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [(row["chunk"], row["norm_on_load"]) for row in rows] == [(1, True), (LOOP_MAX_CHUNK, True),
                                                                     (LOOP_MAX_CHUNK, False)]
    n_layer = 2
    assert rows[2]["dispatches"] == rows[0]["dispatches"] + 2 * n_layer + 1  # two norms a layer, the output norm
    for row in rows:
        assert row["model"] == "tiny" and row["dispatches"] > 10
        phases = [row[f"{p}_ms"] for p in ("record", "finish", "submit", "wait", "read")]
        assert all(t > 0 for t in phases)
        assert row["host_ms"] == pytest.approx(sum(phases) - row["wait_ms"])
    assert doc["git_commit"] and doc["adapter"]["name"] and "host_ms" in proc.stdout
