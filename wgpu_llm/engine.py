"""Many sequences on one loaded model: slots of a shared KV cache and continuous batching.

The `LLM` holds what every request shares: the weights on the backend, the compiled steps and the
tokenizer. An `Engine` splits the LLM's context into `n_slots` slots of n_ctx // n_slots positions
each (cache rows slot * size .. ); a request owns a slot, and with it its KV cache, its position and
its sampler, from admission until it ends. One scheduler thread runs the backend; each iteration

1. drops cancelled requests (their slot is free at once) and admits waiting ones into free slots,
   each into the free slot whose cached tokens share the longest prefix with its prompt: that
   prefix is not computed again (llama.cpp's `cache_prompt`);
2. prefills one chunk (at most n_batch tokens) of one admitted prompt, so that a long prompt does
   not stall the others' decoding;
3. runs one decode step for every request that is generating, as one step of one row per sequence
   (a batched step, up to the backend's max_batch_rows), so each weight is read once for all.

A GPU failure (wgpu_llm.GpuError) on an LLM opened with backend="auto" moves the LLM to the CPU
(see `LLM`); the running requests are then computed again there from their prompt and the tokens
they generated so far, and go on with the tokens a CPU-only run gives. Any other backend failure
fails the running requests.

Requests come from any thread (`submit`) and their tokens come back through a queue per request.
Sampling is the same `Sampler` as `LLM.generate`'s, one per request (its own seed), fed the logits
of that request's row only, so a request's tokens do not depend on what else is running.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .api import LLM, ContextOverflow
from .backends import GpuError
from .graph import Span
from .sampling import NonFiniteLogits, Sampler, SamplingParams


@dataclass
class TokenEvent:
    token: int
    logprob: float | None = None  # log-softmax of the model's logits (before sampling filters)
    top_logprobs: list[tuple[int, float]] | None = None  # the n most likely (id, logprob), most likely first


@dataclass
class DoneEvent:
    finish_reason: str  # "stop" (end-of-generation token), "length" (max_tokens or the slot is full),
    # "cancelled"
    stats: dict


@dataclass
class _Slot:
    index: int
    base: int  # first cache row
    size: int  # positions
    tokens: list[int] = field(default_factory=list)  # tokens whose K/V are cached at positions 0..


class Request:
    """One generation: submitted to an Engine, iterated for TokenEvents, ended by one DoneEvent."""

    def __init__(self, prompt: list[int], max_tokens: int, sampling: SamplingParams, stop_ids: frozenset[int],
                 logprobs: int | None, on_event=None):
        self.prompt, self.max_tokens, self.stop_ids, self.logprobs = prompt, max_tokens, stop_ids, logprobs
        self.sampler = Sampler(sampling)
        self.events: queue.Queue = queue.Queue()
        self._on_event = on_event
        self._cancel = threading.Event()
        self.slot: _Slot | None = None
        self.fed = 0  # tokens of `history` whose K/V are in the slot (while prefilling)
        self.next_token: int | None = None  # sampled, not yet fed
        self.generated: list[int] = []
        # prompt + generated: what the repetition penalty looks back on, and what a prefill computes
        # (the prompt; after a GPU failure also the tokens generated so far)
        self.history = list(prompt)
        self.stats = {"prompt_tokens": len(prompt), "cached_tokens": 0, "generated_tokens": 0,
                      "t_submit": time.perf_counter()}

    def _emit(self, event) -> None:
        """Hand an event to the consumer (called by the scheduler thread)."""
        if self._on_event is not None:
            self._on_event(event)
        else:
            self.events.put(event)

    def cancel(self) -> None:
        """Stop generating (from any thread): the slot is freed at the scheduler's next iteration."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self):
        """TokenEvents as they come, then the DoneEvent (raises what failed the request); for a
        request submitted without on_event."""
        while True:
            event = self.events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, DoneEvent):
                return


