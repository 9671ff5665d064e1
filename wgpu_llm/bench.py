"""Speed benchmarks: wgpu-llm side by side with llama.cpp and transformers on the same token ids.

Every engine gets exactly the same prompt token ids (built once per model with our tokenizer from
a fixed English text) and decodes greedily, ignoring end-of-generation tokens (``--sampled``: the
CLI's default sampler with a fixed seed instead, for wgpu-llm's engines only -- SAMPLED). Each (engine, model)
pair runs in its own worker process (``python -m wgpu_llm.bench --worker JOB OUT``), so host memory
is measured per engine and one engine's allocations never weigh on another's numbers.

Definitions (the same for every engine):
  ttft            time from the start of a request to the first generated token (prefill + one
                  sampling step)
  prefill tok/s   prompt tokens / ttft
  decode tok/s    (N - 1) / (t_N - t_1): generated tokens after the first, over the time between
                  the first and the last generated token
  weight GB/s     bytes of weights one decode step reads x decode tok/s (float32 bytes for engines
                  that compute in float32 -- wgpu-llm:cpu, transformers -- GGUF bytes for engines
                  that read the quantized file layout -- wgpu-llm:gpu, llama.cpp)
  host ms/tok     wgpu-llm:gpu only: the CPU time per decode token of the thread running the decode
                  less the waits for the GPU's results -- the Python and wgpu calls that record and
                  submit the steps, which bound decode on a fast GPU (CPU time, not wall time: on a
                  software adapter the GPU's threads share the cores, and a host thread waiting for
                  a core does no host work)
  dispatches/tok  wgpu-llm:gpu only: compute dispatches submitted per decode token

wgpu-llm:gpu-f16 is the GPU backend with activations="f16" (the prefill mat-mat's f16 tiles; an
adapter without shader-f16 has no such row): beside wgpu-llm:gpu, it shows whether f16 pays there.

Every results file says what it measured: the git commit of the checkout (and whether the runtime
code had uncommitted changes), the command line, the date, the machine, the GPU adapter, the versions
of every engine, and per engine, model and case the absolute figures (tok/s, ttft, peak memory).

Use ``main(argv)`` (what ``wgpu-llm bench`` and ``benchmarks/run.py`` call) or ``run_suite``.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from .memory import total_host_memory

DEFAULT_MODELS = ("gemma3-270m", "smollm2-135m")
DEFAULT_ENGINES = ("wgpu-llm", "llama.cpp", "transformers")
ENGINES = ("wgpu-llm", "wgpu-llm:cpu", "wgpu-llm:gpu", "wgpu-llm:gpu-f16", "llama.cpp", "llama.cpp:cpu",
           "llama.cpp:gpu", "transformers")
N_BATCH = 512  # prompt tokens per prefill step, for every engine that has the notion
WARMUP_PROMPT = 512  # the warm-up run uses the first min(prompt, this) prompt tokens
SAMPLED = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 0}  # --sampled: the CLI's defaults
SCHEMA = 2  # 2: git_commit, git_dirty, command, environment, adapter and per-engine versions
ROOT = Path(__file__).resolve().parent.parent  # the checkout (or site-packages) holding wgpu_llm
# The code a measurement depends on: git_dirty looks at these paths, and a results file describes HEAD
# only while these paths are unchanged since its git_commit (benchmarks/readme_table.py checks that).
RUNTIME_PATHS = ("wgpu_llm", "shaders", "cpu_fallback")
# Environment variables that change what runs (engine builds on the path, adapter and driver choice,
# thread counts): recorded in the results file and shown in front of the command.
ENV_PREFIXES = ("PYTHONPATH", "WGPU_LLM_", "VK_", "GGML_", "OMP_", "OPENBLAS_", "MKL_")


@dataclass(frozen=True)
class Case:
    name: str
    prompt_tokens: int
    new_tokens: int
    repeat: int  # timed runs (the median is reported) unless --repeat says otherwise

    @property
    def kind(self) -> str:
        """'prefill' cases are judged by prefill tok/s and ttft, 'decode' cases by decode tok/s."""
        return "prefill" if self.new_tokens == 1 else "decode"


CASES = {
    "prefill_128": Case("prefill_128", 128, 1, 3),
    "prefill_2048": Case("prefill_2048", 2048, 1, 1),
    "decode_128": Case("decode_128", 128, 128, 3),
    "decode_at_2048": Case("decode_at_2048", 2048, 32, 1),
}
QUICK = {  # --quick: the same cases with small sizes, one timed run each
    "prefill_128": Case("prefill_128", 32, 1, 1),
    "prefill_2048": Case("prefill_2048", 256, 1, 1),
    "decode_128": Case("decode_128", 32, 16, 1),
    "decode_at_2048": Case("decode_at_2048", 256, 8, 1),
}

# A fixed, varied English text; repeated and cut to the exact number of tokens a case needs.
PROMPT_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk, counting each of the "
    "one hundred and twelve steps out loud. From the lamp room he could see the fishing boats returning "
    "across the bay, their engines humming, gulls wheeling above the nets. In winter the storms came "
    "from the north-west and the windows rattled in their iron frames; in summer tourists knocked on "
    "the door asking whether the light still worked. It did. He kept a logbook in a careful hand: wind "
    "speed, visibility, ships sighted, the price of diesel, a recipe for fish soup his grandmother had "
    "taught him. Scientists later used those notebooks to reconstruct forty years of coastal weather, "
    "and an economist wrote a paper on the diesel prices. Meanwhile, in the city, a young programmer "
    "was debugging a scheduler that dropped one job in ten thousand. She wrote a test that replayed a "
    "week of production traffic, found a race between two timers, and fixed it with three lines. Her "
    "manager asked for a report; she sent a diagram instead. Photosynthesis converts light, water and "
    "carbon dioxide into sugar and oxygen, while the Krebs cycle releases the energy stored in that "
    "sugar. Mount Everest is 8,849 metres tall; the Mariana Trench is nearly eleven kilometres deep. "
    "Why do cats purr? Nobody is entirely sure, although vibrations between 25 and 150 Hz may help "
    "bones heal. The recipe calls for two cups of flour, a pinch of salt, three eggs and a spoonful "
    "of honey; bake it for 35 minutes at 180 degrees. "
)


# ----------------------------------------------------------------------------------------------
# measuring


@dataclass
class Measure:
    ttft_s: float
    prefill_tps: float
    decode_tps: float | None  # None when only one token was generated
    tokens: list[int]
    host_s_per_token: float | None = None  # decode time per token less the wait for the GPU (wgpu-llm:gpu)
    dispatches_per_token: float | None = None  # compute dispatches per decode token (wgpu-llm:gpu)


def _from_times(n_prompt: int, t0: float, token_times: list[float], tokens: list[int]) -> Measure:
    ttft = token_times[0] - t0
    n = len(token_times)
    decode = (n - 1) / (token_times[-1] - token_times[0]) if n > 1 and token_times[-1] > token_times[0] else None
    return Measure(ttft, n_prompt / ttft, decode, [int(t) for t in tokens])


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident set size (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> tuple[float, str]:
    """Peak resident memory of this process: VmHWM (resettable) where there is one, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / 2**20 if sys.platform == "darwin" else peak / 1024), "ru_maxrss"


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (not installed, no GPU, ...); the message says why."""


# ----------------------------------------------------------------------------------------------
# engines (constructed inside a worker process)


class WgpuLLMEngine:
    def __init__(self, path: Path, backend: str, n_ctx: int, threads: int, activations: str = "f32"):
        from .api import LLM
        from .backends import BackendUnavailable

        try:
            self.llm = LLM(path, backend=backend, n_ctx=n_ctx, n_batch=N_BATCH, activations=activations)
        except BackendUnavailable as e:
            raise EngineUnavailable(str(e)) from None
        if backend == "gpu" and self.llm.backend.name == "cpu":
            raise EngineUnavailable(f"no GPU backend ({self.llm.backend_reason})")
        if getattr(self.llm.backend, "activations", "f32") != activations:
            raise EngineUnavailable(f"activations {activations}: {self.llm.backend.describe()}")
        import numpy as np

        self.label = f"wgpu-llm:{backend}" + ("-f16" if activations == "f16" else "")
        self.description = f"{self.llm.backend.describe()} ({self.llm.backend_reason})"
        self.versions = {"numpy": np.__version__}
        self.adapter = None
        if backend == "gpu":
            import wgpu

            self.versions["wgpu"] = wgpu.__version__
            be = self.llm.backend
            info = getattr(getattr(be, "rt", None), "info", None)  # a gpu.device.AdapterInfo
            raw = dict(getattr(getattr(info, "adapter", None), "info", None) or {})  # wgpu's own description
            self.adapter = {"name": getattr(info, "name", None) or be.describe(),
                            "vendor": getattr(info, "vendor", None), "backend": getattr(info, "backend", None),
                            "type": getattr(info, "type", None), "software": getattr(info, "is_software", None),
                            "driver": raw.get("description") or None}

    def run(self, ids: list[int], n_new: int, sampling: dict | None = None) -> Measure:
        """Greedy decoding, or with sampling (generate's keywords: SAMPLED)."""
        out = self.llm.generate(list(ids), max_tokens=n_new, ignore_eos=True, **(sampling or {"temperature": 0.0}))
        s = out.stats
        decode = s["decode_tokens_per_s"] if s["generated_tokens"] > 1 else None
        return Measure(s["ttft_s"], s["prefill_tokens_per_s"], decode, list(out.tokens),
                       s.get("decode_host_s_per_token"), s.get("decode_dispatches_per_token"))

    def gpu_bytes(self) -> int | None:
        value = getattr(self.llm.backend, "allocated_bytes", None)
        return int(value) if isinstance(value, (int, float)) else None


def _llama_cpp_libraries(llama_cpp) -> list[str]:
    """The ggml libraries shipped with this llama-cpp-python build (libggml-vulkan.so.0.25.3, ...): the
    most specific name of each, not its shorter aliases (libggml-vulkan.so, libggml-vulkan.so.0)."""
    names = sorted(p.name for p in (Path(llama_cpp.__file__).parent / "lib").glob("*ggml*"))
    return [n for n in names if not any(o != n and o.startswith(n + ".") for o in names)]


GGML_GPU_BACKENDS = ("vulkan", "cuda", "metal", "hip", "sycl", "opencl", "kompute")


def _llama_cpp_gpu_name(llama_cpp) -> str | None:
    """The GPU backend compiled into this llama-cpp-python build, or None for a CPU-only build."""
    # a backend built as a library (libggml-vulkan.so ...) is there even when it finds no device, in
    # which case llama_supports_gpu_offload() is false: the build is still not a CPU-only one
    libs = " ".join(name.lower() for name in _llama_cpp_libraries(llama_cpp))
    for name in GGML_GPU_BACKENDS:
        if f"ggml-{name}" in libs:
            return name
    try:
        if not llama_cpp.llama_supports_gpu_offload():
            return None
    except AttributeError:
        return None
    info = llama_cpp.llama_print_system_info().decode(errors="replace").lower()
    return next((name for name in GGML_GPU_BACKENDS if name in info), "gpu")


def _ggml_devices(llama_cpp) -> list[dict] | None:
    """The devices ggml registered in this build, [{"name": "Vulkan0", "description": "llvmpipe ..."}, ...],
    read through ggml's device API; None where the build's libraries do not export it (old builds)."""
    import ctypes

    for lib in ("libggml.so", "libggml.dylib", "ggml.dll", "libggml-base.so"):
        path = Path(llama_cpp.__file__).parent / "lib" / lib
        if not path.is_file():
            continue
        try:
            ggml = ctypes.CDLL(str(path))  # already loaded by llama_cpp: the same registry
            count, get = ggml.ggml_backend_dev_count, ggml.ggml_backend_dev_get
            name, description = ggml.ggml_backend_dev_name, ggml.ggml_backend_dev_description
        except (OSError, AttributeError):
            continue
        count.restype, get.restype, get.argtypes = ctypes.c_size_t, ctypes.c_void_p, [ctypes.c_size_t]
        for fn in (name, description):
            fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        devices = [get(i) for i in range(count())]
        return [{"name": name(d).decode(errors="replace"), "description": description(d).decode(errors="replace")}
                for d in devices]
    return None


def llama_cpp_build() -> dict:
    """Which llama-cpp-python is importable here and which ggml GPU backend it was built with:
    {"version", "gpu_backend" (None for a CPU-only build), "libraries", "devices" (what ggml found, the
    GPU ones named after the backend: "Vulkan0", ...; None where unknown)}, or {"error": why not}."""
    try:
        import llama_cpp
    except ImportError as e:
        return {"error": f"llama-cpp-python is not installed ({e})"}
    except OSError as e:  # the package is there but its shared library does not load
        return {"error": f"llama-cpp-python does not load ({e})"}
    return {"version": llama_cpp.__version__, "gpu_backend": _llama_cpp_gpu_name(llama_cpp),
            "libraries": _llama_cpp_libraries(llama_cpp), "devices": _ggml_devices(llama_cpp)}


def _gpu_devices(build: dict) -> list[dict] | None:
    """The build's GPU devices (Vulkan0, CUDA0, ROCm0, ...): every ggml device but the CPU and the
    CPU-side accelerators (BLAS, AMX) and remote ones (RPC); None where the devices are unknown."""
    if build.get("devices") is None or not build.get("gpu_backend"):
        return None
    return [d for d in build["devices"] if not d["name"].upper().startswith(("CPU", "BLAS", "AMX", "RPC"))]


@lru_cache(maxsize=1)
def llama_cpp_probe() -> dict:
    """llama_cpp_build() as a worker sees it (same environment), without loading llama.cpp here."""
    code = "import json, wgpu_llm.bench as b; print(json.dumps(b.llama_cpp_build()))"
    try:
        proc = subprocess.run([sys.executable, "-c", code], check=False, env=_worker_env(None), capture_output=True,
                              text=True, timeout=120)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"error": f"could not probe llama-cpp-python ({type(e).__name__}: {e})"}


