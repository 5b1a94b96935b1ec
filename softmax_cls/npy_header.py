"""The header of an .npy array, read alone: shape, dtype and where the data starts, checked
before a byte of data is read (a hostile header can declare gigabytes)."""

from __future__ import annotations

import zlib

import numpy as np

NPY_HEADER_CAP = 4096  # bytes of one npy header (numpy writes about 128)
try:  # what zipfile's decompressors raise on a damaged member (not ValueError nor OSError);
    from lzma import LZMAError  # lzma may be missing from a Python build

    INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, LZMAError)
except ImportError:
    INFLATE_ERRORS = (zlib.error,)


class BadHeader(ValueError):
    """An npy header this tool refuses; the message says why, to follow the array's name."""


def read_npy_header(stream) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, stream position of the data) of the npy array at the stream's position,
    reading at most NPY_HEADER_CAP bytes of header. BadHeader for a version other than 1.0
    and 2.0, a negative or non-integer dimension, Fortran order or an object dtype (which
    would need pickle); numpy's own ValueError or EOFError for a damaged header."""
    version = np.lib.format.read_magic(stream)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise BadHeader(f"is an npy file of version {version} (this reads 1.0 and 2.0)")
    shape, fortran, dtype = read_header(stream, max_header_size=NPY_HEADER_CAP)
    if any(not isinstance(size, int) or size < 0 for size in shape):
        raise BadHeader(f"declares the impossible shape {str(shape)[:60]}")
    if fortran and len(shape) > 1:
        raise BadHeader(f"is in Fortran order (shape {str(shape)[:60]}); it must be C-ordered")
    if dtype.hasobject:
        raise BadHeader("is an object array, which would need pickle; refused "
                        "(allow_pickle=False)")
    return tuple(shape), dtype, stream.tell()
