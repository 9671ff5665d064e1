"""`wgpu-llm serve` as a user's application sees it: the official `openai` client against a live server
on 127.0.0.1 (a subprocess, started and stopped here), on a tiny random model and the real default."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from tiny_models import write_tiny_model

from wgpu_llm import LLM

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `wgpu-llm serve` subprocess; `.url`, `.client` (openai), `.http` (httpx)."""

    def __init__(self, model, *args, api_key: str | None = KEY, env=None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "wgpu_llm.cli", "serve", str(model), "--port", str(self.port), *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=120)
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key or "none", max_retries=0, timeout=120)
        self.statuses = self._wait_ready()

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def _wait_ready(self, timeout: float = 180) -> list[int]:
        """Poll /health until 200; returns the statuses seen (503 while loading)."""
        seen, end = [], time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{''.join(self.log)}")
            try:
                status = httpx.get(f"{self.url}/health", timeout=5).status_code
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status == 200:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout} s:\n{''.join(self.log)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("serve") / "tiny.gguf", "llama", n_ctx=512)


@pytest.fixture(scope="module")
def server(tiny):
    s = Server(tiny, "--parallel", "4", "--ctx-size", "512", "--backend", "cpu")
    yield s
    assert s.stop() == 0, "".join(s.log)
    assert "Traceback" not in "".join(s.log), "".join(s.log)


@pytest.fixture(scope="module")
def reference(tiny):
    """The library on its own (one sequence, no server): what every server answer must equal."""
    return LLM(str(tiny), backend="cpu", n_ctx=128)


PROMPTS = ["the cat", "hello there the", "a", "in the beginning was", "s t r", "he said", "on and on", "the the the"]


def test_health_models_and_auth(server, tiny):
    assert server.statuses[-1] == 200
    assert server.http.get("/health").json() == {"status": "ok"}
    (model,) = server.client.models.list().data
    assert model.id == tiny.name
    unauthorized = httpx.post(f"{server.url}/v1/completions", json={"prompt": "a"})
    assert unauthorized.status_code == 401 and unauthorized.json()["error"]["type"] == "authentication_error"
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="m", prompt="a", max_tokens=1)


def test_completion_equals_the_library(server, reference):
    for prompt in PROMPTS[:3]:
        want = reference.generate(prompt, 12, temperature=0, ignore_eos=True)
        got = server.client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0,
                                               extra_body={"ignore_eos": True})
        assert got.choices[0].text == want.text
        assert got.choices[0].finish_reason == "length"
        assert got.usage.completion_tokens == 12 and got.usage.prompt_tokens == len(reference.tokenize(prompt))


