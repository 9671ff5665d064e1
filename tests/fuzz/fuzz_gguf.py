#!/usr/bin/env python
"""Fuzz the GGUF loading path: mutate small valid models, load every mutant the way a user would,
and class how each one ends (see runner.py). Every outcome but `ok` and `refused` is a bug.

    python tests/fuzz/fuzz_gguf.py --count 500 --seed 1 --jobs 2 --json fuzz.json
    python tests/fuzz/fuzz_gguf.py --count 50 --models real          # gemma3-270m's header (cached model)
    python tests/fuzz/fuzz_gguf.py --seed 1 --replay 123 --out m.gguf  # write mutant 123 again

Seeds: tiny random models (tests/tiny_models.py) of several architectures, weight types and both
tokenizer kinds; `real` adds Gemma 3 270M from the model cache, whose header (a 262144-token
vocabulary) is mutated and whose tensor data is left as zeros in a sparse file (its mutants run
the `header` target: no weight is read). Mutant N depends only on --seed, --models and N.
Exit status: 0 when no mutant found a bug, 1 otherwise.
"""

from __future__ import annotations

import os

# before numpy and tokenizers are imported: one thread each, and no thread pool that a fork would break
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (HERE, ROOT / "tests", ROOT):  # this checkout's package, tiny_models, the fuzz modules
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import exercise  # noqa: E402
from mutate import FAMILIES, Seed, mutate  # noqa: E402
from runner import BUGS, OUTCOMES, Job, run_jobs  # noqa: E402

# name -> write_tiny_model arguments: every family of graph code, quantized and float weights,
# both vocabularies (gpt2 byte-level BPE with merges; SentencePiece with scores and byte tokens)
TINY_SEEDS = {
    "llama": dict(arch="llama", qtype="F32"),
    "gemma3": dict(arch="gemma3", qtype="F32"),
    "qwen2-q8": dict(arch="qwen2", qtype="Q8_0"),
    "gpt2-f16": dict(arch="gpt2", qtype="F16"),
    "gemma2-q4": dict(arch="gemma2", qtype="Q4_0"),
    "phi2": dict(arch="phi2", qtype="F32", tied_output=False),
    "stablelm-q5": dict(arch="stablelm", qtype="Q5_1", n_rot=8, tied_output=False),
    "phi3": dict(arch="phi3", qtype="F32", tied_output=False),
}
REAL_SEED = "gemma3-270m"
CLI_MODES = ("run", "chat", "inspect")


def build_seeds(names: list[str], workdir: Path) -> list[Seed]:
    from tiny_models import write_tiny_model

    seeds = []
    for name in names:
        if name == REAL_SEED:
            from wgpu_llm import zoo

            seeds.append(Seed.from_file(name, zoo.model_path(REAL_SEED), keep_data=False))
        else:
            kw = dict(TINY_SEEDS[name])
            path = write_tiny_model(workdir / f"seed-{name}.gguf", kw.pop("arch"), kw.pop("qtype"), **kw)
            seeds.append(Seed.from_file(name, path))
    return seeds


def model_names(spec: str) -> list[str]:
    names = []
    for part in spec.split(","):
        part = part.strip()
        if part == "tiny":
            names += list(TINY_SEEDS)
        elif part in ("real", REAL_SEED):
            names.append(REAL_SEED)
        elif part in TINY_SEEDS:
            names.append(part)
        else:
            raise SystemExit(f"--models: unknown {part!r} (tiny, real, or one of {', '.join(TINY_SEEDS)})")
    return list(dict.fromkeys(names))


def make_mutant(seeds: list[Seed], base_seed: int, index: int):
    """Mutant `index`: its seed model, the target it runs, the mutation; from (base_seed, index) only.
    The large seed is drawn a fifth as often as a tiny one (each of its mutants takes seconds)."""
    rng = random.Random(f"{base_seed}:{index}")
    weights = [1 if s.name == REAL_SEED else 5 for s in seeds]
    seed = rng.choices(seeds, weights=weights)[0]
    if seed.name == REAL_SEED:
        mode = "inspect" if rng.random() < 0.2 else "header"
    else:
        mode = rng.choice(CLI_MODES) if rng.random() < 0.25 else "library"
    return seed, mode, mutate(seed, rng)


