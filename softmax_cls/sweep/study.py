"""The sweep's Optuna study: its storage, its creation and identity, its sampler, the trials
left running by a killed sweep, and the grid's enqueued points.

Storage: `journal:PATH` (an Optuna journal file, the sweep folder's `study.journal` by
default) or any URL Optuna reads (sqlite:///..., postgresql://...). The journal file is locked
with flock, which the kernel releases when its holder dies, so a killed sweep never leaves a
stale lock behind for the next command to wait out. A URL's password is never shown: every
message that names a storage shows it through `masked`.

optuna is imported lazily: this module imports without it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import socket
from pathlib import Path

import numpy as np

from ..errors import ConfigError, SoftmaxClsError
from ..fsutil import open_own_file
from .spec import SweepSpec, grid_points

INSTALL_HINT = "softmax-sweep needs optuna: pip install 'softmax-cls[sweep]'"
OWNERLESS_GRACE_SECONDS = 60.0  # a running trial with no driver recorded yet is not stale
REASON_CHARS = 200  # a storage's error, as shown in the one error line
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*):"
                          r"(?P<password>[^@\s]*)@")


def masked(text: str) -> str:
    """`text` with the password of every URL in it replaced: user:secret@host -> user:***@host."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))


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


class FlockJournalLock:
    """The lock of an Optuna journal file: flock on `PATH.flock`, released by the kernel when
    the holding process ends however it ends (Optuna's own locks are files that a killed
    process leaves behind, which the next process waits 30 s for). One descriptor per lock
    object, so acquiring again in the same process (after an interrupted write) never waits
    on itself."""

    def __init__(self, journal_path: str):
        self._journal = journal_path
        self._path = f"{journal_path}.flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock, then check that the journal optuna is about to append to (by path)
        is still a plain file of its own: a link planted after storage_name's first check,
        or seen only by a worker, is refused before anything is written through it."""
        if self._fd is None:
            self._fd = open_own_file(self._path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        if os.path.lexists(self._journal):
            try:
                os.close(open_own_file(self._journal, os.O_RDONLY))
            except OSError:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                raise
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def open_storage(storage: str):
    """An optuna storage: a URL as optuna reads it, or `journal:PATH` for a journal file."""
    if storage.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = storage[len("journal:"):]
        return JournalStorage(JournalFileBackend(path, lock_obj=FlockJournalLock(path)))
    return storage


def open_storage_for(folder: str | os.PathLike, storage: str | None = None):
    """The optuna storage of a sweep folder (its journal file), or of the given URL."""
    return open_storage(storage_name(Path(folder), storage))


def make_pruner(settings: dict | None):
    """The optuna pruner of a sweep's `pruner` settings ({name, startup_trials,
    warmup_epochs}); NopPruner for none."""
    import optuna

    if settings is None or settings["name"] == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"],
                                       n_warmup_steps=settings["warmup_epochs"])


def make_sampler(spec: SweepSpec, trial_number: int):
    """The sampler that draws the parameters of trial `trial_number`, seeded by (seed, trial
    number). Trial numbers are unique in a study, so two commands sampling one study at once
    draw different points, a resumed sweep draws new points rather than replaying its first
    ones, and a sweep run alone draws the same points from the same seed."""
    import optuna

    seed = int(np.random.SeedSequence([spec.seed, trial_number]).generate_state(1)[0])
    if spec.sampler in ("random", "grid"):  # a grid's points are enqueued (enqueue_next_grid_point)
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _storage_error(storage: str, exc: BaseException) -> SoftmaxClsError:
    """One line for a storage Optuna (or its database driver) cannot open."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if len(reason) > REASON_CHARS:
        reason = reason[:REASON_CHARS] + "..."
    return SoftmaxClsError(masked(f"--storage {storage}: cannot open the study: {reason}"))


def check_study(spec: SweepSpec, storage: str, study_name: str, own_journal: bool) -> None:
    """ConfigError when the study exists in the storage and holds another sweep, or when the
    storage is a sweep folder's own journal (`own_journal`) and holds a study of another name
    (a folder holds one sweep); a SoftmaxClsError line when the storage cannot be opened.
    Creates nothing but the storage itself (an empty journal file, a new database's tables)."""
    optuna = require_optuna()
    try:
        names = optuna.get_all_study_names(storage=open_storage(storage))
        stored = {} if study_name not in names else optuna.load_study(
            study_name=study_name, storage=open_storage(storage),
            sampler=optuna.samplers.RandomSampler()).user_attrs
    except Exception as exc:  # noqa: BLE001 - sqlalchemy and the DB drivers raise many types
        raise _storage_error(storage, exc) from None
    others = sorted(name for name in names if name != study_name)
    if own_journal and others:
        raise ConfigError(f"{storage[len('journal:'):]} holds the study {others[0]!r}, not "
                          f"{study_name!r}: continue it with --study {others[0]}, or choose "
                          "another --out")
    identity = json.loads(json.dumps(spec.identity()))
    found = stored.get("sweep")
    if found is not None and found != identity:
        changed = sorted(k for k in identity if found.get(k) != identity.get(k))
        raise ConfigError(masked(f"study {study_name!r} in {storage} holds another sweep ("
                                 f"{', '.join(changed)} differ): use another --out, --storage "
                                 "or --study"))


def stored_study(storage: str, study_name: str):
    """The study `study_name` as the storage holds it, or None when it holds none of that
    name (or is a journal file not made yet). Writes nothing: a journal file is not created
    and the study is loaded, not created (open_study's create_study appends a record to the
    journal each time, even for a study that exists)."""
    optuna = require_optuna()
    if storage.startswith("journal:") and not os.path.isfile(storage[len("journal:"):]):
        return None
    try:
        if study_name not in optuna.get_all_study_names(storage=open_storage(storage)):
            return None
        return optuna.load_study(study_name=study_name, storage=open_storage(storage),
                                 sampler=optuna.samplers.RandomSampler())
    except Exception as exc:  # noqa: BLE001 - as in check_study
        raise _storage_error(storage, exc) from None


def open_study(spec: SweepSpec, storage: str, study_name: str):
    """Create the study, or load it when it exists (check_study said it holds this sweep).
    The driver calls this before any worker starts (workers only load it)."""
    optuna = require_optuna()
    try:
        study = optuna.create_study(storage=open_storage(storage), study_name=study_name,
                                    direction="maximize", load_if_exists=True,
                                    pruner=make_pruner(spec.pruner))
        if study.user_attrs.get("sweep") is None:
            study.set_user_attr("sweep", json.loads(json.dumps(spec.identity())))
    except Exception as exc:  # noqa: BLE001 - as in check_study
        raise _storage_error(storage, exc) from None
    study.sampler = make_sampler(spec, len(study.get_trials(deepcopy=False)))
    return study


# ---------------------------------------------------------------------------------------------
# Trials left running


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


def enqueue_next_grid_point(study, spec: SweepSpec) -> bool:
    """Before each ask of a grid sweep: enqueue the first grid point that no trial holds yet
    (an interrupted trial's point is held by its re-queued copy), unless a trial is already
    waiting, so that every point runs once, in order. Points are enqueued one at a time
    because each enqueue is a journal write (10,000 at once took half a minute). optuna's
    GridSampler is not used: it calls study.stop(), which only works inside study.optimize,
    not under ask and tell. Returns whether a point was enqueued."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return False
    taken = {_point_key(t.params) for t in trials if state_name(t) != "interrupted"}
    for point in grid_points(spec):
        if _point_key(point) not in taken:
            study.enqueue_trial(point)
            return True
    return False


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
