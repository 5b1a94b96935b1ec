"""Reading and checking the batch files of one CIFAR data folder (see `datasets`).

Every file is checked against its description before its rows are used: exact size, md5,
class names, shapes and label ranges. The binary format is read with numpy alone, a few MB
at a time; the python format (Python 2 pickles) only through `untrusted.restricted_unpickle`.
Locating and extracting the folder is softmax_cls.data.fetch's job.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softmax_cls.data.datasets import IMAGE_BYTES, DatasetSpec
from softmax_cls.data.untrusted import restricted_unpickle
from softmax_cls.errors import DataError
from softmax_cls.fsutil import md5_hash, open_regular
from softmax_cls.text import shorten

# The most bytes a file without a known exact size may have: the class-name files are under
# 2 KB (a .txt of names, or the python format's meta pickle); a readme is under 1 KB.
SMALL_FILE_CAP = 64 << 10
# Binary records read at a time (about 3 MB): a batch file goes straight into its rows of the
# data set's array, never held whole (a whole file would add 30-150 MB to the peak memory).
READ_RECORDS = 1024
READ_THREADS = 2  # batch files read at once (read_split)


@dataclass(frozen=True)
class CifarSplitOnDisk:
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
        reader = BatchReader(self.folder, self.spec, hint=folder_hint(self.folder, self.spec))
        images, labels = read_split(reader, self.files, self.labels)
        for name in self.files:
            before, now = fingerprint.get(name), reader.fingerprint[name]
            if now != before:
                raise reader.error(name, f"changed since it was first read (md5 {before}, "
                                         f"now {now})")
        return images, labels


def folder_hint(folder: Path, spec: DatasetSpec) -> str:
    """The end of a damaged file's message, true for every command (only softmax-download
    has --force: softmax-train and softmax-eval told users to rerun with it). A root that
    holds the files itself under another name is no folder --force replaces (it refuses
    that root, and --root at its parent would download beside it): no command is named. The
    command is quoted for a shell, to be pasted as it is."""
    if folder.name != spec.folder:
        return (f"the copy in {folder} is damaged: replace its files with a fresh copy "
                f"(softmax-download --root DIR puts one in DIR/{spec.folder})")
    return (f"the copy in {folder} is damaged: replace it with softmax-download --force "
            f"--root {shlex.quote(str(folder.parent))}, or use a fresh copy")


class BatchReader:
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
        """read(handle) on `name` opened unbuffered, its OSErrors turned into DataErrors. A
        fifo or a device of the name (in a shared data root) is refused, never waited on."""
        path = self.folder / name
        try:
            with open_regular(path, buffering=0) as handle:
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
        md5 = None if name in self.verified else md5_hash(blob)
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
        md5 = None if name in self.verified else md5_hash()

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
                shown = ", ".join(shorten(n, 20) for n in names[:5]) + (
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


def _text_lines(blob: bytes, expected: int) -> tuple[str, ...]:
    """The non-blank lines of a names file (at most `expected` + 1: enough to compare)."""
    names = []
    for line in blob.decode("latin-1").splitlines():
        if line.strip():
            names.append(shorten(line.strip(), MAX_NAME_CHARS))
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


def verify_folder(folder: Path, spec: DatasetSpec,
                   describe: Callable[[str], str] | None = None, hint: str = "") -> dict[str, str]:
    """Check every required file: exact size, md5, class names, shapes and label ranges.

    Files are read one at a time. Returns {file name: md5}; raises DataError on a problem.
    """
    reader = BatchReader(folder, spec, describe=describe, hint=hint or folder_hint(folder, spec))
    reader.check_class_names()
    for name in spec.train_files + spec.test_files:
        reader.check_batch(name)
    return reader.fingerprint


def read_split(reader: BatchReader, names: tuple[str, ...], labels: str,
               check: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batch files: images (N, 3072) uint8 C-contiguous, labels (N,) int64; the
    files `check` are checked alongside (as `check_batch` does), their rows kept nowhere.

    Each file is read into its own rows of the result, binary ones chunk by chunk, by
    READ_THREADS threads at once: reading, md5 and the copies release the GIL, so a data set
    loads in about half the time on two cores. Whatever fails, the error raised is the one
    of the first failing file in the order given (names, then check), as a one-file-at-a-time
    read would raise it, and reader.fingerprint lists the files in that order."""
    total = sum(reader.spec.counts[name] for name in names)
    images = np.empty((total, IMAGE_BYTES), dtype=np.uint8)
    targets = np.empty(total, dtype=np.int64)

    def read_one(name: str, start: int) -> None:
        stop = start + reader.spec.counts[name]
        if reader.streams(name):
            reader.stream_batch(name, images[start:stop], targets[start:stop],
                                coarse=labels == "coarse")
        else:
            batch_images, fine, coarse = reader.batch(name)
            images[start:stop] = batch_images
            targets[start:stop] = coarse if labels == "coarse" else fine

    starts = np.cumsum([0, *(reader.spec.counts[name] for name in names)])
    executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="softmax-read")
    try:
        jobs = [executor.submit(read_one, name, int(start))
                for name, start in zip(names, starts, strict=False)]
        jobs += [executor.submit(reader.check_batch, name) for name in check]
        for job in jobs:
            job.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    for name in (*names, *check):  # in file order, as one file at a time would list them
        reader.fingerprint[name] = reader.fingerprint.pop(name)
    return images, targets
