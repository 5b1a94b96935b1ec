"""Your own image folders: `data.dataset: folder`, one sub-folder of images per class.

The layout is torchvision's `ImageFolder` (and Keras' `image_dataset_from_directory`):
`data.train` holds one sub-folder per class, the class names are the sorted sub-folder names
(printable text: a name with a control character or bytes that are not UTF-8 is refused, as
it could not be printed, plotted or exported), and each class's images are found at any
depth below its sub-folder by their suffix (data.images.IMAGE_SUFFIXES). Names starting with
a dot are ignored, and so are files directly in `data.train` (they belong to no class). The
test split is `data.test`, a folder of the same layout (its classes a subset of the training
classes), or else a stratified share `data.test_fraction` of each class held out of
`data.train` (the same images every run: a fixed seed per class, not the config's seed, so a
sweep's trials share one split).

Symbolic links: a link to a folder is never followed (so no loop and nothing outside); a
link to a file is read when its target lies inside the image folder, and skipped otherwise.

Each image is read by data.images.read_image (the resize and crop policy is there) and the
rows are cached once, as uint8, in `<data.root>/image-cache/<fingerprint>/`: never inside the
image folder (a data.root inside it is refused). The fingerprint is a hash of what a scan
sees without decoding anything: each file's path relative to the folder, its size and its
modification time, the class names, and the reading policy; a file added, removed, renamed
or modified gives another fingerprint, and the folder is read again. A cache folder is
written under a temporary name and renamed when complete, so a reader sees a whole cache or
none, and two processes reading the same folder at once both end with the same cache.

A file that cannot be read as an image (not decodable, truncated, a decompression bomb, not
an image by its name, a link out of the folder) is skipped, and one warning line on stderr
gives the count and the first few names; with `data.strict: true` it is refused instead.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import DataConfig
from ..errors import DataError, UnreadableImage
from ..fsutil import _umask, md5_hash, open_regular, read_capped
from ..npy_header import read_npy_header
from ..text import print_warning, shorten
from .datasets import IMAGE_BYTES
from .images import IMAGE_SIZE, IMAGE_SUFFIXES, read_image, require_pillow
from .labelled import LabelledData

CACHE_FOLDER = "image-cache"  # under data.root
CACHE_VERSION = 2  # bump when the reading policy or the cache's files change (2: 16-bit grey)
ROWS_FILE, LABELS_FILE, META_FILE = "rows.u8", "labels.npy", "meta.json"
META_CAP = 1 << 20  # bytes of meta.json read at most
SPLIT_SEED = 0  # the held-out split's seed (with the class index): fixed, not config.seed
# sub-folder names that are a data set's splits, not classes (photos/train/cat, photos/test/cat)
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "eval"}
SHOWN_SKIPS = 3  # names the skip warning shows
WRITE_ROWS = 256  # rows decoded before they are written to the cache file


@dataclass
class FolderScan:
    """What a scan of an image folder finds without decoding anything: the folder (resolved),
    the sorted class names, the image files to read as (path relative to the folder, class
    index) in class then path order, the files skipped already as (relative path, reason),
    and the fingerprint (hex) of all of it with each file's size and modification time."""

    role: str  # "train" or "test": the config key data.<role> that named the folder
    given: str  # the path as the config gives it, for messages
    root: Path
    class_names: tuple[str, ...]
    files: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str = ""


def scan_folder(path: str | os.PathLike, role: str = "train") -> FolderScan:
    """The scan of the image folder `path` (see the module doc); DataError (one line naming
    data.<role>) when it is missing, not a folder, has a class folder without images, or no
    class folder (the training folder: fewer than 2)."""
    given = str(path)
    where = f"data.{role}"
    if not os.path.exists(path):
        raise DataError(f"{where}: image folder not found: {shorten(given)}")
    if not os.path.isdir(path):
        raise DataError(f"{where}: {shorten(given)} is not a folder (data.dataset folder needs "
                        "a folder with one sub-folder of images per class)")
    root = Path(path).resolve()
    skipped: list[tuple[str, str]] = []
    classes = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink() and entry.is_dir():
                skipped.append((entry.name, "a link to a folder, not followed"))
            elif entry.is_dir(follow_symlinks=False):
                classes.append(entry.name)
    classes.sort()
    for name in classes:  # a class name is printed, plotted and written as UTF-8 text
        if not name.isprintable():
            raise DataError(f"{where}: class folder {shorten(name, 60, quote=True)} in "
                            f"{shorten(given)}: its name is not printable text (a control "
                            "character, or bytes that are not UTF-8); rename it")
    if classes and all(name.lower() in SPLIT_NAMES for name in classes):
        split = next((name for name in classes if name.lower().startswith(role)), classes[0])
        raise DataError(f"{where}: the class folders are {', '.join(classes)} in "
                        f"{shorten(given)}: a data set's splits, one level too high; set "
                        f"data.{role}: {shorten(os.path.join(given, split))}")
    if len(classes) < (2 if role == "train" else 1):
        found = f"1 class folder ({shorten(classes[0], 40)})" if classes else "no class folders"
        need = "a classifier needs at least 2" if role == "train" else "it needs at least 1"
        raise DataError(f"{where}: {shorten(given)} has {found}; {need} (one sub-folder of "
                        "images per class)")
    files: list[tuple[str, int]] = []
    entries_seen: list[tuple[str, int, int]] = []
    for index, name in enumerate(classes):
        before = len(files)
        for rel, info, reason in _walk(root, name):
            if reason is not None:
                skipped.append((rel, reason))
                continue
            files.append((rel, index))
            entries_seen.append((rel, info.st_size, info.st_mtime_ns))
        if len(files) == before:
            raise DataError(f"{where}: class folder {shorten(name, 60, quote=True)} in "
                            f"{shorten(given)} holds no images (remove it, or add images)")
    digest = hashlib.sha256(json.dumps(
        [CACHE_VERSION, IMAGE_SIZE, classes, entries_seen, skipped]).encode())
    return FolderScan(role, given, root, tuple(classes), files, skipped,
                      digest.hexdigest()[:32])


