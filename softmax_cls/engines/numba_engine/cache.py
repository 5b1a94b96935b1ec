"""Where numba keeps the engine's compiled code, settled before any of it is defined, and what
happens when it cannot keep it.

Compiled code is cached on disk (cache=True): in the package's __pycache__ when that folder is
writable, else in NUMBA_CACHE_DIR, which this module sets to $XDG_CACHE_HOME/softmax-cls/numba
(~/.cache/softmax-cls/numba) when it is unset. numba fixes a function's cache folder when the
function is decorated, so every module of the engine takes its `njit` from here: importing
it settles the folder first. Importing this module without numba installed raises ImportError.

numba keys a kernel's cache entry on its own source file only, so a kernel whose helpers live
in another module (entry.py calling step.py calling gather.py) would load its stale machine
code after an edit of only the helper's file (a branch switch, an upgrade of one file).
RecoveringCache therefore adds SOURCE_DIGEST, a digest of every module of the engine, to
each index's source stamp: a change to any of them makes every index stale, and each kernel
recompiles (and is cached afresh, in place) on its next use.

The cache is a convenience, never a reason to fail: where numba finds no writable folder at
all, the kernels compile in memory for this process only; where a cache file is unreadable
(truncated, garbled, written by something else), its index is removed and the kernel
recompiles (and is cached afresh). Each says so in one line on stderr, once per process.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def cache_dir_for_numba() -> None:
    """Point NUMBA_CACHE_DIR at a writable per-user folder when the package folder is not
    writable and the user chose none (numba would else fail to cache, or warn)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    package = Path(__file__).resolve().parent
    if os.access(package, os.W_OK) and (not (package / "__pycache__").exists()
                                        or os.access(package / "__pycache__", os.W_OK)):
        return
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = Path(base) / "softmax-cls" / "numba"
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    if "numba" in sys.modules:  # numba read its config already: tell it directly
        sys.modules["numba"].config.CACHE_DIR = str(folder)


cache_dir_for_numba()


def source_digest(folder: Path) -> str:
    """sha256 hex digest of the names and contents of the *.py files of `folder`, in name
    order (a file that cannot be read counts by its name and error)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        try:
            content = path.read_bytes()
        except OSError as exc:
            content = type(exc).__name__.encode()
        digest.update(f"{path.name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


SOURCE_DIGEST = source_digest(Path(__file__).resolve().parent)  # the kernels' source files

import numba  # noqa: E402  (after the cache location is settled)

from ...text import shorten  # noqa: E402

try:
    from numba.core.caching import FunctionCache
except ImportError:  # numba moved it: plain cache=True, without the recovery below
    FunctionCache = None

NO_CACHE = ("numba: no writable cache folder (NUMBA_CACHE_DIR={folder}: {reason}); the "
            "kernels compile in memory for this run only")
BAD_CACHE = "numba: unreadable cache files {files}.* ({reason}); recompiling"
_said: set[str] = set()


def _say_once(kind: str, line: str) -> None:
    if kind not in _said:
        _said.add(kind)
        print(line, file=sys.stderr, flush=True)


def caching_disabled() -> bool:
    """Whether the kernels compile in memory only (no writable cache folder was found)."""
    return "none" in _said


def _unwritable_reason(folder: str) -> str:
    try:
        os.makedirs(folder, exist_ok=True)
        return "not writable"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


if FunctionCache is not None:
    class RecoveringCache(FunctionCache):
        """numba's FunctionCache, except that an unreadable index or data file means a
        recompile (its index removed, so the new code is cached in its place), and a failed
        write means the code stays in memory. The index's source stamp includes
        SOURCE_DIGEST (the module's docstring says why)."""

        def __init__(self, py_func):
            super().__init__(py_func)
            cache_file = self._cache_file
            cache_file._source_stamp = (cache_file._source_stamp, SOURCE_DIGEST)

        def load_overload(self, sig, target_context):
            try:
                return super().load_overload(sig, target_context)
            except Exception as exc:  # pickle, LLVM and OS errors alike: any is a cache miss
                index = self._cache_file._index_path
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                _say_once("bad", BAD_CACHE.format(files=shorten(index.removesuffix(".nbi"), 160),
                                                  reason=shorten(reason, 80)))
                try:
                    os.unlink(index)
                except OSError:
                    pass
                return None

        def save_overload(self, sig, data):
            try:
                super().save_overload(sig, data)
            except Exception as exc:  # a full disk or a folder gone read-only since
                _say_once("save", f"numba: the compiled kernels could not be cached in "
                                  f"{shorten(self.cache_path, 160)} "
                                  f"({exc.__class__.__name__}); "
                                  "compiled in memory for this run")


def njit(*args, **options):
    """numba.njit; with cache=True, the kernel is cached through RecoveringCache, or compiled
    in memory only when numba finds no writable cache folder."""
    if args:  # bare @njit
        return njit(**options)(args[0])
    cache = options.pop("cache", False)

    def decorate(function):
        dispatcher = numba.njit(**options)(function)
        if not cache or not hasattr(dispatcher, "py_func"):  # NUMBA_DISABLE_JIT: a function
            return dispatcher
        if FunctionCache is None:
            return numba.njit(cache=True, **options)(function)
        try:
            dispatcher._cache = RecoveringCache(dispatcher.py_func)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            folder = numba.config.CACHE_DIR
            _say_once("none", NO_CACHE.format(
                folder=shorten(folder or "", 160),
                reason=_unwritable_reason(folder) if folder else "unset"))
        return dispatcher

    return decorate


__all__ = ["cache_dir_for_numba", "njit"]
