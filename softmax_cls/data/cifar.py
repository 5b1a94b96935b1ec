"""A CIFAR data set, or a config's data, loaded into a `LabelledData`.

`load_dataset` locates the data folder (softmax_cls.data.fetch: downloaded, extracted and
verified as needed) and reads its batch files (softmax_cls.data.batches);
`load_config_data` loads what a config's data section names: CIFAR, feature files or image
folders.
"""

from __future__ import annotations

import os
from pathlib import Path

from softmax_cls.config import DataConfig
from softmax_cls.data.batches import BatchReader, CifarSplitOnDisk, folder_hint, read_split
from softmax_cls.data.datasets import DatasetSpec, get_spec
from softmax_cls.data.features import load_features
from softmax_cls.data.fetch import CONFIG_HINTS, DOWNLOAD_HINTS, DataHints, locate
from softmax_cls.data.labelled import LabelledData
from softmax_cls.errors import ConfigError
from softmax_cls.text import shorten


def _check_label_choice(spec: DatasetSpec, labels: str) -> None:
    """A ConfigError (a usage error, exit 2) unless `labels` exists for the data set."""
    if labels not in ("fine", "coarse"):
        raise ConfigError(f"data.labels: choose fine or coarse, got {shorten(labels, 40)!r}")
    if labels == "coarse" and not spec.coarse_names:
        raise ConfigError(f"data.labels: {spec.dataset} has no coarse labels (only cifar100 "
                          "has); use fine")


def load_dataset(dataset: str = "cifar10", root: str | os.PathLike = "data",
                 fmt: str = "binary", *, url: str | None = None,
                 archive: str | os.PathLike | None = None, labels: str = "fine",
                 force: bool = False, download: bool = True, progress: bool = True,
                 spec: DatasetSpec | None = None, hints: DataHints = DOWNLOAD_HINTS,
                 keep_test: bool = True) -> LabelledData:
    """Locate (see `prepare_dataset`), verify and read the whole data set.

    Every file is hashed (unless this call just verified it during extraction), checked,
    and its images copied once into the result: a binary batch file a few MB at a time,
    straight into its rows, a python-format one whole (it is one pickle). `labels` picks
    CIFAR-100's "fine" (100 classes) or "coarse" (20 superclasses) labels. Without
    `keep_test` the test files are checked and hashed the same way but left on disk
    (LabelledData.with_test reads them later). Returns LabelledData with images (N, 3072)
    uint8 C-contiguous and labels (N,) int64.
    """
    spec = spec or get_spec(dataset, fmt)
    _check_label_choice(spec, labels)
    folder, verified = locate(spec, Path(root), url=url, archive=archive, force=force,
                              download=download, progress=progress, hints=hints)
    reader = BatchReader(folder, spec, verified=verified, hint=folder_hint(folder, spec))
    reader.check_class_names()
    train_images, train_labels = read_split(reader, spec.train_files, labels,
                                            check=() if keep_test else spec.test_files)
    test_images = test_labels = on_disk = None
    if keep_test:
        test_images, test_labels = read_split(reader, spec.test_files, labels)
    else:
        on_disk = CifarSplitOnDisk(folder, spec, spec.test_files, labels)
    return LabelledData(
        dataset=spec.dataset,
        class_names=spec.coarse_names if labels == "coarse" else spec.class_names,
        train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels, fingerprint=reader.fingerprint,
        test_on_disk=on_disk,
    )


def load_config_data(data: DataConfig, progress: bool = True, hints: DataHints = CONFIG_HINTS,
                     *, keep_test: bool = True, warn: bool = True) -> LabelledData:
    """The data set a config's `data` section names, located, verified and read; error
    messages give `hints` (default: the config's own keys, `--set data.archive=PATH`...).
    Without `keep_test` a CIFAR test split is checked but left on disk (see load_dataset);
    feature files and image folders are loaded as softmax_cls.data.features and
    softmax_cls.data.folders do, whatever `keep_test`; `warn` false leaves out an image
    folder's warning of skipped files (already given)."""
    if data.dataset == "features":
        return load_features(data, progress)
    if data.dataset == "folder":
        from softmax_cls.data.folders import load_folders

        return load_folders(data, progress, warn)
    return load_dataset(data.dataset, data.root, data.format, url=data.url, archive=data.archive,
                        labels=data.labels, download=data.download, progress=progress,
                        hints=hints, keep_test=keep_test)
