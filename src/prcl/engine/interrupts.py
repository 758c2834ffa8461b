"""Stopping a run cleanly on SIGINT (Ctrl-C) and SIGTERM (how schedulers preempt jobs): the
current step finishes, ``last.pth`` is written, and the run ends with one line that says how
to continue."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prcl.errors import PrclError

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
"""The shell's codes for a process ended by these signals (128 + the signal number)."""


class Interrupted(PrclError):
    """The run stopped on a signal after saving; ``exit_code`` is the shell's for it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        """Pickled whole, so that a run in another process (the demo's) raises it here."""
        return Interrupted, (str(self), self.exit_code)


class StopRequest:
    """Set by the first SIGINT or SIGTERM while ``catch_stop_signals`` is active; a second
    SIGINT raises KeyboardInterrupt at once (for a user who does not want to wait)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal_name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


@contextmanager
def catch_stop_signals() -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to a ``StopRequest`` for the body's duration (the previous
    handlers come back afterwards). Outside the main thread, where Python allows no signal
    handlers, the request simply never fires."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
