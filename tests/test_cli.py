"""`wgpu-llm` on tiny random models: exit codes and messages of bad input (never a traceback),
options checked before any model is opened, --stop escapes, and the text equal to the library's."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tiny_models import write_tiny_model
from wgpu_llm import LLM, zoo
from wgpu_llm.cli import main, unescape

PROMPT = "the cat sat on the mat"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A fresh cache per test: no tokenizer built by another run (or by other code) is reused."""
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A llama model (gpt2 vocab, chat template) and a gemma3 one (no chat template)."""
    d = tmp_path_factory.mktemp("cli")
    return {arch: str(write_tiny_model(d / f"{arch}.gguf", arch, "F32", n_ctx=256)) for arch in ("llama", "gemma3")}


def cli(*args, input=None, expect=0):
    """Run the command line in-process; check the exit code and that nothing escaped as a traceback."""
    result = CliRunner().invoke(main, list(args), input=input)
    assert result.exit_code == expect, (result.exit_code, result.output, result.exception)
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def fail(*args, expect=1, input=None) -> str:
    """stderr of a run that must fail with `expect` and print nothing on stdout."""
    result = cli(*args, input=input, expect=expect)
    assert result.stdout == ""
    return result.stderr


# ---------------------------------------------------------------- the model argument
@pytest.mark.parametrize("command", [["run", "-p", "hi"], ["chat"], ["inspect"], ["tune"]])
def test_missing_file_or_unknown_name_lists_known_models(command, tmp_path):
    missing = str(tmp_path / "nope.gguf")
    for model in (missing, "llama-7b"):
        err = fail(command[0], model, *command[1:])
        assert err == (f"error: {model}: no such file, and not a known model name "
                       f"(known: {', '.join(zoo.KNOWN_MODELS)})\n")
        assert "gemma3-270m" in err and "smollm2-135m" in err


@pytest.mark.parametrize("command", [["run", "-p", "hi"], ["chat"], ["inspect"]])
def test_directory_and_malformed_file(command, tmp_path):
    err = fail(command[0], str(tmp_path), *command[1:])
    assert err == f"error: {tmp_path}: is a directory, not a GGUF file\n"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    err = fail(command[0], str(bad), *command[1:])
    assert err.startswith(f"error: {bad}: bad magic b'GGML'") and err.count("\n") == 1


def test_prompt_too_long_for_ctx_size(tiny):
    err = fail("run", tiny["llama"], "-p", PROMPT, "--ctx-size", "8", "--backend", "cpu")
    n = len(LLM(tiny["llama"], backend="cpu").tokenize(PROMPT))
    assert n >= 8
    assert f"error: the prompt has {n} tokens; the context holds 8" in err
    err = fail("run", tiny["llama"], "-p", PROMPT, "--ctx-size", "257", "--backend", "cpu")
    assert "error: n_ctx=257 must be in 1..256 (the model's training context)" in err


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    """The installed entry point, as a shell runs it."""
    missing = str(tmp_path / "nope.gguf")
    proc = subprocess.run([sys.executable, "-m", "wgpu_llm.cli", "run", missing, "-p", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {missing}: no such file") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "wgpu_llm.cli", "run", missing, "-p", "hi", "--top-p", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--top-p" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- options, checked before the model is opened
BAD_OPTIONS = [
    (["--top-p", "2"], "'--top-p': 2.0 must be in (0, 1]"),
    (["--top-p", "0"], "'--top-p': 0.0 must be in (0, 1]"),
    (["--temperature", "inf"], "'--temperature': inf must be a finite number >= 0"),
    (["--temperature", "nan"], "'--temperature': nan must be a finite number >= 0"),
    (["--temperature", "-0.5"], "'--temperature': -0.5 must be a finite number >= 0"),
    (["--top-k", "-1"], "'--top-k': -1 must be >= 0"),
    (["--min-p", "1.5"], "'--min-p': 1.5 must be in [0, 1)"),
    (["--min-p", "-0.1"], "'--min-p': -0.1 must be in [0, 1)"),
    (["--repeat-penalty", "0"], "'--repeat-penalty': 0.0 must be a finite number > 0"),
    (["--repeat-penalty", "inf"], "'--repeat-penalty': inf must be a finite number > 0"),
    (["--seed", "-3"], "'--seed': -3 must be >= 0"),
    (["-n", "-1"], "'-n' / '--max-tokens': -1 is not in the range x>=0"),
    (["--ctx-size", "0"], "'--ctx-size': 0 is not in the range x>=1"),
    (["--top-k", "1.5"], "'--top-k': '1.5' is not a valid integer"),
    (["--stop", "a\\q"], "'--stop': unknown escape \\q (position 1"),
]


@pytest.mark.parametrize("command", [["run", "-p", "hi"], ["chat"]])
@pytest.mark.parametrize("option, message", BAD_OPTIONS, ids=[" ".join(o) for o, _ in BAD_OPTIONS])
def test_bad_option_is_refused_before_the_model_is_opened(command, option, message, tmp_path):
    # the model does not exist: an error about the option proves the option was checked first
    err = fail(command[0], str(tmp_path / "nope.gguf"), *command[1:], *option, expect=2)
    assert f"Invalid value for {message}" in err, err
    assert "nope.gguf" not in err and "Usage:" in err


def test_good_extreme_options_are_accepted(tiny):
    for option in (["--top-p", "1"], ["--min-p", "0"], ["--top-k", "0"], ["--temperature", "0"], ["-n", "0"],
                   ["--seed", "0"], ["--ctx-size", "256"], ["--repeat-penalty", "1e-3"]):
        cli("run", tiny["llama"], "-p", "hi", "--backend", "cpu", "-n", "2", *option)


# ---------------------------------------------------------------- what a good run prints
def test_run_prints_the_librarys_text(tiny):
    sampling = dict(temperature=0.9, top_k=50, top_p=0.9, min_p=0.02, repeat_penalty=1.3, seed=5)
    for arch, path in tiny.items():
        want = LLM(path, backend="cpu").generate(PROMPT, 24, **sampling)
        result = cli("run", path, "-p", PROMPT, "-n", "24", "--backend", "cpu", "--temperature", "0.9",
                     "--top-k", "50", "--top-p", "0.9", "--min-p", "0.02", "--repeat-penalty", "1.3", "--seed", "5")
        assert len(want.tokens) > 5 and result.stdout == want.text + "\n", arch
        n_prompt = want.stats["prompt_tokens"]
        assert result.stderr.startswith("backend: cpu")
        assert f"prompt {n_prompt} tokens, generated {len(want.tokens)} tokens | ttft " in result.stderr
        assert result.stderr.rstrip().endswith("tok/s | cpu")
    # each option reaches the sampler: changing any one changes the text
    base = ["run", tiny["llama"], "-p", PROMPT, "-n", "24", "--backend", "cpu", "--seed", "5", "--top-k", "0",
            "--top-p", "1", "--min-p", "0", "--temperature", "2", "--repeat-penalty", "1.5"]
    texts = {cli(*base, *extra).stdout for extra in
             ([], ["--seed", "6"], ["--top-k", "3"], ["--top-p", "0.5"], ["--min-p", "0.3"], ["--temperature", "0.5"],
              ["--repeat-penalty", "1"], ["-n", "5"])}
    assert len(texts) == 8


def test_run_defaults_match_the_library(tiny):
    # defaults: 128 tokens, temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repeat penalty
    want = LLM(tiny["gemma3"], backend="cpu").generate(PROMPT, 128, temperature=0.8, top_k=40, top_p=0.95,
                                                         min_p=0.05, repeat_penalty=1.0, seed=11)
    result = cli("run", tiny["gemma3"], "-p", PROMPT, "--seed", "11", "--backend", "cpu")
    assert result.stdout == want.text + "\n"


def test_run_trace_json(tiny, tmp_path):
    out = tmp_path / "trace.json"
    result = cli("run", tiny["llama"], "-p", "hi", "-n", "3", "--temperature", "0", "--backend", "cpu",
                 "--trace-json", str(out))
    assert "trace: cpu" in result.stderr and f"trace written to {out}" in result.stderr
    assert json.loads(out.read_text())["traceEvents"]
    plain = cli("run", tiny["llama"], "-p", "hi", "-n", "3", "--temperature", "0", "--backend", "cpu")
    assert "trace" not in plain.stderr and plain.stdout == result.stdout
    assert "trace: cpu" in cli("run", tiny["llama"], "-p", "hi", "-n", "3", "--backend", "cpu", "--trace").stderr


def test_chat_uses_the_template_and_keeps_history(tiny):
    llm = LLM(tiny["llama"], backend="cpu")
    first = llm.chat([{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}], 12,
                     temperature=0)
    second = llm.chat([{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": first.text}, {"role": "user", "content": "more"}], 12,
                      temperature=0)
    result = cli("chat", tiny["llama"], "--system", "be terse", "-n", "12", "--temperature", "0", "--backend", "cpu",
                 input="hi\nmore\n\n")
    assert result.stdout == f"> {first.text}\n> {second.text}\n> "
    assert result.stderr.count("generated") == 2
    # EOF ends the chat as an empty line does
    assert cli("chat", tiny["llama"], "--backend", "cpu", "-n", "2", input="").stdout == "> "


def test_chat_with_a_builtin_template(tiny):
    """Gemma 3 files may carry no template: the family's built-in one is used, and said."""
    result = cli("chat", tiny["gemma3"], "--backend", "cpu", "-n", "4", "--temperature", "0", input="hi\n\n")
    assert "chat template: built-in 'gemma' (the file has none)" in result.stderr
    assert result.stdout.startswith("> ") and "generated 4 tokens" in result.stderr


