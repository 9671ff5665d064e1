"""What a user does with a model file, as fuzz targets: each runs in a forked child (runner.py).

  library  LLM(path, backend="cpu"), a short sampled generation, every token decoded (plain and
           with special tokens), the chat prompt when the file has a template;
  header   for a large seed whose tensor data is left as zeros: everything LLM checks and builds
           before it reads a weight (file, hyper-parameters, graph, tokenizer), then the same
           tokenizer work as `library`;
  run / chat / inspect   the command line, in process: `wgpu-llm run|chat|inspect PATH`. Exit code
           0 is ok; otherwise stderr must be one `error: PATH: ...` line (no traceback).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

from runner import Job, Outcome

PROMPT = "the cat sat<|im_end|> on é 日本 \x00\n<start_of_turn>user"
MESSAGES = [{"role": "user", "content": "hi"}]


def _tokenizer_work(tok, metadata: dict, n_ctx: int) -> list[int]:
    ids = tok.encode(PROMPT)[:max(1, n_ctx - 1)]
    every = list(range(tok.n_vocab))
    tok.decode(every)
    tok.decode(every, skip_special=False)
    return ids


def library(job: Job) -> None:
    from wgpu_llm import LLM

    llm = LLM(job.path, backend="cpu")
    ids = _tokenizer_work(llm.tokenizer, llm.file.metadata, llm.n_ctx)
    if llm.n_ctx > len(ids):
        llm.generate(ids, max_tokens=3, temperature=0.8, seed=0)
    else:  # a context of one token: nothing can be generated after a prompt
        llm.logits(ids[:1])
    if llm.file.metadata.get("tokenizer.chat_template", "") != "":
        llm.chat_prompt(MESSAGES)


def header(job: Job) -> None:
    from wgpu_llm.api import open_model
    from wgpu_llm.chat import render_chat

    model = open_model(job.path)
    _tokenizer_work(model.tokenizer, model.file.metadata, model.config.n_ctx_train)
    if model.file.metadata.get("tokenizer.chat_template", "") != "":
        render_chat(model.file.metadata, model.tokenizer, MESSAGES, source=model.file.path)


def cli(job: Job) -> None:
    from wgpu_llm.cli import main

    args = {"run": ["run", job.path, "-p", "hi", "-n", "2", "--backend", "cpu", "--seed", "0"],
            "chat": ["chat", job.path, "-n", "2", "--backend", "cpu", "--seed", "0"],
            "inspect": ["inspect", job.path]}[job.mode]
    out, err = io.StringIO(), io.StringIO()
    stdin, sys.stdin = sys.stdin, io.StringIO("hi\n\n")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(args, prog_name="wgpu-llm")
        code = 0
    except SystemExit as e:
        code = e.code
    except MemoryError:
        raise
    except BaseException as e:  # noqa: BLE001 -- escaping main() is the traceback a user would see
        raise Outcome("other", f"wgpu-llm {job.mode}: traceback: {type(e).__name__}: {e}") from e
    finally:
        sys.stdin = stdin
    if code in (0, None):
        return
    lines = [line for line in err.getvalue().splitlines() if not line.startswith(("backend: ", "chat template: "))]
    text = "\n".join(lines)
    if len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in text:
        raise Outcome("other", f"wgpu-llm {job.mode}: exit {code}, stderr {text[-500:]!r}")
    if lines[0].startswith(("error: the prompt has", "error: this model has no chat template")):
        return  # a valid model whose context cannot hold the prompt, or that has no template to chat with
    if job.path not in lines[0]:
        raise Outcome("unnamed", f"wgpu-llm {job.mode}: {lines[0]}")
    raise Outcome("refused", lines[0])


TARGETS = {"library": library, "header": header, "run": cli, "chat": cli, "inspect": cli}


def run(job: Job) -> None:
    # a tokenizer cache of the job's own (a mutant's header is new: its tokenizer is built and
    # cached), removed with the mutant
    os.environ["WGPU_LLM_CACHE"] = job.path + ".cache"
    TARGETS[job.mode](job)
