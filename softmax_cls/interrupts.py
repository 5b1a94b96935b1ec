"""SIGTERM handled like Ctrl-C: it raises `Terminated`, a KeyboardInterrupt, in the main thread.

So the code that saves the last completed epoch on Ctrl-C runs for SIGTERM too (a job
scheduler's stop, `kill PID`, `docker stop`), progress bars are closed by their `finally`,
and the command exits with 143 (128 + 15) instead of dying mid-line.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived."""


def stop_word_and_code(exc: BaseException) -> tuple[str, int]:
    """("terminated", 143) for a SIGTERM's Terminated, else ("interrupted", 130) for Ctrl-C:
    the word of the one error line and the exit code (128 + the signal's number)."""
    return ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)


def _raise_terminated(signum, frame) -> None:
    # A second SIGTERM while the first is being handled (saving) kills at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active (in the main thread only), SIGTERM raises Terminated; restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
