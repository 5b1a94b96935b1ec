"""The pieces that write a run folder, each alone: a checkpoint holds the state it was saved
from with its members stored, atomic_write syncs the file before its rename, the folder lock
is released when its block ends, read_capped's cap is inclusive, and SIGTERM's handler kills
at the second signal and is put back after."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config

from softmax_cls import fsutil
from softmax_cls.config import config_to_yaml
from softmax_cls.fsutil import (
    FileTooLarge,
    FolderBusy,
    NotOwnFile,
    atomic_write,
    folder_lock,
    missing_folders,
    open_own_file,
    read_capped,
    removed_on_error,
)
from softmax_cls.interrupts import Terminated, sigterm_as_interrupt, stop_word_and_code
from softmax_cls.math.preprocess import Preprocessor
from softmax_cls.training.checkpoint import load_checkpoint, save_checkpoint
from softmax_cls.training.fit import TrainState

# --- a checkpoint as written ------------------------------------------------------------------


def distinct_state() -> TrainState:
    """A state of 3 classes by 5 features whose every array and count differs from the others,
    so that a field written from another one is seen."""
    arrays = [np.full((3, 5), value, dtype=np.float32) for value in (1.0, 2.0, 3.0, 4.0)]
    history = [{"epoch": e, "val_acc": 0.25 * e} for e in (1, 2, 3)]
    return TrainState(*arrays, epoch=3, best_epoch=1, best_val_acc=0.25, epochs_since_best=2,
                      history=history)


def save(path: Path, state: TrainState, tmp_path: Path, **kwargs) -> None:
    pre = Preprocessor(mean=np.arange(4, dtype=np.float64), scale=np.full(4, 0.5))
    save_checkpoint(path, state, pre, ("a", "b", "c"), config_to_yaml(small_config(tmp_path)),
                    {"train.npz": "0" * 32}, "stopped here", np.array([7, 2, 5]), **kwargs)


def test_a_checkpoint_holds_every_field_of_the_state_it_was_saved_from(tmp_path):
    state = distinct_state()
    save(tmp_path / "last.npz", state, tmp_path)
    loaded = load_checkpoint(tmp_path / "last.npz")
    for key, value in (("W", 1.0), ("velocity", 2.0), ("average", 3.0), ("best_W", 4.0)):
        np.testing.assert_array_equal(getattr(loaded.state, key), np.full((3, 5), value))
    assert (loaded.state.epoch, loaded.state.best_epoch, loaded.state.best_val_acc,
            loaded.state.epochs_since_best) == (3, 1, 0.25, 2)
    assert loaded.state.history == state.history
    assert loaded.status == "stopped here"
    assert loaded.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(loaded.val_rows, [7, 2, 5])
    assert loaded.val_rows.dtype == np.int64
    # best.npz: the model weights W are the best epoch's, the rest the same state's
    save(tmp_path / "best.npz", state, tmp_path, W=state.best_W)
    best = load_checkpoint(tmp_path / "best.npz")
    np.testing.assert_array_equal(best.W, np.full((3, 5), 4.0))
    np.testing.assert_array_equal(best.state.velocity, np.full((3, 5), 2.0))


def test_a_checkpoints_members_are_stored_not_compressed(tmp_path):
    """Stored members are in the file as they are: any size that fits in memory loads, where
    a deflated member is held to the caps of a compressed checkpoint (256 MB)."""
    save(tmp_path / "last.npz", distinct_state(), tmp_path)
    with zipfile.ZipFile(tmp_path / "last.npz") as archive:
        methods = {info.filename: info.compress_type for info in archive.infolist()}
    assert len(methods) == 11
    assert set(methods.values()) == {zipfile.ZIP_STORED}


# --- atomic_write -----------------------------------------------------------------------------


def test_atomic_write_syncs_the_file_before_its_rename_and_the_folder_after(tmp_path,
                                                                           monkeypatch):
    """Only a power cut shows a missing fsync: the calls are recorded instead, with the file
    each synced descriptor is open on."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        calls.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    monkeypatch.setattr(fsutil.os, "replace", replace)
    target = tmp_path / "summary.json"
    with atomic_write(target, "w") as handle:
        handle.write("{}")
        (temporary,) = [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    assert calls == [("fsync", str(temporary)), ("replace", str(target)),
                     ("fsync", str(tmp_path))]
    assert target.read_text() == "{}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["summary.json"]


def test_a_file_written_atomically_has_the_mode_open_gives_it(tmp_path):
    """mkstemp makes its file 0600; the file is given open()'s 0666 less the umask."""
    mask = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "config.yaml", "w") as handle:
            handle.write("seed: 1\n")
    finally:
        os.umask(mask)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("number", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_a_folder_that_cannot_be_written_is_named_with_the_file(tmp_path, monkeypatch, number):
    """The temporary file cannot be made (a read-only or foreign folder; root passes any
    mode, so the error is raised here): the error names the file asked for and its folder,
    never the temporary name."""
    def refused(*args, **kwargs):
        raise OSError(number, os.strerror(number), str(tmp_path / ".model.npz.x1y2.tmp"))

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", refused)
    with pytest.raises(OSError) as caught, atomic_write(tmp_path / "model.npz"):
        pass
    assert caught.value.filename == str(tmp_path / "model.npz")
    assert caught.value.strerror == f"cannot write in {tmp_path}: {os.strerror(number)}"


# --- the folder lock --------------------------------------------------------------------------


def test_the_folder_lock_is_released_when_its_block_ends(tmp_path):
    """A process that runs one command after another on a folder (train_run twice, a sweep's
    trials) takes its lock again; while one block holds it, another is refused."""
    with folder_lock(tmp_path, wait=False):
        with pytest.raises(FolderBusy, match=f"in use by process {os.getpid()}"):
            with folder_lock(tmp_path, wait=False):
                pass
    with folder_lock(tmp_path, wait=False):
        assert (tmp_path / ".lock").read_text() == f"process {os.getpid()}\n"


def test_the_lock_file_holds_its_holder_alone_after_a_longer_one(tmp_path):
    (tmp_path / ".lock").write_text("process 123456789012345678\n")
    with folder_lock(tmp_path, wait=False):
        assert (tmp_path / ".lock").read_text() == f"process {os.getpid()}\n"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated, OSError])
