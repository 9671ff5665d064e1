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

from .api import LLM, ContextOverflow
from .completions import BadRequest, GenerationParams, Reply, error_body, generation_params, prompt_ids, typed
from .engine import Engine


class Service:
    """The model, its engine and the counters behind the HTTP endpoints."""

    def __init__(self, model, backend: str = "auto", n_ctx: int | None = None, n_slots: int = 1,
                 adapter: str | None = None, api_key: str | None = None, model_name: str | None = None,
                 weights_dtype: str = "float32", kv_cache: str = "auto", activations: str = "f32"):
        self.api_key = api_key
        self.model_name = model_name
        self.llm: LLM | None = None
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.created = int(time.time())
        self.metrics_registry = None  # made at the first /metrics scrape, once the engine runs
        self._load_args = (model, backend, n_ctx, n_slots, adapter, weights_dtype, kv_cache, activations)

    def load(self) -> None:
        """Load the model and start the engine (run in a background thread)."""
        model, backend, n_ctx, n_slots, adapter, weights_dtype, kv_cache, activations = self._load_args
        try:
            llm = LLM(model, backend=backend, n_ctx=n_ctx, adapter=adapter, weights_dtype=weights_dtype,
                      kv_cache=kv_cache, activations=activations)
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
        add_special = typed(body, "add_special", bool, False)
        return JSONResponse({"tokens": service.llm.tokenize(content, add_special=add_special)})

    async def detokenize(request: Request):
        body = await json_body(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise BadRequest("'tokens' must be a list of integers", "tokens")
        return JSONResponse({"content": service.llm.detokenize(tokens)})

    async def completions(request: Request):
        body = await json_body(request)
        return await generate(request, prompt_ids(service.llm, body, chat=False), generation_params(body, False), False)

    async def chat_completions(request: Request):
        body = await json_body(request)
        return await generate(request, prompt_ids(service.llm, body, chat=True), generation_params(body, True), True)

    async def generate(request: Request, ids: list[int], params: GenerationParams, chat: bool):
        engine, llm = service.engine, service.llm
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        max_tokens = engine.slot_size if params.max_tokens is None else params.max_tokens
        job = engine.submit(ids, max_tokens, params.sampling, params.ignore_eos, params.logprobs,
                            on_event=lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, job))
        reply = Reply(llm.tokenizer, params, chat, service.model_name, len(ids))
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


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _metrics_text(service: Service) -> str:
    """The Prometheus exposition of the engine's counters and gauges (one registry per Service)."""
    from prometheus_client import CollectorRegistry, generate_latest

    if service.metrics_registry is None:
        registry = CollectorRegistry()
        registry.register(_EngineCollector(service.engine))
        service.metrics_registry = registry
    return generate_latest(service.metrics_registry).decode()


class _EngineCollector:
    """Reads the engine's counters and gauges at each scrape."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        engine, m = self.engine, self.engine.metrics
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