def write_file(path: Path, content: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(content)
        if size > len(content):
            f.truncate(size)  # the rest reads as zeros and takes no space (a sparse file)


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(title: str, rows: dict[str, Counter], columns: list[str]) -> str:
    width = max([len(title)] + [len(r) for r in rows]) + 2
    lines = [title.ljust(width) + "".join(c.rjust(9) for c in columns + ["total"])]
    for name, counts in rows.items():
        lines.append(name.ljust(width) + "".join(str(counts.get(c, 0)).rjust(9) for c in columns)
                     + str(sum(counts.values())).rjust(9))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=300, help="mutants to run (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed: mutant N is the same for the same seed")
    p.add_argument("--models", default="tiny",
                   help=f"comma list: tiny (all of {', '.join(TINY_SEEDS)}), real ({REAL_SEED}), or names")
    p.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    p.add_argument("--json", type=Path, help="write counts, bugs and every result here")
    p.add_argument("--time-limit", type=float, default=5.0, help="wall seconds per mutant (default 5)")
    p.add_argument("--slow", type=float, default=1.0,
                   help="a mutant that takes more CPU seconds than this is a bug (default 1)")
    p.add_argument("--mem-mb", type=int, default=256, help="address space a mutant may add, MiB (default 256) ...")
    p.add_argument("--mem-per-byte", type=int, default=16, help="... plus this many bytes per byte of the file")
    p.add_argument("--keep", type=Path, help="copy the mutants that found a bug into this folder")
    p.add_argument("--replay", type=int, help="write mutant N to --out and say what it is; run nothing")
    p.add_argument("--out", type=Path, help="where --replay writes the mutant")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = model_names(args.models)
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="gguf-fuzz-", dir=shm if shm.is_dir() else None))
    try:
        seeds = build_seeds(names, workdir)
        if args.replay is not None:
            if args.out is None:
                raise SystemExit("--replay needs --out")
            seed, mode, m = make_mutant(seeds, args.seed, args.replay)
            write_file(args.out, m.content, m.size)
            print(f"mutant {args.replay}: {seed.name}, {mode}, {m.family}: {m.description} -> {args.out}")
            return 0
        return fuzz(args, seeds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def fuzz(args, seeds: list[Seed], workdir: Path) -> int:
    # warm the parent: every child starts with these imported
    for module in ("wgpu_llm.api", "wgpu_llm.chat", "wgpu_llm.cli", "wgpu_llm.report", "cpu_fallback.backend",
                   "gguf.quants", "jinja2.sandbox"):
        importlib.import_module(module)

    def budget(size: int) -> int:
        return args.mem_mb * 2**20 + args.mem_per_byte * size

    # the unmutated seeds, through every target they get: each must be ok, or the harness is broken
    baseline = []
    for seed in seeds:
        path = workdir / f"seed-{seed.name}-copy.gguf"
        write_file(path, seed.content, seed.size)
        modes = ("header", "inspect") if seed.name == REAL_SEED else ("library",) + CLI_MODES
        baseline += [Job(f"seed:{seed.name}:{mode}", str(path), mode, budget(seed.size)) for mode in modes]
    base_results = run_jobs(baseline, exercise.run, parallel=args.jobs, time_limit=max(args.time_limit, 60.0),
                            slow=float("inf"), workdir=str(workdir))
    bad = [r for r in base_results if r.outcome != "ok"]
    for r in sorted(base_results, key=lambda r: r.id):
        print(f"baseline {r.id}: {r.outcome} in {r.wall_s:.2f} s, +{r.rss_growth_mb:.0f} MB {r.detail[:200]}")
    if bad:
        print("the unmutated seeds must load: the harness or the library is broken", file=sys.stderr)
        return 2
    # a large seed's valid loads take seconds: its mutants get limits scaled from its baseline (a
    # mutant may take twice the valid load's CPU, plus --slow; a hang is three times its wall time)
    limits = {s.name: args.time_limit for s in seeds}
    slow = {s.name: args.slow for s in seeds}
    for r in base_results:
        name = r.id.split(":")[1]
        limits[name] = max(limits[name], 3 * r.wall_s + args.time_limit)
        if name == REAL_SEED:
            slow[name] = max(slow[name], 2 * r.cpu_s + args.slow)

    def jobs():
        for i in range(args.count):
            seed, mode, m = make_mutant(seeds, args.seed, i)
            path = workdir / f"m{i}.gguf"
            write_file(path, m.content, m.size)
            yield Job(str(i), str(path), mode, budget(m.size), limits[seed.name], slow[seed.name],
                      {"model": seed.name, "mode": mode, "family": m.family, "mutation": m.description})

    done = [0]
    t0 = time.perf_counter()

    def on_result(r):
        path = workdir / f"m{r.id}.gguf"
        if r.outcome in BUGS and args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, args.keep / f"m{r.id}-{r.info['model']}-{r.outcome}.gguf")
        path.unlink(missing_ok=True)
        shutil.rmtree(f"{path}.cache", ignore_errors=True)
        done[0] += 1
        if done[0] % 500 == 0:
            print(f"... {done[0]} of {args.count} ({time.perf_counter() - t0:.0f} s)", flush=True)

    results = run_jobs(jobs(), exercise.run, parallel=args.jobs, time_limit=args.time_limit, slow=args.slow,
                       workdir=str(workdir), on_result=on_result)
    elapsed = time.perf_counter() - t0
    results.sort(key=lambda r: int(r.id))
    return report(args, seeds, results, base_results, elapsed, limits, slow)


