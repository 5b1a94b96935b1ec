"""The torch engine beyond the shared engine tests (tests/test_engines.py runs those on its
CPU device): the device setting, the missing-torch error, `engine: auto`'s choice, bit-
identical repeats and exact resume, the console scripts and the estimator with engine torch,
and on a CUDA GPU the captured epoch against eager steps and the float64 reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from cli_util import assert_one_line_error, limit_data, run, script
from conftest import small_config
from engine_reference import assert_close, problem, run_engine

from softmax_cls.engines import TORCH_CPU_FROM_CLASSES, auto_engine_name, get_engine
from softmax_cls.engines.contract import EpochPlan, OptimizerState, StepRule
from softmax_cls.engines.memory import RESERVE_BYTES, memory_budget
from softmax_cls.engines.torch_engine import make_engine
from softmax_cls.engines.torch_engine.device import (
    TORCH_INSTALL,
    check_device_text,
    require_torch,
    resolve_device,
)
from softmax_cls.errors import SoftmaxClsError
from softmax_cls.training.checkpoint import load_checkpoint
from softmax_cls.training.runs import train_run as train

torch = pytest.importorskip("torch")
NO_GPU = not torch.cuda.is_available()
no_gpu_only = pytest.mark.skipif(not NO_GPU, reason="a CUDA GPU is present")


# ---------------------------------------------------------------------------------------------
# The device and the extra


@pytest.mark.parametrize("text", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_that_are_accepted(text):
    assert check_device_text(text) == text


@pytest.mark.parametrize("text", ["", "gpu", "CPU", "cuda:", "cuda:-1", "cuda:x", "cpu:0",
                                  " cpu", None])
def test_device_names_that_are_refused(text):
    with pytest.raises(SoftmaxClsError, match="device: must be auto, cpu, cuda or cuda:N"):
        check_device_text(text)


def test_cpu_and_auto_resolve_without_a_gpu():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cpu" if NO_GPU else "cuda")
    assert make_engine("cpu").device == "cpu"
    assert make_engine("auto").device == str(resolve_device("auto"))  # not "auto"


@no_gpu_only
@pytest.mark.parametrize("text", ["cuda", "cuda:1"])
def test_a_gpu_that_is_not_there_is_one_error(text):
    with pytest.raises(SoftmaxClsError, match=f"device {text}: PyTorch sees no CUDA GPU"):
        resolve_device(text)


def test_a_gpu_number_past_the_last_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(SoftmaxClsError, match="sees 2 CUDA GPU"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("platform, files, expected", [
    ("linux", [], False),
    ("linux", ["/proc/driver/nvidia"], True),
    ("linux", ["/dev/dxg"], True),  # WSL
    ("linux", ["/dev/nvidia3"], True),
    ("win32", [], True),  # no driver files to look for: torch is asked
    ("darwin", [], True),
])
def test_only_linux_without_the_driver_files_surely_has_no_gpu(monkeypatch, platform, files,
                                                                expected):
    from softmax_cls.engines.torch_engine import device

    monkeypatch.setattr(device.sys, "platform", platform)
    monkeypatch.setattr(device.os.path, "exists", lambda path: path in files)
    monkeypatch.setattr(device.glob, "glob",
                        lambda pattern: [f for f in files if f.startswith("/dev/nvidia")])
    assert device.gpu_driver_present() is expected

def test_missing_torch_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(SoftmaxClsError) as caught:
        require_torch()
    message = str(caught.value)
    assert TORCH_INSTALL in message and "\n" not in message
    assert TORCH_INSTALL == 'pip install "softmax-cls[torch]"'
    with pytest.raises(SoftmaxClsError, match="softmax-cls\\[torch\\]"):
        get_engine("torch", "cpu")


def test_missing_torch_through_the_console_script(tmp_path, monkeypatch):
    """A `torch` that fails to import shadows the installed one: softmax-train says so in
    one line naming the extra."""
    fake = tmp_path / "shadow" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no torch here')\n")
    config = features_config(tmp_path, engine="torch", device="cpu")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "shadow"))
    result = run("softmax-train", "--config", str(config), "--quiet", cwd=tmp_path)
    assert_one_line_error(result, 1, TORCH_INSTALL)


def test_device_and_engine_combinations_are_refused_by_get_engine():
    with pytest.raises(SoftmaxClsError, match="only engine torch runs on a GPU"):
        get_engine("numba", "cuda:0")
    with pytest.raises(SoftmaxClsError, match="device: must be"):
        get_engine("torch", "gpu")



def test_check_device_lets_auto_and_torch_ask_for_a_gpu_and_refuses_the_cpu_engines(
        monkeypatch):
    from softmax_cls.engines import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in ("auto", "torch"):
        check_device(name, "cuda:0")
        with pytest.raises(SoftmaxClsError, match="device cuda:1: PyTorch sees 1 CUDA GPU"):
            check_device(name, "cuda:1")
    for name in ("numba", "numpy"):
        check_device(name, "cpu")
        with pytest.raises(SoftmaxClsError, match="only engine torch runs on a GPU"):
            check_device(name, "cuda:0")


# ---------------------------------------------------------------------------------------------
# engine: auto


@pytest.mark.parametrize("classes, device, has_torch, has_numba, has_cuda, expected", [
    (10, "auto", True, True, True, "torch"),       # a GPU: torch
    (10, "cuda:1", True, True, False, "torch"),    # asked for a GPU: torch (it reports)
    (10, "cpu", True, True, True, "numba"),        # the CPU asked for: by classes
    (10, "auto", True, True, False, "numba"),
    (TORCH_CPU_FROM_CLASSES - 1, "auto", True, True, False, "numba"),
    (TORCH_CPU_FROM_CLASSES, "auto", True, True, False, "torch"),
    (1000, "cpu", True, True, False, "torch"),
    (None, "auto", True, True, False, "numba"),   # classes unknown: the CIFAR-10 choice
    (1000, "auto", False, True, False, "numba"),  # what is installed
    (10, "auto", True, False, False, "torch"),
    (10, "auto", False, False, False, "numpy"),
    (1000, "auto", False, False, False, "numpy"),
])
def test_auto_picks_by_device_and_classes(classes, device, has_torch, has_numba, has_cuda,
                                          expected):
    assert auto_engine_name(classes, device, has_torch=has_torch, has_numba=has_numba,
                            has_cuda=has_cuda, threads=1) == expected


@pytest.mark.parametrize("classes, threads, augmented, expected", [
    (TORCH_CPU_FROM_CLASSES, 1, False, "torch"),  # the one place torch measured faster
    (1000, 1, False, "torch"),
    (TORCH_CPU_FROM_CLASSES - 1, 1, False, "numba"),
    (TORCH_CPU_FROM_CLASSES, 2, False, "numba"),  # 2 threads: numba led at every shape
    (1000, 2, False, "numba"),
    (1000, 16, False, "numba"),  # not measured: no pick of torch without a measurement
    (100, 1, True, "numba"),  # augmented pixels, 100 classes: numba 1.27x on one thread
    (1000, 1, True, "numba"),
])
def test_auto_on_the_cpu_picks_torch_only_on_one_thread_without_augmentation(
        classes, threads, augmented, expected):
    assert auto_engine_name(classes, "cpu", has_torch=True, has_numba=True, has_cuda=False,
                            threads=threads, augmented=augmented) == expected
    # a GPU goes to torch whatever the threads and augmentation; without numba, torch
    assert auto_engine_name(classes, "cuda", has_torch=True, has_numba=True, has_cuda=True,
                            threads=threads, augmented=augmented) == "torch"
    assert auto_engine_name(classes, "cpu", has_torch=True, has_numba=False, has_cuda=False,
                            threads=threads, augmented=augmented) == "torch"


@pytest.mark.parametrize("classes", [TORCH_CPU_FROM_CLASSES, 100, 1000])
def test_auto_picks_numba_for_lbfgs_on_the_cpu(classes):
    """L-BFGS's evaluations: numba 1.2 to 1.4 times faster than torch's on one thread at 64
    to 1000 classes (docs/development.md, "The torch engine's CPU SGD step"), so the
    one-thread rule that picks torch for SGD does not apply; a GPU and a missing numba still
    go to torch."""
    cpu = dict(has_torch=True, has_numba=True, has_cuda=False, threads=1)
    assert auto_engine_name(classes, "cpu", **cpu, solver="lbfgs") == "numba"
    assert auto_engine_name(classes, "cpu", **cpu, solver="sgd") == "torch"
    assert auto_engine_name(classes, "cpu", **cpu) == "torch"  # sgd unless told
    assert auto_engine_name(classes, "cuda", has_torch=True, has_numba=True, has_cuda=True,
                            threads=1, solver="lbfgs") == "torch"
    assert auto_engine_name(classes, "cpu", has_torch=True, has_numba=False, has_cuda=False,
                            threads=1, solver="lbfgs") == "torch"


@pytest.fixture
def numba_imported():
    """numba imported before a test sets NUMBA_NUM_THREADS: numba reads the variable at its
    import and keeps it, so a first import under the test's value would make the session's
    later in-process launches and compiles fail ("Cannot set NUMBA_NUM_THREADS...")."""
    try:
        import numba  # noqa: F401
    except ImportError:
        pass


def test_get_engine_reads_the_thread_count_and_augmentation(numba_imported, monkeypatch):
    cpus = os.cpu_count() or 1
    monkeypatch.setattr(os, "cpu_count", lambda: max(2, cpus))  # NUMBA_NUM_THREADS <= CPUs
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    assert get_engine("auto", "cpu", 1000).name == "torch"
    assert get_engine("auto", "cpu", 1000, augmented=True).name == "numba"
    assert get_engine("auto", "cpu", 1000, solver="lbfgs").name == "numba"
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    assert get_engine("auto", "cpu", 1000).name == "numba"


@pytest.mark.parametrize("augment, solver, expected", [
    ({"hflip": True, "translate": 0}, "sgd", True),
    ({"hflip": False, "translate": 1}, "sgd", True),
    ({"hflip": False, "translate": 0}, "sgd", False),
    ({"hflip": True, "translate": 1}, "lbfgs", False),  # L-BFGS augments nothing per step
])
def test_a_run_tells_auto_whether_sgd_augments(tmp_path, small_data, monkeypatch, augment,
                                               solver, expected):
    import softmax_cls.training.fit as fit_module
    import softmax_cls.training.runs as runs_module

    told, solvers = [], []

    def recording(name, device, n_classes, augmented=False, rows=None, solver="sgd"):
        told.append(augmented)
        solvers.append(solver)
        return get_engine(name, device, n_classes, augmented, rows, solver)

    monkeypatch.setattr(runs_module, "get_engine", recording)
    monkeypatch.setattr(fit_module, "get_engine", recording)
    config = small_config(tmp_path, engine="numpy", augment=augment,
                          optim={"solver": solver, "epochs": 1})
    train(config, small_data, tmp_path / "run", progress=False)
    assert told and set(told) == {expected}
    assert set(solvers) == {solver}  # auto picks by the solver too


def test_fit_and_fit_lbfgs_tell_auto_the_solver(small_data, tmp_path, monkeypatch):
    """fit() and training.lbfgs.fit_lbfgs, called without an engine, choose theirs for
    L-BFGS (auto picks numba on the CPU at any class count for it)."""
    import softmax_cls.training.fit as fit_module
    import softmax_cls.training.lbfgs as lbfgs_module
    from softmax_cls.math.preprocess import fit_preprocessor, split_train_val

    solvers = []

    def recording(name, device, n_classes, augmented=False, rows=None, solver="sgd"):
        solvers.append(solver)
        return get_engine("numpy", device, n_classes, augmented, rows, solver)

    monkeypatch.setattr(fit_module, "get_engine", recording)
    monkeypatch.setattr(lbfgs_module, "get_engine", recording)
    config = small_config(tmp_path, optim={"solver": "lbfgs", "max_iter": 2})
    images, labels = small_data.train_images, small_data.train_labels
    split = split_train_val(labels, 100, 0)
    pre = fit_preprocessor(images, True, "std", True, rows=split.train_rows)
    fit_module.fit(config, images, labels, split, pre, 4, progress=False,
                   warn=lambda _: None)
    lbfgs_module.fit_lbfgs(config, images, labels, split, pre, np.zeros((4, pre.n_features)),
                           warn=lambda _: None)
    assert solvers == ["lbfgs", "lbfgs"]


@pytest.mark.parametrize("copy, budget, has_torch, expected", [
    (100, 100, True, "numba"),  # the float32 copy fits
    (101, 100, True, "torch"),  # it does not: the fastest engine that reads float16
    (101, 100, False, "numpy"),
    (101, None, True, "numba"),  # the host's memory unknown: as before
    (0, -1, True, "numba"),  # rows numba reads as stored: no copy, whatever the memory
])
def test_auto_leaves_numba_out_where_its_float32_copy_does_not_fit(copy, budget, has_torch,
                                                                   expected):
    assert auto_engine_name(10, "cpu", has_torch=has_torch, has_numba=True, has_cuda=False,
                            threads=2, numba_copy_bytes=copy, host_budget=budget) == expected
    # a GPU still goes to torch; numba's own picks (here 1000 classes on one thread) stay
    assert auto_engine_name(10, "auto", has_torch=True, has_numba=True, has_cuda=True,
                            numba_copy_bytes=copy, host_budget=budget) == "torch"
    assert auto_engine_name(1000, "cpu", has_torch=True, has_numba=True, has_cuda=False,
                            threads=1, numba_copy_bytes=copy, host_budget=budget) == "torch"


# softmax-train in a child whose host memory reads as argv[1] bytes available
TRAIN_WITH_AVAILABLE_MEMORY = """
import sys
import softmax_cls.engines as engines
engines.host_available_bytes = lambda: int(sys.argv[1])
from softmax_cls.cli import train_command
train_command(sys.argv[2:])
"""


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_float16_file_trains_with_auto_by_the_memory_its_float32_copy_needs(tmp_path,
                                                                              dtype):
    """softmax-train, engine auto, a features file of 500 rows x 8, 20 classes (numba's at
    any thread count; its float32 copy of float16 rows: 16,000 bytes), the host's available
    memory faked at the budget's edge: one byte short of the copy (after
    memory.memory_budget's reserve) trains with torch, the copy's size with numba; float32
    rows (read as stored) with numba either way."""
    config = features_config(tmp_path, engine="auto", device="cpu")
    with np.load(tmp_path / "train.npz") as stored:
        rows, labels = stored["X"].astype(dtype), stored["y"]
    np.savez(tmp_path / "train.npz", X=rows, y=labels)
    copy = rows.size * 4
    for available, expected in ((RESERVE_BYTES + copy - 1, "torch"),
                                (RESERVE_BYTES + copy, "numba")):
        result = subprocess.run([sys.executable, "-c", TRAIN_WITH_AVAILABLE_MEMORY,
                                 str(available), "--config", config, "--quiet", "--overwrite"],
                                capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["engine"] == (expected if dtype == np.float16 else "numba")


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """engines.memory's sources pointed at an empty tree under tmp_path (every file missing):
    its meminfo, status, cgroup and sys/fs/cgroup paths. Returns (memory module, tree)."""
    import softmax_cls.engines.memory as memory

    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(memory, "SELF_STATUS", tmp_path / "status")
    monkeypatch.setattr(memory, "SELF_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path / "sys" / "fs" / "cgroup")
    return memory, tmp_path


def write_files(folder, files: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_the_hosts_available_memory_is_memavailable(fake_proc):
    memory, tree = fake_proc
    assert memory.meminfo_available() is None  # not Linux
    (tree / "meminfo").write_text("MemTotal:       16000000 kB\nMemFree:           1000 kB\n"
                                  "MemAvailable:    8000000 kB\n")
    assert memory.meminfo_available() == 8000000 * 1024
    (tree / "meminfo").write_text("MemTotal:       16000000 kB\n")  # kernels before 3.14
    assert memory.meminfo_available() is None
    (tree / "meminfo").write_text("MemAvailable:    lots kB\n")
    assert memory.meminfo_available() is None


def test_the_cgroup_v2_limit_left_binds_from_the_process_group_or_a_parent(fake_proc):
    memory, tree = fake_proc
    root = tree / "sys" / "fs" / "cgroup"
    assert memory.cgroup_v2_left() is None  # no /proc/self/cgroup
    (tree / "cgroup").write_text("0::/docker/abc\n")
    assert memory.cgroup_v2_left() is None  # no memory files
    write_files(root / "docker" / "abc", {"memory.max": "4000\n", "memory.current": "1500\n"})
    assert memory.cgroup_v2_left() == 2500
    write_files(root / "docker", {"memory.max": "max\n", "memory.current": "9000\n"})
    assert memory.cgroup_v2_left() == 2500  # "max": no limit
    write_files(root / "docker", {"memory.max": "10000\n", "memory.current": "9000\n"})
    assert memory.cgroup_v2_left() == 1000  # the parent's binds
    write_files(root / "docker" / "abc", {"memory.max": "max\n"})
    assert memory.cgroup_v2_left() == 1000
    write_files(root / "docker", {"memory.max": "9000\n", "memory.current": "9500\n"})
    assert memory.cgroup_v2_left() == 0  # over its limit: nothing left, never negative
    for garbage in ("a lot\n", "\u00b2\n", "-1\n", ""):
        write_files(root / "docker", {"memory.max": garbage})
        assert memory.cgroup_v2_left() is None, garbage  # no limit
    (root / "docker" / "memory.max").write_bytes(b"\xff\xfe")
    assert memory.cgroup_v2_left() is None
    (tree / "cgroup").write_text("0::/\n")  # a container's own namespace: its limit at the root
    write_files(root, {"memory.max": "3000\n", "memory.current": "2000\n"})
    assert memory.cgroup_v2_left() == 1000
    (tree / "cgroup").write_text("4:memory:/docker/abc\n")  # cgroup v1 only
    assert memory.cgroup_v2_left() is None


def test_the_cgroup_v1_limit_left(fake_proc):
    memory, tree = fake_proc
    v1 = tree / "sys" / "fs" / "cgroup" / "memory"
    assert memory.cgroup_v1_left() is None
    write_files(v1, {"memory.limit_in_bytes": "4000\n", "memory.usage_in_bytes": "1000\n"})
    assert memory.cgroup_v1_left() == 3000
    write_files(v1, {"memory.limit_in_bytes": "9223372036854771712\n"})  # v1's "no limit"
    assert memory.cgroup_v1_left() is None
    write_files(v1, {"memory.limit_in_bytes": "-1\n"})
    assert memory.cgroup_v1_left() is None


def test_the_cgroup_v1_limit_left_binds_from_the_process_group_or_a_parent(fake_proc):
    """On a host, the process's v1 group is nested (/proc/self/cgroup "4:memory:/path"): its
    own files and each parent's up to the controller's root are read, as for v2."""
    memory, tree = fake_proc
    v1 = tree / "sys" / "fs" / "cgroup" / "memory"
    no_limit = "9223372036854771712\n"
    write_files(v1, {"memory.limit_in_bytes": no_limit, "memory.usage_in_bytes": "90000\n"})
    (tree / "cgroup").write_text("5:cpu,cpuacct:/user.slice\n4:memory:/user.slice/job\n"
                                 "0::/user.slice\n")
    assert memory.cgroup_v1_left() is None  # no group limits anything
    write_files(v1 / "user.slice" / "job", {"memory.limit_in_bytes": "4000\n",
                                            "memory.usage_in_bytes": "1500\n"})
    assert memory.cgroup_v1_left() == 2500  # the process's own group
    write_files(v1 / "user.slice", {"memory.limit_in_bytes": "10000\n",
                                    "memory.usage_in_bytes": "9000\n"})
    assert memory.cgroup_v1_left() == 1000  # the parent's binds
    write_files(v1 / "user.slice" / "job", {"memory.limit_in_bytes": no_limit})
    assert memory.cgroup_v1_left() == 1000
    write_files(v1 / "user.slice", {"memory.usage_in_bytes": "12000\n"})
    assert memory.cgroup_v1_left() == 0  # over its limit: never negative
    write_files(v1 / "user.slice", {"memory.usage_in_bytes": "9500\n"})
    (tree / "cgroup").write_text("4:blkio,memory:/user.slice/job\n")  # controllers together
    assert memory.cgroup_v1_left() == 500
    write_files(v1.parent, {"memory.limit_in_bytes": "100\n", "memory.usage_in_bytes": "0\n"})
    assert memory.cgroup_v1_left() == 500  # nothing above the controller's root is read
    (tree / "cgroup").write_text("4:memory,blkio:/elsewhere\n")  # a container's view: the
    write_files(v1, {"memory.limit_in_bytes": "3000\n",  # host path is not mounted:
                     "memory.usage_in_bytes": "1000\n"})
    assert memory.cgroup_v1_left() == 2000  # the controller's root is the group


# prints engines.memory.rlimit_left() with /proc/self/status read from argv[1]
PRINT_RLIMIT_LEFT = """
import sys
import softmax_cls.engines.memory as memory
from pathlib import Path
memory.SELF_STATUS = Path(sys.argv[1])
print(memory.rlimit_left())
"""


@pytest.mark.parametrize("limit_name, expected", [
    ("RLIMIT_DATA", (300 << 20) - 1000 * 1024),  # less VmData
    ("RLIMIT_AS", (300 << 20) - 5000 * 1024),  # less VmSize
    (None, None),
])
def test_a_soft_rlimit_less_the_process_size_is_what_is_left(tmp_path, limit_name, expected):
    """A child under a 300 MB soft RLIMIT_DATA or RLIMIT_AS (hard: unlimited) whose status
    reads VmSize 5000 kB, VmData 1000 kB."""
    import resource

    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmSize:\t    5000 kB\nVmData:\t    1000 kB\n")

    def limit():
        if limit_name:
            limit_id = getattr(resource, limit_name)
            resource.setrlimit(limit_id, (300 << 20, resource.getrlimit(limit_id)[1]))

    result = subprocess.run([sys.executable, "-c", PRINT_RLIMIT_LEFT, str(status)],
                            capture_output=True, text=True, preexec_fn=limit, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(expected)


def test_the_available_memory_is_the_least_of_its_sources(fake_proc, monkeypatch):
    memory, _ = fake_proc
    assert memory.host_available_bytes() is None  # none known
    sources = ("meminfo_available", "cgroup_v2_left", "cgroup_v1_left", "rlimit_left")
    for least in sources:
        for value, name in enumerate(sources):
            monkeypatch.setattr(memory, name, lambda v=value: 10 + v)
        monkeypatch.setattr(memory, least, lambda: 5)
        assert memory.host_available_bytes() == 5
        monkeypatch.setattr(memory, least, lambda: None)  # unknown: no limit
        assert memory.host_available_bytes() == (11 if least == "meminfo_available" else 10)


def test_auto_leaves_numba_out_under_a_data_limit(tmp_path):
    """softmax-train, engine auto, the float16 features file of the test above (numba's float32
    copy: 16,000 bytes) under a real RLIMIT_DATA of 400 MB: what is left of it (the process
    holds about 70 MB when auto picks) is under memory.RESERVE_BYTES, so no copy fits and
    torch trains; without the limit, numba where the host's memory holds the copy."""
    import softmax_cls.engines.memory as memory

    config = features_config(tmp_path, engine="auto", device="cpu")
    with np.load(tmp_path / "train.npz") as stored:
        rows, labels = stored["X"].astype(np.float16), stored["y"]
    np.savez(tmp_path / "train.npz", X=rows, y=labels)
    available = memory.host_available_bytes()
    free = "numba" if available is None or memory_budget(available) >= rows.size * 4 else "torch"
    for limit, expected in ((400 << 20, "torch"), (None, free)):
        result = subprocess.run([script("softmax-train"), "--config", config, "--quiet",
                                 "--overwrite"], capture_output=True, text=True, cwd=tmp_path,
                                preexec_fn=limit_data(limit), timeout=300)
        assert result.returncode == 0, result.stderr
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["engine"] == expected, limit


