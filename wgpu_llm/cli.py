"""`wgpu-llm` command line: run, chat, serve, inspect, devices, verify."""

from __future__ import annotations

import string
import sys
import warnings
from contextlib import closing
from pathlib import Path

import click

from .arguments import check_text
from .backends import ACTIVATIONS, BACKENDS, KV_CACHES
from .ctrl_c import CtrlC
from .sampling import InvalidSamplingParam, SamplingParams

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a program ended by Ctrl-C


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _model_arg(model: str | None) -> str | None:
    """MODEL as given when it is a known name or an existing path; otherwise fail naming both kinds."""
    from . import zoo

    if model is None or model in zoo.KNOWN_MODELS or Path(model).exists():
        return model
    _fail(f"{model}: no such file, and not a known model name (known: {', '.join(zoo.KNOWN_MODELS)})")


CPU_WEIGHTS = {"f32": "float32", "f16": "float16"}  # --cpu-weights -> LLM(weights_dtype=...)


def _open(model, backend, n_ctx, adapter, trace=None):
    from . import LLM

    model = _model_arg(model)
    meta = click.get_current_context().meta
    weights = CPU_WEIGHTS[meta.get("cpu_weights", "f32")]
    try:
        llm = LLM(model, backend=backend, n_ctx=n_ctx, adapter=adapter, trace=trace, weights_dtype=weights,
                  kv_cache=meta.get("kv_cache", "auto"), activations=meta.get("activations", "f32"))
    except (ValueError, RuntimeError, OSError, MemoryError) as e:
        _fail(str(e))
    click.echo(f"backend: {llm.backend_reason}", err=True)
    return llm


_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\", '"': b'"', "'": b"'"}


def unescape(text: str) -> str:
    """Interpret the backslash escapes llama.cpp interprets in prompts and reverse prompts:
    \\n \\t \\r \\\\ \\" \\' , \\xNN (one byte, as in llama.cpp: "\\xC3\\xA9" is "é") and \\uNNNN
    (one character). Any other backslash, or bytes that do not form UTF-8, is a ValueError naming it."""
    out, i = bytearray(), 0
    while (at := text.find("\\", i)) >= 0:
        out += text[i:at].encode("utf-8", "surrogateescape")  # (undecodable argv bytes stay bytes)
        kind = text[at + 1:at + 2]
        n_hex = {"x": 2, "u": 4}.get(kind, 0)
        digits = text[at + 2:at + 2 + n_hex]
        if kind in _ESCAPES:
            out += _ESCAPES[kind]
        elif not n_hex:
            what = f"unknown escape \\{kind}" if kind else "a lone \\ at the end"
            raise ValueError(f"{what} (position {at}; known: \\n \\t \\r \\\\ \\\" \\' \\xNN \\uNNNN; "
                             f"write \\\\ for a backslash)")
        elif len(digits) < n_hex or not all(d in string.hexdigits for d in digits):
            raise ValueError(f"\\{kind} at position {at} needs {n_hex} hex digits, got '{text[at:at + 2 + n_hex]}'")
        elif kind == "x":
            out.append(int(digits, 16))
        elif 0xD800 <= int(digits, 16) <= 0xDFFF:
            raise ValueError(f"\\u{digits} at position {at} is a UTF-16 surrogate, not a character")
        else:
            out += chr(int(digits, 16)).encode()
        i = at + 2 + n_hex
    out += text[i:].encode("utf-8", "surrogateescape")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"the \\x escapes of {text!r} do not form UTF-8 ({e.reason} at byte {e.start}); "
                         f"write a character as \\uNNNN or as all of its UTF-8 bytes") from None


