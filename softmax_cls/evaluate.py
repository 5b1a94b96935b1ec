"""Evaluate a checkpoint on a data split: it carries everything but the images themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, load_checkpoint
from .datasets import CifarData, load_dataset
from .errors import DataError
from .metrics import ClassificationReport, classification_report
from .preprocess import image_scores, split_train_val

SPLITS = ("test", "val", "train")


def load_data_for(checkpoint: Checkpoint, root: str | Path | None = None,
                  progress: bool = True) -> CifarData:
    """The data set the checkpoint was trained on, from `root` (default: the config's root)."""
    data_cfg = checkpoint.config.data
    return load_dataset(data_cfg.dataset, root or data_cfg.root, data_cfg.format,
                        url=data_cfg.url, archive=data_cfg.archive, labels=data_cfg.labels,
                        download=data_cfg.download, progress=progress)


def check_matches(checkpoint: Checkpoint, data: CifarData, path: str | Path) -> None:
    """DataError unless the data is the very data (per-file checksums) the checkpoint saw."""
    if len(data.class_names) != checkpoint.W.shape[1]:
        raise DataError(f"{path}: the checkpoint has {checkpoint.W.shape[1]} classes, the data "
                        f"{len(data.class_names)}")
    for name, md5 in checkpoint.fingerprint.items():
        if data.fingerprint.get(name) != md5:
            raise DataError(f"{path}: the data does not match the checkpoint: {name} has md5 "
                            f"{data.fingerprint.get(name, 'missing')}, the checkpoint was "
                            f"trained on {md5}")


def split_arrays(checkpoint: Checkpoint, data: CifarData, split: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3072) uint8, labels (N,) int64) of a split, as the training run made it."""
    if split == "test":
        return data.test_images, data.test_labels
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    config = checkpoint.config
    train_rows, val_rows = split_train_val(data.train_labels, config.data.val_size, config.seed)
    rows = val_rows if split == "val" else train_rows
    return data.train_images[rows], data.train_labels[rows]


def evaluate_checkpoint(path: str | Path, split: str = "test", root: str | Path | None = None,
                        progress: bool = True) -> ClassificationReport:
    """Load a checkpoint and its data, check they match, and report on one split."""
    checkpoint = load_checkpoint(path)
    data = load_data_for(checkpoint, root, progress)
    check_matches(checkpoint, data, path)
    images, labels = split_arrays(checkpoint, data, split)
    predictions = image_scores(checkpoint.W, checkpoint.preprocessor, images).argmax(axis=1)
    return classification_report(labels, predictions, checkpoint.class_names)