def _walk(root: Path, class_name: str):
    """(relative path, stat of the file, None) for each image file below root/class_name in
    sorted order, or (relative path, None, reason) for one skipped without decoding."""
    unreadable: list[OSError] = []
    for folder, dirs, names in os.walk(root / class_name, followlinks=False,
                                       onerror=unreadable.append):
        dirs.sort()
        here = Path(folder)
        for name in list(dirs):
            if name.startswith("."):
                dirs.remove(name)
            elif (here / name).is_symlink():  # os.walk lists it but does not enter it
                dirs.remove(name)
                yield _relative(root, here / name), None, "a link to a folder, not followed"
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = here / name
            rel = _relative(root, path)
            if path.is_symlink() and not _inside(root, Path(os.path.realpath(path))):
                yield rel, None, "a link out of the folder, not followed"
                continue
            try:
                info = path.stat()
            except OSError as exc:
                yield rel, None, f"cannot be read ({exc.strerror or exc})"
                continue
            if not stat.S_ISREG(info.st_mode):
                yield rel, None, "not a regular file"
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                yield rel, None, "not an image file name"
            else:
                yield rel, info, None
    for exc in unreadable:  # a sub-folder that cannot be listed: its files are not silently lost
        yield (_relative(root, Path(exc.filename)), None,
               f"a folder that cannot be read ({exc.strerror or exc})")


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _inside(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


@dataclass
class FolderRows:
    """An image folder read: rows (N, 3072) uint8 (a read-only memory map of the cache), labels
    (N,) int64 indexing class_names, the md5 of rows, labels and class names together, and the
    skipped files: their count and the first few as (relative path, reason)."""

    rows: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    md5: str
    skipped_count: int
    skipped_first: list[tuple[str, str]]


def cache_root(data_root: str | os.PathLike) -> Path:
    """The folder that holds the image caches: <data.root>/image-cache."""
    return Path(data_root) / CACHE_FOLDER


def read_folder(scan: FolderScan, data_root: str | os.PathLike, strict: bool = False,
                progress: bool = True, warn: bool = True) -> FolderRows:
    """The rows of a scanned folder, from its cache when there is one (nothing decoded),
    else read image by image (a progress bar on stderr) into a new cache. Skipped files are
    one warning line on stderr (when `warn`), or, with `strict`, a DataError naming the
    first."""
    parent = cache_root(data_root)
    real_parent = parent.resolve()
    if _inside(scan.root, real_parent):
        raise DataError(f"data.root: the image cache {shorten(str(parent))} would be inside the "
                        f"image folder {shorten(scan.given)} (data.{scan.role}); set data.root "
                        "to a folder outside it")
    if parent.is_symlink():
        raise DataError(f"{shorten(str(parent))} is a symbolic link; refusing to keep the image "
                        "cache in the folder it names (remove it)")
    if strict and scan.skipped:
        _refuse(scan, *scan.skipped[0])
    cache = parent / scan.fingerprint
    found = _open_cache(cache) if os.path.lexists(cache) else None
    if found is None:
        found = _write_cache(scan, parent, cache, strict, progress)
    if strict and found.skipped_count:
        _refuse(scan, *found.skipped_first[0])
    if found.skipped_count and warn:
        total = found.skipped_count + len(found.labels)
        shown = "; ".join(f"{shorten(rel, 80)} ({reason})"
                          for rel, reason in found.skipped_first[:SHOWN_SKIPS])
        more = found.skipped_count - min(SHOWN_SKIPS, len(found.skipped_first))
        print_warning(f"data.{scan.role}: skipped {found.skipped_count} of {total} files in "
                      f"{shorten(scan.given)}: {shown}{f'; and {more} more' if more else ''} "
                      "(data.strict=true refuses them)")
    return found


def _refuse(scan: FolderScan, rel: str, reason: str) -> None:
    raise DataError(f"data.strict: {shorten(scan.given)}/{shorten(rel, 80)}: {reason} "
                    "(remove it, or set data.strict false to skip such files)")


def _write_cache(scan: FolderScan, parent: Path, cache: Path, strict: bool,
                 progress: bool) -> FolderRows:
    """Read every image of the scan into a temporary folder beside `cache`, one block of
    rows at a time, and rename it to `cache` when complete."""
    require_pillow()
    parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(dir=parent, prefix=f".{scan.fingerprint}.", suffix=".part"))
    try:
        skipped = list(scan.skipped)
        labels: list[int] = []
        digest = md5_hash()
        block = np.empty((WRITE_ROWS, IMAGE_BYTES), np.uint8)
        filled = 0
        with open(part / ROWS_FILE, "xb") as handle, tqdm(
                total=len(scan.files), unit="image", desc=f"reading {scan.role} images",
                disable=not progress, file=sys.stderr) as bar:
            for rel, label in scan.files:
                bar.update(1)
                try:
                    picture = read_image(scan.root / rel)
                except UnreadableImage as exc:
                    reason = str(exc).removeprefix(f"{Path(rel).name}: ")
                    if strict:
                        _refuse(scan, rel, reason)
                    skipped.append((rel, reason))
                    continue
                block[filled] = picture.transpose(2, 0, 1).reshape(-1)
                labels.append(label)
                filled += 1
                if filled == WRITE_ROWS:
                    handle.write(block.data)
                    digest.update(block.data)
                    filled = 0
            handle.write(block[:filled].data)
            digest.update(block[:filled].data)
            handle.flush()
            os.fsync(handle.fileno())
        label_array = np.array(labels, np.int64)
        _check_classes(scan, label_array)
        with open(part / LABELS_FILE, "xb") as handle:
            np.save(handle, label_array)
        digest.update(label_array.tobytes())
        digest.update(json.dumps(scan.class_names).encode())
        meta = {"version": CACHE_VERSION, "folder": str(scan.root),
                "class_names": list(scan.class_names), "count": len(labels),
                "md5": digest.hexdigest(), "skipped_count": len(skipped),
                "skipped_first": skipped[:SHOWN_SKIPS]}
        with open(part / META_FILE, "x") as handle:
            json.dump(meta, handle, indent=1)
        os.chmod(part, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the cache from others
        try:
            os.rename(part, cache)
        except OSError as exc:  # another process made the same cache first: use that one
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(part)
    opened = _open_cache(cache)
    if opened is None:
        raise DataError(f"{shorten(str(cache))}: the image cache vanished while it was written")
    return opened


def _check_classes(scan: FolderScan, labels: np.ndarray) -> None:
    """DataError when a class has no readable image left (all its files were skipped)."""
    counts = np.bincount(labels, minlength=len(scan.class_names))
    if (counts == 0).any():
        name = scan.class_names[int(np.argmin(counts))]
        raise DataError(f"data.{scan.role}: class folder {shorten(name, 60, quote=True)} in "
                        f"{shorten(scan.given)} holds no readable images")


def _open_cache(cache: Path) -> FolderRows | None:
    """The cache folder's rows, memory-mapped; None when it is not there. A cache folder that
    is a link or that does not hold what its meta.json says is a DataError."""
    if cache.is_symlink() or not cache.is_dir():
        raise DataError(f"{shorten(str(cache))}: not an image cache folder this tool made "
                        "(remove it and rerun)")
    bad = DataError(f"{shorten(str(cache))}: a damaged image cache; delete the folder and rerun")
    try:
        meta = json.loads(read_capped(cache / META_FILE, META_CAP).decode("utf-8"))
        count = int(meta["count"])
        rows_size = os.lstat(cache / ROWS_FILE).st_size
        if rows_size != count * IMAGE_BYTES:  # before the labels: count sizes their read
            raise bad
        with open_regular(cache / LABELS_FILE) as handle:  # a fifo there: refused, not waited on
            labels = _read_labels(handle, count)
        names = tuple(str(name) for name in meta["class_names"])
        skipped = [(str(rel), str(reason)) for rel, reason in meta["skipped_first"]]
        skipped_count = int(meta["skipped_count"])
        md5 = str(meta["md5"])
    except FileNotFoundError:
        return None  # removed between the check and the read: read the folder again
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, EOFError,
            OverflowError):  # int() of a count of 1e400 (json's inf)
        raise bad from None
    if (meta.get("version") != CACHE_VERSION or labels is None
            or (count and not 0 <= labels.min() <= labels.max() < len(names))):
        raise bad
    rows = (np.memmap(cache / ROWS_FILE, np.uint8, mode="r", shape=(count, IMAGE_BYTES))
            if count else np.empty((0, IMAGE_BYTES), np.uint8))
    return FolderRows(rows, labels, names, md5, skipped_count, skipped)


