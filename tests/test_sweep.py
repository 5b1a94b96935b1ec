"""softmax-sweep: sweep files, grids, parallel and Dask workers, resume after kill -9, pruning,
and a test split that is read once, after the last trial."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import assert_one_line_error, run
from conftest import _cuda_available
from sweep_util import read_trials, sweep_data, write_runner

import softmax_cls.data.cifar
from softmax_cls.config import config_from_dict, config_to_dict, load_config
from softmax_cls.errors import ConfigError, SoftmaxClsError
from softmax_cls.math.preprocess import split_and_fit
from softmax_cls.sweep import driver as sweep
from softmax_cls.sweep import study as sweep_study
from softmax_cls.sweep.results import write_trials_csv
from softmax_cls.sweep.spec import grid_points, load_sweep, suggest, trial_raw_config
from softmax_cls.sweep.worker import TrialOutcome
from softmax_cls.training.fit import fit

optuna = pytest.importorskip("optuna")

FAST = {"engine": "numpy", "data.val_size": 100, "optim.epochs": 3, "augment.hflip": False,
        "optim.schedule.name": "constant"}


def write_sweep(folder: Path, name: str = "sweep.yaml", **fields) -> Path:
    raw = {"set": dict(FAST), "sampler": "tpe", "trials": 4, "seed": 0, "pruner": "none",
           "space": {"optim.lr": {"log_uniform": [1.0e-8, 1.0e-1]},
                     "optim.batch_size": {"choice": [32, 64]}}}
    raw.update(fields)
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def served(monkeypatch):
    """sweep_data() behind softmax_cls.data.cifar.load_config_data; counts the loads."""
    data = sweep_data()
    loads = []

    def load(section, progress=True, **kwargs):
        loads.append(section)
        return data

    monkeypatch.setattr(softmax_cls.data.cifar, "load_config_data", load)
    return data, loads


def study_of(folder: Path, name: str = "sweep"):
    storage = sweep_study.open_storage_for(folder)
    return optuna.load_study(study_name=name, storage=storage)


def states(folder: Path) -> list[str]:
    return [row["state"] for row in read_trials(folder)]


# --- the sweep file --------------------------------------------------------------------------

BAD_SWEEPS = [
    ("sampler: tpe\ntrials: 2\nspace: {optim.lr: {uniform: [0.1, 0.2]}}\nworkers: 3\n",
     ["workers: unknown key"]),
    ("trials: 2\nspace: {optim.lrr: {uniform: [0.1, 0.2]}}\n", ["optim.lrr: not a config key"]),
    ("trials: 2\nspace: {optim: {uniform: [0.1, 0.2]}}\n", ["optim: a section"]),
    ("trials: 2\nspace: {optim.lr: {choice: [0.1, abc]}}\n", ["optim.lr: must be a number"]),
    ("trials: 2\nspace: {optim.lr: {uniform: [0.1, 0.1]}}\n", ["empty range"]),
    ("trials: 2\nspace: {optim.lr: {log_uniform: [0.1, 1.0e-3]}}\n", ["inverted range"]),
    ("trials: 2\nspace: {optim.lr: {log_uniform: [0, 0.1]}}\n", ["log range needs low > 0"]),
    ("trials: 2\nspace: {optim.lr: {uniform: [-1, 0.1]}}\n", ["optim.lr: must be > 0"]),
    ("trials: 2\nspace: {augment.hflip: {uniform: [0, 1]}}\n", ["needs a number key"]),
    ("trials: 2\nspace: {optim.epochs: {int: [1.5, 3]}}\n", ["two integers"]),
    ("trials: 2\nspace: {optim.lr: {grid: [0.1, 0.2]}}\n", ["sampler: grid"]),
    ("sampler: grid\nspace: {optim.lr: {choice: [0.1, 0.2]}}\n", ["sampler grid needs"]),
    ("sampler: grid\ntrials: 3\nspace: {optim.lr: {grid: [0.1, 0.2]}}\n", ["trials: a grid"]),
    ("space: {optim.lr: {uniform: [0.1, 0.2]}}\n", ["trials: required"]),
    ("trials: two\nspace: {optim.lr: {uniform: [0.1, 0.2]}}\n", ["trials: must be an integer"]),
    ("trials: 2\nsampler: cmaes\nspace: {optim.lr: {uniform: [0.1, 0.2]}}\n", ["sampler:"]),
    ("trials: 2\npruner: hyperband\nspace: {optim.lr: {uniform: [0.1, 0.2]}}\n", ["pruner"]),
    ("trials: 2\nspace: {}\n", ["space: expected a non-empty mapping"]),
    ("trials: 2\nspace: {data.root: {choice: [a, b]}}\n", ["cannot vary"]),
    ("trials: 2\nspace: {optim.lr: {choice: [0.1, 0.1]}}\n", ["duplicate values"]),
    ("trials: 2\nspace: {optim.lr: {uniform: [0.1, 0.2], step: 2}}\n", ["exactly one of"]),
    ("trials: 2\nset: {optim.lr: 0.1}\nspace: {optim.lr: {uniform: [0.1, 0.2]}}\n",
     ["both searched and fixed"]),
    ("trials: 2\nset: {optim.momentum: 2}\nspace: {optim.lr: {uniform: [0.1, 0.2]}}\n",
     ["optim.momentum: must be <= 0.999"]),
    ("base: nowhere.yaml\ntrials: 2\nspace: {optim.lr: {uniform: [0.1, 0.2]}}\n",
     ["base: config file not found"]),
    ("trials: 2\nspace: {optim.lr: {uniform: [0.1, 0.2]}\n", ["not valid YAML"]),
    ("- 1\n- 2\n", ["expected a mapping"]),
]


@pytest.mark.parametrize(("text", "needles"), BAD_SWEEPS)
def test_bad_sweep_files_are_one_line_errors_with_exit_2(tmp_path, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    for needle in needles:
        assert needle in str(caught.value)


def test_bad_sweep_files_through_the_console_script(tmp_path):
    for text, needles in (BAD_SWEEPS[1], BAD_SWEEPS[4], BAD_SWEEPS[3]):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        result = run("softmax-sweep", str(path), "--out", str(tmp_path / "out"), timeout=60)
        assert_one_line_error(result, 2, "bad.yaml", *needles)
    result = run("softmax-sweep", str(tmp_path / "missing.yaml"), timeout=60)
    assert_one_line_error(result, 2, "sweep file not found")
    assert not (tmp_path / "out").exists()


def test_trials_from_the_command_line_stand_in_for_a_sweep_file_without_them(tmp_path):
    """commands.md: --trials N, default the sweep file's trials. A file without trials: and
    --trials 2 was refused with 'trials: required for sampler tpe'."""
    path = write_sweep(tmp_path, sampler="random")
    raw = yaml.safe_load(path.read_text())
    del raw["trials"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    folder = tmp_path / "out"
    result = subprocess.run([*write_runner(tmp_path), str(path), "--out", str(folder),
                             "--trials", "2", "--no-plots", "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert states(folder) == ["complete", "complete"]
    result = subprocess.run([*write_runner(tmp_path), str(path), "--out", str(tmp_path / "b"),
                             "--trials", "0"], capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, 2, "--trials: must be >= 1, got 0")
    result = run("softmax-sweep", str(path), "--out", str(tmp_path / "c"), timeout=60)
    assert_one_line_error(result, 2, "trials: required for sampler random", "--trials")


def test_a_sweep_file_reads_base_set_and_every_kind(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {epochs: 7}\nloss: {reg: 0.5}\n")
    path = tmp_path / "s.yaml"
    path.write_text(
        "base: base.yaml\nset: {optim.momentum: 0.5}\ntrials: 3\nseed: 4\n"
        "pruner: {name: median, startup_trials: 2}\nspace:\n"
        "  optim.lr: {log_uniform: [1e-4, 1.0e-1]}\n"   # 1e-4: a string in YAML 1.1
        "  optim.grad_clip: {uniform: [0.5, 5], log: true}\n"
        "  optim.epochs: {int: [2, 9]}\n"
        "  optim.early_stopping.patience: {choice: [null, 2]}\n"
        "  augment.hflip: {choice: [true, false]}\n")
    spec = load_sweep(path)
    assert spec.base_path == (tmp_path / "base.yaml").resolve()
    assert spec.base_config.loss.reg == 0.5 and spec.base_config.optim.momentum == 0.5
    assert spec.space["optim.lr"] == {"log_uniform": [1e-4, 0.1]}
    assert spec.space["optim.grad_clip"] == {"uniform": [0.5, 5.0], "log": True}
    assert spec.space["optim.epochs"] == {"int": [2, 9]}
    assert spec.pruner == {"name": "median", "startup_trials": 2, "warmup_epochs": 0}
    assert (spec.trials, spec.seed, spec.sampler) == (3, 4, "tpe")
    grid = write_sweep(tmp_path, "g.yaml", sampler="grid", trials=None, space={
        "optim.lr": {"grid": [0.1, 0.01, 0.001]}, "optim.nesterov": {"grid": [True, False]}})
    text = grid.read_text().replace("trials: null\n", "")
    grid.write_text(text)
    assert load_sweep(grid).trials == 6


def test_the_repository_sweep_file_is_valid():
    root = Path(__file__).resolve().parents[1]
    spec = load_sweep(root / "configs" / "sweep.yaml")
    assert spec.base_config == load_config(root / "configs" / "default.yaml")
    assert spec.sampler == "tpe" and spec.trials >= 40
    assert {"optim.lr", "loss.reg", "optim.batch_size", "optim.epochs", "augment.translate",
            "optim.averaging.name", "model.mirror_symmetric"} <= set(spec.space)
    assert not (root / "scripts" / "tune.py").exists()


# docs/sweeps.md: "any config key but data.{dataset,root,format,labels,url,archive,download,
# train,test,test_fraction,strict} and output.*"
FIXED = [*(f"data.{k}" for k in ("dataset", "root", "format", "labels", "url", "archive",
                                  "download", "train", "test", "test_fraction", "strict")),
         "output.dir", "output.plots"]


@pytest.mark.parametrize("key", FIXED)
def test_the_keys_of_the_data_and_the_output_cannot_vary(tmp_path, key):
    path = tmp_path / "s.yaml"
    path.write_text(f"trials: 2\nspace: {{{key}: {{choice: [a, b]}}}}\n")
    with pytest.raises(ConfigError, match=f"space: {re.escape(key)}: cannot vary"):
        load_sweep(path)


def test_both_ends_of_a_range_are_checked_by_the_schema(tmp_path):
    """sweeps.md: a value the config schema rejects, each end of a range, is an error."""
    for spec, error in (("{uniform: [0.5, 2]}", "optim.momentum: must be <= 0.999, got 2"),
                        ("{uniform: [-1, 0.5]}", "optim.momentum: must be >= 0, got -1")):
        path = tmp_path / "s.yaml"
        path.write_text(f"trials: 2\nspace: {{optim.momentum: {spec}}}\n")
        result = run("softmax-sweep", str(path), "--out", str(tmp_path / "out"), timeout=60)
        assert_one_line_error(result, 2, "s.yaml", error)
    assert not (tmp_path / "out").exists()


def test_a_grid_of_exactly_the_cap_is_accepted(tmp_path):
    """At most MAX_GRID_POINTS (10000) points: 100 x 100 is a grid, 100 x 101 is not."""
    path = tmp_path / "g.yaml"
    for sizes, trials in (((100, 100), 10_000), ((100, 101), None)):
        path.write_text(yaml.safe_dump({"sampler": "grid", "space": {
            "seed": {"grid": list(range(sizes[0]))},
            "optim.epochs": {"grid": list(range(1, sizes[1] + 1))}}}))
        if trials is None:
            with pytest.raises(ConfigError, match="a grid of 10100 points"):
                load_sweep(path)
        else:
            assert load_sweep(path).trials == trials


def test_a_base_beside_the_sweep_file_comes_before_configs(tmp_path, monkeypatch):
    """sweeps.md: base: a config file, beside the sweep file or in configs/."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "b.yaml").write_text("optim: {epochs: 2}\n")
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "b.yaml").write_text("optim: {epochs: 3}\n")
    path = tmp_path / "sweeps" / "s.yaml"
    path.write_text("base: b.yaml\ntrials: 2\nspace: {optim.lr: {uniform: [0.1, 0.2]}}\n")
    monkeypatch.chdir(tmp_path)
    assert load_sweep(path).base_config.optim.epochs == 3
    (tmp_path / "sweeps" / "b.yaml").unlink()
    assert load_sweep(path).base_config.optim.epochs == 2


