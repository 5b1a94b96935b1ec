"""Training: accuracy, determinism, exact resume, interruption, divergence, evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REAL_ARCHIVE, needs_real_data, separable_data, small_config

from softmax_cls import cli
from softmax_cls.config import load_config
from softmax_cls.errors import DataError
from softmax_cls.math.optim import learning_rate
from softmax_cls.training import runs
from softmax_cls.training.checkpoint import load_checkpoint
from softmax_cls.training.evaluate import evaluate_checkpoint
from softmax_cls.training.fit import TrainingDiverged
from softmax_cls.training.runs import train_run as train


def test_separable_problem_reaches_95_percent(tmp_path, small_data):
    result = train(small_config(tmp_path), small_data, tmp_path / "run", progress=False)
    assert result.test_acc >= 0.95
    assert result.state.best_val_acc >= 0.95


def test_run_folder_contents(tmp_path, small_data):
    result = train(small_config(tmp_path), small_data, tmp_path / "run", progress=False)
    run_dir = result.out_dir
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                               "seconds"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_acc"] == pytest.approx(result.test_acc)
    assert load_config(run_dir / "config.yaml") == runs.with_absolute_paths(
        small_config(tmp_path))
    assert load_config(run_dir / "config.yaml").data.root == str(Path.cwd() / "data")
    best = load_checkpoint(run_dir / "best.npz")
    np.testing.assert_array_equal(best.W, result.state.best_W)
    assert load_checkpoint(run_dir / "last.npz").status == "complete"


@pytest.mark.parametrize("options", [
    {"augment": {"hflip": True, "translate": 2}},
    {"optim": {"nesterov": True, "grad_clip": 1.0, "epochs": 3, "batch_size": 64}},
])
def test_same_seed_gives_bit_identical_weights(tmp_path, small_data, options):
    config = small_config(tmp_path, **options)
    first = train(config, small_data, tmp_path / "a", progress=False).state.W
    second = train(config, small_data, tmp_path / "b", progress=False).state.W
    assert np.array_equal(first, second)
    other = train(small_config(tmp_path, seed=1, **options), small_data, tmp_path / "c",
                  progress=False).state.W
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("options", [{}, {"augment": {"hflip": True, "translate": 1}}])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, small_data, options):
    # exponential: a schedule that does not depend on optim.epochs, so 2 then 2 more is 4
    exponential = {"schedule": {"name": "exponential"}}
    full = train(small_config(tmp_path, **options, optim={"epochs": 4, **exponential}),
                 small_data, tmp_path / "full", progress=False)
    train(small_config(tmp_path, **options, optim={"epochs": 2, **exponential}), small_data,
          tmp_path / "part", progress=False)
    resumed_from = load_checkpoint(tmp_path / "part" / "last.npz")
    assert resumed_from.state.epoch == 2
    resumed = train(small_config(tmp_path, **options, optim={"epochs": 4, **exponential}),
                    small_data, tmp_path / "part", resume=resumed_from, progress=False)
    assert np.array_equal(full.state.W, resumed.state.W)
    assert np.array_equal(full.state.best_W, resumed.state.best_W)
    assert [r["val_acc"] for r in full.state.history] == [
        r["val_acc"] for r in resumed.state.history]


@pytest.mark.parametrize("name,expected", [
    ("constant", [0.1, 0.1, 0.1, 0.1]),
    ("step", [0.1, 0.1, 0.05, 0.05]),
    ("exponential", [0.1, 0.05, 0.025, 0.0125]),
    ("cosine", [0.1, 0.05 * (1 + np.cos(np.pi / 4)), 0.05, 0.05 * (1 + np.cos(3 * np.pi / 4))]),
])
def test_learning_rate_schedules(name, expected):
    optim = load_config(None, [f"optim.schedule.name={name}", "optim.lr=0.1", "optim.epochs=4",
                               "optim.schedule.gamma=0.5", "optim.schedule.step_size=2"]).optim
    assert [learning_rate(optim, e) for e in range(4)] == pytest.approx(expected)


def test_early_stopping_keeps_the_best_weights(tmp_path, small_data):
    config = small_config(tmp_path, optim={"epochs": 30, "early_stopping": {"patience": 1},
                                           "lr": 0.05})
    result = train(config, small_data, tmp_path / "run", progress=False)
    assert result.stopped_early
    assert result.state.epoch == result.state.best_epoch + 1
    best_acc = max(row["val_acc"] for row in result.state.history)
    assert result.state.best_val_acc == best_acc
    best = tmp_path / "run" / "best.npz"
    assert not np.array_equal(np.load(best)["W"], result.state.W)
    assert result.test_acc == independent_accuracy(best, small_data.test_images,
                                                   small_data.test_labels)
    # resuming a run that stopped early trains no further epoch
    resumed = train(config, small_data, tmp_path / "run",
                    resume=load_checkpoint(tmp_path / "run" / "last.npz"), progress=False)
    assert resumed.stopped_early and resumed.state.epoch == result.state.epoch
    assert np.array_equal(resumed.state.W, result.state.W)


def test_resume_into_another_folder_brings_the_best_weights(tmp_path, small_data):
    train(small_config(tmp_path, optim={"epochs": 2}), small_data, tmp_path / "a",
          progress=False)
    checkpoint = load_checkpoint(tmp_path / "a" / "last.npz")
    train(small_config(tmp_path, optim={"epochs": 3}), small_data, tmp_path / "b",
          resume=checkpoint, progress=False)
    assert (tmp_path / "b" / "best.npz").exists()


def test_huge_learning_rate_diverges_cleanly(tmp_path, small_data):
    config = small_config(tmp_path, optim={"lr": 1e6, "epochs": 3}, loss={"reg": 0.5})
    with pytest.raises(TrainingDiverged, match=r"optim\.lr = 1e\+06"):
        train(config, small_data, tmp_path / "run", progress=False)
    saved = load_checkpoint(tmp_path / "run" / "last.npz")
    assert np.isfinite(saved.W).all()


@pytest.mark.parametrize("args,message", [
    (["--set", "data.val_size=600"], "data.val_size: must be between 1 and 599"),
    (["--out", "FILE/sub"], "FILE/sub"),
])
def test_run_errors_are_one_line(tmp_path, small_data, monkeypatch, args, message):
    monkeypatch.setattr(runs, "load_config_data", lambda config, progress=True, **kw: small_data)
    (tmp_path / "FILE").write_text("a file, not a folder")
    (tmp_path / "c.yaml").write_text("data: {val_size: 100}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.train_command, ["--config", "c.yaml", "-q", *args])
    assert result.exit_code in (1, 2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert (tmp_path / "FILE").read_text() == "a file, not a folder"


def test_divergence_through_the_cli(tmp_path, small_data, monkeypatch):
    monkeypatch.setattr(runs, "load_config_data", lambda config, progress=True, **kw: small_data)
    path = tmp_path / "c.yaml"
    path.write_text(f"optim: {{lr: 1.0e+6}}\nloss: {{reg: 0.5}}\ndata: {{val_size: 100}}\n"
                    f"output: {{dir: {tmp_path / 'run'}}}\n")
    result = CliRunner().invoke(cli.train_command, ["--config", str(path), "--quiet"])
    assert result.exit_code == 1
    assert "training diverged" in result.output and "optim.lr = 1e+06" in result.output
    assert np.isfinite(np.load(tmp_path / "run" / "last.npz")["W"]).all()


def independent_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy from the raw npz arrays, with plain numpy and explicit preprocessing."""
    with np.load(path, allow_pickle=False) as npz:
        W, mean, scale = npz["W"].astype(np.float64), npz["pre_mean"], npz["pre_scale"]
    X = (images.astype(np.float64) - mean) * scale
    X = np.hstack([X, np.ones((len(X), 1))])
    return float(np.mean(np.argmax(X @ W.T, axis=1) == labels))  # W (C, D)


