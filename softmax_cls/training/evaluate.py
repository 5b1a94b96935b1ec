"""Evaluate a checkpoint on a data split: it carries everything but the images themselves."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import cifar as data_module
from ..data.fetch import EVAL_HINTS
from ..data.labelled import LabelledData
from ..engines.contract import Engine
from ..errors import ConfigError, DataError
from ..math.metrics import ClassificationReport, classification_report
from ..math.preprocess import Preprocessor, image_scores
from ..math.softmax import softmax_loss_from_scores
from ..text import shorten
from .checkpoint import Checkpoint, check_matches, load_checkpoint

SPLITS = ("test", "val", "train")


@dataclass
class ScoredSplit:
    """A split and one model's class scores on it: name ("test", "val" or "train"), images
    (N, P) raw rows, labels (N,) int64, scores (N, C) in the weights' dtype."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


def score_split(engine: Engine, W: np.ndarray, pre: Preprocessor, name: str,
                images: np.ndarray, labels: np.ndarray) -> ScoredSplit:
    """The class scores of weights W (C, D) float32 on raw rows (N, P) with `engine`."""
    scores = engine.predict_scores(images, W, pre)
    return ScoredSplit(name, images, labels, scores)


def load_data_for(checkpoint: Checkpoint, root: str | Path | None = None,
                  progress: bool = True, download: bool = False) -> LabelledData:
    """The data set the checkpoint was trained on, from `root` (default: the config's root,
    absolute in runs made by this version). Never downloads unless `download`. A linear
    probe's data are its feature files, read where it was trained, and an image folder's is
    no download: `root` and `download` would be ignored, so they are a ConfigError."""
    data = dataclasses.replace(checkpoint.config.data, download=download)
    if root is not None and data.dataset == "features":
        files = ", ".join(shorten(path, 80) for path in (data.train, data.test) if path)
        raise ConfigError(f"--root: this checkpoint is a linear probe; it reads its feature "
                          f"files where it was trained ({files}), not under a data root")
    if download and data.dataset in ("features", "folder"):
        raise ConfigError(f"--download: this checkpoint was trained on data.dataset "
                          f"{data.dataset}, your own files: there is nothing to download")
    if root is not None:
        data = dataclasses.replace(data, root=str(root))
    # looked up at call time, so a stand-in for softmax_cls.data.cifar.load_config_data applies here
    return data_module.load_config_data(data, progress, hints=EVAL_HINTS)


def split_arrays(checkpoint: Checkpoint, data: LabelledData, split: str
                 ) -> tuple[np.ndarray | RowSubset, np.ndarray]:
    """(raw rows (N, P), labels (N,) int64) of a split. test is read from disk now when
    `data` left it there; val is the checkpoint's own val_rows; train is every other training
    row, as a RowSubset read chunk by chunk. An empty split (a run without a test file or
    test folder) is a DataError: a report or picture of no rows would show zeros."""
    if split == "test":
        data = data.with_test()
        if len(data.test_labels) == 0:
            raise DataError(f"the test split of {shorten(checkpoint.path)}'s data is empty: "
                            "try --split val")
        return data.test_images, data.test_labels
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    val_rows = checkpoint.val_rows
    if len(val_rows) and val_rows.max() >= len(data.train_labels):
        raise DataError(f"the checkpoint's val_rows reach row {val_rows.max()}, the data has "
                        f"{len(data.train_labels)} training rows")
    if split == "val":
        return data.train_images[val_rows], data.train_labels[val_rows]
    rows = np.setdiff1d(np.arange(len(data.train_labels)), val_rows)
    return RowSubset(data.train_images, rows), data.train_labels[rows]


class RowSubset:
    """The rows `rows` (n,) of a raw-row array (N, P) (a memory map, say), read only when
    sliced or indexed: the train split of a feature file larger than memory is predicted one
    chunk at a time instead of being copied whole."""

    def __init__(self, images: np.ndarray, rows: np.ndarray):
        self.images, self.rows = images, rows
        self.shape = (len(rows), *images.shape[1:])
        self.dtype = images.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        return self.images[self.rows[index]]


def checkpoint_scores(checkpoint: Checkpoint, rows: np.ndarray) -> np.ndarray:
    """Class scores (N, C) float32 of raw rows (N, P): the preprocessing folded into W, the
    rows converted to raw features [u, 1] one chunk at a time."""
    return image_scores(checkpoint.W, checkpoint.preprocessor, rows)


def predict_checkpoint(checkpoint: Checkpoint, rows: np.ndarray) -> np.ndarray:
    """Predicted labels (N,) int64 of raw rows (N, P), the argmax of checkpoint_scores."""
    return checkpoint_scores(checkpoint, rows).argmax(axis=1).astype(np.int64)


def evaluate_checkpoint(path: str | Path, split: str = "test", root: str | Path | None = None,
                        progress: bool = True, download: bool = False, engine: str = "numpy",
                        device: str = "auto") -> ClassificationReport:
    """Load a checkpoint and its data, check they match, and report on one split. The data
    is downloaded only when `download`. The scores come from `engine` on `device`
    (engines.get_engine); the train split, read chunk by chunk, from numpy's."""
    from ..engines import check_device, get_engine

    check_device(engine, device)  # a bad name or device fails before the checkpoint
    checkpoint = load_checkpoint(path)
    scorer = get_engine(engine, device, checkpoint.W.shape[0])  # auto: by its class count
    data = load_data_for(checkpoint, root, progress, download)
    check_matches(checkpoint, data, path)
    images, labels = split_arrays(checkpoint, data, split)
    scores = (scorer.predict_scores(images, checkpoint.W, checkpoint.preprocessor)
              if isinstance(images, np.ndarray) else checkpoint_scores(checkpoint, images))
    loss = (softmax_loss_from_scores(scores, labels, checkpoint.config.loss.clip)[0]
            if len(labels) else None)
    return classification_report(labels, scores.argmax(axis=1), checkpoint.class_names, loss)
