"""Issue 9: hostile input, faults and concurrent use, each tried as a user would.

Every test runs an installed console script (or, where training data is needed, the same
click command in a child process with small synthetic data put in place of CIFAR) and checks:
the exit code, one short `error:` line, no traceback, and that nothing of value on disk
changed. Hostile inputs also get a bound on time and on the child's peak resident memory,
measured with os.wait4.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_util import assert_one_line_error, script

from softmax_cls.training.checkpoint import load_checkpoint

TESTS = Path(__file__).resolve().parent
MAX_LINE = 300
HOSTILE_RSS_MB = 300


@dataclass
class Finished:
    """A finished child: like subprocess.CompletedProcess, plus time and peak memory."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float


# Peak RSS of a command, measured by a small parent: a child forked from pytest itself would
# count pytest's own pages (hundreds of MB by the end of a suite) in its ru_maxrss.
MEASURE = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as handle:
    handle.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code if code >= 0 else 128 - code)
"""


def start(argv: list[str], cwd: Path | None = None, without_root_powers: bool = False):
    out = tempfile.TemporaryFile(mode="w+")
    err = tempfile.TemporaryFile(mode="w+")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1"}
    if without_root_powers:  # root, but bound by file permissions like any user
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    # a session of its own: a timeout kills the command with its children (run_measured's
    # parent and the command it measures), not the parent alone, which left the command behind
    process = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd, env=env, text=True,
                               start_new_session=True)
    return process, out, err, time.monotonic()


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def finish(started, timeout: float = 120) -> Finished:
    process, out, err, began = started
    timer = threading.Timer(timeout, _kill_group, (process,))
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - began
    out.seek(0)
    err.seek(0)
    return Finished(process.returncode, out.read(), err.read(), seconds, usage.ru_maxrss / 1024)


def run_measured(name: str, *args: str, cwd: Path | None = None, timeout: float = 120,
                 without_root_powers: bool = False) -> Finished:
    """Run a console script; peak_mb is its own peak RSS, measured by MEASURE."""
    with tempfile.TemporaryDirectory() as scratch:
        rss_file = Path(scratch) / "maxrss"
        argv = [sys.executable, "-c", MEASURE, str(rss_file), script(name), *args]
        result = finish(start(argv, cwd, without_root_powers), timeout)
        if not rss_file.exists():  # the timer killed the measuring parent
            raise AssertionError(f"{name} {' '.join(args)}: killed after {timeout:g} s")
        result.peak_mb = int(rss_file.read_text()) / 1024
    return result


# A child running a softmax-cls command on synthetic data (10 classes, 30,000 training rows)
# in place of CIFAR, exactly as the console script would otherwise run it.
LAUNCHER = """
import sys
sys.path.insert(0, {tests!r})
from conftest import separable_data
from softmax_cls import cli
from softmax_cls.training import runs
data = separable_data(n_train={n_train}, n_test=100, classes=10, seed=0)
runs.load_config_data = lambda config, progress=True, **kw: data
sys.argv = [{command!r}, *{args!r}]
getattr(cli, {function!r})()
"""


def command_argv(function: str, *args: str, n_train: int = 30000) -> list[str]:
    code = LAUNCHER.format(tests=str(TESTS), n_train=n_train, command=function,
                           args=list(args), function=function)
    return [sys.executable, "-c", code]


def train(*args: str, cwd: Path | None = None, n_train: int = 600, timeout: float = 120
          ) -> Finished:
    return finish(start(command_argv("train_command", *args, n_train=n_train), cwd), timeout)


def one_line(result: Finished, code: int, *needles: str) -> str:
    line = assert_one_line_error(result, code, *needles)
    assert len(line) <= MAX_LINE, line
    return line


def assert_bounded(result: Finished, seconds: float = 20) -> None:
    assert result.seconds < seconds, result.seconds
    assert result.peak_mb < HOSTILE_RSS_MB, result.peak_mb


def write_config(path: Path, text: str = "") -> Path:
    path.write_text("data: {val_size: 100}\noptim: {epochs: 3, batch_size: 64, lr: 0.01}\n"
                    + text)
    return path


def contents(folder: Path) -> dict[str, bytes]:
    """Every file of `folder` but the lock file (which holds the last holder's pid)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != ".lock"}


# --- hostile archives ----------------------------------------------------------------------


def bomb_archive(path: Path, declared: int, *, pax: bool = False) -> Path:
    """A .tar.gz whose class-name member (or a pax header) really holds `declared` zero bytes,
    compressed to about declared / 1000, written without holding it in memory."""
    folder = "cifar-10-batches-bin"
    info = tarfile.TarInfo(f"{folder}/batches.meta.txt")
    info.size = declared
    if pax:
        info = tarfile.TarInfo("././@PaxHeader")
        info.type = tarfile.XHDTYPE
        info.size = declared
    header = info.tobuf(format=tarfile.USTAR_FORMAT if not pax else tarfile.GNU_FORMAT)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as handle:
        handle.write(compressor.compress(header))
        zeros = bytes(1 << 22)
        remaining = declared + (-declared) % 512
        while remaining:
            chunk = zeros[:min(remaining, len(zeros))]
            handle.write(compressor.compress(chunk))
            remaining -= len(chunk)
        handle.write(compressor.compress(bytes(1024)))
        handle.write(compressor.flush())
    return path


@pytest.mark.parametrize("pax", [False, True], ids=["names member", "pax header"])
def test_archive_bomb_is_refused_before_it_is_read(tmp_path, pax):
    archive = bomb_archive(tmp_path / "cifar-10-binary.tar.gz", 2 << 30, pax=pax)
    assert archive.stat().st_size < 16 << 20  # a few MB that expand to 2 GB
    root = tmp_path / "data"
    result = run_measured("softmax-download", "--archive", str(archive), "--root", str(root),
                          "--quiet")
    one_line(result, 1, str(archive))
    assert_bounded(result, seconds=15)
    assert not root.exists()  # nothing extracted is left, nor the root the command made
    assert archive.stat().st_size < 16 << 20  # the user's archive is untouched


# --- hostile YAML ---------------------------------------------------------------------------


def laughs(levels: int = 30) -> str:
    """A billion-laughs alias chain in flow style: 2**30 items once expanded."""
    text = "[&a0 [1, 1]"
    for level in range(1, levels):
        text += f", &a{level} [*a{level - 1}, *a{level - 1}]"
    return text + "]"


@pytest.mark.parametrize("where", ["config", "set"])
def test_yaml_alias_chain_is_refused_without_expanding(tmp_path, where):
    config = tmp_path / "c.yaml"
    if where == "config":
        config.write_text(f"optim:\n  lr: {laughs()}\n")
        args = ["--config", str(config)]
    else:
        config.write_text("seed: 1\n")
        args = ["--config", str(config), "--set", f"optim.lr={laughs()}"]
    result = run_measured("softmax-train", *args, cwd=tmp_path)
    one_line(result, 2, "not allowed in a config")
    assert_bounded(result, seconds=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_yaml_nested_thousands_deep_is_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optim: " + "[" * 5000 + "]" * 5000 + "\n")
    result = run_measured("softmax-train", "--config", str(config), cwd=tmp_path)
    one_line(result, 2, "nested more than", str(config))
    assert_bounded(result, seconds=10)


def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: 0.1\nseed: 1\noptim:\n  lr: 0.2\n")
    result = run_measured("softmax-train", "--config", str(config), cwd=tmp_path)
    one_line(result, 2, "'optim' is given twice (lines 1 and 4)")


def test_a_huge_value_is_summarised_not_quoted(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: [" + ", ".join(["1"] * 200_000) + "]\n")
    result = run_measured("softmax-train", "--config", str(config), cwd=tmp_path)
    one_line(result, 2, "optim.lr: must be a number, got a list of 200000 items")


# --- signals --------------------------------------------------------------------------------


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, "the trainer ended early"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def long_run(tmp_path: Path, out: Path, *extra: str, quiet: bool = True):
    config = tmp_path / "long.yaml"
    config.write_text("data: {val_size: 100}\noptim: {epochs: 200, batch_size: 32}\n")
    args = ["--config", str(config), "--out", str(out), *extra] + (["-q"] if quiet else [])
    return start(command_argv("train_command", *args))


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "progress bar"])
def test_sigterm_mid_epoch_saves_and_says_how_to_resume(tmp_path, quiet):
    out = tmp_path / "run"
    started = long_run(tmp_path, out, quiet=quiet)
    wait_for(out / "history.jsonl", started[0])
    started[0].send_signal(signal.SIGTERM)
    result = finish(started)
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr
    last = out / "last.npz"
    if quiet:
        one_line(result, 143, "terminated", f"--resume {last}")
    else:  # the bar was closed with its own line end before the error line
        assert f"\nerror: terminated: {last}" in result.stderr
        assert result.stderr.rstrip("\n").count("\n") >= 1
    saved = load_checkpoint(last)
    assert saved.state.epoch >= 1
    assert len((out / "history.jsonl").read_text().splitlines()) == saved.state.epoch
    assert not (out / "summary.json").exists()


# --- one run per folder ---------------------------------------------------------------------


def test_two_trainers_on_one_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    first = long_run(tmp_path, out, "--set", "seed=1")
    wait_for(out / "last.npz", first[0])
    second = train("--config", str(write_config(tmp_path / "b.yaml", "seed: 2\n")), "--out",
                   str(out), "-q")
    line = one_line(second, 1, str(out), "in use by process", "another --out")
    assert str(first[0].pid) in line
    first[0].send_signal(signal.SIGTERM)
    assert finish(first).returncode == 143
    config = (out / "config.yaml").read_text()
    assert "seed: 1" in config
    for name in ("last.npz", "best.npz"):
        if name == "last.npz" or (out / name).exists():
            assert load_checkpoint(out / name).config_yaml == config


def test_two_processes_preparing_one_data_root_both_verify(tmp_path):
    """The same real command twice at once on one root: both end with verified data."""
    from fake_cifar import make_fake

    fake = make_fake()
    archive = fake.write(tmp_path / fake.spec.archive_name)
    root = tmp_path / "data"
    started = tmp_path / "started"
    started.mkdir()
    code = f"""
import os, pathlib, sys, time
sys.path.insert(0, {str(TESTS)!r})
from fake_cifar import make_fake
from softmax_cls.data import fetch as d
spec = make_fake().spec
started = pathlib.Path({str(started)!r})
(started / str(os.getpid())).touch()
slow = d.safe_extract
def extract(*args, **kwargs):
    # hold the lock until the other process is up, and a second more: however late it
    # started, it then asks for the lock while this one holds it
    deadline = time.monotonic() + 60
    while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    return slow(*args, **kwargs)
d.safe_extract = extract
folder = d.prepare_dataset(root={str(root)!r}, archive={str(archive)!r}, spec=spec,
                           progress=True)
print(folder)
"""
    both = [start([sys.executable, "-c", code]) for _ in range(2)]
    results = [finish(started) for started in both]
    for result in results:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(root / fake.spec.folder)
    # one waited; it names the holder's pid unless it looked in the microseconds between the
    # holder's flock and its writing the pid, then "another process"
    assert sum("waiting for process" in r.stderr or "waiting for another process" in r.stderr
               for r in results) == 1
    assert sorted(p.name for p in root.iterdir()) == [".lock", fake.spec.folder]


def test_a_new_run_never_lands_beside_an_old_one(tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml")
    assert train("--config", str(config), "--out", str(out), "-q").returncode == 0
    before = contents(out)
    refused = train("--config", str(config), "--out", str(out), "-q", "--set", "seed=5")
    one_line(refused, 2, "already holds a run", "--overwrite", "--resume")
    assert contents(out) == before
    # --overwrite removes the old run's files first: a run stopped before its first epoch
    # leaves only its own config and initial state, which eval does not take for a model
    started = long_run(tmp_path, out, "--overwrite")
    deadline = time.monotonic() + 60
    while (out / "summary.json").exists() or not (out / "last.npz").exists():
        assert started[0].poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    started[0].send_signal(signal.SIGTERM)
    assert finish(started).returncode == 143
    assert not {"summary.json"} & set(contents(out))
    if (out / "best.npz").exists():
        assert load_checkpoint(out / "best.npz").config_yaml == (out / "config.yaml").read_text()
    else:
        evaluated = run_measured("softmax-eval", str(out / "best.npz"))
        one_line(evaluated, 1, "checkpoint not found")


def test_resume_with_fewer_epochs_than_done_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    assert train("--config", str(write_config(tmp_path / "c.yaml")), "--out", str(out),
                 "-q").returncode == 0
    before = contents(out)
    result = train("--resume", str(out / "last.npz"), "--set", "optim.epochs=2", "-q")
    one_line(result, 2, "optim.epochs", ">= 3")
    assert contents(out) == before


def test_resume_keeps_best_npz_the_best_epochs_own_state(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text("data: {val_size: 100}\noptim: {epochs: 4, batch_size: 64, lr: 0.05, "
                      "schedule: {name: exponential}}\n")
    assert train("--config", str(config), "--out", str(out), "-q").returncode == 0
    best = load_checkpoint(out / "best.npz")
    assert best.state.epoch == best.state.best_epoch < 4  # separable: perfect early
    # the same run stopped at its best epoch has that epoch's own optimizer state
    short = tmp_path / "short"
    assert train("--config", str(config), "--out", str(short), "-q", "--set",
                 f"optim.epochs={best.state.epoch}").returncode == 0
    np.testing.assert_array_equal(best.state.velocity,
                                  load_checkpoint(short / "last.npz").state.velocity)
    before = (out / "best.npz").read_bytes()
    assert train("--resume", str(out / "last.npz"), "--set", "optim.epochs=6",
                 "-q").returncode == 0
    assert (out / "best.npz").read_bytes() == before  # no better epoch: untouched
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 6 and "epochs: 6" in (out / "config.yaml").read_text()


# --- data roots and hints -------------------------------------------------------------------


def test_eval_from_another_folder_never_downloads(tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    config = write_config(work / "c.yaml")  # data.root is the default, relative "data"
    assert train("--config", str(config), "--out", "run", "-q", cwd=work).returncode == 0
    assert f"root: {work / 'data'}" in (work / "run" / "config.yaml").read_text()
    result = run_measured("softmax-eval", str(work / "run" / "best.npz"), cwd=elsewhere)
    one_line(result, 1, str(work / "data"), "--root DIR", "--download")
    assert_bounded(result, seconds=20)
    assert not (elsewhere / "data").exists() and not (work / "data").exists()


OFFLINE = """
import socket, sys
def offline(*args, **kwargs):
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
socket.getaddrinfo = offline
from softmax_cls import cli
sys.argv = ["softmax-train", *{args!r}]
cli.train_command()
"""


def test_offline_first_command_fails_fast_with_hints_for_softmax_train(tmp_path):
    default = TESTS.parent / "configs" / "default.yaml"
    argv = [sys.executable, "-c", OFFLINE.format(args=["--config", str(default), "-q"])]
    result = finish(start(argv, tmp_path))
    line = one_line(result, 1, "cannot resolve host name", "--set data.root=DIR",
                    "data.archive=PATH", "copy it into data/", "data.url=URL")
    assert " --archive" not in line and " --url" not in line  # softmax-train has neither
    assert result.seconds < 10
    assert not (tmp_path / "data").exists()  # the data root it made is removed again


# --- gradient check -------------------------------------------------------------------------


def test_gradcheck_with_a_step_too_small_to_resolve_refuses():
    result = run_measured("softmax-gradcheck", "--step", "1e-300", "--samples", "20",
                          "--checks", "3")
    one_line(result, 2, "--step 1e-300", "no error could show")


def test_gradcheck_reports_errors_independent_of_the_tolerance():
    lines = []
    for tol in ("1e-7", "1e-2"):
        result = run_measured("softmax-gradcheck", "--samples", "30", "--checks", "20",
                              "--tol", tol)
        assert result.returncode == 0, result.stdout
        lines.append([re.sub(r"\(tolerance [^)]*\)", "", line)
                      for line in result.stdout.splitlines() if "relative error" in line])
    assert lines[0] == lines[1]


def test_gradcheck_passes_correct_gradients_at_two_samples_and_thousands_of_checks():
    # 3000 checks reach pixels the two samples share (std 0, scale 1000): the engines' folded
    # scores cancel terms 100x the loss, whose rounding the allowance must include (at 3000
    # the torch objective failed on one such pixel; its gradient agreed with loss_and_grad).
    result = run_measured("softmax-gradcheck", "--samples", "2", "--checks", "3000",
                          timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "gradient check passed" in result.stdout


# --- overrides and small messages -----------------------------------------------------------


def test_set_null_on_a_section_is_an_error(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    result = run_measured("softmax-train", "--config", str(config), "--set",
                          "optim.early_stopping=null", cwd=tmp_path)
    one_line(result, 2, "optim.early_stopping: is a section")


def test_set_a_mapping_merges_into_the_section(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    out = tmp_path / "run"
    assert train("--config", str(config), "--out", str(out), "-q", "--set",
                 "optim={lr: 0.02, epochs: 1}").returncode == 0
    written = (out / "config.yaml").read_text()
    assert "lr: 0.02" in written and "epochs: 1" in written
    assert "batch_size: 64" in written  # kept from the file, not reset


def test_coarse_labels_on_cifar10_is_a_config_error(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    result = run_measured("softmax-train", "--config", str(config), "--set",
                          "data.labels=coarse", cwd=tmp_path)
    one_line(result, 2, "data.labels", "cifar10 has no coarse labels")


def test_divergence_from_a_huge_l2_names_both_keys(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    result = train("--config", str(config), "--out", str(tmp_path / "run"), "-q", "--set",
                   "loss.reg=1e10")
    one_line(result, 1, "training diverged", "optim.lr", "loss.reg")


def test_divergence_from_huge_initial_weights_names_model_init_std(tmp_path):
    """Scores of weights drawn at std 5e36 overflow float32 in the first minibatch, before any
    step: the line blamed optim.lr and loss.reg alone."""
    config = write_config(tmp_path / "c.yaml")
    result = train("--config", str(config), "--out", str(tmp_path / "run"), "-q", "--set",
                   "model.init_std=5e36")
    one_line(result, 1, "training diverged in epoch 1", "model.init_std = 5e+36")


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()

    def mounted(options: str) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        return mount

    yield mounted
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_full_disk_names_the_file(tmp_path, small_tmpfs):
    out = small_tmpfs("size=600k") / "run"
    result = train("--config", str(write_config(tmp_path / "c.yaml")), "--out", str(out), "-q")
    line = one_line(result, 1, "No space left on device", str(out))
    assert ".tmp" not in line
    for name in ("last.npz", "best.npz"):
        if (out / name).exists():
            load_checkpoint(out / name)


def test_read_only_out_names_the_folder(tmp_path, small_tmpfs):
    out = small_tmpfs("size=1m,ro")
    result = train("--config", str(write_config(tmp_path / "c.yaml")), "--out", str(out), "-q")
    line = one_line(result, 1, str(out))
    assert ".tmp" not in line and "Read-only file system" in line


def test_unreadable_data_file_is_a_permission_error_not_damage(tmp_path):
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("root reads any file, and setpriv is not here to drop that power")
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in ("batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                 "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"):
        (folder / name).write_bytes(b"x")
    (folder / "batches.meta.txt").chmod(0o000)
    before = contents(folder)
    result = run_measured("softmax-download", "--root", str(tmp_path), "-q",
                          without_root_powers=os.geteuid() == 0)
    line = one_line(result, 1, "permission denied", str(folder / "batches.meta.txt"))
    assert "damaged" not in line and "--force" not in line
    assert contents(folder) == before


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_folder_in_a_data_roots_batch_files_is_refused_not_waited_on(tmp_path, kind):
    """Data roots may be shared: a fifo of a batch file's name was opened blocking, and
    softmax-download, softmax-train and softmax-eval waited on it for ever."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in ("batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                 "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"):
        if kind == "fifo":
            os.mkfifo(folder / name)
        else:
            (folder / name).mkdir()
    result = run_measured("softmax-download", "--root", ".", "-q", cwd=tmp_path, timeout=60)
    reason = "not a regular file" if kind == "fifo" else "is a folder"
    one_line(result, 1, "cifar-10-batches-bin/", reason)
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        path.name for path in folder.iterdir() if not path.is_file())  # nothing written


def test_a_damaged_root_holding_the_files_itself_names_no_force_that_refuses_it(tmp_path):
    """--root mine, a folder holding the batch files itself (not in cifar-10-batches-bin):
    its damage was to be fixed by 'softmax-download --force --root <mine's parent>', which
    downloads beside mine, leaving it damaged ('--force --root mine' is refused)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                 "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"):
        (folder / name).write_bytes(b"x")
    line = one_line(run_measured("softmax-download", "--root", "mine", "-q", cwd=tmp_path), 1,
                    "the copy in mine is damaged", "cifar-10-batches-bin")
    assert "--force" not in line
    (tmp_path / "data").mkdir()
    folder.rename(tmp_path / "data" / "cifar-10-batches-bin")
    one_line(run_measured("softmax-download", "--root", "data", "-q", cwd=tmp_path), 1,
             "softmax-download --force --root data")
    (tmp_path / "data").rename(tmp_path / "my data")  # the command pastes into a shell
    one_line(run_measured("softmax-download", "--root", "my data", "-q", cwd=tmp_path), 1,
             "softmax-download --force --root 'my data',")

def test_gzip_header_of_a_normal_archive_still_extracts(tmp_path):
    """The bounded reader reads what every real archive has: a plain tar, and gzip."""
    from fake_cifar import make_fake

    from softmax_cls.data.cifar import load_dataset

    fake = make_fake()
    plain = tmp_path / "plain.tar"
    plain.write_bytes(gzip.decompress(fake.archive))
    for archive in (plain, fake.write(tmp_path / "a.tar.gz")):
        data = load_dataset(root=tmp_path / archive.stem, archive=archive, spec=fake.spec,
                            progress=False)
        assert np.array_equal(data.train_images, fake.train_images)


def feature_files(folder: Path) -> Path:
    """train_X.npy / train_y.npy: 200 rows of 6 float32 features, 3 classes."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    np.save(folder / "train_X.npy", (rng.normal(0, 3, (3, 6))[y]
                                     + rng.standard_normal((200, 6))).astype(np.float32))
    np.save(folder / "train_y.npy", y)
    return folder / "train_X.npy"


@pytest.mark.parametrize("clip", ["1e308", "3.5e38"])
def test_a_loss_clip_beyond_float32_is_one_line_not_a_warning(tmp_path, clip):
    """-clip meets float32 scores: past float32's range it was accepted and overflowed to
    -inf (on CIFAR with numpy's RuntimeWarning, a line of the package's source, on stderr)."""
    X = feature_files(tmp_path)
    config = str(write_config(tmp_path / "c.yaml"))
    result = run_measured("softmax-train", "--config", config, "--set",
                          "data.dataset=features", "--set", f"data.train={X}", "--set",
                          "data.val_size=20", "--set", f"loss.clip={clip}", "--out",
                          str(tmp_path / "run"), "--quiet")
    one_line(result, 2, "loss.clip: must be <= 3.40282e+38")
    assert not (tmp_path / "run").exists()
    result = run_measured("softmax-train", "--config", config, "--set",
                          "data.dataset=features", "--set",
                          f"data.train={X}", "--set", "data.val_size=20", "--set",
                          "loss.clip=3e38", "--set", "optim.epochs=1", "--set",
                          "output.plots=false", "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("key", ["output.dir", "data.root"])
def test_a_nul_character_in_a_config_path_is_one_line(tmp_path, key):
    """YAML's "\\0" reaches a path: os functions raise ValueError (embedded null byte), which
    came out as a traceback from the run folder's cleanup."""
    section, name = key.split(".")
    config = tmp_path / "c.yaml"
    config.write_text(f'optim: {{epochs: 1}}\n{section}: {{{name}: "run\\0x"}}\n')
    result = run_measured("softmax-train", "--config", str(config), "--quiet", cwd=tmp_path)
    one_line(result, 2, f"{key}: must not hold a NUL character")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_an_export_folder_that_is_a_link_to_a_file_is_named_as_such(tmp_path):
    """-o LINK/m.npz where LINK points at a file: it was named 'a link to FILE, which does
    not exist' (the file is there, it is no folder)."""
    X = feature_files(tmp_path)
    config = str(write_config(tmp_path / "c.yaml"))
    train = run_measured("softmax-train", "--config", config, "--set", "data.dataset=features",
                         "--set", f"data.train={X}", "--set", f"data.test={X}", "--set",
                         "data.val_size=20", "--quiet", "--out", str(tmp_path / "run"))
    assert train.returncode == 0, train.stderr
    (tmp_path / "link").symlink_to(X)
    result = run_measured("softmax-export", str(tmp_path / "run" / "best.npz"), "--format",
                          "npz", "-o", str(tmp_path / "link" / "m.npz"))
    line = one_line(result, 1, f"link: is a link to {X}, a file, not a folder")
    assert "does not exist" not in line

def test_an_output_folder_that_is_a_link_to_nothing_is_named_as_such(tmp_path):
    """--out / -o / --root naming a link whose target is missing: mkdir's bare "File exists"
    said nothing of the link; each command names it and its target, and writes nothing."""
    X = feature_files(tmp_path)
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    config = str(write_config(tmp_path / "c.yaml"))
    train = ("softmax-train", "--config", config, "--set", "data.dataset=features", "--set",
             f"data.train={X}", "--set", f"data.test={X}", "--set", "data.val_size=20",
             "--quiet")
    needle = f"is a link to {tmp_path / 'gone'}, which does not exist"
    one_line(run_measured(*train, "--out", str(tmp_path / "out")), 1, "out: " + needle)
    assert run_measured(*train, "--out", str(tmp_path / "run")).returncode == 0
    for command in (("softmax-plot", str(tmp_path / "run"), "--out", str(tmp_path / "out")),
                    ("softmax-export", str(tmp_path / "run" / "best.npz"), "--format", "npz",
                     "-o", str(tmp_path / "out" / "m.npz")),
                    ("softmax-download", "--root", str(tmp_path / "out"))):
        one_line(run_measured(*command), 1, "out: " + needle)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: c.yaml\ntrials: 1\nset: {{data.dataset: features, data.train: "
                     f"'{X}', data.val_size: 20}}\nspace: {{optim.lr: {{choice: [0.1]}}}}\n")
    one_line(run_measured("softmax-sweep", str(sweep), "--out", str(tmp_path / "out")), 1,
             "out: " + needle)
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("args", [
    ("softmax-train", "--config", "c.yaml", "--out", ""),
    ("softmax-train", "--config", ""),
    ("softmax-train", "--resume", ""),
    ("softmax-eval", ""),
    ("softmax-predict", "best.npz", "x.png", ""),
    ("softmax-plot", "run", "--out", ""),
    ("softmax-plot", ""),
    ("softmax-sweep", ""),
    ("softmax-download", "--root", ""),
    ("softmax-export", "best.npz", "--format", "npz", "-o", ""),
], ids=lambda args: " ".join(args))
def test_an_empty_path_is_one_line_not_the_current_folder(tmp_path, args):
    """'' names no file (POSIX: ENOENT), but Path('') is '.': --out '' trained into or drew
    the plots into the current folder, and softmax-predict read every image under it."""
    write_config(tmp_path / "c.yaml")
    result = run_measured(*args, cwd=tmp_path)
    one_line(result, 2, "is empty; name a file or folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


@pytest.mark.parametrize("args", [
    ("softmax-eval", "run"),
    ("softmax-predict", "run", "x.png"),
    ("softmax-export", "run", "--format", "npz", "-o", "model.npz"),
    ("softmax-train", "--resume", "run"),
], ids=lambda args: " ".join(args))
def test_a_run_folder_given_for_a_checkpoint_is_one_line_naming_its_checkpoints(tmp_path, args):
    """A run folder where a checkpoint file is wanted: click's line said only 'is a
    directory'; the line names the folder's best.npz and last.npz (last.npz first for
    --resume, the one that continues a run), and nothing is written."""
    (tmp_path / "run").mkdir()
    for name in ("best.npz", "last.npz"):
        (tmp_path / "run" / name).write_bytes(b"")
    result = run_measured(*args, cwd=tmp_path)
    held = ["'run/best.npz'", "'run/last.npz'"]
    if "--resume" in args:
        held.reverse()
    one_line(result, 2, f"'run' is a folder; name a checkpoint in it: {' or '.join(held)}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["best.npz", "last.npz", "run"]


def test_a_sweep_whose_data_cannot_be_read_leaves_no_folder_behind(tmp_path):
    """The data is read before the folder is claimed: a sweep file with a wrong data path
    left a sweep folder (study.json, sweep.yaml, a journal) with no trials, and the sweep
    file corrected (as the error line said) was then refused as 'another sweep'."""
    write_config(tmp_path / "c.yaml")
    sweep = tmp_path / "sweep.yaml"
    text = ("base: c.yaml\nsampler: grid\nset: {{data.dataset: features, data.train: '{X}', "
            "data.val_size: 20, optim.epochs: 1, output.plots: false}}\n"
            "space: {{optim.lr: {{grid: [0.1]}}}}\n")
    sweep.write_text(text.format(X=tmp_path / "missing_X.npy"))
    out = tmp_path / "sweeps" / "s"
    result = run_measured("softmax-sweep", str(sweep), "--out", str(out), "--quiet")
    one_line(result, 1, "missing_X.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "sweep.yaml"]
    sweep.write_text(text.format(X=feature_files(tmp_path)))
    result = run_measured("softmax-sweep", str(sweep), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert (out / "best.npz").is_file()


@pytest.mark.parametrize("command", ["softmax-train", "softmax-sweep"])
def test_a_config_file_that_is_no_mapping_is_named(tmp_path, command):
    """A file of plain text or a list given as a config (or a sweep's base): the line said
    'config: expected a mapping', not which file."""
    (tmp_path / "notes.yaml").write_text("remember the milk\n")
    (tmp_path / "sweep.yaml").write_text("base: notes.yaml\nspace: {optim.lr: {choice: [1]}}\n")
    args = (("--config", "notes.yaml") if command == "softmax-train" else ("sweep.yaml",))
    result = run_measured(command, *args, cwd=tmp_path)
    line = one_line(result, 2, "notes.yaml: expected a mapping of keys at the top level")
    assert line.startswith("error: config "), line


def test_a_sweeps_missing_data_names_the_sweep_files_keys_not_set_options(tmp_path):
    """softmax-sweep has no --set: its data hints name the sweep file's set: keys."""
    write_config(tmp_path / "c.yaml")
    (tmp_path / "sweep.yaml").write_text(
        "base: c.yaml\ntrials: 1\nset: {data.root: nodata, data.download: false}\n"
        "space: {optim.lr: {choice: [0.1]}}\n")
    result = run_measured("softmax-sweep", "sweep.yaml", "--out", "s", cwd=tmp_path)
    line = one_line(result, 1, "set in the sweep file data.root: DIR where it is")
    assert "--set" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "sweep.yaml"]
