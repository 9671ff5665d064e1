"""OpenAI-shaped completions: request parameters checked as OpenAI (and llama-server) define them, and
an Engine's events turned into OpenAI response objects, whole or as stream chunks. Shared by the
HTTP server and `LLM.create_completion` / `LLM.create_chat_completion`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from .engine import DoneEvent, TokenEvent
from .sampling import SamplingParams
from .text import TextStream


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


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


def typed(body: dict, key: str, kind, default):
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
    n = typed(body, "n", int, 1)
    if n != 1:
        raise BadRequest(f"'n' = {n}: one choice per request is supported", "n")
    if not chat and typed(body, "echo", bool, False):
        raise BadRequest("'echo' is not supported", "echo")
    max_tokens = typed(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens", int,
                        None if chat else 16)
    if max_tokens is not None and max_tokens < 0:
        raise BadRequest(f"'max_tokens' = {max_tokens} must be >= 0", "max_tokens")
    values = {k: typed(body, k, kind, None) for k, kind in _SAMPLING_KEYS.items()}
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
        top = typed(body, "top_logprobs", int, 0)
        logprobs = top if typed(body, "logprobs", bool, False) else None
        if top and logprobs is None:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    else:
        logprobs = typed(body, "logprobs", int, None)
        top = logprobs or 0
    if not 0 <= top <= 20:
        raise BadRequest(f"top logprobs {top} must be in 0..20", "top_logprobs" if chat else "logprobs")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return GenerationParams(max_tokens, sampling, stop, typed(body, "ignore_eos", bool, False),
                            typed(body, "stream", bool, False), bool(options.get("include_usage")), logprobs)


def prompt_ids(llm, body: dict, chat: bool) -> list[int]:
    """The prompt's token ids: `messages` through the chat template, or `prompt` (a string or token
    ids; a list holding one of those is a batch of one)."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", "messages")
        return llm.chat_prompt(plain_messages(messages))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return llm.tokenize(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise BadRequest("'prompt' must be a non-empty string or list of token ids (one prompt per request)", "prompt")


class Job:
    """One checked library request (see prepare): run it whole or as stream chunks."""

    def __init__(self, params: GenerationParams, ids: list[int], chat: bool):
        self.params, self.ids, self.chat = params, ids, chat

    def chunks(self, llm) -> Iterator[dict]:
        """The response as stream chunks, from a one-slot Engine on llm for the call."""
        from .engine import Engine

        self.reply = Reply(llm.tokenizer, self.params, self.chat, llm.file.path.name, len(self.ids))
        yield from self.reply.opening()
        engine = Engine(llm, 1)
        try:
            p = self.params
            job = engine.submit(self.ids, engine.slot_size if p.max_tokens is None else p.max_tokens, p.sampling,
                                p.ignore_eos, p.logprobs)
            for event in job:
                yield from self.reply.on_event(event)
                if self.reply.done:
                    return
        finally:
            engine.close()

    def whole(self, llm) -> dict:
        for _ in self.chunks(llm):
            pass
        return self.reply.whole()


def prepare(llm, body: dict, chat: bool) -> Job:
    """Check an OpenAI-shaped request for llm itself (`LLM.create_completion`): BadRequest (a
    ValueError) naming what is wrong, before anything runs."""
    return Job(generation_params(body, chat), prompt_ids(llm, body, chat), chat)


def plain_messages(messages: list) -> list[dict]:
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


class Reply:
    """Engine events -> OpenAI response objects (whole or as stream chunks) for one request."""

    def __init__(self, tokenizer, params: GenerationParams, chat: bool, model: str, prompt_tokens: int):
        self.tokenizer, self.params, self.chat, self.model = tokenizer, params, chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.text = TextStream(tokenizer, params.stop)
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
        tok = self.tokenizer
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


