"""The test suite's own plugin (leftover_processes): the processes a failed test started are
killed, with their own children; a passed test's are left alone, and so are a module
fixture's."""

from __future__ import annotations

import os
import signal
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# a process that writes its PID to NAME.LEVEL, starts itself at LEVEL + 1 below LEVEL 3 (a
# sweep's workers and theirs) and sleeps
SLEEPER = """
import os
import subprocess
import sys
import time

name, level = sys.argv[1], int(sys.argv[2])
if level < 3:
    subprocess.Popen([sys.executable, "sleeper.py", name, str(level + 1)])
with open(f"{name}.{level}.tmp", "w") as handle:
    handle.write(str(os.getpid()))
os.rename(f"{name}.{level}.tmp", f"{name}.{level}")  # whole when it appears
time.sleep(600)
"""

INNER = """
import os
import subprocess
import sys
import time

import pytest


def start_sleeper(name):
    subprocess.Popen([sys.executable, "sleeper.py", name, "1"])
    deadline = time.monotonic() + 120  # a sleeper that cannot start fails, never hangs
    while not all(os.path.exists(f"{name}.{level}") for level in (1, 2, 3)):
        assert time.monotonic() < deadline, f"{name}'s sleepers did not start"
        time.sleep(0.01)


def test_passes():
    start_sleeper("passed")


@pytest.fixture(scope="module")
def shared():  # a module's process (a Dask cluster), started before the test
    start_sleeper("shared")


def test_fails(shared):
    start_sleeper("failed")
    assert False
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


def test_a_failed_test_kills_what_it_started_and_a_passed_one_does_not(pytester,
                                                                        monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(__file__))
    pytester.makepyfile(sleeper=SLEEPER, test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "leftover_processes", "-p", "no:cacheprovider",
                                           "-n", "0", "test_inner.py", timeout=600)
    result.assert_outcomes(passed=1, failed=1)
    failed, passed, shared = ([int((pytester.path / f"{name}.{level}").read_text())
                               for level in (1, 2, 3)]
                              for name in ("failed", "passed", "shared"))
    try:
        assert not any(alive(pid) for pid in failed)
        assert all(alive(pid) for pid in passed + shared)
    finally:
        for pid in passed + shared:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
