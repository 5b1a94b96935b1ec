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

from numba import njit  # noqa: E402  (after the cache location is settled)

__all__ = ["cache_dir_for_numba", "njit"]
