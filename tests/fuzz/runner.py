"""Run jobs in child processes forked from a warm parent, each under a wall-time and an address-space
limit, and class how each one ended.

Forking per job from a parent that has already imported everything costs a few milliseconds and
isolates every job: a hang is killed, an allocation past the limit fails in the child alone, a
crash (a signal) is seen by the parent. The child classes its own exceptions and sends one JSON
line through a pipe; no line means it died.

Outcomes (the last six are bugs):
  ok       the job ran to the end (the mutant still is a valid model)
  refused  a GGUFError whose message names the file
  unnamed  a GGUFError (or a command's error line) that does not name the file
  other    any other exception (a traceback from the command line)
  slow     ok or refused, but only after more than `slow` CPU seconds
  timeout  killed after `time_limit` wall seconds
  memory   an allocation failed under the address-space limit
  crash    the child died (a signal or an exit without a result)
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

OUTCOMES = ("ok", "refused", "unnamed", "other", "slow", "timeout", "memory", "crash")
BUGS = ("unnamed", "other", "slow", "timeout", "memory", "crash")
_MEMORY_SIGNS = ("MemoryError", "memory allocation of", "Cannot allocate memory", "bad_alloc", "out of memory")


@dataclass
class Job:
    id: str
    path: str  # the file the job works on: an error must name it
    mode: str  # what the target does with it
    mem_budget: int  # bytes of address space the child may add to the parent's
    time_limit: float | None = None  # wall seconds (default: run_jobs's)
    slow: float | None = None  # CPU seconds a refusal may take (default: run_jobs's)
    info: dict = field(default_factory=dict)  # carried into the result (model, mutation, ...)


@dataclass
class Result:
    id: str
    outcome: str
    detail: str
    wall_s: float
    cpu_s: float
    rss_growth_mb: float
    info: dict

    def as_dict(self) -> dict:
        return asdict(self)


class Outcome(Exception):
    """Raised by a target that classes its own ending (the command line: its exit code and stderr)."""

    def __init__(self, outcome: str, detail: str):
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


def _pages(field_index: int) -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[field_index]) * os.sysconf("SC_PAGE_SIZE")


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame of the traceback (where the exception came from)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" [{os.path.basename(f.filename)}:{f.lineno} in {f.name}]"


def _classify(job: Job, target: Callable[[Job], None]) -> tuple[str, str]:
    from wgpu_llm.gguf_file import GGUFError

    try:
        target(job)
        return "ok", ""
    except Outcome as e:
        return e.outcome, e.detail
    except GGUFError as e:
        return ("refused" if job.path in str(e) else "unnamed"), str(e)
    except MemoryError as e:
        return "memory", f"MemoryError: {e}{_where(e)}"
    except RecursionError as e:
        return "other", f"RecursionError{_where(e)}"
    except Exception as e:  # noqa: BLE001 -- every other type is the finding
        return "other", f"{type(e).__name__}: {e}{_where(e)}"


def _child(job: Job, target: Callable[[Job], None], write_fd: int, err_path: str, slow: float) -> None:
    """In the forked child: limits, the job, one JSON line to the parent; never returns."""
    try:
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(err, 2)
        if faulthandler.is_enabled():  # (pytest enables it on its own stderr): a crash's dump goes to ours
            faulthandler.enable(file=2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        rss0 = _pages(1)
        limit = _pages(0) + job.mem_budget
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        t0 = time.perf_counter()
        outcome, detail = _classify(job, target)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        slow = job.slow if job.slow is not None else slow
        if outcome in ("ok", "refused") and cpu > slow:  # (a valid mutant too: a load gone super-linear)
            outcome, detail = "slow", f"{outcome} after {cpu:.2f} s of CPU: {detail}"
        line = json.dumps({"outcome": outcome, "detail": detail[:2000], "wall_s": wall, "cpu_s": cpu,
                           "rss_growth_mb": max(0.0, usage.ru_maxrss * 1024 - rss0) / 2**20})
        os.write(write_fd, line.encode() + b"\n")
    except BaseException:  # noqa: BLE001 -- whatever happens here, the child must not return into the parent
        try:
            traceback.print_exc()
        finally:
            os._exit(3)
    os._exit(0)


def _crash_outcome(status: int, err_path: str) -> tuple[str, str]:
    try:
        with open(err_path, errors="replace") as f:
            tail = f.read()[-65536:]
    except OSError:
        tail = ""
    if os.WIFSIGNALED(status):
        how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        how = f"exited with status {os.WEXITSTATUS(status)} without a result"
    kind = "memory" if any(s in tail for s in _MEMORY_SIGNS) else "crash"
    return kind, f"{how}; stderr: {tail.strip()[-600:]}"


def run_jobs(jobs: Iterable[Job], target: Callable[[Job], None], parallel: int = 1, time_limit: float = 5.0,
             slow: float = 1.0, workdir: str = "/tmp", on_result: Callable[[Result], None] | None = None,
             ) -> list[Result]:
    """Run target(job) for every job, `parallel` at a time, each in its own forked child.

    jobs may be a generator: a job's file can be written just before it runs (and removed in
    on_result). Results come in completion order."""
    results: list[Result] = []
    running: dict[int, tuple[Job, float, int, str]] = {}  # read fd -> (job, deadline, pid, stderr path)
    pending = iter(jobs)
    exhausted = False

    def limit(job: Job) -> float:
        return job.time_limit or time_limit

    def finish(job: Job, deadline: float, outcome: str, detail: str, payload: dict | None) -> None:
        p = payload or {}
        r = Result(job.id, outcome, detail, round(p.get("wall_s", time.monotonic() - deadline + limit(job)), 4),
                   round(p.get("cpu_s", 0.0), 4), round(p.get("rss_growth_mb", 0.0), 1), job.info)
        results.append(r)
        if on_result is not None:
            on_result(r)

    while True:
        while not exhausted and len(running) < parallel:
            job = next(pending, None)
            if job is None:
                exhausted = True
                break
            read_fd, write_fd = os.pipe()
            err_path = os.path.join(workdir, f"{os.getpid()}-{len(results) + len(running)}.stderr")
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _child(job, target, write_fd, err_path, slow)
            os.close(write_fd)
            running[read_fd] = (job, time.monotonic() + limit(job), pid, err_path)
        if not running:
            return results
        wait = max(0.0, min(deadline for _, deadline, _, _ in running.values()) - time.monotonic())
        ready, _, _ = select.select(list(running), [], [], min(wait, 0.5))
        for fd in ready:  # a result line, or end of file (the child is gone)
            job, deadline, pid, err_path = running.pop(fd)
            with os.fdopen(fd, "rb") as f:
                data = f.read()
            _, status = os.waitpid(pid, 0)
            if data.strip():
                payload = json.loads(data)
                finish(job, deadline, payload["outcome"], payload["detail"], payload)
            else:
                finish(job, deadline, *_crash_outcome(status, err_path), None)
            _remove(err_path)
        now = time.monotonic()
        for fd, (job, deadline, pid, err_path) in list(running.items()):
            if now > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(fd)
                del running[fd]
                finish(job, deadline, "timeout", f"killed after {limit(job):g} s", None)
                _remove(err_path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
