"""One sweep trial, run in a worker process (local or on a Dask cluster).

A worker gets a TrialTask (the trial's complete config and where things are), trains with the
pure fit() on the training rows only, reports the val accuracy of every epoch to the study so
the pruner can stop it, and returns a TrialOutcome. It never sees the test split: the data
cache holds the training rows and labels only.

Data, loaded once per worker process and kept for its later trials:
- the memory-mapped cache `<sweep>/cache/train_images.npy` (N, P) uint8 (or float32 features)
  and `train_labels.npy` (N,) int64, when the worker can see that folder (the same machine, or
  a shared filesystem), so K workers share one copy of the pages;
- otherwise (a Dask worker on another machine) the config's data through
  data.cifar.load_config_data, checked against the driver's fingerprint; its test arrays are dropped
  unread.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import config_from_dict
from ..data import cifar as data_module
from ..errors import DataError, SoftmaxClsError
from ..fsutil import file_problem, read_capped
from ..math.preprocess import Preprocessor, Split, split_and_fit
from ..threads import THREAD_VARIABLES
from ..training.fit import TrainingDiverged, TrainState, fit

CACHE_IMAGES, CACHE_LABELS, CACHE_META = "train_images.npy", "train_labels.npy", "data.json"
CACHE_META_CAP = 1 << 20  # bytes of data.json read at most (it holds a few hundred)
SPLIT_CACHE_SIZE = 4  # (split, statistics) pairs a worker keeps for trials that share them


@dataclass(frozen=True)
class TrainingData:
    """Training rows (N, P) uint8 or float32 (often a read-only np.memmap), labels (N,) int64,
    the class names and the data fingerprint {file: md5}. No test split."""

    rows: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: dict[str, str]


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs for one trial: its number and storage id, its complete config (a
    raw mapping), the data cache folder and fingerprint, and, to report to the pruner, the
    study's storage (a URL, or `journal:PATH`) and name with the pruner's settings (None: no
    pruning)."""

    number: int
    trial_id: int
    config: dict
    cache_dir: str
    fingerprint: dict[str, str]
    storage: str | None = None
    study_name: str | None = None
    pruner: dict | None = None


@dataclass
class TrialOutcome:
    """state: "complete", "pruned" or "failed". val_accs: the val accuracy of each epoch run.
    For a complete trial, `train_state`, `pre` and `val_rows` hold its final TrainState and
    the statistics and validation rows it trained with, for its checkpoint. `warning`: the
    one line of a solve that stopped short of optim.tol (the driver prints it)."""

    number: int
    state: str
    val_accs: list[float] = field(default_factory=list)
    best_val_acc: float | None = None
    best_epoch: int | None = None
    epochs: int = 0
    seconds: float = 0.0
    error: str | None = None
    warning: str | None = None
    train_state: TrainState | None = None
    pre: Preprocessor | None = None
    val_rows: np.ndarray | None = None
    env: dict = field(default_factory=dict)
    worker_pid: int | None = None


class TrialPruned(Exception):
    """Raised from the epoch callback: the pruner stopped this trial."""


_DATA: dict[str, TrainingData] = {}
_SPLITS: dict[tuple, tuple[Split, Preprocessor]] = {}
_STUDIES: dict[tuple, object] = {}