def test_auto_on_this_machine(numba_imported, monkeypatch):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    many = get_engine("auto", "auto", 1000)
    assert many.name == "torch"
    assert get_engine("auto", "cpu", 10).name in ("numba", "numpy")


# ---------------------------------------------------------------------------------------------
# Repeats, resume, and agreement with the other engines over whole runs


def torch_config(tmp_path, **sections):
    return small_config(tmp_path, engine="torch", device="cpu", **sections)


def test_same_seed_gives_bit_identical_weights(tmp_path, small_data):
    options = {"augment": {"hflip": True, "translate": 2, "padding": "reflect"},
               "optim": {"nesterov": True, "grad_clip": 1.0, "averaging": {"name": "ema"}}}
    first = train(torch_config(tmp_path, **options), small_data, tmp_path / "a",
                  progress=False).state
    second = train(torch_config(tmp_path, **options), small_data, tmp_path / "b",
                   progress=False).state
    assert np.array_equal(first.W, second.W) and np.array_equal(first.average, second.average)


def test_resume_is_exact(tmp_path, small_data):
    options = {"augment": {"hflip": True, "translate": 1}}
    exponential = {"schedule": {"name": "exponential"}}
    full = train(torch_config(tmp_path, **options, optim={"epochs": 4, **exponential}),
                 small_data, tmp_path / "full", progress=False)
    train(torch_config(tmp_path, **options, optim={"epochs": 2, **exponential}), small_data,
          tmp_path / "part", progress=False)
    resumed = train(torch_config(tmp_path, **options, optim={"epochs": 4, **exponential}),
                    small_data, tmp_path / "part",
                    resume=load_checkpoint(tmp_path / "part" / "last.npz"), progress=False)
    assert np.array_equal(full.state.W, resumed.state.W)
    assert np.array_equal(full.state.best_W, resumed.state.best_W)


