"""The in-memory data set that training and evaluation read: `LabelledData`.

Both readers build it: softmax_cls.data.cifar (CIFAR images) and softmax_cls.data.features
(users' feature matrices).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np


class SplitOnDisk(Protocol):
    """A split left in its files, read only when needed (softmax_cls.data.batches has the
    CIFAR one)."""

    @property
    def count(self) -> int:
        """The number of rows in the split."""

    def read(self, fingerprint: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows (N, P), labels (N,) int64), checked against `fingerprint` {file: md5}."""


@dataclass(frozen=True, eq=False)
class LabelledData:
    """A loaded data set: rows (N, P) and labels (N,) int64 in [0, len(class_names)) for the
    train and test splits. CIFAR rows are images, (N, 3072) uint8 C-contiguous: R plane,
    G plane, B plane, each 32x32 row-major; feature rows are (N, D) float32, possibly an
    np.memmap of the file. `fingerprint` maps each file read to its md5.

    The test split may be left in its files (cifar.load_dataset(keep_test=False)): test_images and
    test_labels are then None and `test_on_disk` reads them; `n_test` counts the test rows
    either way and `with_test()` brings them into memory.
    """

    dataset: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    fingerprint: dict[str, str]
    test_on_disk: SplitOnDisk | None = None

    @property
    def n_test(self) -> int:
        """The number of test rows, in memory or on disk."""
        if self.test_labels is None:
            return 0 if self.test_on_disk is None else self.test_on_disk.count
        return len(self.test_labels)

    def with_test(self) -> LabelledData:
        """This data with its test split in memory: itself when it is already, else with the
        split read now from its files, checked again (DataError if one changed since)."""
        if self.test_on_disk is None:
            return self
        images, labels = self.test_on_disk.read(self.fingerprint)
        return replace(self, test_images=images, test_labels=labels, test_on_disk=None)

    def without_train(self) -> LabelledData:
        """This data without its training rows: train_images (0, P) and train_labels (0,),
        so that, once no one else holds them, the training rows are freed (before the test
        split is read after training, say)."""
        images, labels = self.train_images, self.train_labels
        return replace(self, train_images=np.empty((0, *images.shape[1:]), images.dtype),
                       train_labels=np.empty(0, labels.dtype))
