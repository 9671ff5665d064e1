"""Render the README's speed section from benchmark results files, or check it.

    python benchmarks/readme_table.py --write benchmarks/results/A.json [B.json ...]   # one table per file
    python benchmarks/readme_table.py --write     # re-render from the files the section already names
    python benchmarks/readme_table.py --check     # exit 1 when the README differs from the rendering or a
                                                  # file does not describe HEAD's runtime code

The section sits between `<!-- speed:begin -->` and `<!-- speed:end -->` in README.md. Each table
comes from ONE results file (one run of benchmarks/run.py, every engine side by side), and says
which file, its commit, date, machine and adapter, the exact command and the number of timed runs,
with every engine's absolute tok/s next to the ratios. A file qualifies only when it is stamped
(`git_commit`), was measured without uncommitted runtime changes, and the runtime code
(wgpu_llm/, shaders/, cpu_fallback/) at its commit is the same as at HEAD.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

try:
    from wgpu_llm.bench import RUNTIME_PATHS
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from wgpu_llm.bench import RUNTIME_PATHS

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"
FILE_LINE = re.compile(r"^<!-- speed:file (\S+) -->$", re.M)


class SpeedSectionError(ValueError):
    """The README or a results file cannot be used; the message names the file and the problem."""


def section_bounds(text: str, readme: str = "README.md") -> tuple[int, int]:
    """Start and end offsets of the text between the two markers."""
    begins, ends = text.count(BEGIN), text.count(END)
    if begins != 1 or ends != 1:
        raise SpeedSectionError(f"{readme}: needs exactly one {BEGIN} and one {END} line "
                                f"(found {begins} and {ends})")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    if end < start:
        raise SpeedSectionError(f"{readme}: {END} comes before {BEGIN}")
    return start, end


def rendered_files(text: str, readme: str = "README.md") -> list[str]:
    """The results files the README's speed section was rendered from (paths from the repository root)."""
    start, end = section_bounds(text, readme)
    return FILE_LINE.findall(text[start:end])


def load_results(root: Path, rel: str) -> dict:
    path = root / rel
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpeedSectionError(f"{rel}: results file not found") from None
    except (OSError, ValueError) as e:
        raise SpeedSectionError(f"{rel}: not a readable results file ({e})") from None
    for key in ("date", "machine", "settings", "rows", "ratios"):
        if key not in doc:
            raise SpeedSectionError(f"{rel}: no {key!r} field: not a results file of benchmarks/run.py")
    return doc


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], check=False, capture_output=True, text=True)


def stamp_problems(doc: dict, rel: str, root: Path) -> list[str]:
    """Why this results file does not describe the runtime code at HEAD (empty when it does)."""
    sha = doc.get("git_commit")
    if not sha:
        note = doc.get("git_note") or "the file predates stamped results"
        return [f"{rel}: no git_commit ({note}): re-measure with `python benchmarks/run.py` from a git checkout"]
    problems = []
    if doc.get("git_dirty"):
        problems.append(f"{rel}: measured with uncommitted changes in {', '.join(doc.get('git_dirty_paths') or ['?'])}"
                        f" on top of {sha[:12]}: re-measure from a clean checkout")
    if _git(root, "cat-file", "-e", f"{sha}^{{commit}}").returncode != 0:
        return problems + [f"{rel}: its git_commit {sha[:12]} is not in this repository "
                           "(a shallow clone? `git fetch --unshallow`)"]
    diff = _git(root, "diff", "--name-only", sha, "HEAD", "--", *RUNTIME_PATHS)
    if diff.returncode != 0:
        return problems + [f"{rel}: git diff {sha[:12]} HEAD failed: {diff.stderr.strip()}"]
    changed = diff.stdout.split()
    if changed:
        problems.append(f"{rel}: the runtime code changed since its commit {sha[:12]}: re-measure "
                        f"(`python benchmarks/run.py`, then `python benchmarks/readme_table.py --write`); "
                        f"changed: {', '.join(changed)}")
    return problems


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.1f} GiB RAM" if n else "RAM unknown"


def _engine_versions(info: dict) -> str:
    versions = dict(info.get("versions") or {})
    gpu_backend = versions.pop("ggml_gpu_backend", None)
    keep = [f"{k} {v}" for k, v in versions.items() if isinstance(v, str) and k != "numpy"]
    if "numpy" in versions and not keep:  # numpy matters where it is the engine (wgpu-llm:cpu)
        keep = [f"numpy {versions['numpy']}"]
    if gpu_backend:
        keep.append(f"built with ggml-{gpu_backend}")
    return ", ".join(keep)


def _load(doc: dict, when: str) -> str:
    values = (doc.get("load_average") or {}).get(when)
    return f"{values[0]:.2f}" if values else "?"


def _command(doc: dict) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in (doc.get("environment") or {}).items())
    return f"{env} {doc.get('command') or '?'}".strip()