def _read_labels(handle, count: int) -> np.ndarray | None:
    """The (count,) int64 labels of the npy file open in `handle`, or None when its header
    declares another shape or dtype, or its data is short: the header is compared before any
    data is read (a labels.npy declaring more rows than meta.json was read whole first, at
    its size: gigabytes if it said so)."""
    shape, dtype, _ = read_npy_header(handle)
    if shape != (count,) or dtype != np.dtype(np.int64):
        return None
    labels = np.zeros(count, np.int64)
    if count and handle.readinto(memoryview(labels).cast("B")) != labels.nbytes:
        return None  # short (its missing rows would read as class 0)
    return labels


def held_out_rows(labels: np.ndarray, n_classes: int, fraction: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), each sorted int64: of each class's n rows, round(fraction * n)
    (at most n - 1) picked at random for the test split, by a generator seeded with
    (SPLIT_SEED, class index), so a class's split changes only when its own files do."""
    test = []
    for label in range(n_classes):
        rows = np.flatnonzero(labels == label)
        take = min(len(rows) - 1, round(fraction * len(rows)))
        if take > 0:
            test.append(np.random.default_rng((SPLIT_SEED, label)).permutation(rows)[:take])
    test_rows = np.sort(np.concatenate(test)) if test else np.empty(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), test_rows), test_rows.astype(np.int64)


