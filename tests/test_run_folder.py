"""The run folder through softmax-train: what --overwrite may delete, a failed command leaves
the folder as it found it, a second run of the same config gets a numbered folder, a signal
outside the training loop is one line naming the command that resumes, and the pictures at
the end of a run come from memory."""

from __future__ import annotations

import importlib
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import assert_one_line_error, run
from click.testing import CliRunner
from conftest import separable_data

from softmax_cls import cli
from softmax_cls.training import runs

TESTS = Path(__file__).resolve().parent
EPOCHS = 2


def features_config(tmp_path: Path, **output) -> Path:
    """A config training on a small feature file (tmp_path/train.npz, test.npz) with the numpy
    engine and no pictures: a run takes a second."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 8))
    labels = rng.integers(0, 3, 500)
    X = (centers[labels] + rng.standard_normal((500, 8))).astype(np.float32)
    np.savez(tmp_path / "train.npz", X=X[:400], y=labels[:400])
    np.savez(tmp_path / "test.npz", X=X[400:], y=labels[400:])
    raw = {"engine": "numpy",
           "data": {"dataset": "features", "train": str(tmp_path / "train.npz"),
                    "test": str(tmp_path / "test.npz"), "val_size": 100},
           "augment": {"hflip": False, "translate": 0},
           "optim": {"epochs": EPOCHS, "batch_size": 50},
           "output": {"plots": False, **output}}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    return run("softmax-train", *args, "--quiet", cwd=cwd, **kwargs)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of `folder` but the lock file (which notes the last process to lock it)."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())
            if path.is_file() and path.name != ".lock"}


# --- --overwrite deletes only what a run wrote -----------------------------------------------

def test_overwrite_refuses_the_users_own_config_yaml_in_the_current_folder(tmp_path):
    config = features_config(tmp_path)
    own = tmp_path / "config.yaml"
    own.write_text(config.read_text())  # the user's own config, named as a run's would be
    result = train("--config", str(own), "--out", ".", "--overwrite", cwd=tmp_path)
    assert_one_line_error(result, 2, "config.yaml not written by softmax-train")
    assert own.read_text() == config.read_text()
    assert not (tmp_path / "last.npz").exists()
    assert not (tmp_path / ".lock").exists()  # no run has locked the folder: none left


def test_overwrite_never_deletes_through_a_symlinked_out(tmp_path):
    config = features_config(tmp_path)
    real = tmp_path / "real"
    assert train("--config", str(config), "--out", str(real)).returncode == 0
    before = folder_bytes(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    result = train("--config", str(config), "--out", str(link), "--overwrite")
    assert_one_line_error(result, 2, f"{link} is a symbolic link")
    assert folder_bytes(real) == before
    # the folder itself: a run's own files are replaced
    again = train("--config", str(config), "--out", str(real), "--overwrite",
                  "--set", "optim.epochs=1")
    assert again.returncode == 0, again.stderr
    assert json.loads((real / "summary.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("name,content", [
    ("last.npz", b"PK\x03\x04 not a checkpoint"),
    ("summary.json", b'{"title": "my notes"}'),
    ("history.jsonl", b"shopping list\n"),
    ("history.jsonl", b'{"item": "milk"}\n{"item": "eggs"}\n'),  # JSON lines, no epochs
])
def test_overwrite_refuses_files_no_run_wrote(tmp_path, name, content):
    config = features_config(tmp_path)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_bytes(content)
    result = train("--config", str(config), "--out", str(folder), "--overwrite")
    assert_one_line_error(result, 2, f"{name} not written by softmax-train")
    assert folder_bytes(folder) == {name: content}
    assert [path.name for path in folder.iterdir()] == [name]  # not even a lock file


def test_a_run_that_takes_the_folder_between_the_check_and_the_lock_is_not_written_over(
        tmp_path, monkeypatch):
    """A folder no run has locked is checked before the lock (a refusal leaves no .lock), so
    another softmax-train can take it, train and end between that check and the lock. The
    check under the lock refuses it then: dropping it trained a second run over the first's
    files, exit 0."""
    from softmax_cls.config import load_config
    from softmax_cls.data.features import load_features
    from softmax_cls.errors import ConfigError

    path = features_config(tmp_path)
    folder = tmp_path / "shared"
    folder.mkdir()
    locking = runs._lock_run_folder

    def other_run_first(stack, out_dir):
        other = train("--config", str(path), "--out", str(folder))
        assert other.returncode == 0, other.stderr
        before.update(folder_bytes(folder))
        locking(stack, out_dir)

    before: dict[str, bytes] = {}
    monkeypatch.setattr(runs, "_lock_run_folder", other_run_first)
    config = load_config(path)
    with pytest.raises(ConfigError, match="already holds a run"):
        runs.train_run(config, load_features(config.data, progress=False), folder,
                       progress=False)
    assert before and folder_bytes(folder) == before


def test_a_run_refused_as_busy_leaves_the_folder_the_other_run_made(tmp_path, monkeypatch):
    """Two runs on an --out that does not exist: the second found it missing, then the first
    made it and locked it before the second's lock. The refused second removed 'its' new
    folder, which held nothing but the first's .lock, from under the first run."""
    from softmax_cls.config import load_config
    from softmax_cls.data.features import load_features
    from softmax_cls.errors import SoftmaxClsError

    path = features_config(tmp_path)
    folder = tmp_path / "new" / "run"
    locking, holders = runs._lock_run_folder, []

    def other_run_locks_first(stack, out_dir):
        assert not folder.exists()  # as the refused run found it
        holders.append(subprocess.Popen(
            [sys.executable, "-c", "import sys, time\nfrom softmax_cls.fsutil import "
             "folder_lock\nwith folder_lock(sys.argv[1], wait=False):\n    print(flush=True)"
             "\n    time.sleep(60)", str(folder)], stdout=subprocess.PIPE, text=True))
        holders[0].stdout.readline()  # the other run has made the folder and holds its lock
        locking(stack, out_dir)

    monkeypatch.setattr(runs, "_lock_run_folder", other_run_locks_first)
    config = load_config(path)
    try:
        with pytest.raises(SoftmaxClsError, match="in use by process"):
            runs.train_run(config, load_features(config.data, progress=False), folder,
                           progress=False)
        assert (folder / ".lock").is_file()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