def test_grid_points_come_with_the_last_key_varying_fastest(tmp_path):
    path = write_sweep(tmp_path, sampler="grid", trials=None, space={
        "optim.lr": {"grid": [0.1, 0.01]}, "optim.batch_size": {"grid": [32, 64, 128]}})
    path.write_text(path.read_text().replace("trials: null\n", ""))
    assert list(grid_points(load_sweep(path))) == [
        {"optim.lr": 0.1, "optim.batch_size": 32}, {"optim.lr": 0.1, "optim.batch_size": 64},
        {"optim.lr": 0.1, "optim.batch_size": 128}, {"optim.lr": 0.01, "optim.batch_size": 32},
        {"optim.lr": 0.01, "optim.batch_size": 64}, {"optim.lr": 0.01, "optim.batch_size": 128}]


def test_log_uniform_and_log_ranges_are_sampled_on_a_log_scale(tmp_path):
    """Over [1e-8, 1e-1] on a log scale, 5 of 7 decades lie below 1e-3; sampled linearly,
    1% of the draws would."""
    path = write_sweep(tmp_path, space={"optim.lr": {"log_uniform": [1.0e-8, 1.0e-1]},
                                        "optim.batch_size": {"int": [1, 10000], "log": True},
                                        "loss.clip": {"uniform": [1.0, 1.0e4], "log": True}})
    spec = load_sweep(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = [suggest(study.ask(), spec) for _ in range(200)]
    assert 0.6 < np.mean([d["optim.lr"] < 1e-3 for d in draws]) < 0.82
    assert 0.4 < np.mean([d["optim.batch_size"] < 100 for d in draws]) < 0.6
    assert 0.4 < np.mean([d["loss.clip"] < 100 for d in draws]) < 0.6


# --- running sweeps --------------------------------------------------------------------------

def test_a_grid_runs_every_point_exactly_once(tmp_path, served):
    path = write_sweep(tmp_path, sampler="grid", space={
        "optim.lr": {"grid": [1.0e-7, 1.0e-3, 1.0e-2]}, "optim.batch_size": {"grid": [32, 64]}})
    path.write_text(path.read_text().replace("trials: 4\n", ""))
    result = sweep.run_sweep(path, workers=2, out=tmp_path / "out", progress=False, plots=False)
    rows = read_trials(tmp_path / "out")
    points = sorted((float(r["optim.lr"]), int(r["optim.batch_size"])) for r in rows)
    assert points == sorted(itertools.product([1.0e-7, 1.0e-3, 1.0e-2], [32, 64]))
    assert [r["state"] for r in rows] == ["complete"] * 6
    assert result.counts["complete"] == 6
    # the best trial: the highest val accuracy in trials.csv, the first of a tie
    accuracy = {int(r["number"]): float(r["best_val_acc"]) for r in rows}
    top = max(accuracy.values())
    assert result.best_number == min(n for n, a in accuracy.items() if a == top)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["best_trial"], summary["best_val_acc"]) == (result.best_number, top)
    # running it again changes nothing: every point has run
    again = sweep.run_sweep(path, workers=2, out=tmp_path / "out", progress=False, plots=False)
    assert len(read_trials(tmp_path / "out")) == 6 and again.best_number == result.best_number
    assert len(study_of(tmp_path / "out").trials) == 6  # and none waiting


