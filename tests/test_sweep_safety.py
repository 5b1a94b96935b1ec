"""Sweeps in shared folders and storages, and hostile input to softmax-sweep: secrets are
masked, folders a sweep did not write are refused, two commands on one study draw distinct
points, an interrupted sweep resumes promptly, and bombs (huge grids, sweep files, trials.csv
cells) are one error line in bounded time and memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cli_util import assert_one_line_error, run
from sweep_util import read_trials, write_runner
from test_hostile import run_measured

from softmax_cls.sweep.study import masked, open_storage_for

optuna = pytest.importorskip("optuna")

FAST = {"engine": "numpy", "data.val_size": 100, "optim.epochs": 3, "augment.hflip": False,
        "optim.schedule.name": "constant"}
PEAK_MIB = 400  # the command's own imports (numpy, optuna) take about 150 MiB
BOMB_SECONDS = 60  # generous: the machine is shared; a bomb would take far longer or crash


def write_sweep(folder: Path, name: str = "sweep.yaml", **fields) -> Path:
    raw = {"set": dict(FAST), "sampler": "random", "trials": 2, "seed": 0, "pruner": "none",
           "space": {"optim.lr": {"log_uniform": [1.0e-4, 1.0e-1]},
                     "loss.reg": {"log_uniform": [1.0e-6, 1.0e-2]}}}
    raw.update(fields)
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def run_runner(command: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


# --- secrets ---------------------------------------------------------------------------------

def test_masked_hides_every_password_in_a_text():
    text = ("--storage postgresql://ann:s3cr%40t@db:5432/x and mysql+pymysql://bob:pw@h/y, "
            "sqlite:///tmp/a.db, redis://:only@h:6379 tcp://host:8786")
    assert masked(text) == ("--storage postgresql://ann:***@db:5432/x and "
                            "mysql+pymysql://bob:***@h/y, sqlite:///tmp/a.db, redis://:***@h:6379 "
                            "tcp://host:8786")


def test_a_storage_password_is_never_printed(tmp_path):
    path = write_sweep(tmp_path)
    for url in ("postgresql://ann:hunter2@127.0.0.1:9/db", "nosuchdb://ann:hunter2@host/db"):
        result = run("softmax-sweep", str(path), "--out", str(tmp_path / "out"), "--storage",
                     url, "--quiet", cwd=tmp_path)
        line = assert_one_line_error(result, 1, "cannot open the study", "ann:***@")
        assert "hunter2" not in result.stdout + result.stderr, line


# --- folders a sweep did not write ------------------------------------------------------------

def test_a_training_run_folder_is_refused_and_left_as_it_was(tmp_path):
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    for name in ("config.yaml", "history.jsonl", "best.npz", "last.npz", "summary.json"):
        (run_folder / name).write_bytes(f"the run's {name}".encode())
    before = snapshot(run_folder)
    result = run("softmax-sweep", str(write_sweep(tmp_path)), "--out", str(run_folder),
                 "--quiet", cwd=tmp_path)
    assert_one_line_error(result, 2, f"--out {run_folder} holds a training run")
    assert snapshot(run_folder) == before
    assert sorted(p.name for p in run_folder.iterdir()) == sorted(before)


def test_a_folder_of_other_files_is_refused(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "best.npz").write_text("not a sweep's")
    result = run("softmax-sweep", str(write_sweep(tmp_path)), "--out", str(folder), "--quiet",
                 cwd=tmp_path)
    assert_one_line_error(result, 2, "holds files a sweep did not write (notes.txt)")
    assert sorted(p.name for p in folder.iterdir()) == ["best.npz", "notes.txt"]


@pytest.mark.parametrize("names, message", [
    (["notes.tmp"], "holds files a sweep did not write (notes.tmp)"),
    ([".notes.txt.x1.tmp"], "holds files a sweep did not write (.notes.txt.x1.tmp)"),
    (["a", "b", "c"], "holds files a sweep did not write (a, b, c): "),
    (["a", "b", "c", "d"], "holds files a sweep did not write (a, b, c, ...): "),
    (["config.yaml"], "holds a training run (config.yaml)"),
    ([".trials.csv.x1.tmp", "study.journal"], None)])
def test_which_folders_a_sweep_takes_for_its_own(tmp_path, names, message):
    """A temporary file is a sweep's only when it is one of a sweep's files' (a killed
    atomic_write's); the refusal names the first three files it did not write, and a run's
    config.yaml alone is a training run's folder."""
    from softmax_cls.errors import ConfigError
    from softmax_cls.sweep.folder import check_folder

    for name in names:
        (tmp_path / name).write_text("")
    if message is None:
        check_folder(tmp_path, "sweep", None)
        return
    with pytest.raises(ConfigError) as caught:
        check_folder(tmp_path, "sweep", None)
    assert message in str(caught.value)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A sweep folder of 2 finished trials of `sweep.yaml` (study "sweep")."""
    tmp_path = tmp_path_factory.mktemp("finished")
    folder = tmp_path / "out"
    result = run_runner([*write_runner(tmp_path), str(write_sweep(tmp_path)), "--out",
                         str(folder), "--quiet", "--no-plots"])
    assert result.returncode == 0, result.stderr
    return tmp_path, folder


def test_a_sweep_file_of_another_name_is_refused_before_writing(finished_sweep):
    tmp_path, folder = finished_sweep
    before = snapshot(folder)
    assert {"sweep.yaml", "trials.csv", "summary.json", "best.npz", "study.json"} <= set(before)
    other = write_sweep(tmp_path, name="other.yaml", seed=7)
    result = run("softmax-sweep", str(other), "--out", str(folder), "--quiet", cwd=tmp_path)
    assert_one_line_error(result, 2, "holds the sweep of study 'sweep'", "--study sweep")
    assert snapshot(folder) == before
    # the folder's study.journal holds that one study, so a folder without study.json (one of
    # a sweep killed before writing it) is refused for another study too
    (folder / "study.json").unlink()
    try:
        result = run("softmax-sweep", str(other), "--out", str(folder), "--quiet",
                     cwd=tmp_path)
        assert_one_line_error(result, 2, "holds the study 'sweep', not 'other'")
        assert snapshot(folder) == {k: v for k, v in before.items() if k != "study.json"}
        result = run("softmax-sweep", str(tmp_path / "sweep.yaml"), "--out", str(folder),
                     "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--quiet", cwd=tmp_path)
        assert_one_line_error(result, 2, "holds a sweep in its own study.journal")
    finally:
        (folder / "study.json").write_bytes(before["study.json"])


def test_another_sweep_of_the_same_name_does_not_rewrite_sweep_yaml(finished_sweep):
    tmp_path, folder = finished_sweep
    before = snapshot(folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    changed = write_sweep(elsewhere, seed=5)  # the same name, sweep.yaml: the same study
    result = run("softmax-sweep", str(changed), "--out", str(folder), "--quiet", cwd=tmp_path)
    assert_one_line_error(result, 2, "holds another sweep (seed differ)")
    assert snapshot(folder) == before


@pytest.mark.parametrize("damage", ["labels fifo", "rows fifo", "rows truncated"])
def test_a_damaged_data_cache_is_one_error_before_any_trial(finished_sweep, tmp_path, damage):
    """Sweep folders may be shared: a fifo of a cache file's name held every trial in
    np.load for ever, and truncated rows failed each trial, the sweep ending 0."""
    import os
    import shutil

    source, finished = finished_sweep
    folder = tmp_path / "out"
    shutil.copytree(finished, folder)
    name = "train_labels.npy" if damage.startswith("labels") else "train_images.npy"
    cache_file = folder / "cache" / name
    if damage.endswith("fifo"):
        cache_file.unlink()
        os.mkfifo(cache_file)
    else:
        os.truncate(cache_file, 100)
    before = snapshot(folder)
    result = run_runner([*write_runner(tmp_path), str(source / "sweep.yaml"), "--out",
                         str(folder), "--trials", "3", "--quiet", "--no-plots"], timeout=90)
    assert_one_line_error(result, 1, "unreadable data cache", "delete the folder and rerun")
    assert snapshot(folder) == before


def test_a_folder_of_a_study_in_another_storage_is_refused(finished_sweep, tmp_path):
    source, folder = finished_sweep
    before = snapshot(folder)
    result = run("softmax-sweep", str(source / "sweep.yaml"), "--out", str(folder),
                 "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--quiet", cwd=tmp_path)
    assert_one_line_error(result, 2, "holds the sweep of study 'sweep' in its own "
                          "study.journal")
    assert snapshot(folder) == before


# --- two commands on one study ---------------------------------------------------------------

def lr_values(trials) -> list[float]:
    """The searched lr of each trial that drew its own point (not re-queued copies)."""
    return [t.params["optim.lr"] for t in trials
            if "optim.lr" in t.params and "requeue_of" not in t.user_attrs]


@pytest.mark.parametrize("shared", ["folder", "storage"])
def test_two_commands_on_one_study_draw_distinct_points(tmp_path, shared):
    """Two commands at once on one sweep folder, or in two folders on one --storage (the
    README's several-commands mode): every trial drew its own point."""
    n = 8
    path = write_sweep(tmp_path, trials=n, set={**FAST, "optim.epochs": 2})
    runner = write_runner(tmp_path)
    url = f"sqlite:///{tmp_path / 'study.db'}"

    def command(name: str) -> list[str]:
        if shared == "folder":
            return [*runner, str(path), "--out", str(tmp_path / "out"), "--quiet",
                    "--no-plots"]
        return [*runner, str(path), "--out", str(tmp_path / name), "--storage", url,
                "--quiet", "--no-plots"]

    if shared == "storage":  # one command creates the database first, as the README says
        created = run_runner([*command("a"), "--trials", "1"])
        assert created.returncode == 0, created.stderr
    both = [subprocess.Popen(command(name), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for name in ("a", "b")]
    outputs = [process.communicate(timeout=240) for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    storage = url if shared == "storage" else open_storage_for(tmp_path / "out")
    trials = optuna.load_study(study_name="sweep", storage=storage).trials
    drawn = lr_values(trials)
    print(f"{shared}: {len(drawn)} trials drew {len(set(drawn))} distinct points")
    assert len(drawn) >= n
    assert len(set(drawn)) == len(drawn)
    drivers = {json.dumps(t.user_attrs["driver"], sort_keys=True) for t in trials}
    assert len(drivers) == (2 if shared == "folder" else 3)


def test_a_command_writing_the_cache_another_has_written_keeps_its_data_json(tmp_path,
                                                                           monkeypatch):
    """Two commands on one sweep folder that both found no data cache both write it: the
    second's write removed the first's data.json, so the first, reading it back, had none
    and crashed ('NoneType' object is not subscriptable), and a worker could find no cache.
    The same data's data.json now stays while its rows are written again, and each command
    keeps the data.json it wrote."""
    import numpy as np
    from test_features import linear_data, write_config

    from softmax_cls.config import load_config
    from softmax_cls.sweep import driver, worker

    X, y = linear_data(n=300, d=4)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    config = load_config(write_config(tmp_path, train=str(tmp_path / "train.npz")))
    first = driver.prepare_cache(tmp_path, config, progress=False)
    meta_path = tmp_path / "cache" / worker.CACHE_META
    assert first["fingerprint"] and meta_path.is_file()

    saved = []  # whether data.json was there as each array was written again
    real_save = np.save
    monkeypatch.setattr(worker.np, "save", lambda *args, **kwargs: (
        saved.append(meta_path.is_file()), real_save(*args, **kwargs)))
    # this command looked before the other's data.json was written, which is there now
    monkeypatch.setattr(driver, "cache_meta", lambda folder: None)
    second = driver.prepare_cache(tmp_path, config, progress=False)
    assert saved == [True, True]
    assert second == first == worker.cache_meta(tmp_path / "cache")

    # and what a command returns is what it wrote, whatever the folder holds by then
    monkeypatch.setattr(driver, "cache_meta", lambda folder: None)
    real_write = worker.write_cache
    monkeypatch.setattr(worker, "write_cache", lambda *args: (
        real_write(*args), meta_path.unlink())[0])
    assert driver.prepare_cache(tmp_path, config, progress=False) == first


def test_a_data_json_of_other_data_goes_before_the_rows_are_written(tmp_path, monkeypatch):
    """It must never vouch for rows it does not describe, even half-way through the write."""
    import numpy as np
    from test_features import linear_data, write_config

    from softmax_cls.config import load_config
    from softmax_cls.sweep import driver, worker

    def config_of(seed: int):
        X, y = linear_data(n=300, d=4, seed=seed)
        np.savez(tmp_path / f"train{seed}.npz", X=X, y=y)
        return load_config(write_config(tmp_path, train=str(tmp_path / f"train{seed}.npz")))

    metas = [driver.prepare_cache(tmp_path, config_of(0), progress=False)]
    meta_path = tmp_path / "cache" / worker.CACHE_META
    saved = []  # whether data.json was there as each array of the other data was written
    real_save = np.save
    monkeypatch.setattr(worker.np, "save", lambda *args, **kwargs: (
        saved.append(meta_path.is_file()), real_save(*args, **kwargs)))
    metas.append(driver.prepare_cache(tmp_path, config_of(1), progress=False))
    assert metas[0]["fingerprint"] != metas[1]["fingerprint"]
    assert saved == [False, False]
    assert worker.cache_meta(tmp_path / "cache") == metas[1]


def test_a_sweep_alone_draws_the_same_points_from_the_same_seed(tmp_path):
    runner = write_runner(tmp_path)
    path = write_sweep(tmp_path, trials=3, set={**FAST, "optim.epochs": 1})
    drawn = []
    for name in ("a", "b"):
        result = run_runner([*runner, str(path), "--out", str(tmp_path / name), "--quiet",
                             "--no-plots"])
        assert result.returncode == 0, result.stderr
        drawn.append([row["optim.lr"] for row in read_trials(tmp_path / name)])
    assert drawn[0] == drawn[1] and len(set(drawn[0])) == 3


# --- interrupts ------------------------------------------------------------------------------

def test_a_journal_lock_left_by_a_killed_process_does_not_hold_up_the_next_run(tmp_path):
    """A process killed while it held the journal's lock (a sweep killed mid-write): the
    next command starts at once and says nothing about locks."""
    folder = tmp_path / "out"
    path = write_sweep(tmp_path, trials=1, set={**FAST, "optim.epochs": 1})
    command = [*write_runner(tmp_path), str(path), "--out", str(folder), "--quiet",
               "--no-plots"]
    first = run_runner(command)
    assert first.returncode == 0, first.stderr
    holder = subprocess.Popen(
        [command[0], "-c", "import sys, time\n"
         "from softmax_cls.sweep.study import open_storage_for\n"
         f"open_storage_for({str(folder)!r})._backend._lock.acquire()\n"
         "print('held', flush=True)\ntime.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    started = time.monotonic()
    again = run_runner([*command, "--trials", "2"], timeout=120)
    seconds = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    assert seconds < 25, seconds  # Optuna's own lock waited out a 30 s grace period


@pytest.mark.parametrize(("signal_number", "code", "word"),
                         [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_an_interrupt_before_the_first_trial_names_the_command_to_resume(
        tmp_path, signal_number, code, word):
    folder = tmp_path / "out"
    path = write_sweep(tmp_path, trials=20, set={**FAST, "optim.epochs": 1})
    command = [*write_runner(tmp_path), str(path), "--out", str(folder), "--quiet",
               "--no-plots"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while not (folder / "sweep.yaml").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert_one_line_error(result, code, f"error: {word}", "to resume, run: softmax-sweep "
                          f"{path} --out {folder}")
    started = time.monotonic()
    again = run_runner(command)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    assert time.monotonic() - started < 60
    study = optuna.load_study(study_name="sweep", storage=open_storage_for(folder))
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]



SWALLOWING_LIBRARY = """
import os, signal
import softmax_cls.sweep.study as study_module

_make_sampler = study_module.make_sampler

def make_sampler(spec, trial_number):
    # as Cython's module initialisation (numpy.random's, imported here lazily) does with a
    # signal that lands in its `try: Sequence.register(...) except: pass`
    if not os.environ.get("SWALLOWED"):
        os.environ["SWALLOWED"] = "1"
        try:
            os.kill(os.getpid(), signal.{name})
        except:  # noqa: E722
            pass
    return _make_sampler(spec, trial_number)

study_module.make_sampler = make_sampler
"""


@pytest.mark.parametrize(("signal_number", "code", "word"),
                         [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_an_interrupt_a_library_swallows_still_stops_the_sweep(tmp_path, signal_number, code,
                                                                word):
    """A Ctrl-C or SIGTERM whose KeyboardInterrupt lands in code that catches everything (the
    test's flaky failure: numpy.random's Cython import, just after sweep.yaml is written) is
    raised again at the driver's next step: one error line, not a sweep that runs on."""
    folder = tmp_path / "out"
    path = write_sweep(tmp_path, trials=20, set={**FAST, "optim.epochs": 1})
    runner = write_runner(tmp_path)
    script = Path(runner[1])
    script.write_text(script.read_text().replace(
        'if __name__ == "__main__":',
        SWALLOWING_LIBRARY.format(name=signal_number.name) + 'if __name__ == "__main__":'))
    result = run_runner([*runner, str(path), "--out", str(folder), "--quiet", "--no-plots"])
    assert_one_line_error(result, code, f"error: {word}: to resume, run: softmax-sweep {path}")
    assert not (folder / "trials.csv").is_file() or not read_trials(folder)


def test_stop_signals_raise_a_swallowed_signal_again_and_defer_one():
    import os

    from softmax_cls.interrupts import Terminated, sigterm_as_interrupt
    from softmax_cls.sweep.stops import StopSignals

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), StopSignals() as stops:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        except BaseException:  # noqa: BLE001 - a library that swallows it
            pass
        assert stops.received == signal.SIGINT
        stops.check()
    assert signal.getsignal(signal.SIGINT) is before

    with sigterm_as_interrupt():
        with pytest.raises(Terminated), StopSignals() as stops:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            except BaseException:  # noqa: BLE001
                pass
        # the first SIGTERM made a second one fatal, as interrupts' handler does
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    steps = []
    with pytest.raises(KeyboardInterrupt), StopSignals() as stops:
        with stops.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("held")
        steps.append("not reached")
    assert steps == ["held"]

    with StopSignals() as stops:  # no signal: nothing raised, nothing left installed
        stops.check()
        with stops.deferred():
            pass
    assert signal.getsignal(signal.SIGINT) is before



def test_two_signals_in_a_deferred_step_stop_as_the_first_one():
    """stops.py: `received` is the first signal's number. A SIGTERM after a Ctrl-C that
    deferred() held back does not turn the interrupt (exit 130) into a termination (143)."""
    import os

    from softmax_cls.interrupts import Terminated, sigterm_as_interrupt
    from softmax_cls.sweep.stops import StopSignals

    with sigterm_as_interrupt():
        with pytest.raises(KeyboardInterrupt) as caught, StopSignals() as stops:
            with stops.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
        assert not isinstance(caught.value, Terminated)
        assert stops.received == signal.SIGINT


def test_a_signal_ignored_before_the_sweep_stays_ignored():
    """A sweep started with SIGINT ignored (nohup, a background job of a script) goes on
    through a Ctrl-C, as before StopSignals, rather than calling SIG_IGN as a handler."""
    import os

    from softmax_cls.sweep.stops import StopSignals

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stops:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert stops.received is None
    finally:
        signal.signal(signal.SIGINT, before)

# --- bombs -----------------------------------------------------------------------------------

def grid_sweep(folder: Path, keys: int, values: int) -> Path:
    names = ["optim.lr", "loss.reg", "optim.momentum", "optim.batch_size"]
    space = {}
    for name in names[:keys]:
        if name == "optim.batch_size":
            space[name] = {"grid": list(range(1, 1 + values))}
        else:
            space[name] = {"grid": [round(0.0001 + i * 1e-6, 7) for i in range(values)]}
    path = folder / f"grid{keys}x{values}.yaml"
    path.write_text(yaml.safe_dump({"set": FAST, "sampler": "grid", "space": space}))
    return path


@pytest.mark.parametrize(("keys", "values", "points"),
                         [(4, 1000, "1000000000000"), (2, 1000, "1000000"), (2, 101, "10201")])
def test_a_grid_over_the_cap_is_one_error_before_it_is_enumerated(tmp_path, keys, values,
                                                                  points):
    path = grid_sweep(tmp_path, keys, values)
    result = run_measured("softmax-sweep", str(path), "--out",
                                         str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(result, 2, f"a grid of {points} points", "at most 10000")
    assert result.peak_mb < PEAK_MIB and result.seconds < BOMB_SECONDS, result
    assert not (tmp_path / "out").exists()


def test_a_2_gb_sweep_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:
        handle.write(b"trials: 2\n")
        handle.truncate(2 << 30)  # sparse: no disk space used
    result = run_measured("softmax-sweep", str(path), "--out",
                                         str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(result, 2, f"{path}: {2 << 30} bytes, more than the {1 << 20}",
                          "a sweep file is at most 1 MB")
    assert result.peak_mb < PEAK_MIB and result.seconds < BOMB_SECONDS, result


@pytest.mark.parametrize(("storage", "needle"), [
    ("nosuchdb://host/db", "cannot open the study"),
    ("sqlite:///{tmp}/missing/folder/study.db", "unable to open database file"),
    ("sqlite:///{tmp}", "unable to open database file"),
    ("{tmp}/missing/folder/study.journal", "No such file or directory"),
    ("{tmp}", "Is a directory"),
])
def test_a_storage_that_cannot_be_opened_is_one_error(tmp_path, storage, needle):
    url = storage.format(tmp=tmp_path)
    result = run_measured("softmax-sweep", str(write_sweep(tmp_path)), "--out",
                                         str(tmp_path / "out"), "--storage", url, cwd=tmp_path)
    assert_one_line_error(result, 1, "cannot open the study", needle)
    assert result.seconds < BOMB_SECONDS, result
    assert not (tmp_path / "out").exists()  # the folder it created was left, empty


def trials_folder(tmp_path: Path, rows: list[str]) -> Path:
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.yaml").write_text("space:\n  optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}\n")
    (folder / "trials.csv").write_text(
        "number,state,optim.lr,best_val_acc,best_epoch,epochs,seconds\n" + "".join(rows))
    return folder


@pytest.mark.parametrize(("rows", "needle"), [
    (["12345678901234567890,complete,0.01,0.5,1,1,0.1\n"],
     "trial number 12345678901234567890 is out of range"),
    ([f"0,complete,{'9' * 200_000},0.5,1,1,0.1\n"], "not valid CSV"),
    ([f"0,complete,{'9' * 5000},0.5,1,1,0.1\n"], "a cell of 5000 characters"),
])
def test_a_hostile_trials_csv_is_one_error(tmp_path, rows, needle):
    pytest.importorskip("matplotlib")
    folder = trials_folder(tmp_path, rows)
    result = run_measured("softmax-plot", str(folder), "--out",
                                         str(tmp_path / "plots"), cwd=tmp_path)
    assert_one_line_error(result, 1, f"{folder / 'trials.csv'}", needle)
    assert result.peak_mb < PEAK_MIB and result.seconds < BOMB_SECONDS, result


def test_a_2_gb_trials_csv_is_refused_without_reading_it(tmp_path):
    pytest.importorskip("matplotlib")
    folder = trials_folder(tmp_path, [])
    with open(folder / "trials.csv", "ab") as handle:
        handle.truncate(2 << 30)
    result = run_measured("softmax-plot", str(folder), "--out",
                                         str(tmp_path / "plots"), cwd=tmp_path)
    assert_one_line_error(result, 1, "trials.csv: 2147483648 bytes, more than the")
    assert result.peak_mb < PEAK_MIB and result.seconds < BOMB_SECONDS, result


ORPHANED_WORKER = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", "import os, time\\n"
                           "from softmax_cls.sweep.worker import watch_parent\\n"
                           "watch_parent(os.getppid(), interval=0.05)\\n"
                           "print('watching', flush=True)\\n"
                           "time.sleep(60)"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
assert worker.stdout.readline() == "watching\\n"
print(worker.pid, flush=True)
"""  # this process, the worker's parent, then exits as a killed sweep would


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_exits_when_the_sweep_that_started_it_is_gone():
    import sys

    parent = subprocess.run([sys.executable, "-c", ORPHANED_WORKER], capture_output=True,
                            text=True, timeout=60, check=True)
    worker = int(parent.stdout)
    deadline = time.monotonic() + 20
    try:
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(worker)
    finally:
        if running(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.parametrize("content", [b"{\"data\": ", b"\xff\xfe not utf-8", None])
def test_a_garbled_or_missing_data_json_means_no_cache(tmp_path, content):
    """A command killed while writing it, or something else's file: the cache is rewritten."""
    from softmax_cls.sweep import worker

    if content is not None:
        (tmp_path / worker.CACHE_META).write_bytes(content)
    assert worker.cache_meta(tmp_path) is None


@pytest.mark.parametrize("array, shape", [("train_labels.npy", (299,)),
                                          ("train_images.npy", (300, 5))])
def test_cache_arrays_that_do_not_match_data_json_are_refused(tmp_path, array, shape):
    import numpy as np
    from test_features import linear_data, write_config

    from softmax_cls.config import load_config
    from softmax_cls.errors import DataError
    from softmax_cls.sweep import driver, worker

    X, y = linear_data(n=300, d=4)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    driver.prepare_cache(tmp_path, load_config(write_config(
        tmp_path, train=str(tmp_path / "train.npz"))), progress=False)
    np.save(tmp_path / "cache" / array, np.zeros(shape, np.int64))
    with pytest.raises(DataError, match="does not match its data.json"):
        worker.open_cache(tmp_path / "cache")
