"""Ctrl-C for loops that ask the nodes and sleep (``tm stats --watch``, ``tm results``).

Python raises KeyboardInterrupt wherever the main thread happens to be. Raised inside a request,
it can be swallowed by a finalizer that runs there (the loop goes on, Ctrl-C is lost) or strike
between urllib3's acquiring its pool lock and the ``with`` that would release it (the next
request, or the pool's finalizer at exit, waits on that lock forever). So the first Ctrl-C
interrupts only the sleep between rounds; in a round it is noted and the loop stops after it.
A second Ctrl-C interrupts at once (a node that does not answer holds a round up to the
request timeout).
"""

from __future__ import annotations

import signal
import time
from types import FrameType, TracebackType


class CtrlC:
    """``with CtrlC() as ctrl_c: while not ctrl_c.pressed: ...; ctrl_c.sleep(s)``: SIGINT
    handled as the module says while the block runs, the previous handler back after it
    (also when SIGINT was ignored before: the loop is one that runs until Ctrl-C)."""

    def __init__(self) -> None:
        self.pressed = 0
        self._sleeping = False
        self._previous: object = None

    def __enter__(self) -> CtrlC:
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # None: a handler not set from Python, which cannot be put back
        signal.signal(signal.SIGINT, signal.SIG_DFL if self._previous is None else self._previous)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.pressed += 1
        if self._sleeping or self.pressed > 1:
            raise KeyboardInterrupt

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or not at all once Ctrl-C was pressed; Ctrl-C ends the sleep."""
        self._sleeping = True
        try:
            if not self.pressed:
                time.sleep(seconds)
        finally:
            self._sleeping = False
