"""Checkpoints: one .npz that loads with allow_pickle=False, written atomically.

It holds the weights (W, velocity, average, best_W: (C, D) float32; format 2 files hold them
as (D, C) and are converted on load), the preprocessing statistics, the class names, the
effective config as YAML text, the history, the versions, the data fingerprint, the
validation rows of the run's split (`val_rows`, int64, so any run can be audited) and the
optimizer state, so that eval needs nothing else and a resumed run continues exactly as an
uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import Config, config_from_dict, parse_yaml
from ..data.labelled import LabelledData
from ..engines.memory import host_available_bytes
from ..errors import ConfigError, DataError
from ..fsutil import NOT_REGULAR, atomic_write
from ..math.preprocess import Preprocessor
from ..npy_header import INFLATE_ERRORS, BadHeader, read_npy_header
from ..text import shorten
from .fit import TrainState

FORMAT_VERSION = 3  # 3: weights (C, D); 2 (read, converted on load): weights (D, C)
READABLE_VERSIONS = (2, 3)
# What a checkpoint may hold, checked from the zip index and each member's npy header before a
# byte of data is inflated: a hostile .npz can declare members that inflate to gigabytes, or
# headers whose shapes would allocate as much. softmax-train writes the members stored (np.savez
# does not compress): their bytes are in the file, so they cannot inflate, and any size that
# fits in memory loads (a 100,000-class model on 2,048 features is four 820 MB arrays). A
# deflated member (a recompressed file) could inflate a thousandfold: it is held to the caps.
# The texts are capped however they are stored: they are parsed (YAML, JSON) in Python.
TEXT_CAP = 16 << 20  # bytes (uncompressed) of config_yaml, meta_json (the history), class_names
ARRAY_CAP = 256 << 20  # bytes of any other deflated member: 64 million float32 weights
TOTAL_CAP = 1 << 30  # bytes of all deflated members together
UNKNOWN_MEMORY = 1 << 40  # bytes a checkpoint may need where free memory is not known
MAX_MEMBERS = 64  # entries of the zip index (a checkpoint has 11)
REQUIRED = ("W", "velocity", "average", "best_W", "val_rows", "pre_mean", "pre_scale",
            "pre_bias", "class_names", "config_yaml", "meta_json")
WEIGHTS = ("W", "velocity", "average", "best_W")
TEXTS = ("config_yaml", "meta_json", "class_names")
# member -> (dimensions, dtype kinds it may have)
LAYOUT = {**{key: (2, "f") for key in WEIGHTS}, "val_rows": (1, "i"), "pre_mean": (1, "f"),
          "pre_scale": (1, "f"), "pre_bias": (0, "b"), "class_names": (1, "U"),
          "config_yaml": (0, "U"), "meta_json": (0, "U")}
_EOCD = struct.Struct("<4s4H2LH")  # the zip's end-of-central-directory record
NOT_A_CHECKPOINT = "not a checkpoint of this tool (softmax-train writes them as .npz files)"


@dataclass
class Checkpoint:
    state: TrainState
    preprocessor: Preprocessor
    class_names: tuple[str, ...]
    config: Config
    config_yaml: str
    fingerprint: dict[str, str]
    versions: dict[str, str]
    status: str
    val_rows: np.ndarray
    path: Path | None = None  # the file it was loaded from

    @property
    def W(self) -> np.ndarray:
        return self.state.W


def save_checkpoint(
    path: str | Path,
    state: TrainState,
    preprocessor: Preprocessor,
    class_names: tuple[str, ...],
    config_yaml: str,
    fingerprint: dict[str, str],
    status: str,
    val_rows: np.ndarray,
    W: np.ndarray | None = None,
) -> None:
    """Write a checkpoint atomically; `W` replaces state.W as the model weights if given
    (best.npz stores the best weights as its model)."""
    meta = {
        "format_version": FORMAT_VERSION,
        "versions": {"softmax_cls": __version__, "numpy": np.__version__},
        "fingerprint": fingerprint,
        "status": status,
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_val_acc": state.best_val_acc,
        "epochs_since_best": state.epochs_since_best,
        "history": state.history,
    }
    arrays = {
        "W": state.W if W is None else W,
        "velocity": state.velocity,
        "average": state.average,
        "best_W": state.best_W,
        "val_rows": np.asarray(val_rows, dtype=np.int64),
        "class_names": np.array(class_names, dtype=str),
        "config_yaml": np.array(config_yaml),
        "meta_json": np.array(json.dumps(meta)),
        **preprocessor.to_arrays(),
    }
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint; any problem is a DataError naming the file.

    The cheap checks come first: the file's size, the zip index, each member's npy header
    (shape and dtype against the bytes it declares, and the shapes against each other); only
    then are the members inflated, and the metadata and arrays checked.
    """
    path = Path(path)
    name = shorten(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise DataError(f"checkpoint not found: {name}") from None
        raise DataError(f"cannot read checkpoint {name}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"checkpoint {name} is {NOT_REGULAR}")
    _check_memory(name, info.st_size)
    try:
        with open(path, "rb") as handle:
            _check_zip_index(name, handle, info.st_size)
            with zipfile.ZipFile(handle) as archive:
                _check_member_headers(name, archive, info.st_size)
                arrays = {key: _read_member(archive, key) for key in REQUIRED}
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            KeyError, TypeError, NotImplementedError, *INFLATE_ERRORS) as exc:
        raise DataError(f"{name}: corrupt or truncated checkpoint "
                        f"({shorten(exc, 150)})") from None
    try:
        checkpoint = _from_arrays(path, arrays)
    except (json.JSONDecodeError, ConfigError, KeyError, TypeError, ValueError,
            AttributeError, RecursionError) as exc:
        raise DataError(f"{name}: unreadable checkpoint ({type(exc).__name__}: "
                        f"{shorten(exc, 150)})") from None
    _validate(name, checkpoint)
    checkpoint.path = path
    return checkpoint


def loadable_bytes() -> int:
    """Bytes of checkpoint that may be read into memory now: what this process may still
    allocate (engines.memory.host_available_bytes), UNKNOWN_MEMORY where that is not known."""
    available = host_available_bytes()
    return UNKNOWN_MEMORY if available is None else available


def _check_memory(name: str, size: int) -> None:
    """DataError when `size` bytes of arrays would not fit in the memory left."""
    available = loadable_bytes()
    if size > available:
        raise DataError(f"{name}: loading it needs {size / 1e6:,.0f} MB of memory, only "
                        f"{max(available, 0) / 1e6:,.0f} MB are free")


def _check_zip_index(name: str, handle, size: int) -> None:
    """DataError unless the file is a zip archive whose index lists at most MAX_MEMBERS
    entries (zipfile would read any number of them into memory)."""
    magic = handle.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{name}: {NOT_A_CHECKPOINT}; this is a single .npy array")
    if not magic.startswith(b"PK"):
        raise DataError(f"{name}: {NOT_A_CHECKPOINT}; this is not a zip archive at all")
    tail_size = min(size, _EOCD.size + 0xFFFF)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise DataError(f"{name}: corrupt or truncated checkpoint (a zip archive without "
                        "its index)")
    entries, index_size = _EOCD.unpack_from(tail, at)[4:6]
    if entries > MAX_MEMBERS or index_size > MAX_MEMBERS * 1024:
        raise DataError(f"{name}: {NOT_A_CHECKPOINT}; its zip index lists {entries} "
                        f"entries in {index_size} bytes, a checkpoint has {len(REQUIRED)}")
    handle.seek(0)


def _check_member_headers(name: str, archive: zipfile.ZipFile, file_size: int) -> None:
    """DataError unless every member is there, each npy header describes exactly the bytes
    the zip index declares, stored members declare bytes that are in the file (`file_size`
    bytes) and deflated ones are within their caps, all fit in memory, and the shapes agree (W,
    velocity, average, best_W (C, F) float32, or (F, C) in format 2; class_names (C,);
    pre_mean, pre_scale (F - 1,) or (F,)). Reads the headers only."""
    files = set(archive.namelist())
    missing = [key for key in REQUIRED if f"{key}.npy" not in files]
    if missing and "W_raw.npy" in files:  # what inference.export writes: the weights alone
        raise DataError(f"{name}: an export of softmax-export (W_raw), not a checkpoint: give "
                        "the run's best.npz")
    if missing:
        raise DataError(f"{name}: {NOT_A_CHECKPOINT}; it lacks {', '.join(missing)}")
    total = stored = inflated = 0
    headers = {}
    for key in REQUIRED:
        member = archive.getinfo(f"{key}.npy")
        declared = member.file_size
        total += declared
        if key in TEXTS and declared > TEXT_CAP:  # parsed as YAML or JSON: bounded time
            raise DataError(f"{name}: member {key} is {declared} bytes, more than a "
                            "checkpoint's text holds; refusing it")
        if member.compress_type == zipfile.ZIP_STORED:
            stored += member.compress_size
            if declared != member.compress_size or stored > file_size:
                raise DataError(f"{name}: corrupt or truncated checkpoint (member {key} "
                                f"declares {declared} bytes the file does not hold)")
        else:
            inflated += declared
            if declared > ARRAY_CAP or inflated > TOTAL_CAP:
                raise DataError(f"{name}: member {key} inflates to {declared} bytes, more than "
                                "a compressed checkpoint may; refusing it (softmax-train "
                                "writes them uncompressed)")
        _check_memory(name, total)
        if member.flag_bits & 0x1:  # zipfile.open raises RuntimeError: no password
            raise DataError(f"{name}: member {key} is encrypted; {NOT_A_CHECKPOINT}")
        with archive.open(f"{key}.npy") as member:
            shape, dtype, header_end = _npy_header(name, key, member)
        dtype = dtype.newbyteorder("=")  # as _read_member gives it (a big-endian machine's)
        ndim, kinds = LAYOUT[key]
        if len(shape) != ndim or dtype.kind not in kinds:  # object dtypes: refused already
            raise DataError(f"{name}: member {key} is a {len(shape)}-d {shorten(dtype.str, 40)} "
                            f"array, a checkpoint's is {ndim}-d of kind {kinds!r}")
        if dtype.itemsize == 0:  # '<U0': any count fits no bytes, each becomes a Python str
            raise DataError(f"{name}: member {key} is of {dtype.str}, elements of no bytes "
                            "(numpy writes no such array)")
        if header_end + math.prod(shape) * dtype.itemsize != declared:
            raise DataError(f"{name}: member {key} declares shape {_shape(shape)} "
                            f"{dtype.name}, which does not fit its {declared} bytes")
        headers[key] = shape, dtype
    weights = headers["W"][0]
    for key in WEIGHTS:
        shape, dtype = headers[key]
        if shape != weights or dtype != np.float32:
            raise DataError(f"{name}: {key} has shape {_shape(shape)} {dtype.name}, expected "
                            f"{_shape(weights)} float32")
    n_names = headers["class_names"][0][0]
    if n_names not in weights:
        raise DataError(f"{name}: {n_names} class names for weights of shape "
                        f"{_shape(weights)}")
    features = weights[1] if weights[0] == n_names else weights[0]
    for key in ("pre_mean", "pre_scale"):
        if headers[key][0][0] not in (features - 1, features):
            raise DataError(f"{name}: {key} holds {headers[key][0][0]} features, the weights "
                            f"{features}")


def _npy_header(name: str, key: str, member) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes up to the data) of the npy file `member`, reading only its
    header (npy_header.read_npy_header); what it refuses is a DataError naming the member."""
    try:
        return read_npy_header(member)
    except BadHeader as exc:
        raise DataError(f"{name}: member {key} {exc}") from None


def _shape(shape: tuple) -> str:
    return shorten(tuple(shape), 60)


def _read_member(archive: zipfile.ZipFile, key: str) -> np.ndarray:
    """One member's array in this machine's byte order (np.savez on a big-endian machine
    writes '>f4'), its header already checked against its declared size."""
    with archive.open(f"{key}.npy") as member:
        array = np.lib.format.read_array(member, allow_pickle=False)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _finite_json_number(text: str) -> float:
    raise ValueError(f"the metadata holds {text}, not a finite number")


def _from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Checkpoint:
    meta = json.loads(str(arrays["meta_json"]), parse_constant=_finite_json_number)
    name = shorten(path)
    if not isinstance(meta, dict):
        raise DataError(f"{name}: the checkpoint's metadata is not a JSON object")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or type(version) is not int:
        raise DataError(f"{name}: checkpoint format "
                        f"{shorten(version, 40, quote=isinstance(version, str))} is not supported "
                        f"(this version reads {', '.join(map(str, READABLE_VERSIONS))})")
    _check_meta(name, meta)
    config_yaml = str(arrays["config_yaml"])
    config = config_from_dict(parse_yaml(config_yaml, f"{name} config"))
    weights = {key: arrays[key] for key in WEIGHTS}
    if version == 2:  # written before the one (C, D) layout
        weights = {key: np.ascontiguousarray(array.T) for key, array in weights.items()}
    state = TrainState(**weights,
                       epoch=meta["epoch"], best_epoch=meta["best_epoch"],
                       best_val_acc=float(meta["best_val_acc"]),
                       epochs_since_best=meta["epochs_since_best"],
                       history=meta["history"])
    return Checkpoint(
        state=state, preprocessor=Preprocessor.from_arrays(arrays),
        class_names=tuple(str(name) for name in arrays["class_names"]),
        config=config, config_yaml=config_yaml, fingerprint=meta["fingerprint"],
        versions=meta["versions"], status=meta["status"],
        val_rows=arrays["val_rows"])


def _check_meta(name: str, meta: dict) -> None:
    """DataError unless the metadata has the types and ranges save_checkpoint writes: epoch
    counts are integers >= 0, best_val_acc is -1 (none yet) or in [0, 1], the history one
    row (str -> finite number or null) per epoch, fingerprint and versions str -> str."""
    def fail(what: str) -> DataError:
        return DataError(f"{name}: the checkpoint's metadata is damaged: {what}")

    def count(key: str) -> int:
        value = meta.get(key)
        if type(value) is not int or value < 0:
            raise fail(f"{key} is {shorten(value, 40)}, not a count >= 0")
        return value

    epoch = count("epoch")
    if count("best_epoch") > epoch or count("epochs_since_best") > epoch:
        raise fail(f"best_epoch and epochs_since_best cannot exceed epoch ({epoch})")
    accuracy = meta.get("best_val_acc")
    if type(accuracy) not in (int, float) or not (accuracy == -1 or 0 <= accuracy <= 1):
        raise fail(f"best_val_acc is {shorten(accuracy, 40)}, not an accuracy")
    history = meta.get("history")
    if not isinstance(history, list):
        raise fail(f"history is not a list of {epoch} rows")
    for row in history:
        if not isinstance(row, dict) or not all(
                isinstance(key, str) and (value is None or type(value) in (int, float))
                for key, value in row.items()):
            raise fail("a history row is not a table of numbers")
    # one row per epoch; an L-BFGS solve that made no iteration (optim.tol met at its
    # start) has its solution's row alone, at epoch 0
    solved_at_start = epoch == 0 and len(history) == 1 and history[0].get("iterations") == 0
    if len(history) != epoch and not solved_at_start:
        raise fail(f"history is not a list of {epoch} rows")
    for key in ("fingerprint", "versions"):
        table = meta.get(key)
        if not isinstance(table, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            raise fail(f"{key} is not a table of strings")
    if not isinstance(meta.get("status"), str):
        raise fail("status is not a string")


def check_matches(checkpoint: Checkpoint, data: LabelledData, path: str | Path) -> None:
    """DataError unless the data is the very data (per-file checksums) the checkpoint saw,
    with the checkpoint's classes and raw features per row."""
    name = shorten(path)
    if len(data.class_names) != checkpoint.W.shape[0]:
        raise DataError(f"{name}: the checkpoint has {checkpoint.W.shape[0]} classes, the data "
                        f"{len(data.class_names)}")
    raw_features = data.train_images.shape[1]
    if raw_features != checkpoint.preprocessor.n_raw:
        raise DataError(f"{name}: the checkpoint is for rows of {checkpoint.preprocessor.n_raw} "
                        f"features, the data has {raw_features}")
    for file, md5 in checkpoint.fingerprint.items():
        if data.fingerprint.get(file) != md5:
            raise DataError(f"{name}: the data does not match the checkpoint: {shorten(file, 80)} "
                            f"has md5 {shorten(data.fingerprint.get(file, 'missing'), 40)}, the "
                            f"checkpoint was trained on {shorten(md5, 40)}")


def _validate(path: str, ckpt: Checkpoint) -> None:
    pre, state = ckpt.preprocessor, ckpt.state
    n_classes = len(ckpt.class_names)
    expected = (n_classes, pre.n_features)
    for name in WEIGHTS:
        array = getattr(state, name)
        if array.shape != expected or array.dtype != np.float32:
            raise DataError(f"{path}: {name} has shape {array.shape} {array.dtype}, expected "
                            f"{expected} float32")
        if not np.isfinite(array).all():
            raise DataError(f"{path}: {name} holds non-finite values")
    if pre.mean.ndim != 1 or pre.scale.shape != pre.mean.shape:
        raise DataError(f"{path}: preprocessing statistics have the wrong shape")
    rows = ckpt.val_rows
    if rows.ndim != 1 or rows.dtype != np.int64 or (len(rows) and rows.min() < 0):
        raise DataError(f"{path}: val_rows must be a 1-d array of row indices (int64)")
    if not (np.isfinite(pre.mean).all() and np.isfinite(pre.scale).all()):
        raise DataError(f"{path}: preprocessing statistics hold non-finite values")
    if not ckpt.fingerprint:
        raise DataError(f"{path}: the checkpoint has no data fingerprint")
