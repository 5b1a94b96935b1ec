"""Feature files for linear probes: `data.dataset: features` with data.train and data.test.

A feature file is either
- an `.npz` (as np.savez writes it) holding `X` (N, D) and `y` (N,); X must be stored
  uncompressed (np.savez, not np.savez_compressed), so it can be memory-mapped from its
  offset inside the zip;
- an `.npy` of X (N, D) whose labels y (N,) are the `.npy` beside it named by replacing the
  LAST capital `X` of the file name with `y`: X.npy -> y.npy, train_X.npy -> train_y.npy,
  X_test.npy -> y_test.npy.

X is memory-mapped read-only, so a file larger than memory streams through the minibatches.
Only native float32 X maps as it is; any other real dtype (float16/float64, integers) is
converted to float32 in memory (4 bytes per value). X must be finite (checked chunk by
chunk). y holds integers or strings; the class names are the sorted distinct training labels
as strings, and labels are encoded as their index among them. Files load with
allow_pickle=False. The fingerprint is the md5 of each file read, streamed.
"""

from __future__ import annotations

import contextlib
import struct
import zipfile
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..fsutil import file_md5
from ..text import shorten
from .labelled import LabelledData

CHECK_BYTES = 16 << 20  # bytes of X checked for finiteness (or converted) at a time
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header (30 bytes)


def load_features(data: DataConfig, progress: bool = True) -> LabelledData:
    """The train (and test, when data.test is set) feature files of a config.

    Returns LabelledData with dataset "features", train_images X (N, D) float32 (an np.memmap
    when stored as float32), train_labels (N,) int64, test likewise or (0, D) / (0,) arrays
    when data.test is null, class_names the sorted distinct training labels as strings, and
    fingerprint {"train X.npy": md5, ...}. Raises DataError with one line on a bad file.
    """
    fingerprint: dict[str, str] = {}
    X, y = _read_pair(Path(data.train), "train", fingerprint, progress)
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"{data.train}: y holds a single class "
                        f"({shorten(classes[0], 80, quote=True)}); a classifier needs at least 2")
    train_labels = np.searchsorted(classes, y).astype(np.int64)
    if data.test is None:
        test_X, test_labels = np.empty((0, X.shape[1]), np.float32), np.empty(0, np.int64)
    else:
        test_X, test_y = _read_pair(Path(data.test), "test", fingerprint, progress)
        if test_X.shape[1] != X.shape[1]:
            raise DataError(f"{data.test}: X has {test_X.shape[1]} features, the training "
                            f"file {data.train} has {X.shape[1]}")
        if test_y.dtype.kind != y.dtype.kind and {test_y.dtype.kind, y.dtype.kind} != {"i", "u"}:
            raise DataError(f"{data.test}: y holds {_kind(test_y)}, the training labels "
                            f"{_kind(y)}")
        unknown = np.setdiff1d(test_y, classes)
        if len(unknown):
            raise DataError(f"{data.test}: label {shorten(unknown[0], 80, quote=True)} does not "
                            f"occur in the training labels of {data.train}")
        test_labels = np.searchsorted(classes, test_y).astype(np.int64)
    return LabelledData(dataset="features", class_names=tuple(str(c) for c in classes.tolist()),
                     train_images=X, train_labels=train_labels, test_images=test_X,
                     test_labels=test_labels, fingerprint=fingerprint)


def labels_path(x_path: Path) -> Path:
    """The y file beside an X .npy: the last capital X of the name replaced with y."""
    name = x_path.name
    at = name.rfind("X")
    if at < 0:
        raise DataError(f"{x_path}: an .npy of features needs an X in its name (X.npy, "
                        "train_X.npy, ...) to find its labels beside it (y.npy, train_y.npy)")
    return x_path.with_name(name[:at] + "y" + name[at + 1:])


