"""--threads N: BLAS and numba compute on N threads; a count outside 1..CPUs is one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli_util import assert_one_line_error, run

PROBE = """
import os, sys
from softmax_cls import cli
try:
    cli.gradcheck_command.main(["--threads", "1", "--samples", "20", "--checks", "2"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
from threadpoolctl import threadpool_info
blas = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
import numba
print(os.environ["OPENBLAS_NUM_THREADS"], blas, numba.get_num_threads(), file=sys.stderr)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to tell 1 thread apart")
def test_threads_one_runs_blas_and_numba_on_one_thread():
    pytest.importorskip("numba")
    pytest.importorskip("threadpoolctl")
    env = {key: value for key, value in os.environ.items()
           if key not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                          "NUMBA_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "1 [1] 1"


@pytest.mark.parametrize("command", ["softmax-train", "softmax-eval", "softmax-gradcheck"])
@pytest.mark.parametrize("count", ["0", "100000", "two"])
def test_a_thread_count_outside_the_cpus_is_one_line(command, count):
    """The line names the option once: not again as the setting inside its reason."""
    args = ["--threads", count] + (["x.npz"] if command == "softmax-eval" else [])
    line = assert_one_line_error(run(command, *args), 2, "--threads")
    assert line.count("threads") == 1, line


@pytest.mark.parametrize("value, expected", [("3", 3), ("1", 1), (None, os.cpu_count() or 1),
                                             ("0", os.cpu_count() or 1),
                                             ("lots", os.cpu_count() or 1)])
def test_compute_threads_follows_numba_num_threads(monkeypatch, value, expected):
    """engine auto's choice on the CPU depends on the thread count (engines.md)."""
    from softmax_cls.threads import compute_threads

    if value is None:
        monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("NUMBA_NUM_THREADS", value)
    assert compute_threads() == expected


class FakePool:
    """numba or torch as use_threads sees it in sys.modules: the counts it was given."""

    def __init__(self, numba_threads: int = 0):
        self.config = type("config", (), {"NUMBA_NUM_THREADS": numba_threads})
        self.given: list[int] = []

    def set_num_threads(self, count: int) -> None:
        self.given.append(count)


def test_threads_up_to_every_cpu_reach_numba_capped_at_its_pool_and_torch(monkeypatch):
    """numba.set_num_threads refuses a count above the pool it started with
    (NUMBA_NUM_THREADS), so a loaded numba gets at most that; torch gets the count."""
    from softmax_cls.threads import THREAD_VARIABLES, use_threads

    # a copy of the environment: what use_threads sets there must not outlive the test
    monkeypatch.setattr(os, "environ", {key: value for key, value in os.environ.items()
                                        if key not in THREAD_VARIABLES})
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    numba, torch = FakePool(numba_threads=2), FakePool()
    monkeypatch.setitem(sys.modules, "numba", numba)
    monkeypatch.setitem(sys.modules, "torch", torch)
    use_threads(4)
    assert {name: os.environ[name] for name in THREAD_VARIABLES} == dict.fromkeys(
        THREAD_VARIABLES, "4")
    assert numba.given == [2] and torch.given == [4]


@pytest.mark.parametrize("value, accepted", [("1", True), ("4", True), (" 2\n", True),
                                             ("5", False), (None, True)])
def test_numba_num_threads_may_name_every_cpu_and_no_more(monkeypatch, value, accepted):
    """--threads' range, 1 to the CPUs; numba itself reads the number as int() does, around
    its spaces."""
    from softmax_cls.errors import SoftmaxClsError
    from softmax_cls.threads import check_numba_threads_variable

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    if value is None:
        monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("NUMBA_NUM_THREADS", value)
    if accepted:
        check_numba_threads_variable()
    else:
        with pytest.raises(SoftmaxClsError, match="from 1 to 4 .* got '5'"):
            check_numba_threads_variable()
