"""Small, valid CIFAR archives in both formats, with DatasetSpecs carrying their real md5s.

    fake = make_fake("cifar100", "python")
    path = fake.write(tmp_path / fake.spec.archive_name)
    data = load_dataset(root=tmp_path / "data", archive=path, spec=fake.spec, progress=False)
    assert (data.train_images == fake.train_images).all()

The layout follows the official archives: a top folder holding the batch files and the
class-name file(s), plus a readme.html. Binary batches are label byte(s) + 3072 pixel bytes
per record; python-format batches are Python 2 pickles (every str an 8-bit string, so they
load as bytes under encoding="bytes", numpy arrays through `_reconstruct`), as cPickle wrote.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softmax_cls.data.datasets import IMAGE_BYTES, DatasetSpec, get_spec

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

# Records per batch file: small, distinct, so a mix-up of files or offsets shows.
COUNTS = {
    ("cifar10", "binary"): {"data_batch_1.bin": 30, "data_batch_2.bin": 20, "test_batch.bin": 25},
    ("cifar10", "python"): {"data_batch_1": 30, "data_batch_2": 20, "test_batch": 25},
    ("cifar100", "binary"): {"train.bin": 40, "test.bin": 24},
    ("cifar100", "python"): {"train": 40, "test": 24},
}
# The module the pickles name for numpy's array reconstruction: the Python 2 era name for
# CIFAR-10 (as in the real files), numpy 2's name for CIFAR-100, so both paths are exercised.
NUMPY_MODULE = {"cifar10": "numpy.core.multiarray", "cifar100": "numpy._core.multiarray"}


@dataclass(frozen=True, eq=False)
class FakeCifar:
    """A generated archive, its spec, its files, and the arrays a loader must return.

    Images are (N, 3072) uint8; labels (N,) int64; coarse labels are None for CIFAR-10.
    """

    archive: bytes
    spec: DatasetSpec
    members: dict[str, bytes]  # file name inside spec.folder -> content
    train_images: np.ndarray
    train_fine: np.ndarray
    train_coarse: np.ndarray | None
    test_images: np.ndarray
    test_fine: np.ndarray
    test_coarse: np.ndarray | None

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.archive)
        return path


def make_fake(dataset: str = "cifar10", fmt: str = "binary", *, seed: int = 0,
              url: str | None = None, replace: dict[str, bytes] | None = None,
              compresslevel: int = 6) -> FakeCifar:
    """Generate a fake `dataset` archive in `fmt`, deterministic in `seed`.

    `replace` swaps the content of named files before the archive and the spec's md5s (and
    python-format sizes) are computed, so a test can plant a bad file the checksums accept.
    Binary sizes always follow from the record counts, as in the real specs. `url` becomes
    spec.url (the "official" URL); `compresslevel` changes the archive bytes, not the files.
    """
    base = get_spec(dataset, fmt)
    counts = COUNTS[dataset, fmt]
    train_names, test_names = tuple(counts)[:-1], tuple(counts)[-1:]
    rng = np.random.default_rng(seed)
    arrays = {}
    members = {}
    for name, count in counts.items():
        images = rng.integers(0, 256, (count, IMAGE_BYTES), dtype=np.uint8)
        fine = rng.integers(0, len(base.class_names), count).astype(np.int64)
        coarse = rng.integers(0, 20, count).astype(np.int64) if base.coarse_names else None
        arrays[name] = (images, fine, coarse)
        encode = _binary_batch if fmt == "binary" else _python_batch
        members[name] = encode(name, images, fine, coarse, NUMPY_MODULE[dataset])
    members.update(_names_files(base))
    members.update(replace or {})

    archive = tar_gz(
        [(base.folder + "/", None), (f"{base.folder}/readme.html", b"<html>fake</html>\n")]
        + [(f"{base.folder}/{name}", content) for name, content in members.items()],
        compresslevel=compresslevel,
    )
    md5s = {name: hashlib.md5(content).hexdigest() for name, content in members.items()
            if name in counts or name in base.files}
    if fmt == "binary":
        record = base.label_bytes + IMAGE_BYTES
        sizes = {name: count * record for name, count in counts.items()}
    else:
        sizes = {name: len(members[name]) for name in counts}
    spec = dataclasses.replace(
        base, url=url or base.url, archive_md5=hashlib.md5(archive).hexdigest(),
        archive_size=len(archive), files=md5s, train_files=train_names, test_files=test_names,
        counts=dict(counts), sizes=sizes,
    )

    def split(names, part):
        columns = [arrays[name][part] for name in names]
        return None if columns[0] is None else np.concatenate(columns)

    return FakeCifar(
        archive=archive, spec=spec, members=members,
        train_images=split(train_names, 0), train_fine=split(train_names, 1),
        train_coarse=split(train_names, 2), test_images=split(test_names, 0),
        test_fine=split(test_names, 1), test_coarse=split(test_names, 2),
    )


def _binary_batch(name, images, fine, coarse, numpy_module) -> bytes:
    labels = [fine] if coarse is None else [coarse, fine]  # CIFAR-100: coarse byte first
    columns = [label.astype(np.uint8)[:, None] for label in labels] + [images]
    return np.concatenate(columns, axis=1).tobytes()


def _python_batch(name, images, fine, coarse, numpy_module) -> bytes:
    batch = {"batch_label": f"fake batch {name}", "data": images,
             "filenames": [f"img_{i:05d}.png" for i in range(len(images))]}
    if coarse is None:
        batch["labels"] = fine.tolist()
    else:
        batch["fine_labels"], batch["coarse_labels"] = fine.tolist(), coarse.tolist()
    return python2_pickle(batch, numpy_module)


def _names_files(spec: DatasetSpec) -> dict[str, bytes]:
    if spec.fmt == "binary":
        lists = (spec.class_names, spec.coarse_names)
        # the official .txt files end with a blank line; readers must not mind
        return {name: ("\n".join(names) + "\n\n").encode()
                for name, names in zip(spec.names_files, lists, strict=False)}
    if spec.coarse_names:
        meta = {"fine_label_names": list(spec.class_names),
                "coarse_label_names": list(spec.coarse_names)}
    else:
        meta = {"num_cases_per_batch": 10000, "label_names": list(spec.class_names),
                "num_vis": IMAGE_BYTES}
    return {spec.names_files[0]: python2_pickle(meta, "numpy.core.multiarray")}


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote it: str (and bytes) as 8-bit strings."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, numpy_module: str):
        super().__init__(file, protocol=2)
        self.numpy_module = numpy_module

    def save_string8(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_string8
    dispatch[bytes] = save_string8

    def save_global(self, obj, name=None):
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + f"{self.numpy_module}\n_reconstruct\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def python2_pickle(obj, numpy_module: str = "numpy.core.multiarray") -> bytes:
    """`obj` pickled the way the CIFAR python-format files were (see _Python2Pickler)."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, numpy_module).dump(obj)
    return buffer.getvalue()


def tar_gz(entries, *, compresslevel: int = 6) -> bytes:
    """A .tar.gz of `entries`: (name, bytes) for files, (name, None) for folders, or
    (TarInfo, bytes | None) for anything else (links, devices, odd names)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry, content in entries:
            if isinstance(entry, tarfile.TarInfo):
                info = entry
            else:
                info = tarfile.TarInfo(entry.rstrip("/"))
                info.type = tarfile.DIRTYPE if content is None else tarfile.REGTYPE
                info.mode = 0o755 if content is None else 0o644
            info.mtime = 1_600_000_000
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return gzip.compress(buffer.getvalue(), compresslevel=compresslevel, mtime=0)
