"""CIFAR-10 and CIFAR-100 described: files, sizes, checksums, class names. No I/O here.

Each (dataset, format) pair is one `DatasetSpec`; CIFAR-100 is CIFAR-10 with a handful of
attributes overridden (`dataclasses.replace`), as torchvision's `CIFAR100(CIFAR10)` does.
softmax_cls.data.fetch locates and verifies the files these describe; softmax_cls.data.batches
reads them.

Where each checksum comes from (see also `SPECS`):

- Official archive md5s: the CIFAR page's table, as copied in datasets-mila's CIFAR-100
  mirror README and md5sums (CIFAR-100) and in torchvision `datasets/cifar.py` (`tgz_md5`,
  python archives). Archive sizes: TFDS `url_checksums/cifar10.txt` and `cifar100.txt`
  (binary archives) and the git-annex keys of datasets-mila's mirrors, which pair each size
  with its md5 (all four).
- CIFAR-10 binary batch md5s: the published per-file checksums. batches.meta.txt has no
  published md5: its content must equal the known class list.
- CIFAR-10 / CIFAR-100 python batch and meta md5s: torchvision `datasets/cifar.py`; the
  exact batch sizes: datasets-mila's git-annex keys (which pair each size with that md5).
- CIFAR-100 binary train.bin / test.bin md5s: found in only ONE public source,
  rai-project/dldataset `vision/cifar100.go` (whose CIFAR-10 per-file md5s do match the
  published ones); no second source confirms them. If they ever reject the official data,
  this is the place to look. fine_label_names.txt and coarse_label_names.txt have no
  published md5: their content must equal the known class lists (as in the python meta).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from softmax_cls.errors import DataError

IMAGE_SHAPE = (3, 32, 32)  # colour planes (R, G, B), rows, columns: row-major
IMAGE_BYTES = 3072  # one uint8 per value of IMAGE_SHAPE
_OFFICIAL_BASE = "https://www.cs.toronto.edu/~kriz/"

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_FINE_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything known about one (dataset, format) pair.

    `files` holds the md5 of every batch/meta file that has a published checksum; files
    without one (the binary format's class-name .txt files) are checked by content instead.
    `sizes` holds exact byte sizes where known, `counts` the number of images per batch file.
    """

    dataset: str
    fmt: str
    url: str
    archive_name: str
    archive_md5: str | None
    archive_size: int | None
    folder: str
    files: dict[str, str]
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    names_files: tuple[str, ...]  # binary: (fine[, coarse]) .txt files; python: the meta pickle
    counts: dict[str, int]
    sizes: dict[str, int] = field(default_factory=dict)
    class_names: tuple[str, ...] = field(default=CIFAR10_CLASSES, repr=False)  # only or fine
    coarse_names: tuple[str, ...] = field(default=(), repr=False)  # CIFAR-100 superclasses

    @property
    def label_bytes(self) -> int:
        """Label bytes before each binary record: 1 (CIFAR-10) or 2 (coarse, fine)."""
        return 2 if self.coarse_names else 1


def _record_sizes(counts: dict[str, int], label_bytes: int) -> dict[str, int]:
    """Exact byte sizes of binary batch files: label byte(s) + 3072 pixels per record."""
    return {name: n * (label_bytes + IMAGE_BYTES) for name, n in counts.items()}


_C10_BIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_C10_PY = tuple(f"data_batch_{i}" for i in range(1, 6))
_C10_BIN_COUNTS = dict.fromkeys((*_C10_BIN, "test_batch.bin"), 10_000)

CIFAR10_BINARY = DatasetSpec(
    dataset="cifar10", fmt="binary", url=_OFFICIAL_BASE + "cifar-10-binary.tar.gz",
    archive_name="cifar-10-binary.tar.gz", archive_md5="c32a1d4ab5d03f1284b67883e8d87530",
    archive_size=170_052_171, folder="cifar-10-batches-bin",
    files={
        "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
        "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
        "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
        "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
        "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
        "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    },
    train_files=_C10_BIN, test_files=("test_batch.bin",), names_files=("batches.meta.txt",),
    counts=_C10_BIN_COUNTS, sizes=_record_sizes(_C10_BIN_COUNTS, 1),
    class_names=CIFAR10_CLASSES,
)

CIFAR10_PYTHON = dataclasses.replace(
    CIFAR10_BINARY, fmt="python", url=_OFFICIAL_BASE + "cifar-10-python.tar.gz",
    archive_name="cifar-10-python.tar.gz", archive_md5="c58f30108f718f92721af3b95e74349a",
    archive_size=170_498_071, folder="cifar-10-batches-py",
    files={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    train_files=_C10_PY, test_files=("test_batch",), names_files=("batches.meta",),
    counts=dict.fromkeys((*_C10_PY, "test_batch"), 10_000),
    sizes={
        "data_batch_1": 31_035_704, "data_batch_2": 31_035_320,
        "data_batch_3": 31_035_999, "data_batch_4": 31_035_696,
        "data_batch_5": 31_035_623, "test_batch": 31_035_526,
    },
)

# CIFAR-100 = CIFAR-10 with other files, 100 fine and 20 coarse classes, 2 label bytes.
_C100_BIN_COUNTS = {"train.bin": 50_000, "test.bin": 10_000}
CIFAR100_BINARY = dataclasses.replace(
    CIFAR10_BINARY, dataset="cifar100", url=_OFFICIAL_BASE + "cifar-100-binary.tar.gz",
    archive_name="cifar-100-binary.tar.gz", archive_md5="03b5dce01913d631647c71ecec9e9cb8",
    archive_size=168_513_733, folder="cifar-100-binary",
    files={  # a single public source: rai-project/dldataset vision/cifar100.go (module doc)
        "train.bin": "6172c7755cfe09b2fe270c85cebc1b15",
        "test.bin": "4499cfba6c016c1be1438163640a0898",
    },
    train_files=("train.bin",), test_files=("test.bin",),
    names_files=("fine_label_names.txt", "coarse_label_names.txt"),
    counts=_C100_BIN_COUNTS, sizes=_record_sizes(_C100_BIN_COUNTS, 2),
    class_names=CIFAR100_FINE_CLASSES, coarse_names=CIFAR100_COARSE_CLASSES,
)
CIFAR100_PYTHON = dataclasses.replace(
    CIFAR10_PYTHON, dataset="cifar100", url=_OFFICIAL_BASE + "cifar-100-python.tar.gz",
    archive_name="cifar-100-python.tar.gz", archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    archive_size=169_001_437, folder="cifar-100-python",
    files={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    train_files=("train",), test_files=("test",), names_files=("meta",),
    counts={"train": 50_000, "test": 10_000},
    sizes={"train": 155_249_918, "test": 31_049_707},
    class_names=CIFAR100_FINE_CLASSES, coarse_names=CIFAR100_COARSE_CLASSES,
)

SPECS: dict[tuple[str, str], DatasetSpec] = {
    (spec.dataset, spec.fmt): spec
    for spec in (CIFAR10_BINARY, CIFAR10_PYTHON, CIFAR100_BINARY, CIFAR100_PYTHON)
}


def get_spec(dataset: str = "cifar10", fmt: str = "binary") -> DatasetSpec:
    """The spec of `dataset` ("cifar10" | "cifar100") in `fmt` ("binary" | "python")."""
    datasets = sorted({d for d, _ in SPECS})
    formats = sorted({f for _, f in SPECS})
    if dataset not in datasets:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(datasets)}")
    if fmt not in formats:
        raise DataError(f"unknown data format {fmt!r}: choose one of {', '.join(formats)}")
    return SPECS[dataset, fmt]

