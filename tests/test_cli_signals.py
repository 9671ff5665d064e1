"""The command line interrupted: Ctrl-C (SIGINT) in `run` and in `chat`, a closed pipe on stdout.
Never a traceback; what was printed stays printed. In-process (CliRunner, the signal raised by a
wrapped stream) and as a shell runs it (a subprocess, the signal sent after the first output)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiny_models import write_tiny_model
from wgpu_llm import LLM
from wgpu_llm.cli import main

ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 3000  # greedy, this tiny model writes ~3000 tokens after PROMPT (several seconds) without an EOS
PROMPT = "the cat"
SUMMARY = re.compile(r"prompt (\d+) tokens, generated (\d+) tokens \|.*")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("signals") / "llama.gguf", "llama", "F32", n_ctx=8192))


class Cli:
    """`python -m wgpu_llm.cli ...` with its output collected as it comes (a reader thread per pipe)."""

    def __init__(self, *args, env=None, stdin=subprocess.DEVNULL):
        self.proc = subprocess.Popen([sys.executable, "-m", "wgpu_llm.cli", *args], cwd=ROOT, stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.out, self.err = bytearray(), bytearray()
        self._readers = [threading.Thread(target=self._read, args=(pipe, buf), daemon=True)
                         for pipe, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for r in self._readers:
            r.start()

    @staticmethod
    def _read(pipe, buf):
        while chunk := os.read(pipe.fileno(), 4096):
            buf += chunk

    def wait_for(self, condition, what: str, timeout: float = 120):
        end = time.monotonic() + timeout
        while not condition(self.stdout):
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) before {what}: {self.stderr}"
            assert time.monotonic() < end, f"no {what} after {timeout} s: {self.stdout!r} {self.stderr}"
            time.sleep(0.005)

    def interrupt(self):
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout)
        for r in self._readers:
            r.join(timeout)
        return rc

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", errors="replace")


def generated(stderr: str) -> list[int]:
    """The generated-token counts of the summary lines."""
    return [int(m.group(2)) for m in SUMMARY.finditer(stderr)]


def test_subprocess_ctrl_c_in_run_keeps_the_text_and_exits_130(tiny):
    cli = Cli("run", tiny, "-p", PROMPT, "-n", str(MAX_TOKENS), "--temperature", "0", "--backend", "cpu")
    cli.wait_for(lambda out: len(out) > 0, "first output")
    cli.interrupt()
    assert cli.finish() == 130, cli.stderr
    assert "Traceback" not in cli.stderr and "Aborted" not in cli.stderr
    summary = cli.stderr.strip().splitlines()[-1]
    assert SUMMARY.fullmatch(summary) and summary.endswith("| cpu | interrupted (Ctrl-C)"), summary
    (n,) = generated(cli.stderr)
    assert 0 < n < MAX_TOKENS  # stopped early
    # the text printed is the model's text of those n tokens (less a character still incomplete)
    text = cli.stdout
    assert text.endswith("\n") and len(text) > 1
    want = LLM(tiny, backend="cpu").generate(PROMPT, n, temperature=0).text
    assert want.startswith(text[:-1]) and len(want) - len(text[:-1]) <= 1


def test_subprocess_ctrl_c_in_chat_ends_the_reply_and_keeps_the_conversation(tiny):
    cli = Cli("chat", tiny, "-n", str(MAX_TOKENS), "--temperature", "0", "--backend", "cpu", stdin=subprocess.PIPE)
    cli.wait_for(lambda out: out == "> ", "the prompt")
    cli.proc.stdin.write(b"hi\n")
    cli.proc.stdin.flush()
    cli.wait_for(lambda out: len(out) > 2, "the first reply")
    cli.interrupt()
    cli.wait_for(lambda out: out.endswith("\n> "), "the second prompt")
    first = cli.stdout[2:-3]
    cli.proc.stdin.write(b"more\n")
    cli.proc.stdin.close()  # EOF after this turn: the chat ends normally
    assert cli.finish() == 0, cli.stderr
    assert "Traceback" not in cli.stderr
    n_first, n_second = generated(cli.stderr)
    assert 0 < n_first < MAX_TOKENS
    assert cli.stderr.count("interrupted (Ctrl-C)") == 1
    # the second reply was written after the first one as far as it got, as the library writes it
    llm = LLM(tiny, backend="cpu")
    full_first = llm.chat([{"role": "user", "content": "hi"}], MAX_TOKENS, temperature=0).text
    assert "\n> " not in full_first and full_first.startswith(first) and first
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "more"}]
    second = llm.chat(history, MAX_TOKENS, temperature=0)
    assert len(second.tokens) == n_second
    assert cli.stdout == f"> {first}\n> {second.text}\n> "


def test_subprocess_ctrl_c_at_the_chat_prompt_exits_130(tiny):
    cli = Cli("chat", tiny, "--backend", "cpu", stdin=subprocess.PIPE)
    cli.wait_for(lambda out: out == "> ", "the prompt")
    cli.interrupt()
    assert cli.finish() == 130
    assert cli.stderr.rstrip().endswith("interrupted") and "Traceback" not in cli.stderr
    cli.proc.stdin.close()


def test_subprocess_closed_pipe_exits_quietly(tiny):
    """`wgpu-llm run ... | head -c 20`: the reader goes away while the text streams."""
    proc = subprocess.Popen([sys.executable, "-m", "wgpu_llm.cli", "run", tiny, "-p", PROMPT, "-n", str(MAX_TOKENS),
                             "--temperature", "0", "--backend", "cpu"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    head = proc.stdout.read(20)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(120)
    assert len(head) == 20
    assert rc == 1 and err.startswith("backend: cpu"), (rc, err)
    # nothing about the pipe, no traceback, and no summary line (the run did not finish)
    assert err.count("\n") == 1 and "Error" not in err and "Exception" not in err, err


# ---------------------------------------------------------------- in-process
def sigint_while_computing(monkeypatch, piece_numbers: list[int]):
    """Wrap LLM.stream: SIGINT comes while the pieces numbered in piece_numbers (from 0, of each
    stream; a number twice: two signals) are computed."""
    real = LLM.stream

    def stream(self, *args, **kwargs):
        for i, piece in enumerate(real(self, *args, **kwargs)):
            yield piece
            for _ in range(piece_numbers.count(i + 1)):
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(LLM, "stream", stream)


def invoke(*args, input=None):
    result = CliRunner().invoke(main, list(args), input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def test_ctrl_c_stops_run_after_the_piece_in_hand(tiny, monkeypatch):
    want = LLM(tiny, backend="cpu").stream(PROMPT, 40, temperature=0)
    pieces = list(want)
    sigint_while_computing(monkeypatch, [3])
    result = invoke("run", tiny, "-p", PROMPT, "-n", "40", "--temperature", "0", "--backend", "cpu")
    assert result.exit_code == 130
    assert result.stdout == "".join(pieces[:4]) + "\n"  # the piece being computed is printed, no more
    assert result.stderr.rstrip().endswith("| cpu | interrupted (Ctrl-C)")
    (n,) = generated(result.stderr)
    assert 4 <= n < 40
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_ctrl_c_twice_stops_run_at_once(tiny, monkeypatch):
    first = next(LLM(tiny, backend="cpu").stream(PROMPT, 40, temperature=0))
    sigint_while_computing(monkeypatch, [1, 1])  # the second one raises KeyboardInterrupt inside the generation
    result = invoke("run", tiny, "-p", PROMPT, "-n", "40", "--temperature", "0", "--backend", "cpu")
    assert result.exit_code == 130
    assert result.stdout == first + "\n"  # the piece being computed is not printed
    assert result.stderr.rstrip().endswith("interrupted (Ctrl-C)")


def test_ctrl_c_in_chat_keeps_the_conversation(tiny, monkeypatch):
    llm = LLM(tiny, backend="cpu")

    def two_pieces(messages):
        return "".join(list(llm.stream(llm.chat_prompt(messages), 40, temperature=0))[:2])

    first = two_pieces([{"role": "user", "content": "hi"}])
    second = two_pieces([{"role": "user", "content": "hi"}, {"role": "assistant", "content": first},
                         {"role": "user", "content": "more"}])
    sigint_while_computing(monkeypatch, [1])  # each reply ends with its second piece
    result = invoke("chat", tiny, "-n", "40", "--temperature", "0", "--backend", "cpu", input="hi\nmore\n")
    assert result.exit_code == 0
    assert result.stdout == f"> {first}\n> {second}\n> "
    assert result.stderr.count("interrupted (Ctrl-C)") == 2


def test_ctrl_c_outside_a_generation_exits_130(tiny, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LLM, "__init__", interrupted)  # Ctrl-C while the model loads
    result = invoke("run", tiny, "-p", PROMPT, "--backend", "cpu")
    assert result.exit_code == 130 and result.stderr.endswith("\ninterrupted\n") and result.stdout == ""
    result = invoke("chat", tiny, "--backend", "cpu")
    assert result.exit_code == 130 and "interrupted" in result.stderr


def test_summary_says_interrupted():
    from wgpu_llm.cli import _summary

    stats = dict(prompt_tokens=7, generated_tokens=20, ttft_s=0.25, prefill_tokens_per_s=123.45,
                 decode_tokens_per_s=9.96, backend="gpu")
    assert _summary(stats, interrupted=True).endswith("| gpu | interrupted (Ctrl-C)")
    assert _summary(stats).endswith("| gpu")
    assert _summary({}, interrupted=True) == "interrupted before the first token"
