"""The GGUF fuzzer (tests/fuzz): a few hundred mutants of the tiny models must all load or be
refused cleanly; and the fuzzer itself: its layout round-trips, its mutants are reproducible, and
its harness classes every way a child can end."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_gguf  # noqa: E402
import gguf_layout as L  # noqa: E402
from mutate import FAMILIES, Seed, mutate  # noqa: E402
from runner import BUGS, Job, run_jobs  # noqa: E402
from wgpu_llm.gguf_file import GGUFError  # noqa: E402

COUNT, SEED = 400, 20261203


def test_fuzz_mutants_load_or_are_refused(tmp_path):
    """CI's fuzzing run: every mutant is a valid model or a GGUFError naming the file, within the
    time, CPU and memory limits, from the library and from `wgpu-llm run / chat / inspect`."""
    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(FUZZ / "fuzz_gguf.py"), "--count", str(COUNT), "--seed", str(SEED),
                           "--jobs", "2", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    bugs = [f"#{b['id']} {b['info']['model']}/{b['info']['mode']} {b['info']['mutation']}: {b['outcome']}: "
            f"{b['detail'][:300]}" for b in doc["bugs"]]
    assert not bugs, (f"{len(bugs)} mutants found bugs (python tests/fuzz/fuzz_gguf.py --seed {SEED} --replay N "
                      f"--out m.gguf writes one):\n" + "\n".join(bugs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = doc["counts"]
    assert sum(counts.values()) == COUNT and counts["ok"] > 0 and counts["refused"] > COUNT // 2
    assert all(sum(c.values()) > 0 for c in doc["by_family"].values())  # every kind of mutation ran
    assert {"library", "run", "chat", "inspect"} <= {t for t, c in doc["by_target"].items() if sum(c.values())}
    assert doc["commit"] and doc["command"].startswith("python tests/fuzz/fuzz_gguf.py --count")


# ---------------------------------------------------------------- the fuzzer's parts
@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz_gguf.build_seeds(list(fuzz_gguf.TINY_SEEDS), tmp_path_factory.mktemp("seeds"))


def test_layout_round_trips_every_seed(seeds):
    """Writing a seed's parsed layout back gives the same bytes: a semantic mutation changes only
    what it means to."""
    for seed in seeds:
        layout = seed.layout
        assert L.assemble(layout.version, list(seed.kv_blobs), list(seed.tensor_blobs)) == seed.head, seed.name
        groups = {f.group for f in layout.fields}
        assert {"version", "tensor_count", "kv_count", "key_length", "value_type", "scalar", "string_length",
                "array_type", "array_length", "tensor_name_length", "tensor_n_dims", "tensor_dim", "tensor_type",
                "tensor_offset"} <= groups, seed.name
        assert {a.key for a in layout.items} >= {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type"}


def test_mutants_are_reproducible_and_varied(seeds, tmp_path):
    first = [fuzz_gguf.make_mutant(seeds, 5, i) for i in range(300)]
    again = [fuzz_gguf.make_mutant(seeds, 5, i) for i in range(300)]
    assert [(s.name, mode, m.description, m.content, m.size) for s, mode, m in first] == \
        [(s.name, mode, m.description, m.content, m.size) for s, mode, m in again]
    assert fuzz_gguf.make_mutant(seeds, 6, 0)[2].content != first[0][2].content or \
        fuzz_gguf.make_mutant(seeds, 6, 1)[2].content != first[1][2].content
    assert set(Counter(m.family for _, _, m in first)) == set(FAMILIES)
    assert {s.name for s, _, _ in first} == set(fuzz_gguf.TINY_SEEDS)
    # the command line writes the same file for the same --seed and N
    for name in ("a.gguf", "b.gguf"):
        proc = subprocess.run([sys.executable, str(FUZZ / "fuzz_gguf.py"), "--seed", "5", "--replay", "7", "--out",
                               str(tmp_path / name)], capture_output=True, text=True, timeout=120, check=True)
        assert proc.stdout.startswith("mutant 7: ")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    s, _, m = first[7]
    assert (tmp_path / "a.gguf").read_bytes() == m.content + bytes(m.size - len(m.content))


def test_every_family_mutates_every_seed(seeds):
    rng = random.Random(1)
    for seed in seeds:
        for family in FAMILIES:
            m = mutate(seed, rng, family)
            assert m.family == family and m.description


def test_large_seed_keeps_only_its_header(seeds, tmp_path):
    """A seed read without its data (the real model's case): mutants are the head plus zeros."""
    path = tmp_path / "seed.gguf"
    path.write_bytes(seeds[0].content)
    light = Seed.from_file("light", path, keep_data=False)
    assert light.data == b"" and light.size == seeds[0].size and light.head == seeds[0].head
    rng = random.Random(3)
    for _ in range(100):
        m = mutate(light, rng)
        # the data is never held: what follows the (mutated) head is zeros, or the file is cut short
        assert m.size - len(m.content) == light.data_size or (m.family == "truncate" and m.size < light.size)


# ---------------------------------------------------------------- the harness: every way a child can end
def _ok(job):
    pass


def _refused(job):
    raise GGUFError(f"{job.path}: metadata 'x' = 1: expected 2")


def _unnamed(job):
    raise GGUFError("metadata 'x' = 1: expected 2")


def _other(job):
    raise TypeError("unhashable type: 'list'")


def _slow(job):
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:
        pass
    if job.mode == "slow-refusal":
        _refused(job)


def _hang(job):
    time.sleep(30)


def _allocate(job):
    return bytearray(1 << 30)  # 1 GiB, past a 64 MiB budget


def _segfault(job):
    os.kill(os.getpid(), signal.SIGSEGV)


def _abort_out_of_memory(job):
    os.write(2, b"memory allocation of 17179869184 bytes failed\n")  # what Rust's allocator prints
    os.abort()


def test_harness_classes_every_ending(tmp_path):
    targets = {"ok": _ok, "refused": _refused, "unnamed": _unnamed, "other": _other, "slow": _slow,
               "slow-refusal": _slow, "timeout": _hang, "memory": _allocate, "crash": _segfault,
               "memory-abort": _abort_out_of_memory}
    jobs = [Job(name, str(tmp_path / f"{name}.gguf"), name, 64 << 20) for name in targets]
    t0 = time.perf_counter()
    results = run_jobs(jobs, lambda job: targets[job.mode](job), parallel=2, time_limit=1.0, slow=0.1,
                       workdir=str(tmp_path))
    assert time.perf_counter() - t0 < 10
    got = {r.id: r for r in results}
    assert {name: got[name].outcome for name in targets} == {
        "ok": "ok", "refused": "refused", "unnamed": "unnamed", "other": "other", "slow": "slow",
        "slow-refusal": "slow", "timeout": "timeout", "memory": "memory", "crash": "crash", "memory-abort": "memory"}
    assert got["other"].detail.startswith("TypeError: unhashable type: 'list' [test_fuzz.py:")
    assert got["slow"].detail.startswith("ok after 0.") and got["slow-refusal"].detail.startswith("refused after 0.")
    assert got["crash"].detail.startswith("killed by SIGSEGV")
    assert got["memory-abort"].detail.startswith("killed by SIGABRT")
    assert set(BUGS) == {"unnamed", "other", "slow", "timeout", "memory", "crash"}
    assert not list(tmp_path.glob("*.stderr"))  # the children's stderr files are removed
