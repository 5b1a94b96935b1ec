"""Hyper-parameter sweeps: a sweep file, an Optuna study, K trial workers, one sweep folder.

    base: default.yaml          # a config file, relative to the sweep file (or configs/)
    set: {optim.epochs: 20}     # fixed overrides of the base (optional)
    sampler: tpe                # tpe | random | grid
    trials: 40                  # tpe and random; a grid runs each of its points once
    seed: 0                     # the sampler's seed
    pruner: median              # median | none, or {name: median, startup_trials: 5,
                                #                    warmup_epochs: 0}
    space:                      # any config key but the data's identity and output.*
      optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}
      optim.epochs: {int: [5, 40]}          # also {int: [..], log: true}, {uniform: [a, b]}
      optim.batch_size: {choice: [64, 128, 256]}
      # sampler grid: every key {grid: [v1, v2, ...]}

The driver (run_sweep) owns the study: it creates it before any worker starts (journal file
`study.journal` in the sweep folder, or --storage URL), asks for each trial, sends it to a
worker (a local process pool or a Dask cluster) and tells the outcome. Workers only report
per-epoch val accuracies to the pruner. Selection is on validation only: the test split is
read once, after the last trial, to evaluate the best trial's weights.

Resuming: the same command continues the study. A trial left running by a crashed or killed
sweep process on this machine is marked failed ("interrupted" in trials.csv, not counted) and
enqueued again with the same parameters; the budget counts complete, pruned and (genuinely)
failed trials, so no trial counts twice. optuna is imported lazily: this module imports
without it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import dataclasses
import datetime
import io
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import (
    Config,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
)
from ..data import cifar as data_module
from ..errors import ConfigError, DataError, SoftmaxClsError
from ..fsutil import atomic_write, open_own_file
from ..interrupts import stop_word_and_code
from .spec import (
    SweepSpec,
    grid_points,
    load_sweep,
    set_dotted,
    suggest,
    trial_raw_config,
)
from .worker import THREAD_VARIABLES, TrialOutcome, TrialTask, cache_meta, make_pruner

INSTALL_HINT = "softmax-sweep needs optuna: pip install 'softmax-cls[sweep]'"
DASK_HINT = "softmax-sweep --dask needs dask.distributed: pip install 'softmax-cls[sweep]'"
TRIAL_COLUMNS = ("number", "state")
RESULT_COLUMNS = ("best_val_acc", "best_epoch", "epochs", "seconds")
POLL_SECONDS = 2.0
OWNERLESS_GRACE_SECONDS = 60.0  # a running trial with no driver recorded yet is not stale
DASK_CONNECT_SECONDS = 10


class SweepInterrupted(SoftmaxClsError):
    """Ctrl-C or SIGTERM: the running trials were re-queued; the same command resumes.
    Exit code 130 for Ctrl-C, 143 for SIGTERM, as softmax-train."""

    exit_code = 130


# ---------------------------------------------------------------------------------------------
# The study


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise SoftmaxClsError(INSTALL_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_name(folder: Path, storage: str | None) -> str:
    """`journal:PATH` of the sweep folder's journal file, or the given URL (a value without
    `://` is taken as a journal file path). The folder may be shared: a study.journal there
    that is a link, a fifo or a file with other hard links is refused (NotOwnFile), since
    optuna would append to whatever it names."""
    if storage is None:
        journal = folder.resolve() / "study.journal"
        if os.path.lexists(journal):
            os.close(open_own_file(journal, os.O_RDONLY))
        return f"journal:{journal}"
    if "://" not in storage and not storage.startswith("journal:"):
        return f"journal:{Path(storage).resolve()}"
    return storage


def open_storage_for(folder: str | os.PathLike, storage: str | None = None):
    """The optuna storage of a sweep folder (its journal file), or of the given URL."""
    from .worker import open_storage

    return open_storage(storage_name(Path(folder), storage))


def make_sampler(spec: SweepSpec, existing_trials: int):
    """The sweep's sampler, seeded by (seed, trials already in the study), so a resumed
    random or TPE sweep draws new points rather than replaying its first ones."""
    import optuna

    seed = int(np.random.SeedSequence([spec.seed, existing_trials]).generate_state(1)[0])
    if spec.sampler in ("random", "grid"):  # a grid's points are all enqueued (enqueue_grid)
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(spec: SweepSpec, storage: str, study_name: str):
    """Create the study, or load it when it exists and holds this same sweep. The driver
    calls this before any worker starts (workers only load it)."""
    from .worker import open_storage

    optuna = require_optuna()
    try:
        backend = open_storage(storage)
        study = optuna.create_study(storage=backend, study_name=study_name, direction="maximize",
                                    load_if_exists=True, pruner=make_pruner(spec.pruner))
    except (ImportError, ValueError, OSError) as exc:
        raise SoftmaxClsError(f"--storage {storage}: cannot open the study: {exc}") from None
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(spec, existing)
    identity = json.loads(json.dumps(spec.identity()))
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", identity)
    elif stored != identity:
        changed = sorted(k for k in identity if stored.get(k) != identity.get(k))
        raise ConfigError(f"study {study_name!r} in {storage} holds another sweep ("
                          f"{', '.join(changed)} differ): use another --out, --storage or "
                          "--study")
    return study


def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux /proc), to tell a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def this_driver() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid)}


def _is_stale(owner: dict | None, started: datetime.datetime | None) -> bool:
    """A running trial whose driver process on this host is gone. Trials of drivers on
    other hosts are never taken as stale: the journal storage has no heartbeat.

    A trial without an owner was asked and then killed before its owner was recorded, or
    is being asked right now by another command (asking and recording are two writes):
    stale only once it started OWNERLESS_GRACE_SECONDS ago."""
    if not isinstance(owner, dict):
        return started is None or (
            (datetime.datetime.now() - started).total_seconds() > OWNERLESS_GRACE_SECONDS)
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError):
        return False
    start = owner.get("start")
    return start is not None and _process_start(int(pid)) != start


def requeue_stale(study, only_numbers: set[int] | None = None) -> list[int]:
    """Mark trials left running by a dead driver (or the given ones) failed and interrupted,
    and enqueue their parameters again; idempotent if interrupted midway. Returns the
    numbers re-queued."""
    import optuna
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    requeued_already = {t.user_attrs.get("requeue_of") for t in trials}
    numbers = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        if only_numbers is not None:
            if trial.number not in only_numbers:
                continue
        elif not _is_stale(trial.user_attrs.get("driver"), trial.datetime_start):
            continue
        handle = optuna.trial.Trial(study, trial._trial_id)
        handle.set_user_attr("interrupted", True)
        if trial.number not in requeued_already and trial.params:
            study.enqueue_trial(trial.params, user_attrs={"requeue_of": trial.number})
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        numbers.append(trial.number)
    return numbers


def enqueue_grid(study, spec: SweepSpec) -> int:
    """Enqueue each grid point that no trial holds yet (an interrupted trial's point is held
    by its re-queued copy), so that every point runs exactly once, in order. optuna's
    GridSampler is not used: it calls study.stop(), which only works inside study.optimize,
    not under ask and tell. Returns the number of points enqueued."""
    taken = {_point_key(t.params) for t in study.get_trials(deepcopy=False)
             if state_name(t) != "interrupted"}
    missing = [p for p in grid_points(spec) if _point_key(p) not in taken]
    for point in missing:
        study.enqueue_trial(point)
    return len(missing)


def _point_key(params: dict) -> str:
    return json.dumps(sorted(params.items()), default=str)


def state_name(trial) -> str:
    """complete, pruned, failed, interrupted (failed by a killed sweep, re-queued), running
    or waiting."""
    name = trial.state.name.lower()
    if name == "fail":
        return "interrupted" if trial.user_attrs.get("interrupted") else "failed"
    return name


def counted(trials) -> int:
    """Finished trials that count towards the budget: all but interrupted ones."""
    return sum(state_name(t) in ("complete", "pruned", "failed") for t in trials)


# ---------------------------------------------------------------------------------------------
# Running a sweep


@dataclass
class SweepResult:
    folder: Path
    best_number: int | None
    best_val_acc: float | None
    test_acc: float | None
    test_loss: float | None
    counts: dict[str, int]
    summary: dict


@contextlib.contextmanager
def worker_threads(workers: int):
    """Each local worker gets max(1, cores // workers) BLAS/OpenMP/numba threads: set in the
    environment the spawned worker processes inherit, before they import numpy or numba."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = str(max(1, (cores or 1) // workers))
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: threads for name in THREAD_VARIABLES})
    try:
        yield int(threads)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def prepare_cache(folder: Path, config: Config, progress: bool) -> dict:
    """The sweep's data cache (training rows and labels as .npy files); written once from the
    config's data, reused while its data section is unchanged. Returns its data.json. The
    sweep folder may be shared: a cache folder that is a symbolic link is refused (DataError),
    so the cache is never written into, nor read from, the folder it names."""
    from .worker import write_cache

    cache_dir = folder / "cache"
    if cache_dir.is_symlink():
        raise DataError(f"{cache_dir} is a symbolic link; refusing to keep the sweep's data "
                        "cache in the folder it names (remove it)")
    section = json.loads(json.dumps(config_to_dict(config)["data"]))
    section.pop("val_size")
    meta = cache_meta(cache_dir)
    if meta is not None and meta.get("data") == section:
        return meta
    loaded = data_module.load_config_data(config.data, progress)
    write_cache(cache_dir, loaded, section)
    del loaded  # only the training rows were read from it
    return cache_meta(cache_dir)


