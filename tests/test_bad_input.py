"""Bad input to the library and the command line: text that is not valid Unicode (or not UTF-8),
unknown keyword arguments, arguments of the wrong type or value. Each is a ValueError or a
TypeError naming the argument, the value and what is valid -- raised before any model is loaded
where the argument does not depend on the model."""

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiny_models import write_tiny_model
from wgpu_llm import LLM, zoo
from wgpu_llm.cli import main, utf8_text

ROOT = Path(__file__).resolve().parents[1]
VALID = ("max_tokens, stop, ignore_eos, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed")


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return LLM(write_tiny_model(tmp_path_factory.mktemp("bad") / "llama.gguf", "llama", "F32"), backend="cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- text that is not valid Unicode
SURROGATE = "not valid Unicode: a lone surrogate U+{:04X} at position {}"


@pytest.mark.parametrize("text, code, at", [("\ud800", 0xD800, 0), ("ab\udcff\udcfe", 0xDCFF, 2),
                                            ("x\udfff", 0xDFFF, 1)])
def test_lone_surrogates_are_a_value_error(llm, text, code, at):
    where = SURROGATE.format(code, at)
    for call, what in ((lambda: llm.generate(text, 2), "prompt"), (lambda: "".join(llm.stream(text, 2)), "prompt"),
                       (lambda: llm.tokenize(text), "text"),
                       (lambda: llm.generate("hi", 2, stop=["a", text]), "stop[1]"),
                       (lambda: llm.chat([{"role": "user", "content": text}]), "message #0 'content'"),
                       (lambda: llm.chat_prompt([{"role": text, "content": "hi"}]), "message #0 'role'")):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value).startswith(f"{what} is {where} (bytes that are not UTF-8"), str(err.value)
    assert llm.generate("a\U0001d11eb", 2).stats["prompt_tokens"] > 0  # a real pair of surrogates is one character


def test_cli_prompt_that_is_not_utf8_is_a_usage_error(tiny_path):
    # argv bytes that do not decode reach Python as lone surrogates (surrogateescape)
    for option in (["-p", "ab\udcff\udcfe"], ["-p", "hi", "--stop", "\udcc3"]):
        result = CliRunner().invoke(main, ["run", str(tiny_path), *option])
        assert result.exit_code == 2 and result.stdout == ""
        assert "not UTF-8: byte 0x" in result.stderr and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["run", str(tiny_path), "-p", "ab\udcff\udcfe"])
    assert "Invalid value for '-p' / '--prompt': not UTF-8: byte 0xff at byte 2 (invalid start byte)" in result.stderr
    result = CliRunner().invoke(main, ["chat", str(tiny_path), "--system", "\udce9t\udce9"])
    assert result.exit_code == 2 and "Invalid value for '--system': not UTF-8: byte 0xe9 at byte 0" in result.stderr


