"""Generated tokens to text pieces: never a broken UTF-8 character, never part of a stop string."""

from __future__ import annotations

import codecs


class TextStream:
    """Feed token ids one at a time; each `add` returns the text that is now safe to show.

    A character split over several byte tokens is held back until complete; so is a tail that
    could still grow into a stop string. When a stop string appears, `stopped` turns True and the
    text before it is the last piece.
    """

    def __init__(self, tokenizer, stops: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stops = [s for s in (stops or []) if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # everything decoded so far
        self.emitted = 0  # characters of self.text already returned
        self.stopped = False

    def add(self, token: int) -> str:
        if self.stopped:
            raise RuntimeError("the text already ended at a stop string")
        self.text += self.decoder.decode(self.tokenizer.token_bytes(token))
        cut = _find_stop(self.text, self.stops, self.emitted)
        if cut is not None:
            self.stopped = True
            return self._take(cut)
        return self._take(len(self.text) - _stop_prefix_len(self.text, self.stops))

    def finish(self) -> str:
        """What is left when generation ends without a stop string (a held-back tail, or an
        incomplete character as U+FFFD)."""
        if self.stopped:
            return ""
        self.text += self.decoder.decode(b"", final=True)
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece


def _find_stop(text: str, stops: list[str], emitted: int) -> int | None:
    """Index where the first stop string starts in text (searching from what may still be cut)."""
    hits = [i for s in stops if (i := text.find(s, max(0, emitted - len(s) + 1))) >= 0]
    return min(hits) if hits else None


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that could still grow into a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