def utf8_text(text: str) -> str:
    """A command-line argument or input line, which must be UTF-8: Python hands over bytes that are
    not UTF-8 as lone surrogates (errors='surrogateescape'). A ValueError names the first bad byte."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (Windows' UTF-16 argv)
        check_text(text, "the text")
        raise
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start} ({e.reason}); "
                         f"pass the text in UTF-8") from None


def _text_option(ctx, param, value):
    try:
        return None if value is None else utf8_text(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None


def _stop_strings(ctx, param, values):
    try:
        return [unescape(utf8_text(v)) for v in values]
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None


# command-line names of SamplingParams fields, for error messages
_OPTION_OF = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
              "repeat_penalty": "--repeat-penalty", "seed": "--seed"}


def _sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed) -> dict:
    """The sampling options checked by SamplingParams (before any model is opened), as keyword
    arguments for LLM.stream; a bad one is a usage error naming the option."""
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                  seed=seed)
    try:
        SamplingParams(**kwargs)
    except InvalidSamplingParam as e:
        raise click.BadParameter(f"{e.value!r} {e.why}", param_hint=f"'{_OPTION_OF[e.name]}'") from None
    return kwargs


cpu_weights_option = click.option(
    "--cpu-weights", type=click.Choice(tuple(CPU_WEIGHTS)), default="f32", show_default=True, expose_value=False,
    callback=lambda ctx, _, v: ctx.meta.__setitem__("cpu_weights", v),
    help="weight matrices of the numpy backend: f16 takes half the memory, runs slower")

kv_cache_option = click.option(
    "--kv-cache", type=click.Choice(KV_CACHES), default="auto", show_default=True, expose_value=False,
    callback=lambda ctx, _, v: ctx.meta.__setitem__("kv_cache", v),
    help="KV cache values: f16 takes half the memory (logits close to f32's, see the README); "
         "auto: f16 on a hardware GPU with shader-f16, else f32")

activations_option = click.option(
    "--activations", type=click.Choice(ACTIVATIONS), default="f32", show_default=True, expose_value=False,
    callback=lambda ctx, _, v: ctx.meta.__setitem__("activations", v),
    help="GPU prefill mat-mat activations: f16 stages them (and the weight tiles) in f16, accumulates in f32, "
         "where the adapter has shader-f16 (logits close to f32's, see wgpu_llm/tolerances.py); f32 elsewhere")

_sampling_options = [
    click.option("-n", "--max-tokens", type=click.IntRange(min=0), default=128, show_default=True,
                 help="tokens to generate"),
    click.option("--temperature", default=0.8, show_default=True, help="0 = greedy"),
    click.option("--top-k", default=40, show_default=True, help="0 = off"),
    click.option("--top-p", default=0.95, show_default=True, help="1 = off"),
    click.option("--min-p", default=0.05, show_default=True, help="0 = off"),
    click.option("--repeat-penalty", default=1.0, show_default=True, help="1 = off"),
    click.option("--seed", type=int, default=None, help="random seed (default: random)"),
    click.option("--stop", multiple=True, callback=_stop_strings,
                 help="stop string (repeatable); escapes \\n \\t \\r \\\\ \\\" \\' \\xNN \\uNNNN are interpreted"),
    click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True),
    click.option("--adapter", default=None, help="GPU adapter index or name (default: best; env WGPU_LLM_ADAPTER)"),
    click.option("--ctx-size", "n_ctx", type=click.IntRange(min=1), default=None,
                 help="context size (default: min(4096, model's))"),
    cpu_weights_option,
    kv_cache_option,
    activations_option,
]


def sampling_options(f):
    for option in reversed(_sampling_options):
        f = option(f)
    return f


class _Commands(click.Group):
    """Ctrl-C outside a generation (while a model loads, at chat's prompt) ends the program with
    exit code 130 and one line on stderr, not click's "Aborted!" (exit code 1) or a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Commands)
@click.version_option(package_name="wgpu-llm")
def main():
    """Run GGUF language models on any GPU through WebGPU, or on the CPU with numpy."""
    # numpy's floating-point warnings (NaN or overflow computed from damaged weights) are not for a
    # command-line user: non-finite logits end generation with one error line naming the file
    warnings.filterwarnings("ignore", message="(invalid value|overflow|divide by zero) encountered",
                            category=RuntimeWarning)


@main.command()
@click.argument("model", required=False)
@click.option("-p", "--prompt", required=True, callback=_text_option, help="prompt text")
@click.option("--trace", is_flag=True, default=None,
              help="time every step op by op; print a report after the text (also env WGPU_LLM_TRACE=1)")
@click.option("--trace-json", type=click.Path(dir_okay=False), default=None,
              help="also write the trace to this file in Chrome's trace event format (implies --trace)")
@sampling_options
def run(model, prompt, trace, trace_json, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop,
        backend, adapter, n_ctx):
    """Generate text after PROMPT with MODEL (a GGUF path or a known name; default: Gemma 3 270M).

    Ctrl-C stops the text where it is (exit code 130); twice, at once."""
    sampling = _sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed)
    llm = _open(model, backend, n_ctx, adapter, trace=True if trace or trace_json else None)
    stats: dict = {}
    with CtrlC() as ctrl_c:
        try:
            _echo_stream(llm, prompt, max_tokens, stop, stats, sampling, ctrl_c)
        except KeyboardInterrupt:  # pressed twice: stopped in the middle of a step
            pass
    click.echo()
    click.echo(_summary(stats, interrupted=ctrl_c.pressed), err=True)
    if llm.trace is not None:
        click.echo(llm.trace.report(), err=True)
        if trace_json:
            llm.trace.write_json(trace_json)
            click.echo(f"trace written to {trace_json} (Chrome trace event format)", err=True)
    if ctrl_c.pressed:
        sys.exit(EXIT_INTERRUPTED)