def test_a_tpe_sweep_with_two_workers_completes_its_trials(tmp_path, served, monkeypatch):
    data, loads = served
    path = write_sweep(tmp_path, trials=6)
    pools = []

    class RecordedPool(cf.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

        def submit(self, *args, **kwargs):
            future = super().submit(*args, **kwargs)
            self.started = len(self._processes)  # the pool starts its processes on submits
            return future

    monkeypatch.setattr(sweep.cf, "ProcessPoolExecutor", RecordedPool)
    result = sweep.run_sweep(path, workers=2, out=tmp_path / "out", progress=False, plots=False)
    folder = tmp_path / "out"
    rows = read_trials(folder)
    assert sorted(int(r["number"]) for r in rows) == list(range(6))
    assert states(folder) == ["complete"] * 6
    study = study_of(folder)
    assert len({t.user_attrs["driver"]["pid"] for t in study.trials}) == 1
    # each worker process got cores // 2 threads, set before numpy was imported there
    cores = len(os.sched_getaffinity(0))
    assert {t.user_attrs["threads"] for t in study.trials} == {str(max(1, cores // 2))}
    # two worker processes ran, and the trials ran in them; which of the two takes how many
    # trials is the pool's business (one may finish all six while the other still imports)
    assert [pool.started for pool in pools] == [2]
    worker_pids = {t.user_attrs["worker_pid"] for t in study.trials}
    assert 1 <= len(worker_pids) <= 2 and os.getpid() not in worker_pids
    # the outputs
    best = max(rows, key=lambda r: float(r["best_val_acc"]))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["best_trial"] == result.best_number == int(best["number"])
    assert summary["best_val_acc"] == pytest.approx(float(best["best_val_acc"]))
    assert summary["counts"] == {"complete": 6, "pruned": 0, "failed": 0, "interrupted": 0}
    saved = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert saved["space"] == yaml.safe_load(path.read_text())["space"]
    assert len(loads) == 2  # the training rows once for the cache, the test split at the end


def test_best_yaml_and_best_npz_reproduce_the_best_trial(tmp_path, served):
    data, _ = served
    path = write_sweep(tmp_path, trials=4)
    pytest.importorskip("matplotlib")
    result = sweep.run_sweep(path, workers=1, out=tmp_path / "out", progress=False, plots=True)
    folder = tmp_path / "out"
    assert sorted(p.name for p in (folder / "plots").iterdir()) == ["sweep.png", "trials.png"]
    config = load_config(folder / "best.yaml")
    assert config.output.dir == str(folder / "best-run")
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    state = fit(config, data.train_images, data.train_labels, split, pre, 4).state
    assert state.best_val_acc == result.best_val_acc
    from softmax_cls.training.checkpoint import load_checkpoint
    from softmax_cls.training.evaluate import evaluate_checkpoint

    checkpoint = load_checkpoint(folder / "best.npz")
    np.testing.assert_array_equal(checkpoint.W, state.best_W)
    np.testing.assert_array_equal(checkpoint.val_rows, split.val_rows)
    # the summary's test accuracy: the best weights on the test split, counted independently
    scores = pre.transform(data.test_images, np.float64) @ state.best_W.T.astype(np.float64)
    expected = float(np.mean(scores.argmax(axis=1) == data.test_labels))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test_acc"] == pytest.approx(expected)
    assert evaluate_checkpoint(folder / "best.npz", "test", progress=False).accuracy == \
        pytest.approx(expected)


class Poison:
    """A test split that fails on any use."""

    def _touched(self, *args, **kwargs):
        raise AssertionError("the test split was read during the sweep")

    __len__ = __getitem__ = __array__ = __iter__ = _touched

    def __getattr__(self, name):
        self._touched()


def test_a_tie_keeps_the_first_trials_best_npz_and_trains_nothing_again(tmp_path, served,
                                                                       monkeypatch):
    """Two trials that train alike (optim.tol: unused by SGD) tie: the study's best is the
    first told (optuna keeps the first of a tie), and so is best.npz, written when it
    finished; a best.npz of the later trial was trained again at the end."""
    import softmax_cls.training.fit as fit_module

    def no_training_again(*args, **kwargs):
        raise AssertionError("the best trial was trained again")

    monkeypatch.setattr(fit_module, "fit", no_training_again)  # the driver's process only
    path = write_sweep(tmp_path, sampler="grid", space={"optim.tol": {"grid": [1e-5, 1e-4]}})
    path.write_text(path.read_text().replace("trials: 4\n", ""))
    result = sweep.run_sweep(path, workers=1, out=tmp_path / "out", progress=False,
                             plots=False)
    rows = read_trials(tmp_path / "out")
    assert rows[0]["best_val_acc"] == rows[1]["best_val_acc"]
    assert result.best_number == 0


def test_the_test_split_is_read_once_after_the_last_trial(tmp_path, monkeypatch):
    data = sweep_data()
    folder = tmp_path / "out"
    loads = []

    def load(section, progress=True, **kwargs):
        loads.append(section)
        if len(loads) == 1:  # for the training cache: no usable test split
            return dataclasses.replace(data, test_images=Poison(), test_labels=Poison())
        # the final evaluation: every trial has finished by now
        assert [r["state"] for r in read_trials(folder)] == ["complete"] * 4
        return data

    monkeypatch.setattr(softmax_cls.data.cifar, "load_config_data", load)
    path = write_sweep(tmp_path, trials=4)
    result = sweep.run_sweep(path, workers=2, out=folder, progress=False, plots=False)
    assert len(loads) == 2 and result.test_acc is not None
    # the workers' data: the training rows and labels, nothing else
    cached = sorted(p.name for p in (folder / "cache").iterdir())
    assert cached == ["data.json", "train_images.npy", "train_labels.npy"]
    np.testing.assert_array_equal(np.load(folder / "cache" / "train_images.npy"),
                                  data.train_images)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (the cache's too) by its relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_finished_sweep_run_again_reads_no_data_and_writes_nothing(tmp_path):
    """softmax-sweep on a folder whose trials were all done read the training and test files
    again (their md5), scored the best trial on the test split again, appended to its
    journal and rewrote its files. As a finished run resumed in place, it now says so in
    one line; a trial told since, a result file missing or --trials raised finish it again,
    and the folder of another sweep is refused as before."""
    from test_features import linear_data

    X, y = linear_data(n=500, d=8)
    np.savez(tmp_path / "train.npz", X=X[:400], y=y[:400])
    np.savez(tmp_path / "test.npz", X=X[400:], y=y[400:])
    features = {**FAST, "optim.epochs": 2, "augment.translate": 0, "data.dataset": "features",
                "data.train": str(tmp_path / "train.npz"),
                "data.test": str(tmp_path / "test.npz")}
    path = write_sweep(tmp_path, trials=2, set=features)
    folder = tmp_path / "out"
    command = ("softmax-sweep", str(path), "--out", str(folder), "--no-plots", "--quiet")
    first = run(*command, cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    best = json.loads((folder / "summary.json").read_text())["best_trial"]
    before = folder_bytes(folder)
    data = {name: (tmp_path / name).read_bytes() for name in ("train.npz", "test.npz")}
    for name in data:
        (tmp_path / name).unlink()  # any read of the data now fails
    again = run(*command, "--plots", cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout == (f"{folder} already finished: 2 trials (2 complete), best trial "
                            f"{best}; raise --trials to run more; nothing written\n")
    assert folder_bytes(folder) == before and not (folder / "plots").exists()
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    study = study_of(folder)  # a trial another command on the study told since: finished again
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    told = run(*command, cwd=tmp_path, timeout=120)
    assert told.returncode == 0 and "trials: 2 complete, 1 failed" in told.stdout, told
    for name in ("best.yaml", "best.npz"):  # a file missing: the sweep finishes again
        (folder / name).unlink()
        remade = run(*command, cwd=tmp_path, timeout=120)
        assert remade.returncode == 0 and remade.stdout.startswith("best trial"), remade
        assert (folder / name).is_file()
    more = run(*command, "--trials", "4", cwd=tmp_path, timeout=120)
    assert more.returncode == 0, more.stderr
    assert "trials: 3 complete, 1 failed" in more.stdout
    assert json.loads((folder / "summary.json").read_text())["trials"] == 4
    # the folder of another sweep is refused, finished or not
    other = write_sweep(tmp_path, trials=4, seed=1, set=features)
    refused = run("softmax-sweep", str(other), "--out", str(folder), "--quiet", cwd=tmp_path,
                  timeout=120)
    assert_one_line_error(refused, 2, "holds another sweep")


@pytest.mark.parametrize("edit", ["missing", "another trial", "null"])
def test_a_finished_sweep_takes_its_best_trial_from_the_study(tmp_path, served, edit):
    """summary.json's best_trial is the study's word checked, not taken: an edited one said
    'already finished' naming a trial that was not the best (or raised a KeyError when the
    key was gone); the sweep finishes again instead and writes the study's best."""
    path = write_sweep(tmp_path, trials=2)
    folder = tmp_path / "out"
    sweep.run_sweep(path, workers=1, out=folder, progress=False, plots=False)
    summary = json.loads((folder / "summary.json").read_text())
    best = summary["best_trial"]
    assert sweep.run_sweep(path, workers=1, out=folder, progress=False,
                           plots=False).finished is not None
    if edit == "missing":
        del summary["best_trial"]
    else:
        summary["best_trial"] = None if edit == "null" else 1 - best
    (folder / "summary.json").write_text(json.dumps(summary))
    again = sweep.run_sweep(path, workers=1, out=folder, progress=False, plots=False)
    assert again.finished is None and again.best_number == best
    assert json.loads((folder / "summary.json").read_text())["best_trial"] == best


def test_pruned_trials_are_recorded_as_pruned(tmp_path, served):
    epochs = 4
    path = write_sweep(tmp_path, trials=10, pruner={"name": "median", "startup_trials": 2},
                       set={**FAST, "optim.epochs": epochs},
                       space={"optim.lr": {"log_uniform": [1.0e-9, 1.0e-2]}})
    sweep.run_sweep(path, workers=1, out=tmp_path / "out", progress=False, plots=False)
    folder = tmp_path / "out"
    rows = {int(r["number"]): r for r in read_trials(folder)}
    study = study_of(folder)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, "the sweep pruned nothing"
    for trial in study.trials:  # one worker: trials ran in number order
        earlier = [t for t in study.trials if t.number < trial.number
                   and t.state.name == "COMPLETE"]
        row = rows[trial.number]
        assert row["state"] == trial.state.name.lower()
        steps = sorted(trial.intermediate_values)
        assert int(row["epochs"]) == len(steps) == steps[-1]
        for step in steps:  # the median rule, recomputed: prune when below the median so far
            best_so_far = max(trial.intermediate_values[s] for s in steps if s <= step)
            should_stop = len(earlier) >= 2 and best_so_far < np.median(
                [t.intermediate_values[step] for t in earlier])
            assert should_stop == (trial.state.name == "PRUNED" and step == steps[-1]), (
                trial.number, step)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["counts"]["pruned"] == len(pruned)
    assert summary["counts"]["complete"] + len(pruned) == 10


def test_kill_9_then_the_same_command_finishes_exactly_n_trials(tmp_path):
    n = 6
    path = write_sweep(tmp_path, trials=n, set={**FAST, "optim.epochs": 15},
                       sampler="random")
    folder = tmp_path / "out"
    command = [*write_runner(tmp_path), str(path), "--out", str(folder), "--quiet"]
    log = (tmp_path / "first.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            found = states(folder) if (folder / "trials.csv").is_file() else []
            if found.count("complete") >= 2 and "running" in found:
                break
            assert process.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.02)
        else:
            pytest.fail("the sweep did not get going")
    finally:
        process.kill()
        process.wait()
        log.close()
    before = {int(r["number"]): r for r in read_trials(folder)}
    study = study_of(folder)
    left_running = [t for t in study.trials if t.state.name == "RUNNING"]
    assert left_running
    done_before = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}

    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet
    rows = read_trials(folder)
    numbers = [int(r["number"]) for r in rows]
    assert len(numbers) == len(set(numbers))
    study = study_of(folder)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == n
    assert {t.number: t.value for t in study.trials if t.number in done_before} == done_before
    for trial in left_running:  # marked interrupted, and run again with the same parameters
        assert {int(r["number"]): r["state"] for r in rows}[trial.number] == "interrupted"
        again = [t for t in study.trials if t.user_attrs.get("requeue_of") == trial.number]
        assert len(again) == 1 and again[0].params == trial.params
        assert again[0].state.name in ("COMPLETE", "PRUNED")
    assert set(before) <= set(numbers)
    assert f"best trial {json.loads((folder / 'summary.json').read_text())['best_trial']}" \
        in result.stdout


@pytest.mark.parametrize(("signal_number", "code", "word"),
                         [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_requeues_the_running_trials(tmp_path, signal_number, code, word):
    n = 5
    path = write_sweep(tmp_path, trials=n, set={**FAST, "optim.epochs": 15},
                       sampler="random")
    folder = tmp_path / "out"
    command = [*write_runner(tmp_path), str(path), "--out", str(folder), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 90
    while not ((folder / "trials.csv").is_file() and "running" in states(folder)):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert_one_line_error(result, code, f"{word}: the running trials were re-queued; to "
                          f"resume, run: softmax-sweep {path} --out {folder}")
    study = study_of(folder)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    interrupted = {int(r["number"]) for r in read_trials(folder) if r["state"] == "interrupted"}
    waiting = {t.user_attrs.get("requeue_of") for t in study.trials if t.state.name == "WAITING"}
    assert interrupted and interrupted <= waiting

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    study = study_of(folder)
    assert len([t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]) == n


def test_the_command_that_resumes_names_only_the_options_given():
    """--workers 1 is the default: left out, as every option not given; a storage's
    password is masked."""
    folder = Path("runs") / "s"
    assert sweep.resume_command("s.yaml", folder, None, None, None, 1, None) == (
        f"softmax-sweep s.yaml --out {folder}")
    assert sweep.resume_command("s.yaml", folder, "postgresql://ann:pw@host/db", "st", 9, 2,
                                None) == (
        f"softmax-sweep s.yaml --out {folder} --trials 9 --workers 2 "
        "--storage postgresql://ann:***@host/db --study st")


def test_two_commands_share_one_study_through_a_storage_url(tmp_path):
    """--storage with an RDB URL (SQLite here, PostgreSQL in the README: the same optuna
    code): two commands on one study reach the budget together, each in its own folder."""
    n = 8
    path = write_sweep(tmp_path, trials=n, set={**FAST, "optim.epochs": 10},
                       sampler="random")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    runner = write_runner(tmp_path)

    def command(folder: str) -> list[str]:
        return [*runner, str(path), "--out", str(tmp_path / folder), "--storage", url,
                "--study", "shared", "--quiet"]

    # the first command creates the study (one trial), as the README asks before many start
    created = subprocess.run([*command("a"), "--trials", "1"], capture_output=True, text=True,
                             timeout=120)
    assert created.returncode == 0, created.stderr
    both = [subprocess.Popen(command(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for folder in ("a", "b")]
    results = [process.communicate(timeout=180) for process in both]
    assert [process.returncode for process in both] == [0, 0], results
    study = optuna.load_study(study_name="shared", storage=url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert n <= len(finished) <= n + 1  # both may ask for the last trial at once
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    drivers = {json.dumps(t.user_attrs["driver"], sort_keys=True) for t in finished
               if t.number > 0}
    assert len(drivers) == 2  # both commands ran trials
    assert not (tmp_path / "a" / "study.journal").exists()  # the study lives in the URL
    for folder in ("a", "b"):
        assert (tmp_path / folder / "best.yaml").is_file()


def test_only_trials_of_gone_drivers_are_taken_for_interrupted(tmp_path, monkeypatch):
    """Another command's trial is left alone while its driver lives, and while it is being
    asked (created, its driver not yet recorded); a dead driver's trial is re-queued."""
    study = optuna.create_study(storage=sweep_study.open_storage_for(tmp_path), study_name="s")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    drivers = {"alive": sweep_study.this_driver(),
               "dead": {**sweep_study.this_driver(), "pid": int(finished.stdout)},
               "other host": {**sweep_study.this_driver(), "host": "elsewhere", "pid": 1}}
    trials = {}
    for name, driver in [*drivers.items(), ("being asked", None)]:
        trials[name] = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        if driver is not None:
            trials[name].set_user_attr("driver", driver)
    assert sweep_study.requeue_stale(study) == [trials["dead"].number]
    monkeypatch.setattr(sweep_study, "OWNERLESS_GRACE_SECONDS", 0.0)  # asked, then killed
    assert sweep_study.requeue_stale(study) == [trials["being asked"].number]
    states = {t.number: t.state.name for t in study.trials}
    assert [states[trials[name].number] for name in trials] == [
        "RUNNING", "FAIL", "RUNNING", "FAIL"]
    copies = [t.user_attrs["requeue_of"] for t in study.trials if t.state.name == "WAITING"]
    assert copies == [trials["dead"].number, trials["being asked"].number]


def test_a_trial_another_command_took_for_interrupted_is_not_told_again(tmp_path):
    """Its re-queued copy counts; the outcome is dropped, and no best.npz is written."""
    study = optuna.create_study(storage=sweep_study.open_storage_for(tmp_path), study_name="s",
                                direction="maximize")
    trial = study.ask()
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # by the other command
    future = cf.Future()
    future.set_result(TrialOutcome(trial.number, "complete", best_val_acc=0.9,
                                         best_epoch=1, epochs=1))
    sweep._tell(study, trial, None, future, tmp_path, {})
    (frozen,) = study.trials
    assert frozen.state.name == "FAIL" and frozen.user_attrs == {}
    assert not (tmp_path / "best.npz").exists()


def test_a_sweep_runs_on_a_dask_cluster(tmp_path, served):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(host="127.0.0.1", protocol="tcp://", n_workers=2,
                                  threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        path = write_sweep(tmp_path, trials=4,
                           pruner={"name": "median", "startup_trials": 1})
        result = sweep.run_sweep(path, dask=cluster.scheduler_address, out=tmp_path / "out",
                                 progress=False, plots=False)
    assert sorted(states(tmp_path / "out")) == sorted(
        ["complete"] * result.counts["complete"] + ["pruned"] * result.counts["pruned"])
    assert result.counts["complete"] + result.counts["pruned"] == 4
    assert result.counts["complete"] >= 1 and (tmp_path / "out" / "best.npz").is_file()


def test_dask_worker_processes_read_the_data_from_the_sweep_folder(
        tmp_path, served, thread_variables_restored):
    """Workers in processes of their own, as `dask worker` on another machine: this test's
    stand-in data loader is not theirs (their own would look for CIFAR-10 in ./data, and
    real data there has another fingerprint), so a trial completes only from the sweep
    folder's memory-mapped cache."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(host="127.0.0.1", protocol="tcp://", n_workers=2,
                                  threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        no_download = {**FAST, "data.download": False}  # never the network, even if broken
        result = sweep.run_sweep(write_sweep(tmp_path, trials=3, set=no_download),
                                 dask=cluster.scheduler_address, out=tmp_path / "out",
                                 progress=False, plots=False)
        worker_pids = set(client.run(os.getpid).values())
    assert os.getpid() not in worker_pids and len(worker_pids) == 2
    assert result.counts["complete"] == 3
    assert sorted(states(tmp_path / "out")) == ["complete"] * 3


def test_a_dask_address_nobody_listens_on_is_one_error(tmp_path, served, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(sweep, "DASK_CONNECT_SECONDS", 1)
    path = write_sweep(tmp_path, trials=1)
    with pytest.raises(SoftmaxClsError, match="--dask tcp://127.0.0.1:9: cannot connect"):
        sweep.run_sweep(path, dask="tcp://127.0.0.1:9", out=tmp_path / "out", progress=False,
                        plots=False)


@pytest.mark.parametrize("address", ["notanaddress", "tcp://host:port", "bogus://x:1"])
def test_a_dask_address_that_is_no_address_is_one_line_before_the_folder(tmp_path, address):
    """'notanaddress' (no port) was distributed's ValueError as a traceback, then 20 s of
    'Exception ignored in Client.__del__', with the sweep folder and its cache left behind."""
    pytest.importorskip("distributed")
    path = write_sweep(tmp_path, trials=1)
    result = run("softmax-sweep", str(path), "--dask", address, "--out", str(tmp_path / "out"),
                 cwd=tmp_path, timeout=60)
    assert_one_line_error(result, 2, f"--dask {address}: not a scheduler address",
                          "tcp://host:8786")
    assert not (tmp_path / "out").exists()


def test_another_sweep_in_the_same_folder_is_refused(tmp_path, served):
    sweep.run_sweep(write_sweep(tmp_path, trials=1), out=tmp_path / "out", progress=False,
                    plots=False)
    other = write_sweep(tmp_path, seed=5, trials=1)
    with pytest.raises(ConfigError, match="holds another sweep .seed differ"):
        sweep.run_sweep(other, out=tmp_path / "out", progress=False, plots=False)
    # more trials for the same sweep: it goes on from where it was
    result = sweep.run_sweep(write_sweep(tmp_path, trials=1), trials=3, out=tmp_path / "out",
                             progress=False, plots=False)
    assert result.counts["complete"] == 3


def test_a_worker_without_the_cache_loads_and_checks_the_data_itself(tmp_path, served):
    from softmax_cls.sweep.worker import TrialTask, run_trial

    data, loads = served
    config = config_from_dict(trial_raw_config(
        load_sweep(write_sweep(tmp_path)), {"optim.lr": 0.01, "optim.batch_size": 32}))
    raw = config_to_dict(config)
    task = TrialTask(number=0, trial_id=0, config=raw, cache_dir=str(tmp_path / "elsewhere"),
                     fingerprint=dict(data.fingerprint))
    outcome = run_trial(task)
    assert outcome.state == "complete" and len(loads) == 1
    assert outcome.val_accs == [h["val_acc"] for h in outcome.train_state.history]
    wrong = dataclasses.replace(task, cache_dir=str(tmp_path / "other"),
                                fingerprint={"x": "y"})
    failed = run_trial(wrong)
    assert failed.state == "failed" and "differs from the sweep's" in failed.error


def test_without_optuna_the_command_names_the_extra(tmp_path):
    path = write_sweep(tmp_path, trials=1)
    code = ("import sys; sys.modules['optuna'] = None\n"
            "from softmax_cls.cli import sweep_command\n"
            f"sweep_command.main([{str(path)!r}, '--out', {str(tmp_path / 'out')!r}])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert_one_line_error(result, 1, "pip install 'softmax-cls[sweep]'")


@pytest.mark.parametrize("entry", ["link", "file"])
def test_a_plots_link_or_file_is_refused_before_the_trials(tmp_path, entry):
    """SWEEP/plots a symbolic link (or a file): refused only when drawing, after every trial
    had run. Now before the folder is claimed or any data is read, naming --no-plots."""
    path = write_sweep(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    if entry == "link":
        (folder / "plots").symlink_to(tmp_path, target_is_directory=True)
    else:
        (folder / "plots").write_text("mine")
    result = run("softmax-sweep", str(path), "--out", str(folder), "--plots", cwd=tmp_path,
                 timeout=60)
    what = "is a symbolic link" if entry == "link" else "is not a folder"
    assert_one_line_error(result, 1, f"{folder / 'plots'} {what}", "--no-plots")
    assert sorted(p.name for p in folder.iterdir()) == ["plots"]


LATE_PLOTS_LINK = """
import os, sys
sys.path.insert(0, {tests!r})
import softmax_cls.data.cifar
from softmax_cls.sweep import driver
from sweep_util import sweep_data

softmax_cls.data.cifar.load_config_data = lambda section, progress=True, **kw: sweep_data()
drive = driver._drive

def trials_then_a_link(study, spec, folder, *args, **kwargs):
    drive(study, spec, folder, *args, **kwargs)
    os.symlink({target!r}, folder / "plots")  # made while the trials ran

driver._drive = trials_then_a_link
if __name__ == "__main__":
    from softmax_cls.cli import sweep_command
    sweep_command.main(sys.argv[1:], prog_name="softmax-sweep")
"""


def test_a_plots_link_made_while_the_trials_ran_names_no_plots_too(tmp_path):
    """The check before the trials named --no-plots; the drawing at the end, refusing a link
    that appeared in between, still said `choose the folder with --out`, which softmax-sweep
    takes for the whole sweep folder."""
    path = write_sweep(tmp_path, trials=1)
    folder, target = tmp_path / "out", tmp_path / "elsewhere"
    target.mkdir()
    script = tmp_path / "late_link.py"
    script.write_text(LATE_PLOTS_LINK.format(tests=str(Path(__file__).parent),
                                             target=str(target)))
    result = subprocess.run([sys.executable, str(script), str(path), "--out", str(folder),
                             "--plots", "--quiet"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert_one_line_error(result, 1, f"{folder / 'plots'} is a symbolic link", "--no-plots")
    assert "--out" not in result.stderr and not any(target.iterdir())


@pytest.mark.skipif(_cuda_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("space", [
    {"loss.reg": {"grid": [1.0e-2, 1.0e-3]}},              # a regularisation path
    {"optim.lr": {"grid": [1.0e-2, 1.0e-3]}},              # trials
])
def test_a_gpu_that_is_not_there_is_refused_before_the_sweep_folder(tmp_path, space):
    """device cuda on a machine without a GPU made the folder, its cache and study, failed
    every trial (or the path), and then refused the corrected sweep as another sweep."""
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({
        "set": {**FAST, "optim.solver": "lbfgs", "engine": "torch", "device": "cuda",
                "data.download": False},
        "sampler": "grid", "seed": 0, "pruner": "none", "space": space}))
    result = run("softmax-sweep", str(path), "--out", str(tmp_path / "out"), cwd=tmp_path,
                 timeout=60)
    assert_one_line_error(result, 1, "device cuda", "no CUDA GPU")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(_cuda_available(), reason="needs a machine without a CUDA GPU")
def test_softmax_train_refuses_a_gpu_that_is_not_there_before_reading_data(tmp_path):
    config = tmp_path / "gpu.yaml"
    config.write_text(yaml.safe_dump({
        "engine": "torch", "device": "cuda:0",
        "data": {"dataset": "features", "train": str(tmp_path / "missing.npz")},
        "output": {"dir": str(tmp_path / "run")}}))
    result = run("softmax-train", "--config", str(config), "--quiet", cwd=tmp_path,
                 timeout=60)
    assert_one_line_error(result, 1, "device cuda:0", "no CUDA GPU")
    assert not (tmp_path / "run").exists()


def sweep_folder_table() -> dict[str, str]:
    """docs/sweeps.md's table of the sweep folder: each name in its first column (a folder
    ends in /) -> the row's description."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    table = text.split("## The sweep folder", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            for name in cells[0].split(", "):
                rows[name.strip("`")] = cells[1]
    return rows


def test_the_sweep_folder_table_is_what_a_sweep_writes(tmp_path, served):
    """Every file and folder a finished sweep leaves, and the run folder its best.yaml trains
    into (best-run/, which the table lacked), has a row in docs/sweeps.md, every row is
    written, and a folder's row names each file in it (best-run/: a run folder's)."""
    pytest.importorskip("matplotlib")
    from softmax_cls.training.runs import RUN_FILES, train_run

    data, _ = served
    path = write_sweep(tmp_path, trials=2)
    sweep.run_sweep(path, workers=1, out=tmp_path / "out", progress=False, plots=True)
    table = sweep_folder_table()

    def listing() -> set[str]:
        return {entry.name + ("/" if entry.is_dir() else "")
                for entry in (tmp_path / "out").iterdir()}

    by_sweep = listing()
    best = load_config(tmp_path / "out" / "best.yaml")
    train_run(best, data, best.output.dir, progress=False)  # softmax-train --config best.yaml
    written = listing()
    assert written == set(table)
    best_run = f"{Path(best.output.dir).name}/"
    assert written - by_sweep == {best_run}
    assert table[best_run].startswith("not written by the sweep")
    assert all(f"`{name}`" in table[best_run] for name in RUN_FILES)
    for folder in (name for name in written if name.endswith("/")):
        inside = sorted(entry.name for entry in (tmp_path / "out" / folder).iterdir())
        assert inside and all(f"`{name}`" in table[folder] for name in inside), (folder, inside)


def test_trials_csv_columns_hold_what_their_names_say(tmp_path):
    """sweeps.md: number, state, each searched key, best val accuracy, best epoch, epochs
    run, seconds; a pruned trial's best val accuracy is the best it reported."""
    spec = load_sweep(write_sweep(tmp_path))
    study = optuna.create_study(direction="maximize")
    distributions = {"optim.lr": optuna.distributions.FloatDistribution(1e-8, 0.1, log=True),
                     "optim.batch_size": optuna.distributions.CategoricalDistribution([32, 64])}
    params = {"optim.lr": 0.01, "optim.batch_size": 64}
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=distributions, value=0.5,
        user_attrs={"best_val_acc": 0.5, "best_epoch": 2, "epochs": 5, "seconds": 1.5}))
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params=params, distributions=distributions,
        intermediate_values={0: 0.3, 1: 0.45, 2: 0.4}, user_attrs={"epochs": 3}))
    write_trials_csv(tmp_path, study, spec)
    assert read_trials(tmp_path) == [
        {"number": "0", "state": "complete", "optim.lr": "0.01", "optim.batch_size": "64",
         "best_val_acc": "0.5", "best_epoch": "2", "epochs": "5", "seconds": "1.5"},
        {"number": "1", "state": "pruned", "optim.lr": "0.01", "optim.batch_size": "64",
         "best_val_acc": "0.45", "best_epoch": "", "epochs": "3", "seconds": ""}]


def test_a_trial_of_a_driver_on_another_host_is_never_taken_for_interrupted(tmp_path):
    """A pid on another host says nothing about this host's processes: even one that names
    no live process here is left running. (test_only_trials_of_gone_drivers_... gives the other
    host pid 1: only a run as root, which may signal pid 1, catches a stale check there.)"""
    study = optuna.create_study(storage=sweep_study.open_storage_for(tmp_path), study_name="s")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("driver", {**sweep_study.this_driver(), "host": "elsewhere",
                                   "pid": int(finished.stdout)})
    assert sweep_study.requeue_stale(study) == []
    assert [t.state.name for t in study.trials] == ["RUNNING"]


def test_plots_or_no_plots_wins_over_the_base_configs_output_plots():
    """commands.md: --plots/--no-plots, default: as the base config's output.plots says."""
    from softmax_cls.sweep.results import want_plots

    for plots in (True, False):
        base = config_from_dict({"output": {"plots": plots}})
        assert want_plots(None, base) is plots
        assert want_plots(not plots, base) is (not plots)


def test_an_interrupted_grid_point_runs_once_more_and_no_point_twice(tmp_path):
    """sweeps.md: an interrupted trial runs again with the same parameters; a grid runs each
    point once. While its re-queued copy waits, no point is enqueued beside it."""
    path = write_sweep(tmp_path, sampler="grid", trials=None,
                       space={"optim.lr": {"grid": [0.1, 0.01, 0.001]}})
    path.write_text(path.read_text().replace("trials: null\n", ""))
    spec = load_sweep(path)
    study = optuna.create_study(direction="maximize")
    sweep_study.enqueue_next_grid_point(study, spec)
    first = study.ask()
    assert suggest(first, spec) == {"optim.lr": 0.1}
    assert sweep_study.requeue_stale(study, {first.number}) == [first.number]
    points = []
    while sweep_study.enqueue_next_grid_point(study, spec) or any(
            t.state.name == "WAITING" for t in study.trials):
        trial = study.ask()
        points.append(suggest(trial, spec)["optim.lr"])
        study.tell(trial, 0.5)
    assert points == [0.1, 0.01, 0.001]


def test_a_requeue_interrupted_midway_does_not_enqueue_the_trial_twice(tmp_path):
    """requeue_stale is idempotent: a trial whose copy was enqueued by a requeue that died
    before marking it failed gets no second copy."""
    study = optuna.create_study(storage=sweep_study.open_storage_for(tmp_path), study_name="s")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.enqueue_trial(trial.params, user_attrs={"requeue_of": trial.number})  # then killed
    assert sweep_study.requeue_stale(study, {trial.number}) == [trial.number]
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]


def test_a_worker_reuses_a_split_only_for_trials_of_the_same_split_and_statistics(tmp_path,
                                                                                 monkeypatch):
    """Each variant's (split, statistics) against split_and_fit's own, asked twice round
    more variants than the worker keeps."""
    from test_features import linear_data, write_config

    from softmax_cls.sweep import worker

    monkeypatch.setattr(worker, "_SPLITS", {})
    X, y = linear_data(n=300, d=4)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    raw = config_to_dict(load_config(write_config(tmp_path, train=str(tmp_path / "train.npz"))))
    changes = [{}, {"seed": 2}, {"data": {"val_size": 50}}, {"preprocess": {"center": False}},
               {"preprocess": {"scale": "unit"}}, {"preprocess": {"bias": False}}]
    configs = [config_from_dict({**raw, **{key: {**raw[key], **value} if isinstance(
        value, dict) else value for key, value in change.items()}}) for change in changes]
    data = worker.TrainingData(X, y, ("a", "b", "c"), {})
    for config in [*configs, *configs]:
        split, pre = worker._split_and_statistics(config, data)
        want_split, want_pre = split_and_fit(config, X, y)
        np.testing.assert_array_equal(split.val_rows, want_split.val_rows)
        np.testing.assert_array_equal(pre.mean, want_pre.mean)
        np.testing.assert_array_equal(pre.scale, want_pre.scale)
        assert pre.bias == want_pre.bias
        assert len(worker._SPLITS) <= worker.SPLIT_CACHE_SIZE


def test_a_trial_that_diverges_or_trains_no_epoch_or_has_a_bad_config_is_reported(
        tmp_path, monkeypatch):
    """run_trial's bookkeeping around fit (faked): a divergence keeps the epochs validated
    before it, a solve that stopped before validating reports no best, and a config the
    sampled values made invalid is a failed trial, not an exception."""
    from types import SimpleNamespace

    from test_features import linear_data, write_config

    from softmax_cls.sweep import worker
    from softmax_cls.training.fit import TrainingDiverged

    X, y = linear_data(n=300, d=4)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    raw = config_to_dict(load_config(write_config(tmp_path, train=str(tmp_path / "train.npz"))))
    data = worker.TrainingData(X, y, ("a", "b", "c"), {})
    monkeypatch.setattr(worker, "worker_data", lambda task: data)
    task = worker.TrialTask(number=3, trial_id=3, config=raw, cache_dir="unused", fingerprint={})

    def diverging(config, rows, labels, split, pre, n_classes, on_epoch, warn):
        history = []
        for epoch, accuracy in ((1, 0.7), (2, 0.5)):
            history.append({"val_acc": accuracy})
            on_epoch(SimpleNamespace(epoch=epoch, history=list(history), best_val_acc=0.7,
                                     best_epoch=1))
        raise TrainingDiverged("non-finite loss in epoch 3")

    monkeypatch.setattr(worker, "fit", diverging)
    outcome = worker.run_trial(task)
    assert (outcome.state, outcome.error) == ("failed", "non-finite loss in epoch 3")
    assert (outcome.val_accs, outcome.best_val_acc, outcome.best_epoch, outcome.epochs) == (
        [0.7, 0.5], 0.7, 1, 2)

    unvalidated = SimpleNamespace(epoch=0, history=[], best_val_acc=None, best_epoch=None)
    monkeypatch.setattr(worker, "fit", lambda *args, **kwargs: SimpleNamespace(
        state=unvalidated))
    outcome = worker.run_trial(task)
    assert (outcome.state, outcome.val_accs, outcome.best_val_acc, outcome.epochs) == (
        "complete", [], None, 0)

    bad = dataclasses.replace(task, config={**raw, "optim": {**raw["optim"], "lr": -1.0}})
    outcome = worker.run_trial(bad)
    assert outcome.state == "failed" and "optim.lr" in outcome.error