def run_sweep(sweep_path: str | os.PathLike, *, trials: int | None = None, workers: int = 1,
              out: str | os.PathLike | None = None, dask: str | None = None,
              storage: str | None = None, study_name: str | None = None,
              progress: bool = True, plots: bool | None = None) -> SweepResult:
    """Run (or resume) the sweep of a sweep file into the folder `out` (default
    runs/<sweep file name>): `trials` overrides the budget, `workers` trials at once in local
    processes, or on the Dask scheduler at `dask`. `storage`: an optuna storage URL shared by
    several sweep commands (default: the journal file in the folder). `plots`: draw the
    sweep's pictures (None: as the base config's output.plots says). Returns the result; the
    folder holds sweep.yaml, trials.csv, best.yaml, best.npz and summary.json."""
    spec = load_sweep(sweep_path)
    if trials is not None:
        if spec.sampler == "grid":
            raise ConfigError("--trials: a grid sweep runs each of its points once")
        if trials < 1:
            raise ConfigError(f"--trials: must be >= 1, got {trials}")
        spec = dataclasses.replace(spec, trials=trials)
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    require_optuna()
    folder = Path(out) if out is not None else Path("runs") / Path(sweep_path).stem
    folder.mkdir(parents=True, exist_ok=True)
    name = study_name or Path(sweep_path).stem
    storage = storage_name(folder, storage)
    with atomic_write(folder / "sweep.yaml", "w") as handle:
        handle.write(f"# the sweep as run: softmax-sweep {sweep_path}\n")
        yaml.safe_dump(spec.as_dict(), handle, sort_keys=False)
    study = open_study(spec, storage, name)
    requeue_stale(study)
    if spec.sampler == "grid":
        enqueue_grid(study, spec)
    base = spec.base_config
    meta = prepare_cache(folder, base, progress)
    write_trials_csv(folder, study, spec)

    executor, capacity, local = _executor(dask, workers)
    tasks = _TaskMaker(spec, study, storage, name, folder / "cache", meta, local)
    with contextlib.ExitStack() as stack:
        if local:
            stack.enter_context(worker_threads(workers))
        _drive(study, spec, folder, executor, capacity, tasks, meta, progress, local)
    return finish_sweep(folder, study, spec, meta, progress, plots)