def _echo_stream(llm, prompt, max_tokens: int, stop, stats: dict, sampling: dict, ctrl_c: CtrlC) -> str:
    """Print the text as the model writes it and return it; after a Ctrl-C, stop after the piece in
    hand (the generation is closed between two steps)."""
    text = []
    try:
        with closing(llm.stream(prompt, max_tokens, stop=stop, stats=stats, **sampling)) as pieces:
            for piece in pieces:
                text.append(piece)
                click.echo(piece, nl=False)
                sys.stdout.flush()
                if ctrl_c.pressed:
                    break
    except ValueError as e:
        _fail(str(e))
    return "".join(text)


def _summary(stats: dict, interrupted: bool = False) -> str:
    if not stats:  # interrupted before the generation began
        return "interrupted before the first token"
    return (f"prompt {stats['prompt_tokens']} tokens, generated {stats['generated_tokens']} tokens | "
            f"ttft {stats['ttft_s'] * 1000:.0f} ms | prefill {stats['prefill_tokens_per_s']:.1f} tok/s | "
            f"decode {stats['decode_tokens_per_s']:.1f} tok/s | {stats['backend']}"
            + (" | interrupted (Ctrl-C)" if interrupted else ""))


@main.command()
@click.argument("model", required=False)
@click.option("--system", default=None, callback=_text_option, help="system message")
@sampling_options
def chat(model, system, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop, backend,
         adapter, n_ctx):
    """Interactive chat with the model's chat template (empty line or EOF ends).

    Ctrl-C ends the reply being written (the conversation goes on with it as far as it got); twice,
    or at the prompt, it ends the chat (exit code 130)."""
    sampling = _sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed)
    _check_chat_template(model)
    llm = _open(model, backend, n_ctx, adapter)
    llm.cache_prompt = True  # each turn computes only what the history does not already hold
    messages = [{"role": "system", "content": system}] if system else []
    if hasattr(sys.stdin, "reconfigure"):  # a line that is not UTF-8 reaches utf8_text, which names the byte
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            user = utf8_text(input("> "))
        except EOFError:
            break
        except ValueError as e:  # bytes that are not UTF-8: the conversation goes on without this line
            click.echo(f"error: this line was left out, it is {e}", err=True)
            continue
        if not user.strip():
            break
        messages.append({"role": "user", "content": user})
        stats: dict = {}
        try:
            ids = llm.chat_prompt(messages)
        except ValueError as e:
            _fail(str(e))
        with CtrlC() as ctrl_c:  # pressed twice: the KeyboardInterrupt ends the chat
            reply = _echo_stream(llm, ids, max_tokens, stop, stats, sampling, ctrl_c)
        click.echo()
        click.echo(_summary(stats, interrupted=ctrl_c.pressed), err=True)
        messages.append({"role": "assistant", "content": reply})


