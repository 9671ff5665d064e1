"""The model cache under concurrency, interruption and a read-only directory: never a corrupt or
half-written file under a model's name, always one clear message.

Processes are real (`python -c`): a test model registered in each, built by a deliberately slow
copy so that two builders overlap and a kill lands in the middle of a build. The real Gemma 3
assembly runs once, in two processes at once (the case that used to fail on a shared `.partial`).

Read-only: the tests run as root here and in some containers, and root writes into a chmod 555
directory anyway (CAP_DAC_OVERRIDE). So under root the processes run without that capability (and
CAP_DAC_READ_SEARCH), dropped from their bounding set before exec: an ordinary permission check,
the same one a normal user meets, which each process first proves by failing to create a file."""

import ctypes
import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tiny_models import write_tiny_model
from wgpu_llm import zoo

ROOT = Path(__file__).resolve().parents[1]

# A driver: registers the model "tiny" (the bytes of SOURCE, built DELAY seconds per 4 KiB block),
# proves the cache's writability is as the test says, then does what is asked.
DRIVER = r"""
import os, sys, time
from pathlib import Path
from wgpu_llm import zoo

source, sha, delay, writable, action = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]

def slow_copy(out, show_progress):
    print("building", flush=True)
    data = source.read_bytes()
    with out.open("wb") as f:
        for i in range(0, len(data), 4096):
            f.write(data[i:i + 4096])
            f.flush()
            time.sleep(delay)

zoo.KNOWN_MODELS["tiny"] = zoo.KnownModel("tiny", "tiny.gguf", sha, "a test model")
zoo._BUILDERS["tiny"] = slow_copy
probe = zoo.cache_dir() if zoo.cache_dir().exists() else zoo.cache_dir().parent
try:
    (probe / f"probe-{os.getpid()}").touch()
    os.unlink(probe / f"probe-{os.getpid()}")
    can_write = "yes"
except PermissionError:
    can_write = "no"
assert can_write == writable, f"{probe}: writable {can_write}, expected {writable}"
if action == "path":
    print(zoo.model_path("tiny"))
else:
    from wgpu_llm import LLM
    print(LLM("tiny", backend="cpu").generate("the cat", 4, temperature=0).text)
"""


