"""The benchmark engine on a tiny random model: wgpu-llm:cpu only, tiny cases, a few seconds."""

import json

from tiny_models import write_tiny_model

from wgpu_llm import bench


def test_bench_tiny_model_json(tmp_path):
    model = write_tiny_model(tmp_path / "tiny.gguf", "llama")
    cases = [bench.Case("prefill_24", 24, 1, 2), bench.Case("decode_16", 16, 6, 1),
             bench.Case("too_long", 300, 4, 1)]  # longer than the tiny model's 256-token context
    doc = bench.run_suite([str(model)], cases, ["wgpu-llm:cpu"], threads=1, timeout=120, log=lambda m: None)
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
    assert bench.expand_engines(["wgpu-llm", "llama.cpp"], "all") == ["wgpu-llm:cpu", "wgpu-llm:gpu", "llama.cpp"]
    quick = bench.select_cases(["decode_128"], quick=True, repeat=None)
    assert quick[0].prompt_tokens < 128 and bench.select_cases(None, False, 5)[0].repeat == 5
    row = {"model": "m", "case": "decode_128", "kind": "decode", "status": "ok", "new_tokens": 3,
           "prefill_tokens_per_s": 10.0, "decode_tokens_per_s": 4.0}
    rows = [{**row, "engine": "wgpu-llm:cpu", "tokens": [1, 2, 3]},
            {**row, "engine": "llama.cpp", "tokens": [1, 2, 4], "decode_tokens_per_s": 8.0}]
    (r,) = bench.ratios(rows)
    assert r["vs"] == "llama.cpp" and r["ratio"] == 0.5 and r["same_leading_tokens"] == 2
