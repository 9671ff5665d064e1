"""`wgpu-llm serve`: an OpenAI-compatible HTTP server over an Engine (parallel slots, continuous batching).

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (both with
`stream` as server-sent events ending in `data: [DONE]`), POST /tokenize, POST /detokenize, GET /metrics
(Prometheus text). Errors are OpenAI error objects `{"error": {"message", "type", "code"}}`: 400 for bad
requests and prompts that do not fit a slot, 401 without the API key, 503 while the model loads.
A client that disconnects cancels its generation; its slot is free for the next request at once.
The model loads in a background thread, so /health answers 503 until it is ready.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from dataclasses import dataclass

from .api import LLM, ContextOverflow
from .engine import DoneEvent, Engine, TokenEvent
from .sampling import SamplingParams
from .text import TextStream


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ---- request parameters ----
@dataclass
class GenerationParams:
    max_tokens: int | None
    sampling: SamplingParams
    stop: list[str]
    ignore_eos: bool
    stream: bool
    include_usage: bool
    logprobs: int | None  # top logprobs per token, or None


_SAMPLING_KEYS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repeat_penalty": float,
                  "repeat_last_n": int, "seed": int}


def _typed(body: dict, key: str, kind, default):
    value = body.get(key, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is bool and not isinstance(value, bool) or kind is not bool and (isinstance(value, bool)
                                                                           or not isinstance(value, kind)):
        raise BadRequest(f"'{key}' must be {'a number' if kind is float else kind.__name__}, got {value!r}", key)
    return value


def generation_params(body: dict, chat: bool) -> GenerationParams:
    """Validate the OpenAI (and llama-server) generation parameters of a request body."""
    n = _typed(body, "n", int, 1)
    if n != 1:
        raise BadRequest(f"'n' = {n}: one choice per request is supported", "n")
    if not chat and _typed(body, "echo", bool, False):
        raise BadRequest("'echo' is not supported", "echo")
    max_tokens = _typed(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens", int,
                        None if chat else 16)
    if max_tokens is not None and max_tokens < 0:
        raise BadRequest(f"'max_tokens' = {max_tokens} must be >= 0", "max_tokens")
    values = {k: _typed(body, k, kind, None) for k, kind in _SAMPLING_KEYS.items()}
    values = {k: v for k, v in values.items() if v is not None}
    values.setdefault("temperature", 1.0)  # OpenAI's default
    values.setdefault("top_p", 1.0)
    values.setdefault("top_k", 0)
    values.setdefault("min_p", 0.0)
    try:
        sampling = SamplingParams(**values)
    except ValueError as e:
        raise BadRequest(str(e), getattr(e, "name", None)) from None
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    if chat:
        top = _typed(body, "top_logprobs", int, 0)
        logprobs = top if _typed(body, "logprobs", bool, False) else None
        if top and logprobs is None:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    else:
        logprobs = _typed(body, "logprobs", int, None)
        top = logprobs or 0
    if not 0 <= top <= 20:
        raise BadRequest(f"top logprobs {top} must be in 0..20", "top_logprobs" if chat else "logprobs")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return GenerationParams(max_tokens, sampling, stop, _typed(body, "ignore_eos", bool, False),
                            _typed(body, "stream", bool, False), bool(options.get("include_usage")), logprobs)


# ---- the application ----
class Service:
    """The model, its engine and the counters behind the HTTP endpoints."""

    def __init__(self, model, backend: str = "auto", n_ctx: int | None = None, n_slots: int = 1,
                 adapter: str | None = None, api_key: str | None = None, model_name: str | None = None):
        self.api_key = api_key
        self.model_name = model_name
        self.llm: LLM | None = None
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.created = int(time.time())
        self.requests_by_status: dict[str, int] = {}
        self._load_args = (model, backend, n_ctx, n_slots, adapter)

    def load(self) -> None:
        """Load the model and start the engine (run in a background thread)."""
        model, backend, n_ctx, n_slots, adapter = self._load_args
        try:
            llm = LLM(model, backend=backend, n_ctx=n_ctx, adapter=adapter)
            self.engine = Engine(llm, n_slots)
            self.model_name = self.model_name or llm.file.path.name
            self.llm = llm
        except Exception as e:  # reported by /health and on stderr; the server stays up
            self.load_error = f"{type(e).__name__}: {e}"
            raise

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def create_app(service: Service):
    """The Starlette application serving `service` (the model may still be loading)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    def error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
              param: str | None = None) -> JSONResponse:
        return JSONResponse(error_body(message, type_, code, param), status_code=status)

    def ready_or_error():
        if service.llm is not None:
            return None
        if service.load_error:
            return error(500, f"the model failed to load: {service.load_error}", "server_error", "load_failed")
        return error(503, "the model is loading", "unavailable_error", "loading")

    async def json_body(request: Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object", code="invalid_json")
        return body

    def endpoint(fn):
        """Auth, readiness and error mapping around a handler."""
        async def wrapped(request: Request):
            if service.api_key is not None and request.headers.get("authorization") != f"Bearer {service.api_key}":
                return error(401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error",
                             "invalid_api_key")
            not_ready = ready_or_error()
            if not_ready is not None:
                return not_ready
            try:
                return await fn(request)
            except BadRequest as e:
                return error(e.status, e.message, code=e.code, param=e.param)
            except ContextOverflow as e:
                return error(400, str(e), code="context_length_exceeded")
            except ValueError as e:  # bad token ids, templates that refuse the messages, ...
                return error(400, str(e))
        return wrapped

    async def health(request: Request):
        if service.llm is not None:
            return JSONResponse({"status": "ok"})
        if service.load_error:
            return JSONResponse({"status": "error", "error": service.load_error}, status_code=500)
        return JSONResponse({"status": "loading"}, status_code=503)

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": service.model_name, "object": "model",
                                                         "created": service.created, "owned_by": "wgpu-llm"}]})

    async def tokenize(request: Request):
        body = await json_body(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise BadRequest("'content' must be a string", "content")
        add_special = _typed(body, "add_special", bool, False)
        return JSONResponse({"tokens": service.llm.tokenize(content, add_special=add_special)})

    async def detokenize(request: Request):
        body = await json_body(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise BadRequest("'tokens' must be a list of integers", "tokens")
        return JSONResponse({"content": service.llm.detokenize(tokens)})

    async def completions(request: Request):
        body = await json_body(request)
        params = generation_params(body, chat=False)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            ids = service.llm.tokenize(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = prompt
        else:
            raise BadRequest("'prompt' must be a non-empty string or list of token ids (one prompt per request)",
                             "prompt")
        return await generate(request, ids, params, chat=False)

    async def chat_completions(request: Request):
        body = await json_body(request)
        params = generation_params(body, chat=True)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", "messages")
        return await generate(request, service.llm.chat_prompt(_plain_messages(messages)), params, chat=True)

    async def generate(request: Request, ids: list[int], params: GenerationParams, chat: bool):
        engine, llm = service.engine, service.llm
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        max_tokens = engine.slot_size if params.max_tokens is None else params.max_tokens
        job = engine.submit(ids, max_tokens, params.sampling, params.ignore_eos, params.logprobs,
                            on_event=lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, job))
        reply = _Reply(llm, params, chat, service.model_name, len(ids))
        if params.stream:
            async def sse():
                try:
                    for chunk in reply.opening():
                        yield _sse(chunk)
                    while True:
                        event = await events.get()
                        for chunk in reply.on_event(event):
                            yield _sse(chunk)
                        if reply.done:
                            break
                    yield "data: [DONE]\n\n"
                finally:
                    job.cancel()  # a no-op when it ended; otherwise the client went away mid-stream
                    watcher.cancel()
            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while not reply.done:
                reply.on_event(await events.get())
        finally:
            job.cancel()
            watcher.cancel()
        return JSONResponse(reply.whole())

    async def metrics(request: Request):
        return PlainTextResponse(_metrics_text(service), media_type="text/plain; version=0.0.4")

    routes = [Route("/health", health), Route("/v1/health", health),
              Route("/v1/models", endpoint(models)), Route("/models", endpoint(models)),
              Route("/tokenize", endpoint(tokenize), methods=["POST"]),
              Route("/detokenize", endpoint(detokenize), methods=["POST"]),
              Route("/v1/completions", endpoint(completions), methods=["POST"]),
              Route("/completions", endpoint(completions), methods=["POST"]),
              Route("/v1/chat/completions", endpoint(chat_completions), methods=["POST"]),
              Route("/chat/completions", endpoint(chat_completions), methods=["POST"]),
              Route("/metrics", endpoint(metrics))]

    async def not_found(request: Request, exc):
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code="not_found")

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


async def _cancel_on_disconnect(request, job) -> None:
    """Cancel job as soon as the client disconnects (the body was read: receive() waits for that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


def _plain_messages(messages: list) -> list[dict]:
    """OpenAI messages with string content (content parts of type "text" joined)."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'", "messages")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise BadRequest(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of text parts", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Reply:
    """Engine events -> OpenAI response objects (whole or as stream chunks) for one request."""

    def __init__(self, llm: LLM, params: GenerationParams, chat: bool, model: str, prompt_tokens: int):
        self.llm, self.params, self.chat, self.model = llm, params, chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.text = TextStream(llm.tokenizer, params.stop)
        self.pieces: list[str] = []
        self.logprobs: list[dict] = []  # per token: {"token", "logprob", "top": [(text, logprob)]}
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.finish_reason: str | None = None
        self.done = False

    def opening(self) -> list[dict]:
        return [self._chunk({"role": "assistant", "content": ""}, None)] if self.chat else []

    def on_event(self, event) -> list[dict]:
        """The stream chunks this event gives (also accumulates the whole response)."""
        if isinstance(event, BaseException):
            raise event
        if isinstance(event, TokenEvent):
            if self.text.stopped:
                return []
            self.completion_tokens += 1
            piece = self.text.add(event.token)
            lp = self._token_logprobs(event)
            if self.text.stopped:
                self.finish_reason = "stop"
                self.done = True
            if piece or lp is not None:
                self.pieces.append(piece)
                return [self._piece_chunk(piece, lp)] + (self._closing() if self.done else [])
            return self._closing() if self.done else []
        assert isinstance(event, DoneEvent)
        self.done = True
        self.finish_reason = {"cancelled": "stop"}.get(event.finish_reason, event.finish_reason)
        if self.finish_reason != "stop" or not self.text.stopped:
            tail = self.text.finish()
            if tail:
                self.pieces.append(tail)
                return [self._piece_chunk(tail, None)] + self._closing()
        return self._closing()

    def _token_logprobs(self, event: TokenEvent) -> dict | None:
        if self.params.logprobs is None or event.logprob is None:
            return None
        tok = self.llm.tokenizer
        entry = {"token": _token_text(tok, event.token), "logprob": event.logprob,
                 "bytes": list(tok.token_bytes(event.token)),
                 "top": [(_token_text(tok, t), lp, list(tok.token_bytes(t))) for t, lp in event.top_logprobs]}
        self.logprobs.append(entry)
        return entry

    def _logprobs_object(self, entries: list[dict]) -> dict | None:
        if self.params.logprobs is None:
            return None
        if self.chat:
            return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"],
                                 "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in e["top"]]}
                                for e in entries]}
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t: lp for t, lp, _ in e["top"]} for e in entries],
                "text_offset": []}

    def _usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def _chunk(self, delta_or_text, finish_reason, logprobs=None) -> dict:
        if self.chat:
            choice = {"index": 0, "delta": delta_or_text, "logprobs": logprobs, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta_or_text, "logprobs": logprobs, "finish_reason": finish_reason}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}

    def _piece_chunk(self, piece: str, lp: dict | None) -> dict:
        logprobs = self._logprobs_object([lp]) if lp is not None else None
        return self._chunk({"content": piece} if self.chat else piece, None, logprobs)

    def _closing(self) -> list[dict]:
        chunks = [self._chunk({} if self.chat else "", self.finish_reason)]
        if self.params.include_usage:
            chunks.append({**self._chunk({} if self.chat else "", None), "choices": [], "usage": self._usage()})
        return chunks

    def whole(self) -> dict:
        text = "".join(self.pieces)
        logprobs = self._logprobs_object(self.logprobs)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                      "finish_reason": self.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": self.finish_reason}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice],
                "usage": self._usage()}


