"""Checks of the public API's arguments, done before anything is loaded or run: a wrong type is a
TypeError, a wrong value a ValueError, each naming the argument, what was given and what is valid."""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
from collections.abc import Mapping

from .backends import BACKENDS
from .sampling import SamplingParams

SAMPLING_NAMES = tuple(f.name for f in dataclasses.fields(SamplingParams))


def _type_name(value) -> str:
    return type(value).__name__


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_open(model, backend, n_ctx, n_batch, adapter, trace) -> None:
    """The arguments of `LLM(...)`; the upper bound of n_ctx (the model's) is checked once it is read."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path, a known model name or None, got {_type_name(model)} {model!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    for name, value in (("n_ctx", n_ctx), ("n_batch", n_batch)):
        if value is None and name == "n_ctx":
            continue
        if not _is_int(value):
            raise TypeError(f"{name} must be an int, got {_type_name(value)} {value!r}")
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if adapter is not None and not isinstance(adapter, str) and not _is_int(adapter):
        raise TypeError(f"adapter must be an adapter index, a name or None, got {_type_name(adapter)} {adapter!r}")
    if trace is not None and not isinstance(trace, bool):
        raise TypeError(f"trace must be True, False or None, got {_type_name(trace)} {trace!r}")


def check_keywords(call: str, given: Mapping, named: tuple[str, ...]) -> None:
    """Keyword arguments passed on as sampling parameters must be SamplingParams fields: an unknown
    one is a TypeError naming it, the closest valid name, and every valid one."""
    valid = named + SAMPLING_NAMES
    for key in given:
        if key not in SAMPLING_NAMES:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{call} got an unexpected keyword argument {key!r}{hint}; valid: {', '.join(valid)}")


def check_generation(max_tokens, stop, stats, ignore_eos) -> list[str]:
    """The generation arguments of `LLM.stream()`; returns the stop strings as a list (a single
    string is one stop string)."""
    if not _is_int(max_tokens):
        raise TypeError(f"max_tokens must be an int, got {_type_name(max_tokens)} {max_tokens!r}")
    if max_tokens < 0:
        raise ValueError(f"max_tokens={max_tokens} must be >= 0")
    if isinstance(stop, str):
        stop = [stop]
    elif stop is None:
        stop = []
    elif not isinstance(stop, (list, tuple)):
        raise TypeError(f"stop must be a list of strings, a string or None, got {_type_name(stop)} {stop!r}")
    for i, s in enumerate(stop):
        if not isinstance(s, str):
            raise TypeError(f"stop[{i}] must be a str, got {_type_name(s)} {s!r}")
        check_text(s, f"stop[{i}]")
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"stats must be a dict to fill or None, got {_type_name(stats)}")
    if not isinstance(ignore_eos, bool):
        raise TypeError(f"ignore_eos must be True or False, got {_type_name(ignore_eos)} {ignore_eos!r}")
    return list(stop)


def check_text(text, what: str = "text") -> None:
    """text must be a str of valid Unicode: a lone surrogate (what `surrogateescape` makes of bytes
    that are not UTF-8, or half of a UTF-16 pair) cannot be encoded, hence not tokenized."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {_type_name(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        char = text[e.start]
        raise ValueError(f"{what} is not valid Unicode: a lone surrogate U+{ord(char):04X} at position {e.start} "
                         f"(bytes that are not UTF-8, decoded with errors='surrogateescape', "
                         f"or half of a UTF-16 pair)") from None


def check_token_ids(ids, what: str = "prompt") -> list[int]:
    """A sequence of token ids as plain ints (range checks need the vocabulary: LLM._check_ids)."""
    if isinstance(ids, (str, bytes, bytearray, Mapping)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"{what} must be a str or a list of token ids, got {_type_name(ids)}")
    out = []
    for i, t in enumerate(ids):
        if not _is_int(t):
            raise TypeError(f"{what}[{i}] must be an int token id, got {_type_name(t)} {t!r}")
        out.append(int(t))
    return out
