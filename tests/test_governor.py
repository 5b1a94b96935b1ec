"""The thread governor (softmax_cls.engines.governor) with a fake thread pool and a fake
clock: which thread count it picks from the timings it is fed, and that run() sets and
restores the pool's count and times each call per row. Runs without numba."""

from __future__ import annotations

import sys

import pytest

from softmax_cls.engines.governor import ThreadGovernor


class FakePool:
    """A thread pool of `available` threads whose count run() may lower for a call."""

    def __init__(self, available: int = 2):
        self.available = available
        self.threads = available
        self.history: list[int] = []

    def get(self) -> int:
        return self.threads

    def set(self, threads: int) -> None:
        self.threads = threads
        self.history.append(threads)


def governor_after(epochs: list[tuple[int, float]], available: int = 2) -> ThreadGovernor:
    """A fresh governor fed epochs of one kind: (the thread count it must choose, the
    seconds per row that epoch then took)."""
    pool = FakePool(available)
    governor = ThreadGovernor(pool.get, pool.set)
    for threads, seconds in epochs:
        assert governor.choose("kind", available) == threads
        governor.record("kind", threads, seconds, available)
    return governor


def test_measures_both_counts_then_keeps_the_faster_and_probes_less_often():
    every = ThreadGovernor.PROBE_EVERY
    quiet = [(2, 1.0), (1, 1.6), (2, 1.0)]  # all threads (maybe compiling), one, all again
    governor = governor_after([*quiet, *[(2, 1.0)] * (every - 1), (1, 1.6),
                               *[(2, 1.0)] * (2 * every), (1, 1.6),
                               *[(2, 1.0)] * (4 * every - 1)])
    assert governor.choose("kind", 2) == 2
    governor.record("kind", 2, 1.0, 2)
    assert governor.choose("kind", 2) == 1  # the probes of one thread: after 4, 8, 16 epochs
    assert governor.choose("other kind", 2) == 2  # kinds are timed apart


def test_moves_to_one_thread_when_all_threads_get_slower_and_back_after():
    every = ThreadGovernor.PROBE_EVERY
    quiet = [(2, 1.0), (1, 1.6), (2, 1.0)]
    contended = [(2, 9.0), *[(1, 1.7)] * every]  # another process takes a core
    governor = governor_after([*quiet, *contended, (2, 8.0), *[(1, 1.7)] * (2 * every)])
    assert governor.choose("kind", 2) == 2  # the probe, after twice as many epochs
    governor.record("kind", 2, 1.0, 2)  # the machine is quiet again
    assert governor.choose("kind", 2) == 2


def test_a_won_probe_resets_the_probe_interval():
    every = ThreadGovernor.PROBE_EVERY
    quiet = [(2, 1.0), (1, 1.6), (2, 1.0)]
    governor = governor_after([*quiet, *[(2, 1.0)] * (every - 1), (1, 1.6),  # lost: doubled
                               *[(2, 1.0)] * (2 * every), (1, 0.2),  # won: one thread
                               *[(1, 0.2)] * (every - 1)])
    assert governor.choose("kind", 2) == 2  # probing all threads again after PROBE_EVERY


def test_all_threads_stay_while_less_than_slower_times_as_slow():
    slower = ThreadGovernor.SLOWER
    governor = governor_after([(2, 1.0), (1, 1.0), (2, 0.99 * slower)])
    assert governor.choose("kind", 2) == 2  # just under SLOWER times one thread's: kept
    governor = governor_after([(2, 1.0), (1, 1.0), (2, 1.01 * slower)])
    assert governor.choose("kind", 2) == 1


def test_one_thread_stays_until_all_threads_beat_it():
    every = ThreadGovernor.PROBE_EVERY
    busy = [(2, 9.0), (1, 1.6), (2, 8.0), *[(1, 1.6)] * every]
    assert governor_after([*busy, (2, 1.6)]).choose("kind", 2) == 1  # a tie is no win
    assert governor_after([*busy, (2, 1.5)]).choose("kind", 2) == 2


def test_picks_one_thread_when_the_machine_is_busy_from_the_start():
    governor = governor_after([(2, 9.0), (1, 1.6), (2, 8.0), (1, 1.6), (1, 1.6)])
    assert governor.choose("kind", 2) == 1


def test_can_be_switched_off_and_has_nothing_to_choose_from_one_thread():
    governor = governor_after([(2, 9.0), (1, 1.6), (2, 8.0)])
    governor.enabled = False
    assert governor.choose("kind", 2) == 2
    assert governor_after([(1, 1.0), (1, 5.0), (1, 1.0)], available=1).choose("kind", 1) == 1


def test_run_sets_the_chosen_count_times_per_row_and_restores_the_pool():
    pool = FakePool(available=4)
    ticks = iter([0.0, 8.0, 10.0, 11.0, 20.0, 28.0])  # calls of 8, 1 and 8 seconds
    governor = ThreadGovernor(pool.get, pool.set, clock=lambda: next(ticks))
    seen = []
    for _ in range(3):
        assert governor.run("kind", 4, lambda: (seen.append(pool.threads), "result")[1]) \
            == "result"
        assert pool.threads == 4  # restored after every call
    assert seen == [4, 1, 4]
    assert pool.history == [1, 4]  # set only around the call on one thread
    timings = governor.kinds["kind"]
    assert timings.latest == {4: 2.0, 1: 0.25}  # seconds per row of 4 rows
    assert governor.choose("kind", 4) == 1  # 2.0 > SLOWER * 0.25


def test_run_restores_the_pool_when_the_call_raises():
    pool = FakePool(available=2)
    governor = ThreadGovernor(pool.get, pool.set, clock=iter(range(100)).__next__)
    governor.run("kind", 1, lambda: ())

    def failing():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        governor.run("kind", 1, failing)  # the second call runs on one thread
    assert pool.history == [1, 2] and pool.threads == 2


def test_run_records_nothing_when_switched_off_or_on_one_thread():
    for governor_pool, enabled in ((FakePool(2), False), (FakePool(1), True)):
        governor = ThreadGovernor(governor_pool.get, governor_pool.set,
                                  clock=iter(range(100)).__next__)
        governor.enabled = enabled
        for _ in range(3):
            governor.run("kind", 10, lambda: ())
        assert governor.kinds == {} and governor_pool.history == []


def test_the_governor_module_does_not_import_numba():
    import subprocess

    code = ("import sys; sys.modules['numba'] = None\n"
            "import softmax_cls.engines.governor\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "ok"