def test_eval_matches_an_independent_computation(tmp_path, monkeypatch):
    data = separable_data(n_train=400, n_test=300, classes=5, seed=3)
    relabel = np.random.default_rng(0).random(300) < 0.3  # some test labels wrong: acc < 1
    data.test_labels[relabel] = np.random.default_rng(1).integers(0, 5, relabel.sum())
    monkeypatch.setattr(runs, "load_config_data", lambda config, progress=True, **kw: data)
    monkeypatch.setattr("softmax_cls.training.evaluate.load_data_for", lambda *a, **k: data)
    config = small_config(tmp_path, optim={"epochs": 1, "lr": 0.001})
    train(config, data, tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "best.npz"
    report = evaluate_checkpoint(ckpt, "test")
    assert report.accuracy == independent_accuracy(ckpt, data.test_images, data.test_labels)
    assert 0.2 < report.accuracy < 1.0  # a real test: not all right, not chance
    val_rows = load_checkpoint(ckpt).val_rows
    val = evaluate_checkpoint(ckpt, "val")
    assert val.accuracy == independent_accuracy(ckpt, data.train_images[val_rows],
                                                data.train_labels[val_rows])
    train_rows = np.setdiff1d(np.arange(len(data.train_labels)), val_rows)
    train_report = evaluate_checkpoint(ckpt, "train")
    assert train_report.accuracy == independent_accuracy(ckpt, data.train_images[train_rows],
                                                         data.train_labels[train_rows])
    assert train_report.confusion.sum() == len(train_rows) == 300
    result = CliRunner().invoke(cli.eval_command, [str(ckpt), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == report.accuracy
    # the test loss, as the run's summary gives it, and recomputed in float64
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert json.loads(result.output)["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    with np.load(ckpt, allow_pickle=False) as npz:
        W, mean, scale = npz["W"].astype(np.float64), npz["pre_mean"], npz["pre_scale"]
    X = np.hstack([(data.test_images - mean) * scale, np.ones((len(data.test_images), 1))])
    S = X @ W.T
    S -= S.max(axis=1, keepdims=True)
    log_p = S - np.log(np.exp(S).sum(axis=1, keepdims=True))
    expected = -log_p[np.arange(len(S)), data.test_labels].mean()
    assert report.loss == pytest.approx(expected, rel=1e-5)
    text = CliRunner().invoke(cli.eval_command, [str(ckpt)]).output
    assert "confusion matrix" in text and "class4" in text and "precision" in text
    assert f"loss: {report.loss:.4f} (mean cross-entropy)" in text


def test_eval_refuses_data_that_does_not_match(tmp_path, small_data, monkeypatch):
    train(small_config(tmp_path, optim={"epochs": 1}), small_data, tmp_path / "run",
          progress=False)
    other = separable_data(seed=9)
    monkeypatch.setattr("softmax_cls.training.evaluate.load_data_for", lambda *a, **k: other)
    with pytest.raises(DataError, match="does not match the checkpoint"):
        evaluate_checkpoint(tmp_path / "run" / "best.npz")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing key", "single array",
                                    "meta without epoch", "nan statistics", "bad shape"])
def test_corrupt_checkpoints_give_a_clear_error(tmp_path, small_data, damage):
    train(small_config(tmp_path, optim={"epochs": 1}), small_data, tmp_path / "run",
          progress=False)
    path = tmp_path / "run" / "best.npz"
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "single array":
        with open(path, "wb") as handle:
            np.save(handle, np.zeros(3))
    else:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if damage == "missing key":
            del arrays["pre_mean"]
        elif damage == "meta without epoch":
            meta = json.loads(str(arrays["meta_json"]))
            del meta["epoch"]
            arrays["meta_json"] = np.array(json.dumps(meta))
        elif damage == "nan statistics":
            arrays["pre_mean"][5] = np.nan
        else:
            arrays["W"] = arrays["W"][:-1]
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
    result = CliRunner().invoke(cli.eval_command, [str(path)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]


# A real training process on synthetic data, through the softmax-train command's own code.
TRAINER = """
import sys
sys.path.insert(0, {tests!r})
from conftest import separable_data
from softmax_cls import cli
from softmax_cls.training import runs
data = separable_data(n_train=30000, n_test=100, classes=10, seed=0)
runs.load_config_data = lambda config, progress=True, **kw: data
sys.argv = ["softmax-train", *{args!r}]
cli.train_command()
"""


def trainer_process(out: Path, *args: str) -> subprocess.Popen:
    config = out.parent / "config.yaml"
    config.write_text("optim: {epochs: 200, batch_size: 32}\ndata: {val_size: 100}\n")
    code = TRAINER.format(tests=str(Path(__file__).parent),
                          args=list(args) or ["--config", str(config), "--out", str(out), "-q"])
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_sigint_saves_last_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    process = trainer_process(out)
    wait_for(out / "history.jsonl", process)  # written after last.npz of epoch 1
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted")
    assert f"--resume {out / 'last.npz'}" in stderr and "Traceback" not in stderr
    saved = load_checkpoint(out / "last.npz")
    assert saved.state.epoch >= 1
    finish = trainer_process(out, "--resume", str(out / "last.npz"), "-q",
                             "--set", f"optim.epochs={saved.state.epoch + 1}")
    stdout, stderr = finish.communicate(timeout=120)
    assert finish.returncode == 0, stderr
    assert f"{saved.state.epoch + 1} epochs" in stdout
    assert load_checkpoint(out / "last.npz").state.epoch == saved.state.epoch + 1


def test_killing_during_checkpoint_writes_never_leaves_a_broken_checkpoint(tmp_path):
    out = tmp_path / "run"
    for attempt in range(8):
        process = trainer_process(out, "--config", str(out.parent / "config.yaml"), "--out",
                                  str(out), "-q", "--overwrite")
        wait_for(out / "last.npz", process)
        time.sleep(0.05 * attempt)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        for name in ("last.npz", "best.npz"):
            if (out / name).exists():
                load_checkpoint(out / name)  # raises if half-written


@needs_real_data
def test_short_default_run_on_real_cifar10(tmp_path):
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml",
                         ["optim.epochs=2", f"data.root={tmp_path / 'data'}",
                          f"data.archive={REAL_ARCHIVE}"])
    result = train(config, runs.load_config_data(config.data, progress=False), tmp_path / "run",
                   progress=False)
    assert result.test_acc >= 0.35


def test_val_rows_past_the_data_and_an_unknown_split_are_data_errors():
    """Rows 0-3 of a checkpoint's val_rows against data of 3 training rows: row 3 is one
    past the end (an IndexError when the bound was off by one); a split not in SPLITS was
    the train split."""
    from types import SimpleNamespace

    from softmax_cls.training.evaluate import split_arrays

    data = separable_data(n_train=3, n_test=2)
    checkpoint = SimpleNamespace(val_rows=np.array([0, 3]), path="run/best.npz")
    with pytest.raises(DataError, match="val_rows reach row 3, the data has 3 training rows"):
        split_arrays(checkpoint, data, "val")
    checkpoint.val_rows = np.array([0, 2])
    images, labels = split_arrays(checkpoint, data, "val")
    assert labels.tolist() == data.train_labels[[0, 2]].tolist()
    with pytest.raises(DataError, match="unknown split 'tset'"):
        split_arrays(checkpoint, data, "tset")
