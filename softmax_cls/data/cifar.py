"""Locating, downloading, verifying and reading a data set into arrays.

Data flow: an archive (the official URL, a mirror, or a local file) is extracted with
`untrusted.safe_extract` into a temporary folder `root/.extract-*`, every batch and meta file
is checked against its description in `datasets` (exact size, md5, class names, shapes and
label ranges), and only then is the folder renamed to `root/<spec.folder>`. An existing folder
is checked the same way before it is used and is never modified. The binary format is read
with numpy alone; the python format (Python 2 pickles) only through
`untrusted.restricted_unpickle`. A run killed mid-extraction may leave a hidden `.extract-*`
folder, which is never taken as data.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from softmax_cls.config import DataConfig
from softmax_cls.data.datasets import IMAGE_BYTES, SPECS, DatasetSpec, get_spec
from softmax_cls.data.untrusted import restricted_unpickle, safe_extract
from softmax_cls.errors import ConfigError, DataError
from softmax_cls.fsutil import folder_lock, fsync_dir

MIRROR_ENV = "SOFTMAX_CLS_MIRROR"
# The most bytes a file without a known exact size may have: the class-name files are under
# 2 KB (a .txt of names, or the python format's meta pickle); a readme is under 1 KB.
SMALL_FILE_CAP = 64 << 10
ARCHIVE_SLACK = 4 << 20  # tar headers, padding and small extra members in a whole archive
# Binary records read at a time (about 3 MB): a batch file goes straight into its rows of the
# data set's array, never held whole (a whole file would add 30-150 MB to the peak memory).
READ_RECORDS = 1024


@dataclass(frozen=True)
class DataHints:
    """What the command at hand offers when data is missing or the network is down: the ends
    of its error messages, with {name} (the archive's file name) and {root} filled in."""

    missing: str
    offline: str

    def fill(self, text: str, spec: DatasetSpec, root: Path) -> str:
        return text.format(name=spec.archive_name, root=root)


# Each command's own ways forward. softmax-download always downloads; softmax-eval and a
# resumed softmax-train download only when asked; the library default names softmax-download.
DOWNLOAD_HINTS = DataHints(
    missing="run softmax-download, pass --archive PATH to a local {name}, or --url URL of a "
            "mirror",
    offline="offline? pass --archive PATH to a local {name}, or --url URL of a mirror")
CONFIG_HINTS = DataHints(
    missing="--set data.root=DIR where it is, --set data.archive=PATH to a local {name} (or copy "
            "it into {root}/), or --set data.download=true to download it",
    offline="offline? --set data.archive=PATH to a local {name} (or copy it into {root}/), or "
            "--set data.url=URL of a mirror")
EVAL_HINTS = DataHints(
    missing="pass --root DIR where it is, or --download to download it",
    offline="offline? pass --root DIR where the data is, or first run softmax-download "
            "--archive PATH --root {root} with a local {name}")


@dataclass(frozen=True, eq=False)
class LabelledData:
    """A loaded data set. Images are (N, 3072) uint8, C-contiguous: R plane, G plane, B plane,
    each 32x32 row-major. Labels are (N,) int64 in [0, len(class_names)).
    `fingerprint` maps each file read to its md5.

    The test split may be left in its files (load_dataset(keep_test=False)): test_images and
    test_labels are then None and `test_on_disk` reads them; `n_test` counts the test rows
    either way and `with_test()` brings them into memory.
    """

    dataset: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    fingerprint: dict[str, str]
    test_on_disk: SplitOnDisk | None = None

    @property
    def n_test(self) -> int:
        """The number of test rows, in memory or on disk."""
        if self.test_labels is None:
            return 0 if self.test_on_disk is None else self.test_on_disk.count
        return len(self.test_labels)

    def with_test(self) -> LabelledData:
        """This data with its test split in memory: itself when it is already, else with the
        split read now from its files, checked again (DataError if one changed since)."""
        if self.test_on_disk is None:
            return self
        images, labels = self.test_on_disk.read(self.fingerprint)
        return replace(self, test_images=images, test_labels=labels, test_on_disk=None)

    def without_train(self) -> LabelledData:
        """This data without its training rows: train_images (0, P) and train_labels (0,),
        so that, once no one else holds them, the training rows are freed (before the test
        split is read after training, say)."""
        images, labels = self.train_images, self.train_labels
        return replace(self, train_images=np.empty((0, *images.shape[1:]), images.dtype),
                       train_labels=np.empty(0, labels.dtype))


@dataclass(frozen=True)
class SplitOnDisk:
    """A split of a data set left in its verified files (folder/files of `spec`), read only
    when needed; `labels` picks "fine" or "coarse" labels."""

    folder: Path
    spec: DatasetSpec
    files: tuple[str, ...]
    labels: str

    @property
    def count(self) -> int:
        return sum(self.spec.counts[name] for name in self.files)

    def read(self, fingerprint: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, 3072) uint8, labels (N,) int64), checked like any read (size, md5,
        labels) and against `fingerprint`, the md5s found when the data set was loaded."""
        reader = _Reader(self.folder, self.spec, hint=_folder_hint(self.folder))
        images, labels = _read_split(reader, self.files, self.labels)
        for name in self.files:
            before, now = fingerprint.get(name), reader.fingerprint[name]
            if now != before:
                raise reader.error(name, f"changed since it was first read (md5 {before}, "
                                         f"now {now})")
        return images, labels


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
    folder, verified = _locate(spec, Path(root), url=url, archive=archive, force=force,
                               download=download, progress=progress, hints=hints)
    if verified is None:
        _verify_folder(folder, spec)
    return folder


def _locate(spec: DatasetSpec, root: Path, *, url, archive, force, download, progress,
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

    with folder_lock(root, wait=True, on_wait=note):
        existing = _existing_folder(spec, root)
        if existing is not None and not force:
            return existing, None
        archive_path, ours = _obtain_archive(spec, root, url=url, archive=archive, force=force,
                                             download=download, progress=progress, hints=hints)
        verified = _extract_verified(spec, archive_path, root, ours)
    return root / spec.folder, verified


def _missing(spec: DatasetSpec, root: Path, hints: DataHints) -> DataError:
    return DataError(f"no {spec.dataset} {spec.fmt}-format data in {root} (neither "
                     f"{spec.folder}/ nor {spec.archive_name}) and downloading is off; "
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
        verified = _verify_folder(new, spec, lambda name: f"{name} in {archive.name}", hint)
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


# ---------------------------------------------------------------------------------------------
# Verifying and reading


def _folder_hint(folder: Path) -> str:
    return (f"the copy in {folder} is damaged: rerun with --force to replace it, or point "
            "--root at a fresh copy")


class _Reader:
    """Reads the files of one data folder, checks them, and records each file's md5.

    `verified` holds md5s this process computed moments ago while verifying a fresh
    extraction, so those files are not hashed again. `describe(name)` names a file in error
    messages and `hint` ends them.
    """

    def __init__(self, folder: Path, spec: DatasetSpec, *, verified: dict[str, str] | None = None,
                 describe: Callable[[str], str] | None = None, hint: str = ""):
        self.folder, self.spec = folder, spec
        self.verified = verified or {}
        self.describe = describe or (lambda name: str(folder / name))
        self.hint = hint
        self.fingerprint: dict[str, str] = {}

    def error(self, name: str, problem: str) -> DataError:
        return DataError(f"{self.describe(name)}: {problem}; {self.hint}")

    def _read_from(self, name: str, read: Callable) -> object:
        """read(handle) on `name` opened unbuffered, its OSErrors turned into DataErrors."""
        path = self.folder / name
        try:
            with open(path, "rb", buffering=0) as handle:
                return read(handle)
        except FileNotFoundError:
            raise self.error(name, "missing") from None
        except PermissionError:
            raise DataError(f"{path}: permission denied: this user cannot read it (check its "
                            "owner and mode)") from None
        except OSError as exc:
            raise self.error(name, f"cannot read it ({exc.strerror or exc})") from exc

    def _check_size_and_md5(self, name: str, n_read: int, size: int | None, md5) -> None:
        """Check `name`'s n_read bytes (size + 1 when there were more) against its exact
        `size` (or SMALL_FILE_CAP when it has none) and, unless verified, its md5 (a hashlib
        object of what was read) against the spec's; records the md5."""
        if size is not None and n_read != size:
            found = f"more than {size}" if n_read > size else str(n_read)
            raise self.error(name, f"expected {size} bytes, found {found}")
        if size is None and n_read > SMALL_FILE_CAP:
            raise self.error(name, f"more than {SMALL_FILE_CAP} bytes, far more than it can hold")
        digest = self.verified.get(name) or md5.hexdigest()
        expected = self.spec.files.get(name)
        if expected is not None and digest != expected:
            raise self.error(name, f"md5 checksum mismatch, expected {expected}, got {digest}")
        self.fingerprint[name] = digest

    def read(self, name: str) -> bytes:
        """The bytes of `name`, after checking its exact size and md5 where the spec has them.

        Never reads more than the file can have: its exact size, or SMALL_FILE_CAP.
        """
        size = self.spec.sizes.get(name)
        limit = SMALL_FILE_CAP if size is None else size
        blob = self._read_from(name, lambda handle: _read_up_to(handle, limit + 1))
        md5 = None if name in self.verified else hashlib.md5(blob)
        self._check_size_and_md5(name, len(blob), size, md5)
        return blob

    def streams(self, name: str) -> bool:
        """Whether `name` is a binary batch file of the exact size of its records, which
        `stream_batch` reads chunk by chunk (any other file is read whole)."""
        spec = self.spec
        return (spec.fmt == "binary" and name in spec.counts and spec.sizes.get(name)
                == spec.counts[name] * (spec.label_bytes + IMAGE_BYTES))

    def stream_batch(self, name: str, images: np.ndarray | None = None,
                     labels: np.ndarray | None = None, coarse: bool = False) -> None:
        """Read the binary batch file `name` (see `streams`) READ_RECORDS records at a time
        into images (n, 3072) uint8 and labels (n,) int64 (coarse or fine) when given, or
        only check it; n = spec.counts[name]. The checks and their order are those of
        `batch`: exact size, md5 (hashed as it is read), label ranges. On a DataError the
        arrays hold part of the file.
        """
        spec, count = self.spec, self.spec.counts[name]
        record = spec.label_bytes + IMAGE_BYTES
        # CIFAR-100 records start with (coarse, fine) label bytes: both are checked, one kept
        label_bytes = np.empty((count, spec.label_bytes), np.uint8)
        md5 = None if name in self.verified else hashlib.md5()

        def read(handle) -> int:
            chunk_buffer = np.empty((min(READ_RECORDS, count), record), np.uint8)
            done = 0
            while done < count:
                chunk = chunk_buffer[: min(READ_RECORDS, count - done)]
                n_read = handle.readinto(memoryview(chunk).cast("B"))
                while n_read and n_read < chunk.nbytes:  # a short read before the end
                    more = handle.readinto(memoryview(chunk).cast("B")[n_read:])
                    if not more:
                        break
                    n_read += more
                if n_read < chunk.nbytes:
                    return done * record + n_read
                if md5 is not None:
                    md5.update(chunk)
                if images is not None:
                    images[done : done + len(chunk)] = chunk[:, spec.label_bytes:]
                label_bytes[done : done + len(chunk)] = chunk[:, : spec.label_bytes]
                done += len(chunk)
            return count * record + len(handle.read(1))

        self._check_size_and_md5(name, self._read_from(name, read), count * record, md5)
        fine = label_bytes[:, spec.label_bytes - 1]
        self.check_range(name, fine, len(spec.class_names))
        if spec.coarse_names:
            self.check_range(name, label_bytes[:, 0], len(spec.coarse_names))
        if labels is not None:
            labels[:] = label_bytes[:, 0] if coarse else fine

    def check_class_names(self) -> None:
        """Read the class-name file(s) and check them against the spec's class lists."""
        spec = self.spec
        expected_lists = (spec.class_names, spec.coarse_names)
        if spec.fmt == "binary":  # one name per line: fine (or only), then coarse
            found = [(name, _text_lines(self.read(name), len(expected)), expected)
                     for name, expected in zip(spec.names_files, expected_lists, strict=False)]
        else:  # one pickled dict
            name = spec.names_files[0]
            meta = self.unpickle(name, self.read(name))
            keys = ("fine_label_names", "coarse_label_names") if spec.coarse_names else (
                "label_names",)
            found = [(name, _decode_names(meta.get(key.encode()), len(expected)), expected)
                     for key, expected in zip(keys, expected_lists, strict=False)]
        for name, names, expected in found:
            if names != tuple(expected):
                shown = ", ".join(_cut(n, 20) for n in names[:5]) + (
                    f", ... ({len(names)} in all)" if len(names) > 5 else "")
                raise self.error(name, f"class names ({shown}) differ from the "
                                       f"{len(expected)} known {spec.dataset} classes")

    def batch(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(images, fine labels, coarse labels or None) of one batch file.

        Images are (n, 3072) uint8, possibly a strided read-only view of the file's bytes;
        labels are (n,) integer arrays, range-checked; n = spec.counts[name].
        """
        spec, count = self.spec, self.spec.counts[name]
        blob = self.read(name)
        if spec.fmt == "binary":
            record = spec.label_bytes + IMAGE_BYTES
            if len(blob) != count * record:
                raise self.error(name, f"expected {count * record} bytes, found {len(blob)}")
            records = np.frombuffer(blob, dtype=np.uint8).reshape(count, record)
            # CIFAR-100 records start with (coarse, fine) label bytes
            images, fine = records[:, spec.label_bytes:], records[:, spec.label_bytes - 1]
            coarse = records[:, 0] if spec.coarse_names else None
        else:
            images, fine, coarse = self.python_batch(name, blob, count)
        self.check_range(name, fine, len(spec.class_names))
        if coarse is not None:
            self.check_range(name, coarse, len(spec.coarse_names))
        return images, fine, coarse

    def check_batch(self, name: str) -> None:
        """Check one batch file as `batch` does, keeping nothing (a binary one streamed)."""
        if self.streams(name):
            self.stream_batch(name)
        else:
            self.batch(name)

    def python_batch(self, name: str, blob: bytes, count: int):
        batch = self.unpickle(name, blob)
        images = batch.get(b"data")
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8
                and images.shape == (count, IMAGE_BYTES)):
            found = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else (
                type(images).__name__)
            raise self.error(name, f"expected a ({count}, {IMAGE_BYTES}) uint8 array under "
                                   f"b'data', found {found}")
        keys = (b"fine_labels", b"coarse_labels") if self.spec.coarse_names else (b"labels",)
        labels = []
        for key in keys:
            values = batch.get(key)
            if not (isinstance(values, list) and len(values) == count
                    and all(type(v) is int for v in values)):
                raise self.error(name, f"expected a list of {count} integer labels under {key}")
            labels.append(np.array(values, dtype=np.int64))
        return images, labels[0], labels[1] if len(labels) > 1 else None

    def unpickle(self, name: str, blob: bytes) -> dict:
        try:
            obj = restricted_unpickle(io.BytesIO(blob))
        except DataError as exc:
            raise self.error(name, str(exc)) from None
        if not isinstance(obj, dict):
            raise self.error(name, f"expected a pickled dict, found {type(obj).__name__}")
        return obj

    def check_range(self, name: str, labels: np.ndarray, num_classes: int) -> None:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise self.error(name, f"label {bad[0]} out of range 0..{num_classes - 1}")


MAX_NAME_CHARS = 64  # the longest class name is 30 characters


def _read_up_to(handle, limit: int) -> bytes:
    """Up to `limit` bytes from an unbuffered file, fewer only at its end."""
    parts, total = [], 0
    while total < limit:
        part = handle.read(limit - total)
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _text_lines(blob: bytes, expected: int) -> tuple[str, ...]:
    """The non-blank lines of a names file (at most `expected` + 1: enough to compare)."""
    names = []
    for line in blob.decode("latin-1").splitlines():
        if line.strip():
            names.append(_cut(line.strip(), MAX_NAME_CHARS))
            if len(names) > expected:
                break
    return tuple(names)


def _decode_names(names, expected: int) -> tuple[str, ...]:
    """The class names of a meta pickle's list, if it is a list of `expected` short strings.

    Checked before decoding: a pickle can repeat one long string many times by reference.
    """
    if not (isinstance(names, list) and len(names) == expected and all(
            isinstance(n, (bytes, str)) and len(n) <= MAX_NAME_CHARS for n in names)):
        count = f"{len(names)} items" if isinstance(names, list) else type(names).__name__
        return (f"<not a list of {expected} short names: {count}>",)
    return tuple(n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names)


def _verify_folder(folder: Path, spec: DatasetSpec,
                   describe: Callable[[str], str] | None = None, hint: str = "") -> dict[str, str]:
    """Check every required file: exact size, md5, class names, shapes and label ranges.

    Files are read one at a time. Returns {file name: md5}; raises DataError on a problem.
    """
    reader = _Reader(folder, spec, describe=describe, hint=hint or _folder_hint(folder))
    reader.check_class_names()
    for name in spec.train_files + spec.test_files:
        reader.check_batch(name)
    return reader.fingerprint


def _check_label_choice(spec: DatasetSpec, labels: str) -> None:
    """A ConfigError (a usage error, exit 2) unless `labels` exists for the data set."""
    if labels not in ("fine", "coarse"):
        raise ConfigError(f"data.labels: choose fine or coarse, got {labels[:40]!r}")
    if labels == "coarse" and not spec.coarse_names:
        raise ConfigError(f"data.labels: {spec.dataset} has no coarse labels (only cifar100 "
                          "has); use fine")


def load_dataset(dataset: str = "cifar10", root: str | os.PathLike = "data",
                 fmt: str = "binary", *, url: str | None = None,
                 archive: str | os.PathLike | None = None, labels: str = "fine",
                 force: bool = False, download: bool = True, progress: bool = True,
                 spec: DatasetSpec | None = None, hints: DataHints = DOWNLOAD_HINTS,
                 keep_test: bool = True) -> LabelledData:
    """Locate (see `prepare_dataset`), verify and read the whole data set.

    Every file is hashed (unless this call just verified it during extraction), checked,
    and its images copied once into the result: a binary batch file a few MB at a time,
    straight into its rows, a python-format one whole (it is one pickle). `labels` picks
    CIFAR-100's "fine" (100 classes) or "coarse" (20 superclasses) labels. Without
    `keep_test` the test files are checked and hashed the same way but left on disk
    (LabelledData.with_test reads them later). Returns LabelledData with images (N, 3072) uint8
    C-contiguous and labels (N,) int64.
    """
    spec = spec or get_spec(dataset, fmt)
    _check_label_choice(spec, labels)
    folder, verified = _locate(spec, Path(root), url=url, archive=archive, force=force,
                               download=download, progress=progress, hints=hints)
    reader = _Reader(folder, spec, verified=verified, hint=_folder_hint(folder))
    reader.check_class_names()
    train_images, train_labels = _read_split(reader, spec.train_files, labels)
    test_images = test_labels = on_disk = None
    if keep_test:
        test_images, test_labels = _read_split(reader, spec.test_files, labels)
    else:
        for name in spec.test_files:
            reader.check_batch(name)
        on_disk = SplitOnDisk(folder, spec, spec.test_files, labels)
    return LabelledData(
        dataset=spec.dataset,
        class_names=spec.coarse_names if labels == "coarse" else spec.class_names,
        train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels, fingerprint=reader.fingerprint,
        test_on_disk=on_disk,
    )


def _read_split(reader: _Reader, names: tuple[str, ...], labels: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batch files: images (N, 3072) uint8 C-contiguous, labels (N,) int64.

    Each file is read into its own rows of the result, binary ones chunk by chunk."""
    total = sum(reader.spec.counts[name] for name in names)
    images = np.empty((total, IMAGE_BYTES), dtype=np.uint8)
    targets = np.empty(total, dtype=np.int64)
    start = 0
    for name in names:
        stop = start + reader.spec.counts[name]
        if reader.streams(name):
            reader.stream_batch(name, images[start:stop], targets[start:stop],
                                coarse=labels == "coarse")
        else:
            batch_images, fine, coarse = reader.batch(name)
            images[start:stop] = batch_images
            targets[start:stop] = coarse if labels == "coarse" else fine
        start = stop
    return images, targets


def load_config_data(data: DataConfig, progress: bool = True, hints: DataHints = CONFIG_HINTS,
                     *, keep_test: bool = True) -> LabelledData:
    """The data set a config's `data` section names, located, verified and read; error
    messages give `hints` (default: the config's own keys, `--set data.archive=PATH`...).
    Without `keep_test` a CIFAR test split is checked but left on disk (see load_dataset);
    feature files are loaded as softmax_cls.data.features does, whatever `keep_test`."""
    if data.dataset == "features":  # feature files for linear probes (softmax_cls.data.features)
        from .features import load_features
        return load_features(data, progress)
    return load_dataset(data.dataset, data.root, data.format, url=data.url, archive=data.archive,
                        labels=data.labels, download=data.download, progress=progress,
                        hints=hints, keep_test=keep_test)
