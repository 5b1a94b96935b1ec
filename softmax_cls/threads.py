"""The thread count of the compute libraries (BLAS and numba), set from one number.

The variables are read when numpy's BLAS and numba start, so `use_threads` must run before
either is imported (the console scripts call it while parsing their options, and import
numpy only afterwards); once numba is loaded its pool can still be narrowed.
"""

from __future__ import annotations

import os
import sys

from .errors import ConfigError, SoftmaxClsError
from .text import shorten

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


def use_threads(count: int) -> None:
    """Compute on `count` threads (1 <= count <= the CPUs): BLAS, OpenMP, MKL, numba and
    torch."""
    cpus = os.cpu_count() or 1
    if not 1 <= count <= cpus:
        raise ConfigError(f"--threads: must be between 1 and {cpus} (the CPUs here), got "
                          f"{count}")
    os.environ.update({name: str(count) for name in THREAD_VARIABLES})
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    torch = sys.modules.get("torch")  # it read OMP_NUM_THREADS when it was imported
    if torch is not None:
        torch.set_num_threads(count)


def compute_threads() -> int:
    """The threads the compute libraries run on: NUMBA_NUM_THREADS when it is a whole number
    >= 1 (--threads sets it), else every CPU (numba's default)."""
    text = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) >= 1 else os.cpu_count() or 1


def check_numba_threads_variable() -> None:
    """SoftmaxClsError unless NUMBA_NUM_THREADS, when set, is a whole number from 1 to the
    CPUs (--threads' range): numba raises a traceback at import for 0 and warns at length,
    then ignores, any other value it cannot use, and starts as many threads as it says at
    its first parallel region (40,000: libgomp's own line and exit 1; a million: a
    segmentation fault). Called before numba is imported."""
    text = os.environ.get("NUMBA_NUM_THREADS")
    cpus = os.cpu_count() or 1
    if text is not None and not (text.strip().isdigit() and 1 <= int(text) <= cpus):
        raise SoftmaxClsError(f"NUMBA_NUM_THREADS: must be a whole number from 1 to {cpus} "
                              f"(the CPUs here; the threads of the numba engine), got "
                              f"{shorten(text, 40, quote=True)}; unset it to use every core")