def test_a_run_agrees_with_the_numpy_engine(tmp_path, small_data):
    options = {"augment": {"hflip": True, "translate": 2, "padding": "zero"},
               "optim": {"momentum": 0.9, "averaging": {"name": "uniform", "start": 0.3}}}
    ours = train(torch_config(tmp_path, **options), small_data, tmp_path / "t",
                 progress=False)
    numpy_run = train(small_config(tmp_path, engine="numpy", **options), small_data,
                      tmp_path / "n", progress=False)
    np.testing.assert_allclose(ours.state.W, numpy_run.state.W, rtol=1e-3, atol=1e-5)
    assert [round(r["val_acc"], 6) for r in ours.state.history] == [
        round(r["val_acc"], 6) for r in numpy_run.state.history]


def test_rows_are_shared_not_copied_on_the_cpu():
    """On the CPU the engine reads the numpy rows in place (no float32 or device copy)."""
    from softmax_cls.engines.contract import TrainingRows
    from softmax_cls.engines.torch_engine.rows import device_rows

    rows = np.zeros((5, 4), np.uint8)
    moved = device_rows(TrainingRows(rows, np.zeros(5, np.int64)), torch.device("cpu"))
    assert moved.rows.data_ptr() == rows.ctypes.data and moved.rows.dtype == torch.uint8