# --- a resumed run writes over only its own run's files ---------------------------------------

def test_resuming_beside_files_no_run_wrote_is_refused_and_leaves_them(tmp_path):
    """A checkpoint kept in a folder of the user's own (a config.yaml, a link where the history
    goes): resuming there would write over them."""
    config = features_config(tmp_path)
    assert train("--config", str(config), "--out", str(tmp_path / "run")).returncode == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "last.npz").write_bytes((tmp_path / "run" / "last.npz").read_bytes())
    (mine / "config.yaml").write_text("my own notes\n")
    (tmp_path / "elsewhere.txt").write_text("kept\n")
    (mine / "history.jsonl").symlink_to(tmp_path / "elsewhere.txt")
    before = folder_bytes(mine)
    result = train("--resume", str(mine / "last.npz"), "--set", "optim.epochs=3")
    assert_one_line_error(result, 2, "config.yaml, history.jsonl not written by softmax-train",
                          "--out")
    assert folder_bytes(mine) == before
    assert (mine / "history.jsonl").is_symlink()
    assert not (mine / ".lock").exists()  # a folder no run locked gets no lock file


def test_a_link_to_the_resumed_checkpoint_is_a_file_no_run_wrote(tmp_path):
    """last.npz a link to the best.npz resumed beside it: the run would replace the user's
    link by a file; that it names the checkpoint's own file does not make it the run's."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    (folder / "last.npz").unlink()
    (folder / "last.npz").symlink_to("best.npz")
    before = folder_bytes(folder)
    result = train("--resume", str(folder / "best.npz"), "--set", "optim.epochs=3")
    assert_one_line_error(result, 2, "last.npz not written by softmax-train", "--out")
    assert folder_bytes(folder) == before
    assert (folder / "last.npz").is_symlink()


def test_a_run_folder_of_an_older_version_is_its_checkpoints_own(tmp_path):
    """An older version's config.yaml is not what this version writes, but it is the text of
    the checkpoint's own config: the run resumes in place (here it stops later, at its
    feature file, which is not on this machine)."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "last.npz").write_bytes((TESTS / "data" / "checkpoint_format2.npz").read_bytes())
    with np.load(old / "last.npz") as raw:
        (old / "config.yaml").write_text(str(raw["config_yaml"]))
    result = train("--resume", str(old / "last.npz"), "--set", "optim.epochs=3")
    assert "not written by softmax-train" not in result.stderr, result.stderr


