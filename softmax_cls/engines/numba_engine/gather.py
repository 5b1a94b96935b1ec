"""Gather for the numba engine: one minibatch row copied from the data set as raw values,
augmented on the way (left-right flip, then a shift with zero/edge/reflect padding), and the
rows of the next tile prefetched.

Images are (3072,) uint8 rows: 3 planes of 32 lines of 32 pixels. Shifts lie in
[-MAX_SHIFT, MAX_SHIFT]; padding is 0 (zero), 1 (edge) or 2 (reflect).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir  # comes with numba
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cache import njit  # before any function is compiled: see cache.py

SIDE = 32
PLANE = SIDE * SIDE
N_PIXELS = 3 * PLANE


@njit(cache=True)
def _padded_index(s, padding):
    """Index in [0, 32) that padding mode `padding` reads for position s in [-8, 40), or -1
    (zero padding outside the image)."""
    if 0 <= s < SIDE:
        return s
    if padding == 0:
        return -1
    if padding == 1:
        return 0 if s < 0 else SIDE - 1
    return -s if s < 0 else 2 * (SIDE - 1) - s


@njit(cache=True)
def _bswap(x, m8, m16, s8, s16, s32):
    """The 8 bytes of the uint64 x in reverse order."""
    x = ((x & m8) << s8) | ((x >> s8) & m8)
    x = ((x & m16) << s16) | ((x >> s16) & m16)
    return (x << s32) | (x >> s32)


@njit(cache=True)
def _mirror_lines(image):
    """Reverse every line of 32 pixels of image (3072,) uint8 in place (8-byte aligned: our
    own buffer): per line, its four 8-byte words in reverse order, each byte-swapped."""
    words = image.view(np.uint64)
    m8, m16 = np.uint64(0x00FF00FF00FF00FF), np.uint64(0x0000FFFF0000FFFF)
    s8, s16, s32 = np.uint64(8), np.uint64(16), np.uint64(32)
    for line in range(3 * SIDE):
        base = np.uint64(4 * line)
        for w in range(2):
            near, far = base + np.uint64(w), base + np.uint64(3 - w)
            x, y = words[near], words[far]
            words[near] = _bswap(y, m8, m16, s8, s16, s32)
            words[far] = _bswap(x, m8, m16, s8, s16, s32)


@njit(cache=True)
def _augment_row(src, flip, dy, dx, padding, image, u):
    """u (3072,) uint8 = the image src (3072,) uint8, mirrored left-right if `flip`, then moved
    by dy rows and dx columns with the given padding (0 zero, 1 edge, 2 reflect).
    image (3072,) uint8 is scratch for the mirrored image."""
    if flip:
        for k in range(N_PIXELS):
            image[k] = src[k]
        _mirror_lines(image)
        _shift_into(image, dy, dx, padding, u)
    else:
        _shift_into(src, dy, dx, padding, u)


@njit(cache=True)
def _shift_into(image, dy, dx, padding, u):
    """u (3072,) uint8 = image (3072,) uint8 moved by dy rows and dx columns.

    Per plane, the pixels that come from inside the image are one flat copy at offset
    dy * 32 + dx (vectorised); the |dx| border columns, which that copy fills with pixels of
    the neighbouring lines, are then overwritten column by column, and the |dy| border lines
    copied from the line they replicate or mirror. The loops run over the border columns and
    lines alone, in one loop each and in this function (a loop over all 32 that skipped the
    inner ones took twice as long per image; helper functions, up to four times). Unsigned
    indices spare each access numba's negative-index check, which would stop the
    vectorisation.
    """
    if dy == 0 and dx == 0:
        for k in range(N_PIXELS):
            u[k] = image[k]
        return
    top, bottom = max(0, dy), min(SIDE, SIDE + dy)  # output lines read from inside the image
    left, right = max(0, dx), SIDE + min(0, dx)  # output columns read from inside
    offset = dy * SIDE + dx
    n_inner = np.uint64((bottom - 1 - top) * SIDE + right - left)
    for plane in range(3):
        base = plane * PLANE
        start = np.uint64(base + top * SIDE + left)
        first = np.uint64(base + top * SIDE + left - offset)
        for k in range(n_inner):
            u[start + k] = image[first + k]
        for border in range(SIDE - (right - left)):  # columns 0..left-1, then right..31
            col = border if border < left else border + right - left
            s = _padded_index(col - dx, padding)
            out = np.uint64(base + top * SIDE + col)
            if s < 0:
                for row in range(bottom - top):
                    u[out + np.uint64(row * SIDE)] = 0
            else:
                read = np.uint64(base + (top - dy) * SIDE + s)
                for row in range(bottom - top):
                    u[out + np.uint64(row * SIDE)] = image[read + np.uint64(row * SIDE)]
        for border in range(SIDE - (bottom - top)):  # lines 0..top-1, then bottom..31
            row = border if border < top else border + bottom - top
            s = _padded_index(row - dy, padding)
            out = np.uint64(base + row * SIDE)
            if s < 0:
                for col in range(SIDE):
                    u[out + np.uint64(col)] = 0
            else:
                like = np.uint64(base + (s + dy) * SIDE)  # the output line of source line s
                for col in range(SIDE):
                    u[out + np.uint64(col)] = u[like + np.uint64(col)]


CACHE_LINE = 64  # bytes


@intrinsic
def _prefetch(typingctx, rows, r, j):
    """Start loading the cache line that holds rows[r, j] (rows a 2-d array), without
    waiting for it: llvm.prefetch (read, keep in all cache levels)."""
    def codegen(context, builder, signature, args):
        rows_type = signature.args[0]
        array = context.make_array(rows_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, rows_type, array, args[1:])
        byte = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(function, [builder.bitcast(pointer, byte), ir.Constant(i32, 0),
                                ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(rows, types.intp, types.intp), codegen


@njit(cache=True)
def prefetch_rows(rows, order, first, stop):
    """Prefetch rows[order[k]] for k in [first, min(stop, len(order))): the data set is far
    larger than the caches, and rows picked at random are not streams the CPU foresees."""
    step = max(1, CACHE_LINE // rows.itemsize)
    for k in range(first, min(stop, order.shape[0])):
        for j in range(0, rows.shape[1], step):
            _prefetch(rows, order[k], j)


@njit(cache=True)
def gather_row(rows, r, position, flip, shift, padding, line, u):
    """u (P,) = rows[r] as it is, or augmented when flip/shift say so for this position."""
    do_flip = flip.shape[0] > 0 and flip[position]
    dy = shift[position, 0] if shift.shape[0] > 0 else 0
    dx = shift[position, 1] if shift.shape[0] > 0 else 0
    if do_flip or dy != 0 or dx != 0:
        _augment_row(rows[r], do_flip, dy, dx, padding, line, u)
    else:
        src = rows[r]
        for j in range(u.shape[0]):
            u[j] = src[j]