def _check_chat_template(model) -> None:
    """Before loading: fail when the model has no chat template at all; say when a built-in one is used."""
    from . import zoo
    from .chat import chat_template
    from .gguf_file import GGUFError, GGUFFile

    model = _model_arg(model)
    try:
        path = zoo.model_path(model or zoo.DEFAULT_MODEL, show_progress=True) \
            if model is None or model in zoo.KNOWN_MODELS else Path(model)
        _, source = chat_template(GGUFFile(path).metadata, source=path)
    except (GGUFError, ValueError, OSError) as e:
        _fail(str(e))
    click.echo(f"chat template: {source}", err=True)


@main.command()
@click.argument("model", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("-np", "--parallel", "n_slots", type=click.IntRange(min=1), default=1, show_default=True,
              help="slots: requests generated at once (they share --ctx-size); more wait in a queue")
@click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(min=2), default=None,
              help="context size shared by the slots (default: min(4096, model's))")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--adapter", default=None, help="GPU adapter index or name (default: best; env WGPU_LLM_ADAPTER)")
@click.option("--api-key", envvar="WGPU_LLM_API_KEY", default=None,
              help="require 'Authorization: Bearer KEY' (also env WGPU_LLM_API_KEY)")
@click.option("--alias", default=None, help="model name in /v1/models and responses (default: the file name)")
@cpu_weights_option
@kv_cache_option
@activations_option
def serve(model, host, port, n_slots, n_ctx, backend, adapter, api_key, alias):
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...)."""
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        _fail(f"serve needs the server packages: pip install 'wgpu-llm[server]' ({e})")
    from .server import Service, serve as run_server

    if n_ctx is not None and n_ctx < 2 * n_slots:
        raise click.BadParameter(f"{n_ctx} gives {n_slots} slots less than 2 positions each", param_hint="'--ctx-size'")
    meta = click.get_current_context().meta
    service = Service(_model_arg(model), backend, n_ctx, n_slots, adapter, api_key, alias,
                      CPU_WEIGHTS[meta["cpu_weights"]], meta["kv_cache"], meta["activations"])
    click.echo(f"wgpu-llm serve: loading the model; listening on http://{host}:{port} (/health answers 503 "
               f"until it is ready)", err=True)
    sys.exit(run_server(service, host, port))


@main.command()
@click.argument("model", required=False)
@click.option("--all-tensors/--summary", default=False, help="list every tensor (default: the first 40)")
def inspect(model, all_tensors):
    """Architecture, hyper-parameters, tokenizer and tensors of a GGUF file."""
    from .report import inspect_model

    try:
        inspect_model(_model_arg(model), all_tensors)
    except (ValueError, OSError) as e:
        _fail(str(e))


def _probe(info):
    """(runtime.Caps or None, {kernel: choice}) of a device opened on the adapter; {"error": ...} when
    it cannot be opened."""
    from .gpu import runtime, tune

    try:
        rt = runtime.Runtime(info.adapter)
    except (runtime.GpuError, RuntimeError) as e:
        return None, {"error": f"no device: {e}"}
    return rt.caps, tune.kernel_choices(rt.caps)


@main.command()
@click.option("--variants", "show_variants", is_flag=True,
              help="also list every kernel variant the backend can choose and the adapters that choose it")
def devices(show_variants):
    """Every GPU adapter wgpu sees, its limits and features, the kernels each would run, and which
    one `auto` picks."""
    from rich.console import Console
    from rich.table import Table

    try:
        from .gpu import device
    except ImportError as e:
        _fail(f"the gpu backend cannot be loaded: {e}")
    try:
        adapters = device.list_adapters()
        probes = [_probe(a) for a in adapters]
    except ValueError as e:  # a bad WGPU_LLM_* setting
        _fail(str(e))
    table = Table(title="GPU adapters (select one with --adapter or WGPU_LLM_ADAPTER=<index|name>)")
    for col in ("#", "name", "backend", "type", "max binding / buffer", "binding used", "subgroups", "f16",
                "timestamps"):
        table.add_column(col)
    mib = 1 << 20
    for a, (caps, _) in zip(adapters, probes):
        sizes = ""
        if a.subgroups:
            measured = f" {caps.subgroup_size}" if caps is not None and caps.subgroup_size else ""
            reported = f"{a.subgroup_sizes[0]}-{a.subgroup_sizes[1]}" if a.subgroup_sizes else ""
            sizes = measured + (f" ({reported})" if reported else "")
        table.add_row(str(a.index), a.name + (" (software)" if a.is_software else ""), a.backend, a.type,
                      f"{a.max_storage_binding // mib} / {a.max_buffer // mib} MiB",
                      f"{(caps.max_binding if caps is not None else a.binding_limit) // mib} MiB",
                      ("yes" + sizes) if a.subgroups else "no", "yes" if a.shader_f16 else "no",
                      "yes" if a.timestamp_query else "no")
    console = Console()
    console.print(table)
    console.print("subgroups: the size measured on a device of the adapter (wgpu's min-max in brackets); "
                  "binding used: min(max binding, max buffer), lowered by WGPU_LLM_MAX_BINDING_BYTES")
    for a, (_, choices) in zip(adapters, probes):
        console.print(f"[{a.index}] kernels: " + "; ".join(f"{k} {v}" for k, v in choices.items()))
    for mode, allow in (("auto", False), ("gpu", True)):
        try:
            _, why = device.choose_adapter(allow_software=allow)
            console.print(f"--backend {mode}: {why}")
        except device.GpuUnavailable as e:
            console.print(f"--backend {mode}: {'cpu (numpy): ' if mode == 'auto' else 'error: '}{e}")
    if show_variants:
        console.print(_variants_table())


def _variants_table():
    """Every kernel variant the choosers pick on some adapter (wgpu_llm.gpu.variants), for `devices --variants`."""
    from rich.table import Table

    from .gpu import variants

    registry = variants.chosen()
    table = Table(title=f"kernel variants chosen without tuning ({sum(map(len, registry.values()))}; "
                        f"tests/test_gpu_variants.py runs each)")
    for col in ("kernel", "variant", "chosen on"):
        table.add_column(col)
    for family, choices in registry.items():
        for key, choice in choices.items():
            table.add_row(family, key, "; ".join(choice.adapters))
    return table


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
              add_help_option=False)
@click.pass_context
def bench(ctx):
    """Prefill / decode speed next to llama.cpp and transformers (`wgpu-llm bench --help`)."""
    from .bench import main as bench_main

    sys.exit(bench_main(list(ctx.args)))


@main.command()
@click.argument("model", required=False)
@click.option("--adapter", default=None, help="GPU adapter index or name (default: what --backend gpu picks)")
@click.option("--tokens", "n_tokens", type=int, multiple=True,
              help="tune steps of this many tokens (repeatable; default: one-token decode steps and "
                   "128-token prefill steps)")
@click.option("--quick", is_flag=True, help="fewer candidates and rounds")
@click.option("--rounds", type=int, default=None, help="timed rounds per candidate (default 5, --quick 3)")
@click.option("--save/--no-save", default=True, show_default=True, help="write the winners to the tuning cache")
def tune(model, adapter, n_tokens, quick, rounds, save):
    """Time the linear-kernel variants for MODEL's weight shapes on a GPU adapter and cache the winners.

    The GPU backend then uses them on this adapter (WGPU_LLM_TUNE=0 ignores the cache)."""
    from rich.console import Console
    from rich.table import Table

    from . import zoo
    from .gguf_file import GGUFFile

    try:
        from .gpu import device
        from .gpu import tune as T
        from .gpu.runtime import Runtime
    except ImportError as e:
        _fail(f"the gpu backend cannot be loaded: {e}")
    try:
        model = _model_arg(model)
        if model is None or model in zoo.KNOWN_MODELS:
            path = zoo.model_path(model or zoo.DEFAULT_MODEL, show_progress=True)
        else:
            path = Path(model)
        gguf_file = GGUFFile(path)
        chosen, why = device.choose_adapter(allow_software=True, selector=adapter)
        rt = Runtime(chosen)
        cases = T.model_cases(gguf_file, tuple(sorted({1, *(n_tokens or (128,))})), rt.caps.max_binding)
    except (ValueError, RuntimeError, OSError) as e:
        _fail(str(e))
    console = Console()
    console.print(f"adapter: {why}\n{len(cases)} linear shapes of {path.name}; "
                  f"{'quick, ' if quick else ''}tuning cache: {T.cache_path(rt.info)}")
    results = []
    with console.status("") as status:
        def progress(case, key, r):
            status.update(f"{case.label}: round {r + 1}, {key}")

        for case, count in cases.items():
            try:
                results += T.tune(rt, {case: count}, quick=quick, rounds=rounds or (3 if quick else 5),
                                  progress=progress, save=save)
            except RuntimeError as e:
                _fail(str(e))
            res = results[-1]
            guess = T.heuristic(rt.caps, case).key
            table = Table(title=f"{case.label} ({count} per step; {res.timer} time per dispatch)", title_justify="left")
            for col, justify in (("variant", "left"), ("median us", "right"), ("min us", "right"),
                                 ("vs heuristic", "right"), ("", "left")):
                table.add_column(col, justify=justify)
            for key in res.ranking():
                notes = [n for n, hit in (("winner", key == res.winner), ("heuristic", key == guess),
                                          ("dropped after 2 rounds", key in res.dropped)) if hit]
                table.add_row(key, f"{res.median(key) * 1e6:.1f}", f"{min(res.samples[key]) * 1e6:.1f}",
                              f"{res.median(guess) / res.median(key):.2f}x", ", ".join(notes),
                              style="bold green" if key == res.winner else None)
            console.print(table)
    summary = Table(title="winners", title_justify="left")
    for col in ("shape", "per step", "heuristic", "winner", "gain"):
        summary.add_column(col)
    before = after = 0.0
    for res in results:
        c = res.case
        guess = T.heuristic(rt.caps, c).key
        before += res.count * res.median(guess) * (c.n_tokens == 1)
        after += res.count * res.median(res.winner) * (c.n_tokens == 1)
        summary.add_row(c.label, str(res.count), guess, res.winner, f"{res.median(guess) / res.median(res.winner):.2f}x")
    console.print(summary)
    if after:
        console.print(f"linear kernels of one decode step: {before * 1e3:.1f} ms with the heuristic choice, "
                      f"{after * 1e3:.1f} ms tuned")
    console.print(f"winners written to {T.cache_path(rt.info)}" if save else "not saved (--no-save)")


@main.command()
@click.argument("model", required=False)
@click.option("-p", "--prompt", default=None, help="prompt text (default: 'The capital of France is')")
@click.option("-n", "--decode-steps", type=click.IntRange(min=0), default=3, show_default=True,
              help="greedy decode steps after the prompt")
@click.option("--adapter", default=None, help="GPU adapter index or name (default: best; env WGPU_LLM_ADAPTER)")
@click.option("--ctx-size", "n_ctx", type=click.IntRange(min=1), default=None,
              help="context size (default: min(4096, model's))")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON (every op of every step)")
def verify(model, prompt, decode_steps, adapter, n_ctx, as_json):
    """Run a prompt on the GPU and on the numpy reference; print each op's divergence per layer and
    the first op above its tolerance. Exits 1 when any op is (paste the output into a bug report)."""
    from . import verify as V

    sys.exit(V.main(_model_arg(model), V.DEFAULT_PROMPT if prompt is None else prompt, decode_steps, n_ctx,
                    adapter, as_json))


if __name__ == "__main__":
    main()