def test_a_failed_or_interrupted_block_removes_the_folders_it_made(tmp_path, stop):
    """runs/a/b made (and locked) by a block that fails, or is stopped by Ctrl-C or SIGTERM
    before it wrote a file: neither folder is left; the folder that was there is."""
    folder = tmp_path / "runs" / "a" / "b"
    with pytest.raises(stop), removed_on_error(missing_folders(folder)):
        with folder_lock(folder, wait=False):
            raise stop()
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_fifo_opened_for_writing_in_place_is_refused_as_not_a_file(tmp_path):
    """A fifo with no reader fails a non-blocking open for writing (ENXIO) before it can be
    looked at: refused as not a regular file, like a fifo opened for reading."""
    fifo = tmp_path / "archive.part"
    os.mkfifo(fifo)
    for flags in (os.O_WRONLY | os.O_CREAT, os.O_RDONLY):
        with pytest.raises(NotOwnFile, match="is not a regular file"):
            open_own_file(fifo, flags)


# --- read_capped ------------------------------------------------------------------------------


def test_read_capped_reads_a_file_of_exactly_its_cap_and_refuses_one_byte_more(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"x" * 100)
    assert read_capped(path, 100) == b"x" * 100
    with pytest.raises(FileTooLarge, match="100 bytes, more than the 99"):
        read_capped(path, 99)


def test_read_capped_refuses_a_file_longer_than_its_size_said():
    """A file that grows after its size is read is caught by reading one byte past the cap:
    a /proc file, of size 0 and hundreds of bytes, is such a file without a race."""
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(FileTooLarge, match="more than the 10 bytes"):
        read_capped("/proc/self/status", 10)


# --- SIGTERM ----------------------------------------------------------------------------------


def test_sigterm_raises_terminated_and_the_previous_handler_is_put_back():
    def previous(signum, frame):
        raise AssertionError("the previous handler ran inside the block")

    before = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(Terminated) as caught, sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop_word_and_code(caught.value) == ("terminated", 143)
        assert stop_word_and_code(KeyboardInterrupt()) == ("interrupted", 130)
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, before)


# A child that takes SIGTERM as Terminated, then, while handling it (saving), gets a second
# SIGTERM: it must die of it at once, not raise again or go on.
SECOND_SIGTERM = """
import os, signal, time
from softmax_cls.interrupts import Terminated, sigterm_as_interrupt
with sigterm_as_interrupt():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    except Terminated:
        print("first", flush=True)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        except BaseException as exc:
            print("raised", type(exc).__name__, flush=True)
print("went on", flush=True)
"""


def test_a_second_sigterm_while_the_first_is_handled_kills_at_once():
    child = subprocess.run([sys.executable, "-c", SECOND_SIGTERM], capture_output=True,
                           text=True, timeout=60)
    assert child.stdout == "first\n", child.stderr
    assert child.returncode == -signal.SIGTERM
