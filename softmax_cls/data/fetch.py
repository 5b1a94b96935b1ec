"""Locating, downloading, extracting and verifying a CIFAR data folder.

Data flow: an archive (the official URL, a mirror, or a local file) is extracted with
`untrusted.safe_extract` into a temporary folder `root/.extract-*`, every batch and meta file
is checked against its description in `datasets` (softmax_cls.data.batches reads them), and
only then is the folder renamed to `root/<spec.folder>`. An existing folder is checked the
same way before it is used and is never modified. A run killed mid-extraction may leave a
hidden `.extract-*` folder, which is never taken as data.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from softmax_cls.data.batches import SMALL_FILE_CAP, verify_folder
from softmax_cls.data.datasets import SPECS, DatasetSpec, get_spec
from softmax_cls.data.untrusted import safe_extract
from softmax_cls.errors import DataError
from softmax_cls.fsutil import folder_lock, fsync_dir, missing_folders, removed_on_error
from softmax_cls.text import shorten

MIRROR_ENV = "SOFTMAX_CLS_MIRROR"
ARCHIVE_SLACK = 4 << 20  # tar headers, padding and small extra members in a whole archive


@dataclass(frozen=True)
class DataHints:
    """What the command at hand offers when data is missing or the network is down: the ends
    of its error messages, with {name} (the archive's file name) and {root} filled in."""

    missing: str
    offline: str

    def fill(self, text: str, spec: DatasetSpec, root: Path) -> str:
        return text.format(name=spec.archive_name, root=shorten(root))


# Each command's own ways forward. softmax-download always downloads; softmax-eval and a
# resumed softmax-train download only when asked; the library default names softmax-download.
DOWNLOAD_HINTS = DataHints(
    missing="run softmax-download, pass --archive PATH to a local {name}, or --url URL of a "
            "mirror",
    offline="offline? pass --root DIR of your copy, --archive PATH to a local {name} (or copy "
            "it into {root}/), or --url URL of a mirror")
CONFIG_HINTS = DataHints(
    missing="--set data.root=DIR where it is, --set data.archive=PATH to a local {name} (or copy "
            "it into {root}/), or --set data.download=true to download it",
    offline="offline? --set data.root=DIR of your copy, data.archive=PATH to a {name} (or "
            "copy it into {root}/) or data.url=URL of a mirror")
SWEEP_HINTS = DataHints(  # softmax-sweep has no --set: the sweep file's `set:` holds them
    missing="set in the sweep file data.root: DIR where it is, data.archive: PATH to a local "
            "{name} (or copy it into {root}/), or data.download: true",
    offline="offline? set in the sweep file data.root: DIR of your copy, data.archive: PATH "
            "to a {name} (or copy it into {root}/) or data.url: URL of a mirror")
EVAL_HINTS = DataHints(
    missing="pass --root DIR where it is, or --download to download it",
    offline="offline? pass --root DIR where the data is, or first run softmax-download "
            "--archive PATH --root {root} with a local {name}")


def prepare_dataset(dataset: str = "cifar10", root: str | os.PathLike = "data",
                    fmt: str = "binary", *, url: str | None = None,
                    archive: str | os.PathLike | None = None, force: bool = False,
                    download: bool = True, progress: bool = True,
                    spec: DatasetSpec | None = None, hints: DataHints = DOWNLOAD_HINTS) -> Path:
    """Make sure a verified copy of the data set exists under `root`; return its folder.

    Uses `root/<spec.folder>`, or `root` itself when it is such a folder, after verifying
    every file. Otherwise extracts `archive`, or `root/<archive_name>`, or (when `download`)
    the archive downloaded from `url` (the archive name is appended when it ends in '/'),
    the `SOFTMAX_CLS_MIRROR` base URL or the official URL into `root/<archive_name>` (kept
    for later re-extraction); the archive md5 and size are checked only for the official URL,
    as mirrors may repack, while every extracted file is always checked. `force`
    re-downloads and re-extracts; the old folder is replaced only once the new one verified.
    `spec`, when given, overrides the (dataset, fmt) lookup. Processes preparing the same
    root take turns (a lock on root/.lock), so each ends with verified data.
    Raises DataError (DownloadError for the network) with a one-line message whose ways
    forward are the command's own (`hints`).
    """
    spec = spec or get_spec(dataset, fmt)
    if archive is not None and not Path(archive).is_file():
        raise DataError(f"archive {archive} does not exist or is not a file")
    folder, verified = locate(spec, Path(root), url=url, archive=archive, force=force,
                               download=download, progress=progress, hints=hints)
    if verified is None:
        verify_folder(folder, spec)
    return folder


def locate(spec: DatasetSpec, root: Path, *, url, archive, force, download, progress,
            hints: DataHints) -> tuple[Path, dict[str, str] | None]:
    """The data folder, plus its md5s when this call extracted and verified it (else None).

    A folder already in place is used without a lock (it appears in one rename). Obtaining
    and extracting an archive happen under the root's lock; whoever waited for it looks again
    first, and finds the folder the other process made.
    """
    existing = _existing_folder(spec, root)
    if existing is not None and not force:
        return existing, None
    if existing is not None and existing == root:
        raise DataError(
            f"--force cannot replace {root}: it is a folder you pointed at, not one this tool "
            "extracted; point --root at another folder to get a fresh copy"
        )
    if not download and archive is None and not (root / spec.archive_name).is_file():
        raise _missing(spec, root, hints)

    def note(holder: str) -> None:
        if progress:
            print(f"waiting for {holder}, which is preparing {root}", file=sys.stderr)

    with removed_on_error(missing_folders(root)), \
            folder_lock(root, wait=True, on_wait=note):
        existing = _existing_folder(spec, root)
        if existing is not None and not force:
            return existing, None
        archive_path, ours = _obtain_archive(spec, root, url=url, archive=archive, force=force,
                                             download=download, progress=progress, hints=hints)
        verified = _extract_verified(spec, archive_path, root, ours)
    return root / spec.folder, verified


def _missing(spec: DatasetSpec, root: Path, hints: DataHints) -> DataError:
    return DataError(f"no {spec.dataset} {spec.fmt}-format data in {shorten(root)} "
                     f"(neither {spec.folder}/ nor {spec.archive_name}) and downloading is off; "
                     f"{hints.fill(hints.missing, spec, root)}")


def _existing_folder(spec: DatasetSpec, root: Path) -> Path | None:
    """`root/<spec.folder>` or `root` itself when either holds this data set, else None."""
    nested = root / spec.folder
    if nested.is_dir():
        return nested
    if not root.is_dir():
        return None
    if root.name == spec.folder or _holds_batches(root, spec):
        return root
    for other in SPECS.values():
        if other.folder != spec.folder and (root.name == other.folder
                                            or _holds_batches(root, other)):
            raise DataError(
                f"{root} holds {other.dataset} data in the {other.fmt} format, not "
                f"{spec.dataset} in the {spec.fmt} format; choose the matching dataset and "
                "format, or another --root"
            )
    return None


def _holds_batches(folder: Path, spec: DatasetSpec) -> bool:
    return all(
        (folder / name).is_file() for name in spec.train_files + spec.test_files
    )


def _obtain_archive(spec: DatasetSpec, root: Path, *, url, archive, force, download, progress,
                    hints: DataHints) -> tuple[Path, bool]:
    """(archive path, whether this call downloaded it and so may delete it)."""
    if archive is not None:
        path = Path(archive)
        return path, False
    dest = root / spec.archive_name
    if dest.is_file() and not (force and download):
        return dest, False
    if not download:
        raise _missing(spec, root, hints)
    from softmax_cls.data.download import download_file  # requests and its kin: 5 MB, only here

    source = _source_url(spec, url)
    official = source == spec.url  # mirrors may repack: only the official archive's md5 holds
    download_file(source, dest, progress=progress,
                  expected_md5=spec.archive_md5 if official else None,
                  expected_size=spec.archive_size if official else None,
                  ways_forward=hints.fill(hints.offline, spec, root))
    return dest, True


def _source_url(spec: DatasetSpec, url: str | None) -> str:
    """`url` (archive name appended when it ends in '/'), else the mirror, else official."""
    if url:
        return url + spec.archive_name if url.endswith("/") else url
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + spec.archive_name
    return spec.url


def _extract_verified(spec: DatasetSpec, archive: Path, root: Path, ours: bool
                      ) -> dict[str, str]:
    """Extract into a temporary folder in `root`, verify it, rename it to root/<folder>.

    On a verification failure nothing is left behind, including the archive when `ours`.
    Returns the md5 of every verified file.
    """
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    sizes = {f"{spec.folder}/{name}": size for name, size in spec.sizes.items()}
    total = sum(sizes.values()) + SMALL_FILE_CAP * len(spec.names_files) + ARCHIVE_SLACK
    hint = f"the archive {archive} is corrupt or not the official {spec.dataset} data"
    named = [other for other in SPECS.values() if other.archive_name == archive.name]
    if named and named[0].archive_name != spec.archive_name:  # --format or --dataset off
        hint = (f"{archive.name} is the name of the {named[0].dataset} {named[0].fmt}-format "
                f"archive; this command wants the {spec.dataset} {spec.fmt}-format one, "
                f"{spec.archive_name}")
    if ours:
        hint += " (deleted it)"
    try:
        try:
            safe_extract(archive, scratch, sizes=sizes, member_cap=SMALL_FILE_CAP,
                         total_cap=total)
        except DataError as exc:
            raise DataError(f"{exc}; {hint}") from None
        new = scratch / spec.folder
        if not new.is_dir():
            raise DataError(f"{archive} has no {spec.folder}/ folder: it is not the "
                            f"{spec.dataset} {spec.fmt}-format archive")
        verified = verify_folder(new, spec, lambda name: f"{name} in {archive.name}", hint)
        _move_into_place(new, root / spec.folder, scratch)
    except DataError:
        if ours:
            archive.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return verified


def _move_into_place(new: Path, final: Path, scratch: Path) -> None:
    """Rename `new` to `final`; an old `final` is first moved into `scratch` (deleted later)."""
    if final.is_symlink() or final.exists():
        if not final.is_dir():
            raise DataError(f"{final} exists and is not a folder; move it away and retry")
        os.replace(final, scratch / ".replaced")
    os.replace(new, final)
    fsync_dir(final.parent)
