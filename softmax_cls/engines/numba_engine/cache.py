"""Where numba keeps the engine's compiled code, settled before any of it is defined.

Compiled code is cached on disk (cache=True): in the package's __pycache__ when that folder is
writable, else in NUMBA_CACHE_DIR, which this module sets to $XDG_CACHE_HOME/softmax-cls/numba
(~/.cache/softmax-cls/numba) when it is unset. numba fixes a function's cache folder when the
function is decorated, so every module of the engine takes its `njit` from here: importing
it settles the folder first. Importing this module without numba installed raises ImportError.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ...errors import SoftmaxClsError
from ...text import shorten


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


def check_thread_count() -> None:
    """SoftmaxClsError unless NUMBA_NUM_THREADS, when set, is a whole number >= 1: numba
    raises a traceback at import for 0 and warns at length, then ignores, any other value
    it cannot use."""
    text = os.environ.get("NUMBA_NUM_THREADS")
    if text is not None and not (text.strip().isdigit() and int(text) >= 1):
        raise SoftmaxClsError(f"NUMBA_NUM_THREADS: must be a whole number >= 1 (the threads "
                              f"of the numba engine), got {shorten(text, 40, quote=True)}; "
                              "unset it to use every core")


cache_dir_for_numba()
check_thread_count()

from numba import njit  # noqa: E402  (after the cache location and thread count are settled)

__all__ = ["cache_dir_for_numba", "check_thread_count", "njit"]
