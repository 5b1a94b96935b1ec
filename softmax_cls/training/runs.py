"""The run folder: a training run's files on top of the pure fit().

A run folder holds config.yaml, history.jsonl, last.npz (after every epoch, and before the
first), best.npz (the model weights of the best validation epoch so far) and summary.json
(the one evaluation on the test split, made at the end). Resuming continues last.npz.

softmax-train is plan_run (the config, the folder and the checkpoint to continue, resolved
before any data is loaded) then train_run, which a new and a resumed run share and which
reads top to bottom: lock and check the folder, load the data, split and preprocess, write
the folder's first files, train, evaluate once on the test split, write the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
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
from ..engines import check_device, get_engine
from ..errors import ConfigError, SoftmaxClsError
from ..fsutil import (
    FolderBusy,
    atomic_write,
    folder_lock,
    fsync_dir,
    missing_folders,
    read_capped,
    removed_on_error,
)
from ..interrupts import stop_word_and_code
from ..math.preprocess import Preprocessor, Split, split_and_fit
from ..math.softmax import softmax_loss_from_scores
from ..text import counted, print_warning
from .checkpoint import (
    Checkpoint,
    check_matches,
    load_checkpoint,
    loadable_bytes,
    save_checkpoint,
)
from .evaluate import ScoredSplit, score_split
from .fit import TrainingDiverged, TrainState, fit, initial_state

# What a resumed run may not change: the data, the split, the features and the initial weights.
FIXED_ON_RESUME = ("seed", "data.dataset", "data.format", "data.labels", "data.val_size",
                   "data.train", "preprocess", "model")

RUN_FILES = ("config.yaml", "history.jsonl", "best.npz", "last.npz", "summary.json")
SUMMARY_KEYS = ("epochs", "best_epoch", "best_val_acc", "test_loss", "test_acc",
                "stopped_early")
# The largest config.yaml, history.jsonl or summary.json taken for a run's own: a run writes
# a few kilobytes (history: about 200 bytes an epoch).
RUN_TEXT_CAP = 16 << 20


class TrainingInterrupted(SoftmaxClsError):
    """Ctrl-C or SIGTERM: the last completed epoch is saved in last.npz. Exit code 130 for
    Ctrl-C, 143 for SIGTERM (128 + the signal's number, as a shell reports it)."""

    exit_code = 130


class RunFolderBusy(SoftmaxClsError):
    """Another process is writing the run folder."""


@dataclass
class RunResult:
    """A finished run: its config (paths absolute), final state and folder; the test loss
    and accuracy of the best weights (None without a test split); whether it stopped early.
    What its pictures need comes along: the preprocessing, the class names and `scored`, the
    split of the final evaluation with the best weights' scores (the test split, else the
    val rows, else None)."""

    config: Config
    state: TrainState
    out_dir: Path
    test_loss: float | None
    test_acc: float | None
    stopped_early: bool
    pre: Preprocessor
    class_names: tuple[str, ...]
    scored: ScoredSplit | None
    solver: dict | None = None  # optim.solver lbfgs: FitResult.solver


@dataclass
class RunPlan:
    """What softmax-train was asked, resolved before any data is loaded: the config, the run
    folder, the checkpoint a resumed run continues (None for a new run), whether the
    folder is a numbered one (output.dir-2, -3, ...) because output.dir holds a run, and
    whether missing data may be downloaded as data.download says (`fetch`; a resumed run
    not asked to: False). The config is written as it is: `fetch` is not recorded in it."""

    config: Config
    out_dir: Path
    resume: Checkpoint | None = None
    numbered: bool = False
    fetch: bool = True


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
    """The run files (RUN_FILES) present in `out_dir` (a dangling link counts too)."""
    return [name for name in RUN_FILES if os.path.lexists(out_dir / name)]


def plan_run(config_path: str | None, overrides: Iterable[str] = (), out: str | None = None,
             resume: str | None = None, overwrite: bool = False) -> RunPlan:
    """Train from a config file, or continue the checkpoint `resume` (its own config, unless
    a config file is given, plus overrides). The run folder is `out`; else, for a new run,
    output.dir, or its first numbered sibling holding no run (output.dir-2, -3, ...) when it
    holds one and not `overwrite`; for a resumed run, the checkpoint's folder. A resumed run
    does not download data unless the overrides set data.download (RunPlan.fetch); its
    config keeps the data.download it has."""
    overrides = list(overrides)
    if resume is None:
        if config_path is None:
            raise ConfigError("--config FILE is required (or --resume CHECKPOINT)")
        config = load_config(config_path, overrides)
        _check_solver_installed(config)
        if out:
            return RunPlan(config, Path(out))
        out_dir = Path(config.output.dir)
        if overwrite or not run_files(out_dir):
            return RunPlan(config, out_dir)
        number = 2
        while run_files(Path(f"{out_dir}-{number}")):
            number += 1
        return RunPlan(config, Path(f"{out_dir}-{number}"), numbered=True)
    checkpoint = load_checkpoint(resume)
    if config_path is None:
        config = config_from_dict(parse_yaml(checkpoint.config_yaml, f"{resume} config"),
                                  overrides)
    else:
        config = load_config(config_path, overrides)
    _check_resumable(checkpoint.config, config)
    _check_solver_installed(config)
    fetch = any(text.split("=", 1)[0].strip() in ("data", "data.download")
                for text in overrides)
    return RunPlan(config, Path(out) if out else Path(resume).parent, checkpoint, fetch=fetch)


def finished_line(plan: RunPlan) -> str | None:
    """The one line of a resume with nothing to do, or None: the checkpoint is the finished
    run of its own folder (last.npz complete, summary.json beside it) and the config trains
    it no further: for SGD, optim.epochs reached, or stopped early and the patience not
    raised; for L-BFGS, _solved's. Training again would only redo its test evaluation and
    pictures. A run resumed into another folder (--out) is written there."""
    resume, optim = plan.resume, plan.config.optim
    if (resume is None or resume.status != "complete" or resume.path is None
            or optim.solver != resume.config.optim.solver
            or Path(resume.path).resolve().parent != plan.out_dir.resolve()
            or not (plan.out_dir / "summary.json").is_file()):
        return None
    if optim.solver == "lbfgs":
        done = _solved(resume, plan.config)
        return None if done is None else f"{plan.out_dir} already finished: {done}; nothing written"
    state, patience = resume.state, optim.early_stopping.patience
    stopped = patience is not None and state.epochs_since_best >= patience
    if stopped and state.epoch < optim.epochs:
        done = (f"stopped early at epoch {state.epoch} (optim.early_stopping.patience "
                f"{patience}); raise the patience to train further")
    elif state.epoch == optim.epochs:  # a patience run out stops more epochs too
        also = " and optim.early_stopping.patience" if stopped else ""
        done = f"{counted(state.epoch, 'epoch')}; raise optim.epochs{also} to train further"
    else:
        return None
    return f"{plan.out_dir} already finished: {done}; nothing written"


def _solved(resume: Checkpoint, config: Config) -> str | None:
    """What ends an L-BFGS solve that resuming would not continue, or None: it converged
    (its gradient max-norm at most optim.tol) on the objective it was solved for (loss and
    augment unchanged; another objective is solved from it), or it made optim.max_iter
    iterations (the solve's in all: raising optim.max_iter continues it; on another
    objective the line quotes no gradient, the one recorded being the old objective's)."""
    state, optim = resume.state, config.optim
    last = state.history[-1] if state.history else {}
    if "grad_max" not in last:
        return None
    grad_max = last["grad_max"]
    same = (resume.config.loss, resume.config.augment) == (config.loss, config.augment)
    if same and grad_max <= optim.tol:
        return (f"converged in {counted(state.epoch, 'iteration')} (gradient max-norm "
                f"{grad_max:.3g} <= optim.tol {optim.tol:g}); lower optim.tol to solve further")
    if state.epoch >= optim.max_iter:
        if not same:  # grad_max is the other objective's: this one's is not known
            return (f"{counted(state.epoch, 'iteration')} (optim.max_iter {optim.max_iter}) "
                    "made on another objective (loss or augment since changed); raise "
                    "optim.max_iter to solve this one")
        return (f"{counted(state.epoch, 'iteration')} (optim.max_iter {optim.max_iter}), "
                f"gradient max-norm {grad_max:.3g} > optim.tol {optim.tol:g}; raise "
                "optim.max_iter to solve further")  # (not converged: the branch above)
    return None


def _check_solver_installed(config: Config) -> None:
    """optim.solver lbfgs needs SciPy, and a CUDA device a GPU: one error line naming what is
    missing, before any data."""
    check_device(config.engine, config.device)
    if config.optim.solver == "lbfgs":
        from .lbfgs import require_scipy

        require_scipy()


def run_plan(plan: RunPlan, progress: bool = True, overwrite: bool = False) -> RunResult:
    """train_run of the plan, its data loaded once the folder is locked and checked (so a
    refusal costs no loading) with the test split left on disk until the final evaluation,
    when the training rows are freed: the two are never in memory together."""
    data = plan.config.data
    if not plan.fetch:
        data = dataclasses.replace(data, download=False)
    return train_run(plan.config, lambda: load_config_data(data, progress, keep_test=False),
                     plan.out_dir, plan.resume, progress, overwrite=overwrite)


def train_run(config: Config, data: LabelledData | Callable[[], LabelledData], out_dir: str | Path,
              resume: Checkpoint | None = None, progress: bool = True, *,
              overwrite: bool = False) -> RunResult:
    """Train on `data` (or on what the loader `data()` returns, called once the folder is
    locked and checked) as `config` says, writing the run folder `out_dir`; continue the
    checkpoint `resume` when given. The test split is used once, after training, to evaluate
    the best weights (read from disk then when `data` left it there: LabelledData.with_test).

    One run per folder: the folder is locked while this runs (RunFolderBusy if another
    process has it). A new run refuses a folder that holds files of a run's names unless
    `overwrite`, which deletes them first if a run wrote them all (never through a symbolic
    link); a resumed run may write its own folder (the one `resume.path` is in) or an empty
    one. Resuming needs optim.epochs >= the epochs done and the data the checkpoint was
    trained on. best.npz is always the best epoch's own checkpoint (its state and history)
    with the model weights as W.

    An error leaves the folder's run files as they were before. TrainingDiverged and
    TrainingInterrupted (Ctrl-C, SIGTERM) leave a run to resume: last.npz holds the last
    completed epoch, best.npz the best so far, and summary.json is absent until the end.
    """
    # -- checks that need neither the folder nor the data
    out_dir = Path(out_dir)
    config = with_absolute_paths(config)
    if resume is not None and config.optim.solver == "sgd" \
            and config.optim.epochs < resume.state.epoch:
        done = ("L-BFGS iterations, counted as epochs"
                if resume.config.optim.solver == "lbfgs" else "epochs")
        raise ConfigError(f"optim.epochs: the checkpoint has done {resume.state.epoch} {done}; "
                          f"resuming needs optim.epochs >= {resume.state.epoch}, got "
                          f"{config.optim.epochs}")
    if resume is not None and config.optim.solver == "lbfgs" \
            and resume.config.optim.solver == "sgd" and config.optim.max_iter <= resume.state.epoch:
        # no L-BFGS iteration would run, and the final line and summary.json would claim the
        # SGD epochs as the solve's iterations (optim.max_iter counts them, as epochs count
        # L-BFGS iterations above)
        raise ConfigError(f"optim.max_iter: the checkpoint has done {resume.state.epoch} SGD "
                          "epochs, counted as L-BFGS iterations; resuming with optim.solver "
                          f"lbfgs needs optim.max_iter > {resume.state.epoch}, got "
                          f"{config.optim.max_iter}")
    run = None
    with removed_on_error(missing_folders(out_dir)), contextlib.ExitStack() as stack:
        # -- the folder: locked until the end, checked, its files kept to restore on an error
        if not os.path.lexists(out_dir / ".lock"):
            # no run has locked it: a refusal leaves no lock file in a folder it did not make
            _check_folder(out_dir, resume, overwrite)
        _lock_run_folder(stack, out_dir)
        replaced = _check_folder(out_dir, resume, overwrite)
        stack.enter_context(_restored_on_error(out_dir))
        try:
            # -- the data, checked against the checkpoint a resumed run continues
            if callable(data):
                data = data()
            if resume is not None:
                check_matches(resume, data, resume.path)

            # -- the split and the preprocessing (fitted on the training rows only)
            split, pre = split_and_fit(config, data.train_images, data.train_labels)
            if resume is not None and not np.array_equal(resume.val_rows, split.val_rows):
                raise ConfigError("data.val_size: the split differs from the checkpoint's "
                                  "val_rows")

            # -- the engine, chosen once: fit() and the final evaluation use the same one
            sgd = config.optim.solver == "sgd"  # (L-BFGS: no engine copies the rows)
            engine = get_engine(config.engine, config.device, len(data.class_names),
                                sgd and config.augment.active,
                                data.train_images if sgd else None,
                                solver=config.optim.solver)

            # -- the folder's first files: config.yaml, last.npz, the best.npz resumed
            run = _Run.prepare(config, data, out_dir, resume, replaced, split, pre)
            stack.enter_context(run.writing())  # closed before the restore and the lock

            # -- training: a checkpoint after every epoch
            fitted = fit(config, data.train_images, data.train_labels, split, pre,
                         len(data.class_names), state=run.state, on_epoch=run.on_epoch,
                         progress=progress, engine=engine, warn=print_warning)

            # -- the final evaluation: the best weights, scored once on the test split (the
            # training rows freed first when no one else holds them), else on the val rows
            state = fitted.state
            if data.n_test:
                data = data.without_train()
                data = data.with_test()
                scored = score_split(engine, state.best_W, pre, "test", data.test_images,
                                     data.test_labels)
            elif len(split.val_rows):
                scored = score_split(engine, state.best_W, pre, "val",
                                     data.train_images[split.val_rows],
                                     data.train_labels[split.val_rows])
            else:
                scored = None
            test_loss = test_acc = None
            if scored is not None and scored.name == "test":
                test_loss, _ = softmax_loss_from_scores(scored.scores, scored.labels,
                                                        config.loss.clip)
                test_acc = float(np.mean(scored.scores.argmax(axis=1) == scored.labels))

            # -- the end: last.npz complete, summary.json
            run.finish(state, test_loss, test_acc, fitted.stopped_early, fitted.solver,
                       {"engine": engine.name, "device": engine.device})
        except KeyboardInterrupt as exc:
            raise _interrupted(exc, run, resume) from None
    return RunResult(config, state, out_dir, test_loss, test_acc, fitted.stopped_early, pre,
                     data.class_names, scored, fitted.solver)


def _interrupted(exc: KeyboardInterrupt, run: _Run | None, resume: Checkpoint | None
                 ) -> TrainingInterrupted:
    """The one-line error of a Ctrl-C or SIGTERM: where the last completed epoch is and the
    command that resumes it. A run under way writes last.npz again first: the signal may
    have cut that very write."""
    word, code = stop_word_and_code(exc)
    if run is not None:
        run.save_last()
        checkpoint, epoch = run.out_dir / "last.npz", run.last.epoch
    elif resume is not None and resume.path is not None:
        checkpoint, epoch = resume.path, resume.state.epoch
    else:
        checkpoint = None
    lbfgs = run is not None and run.config.optim.solver == "lbfgs"
    if checkpoint is None:
        message = word
    elif lbfgs and run.last.epoch > run.first_epoch:
        message = (f"{word}: {checkpoint} holds the last accepted L-BFGS iterate (iteration "
                   f"{epoch}, gradient max-norm {run.last.history[-1]['grad_max']:.3g}); "
                   f"continue the solve from it with softmax-train --resume {checkpoint}")
    elif lbfgs:
        message = (f"{word}: the L-BFGS solve stopped before its first iteration; "
                   f"{checkpoint} holds the weights it started from; solve again with "
                   f"softmax-train --resume {checkpoint}")
    else:
        message = (f"{word}: {checkpoint} holds the last completed epoch ({epoch}); resume "
                   f"with softmax-train --resume {checkpoint}")
    error = TrainingInterrupted(message)
    error.exit_code = code
    return error


def _lock_run_folder(stack: contextlib.ExitStack, out_dir: Path) -> None:
    """Hold the run folder's lock until `stack` closes; RunFolderBusy if another process has
    it."""
    try:
        stack.enter_context(folder_lock(out_dir, wait=False))
    except FolderBusy as exc:
        raise RunFolderBusy(f"{out_dir} is {exc.strerror} (another softmax-train writing "
                            "it); wait for it to end or choose another --out") from None


def _check_folder(out_dir: Path, resume: Checkpoint | None, overwrite: bool) -> list[str]:
    """The run files in `out_dir` that --overwrite replaces; ConfigError if the folder holds
    files of a run's names and not `overwrite`, or if `overwrite` would delete through a
    symbolic link or delete a file no run wrote. A resumed run's own folder holds its own
    run: its files are written over, so they must be that run's (_check_own_folder)."""
    present = run_files(out_dir)
    own_folder = (resume is not None and resume.path is not None
                  and Path(resume.path).resolve().parent == out_dir.resolve())
    if own_folder and present:
        _check_own_folder(out_dir, present, resume, overwrite)
    if not present or own_folder:
        return []
    if not overwrite:
        what = "another run" if resume is not None else "a run"
        raise ConfigError(f"{out_dir} already holds {what}: pass --overwrite to replace it, "
                          f"--resume {out_dir / 'last.npz'} to continue it, or another --out")
    if out_dir.is_symlink():
        raise ConfigError(f"{out_dir} is a symbolic link: --overwrite deletes files only in "
                          f"the folder itself; pass the folder it points to as --out")
    foreign = [name for name in present if not _written_by_a_run(out_dir / name)]
    if foreign:
        raise ConfigError(f"{out_dir}: {', '.join(foreign)} not written by softmax-train; "
                          f"--overwrite deletes only a run's own files: choose another --out")
    return present


def _check_own_folder(out_dir: Path, present: list[str], resume: Checkpoint,
                      overwrite: bool) -> None:
    """ConfigError unless the run files beside the resumed checkpoint are its run's, which a
    resumed run writes over: a file no run wrote (the user's own config.yaml, a link), or,
    unless `overwrite`, a last.npz the checkpoint does not continue (a later epoch of the
    run: resuming its best.npz would drop the epochs after the best; another run's)."""
    resumed = Path(resume.path)
    foreign = [name for name in present
               if not (_same_file(out_dir / name, resumed) or _written_by_a_run(out_dir / name)
                       or (name == "config.yaml" and _holds_text(out_dir / name,
                                                                 resume.config_yaml)))]
    if foreign:
        raise ConfigError(f"{out_dir}: {', '.join(foreign)} not written by softmax-train, "
                          f"which resuming {resumed.name} in that folder would replace: move "
                          "them, or pass --out for another folder")
    last = out_dir / "last.npz"
    if overwrite or "last.npz" not in present or _same_file(last, resumed):
        return
    kept = load_checkpoint(last)
    same_data = kept.fingerprint == resume.fingerprint
    if same_data and kept.state.history == resume.state.history[:len(kept.state.history)]:
        return  # an earlier epoch of the run the checkpoint continues
    what = (f"epoch {kept.state.epoch}, past the checkpoint's epoch {resume.state.epoch}"
            if same_data and kept.state.history[:len(resume.state.history)]
            == resume.state.history else "a run the checkpoint does not continue")
    raise ConfigError(f"{last} holds {what}; resuming {resumed} there would replace it: "
                      f"resume {last} to continue it, pass --out for another folder, or "
                      "--overwrite to replace it")


def _same_file(path: Path, other: Path) -> bool:
    """Whether `path`, not a link (which a run would replace by a file), is the file `other`."""
    return (not path.is_symlink() and path.exists() and other.exists()
            and os.path.samefile(path, other))


def _holds_text(path: Path, text: str) -> bool:
    """Whether the regular file `path` (not a link) holds exactly `text`."""
    try:
        return (not path.is_symlink() and path.is_file()
                and read_capped(path, RUN_TEXT_CAP).decode("utf-8") == text)
    except (OSError, UnicodeDecodeError, SoftmaxClsError):
        return False


def _written_by_a_run(path: Path) -> bool:
    """Whether the run file `path` is what a run writes, told by its content: a checkpoint
    that loads, a config.yaml that is a config exactly as a run writes it, a history.jsonl
    of epoch rows, a summary.json with a run's keys. A symbolic link is not."""
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix == ".npz":
        try:
            load_checkpoint(path)
        except SoftmaxClsError:
            return False
        return True
    try:
        text = read_capped(path, RUN_TEXT_CAP).decode("utf-8")
        if path.name == "config.yaml":
            return config_to_yaml(config_from_dict(parse_yaml(text, str(path)))) == text
        if path.name == "summary.json":
            summary = json.loads(text)
            return isinstance(summary, dict) and set(SUMMARY_KEYS) <= set(summary)
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError, SoftmaxClsError):
        return False
    return all(isinstance(row, dict) and isinstance(row.get("epoch"), int) for row in rows)


