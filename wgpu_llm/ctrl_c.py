"""Ctrl-C while the command line generates text: stop cleanly, keep what was printed.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be, which may be
in the middle of a backend step (a GPU buffer mapped for reading, a command buffer half
recorded). So while a reply is generated the first Ctrl-C only raises a flag, and the loop that
prints the pieces stops after the piece in hand: the generation is closed between two steps and
the model is ready for the next call (the next chat turn). A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading


class CtrlC:
    """`with CtrlC() as ctrl_c:` ... `if ctrl_c.pressed: break`. Outside the main thread (where
    Python delivers no signals) it changes nothing."""

    def __init__(self) -> None:
        self.pressed = False
        self._installed = False
        self._previous = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __exit__(self, *exc) -> bool:
        if self._installed:
            # (None: a handler set outside Python, which cannot be put back; the default then)
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False
        return False