def _cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _without_repacked_weights() -> None:
    """Keep llama.cpp's weights in plain CPU buffers: on a CPU with AMX, llama-cpp-python 0.3.36
    repacks them into AMX buffer types and then crashes (SIGSEGV) in the first eval, for these
    models and tiny ones alike. This worker process loads one model; the patch lives only here."""
    import llama_cpp.llama_cpp as C

    default = C.llama_model_default_params

    def params():
        p = default()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    C.llama_model_default_params = params


class LlamaCppEngine:
    """llama-cpp-python on its CPU backend (device "cpu") or on the GPU backend it was built with ("gpu")."""

    def __init__(self, path: Path, device: str, n_ctx: int, threads: int):
        build = llama_cpp_build()
        if "error" in build:
            raise EngineUnavailable(build["error"])
        import llama_cpp
        import numpy as np

        self._np, self._llama_cpp = np, llama_cpp
        gpu = build["gpu_backend"] if device == "gpu" else None
        gpu_devices = _gpu_devices(build)
        if device == "gpu" and gpu is None:
            raise EngineUnavailable(f"llama-cpp-python {build['version']} is a CPU-only build "
                                    f"(libraries: {', '.join(build['libraries']) or 'none found'})")
        if device == "gpu" and gpu_devices == []:  # layers "offloaded" to no device would run on the CPU
            raise EngineUnavailable(
                f"llama-cpp-python {build['version']}'s {gpu} backend found no device (llama.cpp's Vulkan "
                "backend never picks a software adapter such as lavapipe unless GGML_VK_VISIBLE_DEVICES=0 names it)")
        options = {}
        if gpu is None and "op_offload" in inspect.signature(llama_cpp.Llama).parameters:
            options["op_offload"] = False  # a GPU build would otherwise run big prefill products on the GPU
        plain = _cpu_has_amx()
        if plain:
            _without_repacked_weights()
        self.label = f"llama.cpp:{gpu or 'cpu'}"
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=threads,
                                   n_threads_batch=threads, n_gpu_layers=-1 if gpu else 0, seed=0, verbose=False,
                                   **options)
        self.n_vocab = self.llm.n_vocab()
        self.description = (f"llama-cpp-python {build['version']}, {threads} threads, "
                            f"{'all layers on ' + gpu if gpu else 'CPU'}"
                            f"{', weights not repacked for AMX (that path crashes)' if plain else ''}")
        self.versions = {"llama-cpp-python": build["version"], "ggml_gpu_backend": build["gpu_backend"],
                         "ggml_libraries": build["libraries"], "ggml_devices": build["devices"],
                         "numpy": np.__version__}
        self.adapter = None
        if gpu:  # with several devices llama.cpp splits the layers over them; one is the usual case
            self.adapter = {"backend": gpu, "device": ", ".join(d["description"] for d in gpu_devices or []) or None}

    def _argmax(self) -> int:
        logits = self._np.ctypeslib.as_array(self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1),
                                             shape=(self.n_vocab,))
        return int(logits.argmax())

    def run(self, ids: list[int], n_new: int) -> Measure:
        self.llm.reset()  # forget the previous request (eval drops the KV cache past n_tokens)
        tokens, times = [], []
        t0 = time.perf_counter()
        self.llm.eval(list(ids))
        for i in range(n_new):
            if i:
                self.llm.eval([tokens[-1]])
            tokens.append(self._argmax())
            times.append(time.perf_counter())
        return _from_times(len(ids), t0, times, tokens)

    def gpu_bytes(self) -> int | None:
        return None


