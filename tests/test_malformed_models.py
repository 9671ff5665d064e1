"""Regression tests for what fuzzing (tests/fuzz) found: every malformed model file is a GGUFError
naming the file and the field, at load, quickly, from the library and the command line."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

import gguf_layout as L  # noqa: E402
from gguf_layout import KV  # noqa: E402
from tiny_models import write_tiny_model  # noqa: E402
from wgpu_llm import LLM, GGUFError  # noqa: E402
from wgpu_llm.cli import main  # noqa: E402

P = "tokenizer.ggml."


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path / "cache"))


def rewrite(src: Path, dst: Path, change: dict[str, KV | None], tensors=None) -> Path:
    """src with some key/values replaced, added (KV) or removed (None); tensors(list) may edit the
    tensor infos in place. Everything else stays byte for byte."""
    buf = src.read_bytes()
    layout = L.parse(buf)
    kvs = [change.get(kv.key, kv) for kv in layout.kvs if change.get(kv.key, kv) is not None]
    kvs += [kv for key, kv in change.items() if kv is not None and all(k.key != key for k in layout.kvs)]
    infos = list(layout.tensors)
    if tensors is not None:
        tensors(infos)
    head = L.assemble(layout.version, [L.encode_kv(kv) for kv in kvs], [L.encode_tensor(t) for t in infos],
                      layout.alignment)
    dst.write_bytes(head + buf[layout.data_start:])
    return dst


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    return {arch: write_tiny_model(d / f"{arch}.gguf", arch, "F32")
            for arch in ("llama", "gemma3", "gpt2", "qwen2", "phi3")}


def refused(path: Path) -> str:
    """The message of the GGUFError that loading path raises, without the path; within a second."""
    t0 = time.process_time()
    with pytest.raises(GGUFError) as err:
        LLM(path, backend="cpu")
    assert time.process_time() - t0 < 1.0
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


def strings(key, values):
    return KV(key, L.ARRAY, values, L.STRING)


# ---------------------------------------------------------------- tokenizer metadata, at load, named
GPT2_CASES = [
    ({P + "bos_token_id": KV(P + "bos_token_id", 4, 10**6)},
     f"metadata '{P}bos_token_id' = 1000000: expected a token id in [0, 267)"),
    ({P + "eos_token_id": KV(P + "eos_token_id", 11, -1)}, f"metadata '{P}eos_token_id' = -1: expected a token id in "
                                                          f"[0, 267)"),
    ({P + "model": KV(P + "model", L.STRING, "bert")},
     f"metadata '{P}model' = 'bert': expected 'llama' (SentencePiece) or 'gpt2' (BPE)"),
    ({P + "model": None}, f"metadata '{P}model' is missing: expected 'llama' (SentencePiece) or 'gpt2' (BPE)"),
    ({P + "tokens": None}, f"metadata '{P}tokens' is missing: expected an array of strings"),
    ({P + "tokens": KV(P + "tokens", L.ARRAY, [], L.STRING)},
     f"metadata '{P}tokens' is empty: a vocabulary needs at least one token"),
    ({P + "tokens": KV(P + "tokens", 4, 267)}, f"metadata '{P}tokens' = 267: expected an array of strings"),
    ({P + "tokens": KV(P + "tokens", L.ARRAY, list(range(267)), 4)},
     f"metadata '{P}tokens' item #0 = 0: expected an array of strings"),
    ({P + "token_type": KV(P + "token_type", 5, 3)},  # a scalar where an array belongs (was a TypeError)
     f"metadata '{P}token_type' = 3: expected an array of integers (one per token, 267)"),
    ({P + "token_type": KV(P + "token_type", L.ARRAY, [1] * 266, 5)},
     f"metadata '{P}token_type' has 266 items: expected 267 (one per token of {P}tokens)"),
    ({P + "token_type": KV(P + "token_type", L.ARRAY, [1.0] * 267, 6)},
     f"metadata '{P}token_type' item #0 = 1.0: expected an array of integers (one per token, 267)"),
    ({P + "pre": strings(P + "pre", ["gpt2"])},  # an array where a string belongs (was a TypeError)
     f"metadata '{P}pre' = ['gpt2']: expected a string"),
    ({P + "merges": None}, f"metadata '{P}merges' is missing: a gpt2 vocab needs an array of 'left right' merges"),
    ({P + "merges": KV(P + "merges", L.STRING, "Ġ t")},
     f"metadata '{P}merges' = 'Ġ t': expected an array of strings"),
    ({P + "merges": strings(P + "merges", ["Ġ t", "ht"])},
     f"metadata '{P}merges' item #1 = 'ht': expected 'left right'"),
    # merges of texts the vocabulary lacks (was the tokenizers library's "Token `zz` out of vocabulary")
    ({P + "merges": strings(P + "merges", ["Ġ t", "zz qq"])},
     f"metadata '{P}merges' item #1 = 'zz qq': 'zz' is not a token of the vocabulary"),
    ({P + "merges": strings(P + "merges", ["h e", "e h"])},
     f"metadata '{P}merges' item #1 = 'e h': 'eh' is not a token of the vocabulary"),
    ({P + "add_bos_token": KV(P + "add_bos_token", L.STRING, "yes")},
     f"metadata '{P}add_bos_token' = 'yes': expected a bool"),
    ({"tokenizer.chat_template": KV("tokenizer.chat_template", 4, 1)}, None),  # only chat refuses it (below)
]


@pytest.mark.parametrize("change, message", GPT2_CASES)
def test_bad_gpt2_vocab_is_refused_at_load(change, message, seeds, tmp_path):
    path = rewrite(seeds["llama"], tmp_path / "m.gguf", change)
    if message is None:
        with pytest.raises(GGUFError) as err:
            LLM(path, backend="cpu").chat_prompt([{"role": "user", "content": "hi"}])
        assert str(err.value) == f"{path}: metadata 'tokenizer.chat_template' = 1: expected a string"
        return
    assert refused(path) == message


SPM_CASES = [
    ({P + "scores": None}, f"metadata '{P}scores' is missing: expected an array of numbers (one per token, 279)"),
    ({P + "scores": KV(P + "scores", 6, 0.5)}, f"metadata '{P}scores' = 0.5: expected an array of numbers (one per "
                                               f"token, 279)"),
    ({P + "unknown_token_id": KV(P + "unknown_token_id", L.STRING, "3")},
     f"metadata '{P}unknown_token_id' = '3': expected an integer"),
]


@pytest.mark.parametrize("change, message", SPM_CASES)
def test_bad_spm_vocab_is_refused_at_load(change, message, seeds, tmp_path):
    assert refused(rewrite(seeds["gemma3"], tmp_path / "m.gguf", change)) == message


def _gemma_tokens(seeds) -> list[str]:
    return next(kv.value for kv in L.parse(seeds["gemma3"].read_bytes()).kvs if kv.key == P + "tokens")


@pytest.mark.parametrize("text", ["<0xZZ>", "<0x1>", "<0x100>", "abc", "<0x+1>", "<0x 1>"])
def test_byte_token_that_is_not_a_byte_is_refused_at_load(text, seeds, tmp_path):
    """Was a bare `int()` error on the first generation of that token."""
    tokens = _gemma_tokens(seeds)
    tokens[4 + 0x41] = text  # the byte token of "A"
    path = rewrite(seeds["gemma3"], tmp_path / "m.gguf", {P + "tokens": strings(P + "tokens", tokens)})
    assert refused(path) == (f"metadata '{P}tokens' item #69 = {text!r} has token_type 6 (a byte) but is not of the "
                             f"form <0xNN>")


def test_one_very_long_spm_token_loads_quickly(seeds, tmp_path):
    """Splitting a 100000-character token at every position made building the merges quadratic
    (it never finished)."""
    tokens = _gemma_tokens(seeds)
    tokens[-3] = "a" * 100_000  # a normal piece, so that the token count still matches the embedding
    path = rewrite(seeds["gemma3"], tmp_path / "m.gguf", {P + "tokens": strings(P + "tokens", tokens)})
    t0 = time.process_time()
    llm = LLM(path, backend="cpu")
    assert time.process_time() - t0 < 2.0
    assert llm.tokenizer.token_bytes(len(tokens) - 3) == b"a" * 100_000
    assert llm.generate("the", max_tokens=2, temperature=0).tokens


def test_vocabulary_and_embedding_of_different_sizes(seeds, tmp_path):
    tokens = _gemma_tokens(seeds) + ["extra"]
    path = rewrite(seeds["gemma3"], tmp_path / "m.gguf", {
        P + "tokens": strings(P + "tokens", tokens),
        P + "scores": KV(P + "scores", L.ARRAY, [0.0] * len(tokens), 6),
        P + "token_type": KV(P + "token_type", L.ARRAY, [1] * len(tokens), 5)})
    assert refused(path) == f"metadata '{P}tokens' has 280 tokens, token_embd.weight has 279 rows"


# ---------------------------------------------------------------- block_count: checked before anything is built
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "qwen2", "phi3"])
@pytest.mark.parametrize("count", [3, 10**6, 2**63 - 1])
def test_block_count_beyond_the_files_blocks(arch, count, seeds, tmp_path):
    """Was tens of seconds and gigabytes of expected-tensor lists before any tensor was checked."""
    key = f"{arch}.block_count"
    path = rewrite(seeds[arch], tmp_path / "m.gguf", {key: KV(key, 10, count)})
    assert refused(path) == f"metadata '{key}' = {count}: the file has tensors of 2 blocks (blk.N.*)"


def test_far_away_block_index_is_an_unused_tensor(seeds, tmp_path):
    """Block indices that do not follow one another count as blocks, but not as a larger count."""
    def add(infos):
        infos.append(L.TensorEntry("blk.1000000.attn_norm.weight", infos[1].dims, infos[1].type_id, infos[1].offset))

    path = rewrite(seeds["llama"], tmp_path / "m.gguf", {}, tensors=add)
    assert refused(path).startswith("tensor 'blk.1000000.attn_norm.weight' is not used by the 'llama' graph")
    key = "llama.block_count"
    path = rewrite(seeds["llama"], tmp_path / "n.gguf", {key: KV(key, 4, 1000001)}, tensors=add)
    assert refused(path) == f"metadata '{key}' = 1000001: the file has tensors of 3 blocks (blk.N.*)"


# ---------------------------------------------------------------- damaged tensor data
def _nan_weights(seeds, tmp_path) -> Path:
    """The llama seed with its output norm's weights all NaN."""
    buf = bytearray(seeds["llama"].read_bytes())
    layout = L.parse(bytes(buf))
    norm = next(t for t in layout.tensors if t.name == "output_norm.weight")
    start = layout.data_start + norm.offset
    buf[start:start + 4 * norm.dims[0]] = np.full(norm.dims[0], np.nan, np.float32).tobytes()
    path = tmp_path / "nan.gguf"
    path.write_bytes(bytes(buf))
    return path