def test_subprocess_invalid_utf8_argv(tiny_path):
    """`wgpu-llm run -p $'\\xff\\xfe'`, as a shell passes it: a usage error before the model is opened."""
    argv = [sys.executable.encode(), b"-m", b"wgpu_llm.cli", b"run", b"missing.gguf", b"-p", b"\xff\xfe"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and proc.stdout == b"" and "Traceback" not in err
    assert "Invalid value for '-p' / '--prompt': not UTF-8: byte 0xff at byte 0 (invalid start byte)" in err
    assert "missing.gguf" not in err  # the option was refused first


def test_utf8_text():
    assert utf8_text("é☺ plain") == "é☺ plain"
    # bytes that form UTF-8 together are decoded (a locale that is not UTF-8 split them)
    assert utf8_text("\udcc3\udca9") == "é"
    with pytest.raises(ValueError, match=r"^not UTF-8: byte 0xc3 at byte 1 \(unexpected end of data\)"):
        utf8_text("a\udcc3")
    with pytest.raises(ValueError, match="the text is not valid Unicode: a lone surrogate U\\+D800 at position 0"):
        utf8_text("\ud800")  # stands for no byte


def test_chat_line_that_is_not_utf8_is_left_out(tiny_path):
    llm = LLM(tiny_path, backend="cpu")
    want = llm.chat([{"role": "user", "content": "hi"}], 4, temperature=0).text
    result = CliRunner().invoke(main, ["chat", str(tiny_path), "-n", "4", "--temperature", "0", "--backend", "cpu"],
                                input=b"\xff\xfe\nhi\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"> > {want}\n> "
    assert "error: this line was left out, it is not UTF-8: byte 0xff at byte 0 (invalid start byte)" in result.stderr


# ---------------------------------------------------------------- keyword arguments
def test_unknown_keyword_names_it_and_lists_the_valid_ones(llm):
    cases = [(lambda: llm.generate("hi", temprature=0.5), "LLM.generate()",
              "'temprature' (did you mean 'temperature'?)"),
             (lambda: llm.chat([], topk=3), "LLM.chat()", "'topk' (did you mean 'top_k'?)"),
             (lambda: next(llm.stream("hi", colour=1)), "LLM.stream()", "'colour'"),
             (lambda: llm.generate("hi", stats={}), "LLM.generate()", "'stats'")]
    for call, name, what in cases:
        with pytest.raises(TypeError) as err:
            call()
        valid = VALID.replace("max_tokens, stop, ", "max_tokens, stop, stats, ") if "stream" in name else VALID
        assert str(err.value) == f"{name} got an unexpected keyword argument {what}; valid: {valid}"
        assert "SamplingParams" not in str(err.value)


def test_arguments_of_the_wrong_type(llm):
    cases = [(lambda: llm.generate(b"hi"), "prompt must be a str or a list of token ids, got bytes"),
             (lambda: llm.generate(None), "prompt must be a str or a list of token ids, got NoneType"),
             (lambda: llm.generate([1, "2"]), "prompt[1] must be an int token id, got str '2'"),
             (lambda: llm.generate([1, 2.0]), "prompt[1] must be an int token id, got float 2.0"),
             (lambda: llm.generate("hi", 2.5), "max_tokens must be an int, got float 2.5"),
             (lambda: llm.generate("hi", stop=[1]), "stop[0] must be a str, got int 1"),
             (lambda: llm.generate("hi", stop=3), "stop must be a list of strings, a string or None, got int 3"),
             (lambda: llm.generate("hi", ignore_eos=1), "ignore_eos must be True or False, got int 1"),
             (lambda: "".join(llm.stream("hi", stats=[])), "stats must be a dict to fill or None, got list"),
             (lambda: llm.generate("hi", top_k="5"), "sampling parameter top_k='5' must be an int, got str"),
             (lambda: llm.generate("hi", top_k=2.0), "sampling parameter top_k=2.0 must be an int, got float"),
             (lambda: llm.generate("hi", temperature=None),
              "sampling parameter temperature=None must be a number, got NoneType"),
             (lambda: llm.generate("hi", temperature=True),
              "sampling parameter temperature=True must be a number, got bool"),
             (lambda: llm.generate("hi", seed="1"), "sampling parameter seed='1' must be an int, got str"),
             (lambda: llm.tokenize(None), "text must be a str, got NoneType"),
             (lambda: llm.logits("abc"), "ids must be a str or a list of token ids, got str"),
             (lambda: llm.detokenize([1, None]), "ids[1] must be an int token id, got NoneType None")]
    for call, message in cases:
        with pytest.raises(TypeError) as err:
            call()
        assert str(err.value) == message


def test_good_argument_types_are_accepted(llm):
    import numpy as np

    ids = llm.tokenize("the cat")
    want = llm.generate(ids, 3, temperature=0)
    assert llm.generate(np.array(ids, np.int32), np.int64(3), temperature=0).tokens == want.tokens
    assert llm.generate(tuple(ids), 3, temperature=0, top_k=np.int32(40), seed=np.uint8(1)).tokens == want.tokens
    # a single stop string is one stop string
    full = llm.generate("the cat", 12, temperature=0, ignore_eos=True).text
    stop = full[3:5]
    assert llm.generate("the cat", 12, temperature=0, ignore_eos=True, stop=stop).text == full[:full.index(stop)]
    assert llm.generate("the cat", 3, temperature=0, seed=None, stop=None).tokens == want.tokens[:3]


# ---------------------------------------------------------------- LLM(...): checked before loading
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n_batch=0), ValueError, "n_batch=0 must be >= 1"),
    (dict(n_ctx=0), ValueError, "n_ctx=0 must be >= 1"),
    (dict(n_ctx=1.5), TypeError, "n_ctx must be an int, got float 1.5"),
    (dict(n_batch="8"), TypeError, "n_batch must be an int, got str '8'"),
    (dict(backend="tpu"), ValueError, "backend 'tpu' is not one of auto, gpu, cpu"),
    (dict(adapter=1.5), TypeError, "adapter must be an adapter index, a name or None, got float 1.5"),
    (dict(trace="yes"), TypeError, "trace must be True, False or None, got str 'yes'"),
    (dict(model=b"x.gguf"), TypeError, "model must be a path, a known model name or None, got bytes b'x.gguf'"),
])
def test_open_arguments_are_checked_before_loading(kwargs, error, message, monkeypatch, tmp_path):
    def no_loading(*args, **kw):
        raise AssertionError("the model was opened before the arguments were checked")

    monkeypatch.setattr(zoo, "model_path", no_loading)  # (no model is materialised, not even the default)
    monkeypatch.setattr("wgpu_llm.api.GGUFFile", no_loading)
    kwargs = {"model": str(tmp_path / "missing.gguf"), **kwargs}
    with pytest.raises(error) as err:
        LLM(**kwargs)
    assert str(err.value) == message


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("bad-cli") / "llama.gguf", "llama", "F32")