class TransformersEngine:
    def __init__(self, path: Path, n_ctx: int, threads: int):
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, GenerationConfig
        except ImportError as e:
            raise EngineUnavailable(f"transformers / torch are not installed ({e})") from None
        import logging

        logging.getLogger("transformers").setLevel(logging.ERROR)
        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=torch.float32)
        self.model.eval()
        self._config = GenerationConfig
        self.label = "transformers"
        self.description = (f"transformers {transformers.__version__} float32, torch {torch.__version__}, "
                            f"{threads} threads, attention {self.model.config._attn_implementation}")
        self.versions = {"transformers": transformers.__version__, "torch": torch.__version__}
        self.adapter = None

    def run(self, ids: list[int], n_new: int) -> Measure:
        torch = self.torch

        class Clock:  # generate() calls put() with the prompt, then once per generated token
            def __init__(self):
                self.times, self.tokens = [], []

            def put(self, value):
                self.times.append(time.perf_counter())
                self.tokens.append(value)

            def end(self):
                pass

        cfg = self._config(do_sample=False, num_beams=1, max_new_tokens=n_new, min_new_tokens=n_new,
                           pad_token_id=self.model.config.pad_token_id or 0,
                           eos_token_id=self.model.config.eos_token_id)
        x = torch.tensor([list(ids)], dtype=torch.long)
        clock = Clock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=cfg,
                                streamer=clock)
        tokens = [int(t.reshape(-1)[0]) for t in clock.tokens[1:]]
        return _from_times(len(ids), t0, clock.times[1:], tokens)

    def gpu_bytes(self) -> int | None:
        return None


