"""The run folder: a training run's files on top of the pure fit().

A run folder holds config.yaml, history.jsonl, last.npz (after every epoch, and before the
first), best.npz (the model weights of the best validation epoch so far) and summary.json
(the one evaluation on the test split, made at the end). Resuming continues last.npz.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import (
    Config,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    parse_yaml,
)
from ..data.cifar import load_config_data
from ..data.labelled import LabelledData
from ..engines import get_engine
from ..errors import ConfigError, SoftmaxClsError
from ..fsutil import FolderBusy, atomic_write, folder_lock, fsync_dir
from ..interrupts import stop_word_and_code
from ..math.preprocess import Preprocessor, Split, split_and_fit
from ..plots.pictures import plot_run, plots_wanted
from .checkpoint import Checkpoint, check_matches, load_checkpoint, save_checkpoint
from .fit import FitResult, TrainState, fit, initial_state, validation_metrics

# What a resumed run may not change: the data, the split, the features and the initial weights.
FIXED_ON_RESUME = ("seed", "data.dataset", "data.format", "data.labels", "data.val_size",
                   "data.train", "preprocess", "model")


RUN_FILES = ("config.yaml", "history.jsonl", "best.npz", "last.npz", "summary.json")


class TrainingInterrupted(SoftmaxClsError):
    """Ctrl-C or SIGTERM: the last completed epoch is saved in last.npz. Exit code 130 for
    Ctrl-C, 143 for SIGTERM (128 + the signal's number, as a shell reports it)."""

    exit_code = 130


class RunFolderBusy(SoftmaxClsError):
    """Another process is writing the run folder."""


@dataclass
class RunResult:
    state: TrainState
    out_dir: Path
    test_loss: float | None
    test_acc: float | None
    stopped_early: bool
    pictures: list[Path] = field(default_factory=list)


def copy_state(state: TrainState) -> TrainState:
    """A copy that later epochs do not change (the arrays and the history are copied)."""
    return TrainState(state.W.copy(), state.velocity.copy(), state.average.copy(),
                      state.best_W.copy(), state.epoch, state.best_epoch, state.best_val_acc,
                      state.epochs_since_best, [dict(row) for row in state.history])


def with_absolute_paths(config: Config) -> Config:
    """The config with data.root, data.archive, data.train and data.test made absolute (from
    the current folder), so a run's config means the same from any folder later."""
    data = config.data
    paths = {key: os.path.abspath(getattr(data, key)) for key in ("root", "archive", "train",
                                                                   "test")
             if getattr(data, key) is not None}
    return dataclasses.replace(config, data=dataclasses.replace(data, **paths))


def run_files(out_dir: Path) -> list[str]:
    """The run files (RUN_FILES) present in `out_dir`."""
    return [name for name in RUN_FILES if (out_dir / name).exists()]


def train_run(config: Config, data: LabelledData, out_dir: str | Path,
              resume: Checkpoint | None = None, progress: bool = True, *,
              overwrite: bool = False) -> RunResult:
    """Train on `data` as `config` says, writing the run folder `out_dir`; continue the
    checkpoint `resume` when given. The test split is used once, after training, to evaluate
    the best weights (read from disk then when `data` left it there: LabelledData.with_test).

    One run per folder: the folder is locked while this runs (RunFolderBusy if another
    process has it). A new run refuses a folder that holds another run's files unless
    `overwrite`, which deletes them first; a resumed run may write its own folder (the one
    `resume.path` is in) or an empty one. Resuming needs optim.epochs >= the epochs done.
    best.npz is always the best epoch's own checkpoint (its state and history) with the model
    weights as W. Raises TrainingDiverged or TrainingInterrupted; last.npz then holds the
    last completed epoch, best.npz the best so far, and summary.json is absent until the end.
    """
    with _open_run(config, data, out_dir, resume, overwrite) as run:
        fitted = run.train(data, progress)
        return run.finish(fitted, data.with_test())


@contextlib.contextmanager
def _open_run(config: Config, data: LabelledData, out_dir: str | Path,
              resume: Checkpoint | None, overwrite: bool) -> Iterator[_Run]:
    """The checks of train_run, the split and preprocessing, then the locked, prepared run
    folder (see _Run) until the block ends."""
    out_dir = Path(out_dir)
    config = with_absolute_paths(config)
    if resume is not None and config.optim.epochs < resume.state.epoch:
        raise ConfigError(f"optim.epochs: the checkpoint has done {resume.state.epoch} epochs; "
                          f"resuming needs optim.epochs >= {resume.state.epoch}, got "
                          f"{config.optim.epochs}")
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    if resume is not None and not np.array_equal(resume.val_rows, split.val_rows):
        raise ConfigError("data.val_size: the split differs from the checkpoint's val_rows")
    with contextlib.ExitStack() as stack:
        _lock_run_folder(stack, out_dir)
        run = _Run.prepare(config, data, out_dir, resume, overwrite, split, pre)
        del data  # held no longer here: the caller may free the rows while the run goes on
        yield run


def _check_folder(out_dir: Path, resuming: bool, resume_path: str | Path | None,
                  overwrite: bool) -> list[str]:
    """The run files in `out_dir` that --overwrite replaces; ConfigError if the folder holds
    another run and not `overwrite`. A resumed run's own folder holds its own run."""
    present = run_files(out_dir)
    own_folder = (resume_path is not None
                  and Path(resume_path).resolve().parent == out_dir.resolve())
    if not present or own_folder:
        return []
    if not overwrite:
        what = "another run" if resuming else "a run"
        raise ConfigError(f"{out_dir} already holds {what}: pass --overwrite to replace it, "
                          f"--resume {out_dir / 'last.npz'} to continue it, or another --out")
    return present


def _best_source(resume: Checkpoint | None, resume_path: str | Path | None) -> Path | None:
    """The best.npz beside the resumed checkpoint, if it is that run's best epoch."""
    if resume is None or resume.state.best_epoch == 0 or resume_path is None:
        return None
    best = Path(resume_path).parent / "best.npz"
    return best if _is_best_of(best, resume) else None


def _is_best_of(path: Path, resume: Checkpoint) -> bool:
    """Whether `path` is the best-epoch checkpoint of the run `resume` continues."""
    if not path.is_file():
        return False
    try:
        best = load_checkpoint(path)
    except SoftmaxClsError:
        return False
    return (best.state.epoch == resume.state.best_epoch
            and np.array_equal(best.state.best_W, resume.state.best_W)
            and best.fingerprint == resume.fingerprint)


class _Run:
    """A locked run folder being written: the checkpoints after every epoch (train), then the
    test evaluation and the summary (finish). It holds no data rows, so a caller can free
    the training rows between the two."""

    def __init__(self, config: Config, out_dir: Path, split: Split, pre: Preprocessor,
                 data: LabelledData, state: TrainState):
        self.config, self.out_dir, self.split, self.pre = config, out_dir, split, pre
        self.class_names, self.fingerprint = data.class_names, data.fingerprint
        self.config_yaml = config_to_yaml(config)
        self.state = state
        self.last = copy_state(state)  # the last completed epoch, as last.npz must hold it

    @classmethod
    def prepare(cls, config: Config, data: LabelledData, out_dir: Path,
                resume: Checkpoint | None, overwrite: bool, split: Split, pre: Preprocessor
                ) -> _Run:
        """Clear the folder as train_run says, write config.yaml, last.npz and the best.npz
        a resumed run keeps."""
        resume_path = None if resume is None else resume.path
        best_source = _best_source(resume, resume_path)
        if best_source is not None:  # read before --overwrite might delete it
            best_bytes = best_source.read_bytes()
        for name in _check_folder(out_dir, resume is not None, resume_path, overwrite):
            (out_dir / name).unlink()
        fsync_dir(out_dir)
        state = (initial_state(config, pre.n_features, len(data.class_names)) if resume is None
                 else resume.state)
        run = cls(config, out_dir, split, pre, data, state)
        (out_dir / "summary.json").unlink(missing_ok=True)  # written again at the end
        with atomic_write(out_dir / "config.yaml", "w") as handle:
            handle.write(run.config_yaml)
        run.save("last.npz", state)
        if best_source is not None and not (out_dir / "best.npz").exists():
            with atomic_write(out_dir / "best.npz") as handle:
                handle.write(best_bytes)
        elif resume is not None and best_source is None:
            (out_dir / "best.npz").unlink(missing_ok=True)  # not this run's best epoch
            if state.best_epoch == state.epoch > 0:
                run.save("best.npz", state, model=True)  # the checkpoint is its own best epoch
        return run

    def save(self, name: str, state: TrainState, status: str = "running", model: bool = False
             ) -> None:
        save_checkpoint(self.out_dir / name, state, self.pre, self.class_names,
                        self.config_yaml, self.fingerprint, status, self.split.val_rows,
                        W=state.best_W if model else None)

    def on_epoch(self, state: TrainState) -> None:
        self.last = copy_state(state)
        if state.best_epoch == state.epoch:
            self.save("best.npz", self.last, model=True)
        self.save("last.npz", self.last)
        write_history(self.out_dir / "history.jsonl", self.last.history)

    def train(self, data: LabelledData, progress: bool) -> FitResult:
        """fit() on data's training rows, a checkpoint after every epoch; on Ctrl-C or SIGTERM
        last.npz is written again and TrainingInterrupted raised."""
        try:
            return fit(self.config, data.train_images, data.train_labels, self.split, self.pre,
                       len(self.class_names), state=self.state, on_epoch=self.on_epoch,
                       progress=progress)
        except KeyboardInterrupt as exc:
            last = self.out_dir / "last.npz"
            self.save("last.npz", self.last)  # again: the signal may have cut that very write
            write_history(self.out_dir / "history.jsonl", self.last.history)
            word, code = stop_word_and_code(exc)
            error = TrainingInterrupted(
                f"{word}: {last} holds the last completed epoch ({self.last.epoch}); resume "
                f"with softmax-train --resume {last}")
            error.exit_code = code
            raise error from None

    def finish(self, fitted: FitResult, data: LabelledData) -> RunResult:
        """Evaluate the best weights on data's test split (in memory), mark last.npz complete
        and write summary.json."""
        state = fitted.state
        test_loss = test_acc = None
        if data.n_test:
            test_loss, test_acc = validation_metrics(get_engine(self.config.engine),
                                                     state.best_W, self.pre, data.test_images,
                                                     data.test_labels, self.config.loss.clip)
        out_dir = self.out_dir
        if not (out_dir / "best.npz").exists():  # resumed from a lone last.npz, no better epoch
            self.save("best.npz", state, model=True, status="best weights only")
        self.save("last.npz", state, status="complete")
        summary = {"epochs": state.epoch, "best_epoch": state.best_epoch,
                   "best_val_acc": state.best_val_acc, "test_loss": test_loss,
                   "test_acc": test_acc, "stopped_early": fitted.stopped_early}
        with atomic_write(out_dir / "summary.json", "w") as handle:
            json.dump(summary, handle, indent=2)
        return RunResult(state, out_dir, test_loss, test_acc, fitted.stopped_early)


def write_history(path: Path, history: list[dict]) -> None:
    """The per-epoch history as JSON lines, rewritten atomically."""
    with atomic_write(path, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in history)


def start_or_resume(
    config_path: str | None,
    overrides: Iterable[str] = (),
    out: str | None = None,
    resume: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    plots: bool | None = None,
) -> RunResult:
    """Train from a config file, or continue the checkpoint `resume` (its own config, unless
    a config file is given, plus overrides); the run folder is `out`, or else output.dir for a
    new run and the checkpoint's folder for a resumed one. The folder is checked (see
    train_run) before the data is loaded. A resumed run does not download data unless the
    overrides set data.download. At the end the run's pictures are drawn into RUN/plots when
    `plots` (default: output.plots) says so."""
    overrides = list(overrides)
    checkpoint = None
    if resume is None:
        if config_path is None:
            raise ConfigError("--config FILE is required (or --resume CHECKPOINT)")
        config = load_config(config_path, overrides)
        out_dir = Path(out or config.output.dir)
    else:
        checkpoint = load_checkpoint(resume)
        if config_path is None:
            config = config_from_dict(parse_yaml(checkpoint.config_yaml, f"{resume} config"),
                                      overrides)
        else:
            config = load_config(config_path, overrides)
        _check_resumable(checkpoint.config, config)
        if config.optim.epochs < checkpoint.state.epoch:
            raise ConfigError(f"optim.epochs: the checkpoint has done {checkpoint.state.epoch} "
                              f"epochs; resuming needs optim.epochs >= "
                              f"{checkpoint.state.epoch}, got {config.optim.epochs}")
        if not any(text.split("=", 1)[0].strip() in ("data", "data.download")
                   for text in overrides):
            config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                          download=False))
        out_dir = Path(out) if out else Path(resume).parent
    _precheck_folder(out_dir, resume, overwrite)
    want_plots = plots_wanted(config.output.plots if plots is None else plots)
    # the test split stays on disk during training: it is read after the training rows are
    # freed, which keeps it (and matplotlib, imported to draw) out of the peak memory
    data = load_config_data(config.data, progress, keep_test=False)
    if checkpoint is not None:
        check_matches(checkpoint, data, resume)
    with _open_run(config, data, out_dir, checkpoint, overwrite) as run:
        fitted = run.train(data, progress)
        if data.n_test:  # the pictures of a run without a test split show its val rows
            data = data.without_train()
        data = data.with_test()
        result = run.finish(fitted, data)
    if want_plots:
        split = "test" if data.n_test else "val"
        result.pictures = plot_run(out_dir, split=split, data=data)
    return result


def _lock_run_folder(stack: contextlib.ExitStack, out_dir: Path) -> None:
    """Hold the run folder's lock until `stack` closes; RunFolderBusy if another process has
    it."""
    try:
        stack.enter_context(folder_lock(out_dir, wait=False))
    except FolderBusy as exc:
        raise RunFolderBusy(f"{out_dir} is {exc.strerror} (another softmax-train writing "
                            "it); wait for it to end or choose another --out") from None


def _precheck_folder(out_dir: Path, resume_path: str | None, overwrite: bool) -> None:
    """The folder checks of train_run, made early so a refusal costs no data loading."""
    if not out_dir.is_dir():
        return
    with contextlib.ExitStack() as stack:
        _lock_run_folder(stack, out_dir)
        _check_folder(out_dir, resume_path is not None, resume_path, overwrite)


def _check_resumable(before: Config, after: Config) -> None:
    old, new = config_to_dict(before), config_to_dict(after)
    for key in FIXED_ON_RESUME:
        a, b = old, new
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            raise ConfigError(f"{key}: cannot change when resuming (checkpoint has {a!r}, "
                              f"now {b!r})")
