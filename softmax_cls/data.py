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
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softmax_cls.config import DataConfig
from softmax_cls.datasets import IMAGE_BYTES, SPECS, DatasetSpec, get_spec
from softmax_cls.download import download_file
from softmax_cls.errors import DataError
from softmax_cls.fsutil import fsync_dir
from softmax_cls.untrusted import restricted_unpickle, safe_extract

MIRROR_ENV = "SOFTMAX_CLS_MIRROR"


@dataclass(frozen=True, eq=False)
class CifarData:
    """A loaded data set. Images are (N, 3072) uint8, C-contiguous: R plane, G plane, B plane,
    each 32x32 row-major. Labels are (N,) int64 in [0, len(class_names)).
    `fingerprint` maps each file read to its md5."""

    dataset: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    fingerprint: dict[str, str]




def prepare_dataset(dataset: str = "cifar10", root: str | os.PathLike = "data",
                    fmt: str = "binary", *, url: str | None = None,
                    archive: str | os.PathLike | None = None, force: bool = False,
                    download: bool = True, progress: bool = True,
                    spec: DatasetSpec | None = None) -> Path:
    """Make sure a verified copy of the data set exists under `root`; return its folder.

    Uses `root/<spec.folder>`, or `root` itself when it is such a folder, after verifying
    every file. Otherwise extracts `archive`, or `root/<archive_name>`, or (when `download`)
    the archive downloaded from `url` (the archive name is appended when it ends in '/'),
    the `SOFTMAX_CLS_MIRROR` base URL or the official URL into `root/<archive_name>` (kept
    for later re-extraction); the archive md5 and size are checked only for the official URL,
    as mirrors may repack, while every extracted file is always checked. `force`
    re-downloads and re-extracts; the old folder is replaced only once the new one verified.
    `spec`, when given, overrides the (dataset, fmt) lookup.
    Raises DataError (DownloadError for the network) with a one-line message.
    """
    spec = spec or get_spec(dataset, fmt)
    if archive is not None and not Path(archive).is_file():
        raise DataError(f"archive {archive} does not exist or is not a file")
    folder, verified = _locate(spec, Path(root), url=url, archive=archive, force=force,
                               download=download, progress=progress)
    if verified is None:
        _verify_folder(folder, spec)
    return folder


def _locate(spec: DatasetSpec, root: Path, *, url, archive, force, download, progress
            ) -> tuple[Path, dict[str, str] | None]:
    """The data folder, plus its md5s when this call extracted and verified it (else None)."""
    existing = _existing_folder(spec, root)
    if existing is not None and not force:
        return existing, None
    if existing is not None and existing == root:
        raise DataError(
            f"--force cannot replace {root}: it is a folder you pointed at, not one this tool "
            "extracted; point --root at another folder to get a fresh copy"
        )
    archive_path, ours = _obtain_archive(spec, root, url=url, archive=archive, force=force,
                                         download=download, progress=progress)
    verified = _extract_verified(spec, archive_path, root, ours)
    return root / spec.folder, verified


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


def _obtain_archive(spec: DatasetSpec, root: Path, *, url, archive, force, download, progress
                    ) -> tuple[Path, bool]:
    """(archive path, whether this call downloaded it and so may delete it)."""
    if archive is not None:
        path = Path(archive)
        return path, False
    dest = root / spec.archive_name
    if dest.is_file() and not (force and download):
        return dest, False
    if not download:
        raise DataError(
            f"no {spec.dataset} {spec.fmt}-format data in {root} (neither {spec.folder}/ nor "
            f"{spec.archive_name}) and downloading is off; run softmax-download, pass "
            f"--archive PATH to a local {spec.archive_name}, or --url URL of a mirror"
        )
    source = _source_url(spec, url)
    official = source == spec.url  # mirrors may repack: only the official archive's md5 holds
    download_file(source, dest, progress=progress,
                  expected_md5=spec.archive_md5 if official else None,
                  expected_size=spec.archive_size if official else None)
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
    try:
        safe_extract(archive, scratch)
        new = scratch / spec.folder
        if not new.is_dir():
            raise DataError(f"{archive} has no {spec.folder}/ folder: it is not the "
                            f"{spec.dataset} {spec.fmt}-format archive")
        hint = f"the archive {archive} is corrupt or not the official {spec.dataset} data"
        if ours:
            hint += " (deleted it)"
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
    """Reads the files of one data folder whole, checks them, and records each file's md5.

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

    def read(self, name: str) -> bytes:
        """The bytes of `name`, after checking its exact size and md5 where the spec has them."""
        try:
            blob = (self.folder / name).read_bytes()
        except FileNotFoundError:
            raise self.error(name, "missing") from None
        except OSError as exc:
            raise self.error(name, f"cannot read it ({exc.strerror or exc})") from exc
        size = self.spec.sizes.get(name)
        if size is not None and len(blob) != size:
            raise self.error(name, f"expected {size} bytes, found {len(blob)}")
        digest = self.verified.get(name) or hashlib.md5(blob).hexdigest()
        expected = self.spec.files.get(name)
        if expected is not None and digest != expected:
            raise self.error(name, f"md5 checksum mismatch, expected {expected}, got {digest}")
        self.fingerprint[name] = digest
        return blob

    def check_class_names(self) -> None:
        """Read the class-name file(s) and check them against the spec's class lists."""
        spec = self.spec
        expected_lists = (spec.class_names, spec.coarse_names)
        if spec.fmt == "binary":  # one name per line: fine (or only), then coarse
            found = [(name, _text_lines(self.read(name)), expected)
                     for name, expected in zip(spec.names_files, expected_lists, strict=False)]
        else:  # one pickled dict
            name = spec.names_files[0]
            meta = self.unpickle(name, self.read(name))
            keys = ("fine_label_names", "coarse_label_names") if spec.coarse_names else (
                "label_names",)
            found = [(name, _decode_names(meta.get(key.encode())), expected)
                     for key, expected in zip(keys, expected_lists, strict=False)]
        for name, names, expected in found:
            if names != tuple(expected):
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
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


