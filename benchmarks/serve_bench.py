"""Serving throughput: aggregate completion tokens/s and time to first token at 1, 2, 4, 8 concurrent
streams, `wgpu-llm serve` beside llama-cpp-python's server on the same model in the same run.

    python benchmarks/serve_bench.py [--models gemma3-270m] [--concurrency 1,2,4,8] [--max-tokens 32]
                                     [--backend cpu] [--engines wgpu-llm,llama-cpp-python] [--json FILE]

Each server runs as a subprocess on 127.0.0.1 with a context of --ctx-size tokens (ours split into
--parallel slots, 8 by default); each level sends that many streaming /v1/completions requests at
once, every one with its own prompt (greedy, --max-tokens tokens; ours with ignore_eos, so every
stream is full length). Tokens per stream: the usage chunk where the server sends one, else the
number of content chunks (llama-cpp-python streams one per token). Aggregate tokens/s: all streams'
tokens over the time from the first request to the last stream's end. Prints a table; writes JSON
stamped like benchmarks/run.py's results (commit, machine, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wgpu_llm import bench  # noqa: E402

WORDS = bench.PROMPT_TEXT.split()


def prompt_text(i: int, n_words: int = 40) -> str:
    """Request i's prompt: the benchmark text from word 7*i on, so no two prompts share a prefix."""
    words = [WORDS[(7 * i + k) % len(WORDS)] for k in range(n_words)]
    return f"Story {i}: " + " ".join(words)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, engine: str, path: Path, args, port: int):
        self.engine, self.port = engine, port
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if engine == "wgpu-llm":
            cmd = [sys.executable, "-m", "wgpu_llm.cli", "serve", str(path), "--port", str(port), "--parallel",
                   str(args.parallel), "--ctx-size", str(args.ctx_size), "--backend", args.backend]
        else:  # llama-cpp-python's server; weights kept out of AMX buffers (see bench._without_repacked_weights)
            launch = ("import runpy, sys; from wgpu_llm import bench\n"
                      "if bench._cpu_has_amx(): bench._without_repacked_weights()\n"
                      "sys.argv = ['llama_cpp.server'] + sys.argv[1:]\n"
                      "runpy.run_module('llama_cpp.server', run_name='__main__')")
            cmd = [sys.executable, "-c", launch, "--model", str(path), "--port", str(port), "--n_ctx",
                   str(args.ctx_size), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                   "--n_batch", "512", "--verbose", "False"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.engine} server exited ({self.proc.returncode}): {''.join(self.log)[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.engine} server not ready after {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def one_stream(url: str, engine: str, i: int, max_tokens: int, t_start: float, out: dict) -> None:
    import httpx

    body = {"model": "m", "prompt": prompt_text(i), "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if engine == "wgpu-llm":
        body["ignore_eos"] = True
    first, chunks, usage = None, 0, None
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                usage = obj["usage"]["completion_tokens"]
            if obj.get("choices") and obj["choices"][0].get("text"):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
    out[i] = {"ttft_s": (first or time.perf_counter()) - t_start, "tokens": usage if usage is not None else chunks,
              "counted_by": "usage" if usage is not None else "content chunks", "end": time.perf_counter()}


def level(url: str, engine: str, c: int, max_tokens: int) -> dict:
    out: dict = {}
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one_stream, args=(url, engine, i, max_tokens, t0, out)) for i in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(out) != c:
        raise RuntimeError(f"{c - len(out)} of {c} streams failed")
    wall = max(s["end"] for s in out.values()) - t0
    tokens = sum(s["tokens"] for s in out.values())
    ttfts = [s["ttft_s"] for s in out.values()]
    return {"concurrency": c, "streams": c, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_median_s": statistics.median(ttfts), "ttft_max_s": max(ttfts),
            "counted_by": sorted({s["counted_by"] for s in out.values()})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gemma3-270m")
    p.add_argument("--engines", default="wgpu-llm,llama-cpp-python")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--parallel", type=int, default=8, help="slots of our server")
    p.add_argument("--ctx-size", type=int, default=4096)
    p.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", default=None, help="results file (default: benchmarks/results/serve-<machine>-<date>.json)")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    levels = [int(c) for c in args.concurrency.split(",")]
    engines = args.engines.split(",")
    started = datetime.now(timezone.utc)
    doc = {"schema": 1, "kind": "serving", "date": started.isoformat(timespec="seconds"),
           "command": shlex.join(["python", "benchmarks/serve_bench.py", *argv]), **bench.git_provenance(),
           "machine": bench.machine_info(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
           "load_average": {"before": list(os.getloadavg())}, "rows": []}
    for spec in args.models.split(","):
        name, path = bench.resolve_model(spec)
        for engine in engines:
            server = ServerProcess(engine, path, args, _free_port())
            try:
                server.wait_ready()
                level(server.url, engine, 1, 4)  # warm-up: first-request costs out of the numbers
                for c in levels:
                    row = {"model": name, "engine": engine, **level(server.url, engine, c, args.max_tokens)}
                    doc["rows"].append(row)
                    print(f"{name} {engine:17} c={c}: {row['tokens_per_s']:7.1f} tok/s aggregate, "
                          f"TTFT median {row['ttft_median_s'] * 1000:6.0f} ms ({row['tokens']} tokens, "
                          f"{row['wall_s']:.1f} s)", flush=True)
            except Exception as e:  # noqa: BLE001 -- recorded, the other engine still runs
                doc["rows"].append({"model": name, "engine": engine, "error": f"{type(e).__name__}: {e}"})
                print(f"{name} {engine}: failed: {e}", flush=True)
            finally:
                server.stop()
    doc["load_average"]["after"] = list(os.getloadavg())
    doc["end"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc["scaling"] = scaling(doc["rows"])
    for s in doc["scaling"]:
        print(f"{s['model']} {s['engine']:17} c={s['concurrency']}: {s['vs_one_stream']:.2f}x one stream's tok/s")
    out = Path(args.json) if args.json else (
        ROOT / "benchmarks" / "results" / f"serve-{bench.machine_label(doc['machine'])}-{started.date()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 1 if any("error" in r for r in doc["rows"]) else 0


def scaling(rows: list[dict]) -> list[dict]:
    """Each level's aggregate tokens/s over the same engine's single stream."""
    single = {(r["model"], r["engine"]): r["tokens_per_s"] for r in rows if r.get("concurrency") == 1}
    return [{"model": r["model"], "engine": r["engine"], "concurrency": r["concurrency"],
             "vs_one_stream": r["tokens_per_s"] / single[(r["model"], r["engine"])]}
            for r in rows if "concurrency" in r and (r["model"], r["engine"]) in single]


if __name__ == "__main__":
    sys.exit(main())