def _drop_root_override():
    """(In the child, before exec.) Remove CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from the
    bounding set: root then meets file permissions like any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def start(cache: Path, *args: str, as_user: bool = False) -> subprocess.Popen:
    """A process of this package with cache as WGPU_LLM_CACHE; as_user: without root's override of
    file permissions (a no-op for a normal user)."""
    env = {**os.environ, "WGPU_LLM_CACHE": str(cache)}
    preexec = _drop_root_override if as_user and os.geteuid() == 0 else None
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def driver(cache: Path, model: Path, delay: float = 0.0, writable: bool = True, action: str = "path",
           as_user: bool = False) -> subprocess.Popen:
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    return start(cache, "-c", DRIVER, str(model), sha, str(delay), "yes" if writable else "no", action,
                 as_user=as_user)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("cache-model") / "source.gguf", "llama", "F32", n_ctx=64)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith((".partial", ".tmp")))


def read_only(*paths: Path):
    for p in paths:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture
def restore_write(tmp_path):
    """Give write permission back after the test (so the temporary directory can be removed)."""
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


# ---------------------------------------------------------------- two processes, one empty cache
def test_two_processes_fill_one_empty_cache(tmp_path, model):
    cache = tmp_path / "cache"  # not even created yet
    procs = [driver(cache, model, delay=0.002) for _ in range(2)]  # ~0.2 s of building: they overlap
    results = [finish(p) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err
        assert out.strip().endswith(str(cache / "tiny.gguf"))
    assert sum(out.count("building") for _, out, _ in results) == 1  # one built it, the other waited
    assert (cache / "tiny.gguf").read_bytes() == model.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.gguf", "tiny.gguf.lock", "tiny.gguf.verified"]


@pytest.mark.slow
def test_two_processes_assemble_gemma_at_once(tmp_path):
    """The real assembly from the PyPI chunks (253 MB), twice at once into one empty cache."""
    cache = tmp_path / "cache"
    code = "from wgpu_llm import zoo; print(zoo.model_path('gemma3-270m'))"
    procs = [start(cache, "-c", code) for _ in range(2)]
    for rc, out, err in [finish(p, 600) for p in procs]:
        assert rc == 0, err
        assert out.strip() == str(cache / "gemma-3-270m-q4_k_m.gguf")
    assert sorted(p.name for p in cache.iterdir()) == [
        "gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf.lock", "gemma-3-270m-q4_k_m.gguf.verified"]
    assert zoo._sha256(cache / "gemma-3-270m-q4_k_m.gguf") == zoo.KNOWN_MODELS["gemma3-270m"].sha256


# ---------------------------------------------------------------- interrupted builds
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_an_interrupted_build_leaves_no_model_and_the_next_run_works(tmp_path, model, how):
    cache = tmp_path / "cache"
    proc = driver(cache, model, delay=0.05)  # ~5 s of building
    assert proc.stdout.readline() == "building\n"
    time.sleep(0.3)  # some blocks written
    proc.send_signal(how)
    rc, _, err = finish(proc)
    assert rc != 0
    assert not (cache / "tiny.gguf").exists()
    partial = leftovers(cache)
    if how == signal.SIGKILL:  # no chance to clean up: the half-written temporary file stays ...
        assert len(partial) == 1 and partial[0].startswith("tiny.gguf.") and partial[0].endswith(".partial")
        assert 0 < (cache / partial[0]).stat().st_size < model.stat().st_size
    else:  # Ctrl-C: it removes its temporary file
        assert partial == [] and "KeyboardInterrupt" in err
    rc, out, err = finish(driver(cache, model))
    assert rc == 0, err
    assert "building" in out and (cache / "tiny.gguf").read_bytes() == model.read_bytes()
    assert leftovers(cache) == []  # ... until the next builder, under the lock, removes it


def test_a_build_with_a_wrong_sha256_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path))
    monkeypatch.setitem(zoo.KNOWN_MODELS, "bad", zoo.KnownModel("bad", "bad.gguf", "0" * 64, "a test model"))
    monkeypatch.setitem(zoo._BUILDERS, "bad", lambda out, show_progress: out.write_bytes(b"GGUF damaged"))
    with pytest.raises(ValueError, match=r"^bad as built: sha256 [0-9a-f]{64} != expected 0{64} "
                                         r"\(not put into the cache\)$"):
        zoo.model_path("bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf.lock"]


def register(monkeypatch, cache: Path, data: bytes) -> None:
    """The model "tiny" (these bytes), in this process, with cache as WGPU_LLM_CACHE."""
    monkeypatch.setenv("WGPU_LLM_CACHE", str(cache))
    model = zoo.KnownModel("tiny", "tiny.gguf", hashlib.sha256(data).hexdigest(), "a test model")
    monkeypatch.setitem(zoo.KNOWN_MODELS, "tiny", model)


def test_a_builder_that_waited_uses_the_file_built_meanwhile(tmp_path, monkeypatch, capsys):
    """The lock is taken elsewhere; the model appears while this process waits: it is not built again."""
    import fcntl

    data = b"GGUF" + bytes(1000)
    register(monkeypatch, tmp_path, data)
    monkeypatch.setitem(zoo._BUILDERS, "tiny", lambda out, show: pytest.fail("built twice"))
    with open(tmp_path / "tiny.gguf.lock", "a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)  # another builder (a separate open file: a separate lock)
        got = []
        waiter = threading.Thread(target=lambda: got.append(zoo.model_path("tiny", show_progress=True)))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive() and not got  # waiting
        (tmp_path / "tiny.gguf").write_bytes(data)
    waiter.join(30)
    assert got == [tmp_path / "tiny.gguf"]
    lock = tmp_path / "tiny.gguf.lock"
    assert f"waiting for another process building tiny.gguf (lock: {lock})" in capsys.readouterr().err


def test_stale_partial_files_are_removed_by_the_next_builder(tmp_path, monkeypatch):
    data = b"GGUF" + bytes(100)
    register(monkeypatch, tmp_path, data)
    monkeypatch.setitem(zoo._BUILDERS, "tiny", lambda out, show: out.write_bytes(data))
    for name in ("tiny.gguf.abc123.partial", "tiny.partial", "other.gguf.x.partial"):
        (tmp_path / name).write_bytes(b"half")
    assert zoo.model_path("tiny").read_bytes() == data
    # (tiny.partial: the name every builder used to share; another model's files are not touched)
    assert leftovers(tmp_path) == ["other.gguf.x.partial"]
    assert (tmp_path / "tiny.gguf").stat().st_mode & 0o777 == 0o644  # not mkstemp's private mode


# ---------------------------------------------------------------- a read-only cache
def test_read_only_cache_with_the_model_is_used(tmp_path, model, restore_write):
    cache = tmp_path / "cache"
    rc, _, err = finish(driver(cache, model))  # built and verified while writable
    assert rc == 0, err
    cold = tmp_path / "cold"  # the same, without the stamp: hashed on each use
    cold.mkdir()
    (cold / "tiny.gguf").write_bytes(model.read_bytes())
    for cache_dir in (cache, cold):
        files = sorted(cache_dir.iterdir())
        read_only(cache_dir, *files)
        rc, out, err = finish(driver(cache_dir, model, writable=False, action="generate", as_user=True))
        assert rc == 0, err
        assert out and err == ""  # no message: the tokenizer cache is not written, nothing else is needed
        assert sorted(cache_dir.iterdir()) == files


@pytest.mark.parametrize("layout", ["empty cache", "no cache below a read-only directory"])
def test_read_only_cache_without_the_model_is_one_clear_message(tmp_path, layout, restore_write):
    if layout == "empty cache":
        cache = tmp_path / "cache"
        cache.mkdir()
        read_only(cache)
    else:
        read_only(tmp_path)
        cache = tmp_path / "cache"
    rc, out, err = finish(start(cache, "-m", "wgpu_llm.cli", "run", "gemma3-270m", "-p", "hi", as_user=True))
    assert rc == 1 and out == ""
    assert err == (f"error: cannot build gemma3-270m in the model cache {cache}: Permission denied; "
                   f"set WGPU_LLM_CACHE to a writable directory\n")


def test_read_only_cache_with_a_model_file(tmp_path, model, restore_write):
    """A model given by path: the cache is only where its tokenizer would be kept."""
    cache = tmp_path / "cache"
    cache.mkdir()
    read_only(cache)
    rc, out, err = finish(start(cache, "-m", "wgpu_llm.cli", "run", str(model), "-p", "the cat", "-n", "3",
                                "--backend", "cpu", as_user=True))
    assert rc == 0, err
    assert "error" not in err and "Traceback" not in err
    assert list(cache.iterdir()) == []


def test_cache_dir_is_not_created_by_readers(tmp_path, monkeypatch):
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path / "none"))
    assert zoo.cache_dir() == tmp_path / "none" and not (tmp_path / "none").exists()