def _text_lines(blob: bytes) -> tuple[str, ...]:
    return tuple(line.strip() for line in blob.decode("latin-1").splitlines() if line.strip())


def _decode_names(names) -> tuple[str, ...]:
    if not isinstance(names, list):
        return ()
    return tuple(n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names)


def _verify_folder(folder: Path, spec: DatasetSpec,
                   describe: Callable[[str], str] | None = None, hint: str = "") -> dict[str, str]:
    """Check every required file: exact size, md5, class names, shapes and label ranges.

    Files are read one at a time. Returns {file name: md5}; raises DataError on a problem.
    """
    reader = _Reader(folder, spec, describe=describe, hint=hint or _folder_hint(folder))
    reader.check_class_names()
    for name in spec.train_files + spec.test_files:
        reader.batch(name)
    return reader.fingerprint


def _check_label_choice(spec: DatasetSpec, labels: str) -> None:
    if labels not in ("fine", "coarse"):
        raise DataError(f"unknown label set {labels!r}: choose fine or coarse")
    if labels == "coarse" and not spec.coarse_names:
        raise DataError(f"{spec.dataset} has no coarse labels; use labels=fine")


def load_dataset(dataset: str = "cifar10", root: str | os.PathLike = "data",
                 fmt: str = "binary", *, url: str | None = None,
                 archive: str | os.PathLike | None = None, labels: str = "fine",
                 force: bool = False, download: bool = True, progress: bool = True,
                 spec: DatasetSpec | None = None) -> CifarData:
    """Locate (see `prepare_dataset`), verify and read the whole data set.

    Every file is read once into memory, hashed (unless this call just verified it during
    extraction), checked, and copied once into the result. `labels` picks CIFAR-100's
    "fine" (100 classes) or "coarse" (20 superclasses) labels. Returns CifarData with images
    (N, 3072) uint8 C-contiguous and labels (N,) int64.
    """
    spec = spec or get_spec(dataset, fmt)
    _check_label_choice(spec, labels)
    folder, verified = _locate(spec, Path(root), url=url, archive=archive, force=force,
                               download=download, progress=progress)
    reader = _Reader(folder, spec, verified=verified, hint=_folder_hint(folder))
    reader.check_class_names()
    train_images, train_labels = _read_split(reader, spec.train_files, labels)
    test_images, test_labels = _read_split(reader, spec.test_files, labels)
    return CifarData(
        dataset=spec.dataset,
        class_names=spec.coarse_names if labels == "coarse" else spec.class_names,
        train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels, fingerprint=reader.fingerprint,
    )


def _read_split(reader: _Reader, names: tuple[str, ...], labels: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batch files: images (N, 3072) uint8 C-contiguous, labels (N,) int64."""
    total = sum(reader.spec.counts[name] for name in names)
    images = np.empty((total, IMAGE_BYTES), dtype=np.uint8)
    targets = np.empty(total, dtype=np.int64)
    start = 0
    for name in names:
        batch_images, fine, coarse = reader.batch(name)
        stop = start + len(batch_images)
        images[start:stop] = batch_images
        targets[start:stop] = coarse if labels == "coarse" else fine
        start = stop
    return images, targets


def load_config_data(data: DataConfig, progress: bool = True) -> CifarData:
    """The data set a config's `data` section names, located, verified and read."""
    return load_dataset(data.dataset, data.root, data.format, url=data.url, archive=data.archive,
                        labels=data.labels, download=data.download, progress=progress)
