"""Feature files for linear probes: `data.dataset: features` with data.train and data.test.

A feature file is either
- an `.npz` (as np.savez writes it) holding `X` (N, D) and `y` (N,); X must be stored
  uncompressed (np.savez, not np.savez_compressed), so it can be memory-mapped from its
  offset inside the zip;
- an `.npy` of X (N, D) whose labels y (N,) are the `.npy` beside it named by replacing the
  LAST capital `X` of the file name with `y`: X.npy -> y.npy, train_X.npy -> train_y.npy,
  X_test.npy -> y_test.npy.

X is memory-mapped read-only, so a file larger than memory streams through the minibatches.
Native float32 and float16 X map as they are (float16 rows become float32 per minibatch, in
the engines: every float16 value is exactly a float32, so training on a float16 file equals
training on its float32 conversion, at half the memory); any other real dtype (float64,
integers) is converted to float32 in memory (4 bytes per value). bfloat16 is refused: the
.npy format has no type for it (numpy saves it as 2-byte raw values, `|V2`). X must be
finite (checked chunk by chunk). y holds integers or strings; the class names are the sorted
distinct training labels as strings, and labels are encoded as their index among them. Files
load with allow_pickle=False. The fingerprint is the md5 of each file read, streamed.

The cheap checks come first, for the train and the test file alike: the npy headers of X and
y (shapes, dtypes, row counts, feature counts, and the bytes they declare against the file's
or zip member's size); then the labels are read and checked; then X is checked finite; only
then are the files hashed. A header that declares more than its file holds is refused before
a byte of its data is read or inflated.
"""

from __future__ import annotations

import math
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..fsutil import file_md5, open_regular, require_file
from ..npy_header import INFLATE_ERRORS, NPY_HEADER_CAP, BadHeader, read_npy_header
from ..text import shorten
from .labelled import LabelledData

CHECK_BYTES = 16 << 20  # bytes of X checked for finiteness (or converted) at a time
LABEL_BYTES_CAP = 1024  # bytes of one label: a U256 string, or 1024 bytes of an S string
# X dtypes used as stored (memory-mapped); the engines convert them per minibatch
MAPPED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header (30 bytes)


@dataclass
class _Npy:
    """The header of one npy array: shape, dtype, and where its data lies (`offset` bytes
    into `path`, or into the zip member `member` of `path`)."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    member: str | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class _Pair:
    """One feature file's X and y headers, checked against each other; nothing read yet."""

    path: Path
    role: str
    X: _Npy
    y: _Npy
    files: list[Path] = field(default_factory=list)  # hashed into the fingerprint

    @property
    def n_features(self) -> int:
        return self.X.shape[1]


def load_features(data: DataConfig, progress: bool = True) -> LabelledData:
    """The train (and test, when data.test is set) feature files of a config.

    Returns LabelledData with dataset "features", train_images X (N, D) float32 or float16 (an
    np.memmap when stored as native float32 or float16: MAPPED_DTYPES), train_labels (N,)
    int64, test likewise or (0, D) / (0,) arrays
    when data.test is null, class_names the sorted distinct training labels as strings, and
    fingerprint {"train X.npy": md5, ...}. Raises DataError with one line on a bad file.
    """
    train = _open_pair(Path(data.train), "train")
    test = None if data.test is None else _open_pair(Path(data.test), "test")
    if test is not None and test.n_features != train.n_features:
        raise DataError(f"{data.test}: X has {test.n_features} features, the training "
                        f"file {data.train} has {train.n_features}")
    y = _read_labels(train.y)
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"{data.train}: y holds a single class "
                        f"({shorten(classes[0], 80, quote=True)}); a classifier needs at least 2")
    unprintable = [name for name in classes.tolist() if not str(name).isprintable()]
    if unprintable:  # a class name is printed, plotted and exported as text
        raise DataError(f"{data.train}: label {shorten(unprintable[0], 60, quote=True)} is not "
                        "printable text (a newline or another control character), and a class "
                        "name is printed, plotted and exported as text; relabel it")
    train_labels = np.searchsorted(classes, y).astype(np.int64)
    if test is None:
        test_X, test_labels = np.empty((0, train.n_features), np.float32), np.empty(0, np.int64)
    else:
        test_y = _read_labels(test.y)
        if test_y.dtype.kind != y.dtype.kind and {test_y.dtype.kind, y.dtype.kind} != {"i", "u"}:
            raise DataError(f"{data.test}: y holds {_kind(test_y)}, the training labels "
                            f"{_kind(y)}")
        unknown = np.setdiff1d(test_y, classes)
        if len(unknown):
            raise DataError(f"{data.test}: label {shorten(unknown[0], 80, quote=True)} does not "
                            f"occur in the training labels of {data.train}")
        test_labels = np.searchsorted(classes, test_y).astype(np.int64)
    X = _finite_rows(train.path, _map(train.X))
    if test is not None:
        test_X = _finite_rows(test.path, _map(test.X))
    fingerprint: dict[str, str] = {}
    for pair in (train, test):
        for path in pair.files if pair is not None else ():
            fingerprint[f"{pair.role} {path.name}"] = file_md5(path, progress)
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


