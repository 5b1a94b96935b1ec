"""The sweep folder (--out): which folders a sweep may write into, and what marks one as a
sweep's.

A sweep writes into a new or empty folder, or into the folder of this same sweep: its
FOLDER_FILE (study.json) names the study and the storage the folder's sweep runs in, and the
driver checks the study itself before writing anything. Any other folder (a training run's,
a folder of the user's files, the folder of a sweep of another study) is refused with one
line, and nothing in it is touched.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from ..errors import ConfigError, DataError
from ..fsutil import atomic_write, read_text_file
from .study import masked

FOLDER_FILE = "study.json"
# Every name a sweep writes into its folder (a folder of these alone, without FOLDER_FILE, is
# a sweep killed before it wrote FOLDER_FILE, or one of a version that did not write it).
SWEEP_FILES = frozenset({FOLDER_FILE, "sweep.yaml", "study.journal", "study.journal.flock",
                         "study.journal.lock", "trials.csv", "best.yaml", "best.npz",
                         "summary.json", "cache", "plots", ".lock"})  # .lock: a path's
RUN_ONLY_FILES = ("config.yaml", "history.jsonl", "last.npz")  # what a training run writes
SHOWN_NAMES = 3
MAX_FOLDER_FILE_BYTES = 64 << 10


def folder_storage(storage: str | None) -> str | None:
    """The storage as FOLDER_FILE records it: None for the folder's own journal, else the
    URL or journal path as given, its password masked."""
    return None if storage is None else masked(storage)


def check_folder(folder: Path, study_name: str, storage: str | None) -> None:
    """ConfigError, one line, unless `folder` is missing, empty, or holds the sweep of study
    `study_name` in `storage` (None: the folder's own journal). Reads only."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"--out {folder}: not a folder")
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in itertools.islice(entries, 1000))
    if not names:
        return
    marker = folder / FOLDER_FILE
    if not marker.is_file():
        run_files = [name for name in RUN_ONLY_FILES if name in names]
        if run_files:
            raise ConfigError(f"--out {folder} holds a training run ({', '.join(run_files)}); "
                              "a sweep writes its own best.npz and summary.json: choose "
                              "another --out")
        foreign = [name for name in names if not _written_by_a_sweep(name)]
        if foreign:
            shown = ", ".join(foreign[:SHOWN_NAMES]) + (", ..." if len(foreign) > SHOWN_NAMES
                                                        else "")
            raise ConfigError(f"--out {folder} holds files a sweep did not write ({shown}): "
                              "choose an empty or new folder")
        if storage is not None and "study.journal" in names:
            raise ConfigError(f"--out {folder} holds a sweep in its own study.journal: "
                              "continue it without --storage, or choose another --out")
        return
    recorded = _read_marker(marker)
    wanted = {"study": study_name, "storage": folder_storage(storage)}
    if recorded != wanted:
        where = ("its own study.journal" if recorded.get("storage") is None
                 else f"--storage {recorded.get('storage')}")
        raise ConfigError(f"--out {folder} holds the sweep of study "
                          f"{recorded.get('study')!r} in {where}: continue it with --study "
                          f"{recorded.get('study')} (and that storage), or choose another --out")


def _written_by_a_sweep(name: str) -> bool:
    """One of SWEEP_FILES, or the temporary file of one left by a killed atomic_write."""
    return name in SWEEP_FILES or (name.endswith(".tmp") and any(
        name.startswith(f".{written}.") for written in SWEEP_FILES))


def _read_marker(marker: Path) -> dict:
    try:
        found = json.loads(read_text_file(marker, MAX_FOLDER_FILE_BYTES))
    except (DataError, ValueError) as exc:
        raise ConfigError(f"{marker}: unreadable ({type(exc).__name__}); not a sweep folder "
                          "this tool wrote: choose another --out") from None
    if not isinstance(found, dict) or set(found) != {"study", "storage"}:
        raise ConfigError(f"{marker}: not a sweep folder this tool wrote: choose another "
                          "--out")
    return found


def mark_folder(folder: Path, study_name: str, storage: str | None) -> None:
    """Write FOLDER_FILE: the folder holds the sweep of this study in this storage."""
    with atomic_write(folder / FOLDER_FILE, "w") as handle:
        json.dump({"study": study_name, "storage": folder_storage(storage)}, handle)
        handle.write("\n")