def render_table(doc: dict, rel: str) -> str:
    """One results file as a heading paragraph and a table (markdown), ending with a newline."""
    m = doc["machine"]
    rows = doc["rows"]
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    measured = [e for e in engines if any(r["engine"] == e and r["status"] == "ok" for r in rows)]
    sha = doc.get("git_commit") or "unstamped"
    how = "side by side in one run" if len(measured) > 1 else "one run"
    lines = [f"<!-- speed:file {rel} -->",
             f"**{how.capitalize()}**: [`{rel}`]({rel}), commit `{sha[:7]}`, {doc['date'][:10]}.  ",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {_gib(m.get('memory_bytes'))}, "
             f"threads: {doc['settings'].get('threads', '?')}; 1-minute load average {_load(doc, 'before')} before "
             f"the run, {_load(doc, 'after')} after.  "]
    adapter = m.get("adapter")
    if adapter:
        lines.append(f"GPU adapter: {adapter.get('name')} ({adapter.get('backend')}, {adapter.get('type')}, "
                     f"driver {adapter.get('driver') or '?'}).  ")
    elif m.get("gpu"):
        lines.append(f"GPU adapter: {m['gpu']}.  ")
    lines.append(f"Command: `{_command(doc)}`.  ")
    described = []
    for engine in engines:
        info = (doc.get("engines") or {}).get(engine) or {}
        text = _engine_versions(info)
        if engine.startswith("llama.cpp:") and engine != "llama.cpp:cpu" and (info.get("adapter") or {}).get("device"):
            text += f", on {info['adapter']['device']}"
        described.append(f"{engine} ({text})" if text else engine)
    lines.append(f"Engines: {'; '.join(described)}.")
    lines.append("")

    pairs = list(dict.fromkeys((q["engine"], q["vs"]) for q in doc["ratios"]))
    ratio = {(q["engine"], q["vs"], q["model"], q["case"]): q["ratio"] for q in doc["ratios"]}
    header = ["model", "case (prompt + new tokens, timed runs)", "tok/s"] + measured + [f"{a} / {b}" for a, b in pairs]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    ok = {(r["engine"], r["model"], r["case"]): r for r in rows if r["status"] == "ok"}
    for model, case in dict.fromkeys((r["model"], r["case"]) for r in rows):
        first = next(r for r in rows if r["model"] == model and r["case"] == case)
        kind = first["kind"]
        cells = [model, f"{case} ({first['prompt_tokens']} + {first['new_tokens']}, {first.get('repeat', '?')})", kind]
        cells += [_num((ok.get((e, model, case)) or {}).get(f"{kind}_tokens_per_s")) for e in measured]
        cells += [f"{ratio[(a, b, model, case)]:.2f}x" if (a, b, model, case) in ratio else "-" for a, b in pairs]
        lines.append("| " + " | ".join(cells) + " |")

    missing = {}
    for r in rows:
        if r["status"] != "ok":
            missing.setdefault(r["engine"], set()).add(r["status"].splitlines()[0][:160])
    lines.append("")
    if pairs:
        lines.append("tok/s: the median over the timed runs; a / b: engine a's tok/s over engine b's, same "
                     "run, same prompt ids (above 1: a is faster). Time to first token and peak memory of "
                     "every engine and case are in the file.")
    for engine, statuses in missing.items():
        lines.append(f"Not measured in this run: {engine} ({'; '.join(sorted(statuses))}).")
    return "\n".join(lines) + "\n"


def render_section(root: Path, files: list[str]) -> str:
    """The text between the markers: one table per results file."""
    parts = [render_table(load_results(root, rel), rel) for rel in files]
    intro = ("Rendered by `python benchmarks/readme_table.py --write` from the results files named below; "
             "each table is one file, one run of `benchmarks/run.py`.\n")
    return "\n" + intro + "".join("\n" + p for p in parts) + "\n"


def replace_section(text: str, body: str, readme: str = "README.md") -> str:
    start, end = section_bounds(text, readme)
    return text[:start] + body + text[end:]


def check(root: Path, readme: str = "README.md") -> list[str]:
    """Everything wrong with the README's speed section (empty when it is what the files render)."""
    text = (root / readme).read_text()
    files = rendered_files(text, readme)
    if not files:
        return [f"{readme}: the speed section names no results file (`<!-- speed:file PATH -->`): "
                "render it with `python benchmarks/readme_table.py --write RESULTS.json`"]
    problems = []
    for rel in files:
        problems += stamp_problems(load_results(root, rel), rel, root)
    expected = replace_section(text, render_section(root, files), readme)
    if expected != text:
        diff = difflib.unified_diff(text.splitlines(), expected.splitlines(), f"{readme} (now)",
                                    f"{readme} (rendered)", lineterm="", n=1)
        problems.append(f"{readme}: the speed section differs from what its results files render "
                        "(`python benchmarks/readme_table.py --write`):\n" + "\n".join(diff))
    return problems


def _relative(root: Path, name: str) -> str:
    """A results file's path from the repository root (how the README names it)."""
    path = (root / name).resolve()  # a relative name is taken from the root; an absolute one stays
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise SpeedSectionError(f"{name}: results files must be inside the repository") from None


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/readme_table.py", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite README.md's speed section in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when the section is not what the files render")
    p.add_argument("files", nargs="*",
                   help="results files for --write, from the repository root (default: those the section names)")
    p.add_argument("--readme", default="README.md", help="relative to the repository root (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        if args.check:
            if args.files:
                raise SpeedSectionError("--check takes no files: it checks the ones the README names")
            problems = check(root, args.readme)
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        text = (root / args.readme).read_text()
        files = [_relative(root, f) for f in args.files] or rendered_files(text, args.readme)
        if not files:
            raise SpeedSectionError(f"{args.readme}: the section names no results file: give one or more")
        problems = [p for rel in files for p in stamp_problems(load_results(root, rel), rel, root)]
        if problems:
            print("\n".join(problems + ["nothing written"]), file=sys.stderr)
            return 1
        (root / args.readme).write_text(replace_section(text, render_section(root, files), args.readme))
        print(f"{args.readme}: speed section rendered from {', '.join(files)}")
        return 0
    except SpeedSectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
