"""Running a sweep: the loop that hands the study's trials to K workers and tells their
outcomes.

The sweep file's format is documented in softmax_cls.sweep.spec; the study (storage, sampler,
trials left running) in softmax_cls.sweep.study; one trial in softmax_cls.sweep.worker; the
files of the sweep folder in softmax_cls.sweep.results, and which folders a sweep may write in
softmax_cls.sweep.folder.

The driver (run_sweep) checks everything first (the sweep file, the folder, the storage and
the study) and writes nothing before those checks pass. It owns the study: it creates it
before any worker starts (the journal file `study.journal` in the sweep folder, or --storage
URL), asks for each trial, sends it to a worker (a local process pool or a Dask cluster) and
tells the outcome. Workers only report per-epoch val accuracies to the pruner. Selection is on
validation only: the test split is read once, after the last trial, to evaluate the best
trial's weights.

A grid over loss.reg alone with optim.solver lbfgs is a regularisation path instead
(softmax_cls.sweep.path): its points are solved in this process, largest reg first, each
warm-started from the previous solution; the folder's files are the same.

Resuming: the same command continues the study; Ctrl-C or SIGTERM re-queue the running trials
and print that command. A trial left running by a crashed or killed sweep process on this
machine is marked failed ("interrupted" in trials.csv, not counted) and enqueued again with
the same parameters; the budget counts complete, pruned and (genuinely) failed trials, so no
trial counts twice. A sweep run again with nothing left to do (results.finished_line) reads
no data and writes nothing. optuna is imported lazily: this module imports without it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, config_from_dict, config_to_dict
from ..data import cifar as data_module
from ..data.fetch import SWEEP_HINTS
from ..engines import check_device
from ..errors import ConfigError, DataError, SoftmaxClsError
from ..fsutil import (
    FolderBusy,
    atomic_write,
    folder_lock,
    make_folder,
    missing_folders,
    removed_on_error,
)
from ..interrupts import stop_word_and_code
from ..text import print_warning, shorten
from ..threads import THREAD_VARIABLES
from .folder import check_folder, mark_folder
from .path import is_reg_path, run_path
from .results import (
    SweepResult,
    finish_sweep,
    finished_line,
    save_trial_checkpoint,
    want_plots,
    write_trials_csv,
)
from .spec import load_sweep, suggest, trial_raw_config
from .stops import StopSignals
from .study import (
    check_study,
    counted,
    enqueue_next_grid_point,
    make_sampler,
    masked,
    open_storage_for,  # noqa: F401 - scripts/benchmark_sweep.py imports it from here
    open_study,
    requeue_stale,
    require_optuna,
    storage_name,
    this_driver,
)
from .worker import TrialOutcome, TrialTask, cache_meta

DASK_HINT = "softmax-sweep --dask needs dask.distributed: pip install 'softmax-cls[sweep]'"
POLL_SECONDS = 2.0
DASK_CONNECT_SECONDS = 10


class SweepInterrupted(SoftmaxClsError):
    """Ctrl-C or SIGTERM: the running trials were re-queued; the message names the command
    that resumes. Exit code 130 for Ctrl-C, 143 for SIGTERM, as softmax-train."""

    exit_code = 130


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
    config's data, reused while its data section (and, for image folders, their fingerprints)
    is unchanged. Returns its data.json. The sweep folder may be shared: a cache folder that
    is a symbolic link is refused (DataError), so the cache is never written into, nor read
    from, the folder it names."""
    from .worker import open_cache, write_cache

    cache_dir = folder / "cache"
    if cache_dir.is_symlink():
        raise DataError(f"{cache_dir} is a symbolic link; refusing to keep the sweep's data "
                        "cache in the folder it names (remove it)")
    section = json.loads(json.dumps(config_to_dict(config)["data"]))
    section.pop("val_size")
    if config.data.dataset == "folder":  # the same paths may hold other images by now
        from ..data.folders import folder_fingerprints

        section["folder_fingerprints"] = folder_fingerprints(config.data)
    meta = cache_meta(cache_dir)
    if meta is not None and meta.get("data") == section:
        open_cache(cache_dir)  # mapped, not read: damage is one line here, not a failed trial each
        return meta
    loaded = data_module.load_config_data(config.data, progress, hints=SWEEP_HINTS)
    # what this command wrote, not read back: another command on the folder may be writing
    return write_cache(cache_dir, loaded, section)