def test_chat_without_any_template_fails_before_loading(tiny, monkeypatch):
    from wgpu_llm import chat

    monkeypatch.setattr(chat, "_BUILTIN_BY_ARCH", {})
    monkeypatch.setattr(chat, "_BUILTIN_BY_TOKEN", ())
    result = cli("chat", tiny["gemma3"], "--backend", "cpu", input="hi\n", expect=1)
    assert result.stdout == "" and "backend:" not in result.stderr  # no prompt shown, no model loaded
    assert "error: this model has no chat template" in result.stderr


def test_inspect(tiny):
    out = cli("inspect", tiny["gemma3"]).stdout
    assert "gemma3.gguf" in out and "architecture: gemma3" in out and "blk.1.ffn_down.weight" in out


def test_devices_without_adapters(monkeypatch):
    from wgpu_llm.gpu import device

    def none(allow_software, selector=None):
        raise device.GpuUnavailable("no adapter found")

    monkeypatch.setattr(device, "list_adapters", lambda: [])
    monkeypatch.setattr(device, "choose_adapter", none)
    out = cli("devices").stdout
    assert "--backend auto: cpu (numpy): no adapter found" in out
    assert "--backend gpu: error: no adapter found" in out
    assert "kernel variants" not in out
    # --variants lists what every kind of adapter would choose, whatever this machine has
    from wgpu_llm.gpu import variants

    out = CliRunner().invoke(main, ["devices", "--variants"], env={"COLUMNS": "300"}).stdout  # rows unwrapped
    registry = variants.chosen()
    assert f"kernel variants chosen without tuning ({sum(map(len, registry.values()))};" in out
    for family, choices in registry.items():
        for key, choice in choices.items():
            assert any(family in line and key in line and choice.adapters[0] in line for line in out.splitlines())


