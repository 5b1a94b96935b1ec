"""The files softmax-predict reads: its arguments expanded (a folder: its files, recursively,
sorted), then read and scored a batch at a time, so any number of files streams in bounded
memory.

An image model reads image files (a folder: those ending in data.images.IMAGE_SUFFIXES, any
case); a feature model reads .npy / .npz feature files, each row of one a prediction.
Symbolic links to folders are not followed inside a folder (a link named on the command line
is). A file that cannot be read (inside a folder too: a dangling link, a pipe of an image's
name) stops the command with one line naming it, or, when skip_unreadable, is skipped and
counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.features import read_feature_rows
from ..data.images import IMAGE_SUFFIXES, read_image, to_rows
from ..errors import DataError, InputError
from ..text import shorten
from .model import Model

FEATURE_SUFFIXES = (".npy", ".npz")


def input_suffixes(model: Model) -> tuple[str, ...]:
    return IMAGE_SUFFIXES if model.is_image_model else FEATURE_SUFFIXES


def expand_inputs(arguments: list[str], suffixes: tuple[str, ...]) -> list[Path]:
    """The files named (each as given) and those inside the folders named (recursively,
    sorted by path, with a name ending in one of `suffixes`, any case), in argument order.
    InputError for a path that does not exist, is no regular file (a pipe, a device) or is a
    folder that holds no such file."""
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(_walk(path, suffixes))
            if not found:
                raise InputError(f"{shorten(path)} holds no files ending in "
                                 f"{', '.join(suffixes)}")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():  # a FIFO would block the read for ever, a device never end
            raise InputError(f"{shorten(path)} is not a regular file")
        else:
            raise InputError(f"no such file or folder: {shorten(path)}")
    return files


def _walk(folder: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    # every name of the suffixes that is no folder, a regular file or not: a dangling link or
    # a pipe is an input that read_batch refuses (or skips), never one silently left out
    for root, _, names in os.walk(folder, followlinks=False):
        for name in names:
            if name.lower().endswith(suffixes):
                yield Path(root, name)


def batches(items: list, size: int) -> Iterator[list]:
    """`items` in consecutive lists of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Predictions:
    """One batch's predictions: names (n,) of the inputs (a file, or `file[i]` for row i of a
    feature file), classes (n, k) int64 and probabilities (n, k) float32, most probable
    first; skipped: the files of the batch that could not be read (when skipping)."""

    names: list[str]
    classes: np.ndarray
    probabilities: np.ndarray
    skipped: list[Path] = field(default_factory=list)
    n_files: int = 0  # files of the batch, read or skipped


def read_batch(model: Model, files: list[Path], skip_unreadable: bool = False
               ) -> tuple[list[str], np.ndarray, list[Path]]:
    """(names, raw rows (n, P), skipped files) of a batch of files."""
    names, parts, skipped = [], [], []
    for path in files:
        try:
            if not path.is_file():  # opening a pipe would wait for a writer for ever
                raise DataError("a link to nothing (dangling, or a loop)"
                                if path.is_symlink() and not path.exists()
                                else "not a regular file (a pipe, a device or a socket)")
            if model.is_image_model:
                part = to_rows(read_image(path)[None])
                labels = [str(path)]
            else:
                if path.suffix.lower() not in FEATURE_SUFFIXES:
                    raise InputError(f"{shorten(path)}: this checkpoint is a linear probe on "
                                     f"{model.n_inputs} features, not an image model; it "
                                     "predicts on .npy / .npz feature files")
                part = _feature_rows(model, path)
                labels = [f"{path}[{row}]" for row in range(len(part))]
        except DataError as exc:  # UnreadableImage too
            if not skip_unreadable:
                raise InputError(f"cannot read {shorten(path)}: "
                                 f"{_reason(str(exc), path)}") from None
            skipped.append(path)
            continue
        names += labels
        parts.append(part)
    empty = np.empty((0, model.n_inputs), np.uint8 if model.is_image_model else np.float32)
    return names, np.concatenate(parts) if parts else empty, skipped


def _feature_rows(model: Model, path: Path) -> np.ndarray:
    """The float32 rows of a feature file; InputError naming it when they do not fit."""
    rows = read_feature_rows(path)
    try:
        return model.rows(rows)
    except InputError as exc:
        raise InputError(f"{shorten(path)}: {exc}") from None


def _reason(message: str, path: Path) -> str:
    """The message without its own leading file name (the line names the path already)."""
    for prefix in (f"{path}: ", f"{path.name}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def predict_files(model: Model, files: list[Path], k: int, batch_size: int,
                  skip_unreadable: bool = False) -> Iterator[Predictions]:
    """Each batch of `batch_size` files read and scored: top-k classes per input."""
    for batch in batches(files, batch_size):
        names, rows, skipped = read_batch(model, batch, skip_unreadable)
        classes, probabilities = model.top_k(rows, k, layout="rows")
        yield Predictions(names, classes, probabilities, skipped, len(batch))