def resume_command(sweep_path, folder: Path, storage: str | None, study_name: str | None,
                   trials: int | None, workers: int, dask: str | None) -> str:
    """The softmax-sweep command line that continues this sweep (a storage's password
    masked)."""
    words = ["softmax-sweep", str(sweep_path), "--out", str(folder)]
    for option, value in (("--trials", trials), ("--workers", workers if workers > 1 else None),
                          ("--dask", dask), ("--storage", storage), ("--study", study_name)):
        if value is not None:
            words += [option, str(value)]
    return masked(shlex.join(words))


def run_sweep(sweep_path: str | os.PathLike, *, trials: int | None = None, workers: int = 1,
              out: str | os.PathLike | None = None, dask: str | None = None,
              storage: str | None = None, study_name: str | None = None,
              progress: bool = True, plots: bool | None = None) -> SweepResult:
    """Run (or resume) the sweep of a sweep file into the folder `out` (default
    runs/<sweep file name>): `trials` overrides the budget, `workers` trials at once in local
    processes, or on the Dask scheduler at `dask`. `storage`: an optuna storage URL shared by
    several sweep commands (default: the journal file in the folder). `plots`: draw the
    sweep's pictures (None: as the base config's output.plots says). Returns the result; the
    folder holds study.json, sweep.yaml, trials.csv, best.yaml, best.npz and summary.json.
    Every error's message has the storage's password masked."""
    folder = Path(out) if out is not None else Path("runs") / Path(sweep_path).stem
    command = resume_command(sweep_path, folder, storage, study_name, trials, workers, dask)
    try:
        with removed_on_error(missing_folders(folder)), \
                StopSignals() as stops:  # a Ctrl-C swallowed by a library is raised again
            return _run_sweep(sweep_path, trials, workers, folder, dask, storage, study_name,
                              progress, plots, command, stops)
    except KeyboardInterrupt as exc:
        word, code = stop_word_and_code(exc)
        requeued = "the running trials were re-queued; " if getattr(
            exc, "requeued", False) else ""
        error = SweepInterrupted(f"{word}: {requeued}to resume, run: {command}")
        error.exit_code = code
        raise error from None
    except SoftmaxClsError as exc:
        exc.args = tuple(masked(str(arg)) for arg in exc.args)
        raise


def _run_sweep(sweep_path, trials, workers, folder: Path, dask, storage, study_name, progress,
               plots, command: str, stops: StopSignals) -> SweepResult:
    spec = load_sweep(sweep_path, trials)
    if trials is not None:
        if spec.sampler == "grid":
            raise ConfigError("--trials: a grid sweep runs each of its points once")
        if trials < 1:
            raise ConfigError(f"--trials: must be >= 1, got {trials}")
        spec = dataclasses.replace(spec, trials=trials)
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    if dask is not None:
        _check_dask_address(dask)
    path = is_reg_path(spec)
    if path and (workers > 1 or dask is not None):
        raise ConfigError(f"--{'dask' if dask is not None else 'workers'}: a regularisation "
                          "path (a grid over loss.reg alone with optim.solver lbfgs) solves "
                          "its points one after the other, each from the previous; leave it "
                          "out (BLAS uses every core)")
    require_optuna()
    if path:
        from ..training.lbfgs import require_scipy

        require_scipy()
    base = spec.base_config
    check_device(base.engine, base.device)  # a GPU that is not here: before the folder
    name = study_name or Path(sweep_path).stem
    url = storage_name(folder, storage)
    check_folder(folder, name, storage)
    done = finished_line(folder, spec, url, name)
    if done is not None:  # a finished sweep run again: its files stay as they are
        return done
    if want_plots(plots, base):  # SWEEP/plots a link or a file: refused now, not after the trials
        from ..plots.pictures import NO_PLOTS_HINT, default_out_dir

        default_out_dir(folder, run_folder=True, hint=NO_PLOTS_HINT)
    make_folder(folder)
    journal = folder / "study.journal"
    new_journal = storage is None and not os.path.lexists(journal)
    check_study(spec, url, name, own_journal=storage is None)
    # The data before the folder is claimed: data that cannot be read (a wrong data.root)
    # leaves no sweep behind, which the corrected sweep file would find "another sweep";
    # the empty journal check_study made goes too, so a folder made here is removed.
    try:
        meta = prepare_cache(folder, spec.base_config, progress)
    except BaseException:
        if new_journal and journal.is_file() and journal.stat().st_size == 0:
            journal.unlink()
        raise
    stops.check()

    # Every check passed: from here on the folder is this sweep's.
    mark_folder(folder, name, storage)
    with atomic_write(folder / "sweep.yaml", "w") as handle:
        handle.write(f"# the sweep as run: softmax-sweep {sweep_path}\n")
        yaml.safe_dump(spec.as_dict(), handle, sort_keys=False)
    study = open_study(spec, url, name)  # imports numpy.random: see stops.py
    stops.check()
    requeue_stale(study)
    write_trials_csv(folder, study, spec)
    stops.check()
    if path:
        with contextlib.ExitStack() as held:
            try:  # one process solves a path: a second command on it solved every point again
                held.enter_context(folder_lock(folder, wait=False))
            except FolderBusy as exc:
                raise SoftmaxClsError(f"--out {shorten(folder)} is {exc.strerror}, which "
                                      "solves this regularisation path one point after "
                                      "another; wait for it to end") from None
            run_path(study, spec, folder, meta, progress, warn=print_warning)
            stops.check()
            return finish_sweep(folder, study, spec, meta, progress, plots)

    executor, capacity, local = _executor(dask, workers, stops)
    tasks = _TaskMaker(spec, study, url, name, folder / "cache", meta, local)
    with contextlib.ExitStack() as stack:
        if local:
            stack.enter_context(worker_threads(workers))
            if sum(_taken(study.get_trials(deepcopy=False))) < spec.trials:  # a trial to run
                for config in _likeliest_numba(spec):
                    _compile_before_workers(config, folder / "cache")
        _drive(study, spec, folder, executor, capacity, tasks, meta, progress, local, command,
               stops)
    stops.check()
    return finish_sweep(folder, study, spec, meta, progress, plots)


