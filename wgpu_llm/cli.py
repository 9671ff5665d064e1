"""`wgpu-llm` command line: run, chat, inspect, devices."""

from __future__ import annotations

import sys

import click

from .backends import BACKENDS


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _open(model, backend, n_ctx, adapter):
    from . import LLM

    try:
        llm = LLM(model, backend=backend, n_ctx=n_ctx, adapter=adapter)
    except (ValueError, RuntimeError, OSError) as e:
        _fail(str(e))
    click.echo(f"backend: {llm.backend_reason}", err=True)
    return llm


_sampling_options = [
    click.option("-n", "--max-tokens", default=128, show_default=True, help="tokens to generate"),
    click.option("--temperature", default=0.8, show_default=True, help="0 = greedy"),
    click.option("--top-k", default=40, show_default=True, help="0 = off"),
    click.option("--top-p", default=0.95, show_default=True, help="1 = off"),
    click.option("--min-p", default=0.05, show_default=True, help="0 = off"),
    click.option("--repeat-penalty", default=1.0, show_default=True, help="1 = off"),
    click.option("--seed", type=int, default=None, help="random seed (default: random)"),
    click.option("--stop", multiple=True, help="stop string (repeatable)"),
    click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True),
    click.option("--adapter", default=None, help="GPU adapter index or name (default: best; env WGPU_LLM_ADAPTER)"),
    click.option("--ctx-size", "n_ctx", type=int, default=None, help="context size (default: min(4096, model's))"),
]


def sampling_options(f):
    for option in reversed(_sampling_options):
        f = option(f)
    return f


@click.group()
@click.version_option(package_name="wgpu-llm")
def main():
    """Run GGUF language models on any GPU through WebGPU, or on the CPU with numpy."""


@main.command()
@click.argument("model", required=False)
@click.option("-p", "--prompt", required=True, help="prompt text")
@sampling_options
def run(model, prompt, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop, backend,
        adapter, n_ctx):
    """Generate text after PROMPT with MODEL (a GGUF path or a known name; default: Gemma 3 270M)."""
    llm = _open(model, backend, n_ctx, adapter)
    stats: dict = {}
    try:
        for piece in llm.stream(prompt, max_tokens, stop=list(stop), stats=stats, temperature=temperature,
                                top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed):
            click.echo(piece, nl=False)
            sys.stdout.flush()
    except ValueError as e:
        _fail(str(e))
    click.echo()
    click.echo(_summary(stats), err=True)


def _summary(stats: dict) -> str:
    return (f"prompt {stats['prompt_tokens']} tokens, generated {stats['generated_tokens']} tokens | "
            f"ttft {stats['ttft_s'] * 1000:.0f} ms | prefill {stats['prefill_tokens_per_s']:.1f} tok/s | "
            f"decode {stats['decode_tokens_per_s']:.1f} tok/s | {stats['backend']}")


@main.command()
@click.argument("model", required=False)
@click.option("--system", default=None, help="system message")
@sampling_options
def chat(model, system, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop, backend,
         adapter, n_ctx):
    """Interactive chat with the model's chat template (empty line or EOF ends)."""
    llm = _open(model, backend, n_ctx, adapter)
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            user = input("> ")
        except EOFError:
            break
        if not user.strip():
            break
        messages.append({"role": "user", "content": user})
        stats: dict = {}
        try:
            ids = llm.chat_prompt(messages)
            reply = ""
            for piece in llm.stream(ids, max_tokens, stop=list(stop), stats=stats, temperature=temperature,
                                    top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed):
                reply += piece
                click.echo(piece, nl=False)
        except ValueError as e:
            _fail(str(e))
        click.echo()
        click.echo(_summary(stats), err=True)
        messages.append({"role": "assistant", "content": reply})


@main.command()
@click.argument("model", required=False)
@click.option("--all-tensors/--summary", default=False, help="list every tensor (default: the first 40)")
def inspect(model, all_tensors):
    """Architecture, hyper-parameters, tokenizer and tensors of a GGUF file."""
    from .report import inspect_model

    try:
        inspect_model(model, all_tensors)
    except (ValueError, OSError) as e:
        _fail(str(e))


@main.command()
def devices():
    """Every GPU adapter wgpu sees, its limits and features, and which one `auto` picks."""
    from rich.console import Console
    from rich.table import Table

    try:
        from .gpu import device
    except ImportError as e:
        _fail(f"the gpu backend cannot be loaded: {e}")
    adapters = device.list_adapters()
    table = Table(title="GPU adapters (select one with --adapter or WGPU_LLM_ADAPTER=<index|name>)")
    for col in ("#", "name", "backend", "type", "max binding", "max buffer", "subgroups", "f16", "timestamps"):
        table.add_column(col)
    mib = 1 << 20
    for a in adapters:
        sizes = f" {a.subgroup_sizes[0]}-{a.subgroup_sizes[1]}" if a.subgroups and a.subgroup_sizes else ""
        table.add_row(str(a.index), a.name + (" (software)" if a.is_software else ""), a.backend, a.type,
                      f"{a.max_storage_binding // mib} MiB", f"{a.max_buffer // mib} MiB",
                      ("yes" + sizes) if a.subgroups else "no", "yes" if a.shader_f16 else "no",
                      "yes" if a.timestamp_query else "no")
    console = Console()
    console.print(table)
    for mode, allow in (("auto", False), ("gpu", True)):
        try:
            _, why = device.choose_adapter(allow_software=allow)
            console.print(f"--backend {mode}: {why}")
        except device.GpuUnavailable as e:
            console.print(f"--backend {mode}: {'cpu (numpy): ' if mode == 'auto' else 'error: '}{e}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
              add_help_option=False)
@click.pass_context
def bench(ctx):
    """Prefill / decode speed next to llama.cpp and transformers (`wgpu-llm bench --help`)."""
    from .bench import main as bench_main

    sys.exit(bench_main(list(ctx.args)))


if __name__ == "__main__":
    main()