def test_streaming_and_whole_agree(server):
    kw = dict(model="m", prompt="in the beginning", max_tokens=16, temperature=0.9, seed=7,
              extra_body={"ignore_eos": True, "top_k": 20})
    whole = server.client.completions.create(**kw)
    chunks = list(server.client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    # the raw stream: SSE data lines ending with [DONE]
    with server.http.stream("POST", "/v1/completions", json={**kw, "stream": True, "ignore_eos": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_eight_concurrent_requests_on_four_slots_match_their_sequential_results(server, reference):
    want = [reference.generate(p, 20, temperature=0, ignore_eos=True).text for p in PROMPTS]
    results: dict[int, str] = {}

    def ask(i):
        r = server.client.completions.create(model="m", prompt=PROMPTS[i], max_tokens=20, temperature=0,
                                             extra_body={"ignore_eos": True})
        results[i] = r.choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results.get(i) for i in range(len(PROMPTS))] == want


def test_seeded_sampling_is_the_same_with_a_cached_prefix(server):
    kw = dict(model="m", max_tokens=16, temperature=1.0, seed=1234, extra_body={"ignore_eos": True, "top_k": 0})
    prompt = "the cat sat on the mat and then the cat"
    first = server.client.completions.create(prompt=prompt, **kw).choices[0].text
    again = server.client.completions.create(prompt=prompt, **kw).choices[0].text  # prefix now cached
    assert first == again
    metrics = server.http.get("/metrics").text
    cached = [float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("wgpu_llm_prompt_tokens_cached_total")]
    assert cached and cached[0] > 0


def test_chat_completion_with_logprobs(server, reference):
    messages = [{"role": "user", "content": "hello"}]
    r = server.client.chat.completions.create(model="m", messages=messages, max_tokens=6, temperature=0,
                                              logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    want = reference.generate(reference.chat_prompt(messages), 6, temperature=0, ignore_eos=True)
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:  # greedy: the chosen token is the most likely one
        assert len(entry.top_logprobs) == 3 and entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
        assert entry.logprob <= 0
    stream = list(server.client.chat.completions.create(model="m", messages=messages, max_tokens=6, temperature=0,
                                                        stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want.text


def test_stop_strings(server, reference):
    full = reference.generate("the cat", 20, temperature=0, ignore_eos=True).text
    stop = full[5:8]
    r = server.client.completions.create(model="m", prompt="the cat", max_tokens=20, temperature=0, stop=[stop],
                                         extra_body={"ignore_eos": True})
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_tokenize_detokenize(server, reference):
    tokens = server.http.post("/tokenize", json={"content": "hello there"}).json()["tokens"]
    assert tokens == reference.tokenize("hello there", add_special=False)
    assert server.http.post("/detokenize", json={"tokens": tokens}).json() == {"content": "hello there"}


@pytest.mark.parametrize("body, param", [
    ({"prompt": "a", "temperature": "hot"}, "temperature"),
    ({"prompt": "a", "top_p": 2}, "top_p"),
    ({"prompt": "a", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "a", "n": 2}, "n"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [10 ** 9]}, None),
    ({"prompt": "a", "stop": [1]}, "stop"),
])
def test_bad_requests_are_4xx_with_an_error_object(server, body, param):
    r = server.http.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_malformed_json_and_unknown_paths(server):
    r = server.http.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert server.http.post("/v1/chat/completions", json={"messages": "hi"}).status_code == 400
    assert server.http.get("/v1/nothing").status_code == 404
    assert server.http.get("/health").status_code == 200  # still up


def test_prompt_longer_than_a_slot_is_400(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client.completions.create(model="m", prompt=list(range(3, 200)), max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded" and "slot holds 128" in e.value.body["message"]


def _generated_total(server) -> float:
    metrics = server.http.get("/metrics").text
    return [float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("wgpu_llm_generated_tokens_total")][0]


def test_a_disconnected_client_frees_its_slot(tmp_path):
    """4 long streams are dropped after their first chunk: they stop generating, and the next 4
    requests get the slots. The slots are long (2000 tokens) because noticing a hang-up takes some
    tens of milliseconds, in which the tiny model generates tens of tokens."""
    model = write_tiny_model(tmp_path / "long.gguf", "llama", n_ctx=8192)
    server = Server(model, "--parallel", "4", "--ctx-size", "8192", "--backend", "cpu")
    try:
        before = _generated_total(server)
        long = {"model": "m", "prompt": "a", "max_tokens": 2000, "stream": True, "ignore_eos": True,
                "temperature": 0}
        for _ in range(4):
            with server.http.stream("POST", "/v1/completions", json=long) as r:
                next(r.iter_lines())  # the first chunk came; now hang up
        time.sleep(0.5)
        dropped = _generated_total(server) - before
        assert dropped < 4 * 2000 / 4, dropped  # 8000 if they had run to the end
        time.sleep(0.5)
        assert _generated_total(server) - before == dropped  # nothing runs on
        results = []
        threads = [threading.Thread(target=lambda: results.append(server.client.completions.create(
            model="m", prompt="a", max_tokens=4, temperature=0, extra_body={"ignore_eos": True})))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 4
        metrics = server.http.get("/metrics").text
        assert "wgpu_llm_slots_busy 0.0" in metrics and "wgpu_llm_queue_length 0.0" in metrics
    finally:
        assert server.stop() == 0, "".join(server.log)


def test_sigterm_ends_streams_cleanly_and_exits_0(tiny):
    s = Server(tiny, "--ctx-size", "256", "--backend", "cpu")
    with s.http.stream("POST", "/v1/completions", json={"model": "m", "prompt": "a", "max_tokens": 60, "stream": True,
                                                         "ignore_eos": True, "temperature": 0}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        s.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert s.proc.wait(60) == 0
    assert "Traceback" not in "".join(s.log)


def test_a_file_that_fails_to_load_stops_the_server(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    port = _free_port()
    proc = subprocess.run([sys.executable, "-m", "wgpu_llm.cli", "serve", str(bad), "--port", str(port)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and str(bad) in proc.stderr and "Traceback" not in proc.stderr


def _serves_what_the_library_gives(server_args: list[str], tiny, library: LLM) -> str:
    """Two greedy requests to a server started with server_args give the library's texts; the log."""
    s = Server(tiny, "--parallel", "2", "--ctx-size", "256", *server_args)
    try:
        for prompt in PROMPTS[:2]:
            got = s.client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0,
                                              extra_body={"ignore_eos": True})
            assert got.choices[0].text == library.generate(prompt, 12, temperature=0, ignore_eos=True).text
    finally:
        assert s.stop() == 0
    return "".join(s.log)


@pytest.mark.gpu
def test_one_request_on_the_gpu_matches_the_cpu(tiny, reference, adapter):
    _serves_what_the_library_gives(["--backend", "gpu"], tiny, reference)


def test_float16_weights_serve_what_the_library_gives(tiny):
    half = LLM(str(tiny), backend="cpu", n_ctx=128, weights_dtype="float16")
    log = _serves_what_the_library_gives(["--backend", "cpu", "--cpu-weights", "f16"], tiny, half)
    assert "on numpy (CPU, float16 weights)" in log, log


@pytest.mark.slow
def test_chat_with_the_default_model_uses_gemmas_builtin_template(gemma_path):
    s = Server(gemma_path, "--parallel", "2", "--ctx-size", "512", "--backend", "cpu", api_key=None)
    try:
        r = s.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say hello."}],
                                             max_tokens=8, temperature=0)
        assert r.choices[0].message.content.strip() and r.choices[0].finish_reason in ("stop", "length")
    finally:
        assert s.stop() == 0

