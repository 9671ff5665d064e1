"""The model cache: a cached file is used only while it still has its known sha256."""

import hashlib
import os

import pytest

from wgpu_llm import zoo


@pytest.fixture
def cached(tmp_path, monkeypatch):
    monkeypatch.setenv("WGPU_LLM_CACHE", str(tmp_path))
    data = b"GGUF" + bytes(range(256)) * 64
    model = zoo.KnownModel("tiny", "tiny.gguf", hashlib.sha256(data).hexdigest(), "a test file")
    monkeypatch.setitem(zoo.KNOWN_MODELS, "tiny", model)
    path = tmp_path / "tiny.gguf"
    path.write_bytes(data)
    return path


def test_intact_cached_file_is_used_and_verified_once(cached, monkeypatch):
    assert zoo.model_path("tiny") == cached
    assert (cached.parent / "tiny.gguf.verified").exists()
    hashed = []
    monkeypatch.setattr(zoo, "_sha256", lambda p: hashed.append(p))
    assert zoo.model_path("tiny") == cached and hashed == []  # the stamp matches: not hashed again


def test_damaged_cached_file_fails(cached):
    zoo.model_path("tiny")
    data = bytearray(cached.read_bytes())
    data[100] ^= 1  # same size; a new modification time voids the stamp
    cached.write_bytes(bytes(data))
    os.utime(cached, ns=(1, 1))
    with pytest.raises(ValueError, match="tiny.gguf: sha256 .* != expected .*damaged"):
        zoo.model_path("tiny")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model name 'nope'; known: gemma3-270m, smollm2-135m"):
        zoo.model_path("nope")
