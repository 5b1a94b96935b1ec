"""The thread governor of the numba engine, in plain Python (no numba import): it picks, for
each compiled call, all of the engine's threads or one.

Each SGD step of the numba engine has two parallel regions whose threads wait for each
other, so when another process holds a core a call on all threads can take 10-50 times as
long as on one. The governor times every call per row and runs on one thread while that is
faster (the engine's weights do not depend on the thread count). The thread pool is reached
through the two functions it is given, the time through its clock, so that it can be tested
with fakes of both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Timings:
    """What the governor knows of one kind of kernel call: per thread count, the latest
    seconds per row, how many calls ran and how many calls ago it last ran; the count in use
    (None while both are first measured) and how long the other waits to be measured again."""

    latest: dict[int, float] = field(default_factory=dict)
    runs: dict[int, int] = field(default_factory=dict)
    age: dict[int, int] = field(default_factory=dict)
    current: int | None = None
    probe_every: int = 0


class ThreadGovernor:
    """Chooses the thread count for each compiled call of an engine's train_epoch: all
    threads (as get_threads() says) or one.

    Calls of one kind (same features, batch size, augmentation, clipping) are timed per
    row. The first runs on all threads (it may include compiling), the second on one, the
    third on all again. Then all threads stay in use until their latest call is SLOWER times
    as slow as one thread's (another process holds a core: the usual slowdown is 3 to 50
    times, while a quiet machine's call-to-call noise stays well below SLOWER), and one
    thread until all threads' latest call beats it. The count not in use is measured again
    once it is `probe_every` calls old (PROBE_EVERY, doubled each time it loses again), so
    the choice follows the machine, and a losing probe costs only a few steps. With
    `enabled` False, or one thread to choose from, every call runs on the threads as set.

    get_threads() says how many threads the pool has now, set_threads(k) sets it (numba:
    get_num_threads and set_num_threads); clock() says the time in seconds.
    """

    PROBE_EVERY = 4
    SLOWER = 1.5

    def __init__(self, get_threads: Callable[[], int], set_threads: Callable[[int], None],
                 clock: Callable[[], float] = time.perf_counter):
        self.get_threads = get_threads
        self.set_threads = set_threads
        self.clock = clock
        self.enabled = True
        self.kinds: dict[tuple, _Timings] = {}

    def choose(self, kind: tuple, available: int) -> int:
        if not self.enabled or available < 2:
            return available
        timings = self.kinds.setdefault(kind, _Timings(probe_every=self.PROBE_EVERY))
        if timings.current is None:  # measuring: all threads, one, all again
            return 1 if timings.runs.get(available, 0) == 1 and 1 not in timings.runs \
                else available
        other = 1 if timings.current == available else available
        return other if timings.age[other] >= timings.probe_every else timings.current

    def record(self, kind: tuple, threads: int, seconds_per_row: float, available: int) -> None:
        timings = self.kinds.setdefault(kind, _Timings(probe_every=self.PROBE_EVERY))
        other = 1 if threads == available else available
        timings.latest[threads] = seconds_per_row
        timings.runs[threads] = timings.runs.get(threads, 0) + 1
        timings.age[threads] = 0
        timings.age[other] = timings.age.get(other, 0) + 1
        if timings.current is None:
            if timings.runs.get(available, 0) < 2:
                return
            timings.current = available
        if timings.current == available:
            preferred = 1 if timings.latest[available] > self.SLOWER * timings.latest[1] \
                else available
        else:
            preferred = available if timings.latest[available] < timings.latest[1] else 1
        if threads != timings.current and preferred == timings.current:  # a probe that lost
            timings.probe_every *= 2
        elif preferred != timings.current:
            timings.probe_every = self.PROBE_EVERY
        timings.current = preferred

    def run(self, kind: tuple, rows: int, epoch: Callable[[], tuple]) -> tuple:
        """epoch() over `rows` rows on the chosen number of threads, timed."""
        available = self.get_threads()
        threads = self.choose(kind, available)
        if threads != available:
            self.set_threads(threads)
        try:
            started = self.clock()
            result = epoch()
            if self.enabled and available > 1:
                self.record(kind, threads, (self.clock() - started) / max(rows, 1), available)
        finally:
            if threads != available:
                self.set_threads(available)
        return result
