"""The README's speed section is what benchmarks/readme_table.py renders from stamped results files
measured on the runtime code at HEAD; and the script's checks, on a tiny run in a throw-away repository."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from tiny_models import write_tiny_model

from wgpu_llm import bench

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
readme_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_table)


def test_readme_speed_section_matches_its_results_files():
    text = (ROOT / "README.md").read_text()
    if not readme_table.rendered_files(text):  # raises when the markers are missing
        pytest.skip("README speed section not yet rendered from a stamped results file")
    problems = readme_table.check(ROOT)
    assert not problems, "\n".join(problems)


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def tiny_doc(tmp_path_factory):
    """A real results document: a tiny model, wgpu-llm's numpy backend and llama.cpp's CPU backend
    (rows that say 'unavailable' where llama-cpp-python is not installed)."""
    model = write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf", "llama")
    cases = [bench.Case("prefill_16", 16, 1, 2), bench.Case("decode_8", 8, 5, 1)]
    doc = bench.run_suite([str(model)], cases, ["wgpu-llm:cpu", "llama.cpp:cpu"], threads=1, timeout=120,
                          log=lambda m: None, command="python benchmarks/run.py --models tiny.gguf")
    return json.loads(json.dumps(bench._clean_doc(doc)))


README = "# project\n\nintro\n\n## Speed\n\n<!-- speed:begin -->\nold numbers\n<!-- speed:end -->\n\n## After\n"
RESULTS = "benchmarks/results/tiny.json"


@pytest.fixture
def repo(tmp_path, tiny_doc):
    """A git repository with runtime paths, a README with markers and the tiny run stamped with its HEAD."""
    repo = tmp_path / "repo"
    for rel, content in (("wgpu_llm/api.py", "a = 1\n"), ("shaders/k.wgsl", "// k\n"),
                         ("cpu_fallback/ops.py", "b = 2\n"), ("docs.md", "docs\n"), ("README.md", README)):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(content)
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    doc = {**tiny_doc, "git_commit": _git(repo, "rev-parse", "HEAD"), "git_dirty": False, "git_dirty_paths": [],
           "git_note": None, "environment": {"OPENBLAS_NUM_THREADS": "1"}}  # not this shell's variables
    write_doc(repo, doc)
    return repo


def write_doc(repo, doc):
    (repo / RESULTS).parent.mkdir(parents=True, exist_ok=True)
    (repo / RESULTS).write_text(json.dumps(doc))


def section(repo):
    text = (repo / "README.md").read_text()
    start, end = readme_table.section_bounds(text)
    return text[start:end]


def test_write_then_check(repo, tiny_doc, capsys):
    assert readme_table.main(["--check"], root=repo) == 1  # the README names no results file yet
    assert "names no results file" in capsys.readouterr().err

    assert readme_table.main(["--write", str(repo / RESULTS)], root=repo) == 0
    text = (repo / "README.md").read_text()
    assert text.startswith("# project\n\nintro\n\n## Speed\n\n<!-- speed:begin -->\n")
    assert text.endswith("<!-- speed:end -->\n\n## After\n") and "old numbers" not in text
    assert readme_table.rendered_files(text) == [RESULTS]
    assert readme_table.check(repo) == [] and readme_table.main(["--check"], root=repo) == 0
    assert readme_table.main(["--write"], root=repo) == 0 and (repo / "README.md").read_text() == text

    body = section(repo)
    doc = json.loads((repo / RESULTS).read_text())
    assert f"commit `{doc['git_commit'][:7]}`" in body and doc["date"][:10] in body
    assert "Command: `OPENBLAS_NUM_THREADS=1 python benchmarks/run.py --models tiny.gguf`" in body
    assert f"numpy {doc['engines']['wgpu-llm:cpu']['versions']['numpy']}" in body
    rows = {(r["engine"], r["case"]): r for r in doc["rows"]}
    pre, dec = rows[("wgpu-llm:cpu", "prefill_16")], rows[("wgpu-llm:cpu", "decode_8")]
    assert f"| tiny | prefill_16 (16 + 1, 2) | prefill | {readme_table._num(pre['prefill_tokens_per_s'])} |" in body
    assert f"| tiny | decode_8 (8 + 5, 1) | decode | {readme_table._num(dec['decode_tokens_per_s'])} |" in body
    llama = rows[("llama.cpp:cpu", "decode_8")]
    if llama["status"] == "ok":  # both engines measured: absolute numbers, then the ratio, side by side
        assert "Side by side in one run" in body
        (q,) = [q for q in doc["ratios"] if q["case"] == "decode_8"]
        assert body.count(f" | {q['ratio']:.2f}x |") >= 1
        assert f"{readme_table._num(dec['decode_tokens_per_s'])} | {readme_table._num(q['theirs'])} |" in body
    else:  # one engine only: not "side by side", and the missing engine is named with its reason
        assert "side by side" not in body.lower() and "**One run**" in body
        assert f"Not measured in this run: llama.cpp:cpu ({llama['status']})" in body


def test_check_fails_on_an_edited_readme(repo):
    readme_table.main(["--write", RESULTS], root=repo)
    text = (repo / "README.md").read_text()
    (repo / "README.md").write_text(text.replace("| tiny | decode_8 (8 + 5, 1) | decode | ",
                                                 "| tiny | decode_8 (8 + 5, 1) | decode | 9"))
    (problem,) = readme_table.check(repo)
    assert "differs from what its results files render" in problem and "+| tiny | decode_8" in problem
    assert readme_table.main(["--check"], root=repo) == 1


def test_check_fails_when_runtime_code_changed_since_the_measurement(repo):
    readme_table.main(["--write", RESULTS], root=repo)
    (repo / "docs.md").write_text("more docs\n")  # not runtime code: the measurement still holds
    _git(repo, "commit", "-q", "-am", "docs")
    assert readme_table.check(repo) == []
    (repo / "shaders/k.wgsl").write_text("// faster k\n")
    _git(repo, "commit", "-q", "-am", "kernel")
    (problem,) = readme_table.check(repo)
    assert "re-measure" in problem and problem.endswith("changed: shaders/k.wgsl") and RESULTS in problem
    assert readme_table.main(["--write"], root=repo) == 1  # and nothing is rendered from a stale file


def test_unstamped_dirty_and_unknown_commits_fail(repo, tiny_doc, capsys):
    readme_table.main(["--write", RESULTS], root=repo)
    text = (repo / "README.md").read_text()
    doc = json.loads((repo / RESULTS).read_text())

    old = {k: v for k, v in doc.items() if not k.startswith("git_")}  # a file from before stamping
    write_doc(repo, old)
    assert any("no git_commit" in p and "re-measure" in p for p in readme_table.check(repo))
    assert readme_table.main(["--write", RESULTS], root=repo) == 1
    assert "nothing written" in capsys.readouterr().err and (repo / "README.md").read_text() == text

    write_doc(repo, {**doc, "git_dirty": True, "git_dirty_paths": ["wgpu_llm/api.py"]})
    assert any("uncommitted changes in wgpu_llm/api.py" in p for p in readme_table.check(repo))

    write_doc(repo, {**doc, "git_commit": "0" * 40})
    assert any("is not in this repository" in p for p in readme_table.check(repo))


def test_bad_readme_and_results_files(repo, capsys):
    (repo / "README.md").write_text("# no markers\n")
    assert readme_table.main(["--write", RESULTS], root=repo) == 2
    assert "needs exactly one <!-- speed:begin -->" in capsys.readouterr().err
    (repo / "README.md").write_text(README)
    assert readme_table.main(["--write", "benchmarks/results/missing.json"], root=repo) == 2
    assert "missing.json: results file not found" in capsys.readouterr().err
    (repo / "other.json").write_text("{}")
    assert readme_table.main(["--write", "other.json"], root=repo) == 2
    assert "other.json: no 'date' field" in capsys.readouterr().err
