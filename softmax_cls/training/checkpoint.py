"""Checkpoints: one .npz that loads with allow_pickle=False, written atomically.

It holds the weights (W, velocity, average, best_W: (C, D) float32; format 2 files hold them
as (D, C) and are converted on load), the preprocessing statistics, the class names, the
effective config as YAML text, the history, the versions, the data fingerprint, the
validation rows of the run's split (`val_rows`, int64, so any run can be audited) and the
optimizer state, so that eval needs nothing else and a resumed run continues exactly as an
uninterrupted one.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import Config, config_from_dict, parse_yaml
from ..data.labelled import LabelledData
from ..errors import ConfigError, DataError
from ..fsutil import atomic_write
from ..math.preprocess import Preprocessor
from ..text import shorten
from .fit import TrainState

FORMAT_VERSION = 3  # 3: weights (C, D); 2 (read, converted on load): weights (D, C)
READABLE_VERSIONS = (2, 3)
WEIGHTS = ("W", "velocity", "average", "best_W")
# The most bytes (uncompressed) a checkpoint member may have, checked before it is read: a
# hostile .npz can declare members that inflate to gigabytes.
TEXT_CAP = 16 << 20  # config_yaml, meta_json (the history), class_names
ARRAY_CAP = 1 << 30
TOTAL_CAP = 2 << 30
REQUIRED = ("W", "velocity", "average", "best_W", "val_rows", "pre_mean", "pre_scale",
            "pre_bias", "class_names", "config_yaml", "meta_json")


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
    """Read and validate a checkpoint; any problem is a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not a softmax-cls checkpoint (a single array)")
            missing = [key for key in REQUIRED if key not in npz.files]
            if missing:
                raise DataError(f"{path}: not a softmax-cls checkpoint "
                                f"(missing {', '.join(missing)})")
            _check_member_sizes(path, npz.zip)
            arrays = {key: npz[key] for key in REQUIRED}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: corrupt or truncated checkpoint "
                        f"({shorten(str(exc), 150)})") from None
    try:
        checkpoint = _from_arrays(path, arrays)
    except (json.JSONDecodeError, ConfigError, KeyError, TypeError, ValueError,
            AttributeError, RecursionError) as exc:
        raise DataError(f"{path}: unreadable checkpoint ({type(exc).__name__}: "
                        f"{shorten(str(exc), 150)})") from None
    _validate(path, checkpoint)
    checkpoint.path = path
    return checkpoint


def _check_member_sizes(path: Path, archive: zipfile.ZipFile) -> None:
    """DataError if a required member would inflate past its cap (read from the zip index)."""
    total = 0
    for key in REQUIRED:
        size = archive.getinfo(f"{key}.npy").file_size
        total += size
        cap = TEXT_CAP if key in ("config_yaml", "meta_json", "class_names") else ARRAY_CAP
        if size > cap or total > TOTAL_CAP:
            raise DataError(f"{path}: member {key} is {size} bytes uncompressed, more than a "
                            "checkpoint holds; refusing it")


def _from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Checkpoint:
    meta = json.loads(str(arrays["meta_json"]))
    config_yaml = str(arrays["config_yaml"])
    config = config_from_dict(parse_yaml(config_yaml, f"{path} config"))
    version = meta["format_version"]
    if version not in READABLE_VERSIONS:
        raise DataError(f"{path}: checkpoint format {version!r} is not supported (this "
                        f"version reads {', '.join(map(str, READABLE_VERSIONS))})")
    weights = {key: arrays[key] for key in WEIGHTS}
    if version == 2:  # written before the one (C, D) layout
        weights = {key: np.ascontiguousarray(array.T) for key, array in weights.items()}
    state = TrainState(**weights,
                       epoch=int(meta["epoch"]), best_epoch=int(meta["best_epoch"]),
                       best_val_acc=float(meta["best_val_acc"]),
                       epochs_since_best=int(meta["epochs_since_best"]),
                       history=list(meta["history"]))
    return Checkpoint(
        state=state, preprocessor=Preprocessor.from_arrays(arrays),
        class_names=tuple(str(name) for name in arrays["class_names"]),
        config=config, config_yaml=config_yaml, fingerprint=dict(meta["fingerprint"]),
        versions=dict(meta["versions"]), status=str(meta["status"]),
        val_rows=arrays["val_rows"])


def check_matches(checkpoint: Checkpoint, data: LabelledData, path: str | Path) -> None:
    """DataError unless the data is the very data (per-file checksums) the checkpoint saw."""
    if len(data.class_names) != checkpoint.W.shape[0]:
        raise DataError(f"{path}: the checkpoint has {checkpoint.W.shape[0]} classes, the data "
                        f"{len(data.class_names)}")
    for name, md5 in checkpoint.fingerprint.items():
        if data.fingerprint.get(name) != md5:
            raise DataError(f"{path}: the data does not match the checkpoint: {name} has md5 "
                            f"{data.fingerprint.get(name, 'missing')}, the checkpoint was "
                            f"trained on {md5}")


def _validate(path: Path, ckpt: Checkpoint) -> None:
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