def test_resuming_an_earlier_checkpoint_in_place_does_not_drop_the_later_epochs(tmp_path):
    """best.npz, or a copy of an earlier last.npz, resumed in its run's folder would replace a
    last.npz epochs ahead of it; a later checkpoint beside an earlier last.npz resumes."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    (folder / "early.npz").write_bytes((folder / "last.npz").read_bytes())
    assert train("--resume", str(folder / "last.npz"), "--set", "optim.epochs=4").returncode == 0
    before = folder_bytes(folder)
    result = train("--resume", str(folder / "early.npz"), "--set", "optim.epochs=4")
    assert_one_line_error(result, 2, "last.npz holds epoch 4, past the checkpoint's epoch 2",
                          "--overwrite")
    assert folder_bytes(folder) == before
    # the run ahead of the folder's last.npz continues in place
    (folder / "late.npz").write_bytes(before["last.npz"])
    (folder / "last.npz").write_bytes(before["early.npz"])
    assert train("--resume", str(folder / "late.npz"), "--set", "optim.epochs=5").returncode == 0
    # --overwrite goes back to the earlier epoch on purpose
    assert train("--resume", str(folder / "early.npz"), "--set", "optim.epochs=3",
                 "--overwrite").returncode == 0
    assert json.loads((folder / "summary.json").read_text())["epochs"] == 3


# --- a failed command leaves the folder as it found it ----------------------------------------

def small_files(limit: int):
    """For a child process: files may not grow past `limit` bytes (writes fail with EFBIG,
    a full disk as far as the command can tell)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_resume_that_fails_to_write_leaves_the_finished_run_as_it_was(tmp_path):
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    before = folder_bytes(folder)
    assert len(before["config.yaml"]) < 3000 < len(before["last.npz"])
    result = train("--resume", str(folder / "last.npz"), "--set", "optim.epochs=4",
                   preexec_fn=small_files(3000))
    assert_one_line_error(result, 1, "last.npz", "File too large")
    assert folder_bytes(folder) == before  # config.yaml says 2 epochs, summary.json is there
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, ".lock"])


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path):
    """--resume of a finished run in its folder evaluated the test split again, rewrote its
    files and redrew its pictures; with nothing to train it says so in one line. Raising
    optim.epochs still trains on."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    before = folder_bytes(folder)
    result = train("--resume", str(folder / "last.npz"), "--plots")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"{folder} already finished: {EPOCHS} epochs; raise optim.epochs "
                             "to train further; nothing written\n")
    assert folder_bytes(folder) == before and not (folder / "plots").exists()
    further = train("--resume", str(folder / "last.npz"), "--set", f"optim.epochs={EPOCHS + 1}")
    assert further.returncode == 0, further.stderr
    assert json.loads((folder / "summary.json").read_text())["epochs"] == EPOCHS + 1


def test_a_run_that_stopped_early_is_finished_until_its_patience_is_raised(tmp_path):
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0

    def line(patience: int, epochs: int = 5) -> str | None:
        plan = runs.plan_run(None, [f"optim.epochs={epochs}",
                                    f"optim.early_stopping.patience={patience}"],
                             resume=str(folder / "last.npz"))
        plan.resume.state.epochs_since_best = 1  # as if its last epoch was not its best
        return runs.finished_line(plan)

    assert line(1) == (f"{folder} already finished: stopped early at epoch {EPOCHS} "
                       "(optim.early_stopping.patience 1); raise the patience to train "
                       "further; nothing written")
    assert line(2) is None
    # its epochs all done and its patience run out: raising the epochs alone trains none
    assert line(1, EPOCHS) == (f"{folder} already finished: {EPOCHS} epochs; raise "
                               "optim.epochs and optim.early_stopping.patience to train "
                               "further; nothing written")
    assert line(2, EPOCHS).endswith(f"{EPOCHS} epochs; raise optim.epochs to train further; "
                                    "nothing written")


def test_a_finished_run_resumed_into_another_folder_brings_its_history(tmp_path):
    """--out elsewhere with no epoch left to train: the new folder had last.npz, best.npz and
    summary.json but no history.jsonl (written only after an epoch)."""
    config = features_config(tmp_path)
    folder, other = tmp_path / "run", tmp_path / "other"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    result = train("--resume", str(folder / "last.npz"), "--out", str(other))
    assert result.returncode == 0, result.stderr
    assert (other / "history.jsonl").read_text() == (folder / "history.jsonl").read_text()


def test_a_resume_loads_without_downloading_and_records_the_config_as_it_was(
        tmp_path, monkeypatch):
    """A resumed run does not download unless --set data.download says so; it did that by
    setting data.download false in its config, which it then wrote into config.yaml and its
    checkpoints: the run's config said other than the user's. Only the loading is told."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    assert "download: true" in (folder / "config.yaml").read_text()
    asked = []
    load = runs.load_config_data

    def recording(data, *args, **kwargs):
        asked.append(data.download)
        return load(data, *args, **kwargs)

    monkeypatch.setattr(runs, "load_config_data", recording)
    for epochs, more in ((EPOCHS + 1, []), (EPOCHS + 2, ["--set", "data.download=true"])):
        result = CliRunner().invoke(cli.train_command, [
            "--resume", str(folder / "last.npz"), "--set", f"optim.epochs={epochs}", *more,
            "-q"])
        assert result.exit_code == 0, result.output
        for written in ((folder / "config.yaml").read_text(),
                        runs.load_checkpoint(folder / "last.npz").config_yaml,
                        runs.load_checkpoint(folder / "best.npz").config_yaml):
            assert yaml.safe_load(written)["data"]["download"] is True
    assert asked == [False, True]