@contextlib.contextmanager
def _restored_on_error(out_dir: Path) -> Iterator[None]:
    """Until the block ends, keep the run files of `out_dir` as they are now (hard links
    .NAME.before beside them; copies where links are not possible). An error in the block
    puts them back and removes the run files it added, so a failed command (a full disk,
    data that does not match) leaves the folder as it found it. An interrupt or a divergence
    keeps the folder as the run left it: its last.npz is the run to resume."""
    kept: dict[str, Path] = {}
    try:
        for name in run_files(out_dir):
            backup = out_dir / f".{name}.before"
            backup.unlink(missing_ok=True)
            try:
                os.link(out_dir / name, backup, follow_symlinks=False)
            except OSError:
                shutil.copy2(out_dir / name, backup, follow_symlinks=False)
            kept[name] = backup
        yield
    except (TrainingInterrupted, TrainingDiverged):
        raise
    except BaseException:
        for name in RUN_FILES:
            if name in kept:  # a no-op when both names are one file: it did not change
                os.replace(kept[name], out_dir / name)
            else:
                (out_dir / name).unlink(missing_ok=True)
        fsync_dir(out_dir)
        raise
    finally:
        for backup in kept.values():
            backup.unlink(missing_ok=True)


def _best_source(resume: Checkpoint | None) -> Path | None:
    """The best.npz beside the resumed checkpoint, if it is that run's best epoch."""
    if resume is None or resume.state.best_epoch == 0 or resume.path is None:
        return None
    best = Path(resume.path).parent / "best.npz"
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
    """A locked run folder being written: its first files (prepare), the checkpoints after
    every epoch (on_epoch), then the summary (finish). It holds no data rows, so a caller
    can free the training rows before the final evaluation.

    An epoch's files are written by one background thread while the next epoch trains:
    they wait on the disk (two fsyncs and a rename a file), not on the CPU, and cost a run
    of 60 epochs 0.4 to 1.4 s on the development machine when written in line. Writes stay
    in order, one at a time; every other write of the folder waits for the one under way
    first (`wait`), an error of one is raised by the next `wait`, and the folder's lock is
    not released while one is under way (`writing`)."""

    def __init__(self, config: Config, out_dir: Path, split: Split, pre: Preprocessor,
                 data: LabelledData, state: TrainState):
        self.config, self.out_dir, self.split, self.pre = config, out_dir, split, pre
        self.class_names, self.fingerprint = data.class_names, data.fingerprint
        self.config_yaml = config_to_yaml(config)
        self.state = state
        self.first_epoch = state.epoch  # where this process started (an interrupt's report)
        self.last = copy_state(state)  # the last completed epoch, as last.npz must hold it
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future | None = None  # the epoch files being written

    @classmethod
    def prepare(cls, config: Config, data: LabelledData, out_dir: Path,
                resume: Checkpoint | None, replaced: list[str], split: Split,
                pre: Preprocessor) -> _Run:
        """Delete the `replaced` files of the run --overwrite replaces, write config.yaml,
        last.npz and the best.npz a resumed run keeps."""
        best_source = _best_source(resume)
        best_bytes = None  # read only when it is copied, and before --overwrite deletes it
        if best_source is not None and (not (out_dir / "best.npz").exists()
                                        or "best.npz" in replaced):
            best_bytes = read_capped(best_source, loadable_bytes())
        for name in replaced:
            (out_dir / name).unlink()
        fsync_dir(out_dir)
        state = (initial_state(config, pre.n_features, len(data.class_names)) if resume is None
                 else resume.state)
        run = cls(config, out_dir, split, pre, data, state)
        (out_dir / "summary.json").unlink(missing_ok=True)  # written again at the end
        with atomic_write(out_dir / "config.yaml", "w") as handle:
            handle.write(run.config_yaml)
        run.save("last.npz", state)
        if state.history:  # a resumed run's epochs: also in a new folder with none left to train
            write_history(out_dir / "history.jsonl", state.history)
        if best_bytes is not None:
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

    def save_last(self) -> None:
        """last.npz and history.jsonl of the last completed epoch, written now (after the
        epoch files under way, whose error, if any, gives way to this write's own)."""
        self.wait(raise_error=False)
        self._write_last(self.last)

    def _write_last(self, last: TrainState) -> None:
        self.save("last.npz", last)
        write_history(self.out_dir / "history.jsonl", last.history)

    def _write_epoch(self, last: TrainState, best: bool) -> None:
        if best:
            self.save("best.npz", last, model=True)
        self._write_last(last)

    def on_epoch(self, state: TrainState) -> None:
        """Start writing the epoch's files: best.npz when it is the best epoch, then last.npz
        and history.jsonl (after the previous epoch's, whose error is raised here)."""
        self.wait()
        self.last = copy_state(state)
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1,
                                              thread_name_prefix="softmax-run-files")
        self._pending = self._writer.submit(self._write_epoch, self.last,
                                            state.best_epoch == state.epoch)

    def wait(self, raise_error: bool = True) -> None:
        """Wait for the epoch files under way; raise their error if `raise_error`."""
        if self._pending is None:
            return
        try:
            self._pending.result()
        except Exception:
            self._pending = None
            if raise_error:
                raise
        self._pending = None

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """The block in which epoch files may be under way: its end waits for them (and
        raises their error when the block itself raised none) and stops the thread."""
        try:
            yield
        except BaseException:
            self._close(raise_error=False)
            raise
        self._close(raise_error=True)

    def _close(self, raise_error: bool) -> None:
        try:
            self.wait(raise_error)
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def finish(self, state: TrainState, test_loss: float | None, test_acc: float | None,
               stopped_early: bool, solver: dict | None = None,
               ran: dict | None = None) -> None:
        """Mark last.npz complete and write summary.json (with L-BFGS's `solver` report:
        iterations, evaluations, final_loss, grad_max, converged, and `ran`: the engine and
        device that ran, engine auto's choice)."""
        self.wait()
        if not (self.out_dir / "best.npz").exists():  # resumed from a lone last.npz
            self.save("best.npz", state, model=True, status="best weights only")
        self.save("last.npz", state, status="complete")
        summary = dict(zip(SUMMARY_KEYS, (state.epoch, state.best_epoch, state.best_val_acc,
                                          test_loss, test_acc, stopped_early), strict=True))
        summary.update(solver or {})
        summary.update(ran or {})
        with atomic_write(self.out_dir / "summary.json", "w") as handle:
            json.dump(summary, handle, indent=2)


def write_history(path: Path, history: list[dict]) -> None:
    """The per-epoch history as JSON lines, rewritten atomically."""
    with atomic_write(path, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in history)


def _check_resumable(before: Config, after: Config) -> None:
    old, new = config_to_dict(before), config_to_dict(after)
    for key in FIXED_ON_RESUME:
        a, b = old, new
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            raise ConfigError(f"{key}: cannot change when resuming (checkpoint has {a!r}, "
                              f"now {b!r})")