# ---------------------------------------------------------------------------------------------
# The console scripts and the estimator


def features_config(tmp_path, **top) -> str:
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (20, 8))
    labels = rng.integers(0, 20, 600)
    X = (centers[labels] + rng.standard_normal((600, 8))).astype(np.float32)
    np.savez(tmp_path / "train.npz", X=X[:500], y=labels[:500])
    np.savez(tmp_path / "test.npz", X=X[500:], y=labels[500:])
    raw = {**top, "data": {"dataset": "features", "train": str(tmp_path / "train.npz"),
                           "test": str(tmp_path / "test.npz"), "val_size": 100},
           "preprocess": {"scale": "std"}, "augment": {"hflip": False, "translate": 0},
           "optim": {"epochs": 4, "batch_size": 50, "lr": 0.1},
           "output": {"plots": False, "dir": str(tmp_path / "run")}}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_train_and_eval_with_engine_torch_through_the_console_scripts(tmp_path):
    config = features_config(tmp_path, engine="torch", device="cpu")
    result = run("softmax-train", "--config", config, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_acc"] > 0.8
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["device"] == "cpu"
    checkpoint = str(tmp_path / "run" / "best.npz")
    scored = [run("softmax-eval", checkpoint, "--json", *extra, cwd=tmp_path)
              for extra in ([], ["--engine", "torch", "--device", "cpu"])]
    for result in scored:
        assert result.returncode == 0, result.stderr
    reports = [json.loads(result.stdout) for result in scored]
    assert reports[0]["accuracy"] == reports[1]["accuracy"] == summary["test_acc"]


@pytest.mark.parametrize("sets, needle", [
    (["device=tpu"], "device: must be auto, cpu, cuda or cuda:N"),
    (["engine=numpy", "device=cuda"], "device: cuda needs engine torch"),
    (["engine=jax"], "engine: must be one of auto, numba, numpy, torch"),
])
def test_bad_engine_or_device_is_one_line(tmp_path, sets, needle):
    config = features_config(tmp_path)
    args = [arg for item in sets for arg in ("--set", item)]
    result = run("softmax-train", "--config", config, *args, "--quiet", cwd=tmp_path)
    assert_one_line_error(result, 2, needle)


@no_gpu_only
def test_asking_for_a_gpu_without_one_is_one_line(tmp_path):
    config = features_config(tmp_path, engine="torch", device="cuda")
    result = run("softmax-train", "--config", config, "--quiet", cwd=tmp_path)
    assert_one_line_error(result, 1, "device cuda: PyTorch sees no CUDA GPU")
    result = run("softmax-eval", str(tmp_path / "nothing.npz"), "--engine", "torch",
                 "--device", "cuda:0", cwd=tmp_path)
    assert_one_line_error(result, 1, "device cuda:0: PyTorch sees no CUDA GPU")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_estimator_with_engine_torch():
    from sklearn.datasets import load_digits

    from softmax_cls.estimator import SoftmaxClassifier

    X, y = load_digits(return_X_y=True)
    params = dict(epochs=5, random_state=0)
    ours = SoftmaxClassifier(engine="torch", device="cpu", **params).fit(X, y)
    reference = SoftmaxClassifier(engine="numpy", **params).fit(X, y)
    assert ours.get_params()["device"] == "cpu"
    np.testing.assert_allclose(ours.weights_, reference.weights_, rtol=1e-3, atol=1e-4)
    assert abs(ours.score(X, y) - reference.score(X, y)) <= 0.002


# ---------------------------------------------------------------------------------------------
# Code that runs only on CUDA, checked on the CPU where it does not need a GPU

# How a process may have set TF32 for float32 matmuls before the engine runs, and how it reads
# the setting back: the legacy flags, and (PyTorch 2.9 on) the fp32_precision API
TF32_SETTINGS = {
    "untouched": ("", "torch.backends.cuda.matmul.allow_tf32"),
    "allow_tf32": ("torch.backends.cuda.matmul.allow_tf32 = True",
                   "torch.backends.cuda.matmul.allow_tf32"),
    "medium": ("torch.set_float32_matmul_precision('medium')",
               "torch.get_float32_matmul_precision()"),
    "fp32_precision": ("torch.backends.cuda.matmul.fp32_precision = 'tf32'",
                       "torch.backends.cuda.matmul.fp32_precision"),
}

@pytest.mark.parametrize("setting", list(TF32_SETTINGS))
def test_the_lbfgs_objective_keeps_tf32_off_on_cuda_however_the_process_set_it(setting):
    """full._ieee_float32 on a CUDA device (the flags are process settings that a CPU build
    has too): cuBLAS's float32 setting is IEEE inside, and the process reads its own setting
    back after as before. It read allow_tf32, which PyTorch 2.9 on refuses (RuntimeError)
    once TF32 was set through fp32_precision, and restored it, which left a 'medium'
    precision unreadable."""
    if setting == "fp32_precision" and not hasattr(torch.backends, "fp32_precision"):
        pytest.skip("PyTorch before 2.9 has no fp32_precision")
    set_it, read_it = TF32_SETTINGS[setting]
    inside = ("torch.backends.cuda.matmul.fp32_precision"
              if hasattr(torch.backends, "fp32_precision")
              else "torch.backends.cuda.matmul.allow_tf32")
    code = "\n".join([
        "import torch", "from softmax_cls.engines.torch_engine.full import _ieee_float32",
        set_it, f"before = {read_it}",
        "with _ieee_float32(torch.device('cuda', 0)):", f"    inside = {inside}",
        f"print(repr(before), repr(inside), repr({read_it}))"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    before, inside, after = result.stdout.split()
    assert inside in ("'ieee'", "False") and after == before


class Replayed:
    """A CPU stand-in for epoch.capture_graph's CUDA graph: the same warm-up of two steps,
    then replay() runs the steps again on the same tensors, as a graph replays its kernels
    (the capture itself computes nothing)."""

    def __init__(self, steps, device):
        steps(limit=2)
        self.steps = steps

    def replay(self):
        self.steps()


def test_a_captured_epoch_refills_its_static_tensors_before_every_replay(monkeypatch):
    """CapturedEpoch's own code on the CPU, its graph replaced by Replayed: each epoch comes
    with a new order, flips, shifts, averaging factors, learning rate, preprocessing
    statistics and starting state (as after a resume), and each replay must compute what
    eager steps compute from them: anything not copied into the static tensors before the
    replay would be the first epoch's (or the warm-up's) value."""
    from softmax_cls.engines.torch_engine import epoch as epoch_module
    from softmax_cls.engines.torch_engine.rows import device_rows
    from softmax_cls.math.preprocess import Preprocessor

    monkeypatch.setattr(epoch_module, "capture_graph", Replayed)
    p = problem(n_rows=53, n_features=3072, n_classes=10, rows_dtype=np.uint8, seed=5,
                weighted=True)
    cpu, rng = torch.device("cpu"), np.random.default_rng(2)
    rows = device_rows(p.data, cpu)
    captured = None
    for epoch in range(3):
        plan = EpochPlan(rng.permutation(53), 16, np.array([0.0, 1.0, 0.0, 0.5][epoch:] +
                                                           [0.25] * epoch),
                         rng.random(53) < 0.5, rng.integers(-8, 9, (53, 2)), "reflect")
        rule = StepRule(lr=0.05 / (epoch + 1), momentum=0.9, nesterov=True, grad_clip=0.5,
                        reg=1e-3)
        pre = Preprocessor(p.pre.mean + epoch, p.pre.scale * (1 + epoch / 4), True)
        W, velocity, average = (rng.standard_normal(p.W.shape).astype(np.float32) * 0.01
                                for _ in range(3))
        eager = OptimizerState(W.copy(), velocity.copy(), average.copy())
        replayed = OptimizerState(W.copy(), velocity.copy(), average.copy())
        expected = epoch_module.eager_epoch(cpu, p.data, plan, rule, pre, eager)
        key = epoch_module.epoch_key(rows, plan, rule, pre, replayed)
        if captured is None:
            captured = epoch_module.CapturedEpoch(key, cpu, p.data, rows, plan, rule, pre,
                                                  replayed)
        assert captured.key == key  # one capture serves the three epochs
        got = captured.run(plan, rule, pre, replayed)
        for a, b in ((replayed.W, eager.W), (replayed.velocity, eager.velocity),
                     (replayed.average, eager.average)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # addcmul_ vs add_
        assert got[1] == expected[1] and got[0] == pytest.approx(expected[0], rel=1e-6)
        assert not np.array_equal(replayed.W, W)


def test_a_captured_epoch_is_specific_to_each_setting_its_graph_reads_as_a_constant():
    """epoch_key: a plan or rule differing in anything but the values refilled before a
    replay (rule.lr, the order, flips, shifts, averaging factors, statistics, the state)
    needs a graph of its own; a key that left one out would replay a graph captured for
    another (say, plain momentum for Nesterov)."""
    from dataclasses import replace

    from softmax_cls.engines.torch_engine import epoch as epoch_module
    from softmax_cls.engines.torch_engine.rows import device_rows
    from softmax_cls.math.preprocess import Preprocessor

    p = problem(n_rows=20, n_features=3072, n_classes=3, rows_dtype=np.uint8)
    rows = device_rows(p.data, torch.device("cpu"))
    rng = np.random.default_rng(0)
    plan = EpochPlan(np.arange(20), 8, np.full(3, 0.5), rng.random(20) < 0.5,
                     rng.integers(-8, 9, (20, 2)), "edge")
    rule = StepRule(lr=0.1, momentum=0.9, grad_clip=1.0, reg=1e-3)
    state = OptimizerState(p.W, p.W, p.W)

    def key(plan=plan, rule=rule, pre=p.pre, state=state):
        return epoch_module.epoch_key(rows, plan, rule, pre, state)

    same = [key(replace(plan, order=plan.order[::-1].copy(), avg_alpha=np.full(3, 0.25),
                        shift=-plan.shift, flip=~plan.flip), replace(rule, lr=0.01),
                Preprocessor(p.pre.mean + 1, p.pre.scale * 2, p.pre.bias),
                OptimizerState(p.W + 1, p.W, p.W))]
    other = [key(plan=replace(plan, order=np.arange(19))),
             key(plan=replace(plan, batch_size=4)), key(plan=replace(plan, flip=None)),
             key(plan=replace(plan, shift=None)), key(plan=replace(plan, padding="reflect")),
             key(plan=replace(plan, avg_alpha=np.zeros(3))),
             key(rule=replace(rule, momentum=0.5)), key(rule=replace(rule, nesterov=True)),
             key(rule=replace(rule, grad_clip=None)), key(rule=replace(rule, reg=0.0)),
             key(rule=replace(rule, penalise_last=True)), key(rule=replace(rule, clip=10.0)),
             key(pre=Preprocessor(p.pre.mean, p.pre.scale, False)),
             key(state=OptimizerState(p.W[:2], p.W[:2], p.W[:2]))]
    assert same == [key()]
    assert len({key(), *other}) == len(other) + 1


@pytest.mark.parametrize("total", [np.inf, -np.inf, np.nan])
def test_an_epochs_loss_that_is_infinite_not_only_nan_is_refused(total):
    """Off the CPU the L2 penalty's float32 sum is not redone in float64: past float32's
    range it is inf, and the epoch's loss with it, with no NaN anywhere."""
    from softmax_cls.engines.torch_engine.epoch import _finish
    from softmax_cls.math.softmax import NonFiniteError

    with pytest.raises(NonFiniteError, match="non-finite loss"):
        _finish(torch.tensor(total, dtype=torch.float64), torch.tensor(3))
    assert _finish(torch.tensor(2.5, dtype=torch.float64), torch.tensor(3)) == (2.5, 3)


@pytest.mark.parametrize("n_classes", [10, 31, 32, 100])
@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_scores_take_the_transposed_product_only_on_the_cpu_below_32_classes(
        n_classes, device, threads):
    """The (C, n) product of the scores (step.TRANSPOSED_SCORES_BELOW, faster on PyTorch's
    CPU GEMM at 10 and 20 classes only) is CPU-only, on any number of threads: CUDA, and the
    meta device that stands in for it in the tests below, keep the one (n, C) product. Both
    are checked against the reference on the CPU by test_engines.py (10 classes and 100)
    and the test below."""
    from softmax_cls.engines.torch_engine.step import StepBuffers

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buffers = StepBuffers(16, 30, n_classes, 31, torch.float32, torch.float32, device)
    finally:
        torch.set_num_threads(before)
    transposed = device == "cpu" and n_classes < 32
    assert (buffers.scores_t is not None) == transposed
    if transposed:
        assert buffers.scores_t.shape == (n_classes * 16,)


@pytest.mark.filterwarnings("error")  # e.g. PyTorch's for an `out=` of the wrong shape
@pytest.mark.parametrize("case", ["short last minibatch", "weighted, no bias column",
                                  "augmented pixels", "31 classes"])
def test_the_transposed_scores_against_the_reference(case):
    """The CPU step's (C, n) scores (TRANSPOSED_SCORES_BELOW) hold to the float64
    reference with every option of the step, warn of nothing, and repeat bit for bit."""
    rng = np.random.default_rng(4)
    options = dict(momentum=0.9, nesterov=True, reg=1e-3, grad_clip=0.5,
                   alphas=np.array([0.0, 1.0, 0.5]))
    if case == "short last minibatch":
        p = problem(n_classes=10, rows_dtype=np.uint8, seed=11)  # 8, 8, 7
    elif case == "weighted, no bias column":
        p = problem(n_classes=10, seed=12, weighted=True, has_bias=False)
        options = dict(reg=0.2, lr=0.1)
    elif case == "augmented pixels":
        p = problem(n_rows=13, n_features=3072, n_classes=10, rows_dtype=np.uint8, seed=13)
        p.W *= np.float32(0.01)
        options = dict(momentum=0.9, flip=rng.random(13) < 0.5,
                       shift=rng.integers(-8, 9, (13, 2)), padding="reflect", batch_size=5)
    else:
        p = problem(n_classes=31, seed=14)
    actual, expected = run_engine("torch", p, **options)
    assert_close(actual, expected)
    again, _ = run_engine("torch", p, **options)
    for a, b in zip(actual, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rows_kind", ["uint8 augmented zero", "uint8 augmented reflect",
                                       "float16", "float32 streamed"])
@pytest.mark.parametrize("captured", [False, True], ids=["eager", "captured"])
def test_the_steps_read_no_value_on_the_host_and_mix_in_no_cpu_tensor(rows_kind, captured):
    """run_steps on PyTorch's meta device, whose tensors have shapes and no values: a value
    read on the host (float(), .item(), a branch on a tensor) raises there, as it would stop
    a CUDA graph's capture, and so does a CPU tensor in an op on its tensors (on CUDA: a
    device mismatch, or a copy in every step). Eager steps (host averaging factors, a float
    learning rate) and a captured epoch's (both device tensors), every option switched on."""
    from softmax_cls.engines.torch_engine import epoch as epoch_module
    from softmax_cls.engines.torch_engine.rows import DeviceRows, as_tensor
    from softmax_cls.engines.torch_engine.step import Folding

    meta, rng = torch.device("meta"), np.random.default_rng(0)
    if rows_kind.startswith("uint8"):
        p = problem(n_rows=53, n_features=3072, n_classes=10, rows_dtype=np.uint8,
                    weighted=True)
        flip, shift = rng.random(53) < 0.5, rng.integers(-8, 9, (53, 2))
    else:
        p = problem(n_rows=53, n_features=30, n_classes=7, weighted=True)
        p.rows = p.rows.astype(np.float16) if rows_kind == "float16" else p.rows
        flip = shift = None
    plan = EpochPlan(rng.permutation(53), 16, np.array([0.0, 1.0, 0.5, 0.25]), flip, shift,
                     rows_kind.split()[-1] if flip is not None else "edge")
    rule = StepRule(lr=0.1, momentum=0.9, nesterov=True, grad_clip=0.5, reg=1e-3)
    streamed = rows_kind.endswith("streamed")
    rows = DeviceRows(None if streamed else as_tensor(p.rows, meta),
                      as_tensor(p.labels, meta), as_tensor(p.sample_weight, meta))
    batches = (iter([as_tensor(p.rows[plan.order[s : s + 16]], meta) for s in range(0, 53, 16)])
               if streamed else None)
    order, flip_t, shift_t = epoch_module._plan_tensors(plan, meta)
    W, velocity, average = (as_tensor(a, meta) for a in (p.W, p.W, p.W))
    alphas, neg_lr = plan.avg_alpha, -rule.lr
    if captured:
        alphas, neg_lr = torch.zeros(4, device=meta), torch.zeros((), device=meta)
    t = epoch_module.EpochTensors(order, flip_t, shift_t, alphas, neg_lr, W, velocity, average,
                                  *epoch_module._totals(meta))
    epoch_module.run_steps(rows, t, 16, plan.padding, True, rule,
                           Folding.of(p.pre, torch.float32, meta),
                           epoch_module._buffers(p.data, plan, W.shape, meta), batches=batches)
    assert t.W.is_meta and t.average.is_meta and t.loss.is_meta and t.correct.is_meta


@pytest.mark.parametrize("rows_at", ["resident", "a slice per chunk", "gathered per chunk"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_the_lbfgs_sums_mix_in_no_cpu_tensor(rows_at, precision):
    """full._sums, the L-BFGS objective's device work, on the meta device (see the test
    above): rows resident on the device, or sent chunk by chunk, sliced or gathered on the
    host; augmented views, sample weights, centring."""
    from softmax_cls.engines.torch_engine import full

    p = problem(n_rows=53, n_features=3072, n_classes=10, rows_dtype=np.uint8, weighted=True)
    index = np.arange(53) if rows_at != "gathered per chunk" else \
        np.random.default_rng(1).permutation(53)
    budget = 1 << 40 if rows_at == "resident" else 0
    views = ((False, 0, 0), (True, 0, 0), (False, -2, 3))
    sums = full._sums(torch.device("meta"), p.data, index, p.W.astype(np.float64), p.pre,
                      StepRule(lr=1.0, reg=1e-3), views, "reflect", precision, 16, budget)
    assert [tuple(s.shape) for s in sums] == [(), (10, 3072), (10,)]
    assert all(s.is_meta and s.dtype == torch.float64 for s in sums)


# ---------------------------------------------------------------------------------------------
# On a CUDA GPU


@pytest.mark.cuda
@pytest.mark.parametrize("augment", [False, True])
def test_captured_epochs_equal_eager_steps_on_cuda(augment):
    p = problem(n_rows=300, n_features=3072, n_classes=10, rows_dtype=np.uint8, seed=5,
                weighted=True)
    rng = np.random.default_rng(2)
    n = len(p.rows)
    flip = rng.random(n) < 0.5 if augment else None
    shift = rng.integers(-3, 4, (n, 2)) if augment else None
    rule = StepRule(lr=0.05, momentum=0.9, nesterov=True, grad_clip=0.5, reg=1e-3)
    captured, eager = make_engine("cuda"), make_engine("cuda", cuda_graphs=False)
    states = []
    for engine in (captured, eager):
        state = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())
        totals = []
        for epoch in range(3):  # the graph captured once serves the later epochs
            order = np.random.default_rng(epoch).permutation(n)
            plan = EpochPlan(order, 64, np.full(5, 0.5), flip, shift, "reflect")
            totals.append(engine.train_epoch(p.data, plan, rule, p.pre, state))
        states.append((state, totals))
    (graph_state, graph_totals), (eager_state, eager_totals) = states
    np.testing.assert_allclose(graph_state.W, eager_state.W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(graph_state.average, eager_state.average, rtol=1e-5, atol=1e-6)
    assert [c for _, c in graph_totals] == [c for _, c in eager_totals]


@pytest.mark.cuda
def test_captured_epochs_on_two_gpus_in_one_process():
    """The second GPU's capture runs on a stream of its own device (capture_graph): with
    torch.cuda.graph's default stream, made on the first GPU at the first capture, the
    second graph was empty and its epochs left the weights as they were."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    p = problem(n_rows=200, n_features=3072, n_classes=10, rows_dtype=np.uint8, seed=6)
    rule = StepRule(lr=0.05, momentum=0.9)
    for device in ("cuda:0", "cuda:1"):
        states = []
        for engine in (make_engine(device), make_engine(device, cuda_graphs=False)):
            state = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())
            for epoch in range(2):
                plan = EpochPlan(np.random.default_rng(epoch).permutation(200), 64,
                                 np.full(4, 0.5))
                engine.train_epoch(p.data, plan, rule, p.pre, state)
            states.append(state)
        assert not np.array_equal(states[0].W, p.W), device
        np.testing.assert_allclose(states[0].W, states[1].W, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("cuda_graphs", [True, False])
@pytest.mark.parametrize("padding", ["zero", "edge", "reflect"])
def test_cuda_epochs_against_the_reference(cuda_graphs, padding, monkeypatch):
    import engine_reference

    p = problem(n_rows=40, n_features=3072, n_classes=100, rows_dtype=np.uint8, seed=9)
    rng = np.random.default_rng(3)
    engine = make_engine("cuda", cuda_graphs=cuda_graphs)
    monkeypatch.setattr(engine_reference, "engine_named", lambda name: engine)
    actual, expected = run_engine("torch", p, flip=rng.random(40) < 0.5,
                                  shift=rng.integers(-8, 9, (40, 2)), padding=padding,
                                  alphas=np.array([1.0, 0.0, 0.5, 0.25, 0.1]), momentum=0.9,
                                  grad_clip=0.5, reg=0.01)
    assert_close(actual, expected)


@pytest.mark.cuda
def test_cuda_runs_repeat_bit_for_bit(tmp_path, small_data):
    options = {"augment": {"hflip": True, "translate": 2}, "optim": {"nesterov": True}}
    config = small_config(tmp_path, engine="torch", device="cuda", **options)
    first = train(config, small_data, tmp_path / "a", progress=False).state.W
    second = train(config, small_data, tmp_path / "b", progress=False).state.W
    assert np.array_equal(first, second)
    cpu = train(torch_config(tmp_path, **options), small_data, tmp_path / "c",
                progress=False).state.W
    np.testing.assert_allclose(first, cpu, rtol=1e-3, atol=1e-5)


@no_gpu_only
def test_auto_without_a_gpu_does_not_import_torch_for_numba():
    """Where no GPU driver is present, `engine: auto` at 10 classes picks numba without
    loading torch (a second and some hundred MB of a default run)."""
    from softmax_cls.engines.torch_engine.device import gpu_driver_present

    if gpu_driver_present():
        pytest.skip("a GPU driver is present: auto asks torch")
    code = ("import sys; from softmax_cls.engines import get_engine; "
            "print(get_engine('auto', 'auto', 10).name, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["numba", "False"]


def test_running_out_of_device_memory_is_one_line_naming_the_batch_size(monkeypatch):
    from softmax_cls.engines.torch_engine import epoch

    def no_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(epoch, "eager_epoch", no_memory)
    p = problem(seed=1)
    state = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())
    plan = EpochPlan(np.arange(23, dtype=np.int64), 8, np.zeros(3))
    with pytest.raises(SoftmaxClsError, match="out of memory on cpu in a training epoch: "
                                              "lower the batch size"):
        make_engine("cpu").train_epoch(p.data, plan, StepRule(lr=0.1), p.pre, state)


def test_softmax_eval_hints_name_no_option_it_lacks(tmp_path, monkeypatch):
    """softmax-eval has --engine and --device, no --set: its one error line for a missing
    GPU, PyTorch or numba said `use --set device=cpu` or `(or --set engine=numpy)`."""
    config = features_config(tmp_path, engine="numpy")
    assert run("softmax-train", "--config", config, "--quiet", cwd=tmp_path).returncode == 0
    checkpoint = str(tmp_path / "run" / "best.npz")
    lines = []
    if NO_GPU:
        result = run("softmax-eval", checkpoint, "--engine", "torch", "--device", "cuda",
                     cwd=tmp_path)
        lines.append(assert_one_line_error(result, 1, "no CUDA GPU", "device cpu"))
    for module, engine in (("torch", "torch"), ("numba", "numba")):
        shadow = tmp_path / f"shadow-{module}"
        (shadow / module).mkdir(parents=True)
        (shadow / module / "__init__.py").write_text(f"raise ImportError('no {module}')\n")
        monkeypatch.setenv("PYTHONPATH", str(shadow))
        result = run("softmax-eval", checkpoint, "--engine", engine, cwd=tmp_path)
        lines.append(assert_one_line_error(result, 1, "pip install", "engine numpy"))
    for line in lines:
        assert "--set" not in line, line


def test_without_pytorch_a_gpu_device_is_pointed_to_the_cpu_too(tmp_path, monkeypatch):
    """Without PyTorch, --device cuda said `(or use engine numpy)`, and softmax-eval
    --engine numpy --device cuda is a command-line error: the way out must name device cpu
    as well. On the CPU the line stays as it was."""
    config = features_config(tmp_path, engine="numpy")
    assert run("softmax-train", "--config", config, "--quiet", cwd=tmp_path).returncode == 0
    checkpoint = str(tmp_path / "run" / "best.npz")
    shadow = tmp_path / "shadow"
    (shadow / "torch").mkdir(parents=True)
    (shadow / "torch" / "__init__.py").write_text("raise ImportError('no torch')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    for engine, device in (("auto", "cuda"), ("torch", "cuda:1")):
        result = run("softmax-eval", checkpoint, "--engine", engine, "--device", device,
                     cwd=tmp_path)
        assert_one_line_error(result, 1, "pip install", "(or use device cpu and engine numpy)")
    result = run("softmax-train", "--config", config, "--quiet", "--overwrite", "--set",
                 "engine=torch", "--set", "device=cuda", cwd=tmp_path)
    assert_one_line_error(result, 1, "(or use device cpu and engine numpy)")
    result = run("softmax-eval", checkpoint, "--engine", "torch", "--device", "cpu",
                 cwd=tmp_path)
    assert_one_line_error(result, 1, "pip install", "(or use engine numpy)")


@pytest.mark.parametrize("device, instead", [("cuda:0", "device cpu and engine numpy"),
                                             ("cpu", "engine numpy")])
def test_get_engine_without_pytorch_names_the_way_out_for_the_device(monkeypatch, device,
                                                                     instead):
    """get_engine (the estimator's route, no check_device first) reaches make_engine."""
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(SoftmaxClsError, match=rf"needs PyTorch: .* \(or use {instead}\)$"):
        get_engine("torch", device)


def test_the_run_folder_says_which_engine_auto_ran(tmp_path):
    """engine auto's choice was recorded nowhere: config.yaml says auto, summary.json said
    nothing, so a user could not tell numba's run from torch's (they agree within float32
    tolerance, not bit for bit)."""
    config = features_config(tmp_path)  # engine auto, device auto, 20 classes
    result = run("softmax-train", "--config", config, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    expected = get_engine("auto", "auto", 20)
    assert (summary["engine"], summary["device"]) == (expected.name, expected.device)
    assert summary["device"] == ("cpu" if NO_GPU else "cuda:0")
    config = features_config(tmp_path, engine="torch", device="cpu")
    result = run("softmax-train", "--config", config, "--quiet", "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["engine"], summary["device"]) == ("torch", "cpu")


def test_softmax_eval_engine_auto_picks_by_the_checkpoints_class_count(tmp_path, numba_imported,
                                                                      monkeypatch):
    """softmax-eval --engine auto picked as if the class count were unknown (numba on the
    CPU) for a 64-class checkpoint, where engine auto picks torch (engines.md)."""
    import softmax_cls.engines
    from softmax_cls.data.cifar import load_config_data
    from softmax_cls.training.evaluate import evaluate_checkpoint

    rng = np.random.default_rng(0)
    labels = np.arange(400) % TORCH_CPU_FROM_CLASSES
    X = rng.standard_normal((400, 4)).astype(np.float32)
    np.savez(tmp_path / "train.npz", X=X[:300], y=labels[:300])
    np.savez(tmp_path / "test.npz", X=X[300:], y=labels[300:])
    config = small_config(tmp_path, engine="numpy",
                          data={"dataset": "features", "train": str(tmp_path / "train.npz"),
                                "test": str(tmp_path / "test.npz"), "val_size": 0.2},
                          optim={"epochs": 1})
    train(config, lambda: load_config_data(config.data, False), tmp_path / "run",
          progress=False)
    chosen = []
    real = softmax_cls.engines.get_engine
    monkeypatch.setattr(softmax_cls.engines, "get_engine",
                        lambda *args: chosen.append(real(*args)) or chosen[-1])
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")  # on one thread torch leads from 64 classes
    evaluate_checkpoint(tmp_path / "run" / "best.npz", progress=False, engine="auto",
                        device="cpu")
    assert [engine.name for engine in chosen] == ["torch"]


@pytest.mark.parametrize("args, needle", [
    (["--engine", "jax"], "'--engine': must be one of"),
    (["--engine", "numpy", "--device", "cuda"], "only engine torch runs on a GPU (pass --engine"),
    (["--device", "tpu"], "'--device': must be auto, cpu, cuda or cuda:N"),
])
def test_softmax_eval_checks_engine_and_device_before_the_checkpoint(tmp_path, args, needle):
    """Command-line errors, exit 2 as README.md and commands.md say (they were 1)."""
    result = run("softmax-eval", str(tmp_path / "nothing.npz"), *args, cwd=tmp_path)
    assert_one_line_error(result, 2, needle)


def test_summary_json_names_the_device_the_engine_ran_on(tmp_path, small_data, monkeypatch):
    import dataclasses

    from softmax_cls.engines import numpy_engine
    from softmax_cls.training import runs

    elsewhere = dataclasses.replace(numpy_engine.ENGINE, device="cuda:3")
    monkeypatch.setattr(runs, "get_engine", lambda *args, **kwargs: elsewhere)
    train(small_config(tmp_path, engine="numpy", optim={"epochs": 1}), small_data,
          tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["engine"], summary["device"]) == ("numpy", "cuda:3")