def _token_text(tokenizer, token: int) -> str:
    return tokenizer.token_bytes(token).decode("utf-8", errors="replace")


def _metrics_text(service: Service) -> str:
    """The Prometheus exposition of the engine's counters and gauges."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    engine = service.engine

    class EngineCollector:
        def collect(self):
            m = engine.metrics
            yield CounterMetricFamily("wgpu_llm_requests", "Requests admitted to a slot", value=m["requests"])
            yield CounterMetricFamily("wgpu_llm_prompt_tokens", "Prompt tokens of admitted requests",
                                      value=m["prompt_tokens"])
            yield CounterMetricFamily("wgpu_llm_prompt_tokens_cached",
                                      "Prompt tokens reused from a slot's cache (not computed again)",
                                      value=m["cached_tokens"])
            yield CounterMetricFamily("wgpu_llm_generated_tokens", "Tokens generated", value=m["generated_tokens"])
            yield GaugeMetricFamily("wgpu_llm_queue_length", "Requests waiting for a free slot",
                                    value=engine.queue_length)
            yield GaugeMetricFamily("wgpu_llm_slots_busy", "Slots running a request", value=engine.busy_slots)
            yield GaugeMetricFamily("wgpu_llm_slots", "Slots (--parallel)", value=len(engine.slots))

    registry = CollectorRegistry()
    registry.register(EngineCollector())
    return generate_latest(registry).decode()


def serve(service: Service, host: str, port: int, log_level: str = "info") -> int:
    """Run the server until SIGINT/SIGTERM: then stop accepting, let the streams in flight end (up
    to 30 s), and return 0. The model loads meanwhile; when it fails to load, the server stops and
    this returns 1 (the message is on stderr)."""
    import sys

    import uvicorn

    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)

    def load() -> None:
        try:
            service.load()
        except Exception:  # noqa: BLE001 -- any failure ends the server with its message
            print(f"error: {service.load_error}", file=sys.stderr, flush=True)
            server.should_exit = True
        else:
            print(f"wgpu-llm serve: ready: {service.model_name} on {service.llm.backend.describe()}, "
                  f"{len(service.engine.slots)} slot(s) of {service.engine.slot_size} tokens", file=sys.stderr,
                  flush=True)

    threading.Thread(target=load, name="wgpu-llm load", daemon=True).start()
    # uvicorn re-raises the signal that stopped it once it has shut down; with these handlers in place
    # that ends nothing, and a stop asked for by SIGINT/SIGTERM exits 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    finally:
        service.close()
    return 1 if service.load_error else 0
