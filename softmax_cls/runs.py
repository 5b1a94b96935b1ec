"""The run folder: a training run's files on top of the pure fit().

A run folder holds config.yaml, history.jsonl, last.npz (after every epoch, and before the
first), best.npz (the model weights of the best validation epoch so far) and summary.json
(the one evaluation on the test split, made at the end). Resuming continues last.npz.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, check_matches, load_checkpoint, save_checkpoint
from .config import (
    Config,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    parse_yaml,
)
from .data import CifarData, load_config_data
from .engines import get_engine
from .errors import ConfigError, SoftmaxClsError
from .fsutil import atomic_write
from .preprocess import split_and_fit
from .train import TrainState, fit, initial_state, validation_metrics

# What a resumed run may not change: the data, the split, the features and the initial weights.
FIXED_ON_RESUME = ("seed", "data.dataset", "data.format", "data.labels", "data.val_size",
                   "data.train", "preprocess", "model")


class TrainingInterrupted(SoftmaxClsError):
    """Ctrl-C: the last completed epoch is saved in last.npz."""

    exit_code = 130


@dataclass
class RunResult:
    state: TrainState
    out_dir: Path
    test_loss: float | None
    test_acc: float | None
    stopped_early: bool


def train_run(config: Config, data: CifarData, out_dir: str | Path,
              resume: Checkpoint | None = None, progress: bool = True) -> RunResult:
    """Train on `data` as `config` says, writing the run folder `out_dir`; continue the
    checkpoint `resume` when given. The test split is read once, after training, to
    evaluate the best weights. Raises TrainingDiverged or TrainingInterrupted; last.npz then
    holds the last completed epoch.
    """
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    if resume is not None and not np.array_equal(resume.val_rows, split.val_rows):
        raise ConfigError("data.val_size: the split differs from the checkpoint's val_rows")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = config_to_yaml(config)
    with atomic_write(out_dir / "config.yaml", "w") as handle:
        handle.write(config_yaml)
    state = (initial_state(config, pre.n_features, len(data.class_names)) if resume is None
             else resume.state)

    def save(name: str, state: TrainState, status: str = "running", model: bool = False
             ) -> None:
        save_checkpoint(out_dir / name, state, pre, data.class_names, config_yaml,
                        data.fingerprint, status, split.val_rows,
                        W=state.best_W if model else None)

    def on_epoch(state: TrainState) -> None:
        if state.best_epoch == state.epoch:
            save("best.npz", state, model=True)
        save("last.npz", state)
        write_history(out_dir / "history.jsonl", state.history)

    save("last.npz", state)
    if state.best_epoch > 0:  # a resumed run, perhaps into another folder
        save("best.npz", state, model=True)
    try:
        result = fit(config, data.train_images, data.train_labels, split, pre,
                     len(data.class_names), state=state, on_epoch=on_epoch, progress=progress)
    except KeyboardInterrupt:
        last = out_dir / "last.npz"
        raise TrainingInterrupted(f"interrupted: {last} holds the last completed epoch; "
                                  f"resume with softmax-train --resume {last}") from None
    state = result.state
    test_loss = test_acc = None
    if len(data.test_labels):
        test_loss, test_acc = validation_metrics(get_engine(config.engine), state.best_W, pre,
                                                 data.test_images, data.test_labels,
                                                 config.loss.clip)
    save("last.npz", state, status="complete")
    summary = {"epochs": state.epoch, "best_epoch": state.best_epoch,
               "best_val_acc": state.best_val_acc, "test_loss": test_loss, "test_acc": test_acc,
               "stopped_early": result.stopped_early}
    with atomic_write(out_dir / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    return RunResult(state, out_dir, test_loss, test_acc, result.stopped_early)


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
) -> RunResult:
    """Train from a config file, or continue the checkpoint `resume` (its own config, unless
    a config file is given, plus overrides); the run folder is `out`, or else output.dir for a
    new run and the checkpoint's folder for a resumed one."""
    if resume is None:
        if config_path is None:
            raise ConfigError("--config FILE is required (or --resume CHECKPOINT)")
        config = load_config(config_path, overrides)
        data = load_config_data(config.data, progress)
        return train_run(config, data, out or config.output.dir, progress=progress)

    checkpoint = load_checkpoint(resume)
    if config_path is None:
        config = config_from_dict(parse_yaml(checkpoint.config_yaml, resume), overrides)
    else:
        config = load_config(config_path, overrides)
    _check_resumable(checkpoint.config, config)
    data = load_config_data(config.data, progress)
    check_matches(checkpoint, data, resume)
    return train_run(config, data, out or Path(resume).parent, resume=checkpoint,
                     progress=progress)


def _check_resumable(before: Config, after: Config) -> None:
    old, new = config_to_dict(before), config_to_dict(after)
    for key in FIXED_ON_RESUME:
        a, b = old, new
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            raise ConfigError(f"{key}: cannot change when resuming (checkpoint has {a!r}, "
                              f"now {b!r})")
