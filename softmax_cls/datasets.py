"""CIFAR-10 and CIFAR-100: where the data comes from, how it is checked, and how it is read.

Data flow: an archive (the official URL, a mirror, or a local file) is extracted with
`safe_extract` into a temporary folder `root/.extract-*`, every batch and meta file is checked
(exact size, md5, class names, shapes and label ranges), and only then is the folder renamed
to `root/<spec.folder>`. An existing folder is checked the same way before it is used and is
never modified. The binary format is read with numpy alone; the python format (Python 2
pickles) only through `restricted_unpickle`, which admits nothing but numpy arrays. A run
killed mid-extraction may leave a hidden `.extract-*` folder, which is never taken as data.

Where each checksum comes from (see also `SPECS`):

- Official archive md5s: the CIFAR page's table, as copied in datasets-mila's CIFAR-100
  mirror README and md5sums (CIFAR-100) and in torchvision `datasets/cifar.py` (`tgz_md5`,
  python archives); cifar-10-binary also from shared/data/README.md. Archive sizes: TFDS
  `url_checksums/cifar10.txt` and `cifar100.txt` (binary archives) and the git-annex keys
  of datasets-mila's mirrors, which pair each size with its md5 (all four).
- CIFAR-10 binary batch md5s: the published per-file checksums (the project's
  shared/data/README.md). batches.meta.txt has no published md5: its content must equal
  the known class list.
- CIFAR-10 / CIFAR-100 python batch and meta md5s: torchvision `datasets/cifar.py`; the
  exact batch sizes: datasets-mila's git-annex keys (which pair each size with that md5).
- CIFAR-100 binary train.bin / test.bin md5s: found in only ONE public source,
  rai-project/dldataset `vision/cifar100.go` (whose CIFAR-10 per-file md5s do match the
  published ones); no second source confirms them. If they ever reject the official data,
  this is the place to look. fine_label_names.txt and coarse_label_names.txt have no
  published md5: their content must equal the known class lists (as in the python meta).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from softmax_cls.download import download_file
from softmax_cls.errors import DataError
from softmax_cls.fsutil import fsync_dir

IMAGE_BYTES = 3072  # 3 colour planes (R, G, B) of 32x32, row-major
MIRROR_ENV = "SOFTMAX_CLS_MIRROR"
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

    @property
    def required_files(self) -> tuple[str, ...]:
        return self.names_files + self.train_files + self.test_files


@dataclass(frozen=True, eq=False)
class CifarData:
    """A loaded data set. Images are (N, 3072) uint8, C-contiguous: R plane, G plane, B plane,
    each 32x32 row-major. Labels are (N,) int64 in [0, len(class_names)).
    `fingerprint` maps each file read to its md5."""

    dataset: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    fingerprint: dict[str, str]


def _binary_spec(*, dataset, archive_name, archive_md5, archive_size, folder, train, test, names,
                 count, md5s, class_names, coarse_names=()) -> DatasetSpec:
    """A binary-format spec; exact sizes follow from the record layout and counts."""
    record = (2 if coarse_names else 1) + IMAGE_BYTES
    return DatasetSpec(
        dataset=dataset, fmt="binary", url=_OFFICIAL_BASE + archive_name,
        archive_name=archive_name, archive_md5=archive_md5, archive_size=archive_size,
        folder=folder, files=md5s, train_files=train, test_files=test, names_files=names,
        counts=count, sizes={name: n * record for name, n in count.items()},
        class_names=class_names, coarse_names=coarse_names,
    )


_C10_BIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_C10_PY = tuple(f"data_batch_{i}" for i in range(1, 6))

SPECS: dict[tuple[str, str], DatasetSpec] = {
    ("cifar10", "binary"): _binary_spec(
        dataset="cifar10", archive_name="cifar-10-binary.tar.gz",
        archive_md5="c32a1d4ab5d03f1284b67883e8d87530", archive_size=170_052_171,
        folder="cifar-10-batches-bin", train=_C10_BIN, test=("test_batch.bin",),
        names=("batches.meta.txt",), count=dict.fromkeys((*_C10_BIN, "test_batch.bin"), 10_000),
        md5s={
            "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
            "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
            "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
            "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
            "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
            "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
        },
        class_names=CIFAR10_CLASSES,
    ),
    ("cifar100", "binary"): _binary_spec(
        dataset="cifar100", archive_name="cifar-100-binary.tar.gz",
        archive_md5="03b5dce01913d631647c71ecec9e9cb8", archive_size=168_513_733,
        folder="cifar-100-binary", train=("train.bin",), test=("test.bin",),
        names=("fine_label_names.txt", "coarse_label_names.txt"),
        count={"train.bin": 50_000, "test.bin": 10_000},
        md5s={  # a single public source: rai-project/dldataset vision/cifar100.go (module doc)
            "train.bin": "6172c7755cfe09b2fe270c85cebc1b15",
            "test.bin": "4499cfba6c016c1be1438163640a0898",
        },
        class_names=CIFAR100_FINE_CLASSES, coarse_names=CIFAR100_COARSE_CLASSES,
    ),
    ("cifar10", "python"): DatasetSpec(
        dataset="cifar10", fmt="python", url=_OFFICIAL_BASE + "cifar-10-python.tar.gz",
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
        class_names=CIFAR10_CLASSES,
    ),
    ("cifar100", "python"): DatasetSpec(
        dataset="cifar100", fmt="python", url=_OFFICIAL_BASE + "cifar-100-python.tar.gz",
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
    ),
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


# ---------------------------------------------------------------------------------------------
# Locating, downloading and extracting


def prepare_dataset(dataset: str = "cifar10", root: str | os.PathLike = "data",
                    fmt: str = "binary", *, url: str | None = None,
                    archive: str | os.PathLike | None = None, force: bool = False,
                    download: bool = True, progress: bool = True,
                    spec: DatasetSpec | None = None) -> Path:
    """Make sure a verified copy of the data set exists under `root`; return its folder.

    Uses `root/<spec.folder>`, or `root` itself when it is such a folder, after verifying
    every file. Otherwise extracts `archive`, or `root/<archive_name>`, or (when `download`)
    the archive downloaded from `url` (the archive name is appended when it ends in '/'),
    the `SOFTMAX_CLS_MIRROR` base URL or the official URL into `root/<archive_name>` (kept
    for later re-extraction); the archive md5 and size are checked only for the official URL,
    as mirrors may repack, while every extracted file is always checked. `force`
    re-downloads and re-extracts; the old folder is replaced only once the new one verified.
    `spec`, when given, overrides the (dataset, fmt) lookup.
    Raises DataError (DownloadError for the network) with a one-line message.
    """
    spec = spec or get_spec(dataset, fmt)
    if archive is not None and not Path(archive).is_file():
        raise DataError(f"archive {archive} does not exist or is not a file")
    folder, verified = _locate(spec, Path(root), url=url, archive=archive, force=force,
                               download=download, progress=progress)
    if verified is None:
        _verify_folder(folder, spec)
    return folder


def _locate(spec: DatasetSpec, root: Path, *, url, archive, force, download, progress
            ) -> tuple[Path, dict[str, str] | None]:
    """The data folder, plus its md5s when this call extracted and verified it (else None)."""
    existing = _existing_folder(spec, root)
    if existing is not None and not force:
        return existing, None
    if existing is not None and existing == root:
        raise DataError(
            f"--force cannot replace {root}: it is a folder you pointed at, not one this tool "
            "extracted; point --root at another folder to get a fresh copy"
        )
    archive_path, ours = _obtain_archive(spec, root, url=url, archive=archive, force=force,
                                         download=download, progress=progress)
    verified = _extract_verified(spec, archive_path, root, ours)
    return root / spec.folder, verified


def _existing_folder(spec: DatasetSpec, root: Path) -> Path | None:
    """`root/<spec.folder>` or `root` itself when either holds this data set, else None."""
    nested = root / spec.folder
    if nested.is_dir():
        return nested
    if not root.is_dir():
        return None
    if root.name == spec.folder or _holds_batches(root, spec):
        return root
    for other in SPECS.values():
        if other.folder != spec.folder and (root.name == other.folder
                                            or _holds_batches(root, other)):
            raise DataError(
                f"{root} holds {other.dataset} data in the {other.fmt} format, not "
                f"{spec.dataset} in the {spec.fmt} format; choose the matching dataset and "
                "format, or another --root"
            )
    return None


def _holds_batches(folder: Path, spec: DatasetSpec) -> bool:
    return all(
        (folder / name).is_file() for name in spec.train_files + spec.test_files
    )


def _obtain_archive(spec: DatasetSpec, root: Path, *, url, archive, force, download, progress
                    ) -> tuple[Path, bool]:
    """(archive path, whether this call downloaded it and so may delete it)."""
    if archive is not None:
        path = Path(archive)
        return path, False
    dest = root / spec.archive_name
    if dest.is_file() and not (force and download):
        return dest, False
    if not download:
        raise DataError(
            f"no {spec.dataset} {spec.fmt}-format data in {root} (neither {spec.folder}/ nor "
            f"{spec.archive_name}) and downloading is off; run softmax-download, pass "
            f"--archive PATH to a local {spec.archive_name}, or --url URL of a mirror"
        )
    source = _source_url(spec, url)
    official = source == spec.url  # mirrors may repack: only the official archive's md5 holds
    download_file(source, dest, progress=progress,
                  expected_md5=spec.archive_md5 if official else None,
                  expected_size=spec.archive_size if official else None)
    return dest, True


def _source_url(spec: DatasetSpec, url: str | None) -> str:
    """`url` (archive name appended when it ends in '/'), else the mirror, else official."""
    if url:
        return url + spec.archive_name if url.endswith("/") else url
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + spec.archive_name
    return spec.url


def _extract_verified(spec: DatasetSpec, archive: Path, root: Path, ours: bool
                      ) -> dict[str, str]:
    """Extract into a temporary folder in `root`, verify it, rename it to root/<folder>.

    On a verification failure nothing is left behind, including the archive when `ours`.
    Returns the md5 of every verified file.
    """
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        safe_extract(archive, scratch)
        new = scratch / spec.folder
        if not new.is_dir():
            raise DataError(f"{archive} has no {spec.folder}/ folder: it is not the "
                            f"{spec.dataset} {spec.fmt}-format archive")
        hint = f"the archive {archive} is corrupt or not the official {spec.dataset} data"
        if ours:
            hint += " (deleted it)"
        verified = _verify_folder(new, spec, lambda name: f"{name} in {archive.name}", hint)
        _move_into_place(new, root / spec.folder, scratch)
    except DataError:
        if ours:
            archive.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return verified


def _move_into_place(new: Path, final: Path, scratch: Path) -> None:
    """Rename `new` to `final`; an old `final` is first moved into `scratch` (deleted later)."""
    if final.is_symlink() or final.exists():
        if not final.is_dir():
            raise DataError(f"{final} exists and is not a folder; move it away and retry")
        os.replace(final, scratch / ".replaced")
    os.replace(new, final)
    fsync_dir(final.parent)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> None:
    """Extract the tar archive `archive` (any compression) into the folder `target`.

    Only regular files and folders are extracted, at relative paths without '..'; symbolic
    and hard links, devices, fifos, absolute paths and anything resolving outside `target`
    raise DataError naming the member. Members are checked one by one before each is
    written, so nothing is ever written outside `target`, but on an error `target` may hold
    the members before the bad one: extract into a fresh folder and delete it on failure.
    Files are written with default permissions (the archive's owners and modes are ignored)
    and fsynced.
    """
    archive = Path(archive)
    base = Path(target).resolve()
    base.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                dest = _member_destination(base, member)
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with open(dest, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{archive} is not a readable tar archive: {reason}") from exc
    except OSError as exc:
        raise DataError(f"cannot extract {archive}: {exc.strerror or exc}") from exc


_MEMBER_KINDS = {
    tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
}


def _member_destination(base: Path, member: tarfile.TarInfo) -> Path:
    """Where `member` goes inside `base` (a resolved path); DataError if it is unsafe."""
    name = member.name
    if not (member.isfile() or member.isdir()):
        kind = _MEMBER_KINDS.get(member.type, "not a regular file or folder")
        raise DataError(f"refusing unsafe archive member {name!r}: {kind}")
    if name.startswith(("/", "\\")):
        raise DataError(f"refusing unsafe archive member {name!r}: absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise DataError(f"refusing unsafe archive member {name!r}: '..' in its path")
    dest = base.joinpath(*parts)
    # Defence in depth: a symlink already inside `target` must not lead a write outside it.
    if not dest.resolve().is_relative_to(base):
        raise DataError(f"refusing unsafe archive member {name!r}: it resolves outside {base}")
    if dest == base and not member.isdir():
        raise DataError(f"refusing unsafe archive member {name!r}: empty file name")
    return dest


# ---------------------------------------------------------------------------------------------
# Verifying and reading


def _folder_hint(folder: Path) -> str:
    return (f"the copy in {folder} is damaged: rerun with --force to replace it, or point "
            "--root at a fresh copy")


class _Reader:
    """Reads the files of one data folder whole, checks them, and records each file's md5.

    `verified` holds md5s this process computed moments ago while verifying a fresh
    extraction, so those files are not hashed again. `describe(name)` names a file in error
    messages and `hint` ends them.
    """

    def __init__(self, folder: Path, spec: DatasetSpec, *, verified: dict[str, str] | None = None,
                 describe: Callable[[str], str] | None = None, hint: str = ""):
        self.folder, self.spec = folder, spec
        self.verified = verified or {}
        self.describe = describe or (lambda name: str(folder / name))
        self.hint = hint
        self.fingerprint: dict[str, str] = {}

    def error(self, name: str, problem: str) -> DataError:
        return DataError(f"{self.describe(name)}: {problem}; {self.hint}")

    def read(self, name: str) -> bytes:
        """The bytes of `name`, after checking its exact size and md5 where the spec has them."""
        try:
            blob = (self.folder / name).read_bytes()
        except FileNotFoundError:
            raise self.error(name, "missing") from None
        except OSError as exc:
            raise self.error(name, f"cannot read it ({exc.strerror or exc})") from exc
        size = self.spec.sizes.get(name)
        if size is not None and len(blob) != size:
            raise self.error(name, f"expected {size} bytes, found {len(blob)}")
        digest = self.verified.get(name) or hashlib.md5(blob).hexdigest()
        expected = self.spec.files.get(name)
        if expected is not None and digest != expected:
            raise self.error(name, f"md5 checksum mismatch, expected {expected}, got {digest}")
        self.fingerprint[name] = digest
        return blob

    def check_class_names(self) -> None:
        """Read the class-name file(s) and check them against the spec's class lists."""
        spec = self.spec
        expected_lists = (spec.class_names, spec.coarse_names)
        if spec.fmt == "binary":  # one name per line: fine (or only), then coarse
            found = [(name, _text_lines(self.read(name)), expected)
                     for name, expected in zip(spec.names_files, expected_lists, strict=False)]
        else:  # one pickled dict
            name = spec.names_files[0]
            meta = self.unpickle(name, self.read(name))
            keys = ("fine_label_names", "coarse_label_names") if spec.coarse_names else (
                "label_names",)
            found = [(name, _decode_names(meta.get(key.encode())), expected)
                     for key, expected in zip(keys, expected_lists, strict=False)]
        for name, names, expected in found:
            if names != tuple(expected):
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                raise self.error(name, f"class names ({shown}) differ from the "
                                       f"{len(expected)} known {spec.dataset} classes")

    def batch(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(images, fine labels, coarse labels or None) of one batch file.

        Images are (n, 3072) uint8, possibly a strided read-only view of the file's bytes;
        labels are (n,) integer arrays, range-checked; n = spec.counts[name].
        """
        spec, count = self.spec, self.spec.counts[name]
        blob = self.read(name)
        if spec.fmt == "binary":
            record = spec.label_bytes + IMAGE_BYTES
            if len(blob) != count * record:
                raise self.error(name, f"expected {count * record} bytes, found {len(blob)}")
            records = np.frombuffer(blob, dtype=np.uint8).reshape(count, record)
            # CIFAR-100 records start with (coarse, fine) label bytes
            images, fine = records[:, spec.label_bytes:], records[:, spec.label_bytes - 1]
            coarse = records[:, 0] if spec.coarse_names else None
        else:
            images, fine, coarse = self.python_batch(name, blob, count)
        self.check_range(name, fine, len(spec.class_names))
        if coarse is not None:
            self.check_range(name, coarse, len(spec.coarse_names))
        return images, fine, coarse

    def python_batch(self, name: str, blob: bytes, count: int):
        batch = self.unpickle(name, blob)
        images = batch.get(b"data")
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8
                and images.shape == (count, IMAGE_BYTES)):
            found = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else (
                type(images).__name__)
            raise self.error(name, f"expected a ({count}, {IMAGE_BYTES}) uint8 array under "
                                   f"b'data', found {found}")
        keys = (b"fine_labels", b"coarse_labels") if self.spec.coarse_names else (b"labels",)
        labels = []
        for key in keys:
            values = batch.get(key)
            if not (isinstance(values, list) and len(values) == count
                    and all(type(v) is int for v in values)):
                raise self.error(name, f"expected a list of {count} integer labels under {key}")
            labels.append(np.array(values, dtype=np.int64))
        return images, labels[0], labels[1] if len(labels) > 1 else None

    def unpickle(self, name: str, blob: bytes) -> dict:
        try:
            obj = restricted_unpickle(io.BytesIO(blob))
        except DataError as exc:
            raise self.error(name, str(exc)) from None
        if not isinstance(obj, dict):
            raise self.error(name, f"expected a pickled dict, found {type(obj).__name__}")
        return obj

    def check_range(self, name: str, labels: np.ndarray, num_classes: int) -> None:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise self.error(name, f"label {bad[0]} out of range 0..{num_classes - 1}")


def _text_lines(blob: bytes) -> tuple[str, ...]:
    return tuple(line.strip() for line in blob.decode("latin-1").splitlines() if line.strip())


def _decode_names(names) -> tuple[str, ...]:
    if not isinstance(names, list):
        return ()
    return tuple(n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names)


def _verify_folder(folder: Path, spec: DatasetSpec,
                   describe: Callable[[str], str] | None = None, hint: str = "") -> dict[str, str]:
    """Check every required file: exact size, md5, class names, shapes and label ranges.

    Files are read one at a time. Returns {file name: md5}; raises DataError on a problem.
    """
    reader = _Reader(folder, spec, describe=describe, hint=hint or _folder_hint(folder))
    reader.check_class_names()
    for name in spec.train_files + spec.test_files:
        reader.batch(name)
    return reader.fingerprint


def _check_label_choice(spec: DatasetSpec, labels: str) -> None:
    if labels not in ("fine", "coarse"):
        raise DataError(f"unknown label set {labels!r}: choose fine or coarse")
    if labels == "coarse" and not spec.coarse_names:
        raise DataError(f"{spec.dataset} has no coarse labels; use labels=fine")


def load_dataset(dataset: str = "cifar10", root: str | os.PathLike = "data",
                 fmt: str = "binary", *, url: str | None = None,
                 archive: str | os.PathLike | None = None, labels: str = "fine",
                 force: bool = False, download: bool = True, progress: bool = True,
                 spec: DatasetSpec | None = None) -> CifarData:
    """Locate (see `prepare_dataset`), verify and read the whole data set.

    Every file is read once into memory, hashed (unless this call just verified it during
    extraction), checked, and copied once into the result. `labels` picks CIFAR-100's
    "fine" (100 classes) or "coarse" (20 superclasses) labels. Returns CifarData with images
    (N, 3072) uint8 C-contiguous and labels (N,) int64.
    """
    spec = spec or get_spec(dataset, fmt)
    _check_label_choice(spec, labels)
    folder, verified = _locate(spec, Path(root), url=url, archive=archive, force=force,
                               download=download, progress=progress)
    reader = _Reader(folder, spec, verified=verified, hint=_folder_hint(folder))
    reader.check_class_names()
    train_images, train_labels = _read_split(reader, spec.train_files, labels)
    test_images, test_labels = _read_split(reader, spec.test_files, labels)
    return CifarData(
        dataset=spec.dataset,
        class_names=spec.coarse_names if labels == "coarse" else spec.class_names,
        train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels, fingerprint=reader.fingerprint,
    )


def _read_split(reader: _Reader, names: tuple[str, ...], labels: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batch files: images (N, 3072) uint8 C-contiguous, labels (N,) int64."""
    total = sum(reader.spec.counts[name] for name in names)
    images = np.empty((total, IMAGE_BYTES), dtype=np.uint8)
    targets = np.empty(total, dtype=np.int64)
    start = 0
    for name in names:
        batch_images, fine, coarse = reader.batch(name)
        stop = start + len(batch_images)
        images[start:stop] = batch_images
        targets[start:stop] = coarse if labels == "coarse" else fine
        start = stop
    return images, targets


# ---------------------------------------------------------------------------------------------
# Restricted unpickling


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Everything a CIFAR python-format file may name; the files need no builtins at all.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name}: CIFAR files hold only numpy arrays, "
                "lists and strings"
            ) from None

    def persistent_load(self, pid):
        raise DataError("refusing to unpickle a persistent id")


def restricted_unpickle(fileobj) -> object:
    """Load one pickle from the binary file object `fileobj`, admitting only numpy arrays.

    Python 2 pickles are read with encoding="bytes", so their str keys and values come back
    as bytes (b"data", b"labels"). Any global other than numpy's array reconstruction,
    ndarray and dtype raises DataError, as does a malformed pickle.
    """
    try:
        obj = _CifarUnpickler(fileobj, encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # a malformed pickle can raise almost anything
        raise DataError(f"not a valid CIFAR pickle ({type(exc).__name__}: {exc})") from None
    return obj