def _read_pair(path: Path, role: str, fingerprint: dict[str, str], progress: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, D) float32, y (N,) integer or string array) of one feature file."""
    if not path.is_file():
        raise DataError(f"data.{role}: feature file not found: {path}")
    if path.suffix == ".npz":
        X, y = _read_npz(path)
        fingerprint[f"{role} {path.name}"] = file_md5(path, progress)
    elif path.suffix == ".npy":
        y_path = labels_path(path)
        if not y_path.is_file():
            raise DataError(f"{path}: its labels {y_path} are missing")
        X = _map_npy(path, "X")
        y = _load_npy(y_path, "y")
        fingerprint[f"{role} {path.name}"] = file_md5(path, progress)
        fingerprint[f"{role} {y_path.name}"] = file_md5(y_path, progress)
    else:
        raise DataError(f"{path}: a feature file must be .npz (X and y) or .npy (X, with y.npy "
                        "beside it)")
    return _checked(path, X, y)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for member in ("X.npy", "y.npy"):
                if member not in names:
                    held = ", ".join(sorted(n.removesuffix(".npy") for n in names))
                    raise DataError(f"{path}: no {member[0]} array in the .npz (it holds "
                                    f"{held or 'nothing'}); save it with np.savez(path, X=X, y=y)")
            info = archive.getinfo("X.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                raise DataError(f"{path}: X is compressed (np.savez_compressed), so it cannot "
                                "be memory-mapped; save it with np.savez, or as X.npy")
            with archive.open("y.npy") as handle:
                y = np.lib.format.read_array(handle, allow_pickle=False)
        with path.open("rb") as handle:
            handle.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            if fields[0] != b"PK\x03\x04":
                raise DataError(f"{path}: corrupt zip member X.npy")
            handle.seek(fields[-2] + fields[-1], 1)  # file name and extra field
            X = _map_npy(path, "X", handle=handle)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a valid .npz ({exc})") from None
    except ValueError as exc:
        raise DataError(f"{path}: y cannot be read ({_reason(exc)})") from None
    return X, y


def _map_npy(path: Path, what: str, handle=None) -> np.ndarray:
    """Memory-map the .npy array starting at the handle's position (or at 0 of `path`)."""
    try:
        with (path.open("rb") if handle is None else contextlib.nullcontext(handle)) as stream:
            version = np.lib.format.read_magic(stream)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} (this reads 1.0 and 2.0)")
            shape, fortran, dtype = read_header(stream)
            offset = stream.tell()
    except ValueError as exc:
        raise DataError(f"{path}: {what} is not a valid .npy array ({_reason(exc)})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: {what} is an object array (pickled); refusing to load it "
                        "(allow_pickle=False)")
    if len(shape) != 2 or fortran:
        raise DataError(f"{path}: X must be a C-ordered 2-d array (N, D), got shape "
                        f"{shape}{' in Fortran order' if fortran else ''}")
    if dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise DataError(f"{path}: X must hold real numbers (float32 is streamed), got {dtype}")
    if shape[0] == 0 or shape[1] == 0:
        raise DataError(f"{path}: X is empty, shape {shape}")
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < needed:
        raise DataError(f"{path}: truncated: X needs {needed} bytes, the file has "
                        f"{path.stat().st_size}")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset)


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: {what} cannot be read ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "allow_pickle" in text:
        return "an object array, which would need pickle; refused"
    return shorten(text, 200)


def _kind(y: np.ndarray) -> str:
    return "integers" if y.dtype.kind in "iu" else "strings"


def _checked(path: Path, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X as float32 (the memmap itself when it is native float32), checked finite; y checked."""
    if y.ndim != 1:
        raise DataError(f"{path}: y must be 1-d (N,), got shape {y.shape}")
    if len(y) != len(X):
        raise DataError(f"{path}: X has {len(X)} rows but y has {len(y)} labels")
    if y.dtype.kind not in "iuUS":
        raise DataError(f"{path}: y must hold integer or string labels, got {y.dtype}")
    if y.dtype.kind == "S":
        y = y.astype(str)
    native = X.dtype == np.dtype(np.float32) and X.dtype.isnative
    out = X if native else np.empty(X.shape, np.float32)
    step = max(1, CHECK_BYTES // (X.shape[1] * X.dtype.itemsize))
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, len(X), step):
            block = X[start : start + step]
            if not native:
                out[start : start + step] = block
                block = out[start : start + step]
            finite = np.isfinite(block)
            if not finite.all():
                row, col = np.argwhere(~finite)[0]
                raise DataError(f"{path}: X[{start + row}, {col}] is {X[start + row, col]} "
                                f"{'after conversion to float32 ' if not native else ''}"
                                "(features must be finite)")
    return out, y

