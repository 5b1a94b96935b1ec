"""Atomic file writes (a reader sees the old file or the new one, never half of one),
folder locks (one process at a time writes a run folder or prepares a data root), and the
md5 checksums of data files.

A write that fails (a full disk, a read-only folder) raises OSError naming the file the user
asked for, never the temporary name.

Folders may be shared: anyone who can write a run folder or a data root can plant a symbolic
link (or a hard link, a fifo) under a name this tool writes. So a file that is written in
place (a lock, a download's part) is opened by open_own_file, which never follows a link and
refuses anything but a regular file with a single name; every other file is written to a
fresh temporary file and renamed, and a rename replaces a link without following it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from .errors import DataError, SoftmaxClsError

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
        make_folder(path.parent)
    except FileExistsError:
        raise  # names what holds the folder's name
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _naming(exc, path) from None
    tmp_name = str(tmp_name)
    try:
        # mkstemp's 0600 would differ from open()'s mode; fchmod, since the name could be
        # swapped for a link by the time chmod(name) looked it up
        os.fchmod(fd, 0o666 & ~_umask())
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


def make_folder(folder: Path) -> None:
    """mkdir -p `folder`. Where a file, a link to nothing or a link to a file holds its name
    (or a parent's), FileExistsError names it and says what it is (mkdir's own "File exists"
    did not)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        blocker = next((p for p in (folder, *folder.parents)
                        if os.path.lexists(p) and not p.is_dir()), folder)
        if not blocker.is_symlink():
            reason = "is a file, not a folder"
        elif os.path.exists(blocker):  # a link to a file (a loop "exists" not: no target)
            reason = f"is a link to {os.readlink(blocker)}, a file, not a folder"
        else:
            reason = f"is a link to {os.readlink(blocker)}, which does not exist"
        raise FileExistsError(errno.EEXIST, reason, str(blocker)) from None


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
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class NotOwnFile(OSError):
    """A path this tool writes in place holds a link, a fifo, a device or a folder."""


def open_own_file(path: str | os.PathLike, flags: int) -> int:
    """os.open(path, flags) for a file this tool writes in place; the descriptor is returned.

    A symbolic link at `path` is not followed, and anything but a regular file with one name
    (a fifo, a device, a folder, a file with other hard links) is refused before a byte is
    read or written: NotOwnFile, an OSError naming `path`. Files are created with mode 0666
    less the umask. Pass no O_TRUNC (it would act before the check): truncate the returned
    descriptor.
    """
    if flags & os.O_TRUNC:
        raise ValueError("open_own_file: truncate the returned descriptor instead of O_TRUNC")
    try:  # O_NONBLOCK: opening a fifo must not wait for a writer before it can be refused
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotOwnFile(errno.ELOOP, "is a symbolic link, not a file this tool made; "
                             "refusing to follow it (remove it and retry)", str(path)) from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise NotOwnFile(exc.errno, "is not a regular file; refusing it (remove it and "
                             "retry)", str(path)) from None
        raise
    info = os.fstat(fd)
    problem = (None if stat.S_ISREG(info.st_mode) and info.st_nlink == 1
               else "is not a regular file" if not stat.S_ISREG(info.st_mode)
               else f"is a file with {info.st_nlink} names (hard links)")
    if problem is not None:
        os.close(fd)
        raise NotOwnFile(errno.EPERM, f"{problem}, not a file this tool made; refusing it "
                         "(remove it and retry)", str(path))
    os.set_blocking(fd, True)
    return fd


class FolderBusy(OSError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: bool,
                on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (flock on `folder/.lock`, created as needed).

    The kernel releases it when the process ends, however it ends, so a lock is never stale.
    With `wait`, block until the holder is done (calling `on_wait(holder)` first); without,
    raise FolderBusy. `holder` describes the holding process ("process 1234") as it wrote
    itself into the lock file. The folder is created if needed. A `.lock` that is a link or
    not a regular file raises NotOwnFile (see open_own_file): the holder's pid is written
    into it.
    """
    folder = Path(folder)
    make_folder(folder)
    lock_path = folder / ".lock"
    fd = open_own_file(lock_path, os.O_RDWR | os.O_CREAT)
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


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def removed_on_error(created: list[Path]) -> Iterator[None]:
    """Remove the folders `created` (deepest first) when the block fails and they hold
    nothing but a folder_lock's lock file that no process holds: a failed command leaves no
    folder behind, and a folder another command made meanwhile and locked is its own."""
    try:
        yield
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                names = [p.name for p in folder.iterdir()]
                if names == [".lock"] and _held(folder / ".lock"):
                    continue  # (a command refused as busy removed the holder's new folder)
                if names in ([], [".lock"]):
                    (folder / ".lock").unlink(missing_ok=True)
                folder.rmdir()
        raise


def _held(lock_path: Path) -> bool:
    """Whether some process holds the folder_lock of the file `lock_path` now."""
    fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


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


NOT_REGULAR = "not a regular file (a pipe, a device or a socket)"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a regular file, from a stat alone (a link is followed;
    nothing is opened, so a pipe never blocks): "not found", "a folder", NOT_REGULAR, or
    the OS's reason; None for a regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISDIR(info.st_mode):
        return "a folder"
    return None if stat.S_ISREG(info.st_mode) else NOT_REGULAR


def require_file(path: str | os.PathLike, missing: str, named: str,
                 error: type[SoftmaxClsError] = DataError) -> None:
    """Return when `path` is a regular file (file_problem is None); else raise `error`:
    `missing` when nothing is there, f"{named}: {why}" for a folder, a pipe, a device or an
    OS error. Nothing is opened."""
    problem = file_problem(path)
    if problem == "not found":
        raise error(missing)
    if problem is not None:
        raise error(f"{named}: {problem}")


class FileTooLarge(OSError):
    """A file larger than the reader's cap; nothing of it was read."""


def open_regular(path: str | os.PathLike, buffering: int = -1) -> IO[bytes]:
    """The regular file `path` (a link to one is followed) open for binary reading, checked
    on the opened descriptor: a folder raises IsADirectoryError, anything else but a regular
    file OSError(EINVAL) NOT_REGULAR, both naming `path`. Opened without waiting, so a fifo
    (put where a file was checked a moment before) is refused, not waited on for ever.
    `buffering` as open()'s (0: unbuffered)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, NOT_REGULAR, str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: str | os.PathLike, cap: int) -> bytes:
    """The bytes of the regular file `path` (a link to one is followed), at most `cap`.

    Checked before a byte is read: a folder raises IsADirectoryError, anything else but a
    regular file (a fifo, which would block forever, a device) OSError(EINVAL), a file of
    more than `cap` bytes FileTooLarge (EFBIG); all name `path` (open_regular). A file that
    grows while it is read is refused the same way.
    """
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > cap:
            raise FileTooLarge(errno.EFBIG, f"{size} bytes, more than the {cap} this file "
                               "may have", str(path))
        blob = handle.read(cap + 1)
    if len(blob) > cap:
        raise FileTooLarge(errno.EFBIG, f"more than the {cap} bytes this file may have",
                           str(path))
    return blob


def read_text_file(path: str | os.PathLike, cap: int) -> str:
    """The UTF-8 text of a file this tool wrote (history.jsonl, summary.json, trials.csv,
    sweep.yaml) by read_capped; any problem is a DataError naming the file."""
    try:
        return read_capped(path, cap).decode("utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from None