def _open_pair(path: Path, role: str) -> _Pair:
    """The checked headers of one feature file's X and y; reads nothing but headers."""
    require_file(path, f"data.{role}: feature file not found: {path}",
                 f"data.{role}: feature file {path}")
    if path.suffix == ".npz":
        X, y = _npz_headers(path)
        files = [path]
    elif path.suffix == ".npy":
        y_path = labels_path(path)
        require_file(y_path, f"{path}: its labels {y_path} are missing",
                     f"{path}: its labels {y_path}")
        X, y = _file_header(path, "X"), _file_header(y_path, "y")
        files = [path, y_path]
    else:
        raise DataError(f"{path}: a feature file must be .npz (X and y) or .npy (X, with y.npy "
                        "beside it)")
    _check_X(X)
    _check_y(path, y, X.shape[0])
    return _Pair(path, role, X, y, files)


def read_feature_rows(path: str | Path) -> np.ndarray:
    """X (N, D) float32 or float16 of one feature file, for prediction: an .npy of X, or an
    .npz holding X (y, if there, is not read). Checked as training's files are (headers first,
    finite values); an np.memmap when X is stored as native float32 or float16. DataError
    naming the file."""
    path = Path(path)
    require_file(path, f"feature file not found: {path}", str(path))
    suffix = path.suffix.lower()  # softmax-predict takes a folder's A.NPZ as its a.npz
    if suffix == ".npz":
        X = _npz_headers(path, need_y=False)[0]
    elif suffix == ".npy":
        X = _file_header(path, "X")
    else:
        raise DataError(f"{path}: a feature file must be .npz (holding X) or .npy")
    _check_X(X)
    return _finite_rows(path, _map(X))