class Engine:
    """Serve many requests at once on one LLM (see the module docstring). The engine owns the LLM's
    backend from now on: do not call the LLM's own generate/logits while an engine runs on it."""

    def __init__(self, llm: LLM, n_slots: int = 1):
        if not 1 <= n_slots <= llm.n_ctx // 2:
            raise ValueError(f"n_slots={n_slots}: the context of {llm.n_ctx} tokens gives each of up to "
                             f"{llm.n_ctx // 2} slots at least 2 positions")
        self.llm = llm
        size = llm.n_ctx // n_slots
        self.slots = [_Slot(i, i * size, size) for i in range(n_slots)]
        self.slot_size = size
        self._free = list(self.slots)
        self._waiting: deque[Request] = deque()
        self._active: list[Request] = []
        self._wake = threading.Condition()
        self._closed = False
        self.metrics = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "generated_tokens": 0}
        if n_slots == 1:  # the one slot is laid out as the LLM's own cache: take over what it holds
            self.slots[0].tokens = list(llm._cached)
        llm.forget_cache()  # the LLM's own cached prompt lives in slot 0's rows, which are the engine's now
        self._thread = threading.Thread(target=self._run, name="wgpu-llm engine", daemon=True)
        self._thread.start()

    # ---- from any thread ----
    def submit(self, prompt: list[int], max_tokens: int, sampling: SamplingParams | None = None,
               ignore_eos: bool = False, logprobs: int | None = None, on_event=None) -> Request:
        """Queue a generation of up to max_tokens tokens after prompt (token ids). ContextOverflow
        when the prompt leaves no room in a slot; max_tokens is capped by the slot's room.
        logprobs: None, or how many of the most likely tokens to report with each token.
        on_event(event): called from the scheduler thread with each TokenEvent, the DoneEvent or
        the exception that failed the request (must not block); default: the request's queue."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        self.llm._check_ids(prompt)
        if len(prompt) >= self.slot_size:
            raise ContextOverflow(f"the prompt has {len(prompt)} tokens; a slot holds {self.slot_size} "
                                  f"(context {self.llm.n_ctx} / {len(self.slots)} slots) and needs room for "
                                  f"at least one generated token")
        if max_tokens < 0:
            raise ValueError(f"max_tokens={max_tokens} must be >= 0")
        stop_ids = frozenset() if ignore_eos else frozenset(self.llm.tokenizer.eog_ids)
        request = Request(list(prompt), min(max_tokens, self.slot_size - len(prompt)), sampling or SamplingParams(),
                          stop_ids, logprobs, on_event)
        with self._wake:
            self._waiting.append(request)
            self._wake.notify()
        return request

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def busy_slots(self) -> int:
        return len(self.slots) - len(self._free)

    def close(self) -> None:
        """Stop the scheduler; requests still waiting or running end with finish_reason "cancelled"."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        if len(self.slots) == 1:  # hand the cache back (see __init__)
            self.llm._cached = list(self.slots[0].tokens)

    # ---- the scheduler thread ----
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._active:
                    self._wake.wait()
                if self._closed:
                    break
            try:
                self._iteration()
            except GpuError as e:
                if not self._continue_on_cpu(e):
                    self._fail_active(e)
            except Exception as e:  # a backend failure: every running request gets it, the engine goes on
                self._fail_active(e)
        for r in [*self._active, *self._waiting]:
            self._finish(r, "cancelled")

    def _fail_active(self, e: Exception) -> None:
        for r in list(self._active):  # _release removes r from the list
            self._release(r)
            r._emit(e)
        self._active = []

    def _continue_on_cpu(self, error: GpuError) -> bool:
        """Move the LLM to the CPU (False where it may not) and have every running request
        prefilled again from its history: the new backend's cache is empty."""
        try:
            self.llm._continue_on_cpu(error)
        except GpuError:
            return False
        for slot in self.slots:
            slot.tokens = []
        for r in self._active:
            r.fed, r.next_token = 0, None
        return True

    def _iteration(self) -> None:
        for r in [r for r in self._active if r.cancelled]:
            self._finish(r, "cancelled")
        self._admit()
        prefilling = next((r for r in self._active if r.next_token is None), None)
        if prefilling is not None:
            self._prefill_chunk(prefilling)
        decoding = [r for r in self._active if r.next_token is not None]
        if decoding:
            self._decode(decoding)

    def _admit(self) -> None:
        with self._wake:
            while self._waiting and self._free:
                r = self._waiting.popleft()
                if r.cancelled:
                    r._emit(DoneEvent("cancelled", r.stats))
                    continue
                slot = max(self._free, key=lambda s: (_common_prefix(s.tokens, r.prompt), -s.index))
                self._free.remove(slot)
                # keep the shared prefix, but compute the prompt's last token again: its logits are needed
                reuse = min(_common_prefix(slot.tokens, r.prompt), len(r.prompt) - 1)
                del slot.tokens[reuse:]
                r.slot, r.fed = slot, reuse
                r.stats["cached_tokens"] = reuse
                r.stats["t_start"] = time.perf_counter()
                self._active.append(r)
                self.metrics["requests"] += 1
                self.metrics["prompt_tokens"] += len(r.prompt)
                self.metrics["cached_tokens"] += reuse

    def _prefill_chunk(self, r: Request) -> None:
        llm, slot = self.llm, r.slot
        chunk = r.history[r.fed:r.fed + llm.n_batch]
        step = llm._step(len(chunk), False)
        logits = step(np.asarray(chunk, np.int32), r.fed, slot.base)
        slot.tokens += chunk
        r.fed += len(chunk)
        if r.fed == len(r.history):
            r.stats.setdefault("t_first", time.perf_counter())  # kept when computed again after a GPU failure
            if r.max_tokens == 0:
                self._finish(r, "length")
            else:
                self._sampled(r, logits[-1])

    def _decode(self, requests: list[Request]) -> None:
        llm = self.llm
        size = llm.backend.max_batch_rows(llm._graphs[True])
        for start in range(0, len(requests), size):
            batch = requests[start:start + size]
            tokens = np.asarray([r.next_token for r in batch], np.int32)
            if len(batch) > 1:
                spans = [Span(len(r.slot.tokens), 1, r.slot.base) for r in batch]
                rows = llm._step(len(batch), True, batched=True).spans(tokens, spans)
            else:
                (r,) = batch
                rows = llm._step(1, False)(tokens, len(r.slot.tokens), r.slot.base)
            for r, row in zip(batch, rows):
                r.slot.tokens.append(r.next_token)
                self._sampled(r, row)

    def _sampled(self, r: Request, logits: np.ndarray) -> None:
        """Choose r's next token from its logits row, hand it out, and end r where it must end."""
        try:
            token = r.sampler(logits, r.history)
        except NonFiniteLogits as e:
            raise self.llm.damaged(e) from None
        if token in r.stop_ids:
            self._finish(r, "stop")
            return
        r.generated.append(token)
        r.history.append(token)
        self.metrics["generated_tokens"] += 1
        r._emit(_token_event(token, logits, r.logprobs))
        if len(r.generated) >= r.max_tokens or len(r.slot.tokens) >= r.slot.size:
            self._finish(r, "length")
        else:
            r.next_token = token

    def _finish(self, r: Request, reason: str) -> None:
        self._release(r)
        now = time.perf_counter()
        s = r.stats
        s["generated_tokens"] = len(r.generated)
        s["tokens"] = list(r.generated)
        if "t_first" in s:
            s["ttft_s"] = s["t_first"] - s["t_submit"]
            if len(r.generated) > 1:
                s["decode_tokens_per_s"] = (len(r.generated) - 1) / max(now - s["t_first"], 1e-9)
        r._emit(DoneEvent(reason, s))

    def _release(self, r: Request) -> None:
        if r in self._active:
            self._active.remove(r)
        if r.slot is not None and r.slot not in self._free:
            with self._wake:
                self._free.append(r.slot)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _token_event(token: int, logits: np.ndarray, n_top: int | None) -> TokenEvent:
    if n_top is None:
        return TokenEvent(token)
    x = logits.astype(np.float64)
    logprobs = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    top = []
    if n_top > 0:
        best = np.argpartition(-logprobs, n_top - 1)[:n_top] if n_top < len(x) else np.arange(len(x))
        top = best[np.argsort(-logprobs[best], kind="stable")]
    return TokenEvent(token, float(logprobs[token]), [(int(i), float(logprobs[i])) for i in top])