def _open_engine(engine: str, path: Path, n_ctx: int, threads: int):
    if engine == "wgpu-llm:gpu-f16":
        return WgpuLLMEngine(path, "gpu", n_ctx, threads, activations="f16")
    if engine.startswith("wgpu-llm:"):
        return WgpuLLMEngine(path, engine.split(":", 1)[1], n_ctx, threads)
    if engine in ("llama.cpp:cpu", "llama.cpp:gpu"):
        return LlamaCppEngine(path, engine.split(":", 1)[1], n_ctx, threads)
    if engine == "transformers":
        return TransformersEngine(path, n_ctx, threads)
    raise ValueError(f"unknown engine {engine!r}")


def _worker(job_path: str, out_path: str) -> int:
    """Run one (engine, model) job: load, then warm-up + timed runs per case; write the result JSON."""
    with open(job_path) as f:
        job = json.load(f)
    result: dict = {"engine": job["engine"], "label": job["engine"], "status": "ok", "cases": {}}

    def save():
        with open(out_path, "w") as f:
            json.dump(result, f)

    try:
        can_reset = _reset_peak_rss()
        t = time.perf_counter()
        engine = _open_engine(job["engine"], Path(job["model_path"]), job["n_ctx"], job["threads"])
        result.update(label=engine.label, description=engine.description, adapter=engine.adapter,
                      versions=engine.versions, load_s=time.perf_counter() - t)
        result["load_peak_mib"], result["peak_method"] = _peak_rss_mib()
        if not can_reset:
            result["peak_method"] += " (cumulative: the peak could not be reset between cases)"
        for case in job["cases"]:
            ids, n_new = case["prompt_ids"], case["new_tokens"]
            entry: dict = {"status": "ok"}
            result["cases"][case["name"]] = entry
            try:
                _reset_peak_rss()
                sampling = case.get("sampling")

                def run(ids, n_new):
                    return engine.run(ids, n_new, sampling) if sampling else engine.run(ids, n_new)

                run(ids[:min(len(ids), WARMUP_PROMPT)], min(n_new, 2))
                runs = [run(ids, n_new) for _ in range(case["repeat"])]
                entry["runs"] = [{k: v for k, v in asdict(m).items() if k != "tokens"} for m in runs]
                entry["tokens"] = runs[0].tokens
                entry["peak_host_mib"] = _peak_rss_mib()[0]
                entry["gpu_bytes"] = engine.gpu_bytes()
            except Exception as e:  # noqa: BLE001 -- one case failing (e.g. too long for the context) spares the rest
                entry["status"] = f"failed: {type(e).__name__}: {e}"
                entry["traceback"] = traceback.format_exc(limit=6)
            save()
    except EngineUnavailable as e:
        result["status"] = f"unavailable: {e}"
    except Exception as e:  # noqa: BLE001 -- reported in the results, not raised
        result["status"] = f"failed: {type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc(limit=8)
    save()
    return 0


