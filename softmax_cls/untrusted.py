"""Untrusted files: tar archives extracted safely, and pickles restricted to numpy arrays.

Each function here reads input that may be hostile (a downloaded archive, a batch file from
a mirror) and refuses anything outside what CIFAR files need, with a DataError naming it.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from softmax_cls.errors import DataError


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