def _executor(dask: str | None, workers: int):
    """(executor, trials at once, whether its workers are local processes)."""
    if dask is None:
        import multiprocessing

        from .worker import watch_parent

        pool = cf.ProcessPoolExecutor(max_workers=workers,
                                      mp_context=multiprocessing.get_context("spawn"),
                                      initializer=watch_parent, initargs=(os.getpid(),))
        return pool, workers, True
    try:
        from distributed import Client
    except ImportError:
        raise SoftmaxClsError(DASK_HINT) from None
    try:
        client = Client(dask, timeout=DASK_CONNECT_SECONDS, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise SoftmaxClsError(f"--dask {dask}: cannot connect to the scheduler: {exc}") from None
    capacity = workers if workers > 1 else max(1, sum(client.nthreads().values()))
    executor = client.get_executor(pure=False)
    executor.client = client  # closed with the executor, in _shutdown
    return executor, capacity, False


class _TaskMaker:
    """Asks the study for trials and turns each into a TrialTask."""

    def __init__(self, spec, study, storage, study_name, cache_dir, meta, local):
        self.spec, self.study, self.storage, self.study_name = spec, study, storage, study_name
        self.cache_dir, self.meta, self.local = str(Path(cache_dir).resolve()), meta, local
        self.driver = this_driver()

    def ask(self):
        """(trial, task), or (trial, error message) when its config is invalid."""
        trial = self.study.ask()
        trial.set_user_attr("driver", self.driver)
        params = suggest(trial, self.spec)
        try:
            config = config_from_dict(trial_raw_config(self.spec, params))
        except ConfigError as exc:
            return trial, str(exc)
        pruner = None if self.spec.pruner["name"] == "none" else self.spec.pruner
        return trial, TrialTask(number=trial.number, trial_id=trial._trial_id,
                                config=config_to_dict(config), cache_dir=self.cache_dir,
                                fingerprint=self.meta["fingerprint"], storage=self.storage,
                                study_name=self.study_name, pruner=pruner)


def _drive(study, spec, folder, executor, capacity, tasks, meta, progress, local) -> None:
    """Keep `capacity` trials in flight until the budget's trials have finished; tell each
    outcome, rewrite trials.csv, keep best.npz on the best complete trial."""
    from optuna.trial import TrialState
    from tqdm import tqdm

    pending: dict[cf.Future, Any] = {}
    bar = tqdm(total=spec.trials, initial=min(counted(study.get_trials(deepcopy=False)),
                                              spec.trials),
               desc="trials", unit="trial", disable=not progress)
    _show_best(bar, study)
    try:
        while True:
            all_trials = study.get_trials(deepcopy=False)
            done_count = counted(all_trials)
            running = sum(t.state == TrialState.RUNNING for t in all_trials)
            while len(pending) < capacity and done_count + running < spec.trials:
                trial, task = tasks.ask()
                running += 1
                if isinstance(task, str):  # sampled values the config rejects
                    trial.set_user_attr("error", task)
                    study.tell(trial, state=TrialState.FAIL)
                    done_count, running = done_count + 1, running - 1
                    bar.update(1)
                    continue
                pending[executor.submit(_run_trial, task)] = (trial, task)
            write_trials_csv(folder, study, spec)
            if not pending:
                if running == 0:
                    break
                time.sleep(POLL_SECONDS)  # trials of other sweep commands on this study
                requeue_stale(study)
                continue
            finished, _ = cf.wait(pending, timeout=POLL_SECONDS,
                                  return_when=cf.FIRST_COMPLETED)
            for future in finished:
                trial, task = pending.pop(future)
                _tell(study, trial, task, future, folder, meta)
                bar.update(1)
                _show_best(bar, study)
        write_trials_csv(folder, study, spec)
    except BaseException as exc:
        if pending:
            requeue_stale(study, only_numbers={t.number for t, _ in pending.values()})
        write_trials_csv(folder, study, spec)
        _shutdown(executor, local, kill=True)
        if isinstance(exc, KeyboardInterrupt):
            word, code = stop_word_and_code(exc)
            error = SweepInterrupted(f"{word}: the running trials were re-queued; run the same "
                                     "command to resume")
            error.exit_code = code
            raise error from None
        if isinstance(exc, cf.process.BrokenProcessPool):
            raise SoftmaxClsError("a worker process died (out of memory?); the running "
                                  "trials were re-queued; run the same command to resume"
                                  ) from None
        raise
    finally:
        bar.close()
    _shutdown(executor, local, kill=False)


def _run_trial(task: TrialTask) -> TrialOutcome:
    from .worker import run_trial

    return run_trial(task)


def _shutdown(executor, local: bool, kill: bool) -> None:
    if local and kill:
        for process in list(getattr(executor, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                process.kill()
    if local:
        executor.shutdown(wait=not kill, cancel_futures=True)
        return
    executor.shutdown(wait=not kill)  # cancels what has not started on the cluster
    executor.client.close()


def _show_best(bar, study) -> None:
    with contextlib.suppress(ValueError):
        bar.set_postfix(best=f"{study.best_value:.4f}", trial=study.best_trial.number)


def _tell(study, trial, task: TrialTask, future: cf.Future, folder: Path, meta: dict) -> None:
    """Record a finished trial's outcome in the study; save best.npz first when it is the best
    complete trial so far (so a kill between the two never leaves a stale best.npz behind)."""
    from optuna.trial import TrialState

    try:
        outcome = future.result()
    except cf.process.BrokenProcessPool:
        requeue_stale(study, only_numbers={trial.number})  # not this trial's fault
        raise
    except Exception as exc:  # a bug or a lost Dask worker: this trial failed, the sweep goes on
        outcome = TrialOutcome(trial.number, "failed", error=f"{type(exc).__name__}: {exc}")
    if trial.storage.get_trial(trial._trial_id).state.is_finished():
        return  # another command took it for interrupted and re-queued it: its copy counts
    for key, value in (("best_epoch", outcome.best_epoch), ("epochs", outcome.epochs),
                       ("worker_pid", outcome.worker_pid),
                       ("threads", outcome.env.get("OPENBLAS_NUM_THREADS")),
                       ("seconds", round(outcome.seconds, 3)), ("error", outcome.error),
                       ("best_val_acc", outcome.best_val_acc)):
        if value is not None:
            trial.set_user_attr(key, value)
    if outcome.state == "complete":
        try:
            best_before = study.best_value
        except ValueError:
            best_before = -math.inf
        if outcome.best_val_acc > best_before:
            save_trial_checkpoint(folder / "best.npz", outcome, task.config, meta)
        study.tell(trial, outcome.best_val_acc, skip_if_finished=True)
    elif outcome.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def save_trial_checkpoint(path: Path, outcome: TrialOutcome, raw_config: dict, meta: dict
                          ) -> None:
    """A complete trial's checkpoint, in the format of a run's best.npz (its model: the
    weights of the trial's best val epoch)."""
    from ..training.checkpoint import save_checkpoint

    state = outcome.train_state
    save_checkpoint(path, state, outcome.pre, tuple(meta["class_names"]),
                    config_to_yaml(config_from_dict(raw_config)), meta["fingerprint"],
                    "complete", outcome.val_rows, W=state.best_W)


# ---------------------------------------------------------------------------------------------
# Outputs


def trial_params_cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def write_trials_csv(folder: Path, study, spec: SweepSpec) -> Path:
    """trials.csv: one row per trial (not waiting ones): number, state, each searched key,
    best_val_acc, best_epoch, epochs, seconds."""
    keys = list(spec.space)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*TRIAL_COLUMNS, *keys, *RESULT_COLUMNS])
    for trial in study.get_trials(deepcopy=False):
        state = state_name(trial)
        if state == "waiting":
            continue
        attrs = trial.user_attrs
        best = attrs.get("best_val_acc")
        if best is None and trial.intermediate_values:
            best = max(trial.intermediate_values.values())
        writer.writerow([trial.number, state,
                         *(trial_params_cell(trial.params[k]) if k in trial.params else ""
                           for k in keys),
                         "" if best is None else repr(float(best)),
                         attrs.get("best_epoch", ""), attrs.get("epochs", ""),
                         attrs.get("seconds", "")])
    with atomic_write(folder / "trials.csv", "w") as handle:
        handle.write(buffer.getvalue())
    return folder / "trials.csv"


def _counts(trials) -> dict[str, int]:
    counts = dict.fromkeys(("complete", "pruned", "failed", "interrupted"), 0)
    for trial in trials:
        name = state_name(trial)
        counts[name] = counts.get(name, 0) + 1
    return counts


def best_checkpoint(folder: Path, study, spec: SweepSpec, meta: dict, best) -> Path:
    """best.npz of the best trial. It was written when that trial finished; when it holds
    another trial (a tie told in another order, a best.npz of a killed session), the best
    trial's config is trained again here, which gives the same weights (training is
    deterministic given the config)."""
    from ..math.preprocess import split_and_fit
    from ..training.checkpoint import load_checkpoint
    from ..training.fit import fit
    from .worker import open_cache

    path = folder / "best.npz"
    raw = trial_raw_config(spec, best.params)
    config_yaml = config_to_yaml(config_from_dict(raw))
    if path.is_file():
        with contextlib.suppress(SoftmaxClsError):
            found = load_checkpoint(path)
            if (found.config_yaml == config_yaml and found.state.best_val_acc == best.value
                    and found.fingerprint == meta["fingerprint"]):
                return path
    config = config_from_dict(raw)
    data = open_cache(folder / "cache")
    split, pre = split_and_fit(config, data.rows, data.labels)
    state = fit(config, data.rows, data.labels, split, pre, len(data.class_names)).state
    outcome = TrialOutcome(best.number, "complete", train_state=state, pre=pre,
                           val_rows=split.val_rows)
    save_trial_checkpoint(path, outcome, raw, meta)
    return path


def param_importances(study, seed: int) -> dict[str, float] | None:
    """optuna's fANOVA importance of each searched key for val accuracy (seeded), or None
    when it cannot be computed (fewer than two complete trials, a constant objective...)."""
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception:  # optuna raises several types when the trials cannot support it
        return None
    return {key: float(value) for key, value in found.items()}


def finish_sweep(folder: Path, study, spec: SweepSpec, meta: dict, progress: bool = True,
                 plots: bool | None = None) -> SweepResult:
    """After the last trial: best.npz, the one evaluation of its weights on the test split,
    best.yaml, summary.json and (when asked or auto) the pictures."""
    from ..engines.numpy_engine import get_engine
    from ..training.checkpoint import load_checkpoint
    from ..training.fit import validation_metrics

    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    summary: dict[str, Any] = {"sweep": str(spec.path), "study": study.study_name,
                               "trials": spec.trials, "counts": counts}
    complete = [t for t in trials if state_name(t) == "complete"]
    if not complete:
        errors = [t.user_attrs["error"] for t in trials if t.user_attrs.get("error")]
        summary["best_trial"] = None
        _write_json(folder / "summary.json", summary)
        first = f" (first error: {errors[0]})" if errors else ""
        raise SoftmaxClsError(f"no trial completed: {counts['pruned']} pruned, "
                              f"{counts['failed']} failed{first}")
    best = study.best_trial
    raw = trial_raw_config(spec, best.params)
    checkpoint_path = best_checkpoint(folder, study, spec, meta, best)

    # The one read of the test split, after the last trial.
    config = config_from_dict(raw)
    loaded = data_module.load_config_data(config.data, progress)
    if dict(loaded.fingerprint) != meta["fingerprint"]:
        raise DataError(f"the data changed during the sweep (its files' md5 differ from "
                        f"{folder / 'cache'}); delete that folder and run the sweep again")
    test_loss = test_acc = None
    if len(loaded.test_labels):
        checkpoint = load_checkpoint(checkpoint_path)
        test_loss, test_acc = validation_metrics(get_engine(config.engine), checkpoint.W,
                                                 checkpoint.preprocessor, loaded.test_images,
                                                 loaded.test_labels, config.loss.clip)
    del loaded

    best_run = config_from_dict(set_dotted(raw, "output.dir", str(folder / "best-run")))
    with atomic_write(folder / "best.yaml", "w") as handle:
        handle.write(f"# The best trial ({best.number}, val accuracy {best.value:.4f}) of the "
                     f"sweep {spec.path}.\n# softmax-train --config {folder / 'best.yaml'} "
                     "trains it again into output.dir.\n")
        handle.write(config_to_yaml(best_run))
    summary.update({
        "best_trial": best.number, "best_params": best.params, "best_val_acc": best.value,
        "best_epoch": best.user_attrs.get("best_epoch"), "test_acc": test_acc,
        "test_loss": test_loss, "checkpoint": str(checkpoint_path),
        "config": str(folder / "best.yaml"),
        "param_importances": param_importances(study, spec.seed),
    })
    _write_json(folder / "summary.json", summary)
    if _want_plots(plots, spec.base_config):
        from ..plots.pictures import plot_sweep

        summary["plots"] = [str(p) for p in plot_sweep(folder)]
    return SweepResult(folder, best.number, best.value, test_acc, test_loss, counts, summary)


def _want_plots(plots: bool | None, base: Config) -> bool:
    if plots is not None:
        return plots
    if base.output.plots is not None:
        return base.output.plots
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _write_json(path: Path, payload: dict) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