def _taken(trials) -> tuple[int, int]:
    """(finished trials that count towards the budget, trials running) among `trials`."""
    from optuna.trial import TrialState

    return counted(trials), sum(t.state == TrialState.RUNNING for t in trials)


def _likeliest_numba(spec) -> list[Config]:
    """The base config, with the searched engine most likely to be numba when `engine` is in
    the space (numba, else auto, else one that is not: the base engine trains no trial), once
    for each solver the trials use (each of a searched optim.solver's values: SGD's kernels
    and L-BFGS's full-batch one are different kernels), so the kernels compile once for
    every trial that can pick them rather than once per worker."""
    config = spec.base_config
    searched = spec.space.get("engine")
    if searched is not None:
        names = searched.get("choice", searched.get("grid"))
        config = dataclasses.replace(config, engine=next(
            (name for name in ("numba", "auto") if name in names), names[0]))
    solvers = spec.space.get("optim.solver")
    if solvers is None:
        return [config]
    return [dataclasses.replace(config, optim=dataclasses.replace(config.optim, solver=solver))
            for solver in dict.fromkeys(solvers.get("choice", solvers.get("grid")))]


def _compile_before_workers(config: Config, cache_dir: Path) -> None:
    """Compile the numba engine's kernels here, once, before the local workers start, when
    the base config trains with it: SGD's training kernels, or L-BFGS's full-batch one. Each
    worker process would else compile them at the same moment as the others and say so, once
    per worker; they load them from numba's disk cache instead. Picks the engine as a trial
    does (within worker_threads): fit, or fit_lbfgs. Not where numba has no writable cache
    folder: each worker compiles in memory anyway."""
    if config.engine not in ("auto", "numba"):
        return
    from ..engines import get_engine
    from .worker import open_cache

    data = open_cache(cache_dir)
    n_classes = len(data.class_names)
    if config.optim.solver == "lbfgs":
        engine = get_engine(config.engine, config.device, n_classes, solver="lbfgs")
    else:
        engine = get_engine(config.engine, config.device, n_classes, config.augment.active,
                            data.rows)
    if engine.name != "numba":
        return
    from ..engines.numba_engine import cache

    if cache.caching_disabled():
        return
    if config.optim.solver == "lbfgs":
        from ..engines.numba_engine import prepare_full

        prepare_full(data.rows.dtype, n_classes)
    else:
        engine.prepare(data.rows.dtype)