def watch_parent(parent: int, interval: float = 0.5) -> None:
    """Process-pool initializer: exit this worker as soon as the sweep process that started
    it (pid `parent`) is gone, idle or busy; after a kill -9 of the sweep its workers would
    otherwise wait forever (each holds its task queue's write end, so it never sees EOF)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def write_cache(cache_dir: str | Path, data, data_section: dict) -> dict:
    """Write the TRAINING rows and labels of `data` (a LabelledData) to .npy files in cache_dir,
    then data.json (written last: its presence marks a complete cache). Returns the data.json
    written. The test arrays are not touched.

    Another sweep command on the same folder may have written the same cache meanwhile: its
    data.json, which describes these very rows, stays in place while they are written again
    (removing it made that command, or its workers, find no cache). A data.json of other data
    goes first, so that it never vouches for rows it does not describe."""
    from ..fsutil import atomic_write

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps(
        {"data": data_section, "class_names": list(data.class_names),
         "fingerprint": data.fingerprint, "dataset": data.dataset,
         "shape": list(data.train_images.shape), "dtype": str(data.train_images.dtype)}))
    if cache_meta(cache_dir) != meta:
        (cache_dir / CACHE_META).unlink(missing_ok=True)
    for name, array in ((CACHE_IMAGES, data.train_images), (CACHE_LABELS, data.train_labels)):
        with atomic_write(cache_dir / name) as handle:
            np.save(handle, np.ascontiguousarray(array))
    with atomic_write(cache_dir / CACHE_META, "w") as handle:
        json.dump(meta, handle, indent=2)
    return meta


def cache_meta(cache_dir: str | Path) -> dict | None:
    """The cache's data.json, or None when there is no complete cache."""
    path = Path(cache_dir) / CACHE_META
    if not path.is_file():
        return None
    try:
        return json.loads(read_capped(path, CACHE_META_CAP).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def open_cache(cache_dir: str | Path) -> TrainingData:
    """The cached training rows and labels, memory-mapped read-only."""
    cache_dir = Path(cache_dir)
    meta = cache_meta(cache_dir)
    if meta is None:
        raise DataError(f"{cache_dir}: no complete data cache ({CACHE_META} missing)")
    for name in (CACHE_IMAGES, CACHE_LABELS):  # a fifo there would block np.load for ever
        problem = file_problem(cache_dir / name)
        if problem is not None:
            raise DataError(f"{cache_dir}: unreadable data cache ({name}: {problem}); delete "
                            "the folder and rerun")
    try:
        rows = np.load(cache_dir / CACHE_IMAGES, mmap_mode="r")
        labels = np.load(cache_dir / CACHE_LABELS, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{cache_dir}: unreadable data cache ({exc}); delete the folder and "
                        "rerun") from None
    if list(rows.shape) != meta["shape"] or labels.shape != (rows.shape[0],):
        raise DataError(f"{cache_dir}: the data cache does not match its {CACHE_META}; delete "
                        "the folder and rerun")
    return TrainingData(rows, labels, tuple(meta["class_names"]), dict(meta["fingerprint"]))


def worker_data(task: TrialTask) -> TrainingData:
    """This process's training data: the shared cache when visible, else loaded through the
    config's data section; loaded once per process."""
    if task.cache_dir in _DATA:
        return _DATA[task.cache_dir]
    if cache_meta(task.cache_dir) is not None:
        found = open_cache(task.cache_dir)
    else:
        config = config_from_dict(task.config)
        loaded = data_module.load_config_data(config.data, progress=False)
        found = TrainingData(loaded.train_images, loaded.train_labels, loaded.class_names,
                             dict(loaded.fingerprint))
        del loaded  # the test arrays go unread
    if found.fingerprint != task.fingerprint:
        raise DataError("the data this worker found differs from the sweep's (fingerprints "
                        "differ)")
    _DATA[task.cache_dir] = found
    return found


def _split_and_statistics(config, data: TrainingData) -> tuple[Split, Preprocessor]:
    """split_and_fit, kept for the next trials that share seed, val_size and preprocessing."""
    key = (config.seed, config.data.val_size, config.preprocess.center,
           config.preprocess.scale, config.preprocess.bias, id(data))
    if key not in _SPLITS:
        while len(_SPLITS) >= SPLIT_CACHE_SIZE:
            _SPLITS.pop(next(iter(_SPLITS)))
        _SPLITS[key] = split_and_fit(config, data.rows, data.labels)
    return _SPLITS[key]


class _Reporter:
    """Reports each epoch's val accuracy to the trial in the study; raises TrialPruned when the
    pruner says so."""

    def __init__(self, task: TrialTask):
        import optuna

        from .study import make_pruner, open_storage

        key = (task.storage, task.study_name, json.dumps(task.pruner, sort_keys=True))
        if key not in _STUDIES:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            _STUDIES[key] = optuna.load_study(
                study_name=task.study_name, storage=open_storage(task.storage),
                sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(task.pruner))
        self.trial = optuna.trial.Trial(_STUDIES[key], task.trial_id)

    def report(self, value: float, epoch: int) -> None:
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise TrialPruned


def run_trial(task: TrialTask) -> TrialOutcome:
    """Train one trial's config on the training rows; validate every epoch. Returns its
    outcome: complete (with the final state for the checkpoint), pruned, or failed (diverged,
    or a config its sampled values make invalid)."""
    started = time.perf_counter()
    env = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    outcome = TrialOutcome(task.number, "failed", env=env, worker_pid=os.getpid())
    try:
        config = config_from_dict(task.config)
        data = worker_data(task)
        split, pre = _split_and_statistics(config, data)
        reporter = (_Reporter(task) if task.pruner is not None and task.pruner["name"] != "none"
                    else None)
    except SoftmaxClsError as exc:
        outcome.error, outcome.seconds = str(exc), time.perf_counter() - started
        return outcome
    last: list[TrainState] = []

    def on_epoch(state: TrainState) -> None:
        last[:] = [state]
        outcome.val_accs.append(float(state.history[-1]["val_acc"]))
        if reporter is not None:
            reporter.report(outcome.val_accs[-1], state.epoch)

    try:
        result = fit(config, data.rows, data.labels, split, pre, len(data.class_names),
                     on_epoch=on_epoch, warn=lambda line: setattr(outcome, "warning", line))
        state = result.state
        outcome.state, outcome.train_state = "complete", state
        outcome.pre, outcome.val_rows = pre, split.val_rows
    except TrialPruned:
        outcome.state, state = "pruned", last[0]
    except TrainingDiverged as exc:
        outcome.error = str(exc)
        state = last[0] if last else None
    outcome.seconds = time.perf_counter() - started
    if state is not None and state.history:  # validated (L-BFGS: maybe at 0 iterations)
        outcome.best_val_acc, outcome.best_epoch = float(state.best_val_acc), state.best_epoch
        outcome.epochs = state.epoch
    return outcome