# ----------------------------------------------------------------------------------------------
# the suite (parent process)


def weight_bytes_per_token(path: Path) -> dict:
    """Bytes of weights one decode step reads: every tensor the graph uses, except the rows an
    embedding lookup picks (a tied embedding therefore counts once, as the output head)."""
    from . import models
    from .gguf_file import GGUFFile

    gf = GGUFFile(path)
    graph = models.architecture(gf).build_graph(gf, all_logits=False)
    read = {w for op in graph.ops if op.kind != "embed" for w in op.weights}
    return {"float32": sum(gf.tensors[w].n_elements * 4 for w in read),
            "gguf": sum(gf.tensors[w].n_bytes for w in read), "n_tensors": len(read)}


def _bytes_kind(label: str) -> str:
    return "float32" if label in ("wgpu-llm:cpu", "transformers") else "gguf"


def build_prompt(path: Path, n_tokens: int) -> list[int]:
    """Exactly n_tokens ids of PROMPT_TEXT repeated (with BOS where the model adds one), our tokenizer."""
    from .api import _header_digest
    from .gguf_file import GGUFFile
    from .tokenizer import Tokenizer

    gf = GGUFFile(path)
    tok = Tokenizer.from_metadata(gf.metadata, cache_key=_header_digest(gf), source=gf.path)
    reps = 1
    while True:
        ids = tok.encode(" ".join([PROMPT_TEXT.strip()] * reps), add_special=True)
        if len(ids) >= n_tokens:
            return [int(t) for t in ids[:n_tokens]]
        reps = max(reps + 1, math.ceil(reps * n_tokens / max(len(ids), 1) * 1.1))


def resolve_model(spec: str) -> tuple[str, Path]:
    from . import zoo

    if spec in zoo.KNOWN_MODELS:
        return spec, zoo.model_path(spec, show_progress=True)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"model {spec!r} is neither a known name ({', '.join(zoo.KNOWN_MODELS)}) nor a file")
    return path.stem, path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], check=False, capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("wgpu-llm", "numpy", "gguf", "wgpu", "llama_cpp_python", "torch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out["numpy_blas"] = f"{blas.get('name')} {blas.get('version', '')}".strip()
    except (TypeError, KeyError, AttributeError):  # numpy < 2 or an unusual build
        pass
    return out


def machine_info() -> dict:
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_bytes": total_host_memory(),
            "os": platform.platform(), "arch": platform.machine(), "versions": _versions()}
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    return info


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], check=False, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or [f"git exit {proc.returncode}"])[-1])
    return proc.stdout


def git_provenance(root: Path = ROOT) -> dict:
    """The code that was measured: git_commit (full sha of HEAD) and git_dirty.

    git_dirty is true when RUNTIME_PATHS (wgpu_llm/, shaders/, cpu_fallback/) hold changes that are in
    no commit: modified tracked files, or new files git does not ignore (an uncommitted module or
    shader runs too). Changes elsewhere (docs, tests, results files) do not change a measurement,
    and in a checkout that others edit they would make the flag always true. git_dirty_paths lists
    the changed paths. Outside a git checkout (an installed package, a source archive) both are None
    and git_note says why."""
    out = {"git_commit": None, "git_dirty": None, "git_dirty_paths": [], "git_note": None}
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel").strip()).resolve()
        if top != root.resolve():  # e.g. site-packages inside some other repository
            out["git_note"] = f"wgpu_llm is not at the top of a git checkout (the repository there is {top.name})"
            return out
        out["git_commit"] = _git(root, "rev-parse", "HEAD").strip()
        status = _git(root, "status", "--porcelain", "--", *RUNTIME_PATHS)
    except FileNotFoundError:
        out["git_note"] = "git is not installed"
        return out
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        out["git_note"] = f"not run from a git checkout ({e})"
        return out
    out["git_dirty_paths"] = [line[3:] for line in status.splitlines() if line.strip()]
    out["git_dirty"] = bool(out["git_dirty_paths"])
    return out


def _environment() -> dict:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}


def command_line(argv: list[str]) -> str:
    """The command that ran, as typed in the repository root: `python benchmarks/run.py ...`,
    `python -m wgpu_llm.bench ...` or `wgpu-llm bench ...` (no absolute path of this machine)."""
    script = Path(sys.argv[0]).name if sys.argv else ""
    prog = {"run.py": "python benchmarks/run.py", "bench.py": "python -m wgpu_llm.bench"}.get(script, "wgpu-llm bench")
    return shlex.join([*prog.split(), *argv])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "unknown"


def machine_label(machine: dict) -> str:
    """A hostname-free name for the results file: the GPU adapter when one ran, else cpu-<N>core."""
    if machine.get("gpu"):
        return "gpu-" + _slug(machine["gpu"])
    return f"cpu-{machine.get('cores') or 0}core"