# ---------------------------------------------------------------- --stop and its escapes
def test_unescape():
    assert unescape("\\n\\n") == "\n\n"
    assert unescape("a\\tb\\rc") == "a\tb\rc"
    assert unescape("\\\\n") == "\\n"  # an escaped backslash, then a plain n
    assert unescape("\\'\\\"") == "'\""
    assert unescape("\\x41\\u00e9\\xC3\\xA9\\u263a") == "Aéé☺"  # \xNN is a byte, as in llama.cpp
    assert unescape("no escapes: ünï") == "no escapes: ünï"
    assert unescape("") == ""


@pytest.mark.parametrize("text, message", [
    ("\\q", "unknown escape \\q (position 0; known: \\n"),
    ("ab\\", "a lone \\ at the end (position 2;"),
    ("\\x4", "\\x at position 0 needs 2 hex digits, got '\\x4'"),
    ("\\xg1", "\\x at position 0 needs 2 hex digits, got '\\xg1'"),
    ("a\\u12x4", "\\u at position 1 needs 4 hex digits, got '\\u12x4'"),
    ("\\ud800", "\\ud800 at position 0 is a UTF-16 surrogate"),
    ("\\xe9", "the \\x escapes of '\\\\xe9' do not form UTF-8"),
])
def test_unescape_errors(text, message):
    with pytest.raises(ValueError) as err:
        unescape(text)
    assert message in str(err.value)


