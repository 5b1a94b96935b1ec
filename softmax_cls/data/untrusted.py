"""Untrusted files: tar archives extracted safely, and pickles restricted to numpy arrays.

Each function here reads input that may be hostile (a downloaded archive, a batch file from
a mirror) and refuses anything outside what CIFAR files need, with a DataError naming it.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from softmax_cls.errors import DataError
from softmax_cls.text import shorten

DEFAULT_MEMBER_CAP = 1 << 30  # bytes of any one member whose size the caller does not know
DEFAULT_TOTAL_CAP = 4 << 30  # bytes of the whole (decompressed) tar stream
MAX_MEMBERS = 1000
NAME_CHARS = 80  # the most of a member name (or a reason) a message quotes
MAX_READ = 16 << 20  # tarfile reads pax records and long names whole; member data in 1 MB


class _BoundedStream(io.RawIOBase):
    """A read-only view of a (decompressing) stream that refuses to go past `limit` bytes.

    tarfile reads headers, long names and pax records whole, at sizes the archive declares;
    refusing a read or seek past `limit` *before* doing it bounds both the memory and the
    decompression work a hostile archive can cause.
    """

    def __init__(self, raw, limit: int, archive: Path):
        self.raw, self.limit, self.archive, self.position = raw, limit, archive, 0

    def _check(self, end: int) -> None:
        if end > self.limit:
            raise DataError(f"{self.archive.name} expands to more than {self.limit} bytes, more "
                            "than this data set's archive")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.limit + 1 - self.position
        self._check(self.position + size if size else self.position)
        if size > MAX_READ:
            raise DataError(f"{self.archive.name} holds a tar header record of {size} bytes")
        data = self.raw.read(size)
        self.position += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self.position + offset}.get(whence)
        if target is None:
            raise OSError("seeking from the end is not supported")
        self._check(target)
        self.position = self.raw.seek(target)
        return self.position


def _decompressed(handle) -> object:
    """A file object of the tar stream inside `handle` (gzip, bzip2, xz or plain tar)."""
    magic = handle.read(6)
    handle.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=handle, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(handle, mode="rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(handle, mode="rb")
    return handle


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike, *,
                 sizes: dict[str, int] | None = None, member_cap: int = DEFAULT_MEMBER_CAP,
                 total_cap: int = DEFAULT_TOTAL_CAP) -> None:
    """Extract the tar archive `archive` (gzip, bzip2, xz or none) into the folder `target`.

    Only regular files and folders are extracted, at relative paths without '..'; symbolic
    and hard links, devices, fifos, absolute paths and anything resolving outside `target`
    raise DataError naming the member. Members are checked one by one before each is
    written, so nothing is ever written outside `target`, but on an error `target` may hold
    the members before the bad one: extract into a fresh folder and delete it on failure.

    Bounded work: a member listed in `sizes` (its path in the archive, e.g.
    "cifar-10-batches-bin/data_batch_1.bin", -> exact bytes) must have exactly that size and
    any other member at most `member_cap` bytes, checked from its header before a byte of it
    is read; the decompressed stream is never read past `total_cap` bytes; at most
    MAX_MEMBERS members. Files are written with default permissions (the archive's owners
    and modes are ignored) and fsynced.
    """
    archive = Path(archive)
    base = Path(target).resolve()
    base.mkdir(parents=True, exist_ok=True)
    sizes = sizes or {}
    try:
        with open(archive, "rb") as handle, _decompressed(handle) as stream, tarfile.open(
                fileobj=_BoundedStream(stream, total_cap, archive), mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise DataError(f"{archive} has more than {MAX_MEMBERS} members; refusing it")
                dest = _member_destination(base, member)
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                _check_member_size(archive, member, sizes, member_cap)
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with open(dest, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        reason = shorten(" ".join(str(exc).split()), 100)
        raise DataError(f"{archive} is not a readable tar archive: {reason}") from exc
    except OSError as exc:
        if exc.errno is None:  # what gzip, bz2 and lzma raise for a damaged stream
            raise DataError(f"{archive} is not a readable tar archive: "
                            f"{shorten(str(exc), NAME_CHARS)}") from exc
        where = f" into {target}" if exc.filename is None else f" ({exc.filename})"
        raise DataError(f"cannot extract {archive}{where}: {exc.strerror or exc}") from exc


def _check_member_size(archive: Path, member: tarfile.TarInfo, sizes: dict[str, int],
                       cap: int) -> None:
    """DataError unless the member's declared size is its known size, or at most `cap`."""
    name = "/".join(PurePosixPath(member.name).parts)
    expected = sizes.get(name)
    shown = shorten(member.name, NAME_CHARS)
    if expected is not None and member.size != expected:
        raise DataError(f"{shown} in {archive.name}: expected {expected} bytes, found "
                        f"{member.size}")
    if expected is None and member.size > cap:
        raise DataError(f"{shown} in {archive.name}: {member.size} bytes, at most {cap} "
                        "expected")


_MEMBER_KINDS = {
    tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
}


def _member_destination(base: Path, member: tarfile.TarInfo) -> Path:
    """Where `member` goes inside `base` (a resolved path); DataError if it is unsafe."""
    name = shorten(member.name, NAME_CHARS)  # for messages only: the path is member.name
    if not (member.isfile() or member.isdir()):
        kind = _MEMBER_KINDS.get(member.type, "not a regular file or folder")
        raise DataError(f"refusing unsafe archive member {name!r}: {kind}")
    if member.name.startswith(("/", "\\")):
        raise DataError(f"refusing unsafe archive member {name!r}: absolute path")
    parts = PurePosixPath(member.name).parts
    if ".." in parts:
        raise DataError(f"refusing unsafe archive member {name!r}: '..' in its path")
    dest = base.joinpath(*parts)
    # Defence in depth: a symlink already inside `target` must not lead a write outside it.
    if not dest.resolve().is_relative_to(base):
        raise DataError(f"refusing unsafe archive member {name!r}: it resolves outside {base}")
    if dest == base and not member.isdir():
        raise DataError(f"refusing unsafe archive member {name!r}: empty file name")
    return dest


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
        raise DataError(f"not a valid CIFAR pickle ({type(exc).__name__}: "
                        f"{shorten(str(exc), NAME_CHARS)})") from None
    return obj