def report(args, seeds, results, base_results, elapsed, limits, slow) -> int:
    counts = Counter(r.outcome for r in results)
    by_model = {s.name: Counter(r.outcome for r in results if r.info["model"] == s.name) for s in seeds}
    by_family = {f: Counter(r.outcome for r in results if r.info["family"] == f) for f in FAMILIES}
    by_mode = {m: Counter(r.outcome for r in results if r.info["mode"] == m)
               for m in ("library", "header") + CLI_MODES}
    bugs = [r for r in results if r.outcome in BUGS]
    print()
    print(table("model", by_model, list(OUTCOMES)))
    print()
    print(table("mutation", by_family, list(OUTCOMES)))
    print()
    print(table("target", {k: v for k, v in by_mode.items() if v}, list(OUTCOMES)))
    print()
    refusals = sorted(r.cpu_s for r in results if r.outcome == "refused")
    if refusals:
        print(f"refusals: median {refusals[len(refusals) // 2] * 1000:.0f} ms CPU, slowest {refusals[-1]:.2f} s; "
              f"largest memory growth {max(r.rss_growth_mb for r in results):.0f} MB")
    print(f"{len(results)} mutants in {elapsed:.1f} s with --jobs {args.jobs}: "
          + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o]))
    for r in bugs[:40]:
        print(f"BUG {r.outcome} #{r.id} {r.info['model']}/{r.info['mode']} [{r.info['family']}] "
              f"{r.info['mutation'][:120]}\n    {r.detail[:300]}")
    if len(bugs) > 40:
        print(f"... and {len(bugs) - 40} more bugs (all in the JSON)")
    if args.json is not None:
        doc = {"commit": git_commit(), "command": " ".join(["python", "tests/fuzz/fuzz_gguf.py"]
                                                          + [shlex.quote(a) for a in sys.argv[1:]]),
               "seed": args.seed, "count": args.count, "models": [s.name for s in seeds], "jobs": args.jobs,
               "limits": {"time_s": limits, "slow_cpu_s": slow, "mem_mb": args.mem_mb,
                          "mem_per_byte": args.mem_per_byte},
               "elapsed_s": round(elapsed, 1), "counts": {o: counts[o] for o in OUTCOMES},
               "by_model": by_model, "by_family": by_family, "by_target": by_mode,
               "baseline": [r.as_dict() for r in base_results],
               "bugs": [r.as_dict() for r in bugs], "results": [r.as_dict() for r in results]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