def feature_file_rows(path: str | Path) -> int | None:
    """The number of rows the X of a feature file declares, from its header alone; None when
    it cannot be told (read_feature_rows then says why), as for anything but a regular file:
    a pipe would block the read until someone writes to it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        X = (_npz_headers(path, need_y=False)[0] if path.suffix.lower() == ".npz"
             else _file_header(path, "X"))
    except (DataError, OSError):
        return None
    return X.shape[0] if X.shape else None


def _npz_headers(path: Path, need_y: bool = True) -> tuple[_Npy, _Npy | None]:
    """X's and y's headers in an .npz, each checked against the size the zip index declares
    for its member (so no member inflates past what its header declares). Without `need_y`,
    y may be absent (None)."""
    handle = open_regular(path)  # a pipe, a folder: OSError naming the path
    try:
        with zipfile.ZipFile(handle) as archive:
            names = set(archive.namelist())
            for member in ("X.npy", "y.npy") if need_y or "y.npy" in names else ("X.npy",):
                if member not in names:
                    held = ", ".join(sorted(n.removesuffix(".npy") for n in names))
                    raise DataError(f"{path}: no {member[0]} array in the .npz (it holds "
                                    f"{shorten(held, 80) or 'nothing'}); save it with "
                                    "np.savez(path, X=X, y=y)")
            x_info = archive.getinfo("X.npy")
            y_info = archive.getinfo("y.npy") if "y.npy" in names else None
            if x_info.compress_type != zipfile.ZIP_STORED:
                raise DataError(f"{path}: X is compressed (np.savez_compressed), so it cannot "
                                "be memory-mapped; save it with np.savez, or as X.npy")
            y = None
            if y_info is not None and y_info.flag_bits & 0x1:  # zipfile.open: RuntimeError
                raise DataError(f"{path}: y is encrypted; save it with np.savez(path, X=X, y=y)")
            if y_info is not None:
                with archive.open(y_info) as member:
                    y = _npy_header(member, path, "y", "y.npy")
        handle.seek(x_info.header_offset)
        fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
        if fields[0] != b"PK\x03\x04":
            raise DataError(f"{path}: corrupt zip member X.npy")
        handle.seek(fields[-2] + fields[-1], 1)  # file name and extra field
        start = handle.tell()
        X = _npy_header(handle, path, "X")  # its offset counted from the file's start
    except (zipfile.BadZipFile, NotImplementedError) as exc:  # an unknown compression method
        raise DataError(f"{path}: not a valid .npz ({shorten(exc, 120)})") from None
    except (OSError, EOFError, struct.error) as exc:
        raise DataError(f"{path}: not a valid .npz ({_reason(exc)})") from None
    finally:
        handle.close()
    for npy, info, member_start in ((X, x_info, start), (y, y_info, 0)):
        if npy is None:
            continue
        if npy.offset - member_start + npy.nbytes != info.file_size:
            raise DataError(f"{path}: {npy.member or 'X.npy'} declares shape "
                            f"{shorten(npy.shape, 60)} {npy.dtype}, which does not fit its "
                            f"{info.file_size} bytes")
    return X, y


def _file_header(path: Path, what: str) -> _Npy:
    with open_regular(path) as handle:
        return _npy_header(handle, path, what)


def _npy_header(stream, path: Path, what: str, member: str | None = None) -> _Npy:
    """The header of the npy array at the stream's position (offset counted from there);
    reads at most NPY_HEADER_CAP bytes of header and no data."""
    try:
        shape, dtype, offset = read_npy_header(stream)
    except BadHeader as exc:
        raise DataError(f"{path}: {what} {exc}") from None
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, *INFLATE_ERRORS) as exc:
        raise DataError(f"{path}: {what} is not a valid .npy array ({_reason(exc)})") from None
    return _Npy(path, shape, dtype, offset, member)


def _check_X(X: _Npy) -> None:
    if len(X.shape) != 2:
        raise DataError(f"{X.path}: X must be a C-ordered 2-d array (N, D), got shape "
                        f"{shorten(X.shape, 60)}")
    if X.dtype.kind == "V" and X.dtype.itemsize == 2 and X.dtype.names is None:
        raise DataError(f"{X.path}: X holds 2-byte raw values ({X.dtype.str}), as numpy saves "
                        "bfloat16, which the .npy format has no type for; save X as float16 "
                        "or float32")
    if X.dtype.kind not in "fiu" or X.dtype.itemsize > 8:
        raise DataError(f"{X.path}: X must hold real numbers (float32 and float16 are "
                        f"streamed), got "
                        f"{shorten(X.dtype, 40)}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{X.path}: X is empty, shape {X.shape}")
    _check_size(X, "X")


def _check_y(path: Path, y: _Npy, n_rows: int) -> None:
    """y's header against X's row count, before any label is read."""
    if len(y.shape) != 1:
        raise DataError(f"{path}: y must be 1-d (N,), got shape {shorten(y.shape, 60)}")
    if y.shape[0] != n_rows:
        raise DataError(f"{path}: X has {n_rows} rows but y has {y.shape[0]} labels")
    if y.dtype.kind not in "iuUS" or (y.dtype.kind in "iu" and y.dtype.itemsize > 8):
        raise DataError(f"{path}: y must hold integer or string labels, got "
                        f"{shorten(y.dtype, 40)}")
    if y.dtype.itemsize > LABEL_BYTES_CAP:
        raise DataError(f"{path}: y's labels are {y.dtype.itemsize} bytes each "
                        f"({shorten(y.dtype, 40)}); at most {LABEL_BYTES_CAP} are read")
    if y.member is None:
        _check_size(y, "y")


def _check_size(npy: _Npy, what: str) -> None:
    """A truncated .npy file holds fewer bytes than its header declares."""
    if npy.member is None:
        size = npy.path.stat().st_size
        if size < npy.offset + npy.nbytes:
            raise DataError(f"{npy.path}: truncated: {what} needs {npy.offset + npy.nbytes} "
                            f"bytes, the file has {size}")


def _map(X: _Npy) -> np.memmap:
    with open_regular(X.path) as handle:
        return np.memmap(handle, dtype=X.dtype, mode="r", shape=X.shape, offset=X.offset)


def _read_labels(y: _Npy) -> np.ndarray:
    """y (N,) as its header (already checked) declares it: integers or str."""
    try:
        if y.member is None:
            with open_regular(y.path) as handle:
                labels = np.lib.format.read_array(handle, allow_pickle=False,
                                                  max_header_size=NPY_HEADER_CAP)
        else:
            with open_regular(y.path) as file, zipfile.ZipFile(file) as archive, \
                    archive.open(y.member) as handle:
                labels = np.lib.format.read_array(handle, allow_pickle=False,
                                                  max_header_size=NPY_HEADER_CAP)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, *INFLATE_ERRORS) as exc:
        raise DataError(f"{y.path}: y cannot be read ({_reason(exc)})") from None
    if labels.shape != y.shape or labels.dtype != y.dtype:  # the file changed under us
        raise DataError(f"{y.path}: y changed while it was read")
    return labels.astype(str) if labels.dtype.kind == "S" else labels


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "allow_pickle" in text:
        return "an object array, which would need pickle; refused"
    return shorten(text, 200)


def _kind(y: np.ndarray) -> str:
    return "integers" if y.dtype.kind in "iu" else "strings"


def _finite_rows(path: Path, X: np.ndarray) -> np.ndarray:
    """X (N, D) checked finite: the memmap itself when it is native float32 or float16
    (MAPPED_DTYPES), else converted to float32 in memory."""
    native = X.dtype in MAPPED_DTYPES  # dtype equality counts the byte order: native only
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
    return out