def folder_fingerprints(data: DataConfig) -> dict[str, str]:
    """The scan fingerprints of a config's image folders {"train": hex[, "test": hex]}: what
    tells whether a folder changed, found without decoding an image."""
    found = {"train": scan_folder(data.train, "train").fingerprint}
    if data.test is not None:
        found["test"] = scan_folder(data.test, "test").fingerprint
    return found


def load_folders(data: DataConfig, progress: bool = True, warn: bool = True) -> LabelledData:
    """The image folders a config's data section names (data.dataset folder); `warn`: say
    which files were skipped (one line on stderr per folder).

    Returns LabelledData with dataset "folder", class_names the sorted class folders of
    data.train, rows (N, 3072) uint8 in the CIFAR order (a read-only memory map of the cache
    when the split is not held out), labels (N,) int64, and fingerprint {"train folder": md5
    of the rows, labels and class names[, "test folder": likewise]}.
    """
    train_scan = scan_folder(data.train, "train")
    test_scan = None if data.test is None else scan_folder(data.test, "test")
    if test_scan is not None:
        if _inside(train_scan.root, test_scan.root) or _inside(test_scan.root, train_scan.root):
            raise DataError(f"data.test: {shorten(test_scan.given)} is the training folder "
                            f"{shorten(train_scan.given)}, or overlaps it: a test of training "
                            "images measures nothing (give another folder, or null to hold "
                            "out data.test_fraction)")
        unknown = sorted(set(test_scan.class_names) - set(train_scan.class_names))
        if unknown:
            raise DataError(f"data.test: class folder {shorten(unknown[0], 60, quote=True)} in "
                            f"{shorten(test_scan.given)} is not a class of data.train "
                            f"{shorten(train_scan.given)}")
    train = read_folder(train_scan, data.root, data.strict, progress, warn)
    fingerprint = {"train folder": train.md5}
    if test_scan is not None:
        test = read_folder(test_scan, data.root, data.strict, progress, warn)
        fingerprint["test folder"] = test.md5
        to_train = np.array([train.class_names.index(name) for name in test.class_names],
                            np.int64)
        train_rows, train_labels = train.rows, train.labels
        test_rows, test_labels = test.rows, to_train[test.labels]
    else:
        keep, held = held_out_rows(train.labels, len(train.class_names), data.test_fraction or 0)
        if len(held):
            train_rows, train_labels = train.rows[keep], train.labels[keep]
            test_rows, test_labels = train.rows[held], train.labels[held]
        else:
            train_rows, train_labels = train.rows, train.labels
            test_rows, test_labels = np.empty((0, IMAGE_BYTES), np.uint8), np.empty(0, np.int64)
    return LabelledData(dataset="folder", class_names=train.class_names,
                        train_images=train_rows, train_labels=train_labels,
                        test_images=np.asarray(test_rows), test_labels=test_labels,
                        fingerprint=fingerprint)