def _executor(dask: str | None, workers: int, stops: StopSignals):
    """(executor, trials at once, whether its workers are local processes). A local pool's
    locks and queues are made with a Ctrl-C deferred (they may start multiprocessing's
    resource tracker process)."""
    if dask is None:
        import multiprocessing

        from .worker import watch_parent

        with stops.deferred():
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


def _check_dask_address(dask: str) -> None:
    """ConfigError unless `dask` is a scheduler address distributed can connect to (a scheme
    it knows, a host and a port); checked before the sweep folder exists. distributed's
    Client raised a ValueError for it, then hung 20 s in its __del__."""
    try:
        from distributed.comm.addressing import get_address_host_port
    except ImportError:
        raise SoftmaxClsError(DASK_HINT) from None
    try:
        get_address_host_port(dask)
    except ValueError as exc:
        raise ConfigError(f"--dask {shorten(dask, 100)}: not a scheduler address "
                          f"({shorten(exc, 150)}); give one such as tcp://host:8786") from None


class _TaskMaker:
    """Asks the study for trials and turns each into a TrialTask."""

    def __init__(self, spec, study, storage, study_name, cache_dir, meta, local):
        self.spec, self.study, self.storage, self.study_name = spec, study, storage, study_name
        self.cache_dir, self.meta, self.local = str(Path(cache_dir).resolve()), meta, local
        self.driver = this_driver()
        self.asked: set[int] = set()  # numbers of the trials this command asked for

    def ask(self):
        """(trial, task), or (trial, error message) when its config is invalid. The trial's
        parameters are drawn by a sampler seeded by its number (make_sampler)."""
        if self.spec.sampler == "grid":
            enqueue_next_grid_point(self.study, self.spec)
        trial = self.study.ask()
        self.asked.add(trial.number)
        trial.set_user_attr("driver", self.driver)
        self.study.sampler = make_sampler(self.spec, trial.number)
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


def _drive(study, spec, folder, executor, capacity, tasks, meta, progress, local,
           command: str, stops: StopSignals) -> None:
    """Keep `capacity` trials in flight until the budget's trials have finished; tell each
    outcome, rewrite trials.csv, keep best.npz on the best complete trial. On any exit but
    the last trial's, the trials this command asked for and left running are re-queued and
    the workers stopped; `command` resumes. A stop is checked for at each step (`stops`:
    one swallowed where it landed is raised again), and a local worker process is started
    with it deferred: a spawned child whose start-up data the parent stopped writing would
    print a traceback."""
    from optuna.trial import TrialState
    from tqdm import tqdm

    pending: dict[cf.Future, Any] = {}
    bar = tqdm(total=spec.trials, initial=min(counted(study.get_trials(deepcopy=False)),
                                              spec.trials),
               desc="trials", unit="trial", disable=not progress)
    _show_best(bar, study)
    try:
        while True:
            stops.check()
            all_trials = study.get_trials(deepcopy=False)
            done_count, running = _taken(all_trials)
            while len(pending) < capacity and done_count + running < spec.trials:
                trial, task = tasks.ask()
                running += 1
                if isinstance(task, str):  # sampled values the config rejects
                    trial.set_user_attr("error", task)
                    study.tell(trial, state=TrialState.FAIL)
                    done_count, running = done_count + 1, running - 1
                    bar.update(1)
                    continue
                with stops.deferred() if local else contextlib.nullcontext():
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
        requeued = requeue_stale(study, only_numbers=tasks.asked)
        write_trials_csv(folder, study, spec)
        _shutdown(executor, local, kill=True)
        if isinstance(exc, KeyboardInterrupt):
            exc.requeued = bool(requeued)
            raise
        if isinstance(exc, cf.process.BrokenProcessPool):
            raise SoftmaxClsError("a worker process died (out of memory?); the running "
                                  f"trials were re-queued; to resume, run: {command}"
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
        raise  # not this trial's fault: _drive re-queues every trial this command asked for
    except Exception as exc:  # a bug or a lost Dask worker: this trial failed, the sweep goes on
        outcome = TrialOutcome(trial.number, "failed", error=f"{type(exc).__name__}: {exc}")
    if trial.storage.get_trial(trial._trial_id).state.is_finished():
        return  # another command took it for interrupted and re-queued it: its copy counts
    if outcome.warning is not None:
        print_warning(f"trial {trial.number}: {outcome.warning}")
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
