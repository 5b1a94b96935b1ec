"""A pytest plugin: a test that fails kills the processes it started and left running.

A test that starts a training process and fails before it stops it (the run ended before
the signal, an assertion on the way) left the process running, minutes after the session
ended, on the two cores the next test run needs. The processes a test starts with
subprocess.Popen (subprocess.run included) are recorded; if the test fails, those still
running are killed with their descendants (found in /proc, where there is one).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

FAILED = pytest.StashKey[bool]()
started_in_this_test: list[subprocess.Popen] = []
_popen_init = subprocess.Popen.__init__


def _recording_init(self, *args, **kwargs):
    _popen_init(self, *args, **kwargs)
    started_in_this_test.append(self)


def descendants(pids: list[int]) -> list[int]:
    """The live descendants of processes `pids`, children before their own children, read
    from /proc ([] where there is none)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command's name (field 2) is in parentheses and may hold anything
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], list(pids)
    while frontier:
        frontier = [child for child, parent in parents.items()
                    if parent in frontier and child not in found]
        found += frontier
    return found


def pytest_configure(config):
    subprocess.Popen.__init__ = _recording_init


def pytest_unconfigure(config):
    subprocess.Popen.__init__ = _popen_init


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        item.stash[FAILED] = True


@pytest.fixture(autouse=True)
def _kill_what_a_failed_test_left_running(request):
    started_in_this_test.clear()  # after the wider fixtures: their processes are theirs
    yield
    if request.node.stash.get(FAILED, False):
        running = [process.pid for process in started_in_this_test if process.poll() is None]
        for pid in running + descendants(running):  # parents first: none restarts a child
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    started_in_this_test.clear()
