"""Evaluate a checkpoint on a data split: it carries everything but the images themselves."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from . import runs
from .checkpoint import Checkpoint, check_matches, load_checkpoint
from .datasets import CifarData
from .errors import DataError
from .metrics import ClassificationReport, classification_report
from .preprocess import image_scores, split_train_val

SPLITS = ("test", "val", "train")


def load_data_for(checkpoint: Checkpoint, root: str | Path | None = None,
                  progress: bool = True) -> CifarData:
    """The data set the checkpoint was trained on, from `root` (default: the config's root)."""
    config = checkpoint.config
    if root is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(root)))
    return runs.load_training_data(config, progress)


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