def test_non_finite_logits_name_the_file(seeds, tmp_path):
    """Was numpy's "zero-size array to reduction operation maximum" from the sampler."""
    path = _nan_weights(seeds, tmp_path)
    llm = LLM(path, backend="cpu")
    for sampling in (dict(temperature=0.8, seed=0), dict(temperature=0), dict(temperature=0.8, top_k=0, seed=0)):
        with pytest.raises(GGUFError) as err:
            llm.generate("the cat", max_tokens=2, **sampling)
        assert str(err.value) == (f"{path}: the model's logits are not finite (267 NaN and 0 infinite of 267): its "
                                  f"tensor data may be damaged")


# ---------------------------------------------------------------- the command line: one line, no traceback
def test_cli_names_the_file_in_one_line(seeds, tmp_path):
    bad_vocab = rewrite(seeds["llama"], tmp_path / "m.gguf", {P + "token_type": KV(P + "token_type", 5, 3)})
    nan = _nan_weights(seeds, tmp_path)
    for args, path, message in [
        (["run", str(bad_vocab), "-p", "hi"], bad_vocab, GPT2_CASES[8][1]),
        (["chat", str(bad_vocab)], bad_vocab, GPT2_CASES[8][1]),
        (["run", str(nan), "-p", "hi", "--backend", "cpu", "--seed", "1"], nan,
         "the model's logits are not finite (267 NaN and 0 infinite of 267): its tensor data may be damaged"),
    ]:
        result = CliRunner().invoke(main, args, input="hi\n\n")
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        # (the lines of a good start: the backend chosen, and chat's template)
        lines = [line for line in result.stderr.splitlines() if not line.startswith(("backend: ", "chat template: "))]
        assert lines == [f"error: {path}: {message}"]


def test_cli_subprocess_has_no_traceback(seeds, tmp_path):
    bad = rewrite(seeds["llama"], tmp_path / "m.gguf", {P + "pre": strings(P + "pre", ["gpt2"])})
    proc = subprocess.run([sys.executable, "-m", "wgpu_llm.cli", "run", str(bad), "-p", "hi"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"error: {bad}: metadata '{P}pre' = ['gpt2']: expected a string\n"


def test_inspect_shows_a_malformed_vocabulary(seeds, tmp_path):
    """inspect reports what the file holds: a scalar vocabulary (was len() of an int) and names
    that rich would read as markup (was a MarkupError)."""
    def rename(infos):
        infos[1] = L.TensorEntry("[/]", infos[1].dims, infos[1].type_id, infos[1].offset)

    path = rewrite(seeds["llama"], tmp_path / "m.gguf", {P + "tokens": KV(P + "tokens", 4, 267),
                                                         "general.name": KV("general.name", L.STRING, "[bold]x[/i]")},
                   tensors=rename)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "not an array: 267 / 8" in result.stdout and "[bold]x[/i]" in result.stdout and "[/]" in result.stdout

