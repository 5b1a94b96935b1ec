"""Hostile feature files: members and label files whose npy headers declare gigabytes, and a
one-label mismatch beside a file that takes long to hash. Each is refused from the headers,
in one error line, in bounded time and memory, before a byte of data is read or hashed."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_features import linear_data, write_config
from test_hostile import HOSTILE_RSS_MB, one_line, run_measured

N = 300  # rows of X in every file here
QUICK_S = 8  # seconds a refusal may take, start-up included (hashing 8 GB takes longer)


def npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_bomb_npz(path: Path, y_shape: tuple[int, ...], y_descr: str) -> None:
    """An .npz with X (N, 4) stored and a deflated y.npy member whose header declares
    `y_shape` `y_descr` followed by that many bytes of zeros (about 1 MB per GB)."""
    X, _ = linear_data(n=N, d=4)
    with zipfile.ZipFile(path, "w") as archive:
        buffer = io.BytesIO()
        np.save(buffer, X)
        archive.writestr("X.npy", buffer.getvalue(), zipfile.ZIP_STORED)
        info = zipfile.ZipInfo("y.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            member.write(npy_header(y_shape, y_descr))
            left = int(np.prod(y_shape)) * np.dtype(y_descr).itemsize
            zeros = bytes(64 << 20)
            while left:
                member.write(zeros[:min(left, len(zeros))])
                left -= min(left, len(zeros))


def refused(tmp_path: Path, train: Path, *needles: str, test: Path | None = None) -> None:
    config = write_config(tmp_path, train=str(train), test=None if test is None else str(test))
    result = run_measured("softmax-train", "--config", str(config), "--quiet")
    one_line(result, 1, *needles)
    assert result.peak_mb < HOSTILE_RSS_MB, result.peak_mb
    assert result.seconds < QUICK_S, result.seconds
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("y_shape, y_descr, phrase", [
    ((125_000_000,), "<i8", f"X has {N} rows but y has 125000000 labels"),  # 1 GB of labels
    ((N,), "<U1000000", "4000000 bytes each"),  # N labels of 4 MB each: 1.2 GB
])
def test_npz_whose_y_inflates_to_gigabytes_is_refused_from_its_header(tmp_path, y_shape,
                                                                      y_descr, phrase):
    train = tmp_path / "train.npz"
    write_bomb_npz(train, y_shape, y_descr)
    assert train.stat().st_size < 3 << 20
    refused(tmp_path, train, phrase)


def test_npz_whose_y_header_understates_its_member_is_refused(tmp_path):
    """A y.npy member of N labels that the zip index says inflates to 1 GB."""
    X, y = linear_data(n=N, d=4)
    train = tmp_path / "train.npz"
    with zipfile.ZipFile(train, "w") as archive:
        buffer = io.BytesIO()
        np.save(buffer, X)
        archive.writestr("X.npy", buffer.getvalue())
        info = zipfile.ZipInfo("y.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            member.write(npy_header((N,), "<i8"))
            member.write(y.astype("<i8").tobytes())
            member.write(bytes(1 << 30))
    refused(tmp_path, train, "y.npy declares shape (300,) int64, which does not fit")


def test_sparse_gigabytes_of_labels_beside_a_small_X_are_refused_from_the_header(tmp_path):
    X, _ = linear_data(n=N, d=4)
    np.save(tmp_path / "X.npy", X)
    n_labels = 500_000_000  # 4 GB of int64, a sparse file
    with (tmp_path / "y.npy").open("wb") as handle:
        handle.write(npy_header((n_labels,), "<i8"))
        handle.truncate(handle.tell() + n_labels * 8)
    refused(tmp_path, tmp_path / "X.npy", f"X has {N} rows but y has {n_labels} labels")


def big_sparse_X(path: Path) -> int:
    """An 8 GB sparse float32 X.npy of zeros (2**21 rows, 1024 features); returns its rows."""
    rows, features = 1 << 21, 1024
    with path.open("wb") as handle:
        handle.write(npy_header((rows, features), "<f4"))
        handle.truncate(handle.tell() + rows * features * 4)
    return rows


@pytest.mark.parametrize("where", ["train", "test"])
def test_a_label_count_mismatch_is_reported_before_any_file_is_hashed(tmp_path, where):
    """Hashing (or scanning) 8 GB takes far longer than QUICK_S."""
    rows = big_sparse_X(tmp_path / "X.npy")
    labels = np.arange(rows) % 2
    if where == "train":
        np.save(tmp_path / "y.npy", labels[:-1])
        refused(tmp_path, tmp_path / "X.npy", f"X has {rows} rows but y has {rows - 1} labels")
    else:
        np.save(tmp_path / "y.npy", labels)
        np.savez(tmp_path / "test.npz", X=np.zeros((5, 1024), np.float32), y=labels[:4])
        refused(tmp_path, tmp_path / "X.npy", "X has 5 rows but y has 4 labels",
                test=tmp_path / "test.npz")


@pytest.mark.parametrize("method, data, needles", [
    (zipfile.ZIP_DEFLATED, b"\x00garbage" * 10, ("y is not a valid .npy", "decompressing")),
    (zipfile.ZIP_LZMA, b"\x09\x14\x05\x00" + b"\xff" * 5 + b"garbage" * 20,
     ("y is not a valid .npy", "options")),
    (zipfile.ZIP_DEFLATED, "header", ("y cannot be read", "decompressing")),
    (99, b"\x00garbage" * 10, ("not a valid .npz", "compression method")),
    (zipfile.ZIP_STORED, None, ("y is encrypted",)),
], ids=["deflate", "lzma", "deflate-after-header", "method-99", "encrypted"])
def test_npz_whose_y_member_is_damaged_or_encrypted_is_one_line(tmp_path, method, data,
                                                                 needles):
    """y's deflated or LZMA data damaged (zlib.error, LZMAError), compressed by a method
    zipfile lacks (NotImplementedError) or flagged encrypted (RuntimeError): each printed
    a traceback from softmax-train."""
    import zlib

    from test_safety import with_encryption_flag, zip_with_deflated

    X, y = linear_data(n=N, d=4)
    members = {}
    for name, array in (("X.npy", X), ("y.npy", y)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        raw = buffer.getvalue()
        members[name] = raw, zlib.crc32(raw), len(raw), zipfile.ZIP_STORED
    if data == "header":  # y's header and first 64 KB inflate, the rest is damaged
        letters = np.random.default_rng(0).integers(97, 123, (N, 100), np.uint8)
        buffer = io.BytesIO()
        np.save(buffer, np.array([bytes(row).decode() for row in letters]))
        raw = buffer.getvalue()
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = compressor.compress(raw[:65536]) + compressor.flush(zlib.Z_FULL_FLUSH)
        data += b"\xff" * 64
        members["y.npy"] = raw, 0, len(raw), method
    if data is not None:
        members["y.npy"] = data, 0, members["y.npy"][2], method
    content = zip_with_deflated(members)
    train = tmp_path / "train.npz"
    train.write_bytes(content if data is not None else with_encryption_flag(content))
    refused(tmp_path, train, "train.npz", *needles)