def _worker_env(threads: int | None) -> dict:
    """A worker's environment: this wgpu_llm (and cpu_fallback) first on the path, the thread count."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _run_worker(engine: str, model_name: str, path: Path, cases: list[dict], n_ctx: int, threads: int,
                timeout: float | None) -> dict:
    env = _worker_env(threads)
    with tempfile.TemporaryDirectory(prefix="wgpu-llm-bench-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps({"engine": engine, "model": model_name, "model_path": str(path),
                                        "cases": cases, "n_ctx": n_ctx, "threads": threads}))
        cmd = [sys.executable, "-m", "wgpu_llm.bench", "--worker", str(job_path), str(out_path)]
        try:
            proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
            err = proc.stderr.strip()
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc, err = None, f"timed out after {timeout:.0f} s"
        result = json.loads(out_path.read_text()) if out_path.is_file() else None
    if result is None:
        tail = err.splitlines()[-1] if err else "no output"
        result = {"engine": engine, "label": engine, "status": f"failed: worker exit {rc}: {tail}", "cases": {}}
    elif rc != 0 and result.get("status") == "ok":  # died after some cases (killed, out of memory, timeout)
        result["status"] = f"failed part-way: worker exit {rc}: {(err.splitlines() or ['?'])[-1]}"
    return result


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _rows_from(result: dict, model_name: str, cases: list[Case], weights: dict) -> list[dict]:
    rows = []
    label = result.get("label", result["engine"])
    for case in cases:
        row = {"engine": label, "model": model_name, "case": case.name, "kind": case.kind,
               "prompt_tokens": case.prompt_tokens, "new_tokens": case.new_tokens, "repeat": case.repeat,
               "status": result["status"], "prefill_tokens_per_s": None, "decode_tokens_per_s": None,
               "ttft_ms": None, "peak_host_mib": None, "gpu_mib": None, "weight_bytes_per_token": None,
               "weight_gb_per_s": None, "decode_host_ms_per_token": None, "decode_dispatches_per_token": None,
               "runs": [], "tokens": []}
        entry = result.get("cases", {}).get(case.name)
        if result["status"] == "ok" or (entry and entry.get("status") == "ok"):
            if entry is None:
                row["status"] = "not run"
            elif entry["status"] != "ok":
                row["status"] = entry["status"]
            else:
                row["status"] = "ok"
                runs = entry["runs"]
                row["runs"], row["tokens"] = runs, entry["tokens"]
                row["prefill_tokens_per_s"] = _median(r["prefill_tps"] for r in runs)
                row["decode_tokens_per_s"] = _median(r["decode_tps"] for r in runs)
                ttft = _median(r["ttft_s"] for r in runs)
                row["ttft_ms"] = None if ttft is None else ttft * 1000
                host = _median(r.get("host_s_per_token") for r in runs)
                row["decode_host_ms_per_token"] = None if host is None else host * 1000
                row["decode_dispatches_per_token"] = _median(r.get("dispatches_per_token") for r in runs)
                row["peak_host_mib"] = entry.get("peak_host_mib")
                gpu = entry.get("gpu_bytes")
                row["gpu_mib"] = None if gpu is None else gpu / 2**20
                row["weight_bytes_per_token"] = weights[_bytes_kind(label)]
                if row["decode_tokens_per_s"]:
                    row["weight_gb_per_s"] = row["weight_bytes_per_token"] * row["decode_tokens_per_s"] / 1e9
        rows.append(row)
    return rows


def _agree(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def ratios(rows: list[dict]) -> list[dict]:
    """Each wgpu-llm engine vs each peer, per model and case, from the same run: prefill tok/s for
    prefill cases, decode tok/s for decode cases; plus how many leading greedy tokens agree."""
    ok = {(r["engine"], r["model"], r["case"]): r for r in rows if r["status"] == "ok"}
    ours = sorted({r["engine"] for r in rows if r["engine"].startswith("wgpu-llm")})
    peers = sorted({r["engine"] for r in rows if not r["engine"].startswith("wgpu-llm")})
    out = []
    for (engine, model, case), mine in ok.items():
        if engine not in ours:
            continue
        for peer in peers + [o for o in ours if o < engine]:  # wgpu-llm:gpu vs wgpu-llm:cpu, once
            other = ok.get((peer, model, case))
            if other is None:
                continue
            metric = f"{mine['kind']}_tokens_per_s"
            a, b = mine[metric], other[metric]
            if a and b:
                out.append({"engine": engine, "vs": peer, "model": model, "case": case, "metric": mine["kind"],
                            "ours": a, "theirs": b, "ratio": a / b,
                            "same_leading_tokens": _agree(mine["tokens"], other["tokens"]),
                            "new_tokens": mine["new_tokens"]})
    return out


def select_cases(names: list[str] | None, quick: bool, repeat: int | None) -> list[Case]:
    table = QUICK if quick else CASES
    names = names or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(table)}")
    return [replace(table[n], repeat=repeat) if repeat else table[n] for n in names]


def expand_engines(names: list[str], backend: str, llama_cpp_gpu: bool | None = None) -> list[str]:
    """The worker engines for --engines: 'wgpu-llm' follows --backend; 'llama.cpp' is its CPU backend
    (always a row: the reference every engine is compared with) plus the GPU backend the installed
    build has, if any (llama_cpp_gpu; None: ask the installed build)."""
    out: list[str] = []
    for name in names:
        if name not in ENGINES:
            raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
        if name == "wgpu-llm":
            expanded = ["wgpu-llm:cpu", "wgpu-llm:gpu"] if backend == "all" else [f"wgpu-llm:{backend}"]
        elif name == "llama.cpp":
            if llama_cpp_gpu is None:
                llama_cpp_gpu = bool(llama_cpp_probe().get("gpu_backend"))
            expanded = ["llama.cpp:cpu", "llama.cpp:gpu"] if llama_cpp_gpu else ["llama.cpp:cpu"]
        else:
            expanded = [name]
        out += [e for e in expanded if e not in out]
    return out


def run_suite(models: list[str], cases: list[Case], engines: list[str], *, threads: int | None = None,
              timeout: float | None = None, log=None, command: str | None = None, sampling: dict | None = None) -> dict:
    """Run every (engine, model) in a worker process; returns the result document (see README).
    command: the command line that asked for this run (recorded as it is).
    sampling: decode with these sampling keywords instead of greedily (wgpu-llm engines only)."""
    if sampling and any(not e.startswith("wgpu-llm") for e in engines):
        raise ValueError("sampled decoding is measured for wgpu-llm's engines only (pass --engines wgpu-llm)")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    threads = threads or os.cpu_count() or 1
    machine = machine_info()
    if any(e.startswith("llama.cpp") for e in engines):
        machine["llama_cpp"] = llama_cpp_probe()
    started = datetime.datetime.now().astimezone()
    doc = {"schema": SCHEMA, "date": started.isoformat(timespec="seconds"), **git_provenance(),
           "command": command, "environment": _environment(), "machine": machine,
           "settings": {"threads": threads, "n_batch": N_BATCH, "warmup_prompt_tokens": WARMUP_PROMPT,
                        "engines": engines, "cases": [asdict(c) for c in cases],
                        "repeat": {c.name: c.repeat for c in cases}, "sampling": sampling or "greedy"},
           "load_average": {"before": _loadavg()}, "models": {}, "engines": {}, "rows": []}
    for spec in models:
        name, path = resolve_model(spec)
        weights = weight_bytes_per_token(path)
        longest = max(c.prompt_tokens + c.new_tokens for c in cases)
        prompts = {c.name: build_prompt(path, c.prompt_tokens) for c in cases}
        from .gguf_file import GGUFFile

        gf = GGUFFile(path)
        train_ctx = int(gf.get(f"{gf.architecture}.context_length", int, 4096))
        n_ctx = min(train_ctx, -(-longest // 256) * 256)
        doc["models"][name] = {"file": path.name, "architecture": gf.architecture, "file_bytes": gf.file_size,
                               "weight_bytes_per_token": weights, "n_ctx": n_ctx}
        del gf
        for engine in engines:
            log(f"[bench] {engine} on {name}: {', '.join(c.name for c in cases)} ...")
            t, load_before = time.perf_counter(), _loadavg()
            jobs = [{"name": c.name, "prompt_ids": prompts[c.name], "new_tokens": c.new_tokens,
                     "repeat": c.repeat, "sampling": sampling} for c in cases]
            result = _run_worker(engine, name, path, jobs, n_ctx, threads, timeout)
            entry = doc["engines"].setdefault(result.get("label", engine), {})
            for key in ("versions", "adapter"):  # the same for every model: kept once per engine
                if result.get(key):
                    entry[key] = result[key]
            entry.setdefault("runs", {})[name] = {
                **{k: result.get(k) for k in ("description", "status", "load_s", "load_peak_mib", "peak_method")},
                "wall_s": round(time.perf_counter() - t, 1), "load_average": [load_before, _loadavg()]}
            if result.get("adapter") and result.get("label", "").startswith("wgpu-llm:gpu"):
                machine["gpu"] = result["adapter"]["name"]
                machine["adapter"] = result["adapter"]
            if "traceback" in result:
                log(result["traceback"])
            log(f"[bench]   {result.get('label', engine)}: {result['status']} ({time.perf_counter() - t:.0f} s)")
            doc["rows"] += _rows_from(result, name, cases, weights)
    doc["load_average"]["after"] = _loadavg()
    doc["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    doc["ratios"] = ratios(doc["rows"])
    doc["label"] = machine_label(machine)
    return doc


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------------
# output


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def print_report(doc: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: do not squeeze the table into 80 columns
            console = Console(width=200)
    m = doc["machine"]
    mem = f"{m['memory_bytes'] / 2**30:.1f} GiB" if m.get("memory_bytes") else "?"
    console.print(f"[bold]machine[/bold] {doc['label']}: {m['cpu']}, {m['cores']} cores, {mem} RAM"
                  + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; {doc['settings']['threads']} threads")
    if doc.get("git_commit"):
        dirty = doc.get("git_dirty_paths") or []
        console.print(f"commit {doc['git_commit'][:12]}"
                      + (f" [red]with uncommitted changes: {', '.join(dirty)}[/red]" if dirty else ""))
    else:
        console.print(f"commit unknown: {doc.get('git_note')}")
    la = doc["load_average"]
    console.print(f"load average (1/5/15 min) before {la['before']}, after {la['after']}")
    for label, info in doc["engines"].items():
        desc = next((r["description"] for r in info["runs"].values() if r.get("description")), None)
        if desc:
            console.print(f"  {label}: {desc}")

    table = Table(title="wgpu-llm benchmarks (median of the timed runs)")
    for col, just in (("engine", "left"), ("model", "left"), ("case", "left"), ("prompt+new", "right"),
                      ("prefill tok/s", "right"), ("decode tok/s", "right"), ("TTFT ms", "right"),
                      ("peak host MiB", "right"), ("GPU MiB", "right"), ("weights GB/s", "right"),
                      ("host ms/tok", "right"), ("dispatches/tok", "right"), ("status", "left")):
        table.add_column(col, justify=just)
    for r in doc["rows"]:
        table.add_row(r["engine"], r["model"], r["case"], f"{r['prompt_tokens']}+{r['new_tokens']}",
                      _fmt(r["prefill_tokens_per_s"]), _fmt(r["decode_tokens_per_s"]), _fmt(r["ttft_ms"], 0),
                      _fmt(r["peak_host_mib"], 0), _fmt(r["gpu_mib"], 0), _fmt(r["weight_gb_per_s"], 2),
                      _fmt(r.get("decode_host_ms_per_token"), 2), _fmt(r.get("decode_dispatches_per_token"), 0),
                      r["status"] if r["status"] == "ok" else f"[red]{_short(r['status'])}[/red]")
    console.print(table)

    if doc["ratios"]:
        rt = Table(title="side by side (same run): ours / theirs, > 1 means wgpu-llm is faster")
        for col in ("engine", "vs", "model", "case", "metric", "ours tok/s", "theirs tok/s", "ratio",
                    "same first tokens"):
            rt.add_column(col, justify="right" if "tok" in col or col == "ratio" else "left")
        for q in doc["ratios"]:
            rt.add_row(q["engine"], q["vs"], q["model"], q["case"], q["metric"], _fmt(q["ours"]),
                       _fmt(q["theirs"]), f"{q['ratio']:.3g}x",
                       f"{q['same_leading_tokens']}/{q['new_tokens']}")
        console.print(rt)


def _clean_doc(doc: dict) -> dict:
    """The document as saved: generated token ids trimmed to what the agreement check needs."""
    out = dict(doc)
    out["rows"] = [{**r, "tokens": r["tokens"][:32]} for r in doc["rows"]]
    return out


def write_png(doc: dict, path: Path) -> str | None:
    """A bar chart of prefill and decode tok/s; returns a note when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    rows = [r for r in doc["rows"] if r["status"] == "ok"]
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    panels = [("prefill", "prefill_tokens_per_s", "prefill tokens/s"),
              ("decode", "decode_tokens_per_s", "decode tokens/s")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, (kind, metric, title) in zip(axes, panels):
        groups = list(dict.fromkeys((r["model"], r["case"], r["prompt_tokens"], r["new_tokens"])
                                    for r in rows if r["kind"] == kind))
        width = 0.8 / max(len(engines), 1)
        for i, engine in enumerate(engines):
            values = [next((r[metric] or 0 for r in rows if r["engine"] == engine and r["model"] == g[0]
                            and r["case"] == g[1]), 0) for g in groups]
            xs = [j + (i - (len(engines) - 1) / 2) * width for j in range(len(groups))]
            bars = ax.bar(xs, values, width, label=engine)
            ax.bar_label(bars, labels=[f"{v:.0f}" if v else "" for v in values], fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{m}\n{c}\n({p}+{n} tokens)" for m, c, p, n in groups], fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(f"{doc['label']}: {m['cpu']}, {m['cores']} cores" + (f", {m['gpu']}" if m.get("gpu") else "")
                 + f" ({doc['date'][:10]})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wgpu-llm bench",
        description="Prefill / decode speed of wgpu-llm next to llama.cpp and transformers, same token ids.")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated known names or GGUF paths (default: %(default)s)")
    p.add_argument("--cases", default=None, help=f"comma-separated, from {', '.join(CASES)} (default: all)")
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                   help=f"comma-separated, from {', '.join(ENGINES)}; 'wgpu-llm' follows --backend "
                        "(default: %(default)s)")
    p.add_argument("--backend", choices=("cpu", "gpu", "all"), default="cpu",
                   help="what the 'wgpu-llm' engine runs on (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small prompts and few tokens: a fast check")
    p.add_argument("--sampled", action="store_true",
                   help="decode with the CLI's default sampler (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, "
                        "seed 0) instead of greedily; wgpu-llm's engines only")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed runs per case (default: 3 for 128-token cases, 1 for 2048-token cases)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every engine (default: all cores)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per (engine, model) worker")
    p.add_argument("--json", default=None,
                   help="result file (default: benchmarks/results/<machine label>-<date>.json)")
    p.add_argument("--png", default=None, help="chart file (default: the JSON path with .png)")
    p.add_argument("--no-png", action="store_true", help="do not draw the chart")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(*argv[1:3])
    args = parser().parse_args(argv)
    try:
        cases = select_cases(_split(args.cases) if args.cases else None, args.quick, args.repeat)
        engines = expand_engines(_split(args.engines), args.backend)
        if args.repeat is not None and args.repeat < 1:
            raise ValueError("--repeat must be >= 1")
        doc = run_suite(_split(args.models), cases, engines, threads=args.threads, timeout=args.timeout,
                        command=command_line(argv), sampling=SAMPLED if args.sampled else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(doc)
    date = doc["date"][:10]
    json_path = Path(args.json) if args.json else Path("benchmarks") / "results" / f"{doc['label']}-{date}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_clean_doc(doc), indent=1) + "\n")
    print(f"results: {json_path}")
    if not args.no_png:
        png = Path(args.png) if args.png else json_path.with_suffix(".png")
        note = write_png(doc, png)
        print(note if note else f"chart: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