def test_stop_escape_stops_at_a_newline(tiny):
    base = ["run", tiny["llama"], "-p", PROMPT, "-n", "48", "--backend", "cpu", "--top-k", "0", "--top-p", "1",
            "--min-p", "0", "--temperature", "1.5"]
    seed = 72  # the first seed whose text has a newline after some other text (found by a search over 0..99)
    text = cli(*base, "--seed", str(seed)).stdout[:-1]
    assert "\n" in text[1:], "this tiny model's text has no newline: search another seed"
    stopped = cli(*base, "--seed", str(seed), "--stop", "\\n")
    assert stopped.stdout == text[:text.index("\n")] + "\n"
    # several stops: the first that occurs wins; a literal backslash-n never occurs in this text
    assert "\\n" not in text
    assert cli(*base, "--seed", str(seed), "--stop", "\\\\n").stdout == text + "\n"
    assert cli(*base, "--seed", str(seed), "--stop", "\\\\n", "--stop", "\\x0a").stdout == stopped.stdout


def test_summary_line():
    from wgpu_llm.cli import _summary

    stats = dict(prompt_tokens=7, generated_tokens=20, ttft_s=0.2504, prefill_tokens_per_s=123.45,
                 decode_tokens_per_s=9.96, backend="gpu")
    assert _summary(stats) == ("prompt 7 tokens, generated 20 tokens | ttft 250 ms | prefill 123.5 tok/s | "
                               "decode 10.0 tok/s | gpu")


def test_backend_and_adapter_reach_the_model(tiny):
    # an adapter that does not exist: an error with --backend gpu; auto says so and takes the CPU
    err = fail("run", tiny["llama"], "-p", "hi", "-n", "2", "--backend", "gpu", "--adapter", "no-such-adapter")
    assert err.startswith("error: ") and "no-such-adapter" in err
    result = cli("run", tiny["llama"], "-p", "hi", "-n", "2", "--adapter", "no-such-adapter")
    assert result.stderr.startswith("backend: cpu") and "no-such-adapter" in result.stderr


@pytest.mark.gpu
def test_devices_on_this_machine(adapter, tmp_path):
    """`devices` in a fresh process without XDG_RUNTIME_DIR (a headless machine): the measured
    subgroup size and the kernels each adapter would take, hardware ones under
    WGPU_LLM_FORCE_HARDWARE_KERNELS=1, and no Vulkan noise ("XDG_RUNTIME_DIR is invalid")."""
    import os
    import re

    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "WGPU_LLM_FORCE_HARDWARE_KERNELS")}
    env.update(COLUMNS="1000", WGPU_LLM_CACHE=str(tmp_path))  # no line wrapping

    def devices(**extra):
        done = subprocess.run([sys.executable, "-m", "wgpu_llm.cli", "devices"], capture_output=True, text=True,
                              env={**env, **extra}, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "XDG_RUNTIME_DIR" not in done.stdout + done.stderr
        return done.stdout

    out = devices()
    assert re.search(r"\[0\] kernels: mat-vec \(1 token\) \S+; mat-mat \(16 tokens\) tiles-", out), out
    subgroups = re.search(r"│ yes (\d+) \((\d+)-(\d+)\)", out)
    if subgroups:  # a measured size, within what a GPU may have
        assert 4 <= int(subgroups[1]) <= 128, out
    forced = devices(WGPU_LLM_FORCE_HARDWARE_KERNELS="1")
    assert "mat-vec (1 token) row-" not in forced and "flash attention (head 64) 16x32 wg64" in forced, forced
    small = devices(WGPU_LLM_MAX_BINDING_BYTES=str(16 << 20))
    assert "│ 16 MiB " in small, small
