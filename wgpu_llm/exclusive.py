"""One call at a time on an `LLM`: the backend holds one KV cache and one set of step buffers.

Calls from several threads are serialized: each waits for the one running to end. A generation
(`LLM.stream()`) counts as running from its first piece until it is exhausted or closed, so it
keeps the others waiting while it is consumed. A call from the thread that holds a generation
open would wait for itself forever; it raises `ReentrantCall` instead, naming the open call.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReentrantCall(RuntimeError):
    """A call on an LLM from the thread whose earlier generation on it is still open."""


class Exclusive:
    """The lock of one LLM, with who holds it: a thread id, the call, and whether that call is a
    generation (a generator, which its thread may hold open between pieces)."""

    def __init__(self) -> None:
        # a plain Lock, not an RLock: a generator closed by the garbage collector may release it
        # from another thread than the one that took it
        self._lock = threading.Lock()
        self._holder: int | None = None
        self._call = ""
        self._generation = False

    @contextmanager
    def held(self, call: str, generation: bool = False) -> Iterator[None]:
        me = threading.get_ident()
        # only this thread can have set _holder to its own id, so this read needs no lock
        if self._holder == me:
            if self._generation:
                raise ReentrantCall(f"{call} on this LLM while {self._call} of the same thread is still open "
                                    f"(one call at a time): exhaust that generator or call its close() first")
            yield  # a call made by the running one (generate() runs stream()): it holds the lock already
            return
        with self._lock:
            self._holder, self._call, self._generation = me, call, generation
            try:
                yield
            finally:
                self._holder, self._call, self._generation = None, "", False

    def resumed(self) -> None:
        """A held generation goes on in the current thread (a generator may be passed between threads)."""
        self._holder = threading.get_ident()


def _describe(method, args: tuple) -> str:
    """`name(first argument...)`, the first argument shortened: which call holds the LLM."""
    first = repr(args[0]) if args else ""
    return f"{method.__name__}({first[:24] + '...' if len(first) > 24 else first})"


def exclusive(method):
    """Run the method holding its object's `_exclusive` lock."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._exclusive.held(_describe(method, args)):
            return method(self, *args, **kwargs)

    return locked


def exclusive_generator(method):
    """Run the generator method holding its object's `_exclusive` lock from its first piece until it
    is exhausted or closed (the garbage collector closes an abandoned one)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        guard = self._exclusive
        with guard.held(_describe(method, args), generation=True):
            pieces = method(self, *args, **kwargs)
            try:
                for piece in pieces:
                    yield piece
                    if guard._generation:  # (this generation holds the lock, not a call it runs in)
                        guard.resumed()
            finally:
                pieces.close()

    return locked