def test_a_plots_link_is_refused_before_training_not_after_it(tmp_path):
    """RUN/plots a symbolic link: a resumed run in place checked its run files before
    training, but the plots entry only when drawing, after it had trained and rewritten them
    (exit 1, the run changed). Now nothing is trained or written."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "plots").symlink_to(elsewhere, target_is_directory=True)
    before = folder_bytes(folder)
    result = train("--resume", str(folder / "last.npz"), "--set", f"optim.epochs={EPOCHS + 1}",
                   "--plots")
    assert_one_line_error(result, 1, f"{folder / 'plots'} is a symbolic link")
    assert folder_bytes(folder) == before and not any(elsewhere.iterdir())


def test_a_plots_link_names_no_plots_as_the_way_out(tmp_path):
    """The refusal suggested --out, which for softmax-train moves the whole run folder."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "plots").symlink_to(tmp_path, target_is_directory=True)
    result = train("--config", str(config), "--out", str(folder), "--plots")
    assert_one_line_error(result, 1, "is a symbolic link", "--no-plots")
    assert "--out" not in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["plots"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_plots_file_is_refused_before_training_not_after_it(tmp_path, overwrite):
    """RUN/plots a file: the run trained and rewrote its files, then failed drawing (exit 1).
    --overwrite deletes only the run files, so the file stays and is refused there too."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    (folder / "plots").write_text("mine")
    before = folder_bytes(folder)
    again = (["--config", str(config), "--out", str(folder), "--overwrite"] if overwrite else
             ["--resume", str(folder / "last.npz"), "--set", f"optim.epochs={EPOCHS + 1}"])
    result = train(*again, "--plots")
    assert_one_line_error(result, 1, f"{folder / 'plots'} is not a folder", "--no-plots")
    assert folder_bytes(folder) == before


def test_a_new_run_folder_is_checked_for_its_own_plots_link_not_a_neighbour(tmp_path):
    """The check before training took a run folder not made yet for a checkpoint file and
    refused `plots-<name>` beside it, a link no run of that folder draws into."""
    pytest.importorskip("matplotlib")
    config = features_config(tmp_path)
    (tmp_path / "plots-new").symlink_to(tmp_path, target_is_directory=True)
    result = train("--config", str(config), "--out", str(tmp_path / "new"), "--plots")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new" / "plots" / "curves.png").is_file()


def test_a_new_run_that_fails_leaves_no_folder(tmp_path):
    config = features_config(tmp_path)
    result = train("--config", str(config), "--out", str(tmp_path / "runs" / "new"),
                   preexec_fn=small_files(3000))
    assert_one_line_error(result, 1, "File too large")
    assert not (tmp_path / "runs").exists()


def test_an_overwrite_that_fails_keeps_the_run_it_would_replace(tmp_path):
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    before = folder_bytes(folder)
    result = train("--config", str(config), "--out", str(folder), "--overwrite",
                   preexec_fn=small_files(3000))
    assert_one_line_error(result, 1, "File too large")
    assert folder_bytes(folder) == before


# --- the same command twice -------------------------------------------------------------------

def test_the_same_config_twice_gets_a_numbered_folder(tmp_path):
    config = features_config(tmp_path, dir="runs/probe")
    first = train("--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1].endswith("; run folder runs/probe")
    for number in (2, 3, 4):  # 4: a search past two taken numbers
        again = train("--config", str(config), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().splitlines()[-1].endswith(
            f"; new run folder runs/probe-{number} (runs/probe already holds a run)")
        assert (tmp_path / f"runs/probe-{number}/summary.json").is_file()
    # an explicit --out still refuses a folder holding a run; --overwrite replaces output.dir
    refused = train("--config", str(config), "--out", "runs/probe", cwd=tmp_path)
    assert_one_line_error(refused, 2, "runs/probe already holds a run")
    replaced = train("--config", str(config), "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.strip().endswith("; run folder runs/probe")
    assert not (tmp_path / "runs/probe-5").exists()


# --- a signal outside the training loop -------------------------------------------------------

# A command (argv[2]: train_command, eval_command) in a child whose data loading never ends
# (it signals that it began by creating the file argv[1]), so that a signal arrives outside
# the training loop.
STUCK_LOADING = """
import sys, time
from pathlib import Path
from softmax_cls import cli
from softmax_cls.training import evaluate, runs
started, command = Path(sys.argv[1]), sys.argv[2]
def load(*args, **kwargs):
    started.touch()
    time.sleep(600)
runs.load_config_data = evaluate.load_data_for = load
sys.argv = [command, *sys.argv[3:]]
getattr(cli, command)()
"""


def stopped_while_loading(tmp_path: Path, *args: str, command: str = "train_command"
                          ) -> subprocess.CompletedProcess:
    started = tmp_path / "loading"
    started.unlink(missing_ok=True)
    child = subprocess.Popen([sys.executable, "-c", STUCK_LOADING, str(started), command,
                              *args, "--quiet"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=60)
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


def test_a_signal_outside_training_is_one_line_naming_the_resume_command(tmp_path):
    config = features_config(tmp_path)
    fresh = stopped_while_loading(tmp_path, "--config", str(config), "--out",
                                  str(tmp_path / "fresh"))
    assert fresh.stderr == "error: terminated\n"
    assert fresh.returncode == 143
    assert not (tmp_path / "fresh").exists()

    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    resumed = stopped_while_loading(tmp_path, "--resume", str(folder / "last.npz"), "--set",
                                    "optim.epochs=4")
    line = assert_one_line_error(resumed, 143, "terminated")
    assert f"softmax-train --resume {folder / 'last.npz'}" in line
    assert f"last completed epoch ({EPOCHS})" in line

    # any command: softmax-eval
    evaluating = stopped_while_loading(tmp_path, str(folder / "best.npz"),
                                       command="eval_command")
    assert evaluating.stderr == "error: terminated\n"
    assert evaluating.returncode == 143


# --- the pictures at the end of a run ---------------------------------------------------------

def test_the_pictures_of_a_run_come_from_memory_and_match_softmax_plot(tmp_path, monkeypatch):
    data = separable_data(n_train=400, n_test=120, classes=4, seed=2, noise=150)
    monkeypatch.setattr(runs, "load_config_data", lambda config, progress=True, **kw: data)
    monkeypatch.setattr("softmax_cls.training.evaluate.load_data_for", lambda *a, **k: data)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"engine": "numpy", "data": {"val_size": 100},
                                      "optim": {"epochs": 2, "lr": 0.001}}))
    scored = []

    def counting(function):
        def call(W, pre, images, *args, **kwargs):
            scored.append(len(images))
            return function(W, pre, images, *args, **kwargs)
        return call

    for name in ("softmax_cls.engines.numpy_engine", "softmax_cls.math.preprocess",
                 "softmax_cls.plots.evaluation"):  # every name the scoring is called by
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "image_scores", counting(module.image_scores))

    def no_reading(*args, **kwargs):
        raise AssertionError("the run's pictures read a checkpoint back")

    monkeypatch.setattr("softmax_cls.training.checkpoint.load_checkpoint", no_reading)
    monkeypatch.setattr(runs, "load_checkpoint", no_reading)
    result = CliRunner().invoke(cli.train_command, ["--config", str(config), "--out",
                                                    str(tmp_path / "run"), "--plots", "-q"])
    assert result.exit_code == 0, result.output
    assert scored.count(120) == 1  # the test split, scored once: loss, accuracy, pictures
    drawn = folder_bytes(tmp_path / "run" / "plots")
    assert sorted(drawn) == ["confusion.png", "curves.png", "mistakes.png", "templates.png"]

    monkeypatch.undo()
    monkeypatch.setattr("softmax_cls.training.evaluate.load_data_for", lambda *a, **k: data)
    again = CliRunner().invoke(cli.plot_command, [str(tmp_path / "run"), "--out",
                                                  str(tmp_path / "again"), "-q"])
    assert again.exit_code == 0, again.output
    assert folder_bytes(tmp_path / "again") == drawn  # the same pictures as from disk


def test_an_interrupt_while_drawing_says_the_run_is_complete(tmp_path, monkeypatch):
    data = separable_data(n_train=300, n_test=60, classes=3, seed=1)
    monkeypatch.setattr(runs, "load_config_data", lambda config, progress=True, **kw: data)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("softmax_cls.plots.pictures.draw_run_pictures", interrupted)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"engine": "numpy", "data": {"val_size": 60},
                                      "optim": {"epochs": 1}}))
    folder = tmp_path / "run"
    result = CliRunner().invoke(cli.train_command, ["--config", str(config), "--out",
                                                    str(folder), "--plots", "-q"])
    assert result.exit_code == 130
    assert result.output.splitlines() == [
        f"error: interrupted while drawing the pictures; the run in {folder} is complete: "
        f"draw them with softmax-plot {folder}"]
    assert (folder / "summary.json").is_file()


# --- an epoch's files, written while the next epoch trains -------------------------------------

def small_run(tmp_path: Path, epochs: int):
    from conftest import small_config

    data = separable_data(n_train=300, n_test=60, classes=3, seed=5)
    return small_config(tmp_path, optim={"epochs": epochs}), data


def writer_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("softmax-run-files")]


def test_epoch_files_are_written_in_the_background_and_complete_before_the_run_ends(
        tmp_path, monkeypatch):
    """A slow disk for the epoch files: each checkpoint write in the background takes 0.2 s.
    They are written off the training thread, in order, and every one of them is on disk,
    with last.npz marked complete (the run's own last write), when train_run returns; no
    writer thread is left behind."""
    import threading

    from softmax_cls.training.checkpoint import load_checkpoint

    calls = []
    real = runs.save_checkpoint

    def slow(path, state, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.2)
        calls.append((Path(path).name, state.epoch, threading.current_thread().name))
        return real(path, state, *args, **kwargs)

    monkeypatch.setattr(runs, "save_checkpoint", slow)
    config, data = small_run(tmp_path, epochs=4)
    result = runs.train_run(config, data, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    last = load_checkpoint(run / "last.npz")
    assert last.status == "complete" and last.state.epoch == 4
    assert [row["epoch"] for row in last.state.history] == [1, 2, 3, 4]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    best = load_checkpoint(run / "best.npz")
    assert best.state.epoch == result.state.best_epoch
    assert np.array_equal(best.W, result.state.best_W)
    epoch_writes = [(name, epoch) for name, epoch, thread in calls
                    if thread.startswith("softmax-run-files")]
    assert [w for w in epoch_writes if w[0] == "last.npz"] == [("last.npz", e)
                                                              for e in range(1, 5)]
    # the first last.npz (epoch 0) and the final one are written by the run itself
    assert [(n, e) for n, e, thread in calls if not thread.startswith("softmax-run-files")
            ] == [("last.npz", 0), ("last.npz", 4)]
    assert writer_threads() == []


@pytest.mark.parametrize("epochs, failing", [(3, 1), (3, 3), (1, 1)])
def test_an_epoch_file_that_fails_to_write_fails_the_run_and_leaves_no_folder(
        tmp_path, monkeypatch, epochs, failing):
    """history.jsonl of epoch `failing` cannot be written (a full disk): the run fails with
    that error, raised at the next epoch or at the end, and leaves nothing behind."""
    import errno

    real = runs.write_history
    path = tmp_path / "runs" / "new"

    def full_disk(target, history):
        if len(history) == failing:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(target, history)

    monkeypatch.setattr(runs, "write_history", full_disk)
    config, data = small_run(tmp_path, epochs)
    with pytest.raises(OSError, match="No space left on device"):
        runs.train_run(config, data, path, progress=False)
    assert not (tmp_path / "runs").exists()
    assert writer_threads() == []


def interrupt_fit_after_epoch(monkeypatch, epoch: int) -> None:
    """runs.fit raises KeyboardInterrupt right after its `epoch`'s files are handed over."""
    real_fit = runs.fit

    def interrupted_fit(*args, on_epoch, **kwargs):
        def then_stop(state):
            on_epoch(state)
            if state.epoch == epoch:
                raise KeyboardInterrupt
        return real_fit(*args, on_epoch=then_stop, **kwargs)

    monkeypatch.setattr(runs, "fit", interrupted_fit)


def interrupt_second_of_four_epochs(tmp_path, monkeypatch) -> None:
    """A run of 4 epochs in tmp_path/run, Ctrl-C after epoch 2: TrainingInterrupted names
    epoch 2, and last.npz and history.jsonl hold epoch 2, whole."""
    from softmax_cls.training.checkpoint import load_checkpoint

    interrupt_fit_after_epoch(monkeypatch, 2)
    config, data = small_run(tmp_path, epochs=4)
    with pytest.raises(runs.TrainingInterrupted, match=r"last completed epoch \(2\)"):
        runs.train_run(config, data, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.npz").state.epoch == 2
    lines = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_an_interrupt_saves_the_last_epoch_after_the_files_under_way(tmp_path, monkeypatch):
    """Ctrl-C after epoch 2 while its files are still being written (slowly): last.npz and
    history.jsonl hold epoch 2, whole, and the run is left to resume."""
    real_history = runs.write_history

    def slow_history(target, history):
        time.sleep(0.1)
        return real_history(target, history)

    monkeypatch.setattr(runs, "write_history", slow_history)
    interrupt_second_of_four_epochs(tmp_path, monkeypatch)
    assert writer_threads() == []


# --- what a run leaves on disk ----------------------------------------------------------------

def test_a_run_and_its_resume_in_place_leave_the_run_files_alone_with_the_umasks_mode(tmp_path):
    """No temporary file or .NAME.before backup is left beside the run files, and each file
    has open()'s mode less the umask (mkstemp would give 0600)."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"

    def umask_027():
        import os

        os.umask(0o027)

    expected = sorted([*runs.RUN_FILES, ".lock"])
    assert train("--config", str(config), "--out", str(folder),
                 preexec_fn=umask_027).returncode == 0
    assert sorted(path.name for path in folder.iterdir()) == expected
    resumed = train("--resume", str(folder / "last.npz"), "--set", "optim.epochs=3",
                    preexec_fn=umask_027)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(path.name for path in folder.iterdir()) == expected
    assert {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()} == {
        name: 0o640 for name in expected}


def test_a_finished_run_without_its_summary_is_evaluated_again(tmp_path):
    """summary.json deleted: the run is not finished (its test evaluation is what is missing);
    resuming trains no epoch, evaluates and writes summary.json again."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").unlink()
    result = train("--resume", str(folder / "last.npz"))
    assert result.returncode == 0, result.stderr
    assert "already finished" not in result.stdout
    assert json.loads((folder / "summary.json").read_text()) == summary


def edited_best(folder: Path) -> np.ndarray:
    """Write over folder/best.npz a copy whose weights are one more: the same epoch and data,
    other weights (a best.npz of another run). Returns the true best weights."""
    from softmax_cls.training.checkpoint import load_checkpoint, save_checkpoint

    best = load_checkpoint(folder / "best.npz")
    state = runs.copy_state(best.state)
    state.best_W += 1
    save_checkpoint(folder / "best.npz", state, best.preprocessor, best.class_names,
                    best.config_yaml, best.fingerprint, best.status, best.val_rows,
                    W=state.best_W)
    return best.state.best_W


def test_a_best_npz_of_other_weights_beside_the_resumed_checkpoint_is_not_taken(tmp_path):
    """best.npz of the same epoch and data but other weights is not the resumed run's best:
    the new folder's best.npz holds the run's own best weights."""
    from softmax_cls.training.checkpoint import load_checkpoint

    config = features_config(tmp_path)
    folder, other = tmp_path / "run", tmp_path / "other"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    true_best = edited_best(folder)
    result = train("--resume", str(folder / "last.npz"), "--out", str(other))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(load_checkpoint(other / "best.npz").W, true_best)


def test_a_best_npz_of_other_weights_in_the_resumed_runs_folder_is_replaced(tmp_path):
    """The same in the run's own folder, its best epoch (1) before its last (2): the other
    best.npz is removed, and the run's end writes its own best weights there."""
    from softmax_cls.training.checkpoint import load_checkpoint, save_checkpoint

    config = features_config(tmp_path)
    folder = tmp_path / "run"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    edited_best(folder)
    last = load_checkpoint(folder / "last.npz")
    state = runs.copy_state(last.state)
    state.best_epoch, state.epochs_since_best = 1, 1  # as if epoch 2 was not its best
    save_checkpoint(folder / "last.npz", state, last.preprocessor, last.class_names,
                    last.config_yaml, last.fingerprint, last.status, last.val_rows)
    (folder / "summary.json").unlink()  # so the finished run is evaluated again
    result = train("--resume", str(folder / "last.npz"))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(load_checkpoint(folder / "best.npz").W, state.best_W)


def test_a_resume_over_another_run_brings_its_own_best_npz(tmp_path):
    """--overwrite of a folder holding another run's best.npz: the resumed run's best.npz
    is copied there, byte for byte (not the final state marked 'best weights only')."""
    config = features_config(tmp_path)
    folder, other = tmp_path / "run", tmp_path / "other"
    assert train("--config", str(config), "--out", str(folder)).returncode == 0
    assert train("--config", str(config), "--out", str(other), "--set", "seed=2"
                 ).returncode == 0
    result = train("--resume", str(folder / "last.npz"), "--out", str(other), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (other / "best.npz").read_bytes() == (folder / "best.npz").read_bytes()


def test_an_interrupted_resume_of_a_finished_run_leaves_no_summary(tmp_path, monkeypatch):
    """A finished run trained further and interrupted: its summary.json, of the earlier end,
    is gone (summary.json is absent until a run's end), last.npz holds the epoch reached."""
    from softmax_cls.training.checkpoint import load_checkpoint

    config, data = small_run(tmp_path, epochs=2)
    folder = tmp_path / "run"
    runs.train_run(config, data, folder, progress=False)
    assert (folder / "summary.json").is_file()
    interrupt_fit_after_epoch(monkeypatch, 3)  # the resume's first epoch
    further = small_run(tmp_path, epochs=4)[0]
    with pytest.raises(runs.TrainingInterrupted, match=r"last completed epoch \(3\)"):
        runs.train_run(further, data, folder, load_checkpoint(folder / "last.npz"),
                       progress=False)
    assert not (folder / "summary.json").exists()
    assert load_checkpoint(folder / "last.npz").state.epoch == 3


def test_a_busy_folder_names_its_holder_after_a_longer_one(tmp_path):
    """The lock file is emptied before its holder writes itself in: over a longer earlier
    text the second run named 'another process'."""
    config = features_config(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("process 123456789012345678\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom softmax_cls.fsutil import folder_lock\n"
         "with folder_lock(sys.argv[1], wait=False):\n    print(flush=True)\n    time.sleep(60)",
         str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        result = train("--config", str(config), "--out", str(folder))
        assert_one_line_error(result, 1, f"in use by process {holder.pid} ")
    finally:
        holder.kill()
        holder.wait()


def test_a_divergence_while_the_epoch_files_fail_is_reported_as_the_divergence(
        tmp_path, monkeypatch):
    """Epoch 1's history.jsonl fails (slowly) while epoch 2 diverges: the run's own error is
    raised, the write's is not put in its place, and no writer thread is left."""
    import errno

    from softmax_cls.training.fit import TrainingDiverged

    def failing_history(target, history):
        time.sleep(0.2)
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    real_fit = runs.fit

    def diverging_fit(*args, on_epoch, **kwargs):
        def then_diverge(state):
            on_epoch(state)
            raise TrainingDiverged("training diverged in epoch 2")
        return real_fit(*args, on_epoch=then_diverge, **kwargs)

    monkeypatch.setattr(runs, "write_history", failing_history)
    monkeypatch.setattr(runs, "fit", diverging_fit)
    config, data = small_run(tmp_path, epochs=3)
    with pytest.raises(TrainingDiverged, match="diverged in epoch 2"):
        runs.train_run(config, data, tmp_path / "run", progress=False)
    assert writer_threads() == []


def test_an_interrupt_writes_again_the_epoch_files_that_failed(tmp_path, monkeypatch):
    """Epoch 2's history.jsonl fails once (a disk full for a moment), then Ctrl-C: the line
    says epoch 2 is saved, so last.npz and history.jsonl are written again and both hold it."""
    import errno

    real_history, failed = runs.write_history, []

    def failing_once(target, history):
        if len(history) == 2 and not failed:
            failed.append(target)
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real_history(target, history)

    monkeypatch.setattr(runs, "write_history", failing_once)
    interrupt_second_of_four_epochs(tmp_path, monkeypatch)
    assert failed
