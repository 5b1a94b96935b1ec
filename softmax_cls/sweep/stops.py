"""Ctrl-C and SIGTERM during a sweep: remembered, so that one is never lost.

Python runs a signal's handler between two bytecodes of the main thread, wherever it is, and
the KeyboardInterrupt it raises (interrupts.Terminated for SIGTERM) can land in code that
catches everything and goes on. Cython's module initialisation is such code: it wraps its
`collections.abc.Sequence.register(...)` calls in a bare `except: pass`, so a signal that
arrived while numpy.random was being imported (lazily, when the study's sampler is first
seeded, just after sweep.yaml is written) vanished and the sweep ran all its trials.

While a StopSignals is active (in the main thread, for the signals whose handler is a Python
one: Ctrl-C's default, sigterm_as_interrupt's) the signal is recorded as well as raised:
`check()` raises it again at the driver's next step, and the `with` block raises it on the
way out if nothing else did. `deferred()` holds a signal back (recorded, raised at the end of
the block) around a step that must not stop halfway: starting a worker process, whose
spawned child would otherwise read its half-written start-up data and print a traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: SIGINT and SIGTERM are raised as before (by the handler they had)
    and remembered; `received` is the first one's number (None: none yet)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._deferring = 0
        self._held: int | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                handler = signal.getsignal(signum)
                if callable(handler):  # an ignored signal (SIG_IGN) or a fatal one stays so
                    self._previous[signum] = handler
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        for signum, previous in self._previous.items():
            # a handler that replaced ours meanwhile stays (interrupts' SIGTERM handler makes
            # a second SIGTERM fatal while the first one is handled)
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        if kind is None:
            self.check()
        return False

    def _handle(self, signum, frame) -> None:
        if self._deferring:
            if self._held is None:
                self._held = signum
            return
        self._stop(signum, frame)

    def _stop(self, signum: int, frame=None) -> None:
        """Run the signal's own handler; a stop it raises is remembered."""
        try:
            self._previous[signum](signum, frame)
        except KeyboardInterrupt:
            if self.received is None:
                self.received = signum
            raise

    def check(self) -> None:
        """Raise the stop again when one was received and swallowed on its way out."""
        if self.received is not None:
            self._stop(self.received)
            raise KeyboardInterrupt  # its handler no longer raises: stop all the same

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal that arrives in the block is raised at its end (or, when the block
        raises, remembered for the next check)."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
            if not self._deferring and self._held is not None and self.received is None:
                self.received = self._held
            if not self._deferring:
                self._held = None
        self.check()
