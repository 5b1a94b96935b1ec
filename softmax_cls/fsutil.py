"""Atomic file writes (a reader sees the old file or the new one, never half of one),
folder locks (one process at a time writes a run folder or prepares a data root), and the
md5 checksums of data files.

A write that fails (a full disk, a read-only folder) raises OSError naming the file the user
asked for, never the temporary name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

HASH_BLOCK = 1 << 20  # bytes read at a time to hash a file
HASH_PROGRESS_BYTES = 64 << 20  # files this large show a progress bar while hashed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    On any exception (KeyboardInterrupt included) the temporary file is removed and
    `path` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _naming(exc, path) from None
    tmp_name = str(tmp_name)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp's 0600 would differ from open()'s mode
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and exc.filename in (None, tmp_name):
            raise _naming(exc, path) from None
        raise
    fsync_dir(path.parent)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error, about `path` (the file the user asked for) instead of a temporary name.

    An error creating the temporary file means the folder cannot be written: it is named too.
    """
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"cannot write in {path.parent}: {reason}"
    return type(exc)(exc.errno, reason, str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FolderBusy(OSError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: bool,
                on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (flock on `folder/.lock`, created as needed).

    The kernel releases it when the process ends, however it ends, so a lock is never stale.
    With `wait`, block until the holder is done (calling `on_wait(holder)` first); without,
    raise FolderBusy. `holder` describes the holding process ("process 1234") as it wrote
    itself into the lock file. The folder is created if needed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise FolderBusy(errno.EBUSY, f"in use by {holder}", str(folder)) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return text if text.startswith("process ") and text[8:].isdigit() else "another process"


def md5_hash(data: bytes = b""):
    """A hashlib md5 object fed `data`: a checksum of data files, not security (so it also
    works where FIPS mode forbids md5 for security)."""
    return hashlib.md5(data, usedforsecurity=False)


def file_md5(path: str | os.PathLike, progress: bool = False) -> str:
    """The md5 hex digest of a file, read HASH_BLOCK bytes at a time; with `progress`, a bar
    on stderr for a file of HASH_PROGRESS_BYTES or more."""
    path = Path(path)
    digest = md5_hash()
    size = path.stat().st_size
    with path.open("rb") as handle, tqdm(total=size, unit="B", unit_scale=True,
                                         desc=f"md5 {path.name}",
                                         disable=not progress or size < HASH_PROGRESS_BYTES
                                         ) as bar:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()
