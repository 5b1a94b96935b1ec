"""The numba engine: compiled calls of a few SGD steps that read uint8 (or float32) rows directly.

Layout and math are those of the engine interface (weights W (C, D), D = P + 1 with the bias
feature last when has_bias; see ENGINE_API.md / DESIGN.md). Per SGD step:

0. The preprocessing x = [(u - mean) * scale, 1] is folded into the weights (_fold), so
   that the kernels compute with the raw rows u as they are: scores u @ W_fold.T + bias_fold.
1. Forward, in parallel over tiles of TILE_ROWS minibatch rows: each row is gathered from
   `rows` into U (b, P), augmented on the way (flip, then shift with zero/edge/reflect
   padding) and prefetched one tile ahead; the tile is converted chunk by chunk into a small
   float buffer of W's dtype that lives in the L1 cache; then come its C scores, the clipped
   softmax, its loss term, its gradient row dS and whether it is predicted right. No float
   copy of the data set exists.
2. Gradient and update, in parallel over blocks of feature columns (_block_width): every
   sum over the minibatch of dS[i, c] * u[i, j] runs in row order, then is unfolded,
   dW = scale * (that - mean * sum(dS[:, c])), and the L2 term added; without gradient
   clipping the block is updated (momentum / Nesterov / averaging) in the same pass; with it,
   after one more sequential sum of per-block squared norms.

Determinism: every output of a parallel loop (a row's scores, a block's gradient columns, a
block's partial sums) is computed by one task whose work does not depend on the number of
threads, and partial sums are combined sequentially in block order, so results are
bit-identical whatever NUMBA_NUM_THREADS (or numba.set_num_threads) says.

Threads: numba's own thread pool, NUMBA_NUM_THREADS threads (default: the number of CPUs);
numba.set_num_threads(k) lowers it at run time. No BLAS is called here, so no BLAS thread
pool competes with numba's; keep OPENBLAS_NUM_THREADS / OMP_NUM_THREADS for the numpy code
that runs between epochs. Each step has two parallel regions whose threads wait for each
other, so when another process holds a core an epoch on all threads can take 10-50 times
as long as on one: THREAD_GOVERNOR times every kernel call (STEPS_PER_CALL steps) and runs
on one thread while that is faster (the weights do not depend on the thread count).

Compiled code is cached on disk (cache=True): in the package's __pycache__ when that folder is
writable, else in NUMBA_CACHE_DIR, which this module sets (before numba is imported) to
$XDG_CACHE_HOME/softmax-cls/numba (~/.cache/softmax-cls/numba) when it is unset.
Importing this module without numba installed raises ImportError.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import SoftmaxClsError
from ...text import shorten


def _cache_dir_for_numba() -> None:
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


def _check_thread_count() -> None:
    """SoftmaxClsError unless NUMBA_NUM_THREADS, when set, is a whole number >= 1: numba
    raises a traceback at import for 0 and warns at length, then ignores, any other value
    it cannot use."""
    text = os.environ.get("NUMBA_NUM_THREADS")
    if text is not None and not (text.strip().isdigit() and int(text) >= 1):
        raise SoftmaxClsError(f"NUMBA_NUM_THREADS: must be a whole number >= 1 (the threads "
                              f"of the numba engine), got {shorten(text, 40, quote=True)}; "
                              "unset it to use every core")


_cache_dir_for_numba()
_check_thread_count()

import numba  # noqa: E402  (after the cache location is settled)
from llvmlite import ir  # noqa: E402  (comes with numba)
from numba import njit, prange, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.core.errors import NumbaPerformanceWarning  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from ...math.softmax import NonFiniteError  # noqa: E402

TILE_ROWS = 8  # minibatch rows per tile: 8 score sums share each load of W, 8 gradient rows
#                each load and store of the accumulators
CHUNK = 512  # features per tile of the score sums: (8, 512) floats + W's chunk stay in L1
BLOCK_FLOATS = 32768  # gradient accumulators (C, block width) per task: up to 128 KB, in L2
SIDE = 32
MAX_SHIFT = 8
PLANE = SIDE * SIDE
N_PIXELS = 3 * PLANE
PADDING_NAMES = ("zero", "edge", "reflect")

# Score sums may be reassociated (vectorised); nothing may assume finite values, since
# non-finite scores must be seen and reported. The gradient sums keep their row order.
_DOT_MATH = {"reassoc", "contract", "nsz"}
_ORDERED_MATH = {"contract"}

_OK, _BAD_SCORES, _BAD_WEIGHTS = 0, 1, 2

# NESTED_PARALLEL_NOTE: the entry kernels loop over steps serially and call the parallel
# _forward / _gradient; they are compiled with parallel=True all the same. Without it, a
# kernel loaded from numba's disk cache in a new process segfaults whenever its signature was
# not the first one compiled (numba issues #8578, #4807); with it, every cached signature
# loads on its own. numba then warns that it found nothing to parallelise in them:
# _quiet_compilation hides that one warning around our own calls.


# ---------------------------------------------------------------------------------------------
# Gather: one row, augmented, as raw values


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
def _prefetch_rows(rows, order, first, stop):
    """Prefetch rows[order[k]] for k in [first, min(stop, len(order))): the data set is far
    larger than the caches, and rows picked at random are not streams the CPU foresees."""
    step = max(1, CACHE_LINE // rows.itemsize)
    for k in range(first, min(stop, order.shape[0])):
        for j in range(0, rows.shape[1], step):
            _prefetch(rows, order[k], j)


@njit(cache=True)
def _gather_row(rows, r, position, flip, shift, padding, line, u):
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


@njit(cache=True)
def _tile(U, i, n, j0, m, tile):
    """tile[r, :m] = U[i + r, j0:j0 + m] for r < n, in tile's dtype; rows n..TILE_ROWS-1 are
    zero (a short group runs the same code)."""
    first = np.uint64(j0)
    for r in range(TILE_ROWS):
        if r < n:
            row = U[i + r]
            for jj in range(m):
                tile[r, np.uint64(jj)] = row[first + np.uint64(jj)]
        else:
            for jj in range(m):
                tile[r, np.uint64(jj)] = 0


# ---------------------------------------------------------------------------------------------
# Scores


@njit(cache=True)
def _put_scores(S, i, n, c, sums, add):
    """S[i + r, c] (+)= sums[r] for the n real rows of a tile."""
    for r in range(TILE_ROWS):
        if r < n:
            if add:
                S[i + r, c] += sums[r]
            else:
                S[i + r, c] = sums[r]


@njit(cache=True, fastmath=_DOT_MATH)
def _tile_scores(tile, m, W, j0, S, i, n, add, zero):
    """S[i:i+n, c] (+)= tile[:n, :m] . W[c, j0:j0+m] for every class c, two classes at a time:
    16 sums in registers, 10 loads per 16 multiply-adds."""
    n_classes = W.shape[0]
    first = np.uint64(j0)
    c = 0
    while c + 2 <= n_classes:
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = zero
        for jj in range(m):
            k = np.uint64(jj)
            j = first + k
            v, w = W[c, j], W[c + 1, j]
            t0, t1, t2, t3 = tile[0, k], tile[1, k], tile[2, k], tile[3, k]
            t4, t5, t6, t7 = tile[4, k], tile[5, k], tile[6, k], tile[7, k]
            a0 += t0 * v
            a1 += t1 * v
            a2 += t2 * v
            a3 += t3 * v
            a4 += t4 * v
            a5 += t5 * v
            a6 += t6 * v
            a7 += t7 * v
            b0 += t0 * w
            b1 += t1 * w
            b2 += t2 * w
            b3 += t3 * w
            b4 += t4 * w
            b5 += t5 * w
            b6 += t6 * w
            b7 += t7 * w
        _put_scores(S, i, n, c, (a0, a1, a2, a3, a4, a5, a6, a7), add)
        _put_scores(S, i, n, c + 1, (b0, b1, b2, b3, b4, b5, b6, b7), add)
        c += 2
    if c < n_classes:
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        for jj in range(m):
            k = np.uint64(jj)
            v = W[c, first + k]
            a0 += tile[0, k] * v
            a1 += tile[1, k] * v
            a2 += tile[2, k] * v
            a3 += tile[3, k] * v
            a4 += tile[4, k] * v
            a5 += tile[5, k] * v
            a6 += tile[6, k] * v
            a7 += tile[7, k] * v
        _put_scores(S, i, n, c, (a0, a1, a2, a3, a4, a5, a6, a7), add)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _fold(W, mean, scale, has_bias, W_fold, bias_fold):
    """The preprocessing folded into the weights: x @ W.T == u @ W_fold.T + bias_fold for
    x = [(u - mean) * scale, 1], with W_fold (C, P) = W[:, :P] * scale and bias_fold (C,) =
    W[:, P] - W_fold @ mean (summed in float64), so that the rows are used as they are."""
    n_features = W_fold.shape[1]
    for c in range(W.shape[0]):
        w, folded = W[c], W_fold[c]
        total = 0.0
        for jj in range(n_features):
            j = np.uint64(jj)
            folded[j] = w[j] * scale[j]
            total += np.float64(folded[j]) * mean[j]
        bias_fold[c] = (np.float64(w[n_features]) if has_bias else 0.0) - total


@njit(cache=True)
def _group_scores(U, i, n, W_fold, bias_fold, tile, S, zero):
    """S[i:i+n] = U[i:i+n] @ W_fold.T + bias_fold for the n <= TILE_ROWS rows (see _fold), in
    chunks of CHUNK features converted once into tile (TILE_ROWS, CHUNK); every row's sums
    run the same code in the same order, whichever rows share its tile."""
    n_features = U.shape[1]
    for j0 in range(0, n_features, CHUNK):
        m = min(CHUNK, n_features - j0)
        _tile(U, i, n, j0, m, tile)
        _tile_scores(tile, m, W_fold, j0, S, i, n, j0 > 0, zero)
    for r in range(n):
        for c in range(W_fold.shape[0]):
            if n_features == 0:
                S[i + r, c] = zero
            S[i + r, c] += bias_fold[c]


@njit(cache=True)
def _softmax_row(S, i, label, weight, inv_b, clip, dS, row_loss, row_correct, zero):
    """Row i of the minibatch: clipped softmax of S[i], its loss term (into row_loss[i]),
    dS[i] = weight * (P - onehot) / b, and row_correct[i] = argmax S[i] == label.

    Returns False when a score is inf or NaN (then nothing else is written).
    """
    n_classes = S.shape[1]
    top, best = S[i, 0], 0
    for c in range(n_classes):
        value = S[i, c]
        if not np.isfinite(value):
            return False
        if value > top:
            top, best = value, c
    total = zero
    for c in range(n_classes):
        z = max(S[i, c] - top, -clip)
        e = np.exp(z)
        dS[i, c] = e
        total += e
    z_label = max(S[i, label] - top, -clip)
    row_loss[i] = weight * (np.log(np.float64(total)) - z_label) * inv_b
    row_correct[i] = best == label
    factor = weight * inv_b
    for c in range(n_classes):
        dS[i, c] = dS[i, c] / total * factor
    dS[i, label] -= factor
    return True


@njit(cache=True, parallel=True)
def _forward(rows, order, batch_rows, gather, labels, sample_weight, position, flip, shift,
             padding, W_fold, bias_fold, clip, U, S, dS, row_loss, row_correct, row_ok, lines,
             tiles, zero):
    """Give every minibatch row its scores S, gradient row dS, loss term, correctness and
    finiteness; with `gather`, first copy rows[batch_rows] into U (b, P) (augmented as flip
    and shift say for the positions position, position + 1, ...), else U is the minibatch.
    batch_rows = order[position:position + b]; the rows of later positions are prefetched.

    Parallel over tiles of TILE_ROWS rows; lines (tiles, 3072) uint8 and tiles (tiles,
    TILE_ROWS, CHUNK) are each tile's scratch.
    """
    b = batch_rows.shape[0]
    inv_b = 1.0 / b
    for group in prange((b + TILE_ROWS - 1) // TILE_ROWS):
        i = group * TILE_ROWS
        n = min(TILE_ROWS, b - i)
        if gather:
            ahead = position + i + TILE_ROWS  # the next tile's rows, maybe the next minibatch's
            _prefetch_rows(rows, order, ahead, ahead + TILE_ROWS)
            for r in range(i, i + n):
                _gather_row(rows, batch_rows[r], position + r, flip, shift, padding,
                            lines[group], U[r])
        _group_scores(U, i, n, W_fold, bias_fold, tiles[group], S, zero)
        for r in range(i, i + n):
            row = batch_rows[r]
            weight = sample_weight[row] if sample_weight.shape[0] > 0 else 1.0
            row_ok[r] = _softmax_row(S, r, labels[row], weight, inv_b, clip, dS, row_loss,
                                     row_correct, zero)


# ---------------------------------------------------------------------------------------------
# Gradient and update


@njit(cache=True)
def _tile_weights(dS, i, n, c, zero):
    """(dS[i + r, c] for r < TILE_ROWS), zero for the rows from n on."""
    return (dS[i, c] if n > 0 else zero, dS[i + 1, c] if n > 1 else zero,
            dS[i + 2, c] if n > 2 else zero, dS[i + 3, c] if n > 3 else zero,
            dS[i + 4, c] if n > 4 else zero, dS[i + 5, c] if n > 5 else zero,
            dS[i + 6, c] if n > 6 else zero, dS[i + 7, c] if n > 7 else zero)


@njit(cache=True, fastmath=_ORDERED_MATH)
def _tile_grad(tile, dS, i, n, m, acc, zero):
    """acc[c, :m] += dS[i + r, c] * tile[r, :m] for r = 0..7 in order, every class c, two
    classes at a time: each load of the tile serves two classes, each load and store of the
    accumulators eight rows. Rows from n on are zero (dS and tile alike)."""
    n_classes = dS.shape[1]
    c = 0
    while c + 2 <= n_classes:
        d0, d1, d2, d3, d4, d5, d6, d7 = _tile_weights(dS, i, n, c, zero)
        e0, e1, e2, e3, e4, e5, e6, e7 = _tile_weights(dS, i, n, c + 1, zero)
        first, second = acc[c], acc[c + 1]
        for jj in range(m):
            k = np.uint64(jj)
            t0, t1, t2, t3 = tile[0, k], tile[1, k], tile[2, k], tile[3, k]
            t4, t5, t6, t7 = tile[4, k], tile[5, k], tile[6, k], tile[7, k]
            first[k] = (first[k] + d0 * t0 + d1 * t1 + d2 * t2 + d3 * t3 + d4 * t4 + d5 * t5
                        + d6 * t6 + d7 * t7)
            second[k] = (second[k] + e0 * t0 + e1 * t1 + e2 * t2 + e3 * t3 + e4 * t4 + e5 * t5
                         + e6 * t6 + e7 * t7)
        c += 2
    if c < n_classes:
        d0, d1, d2, d3, d4, d5, d6, d7 = _tile_weights(dS, i, n, c, zero)
        first = acc[c]
        for jj in range(m):
            k = np.uint64(jj)
            first[k] = (first[k] + d0 * tile[0, k] + d1 * tile[1, k] + d2 * tile[2, k]
                        + d3 * tile[3, k] + d4 * tile[4, k] + d5 * tile[5, k] + d6 * tile[6, k]
                        + d7 * tile[7, k])


@njit(cache=True)
def _data_grad_block(U, dS, j0, m, tile, acc, zero):
    """acc[c, :m] = sum over minibatch rows i, in order, of dS[i, c] * U[i, j0:j0+m], the
    rows converted one tile of TILE_ROWS rows at a time."""
    b, n_classes = dS.shape
    for c in range(n_classes):
        for jj in range(m):
            acc[c, np.uint64(jj)] = zero
    for i in range(0, b, TILE_ROWS):
        n = min(TILE_ROWS, b - i)
        _tile(U, i, n, j0, m, tile)
        _tile_grad(tile, dS, i, n, m, acc, zero)


@njit(cache=True)
def _block_width(n_classes):
    """Feature columns per gradient task: a multiple of 64 in [64, 256] whose (C, width)
    accumulators fit BLOCK_FLOATS. A function of C alone, never of the thread count."""
    return max(64, min(256, BLOCK_FLOATS // n_classes // 64 * 64))


@njit(cache=True)
def _update_columns(G, W, velocity, average, j0, j1, lr, momentum, nesterov, alpha, factor):
    """SGD on columns j0:j1: g = factor * G; velocity = momentum velocity + g; W -= lr * step
    (step = g + momentum velocity with Nesterov, else velocity); average += alpha (W - average)
    when alpha != 0. Unsigned indices let the loops vectorise (no negative-index checks)."""
    first = np.uint64(j0)
    for c in range(W.shape[0]):
        g_row, w_row, v_row, a_row = G[c], W[c], velocity[c], average[c]
        for jj in range(j1 - j0):
            j = first + np.uint64(jj)
            g = g_row[j] * factor
            v = momentum * v_row[j] + g
            v_row[j] = v
            step = g + momentum * v if nesterov else v
            w_row[j] = w_row[j] - lr * step
        if alpha != 0:
            for jj in range(j1 - j0):
                j = first + np.uint64(jj)
                a_row[j] += alpha * (w_row[j] - a_row[j])


@njit(cache=True)
def _unfold_gradient(accumulated, dS_sum, mean, scale, w, two_reg, j0, m, g):
    """g[j0:j0+m] = scale * (accumulated[:m] - mean * dS_sum) + two_reg * w[j0:j0+m]: the
    gradient with respect to W from the one with respect to the folded weights (_fold)
    for one class, dS_sum = that class's sum of dS over the minibatch, plus the L2 term."""
    first = np.uint64(j0)
    for jj in range(m):
        k = np.uint64(jj)
        j = first + k
        g[j] = scale[j] * (accumulated[k] - mean[j] * dS_sum) + two_reg * w[j]


@njit(cache=True, fastmath={"reassoc", "contract"})
def _sum_squares(a, j0, j1):
    """sum of a[j0:j1]**2 in float64. Reassociated (vectorised) within this one fixed loop,
    which a single task runs for a whole block: the same order for any thread count."""
    total = 0.0
    for j in range(j0, j1):
        value = np.float64(a[np.uint64(j)])
        total += value * value
    return total


@njit(cache=True, parallel=True)
def _gradient(U, dS, dS_sum, W, mean, scale, has_bias, two_reg, reg_bias, tiles, acc, G,
              l2_parts, norm_parts, update, velocity, average, lr, momentum, nesterov, alpha,
              zero, one):
    """G (C, D) = dS.T @ X (+ the bias column dS_sum, the sums of dS over the rows) + the L2
    gradient, with X the preprocessed minibatch U, in parallel over blocks of
    _block_width(C) feature columns (the last block also does the bias column).

    l2_parts[k] / norm_parts[k] (float64) get block k's sum of penalised W*W (before any
    update) and of G*G. With `update`, each block is also updated right away (no clipping)
    and the G*G sums are skipped (left at 0).
    """
    n_classes, n_features = W.shape[0], U.shape[1]
    width = acc.shape[2]
    n_blocks = l2_parts.shape[0]
    for block in prange(n_blocks):
        j0, j1 = block * width, min(n_features, (block + 1) * width)
        l2, norm = 0.0, 0.0
        if j1 > j0:
            _data_grad_block(U, dS, j0, j1 - j0, tiles[block], acc[block], zero)
        for c in range(n_classes):
            _unfold_gradient(acc[block, c], dS_sum[c], mean, scale, W[c], two_reg, j0, j1 - j0,
                             G[c])
            l2 += _sum_squares(W[c], j0, j1)
            if not update:  # the norm is for the gradient clipping (and the caller's checks)
                norm += _sum_squares(G[c], j0, j1)
        stop = j1
        if has_bias and block == n_blocks - 1:  # the bias column
            stop = n_features + 1
            for c in range(n_classes):
                g = dS_sum[c]
                w = W[c, n_features]
                if reg_bias:
                    g += two_reg * w
                    l2 += np.float64(w) * w
                G[c, n_features] = g
                norm += np.float64(g) * g
        l2_parts[block], norm_parts[block] = l2, norm
        if update:
            _update_columns(G, W, velocity, average, j0, stop, lr, momentum, nesterov, alpha,
                            one)


@njit(cache=True, parallel=True)
def _update(G, W, velocity, average, lr, momentum, nesterov, alpha, factor):
    """The SGD update of every column, in parallel over blocks of columns."""
    n_cols = W.shape[1]
    width = _block_width(W.shape[0])
    for block in prange((n_cols + width - 1) // width):
        j0, j1 = block * width, min(n_cols, (block + 1) * width)
        _update_columns(G, W, velocity, average, j0, j1, lr, momentum, nesterov, alpha, factor)


@njit(cache=True)
def _all_finite(A):
    for value in A.ravel():
        if not np.isfinite(value):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Whole calls


@njit(cache=True)
def _workspace(batch_size, n_features, W):
    """Buffers of one minibatch of up to batch_size rows (besides the gathered rows)."""
    n_classes, n_cols = W.shape
    width = _block_width(n_classes)
    n_blocks = max(1, (n_features + width - 1) // width)
    n_groups = (batch_size + TILE_ROWS - 1) // TILE_ROWS
    dtype = W.dtype
    return (np.empty((batch_size, n_classes), dtype), np.empty((batch_size, n_classes), dtype),
            np.empty(batch_size), np.empty(batch_size, np.bool_),
            np.empty(batch_size, np.bool_),
            np.empty((n_groups, N_PIXELS), np.uint8),
            np.empty((n_groups, TILE_ROWS, CHUNK), dtype),
            np.empty((n_blocks, TILE_ROWS, width), dtype),
            np.empty((n_blocks, n_classes, width), dtype), np.empty((n_classes, n_cols), dtype),
            np.empty(n_blocks), np.empty(n_blocks), np.empty((n_classes, n_features), dtype),
            np.empty(n_classes, dtype), np.empty(n_classes, dtype))


@njit(cache=True)
def _column_sums(dS, zero, out):
    """out[c] = sum of dS[:, c] (b, C), in row order."""
    for c in range(dS.shape[1]):
        total = zero
        for i in range(dS.shape[0]):
            total += dS[i, c]
        out[c] = total


@njit(cache=True)
def _cast(like, value):
    """value as a scalar of like's dtype."""
    out = np.empty(1, like.dtype)
    out[0] = value
    return out[0]


@njit(cache=True, parallel=True)  # see NESTED_PARALLEL_NOTE
def _train_epoch_kernel(rows, labels, order, sample_weight, flip, shift, padding, W, velocity,
                        average, avg_alpha, mean, scale, has_bias, batch_size, lr, momentum,
                        nesterov, grad_clip, reg, reg_bias, clip):
    """Returns (loss_sum, correct, status, step): status 0 fine, 1 non-finite scores in
    `step`, 2 non-finite weights after the epoch. lr, momentum and clip have W's dtype."""
    n = order.shape[0]
    n_features = rows.shape[1]
    batch = min(batch_size, n)
    U = np.empty((batch, n_features), rows.dtype)
    S, dS, row_loss, row_correct, row_ok, lines, tiles, grad_tiles, acc, G, l2_parts, \
        norm_parts, W_fold, bias_fold, dS_sum = _workspace(batch, n_features, W)
    zero, one, two_reg = _cast(W, 0), _cast(W, 1), _cast(W, 2 * reg)
    loss_sum, correct = 0.0, 0
    n_steps = (n + batch - 1) // batch
    fused = grad_clip <= 0
    for step in range(n_steps):
        start = step * batch
        b = min(batch, n - start)
        batch_rows = order[start:start + b]
        _fold(W, mean, scale, has_bias, W_fold, bias_fold)
        _forward(rows, order, batch_rows, True, labels, sample_weight, start, flip, shift,
                 padding, W_fold, bias_fold, clip, U[:b], S[:b], dS[:b], row_loss,
                 row_correct, row_ok, lines, tiles, zero)
        data_loss = 0.0
        for i in range(b):
            if not row_ok[i]:
                return loss_sum, correct, _BAD_SCORES, step
            data_loss += row_loss[i]
            correct += row_correct[i]
        alpha = _cast(W, avg_alpha[step])
        _column_sums(dS[:b], zero, dS_sum)
        _gradient(U[:b], dS[:b], dS_sum, W, mean, scale, has_bias, two_reg, reg_bias,
                  grad_tiles, acc, G, l2_parts, norm_parts, fused, velocity, average, lr,
                  momentum, nesterov, alpha, zero, one)
        l2, norm = 0.0, 0.0
        for k in range(l2_parts.shape[0]):
            l2 += l2_parts[k]
            norm += norm_parts[k]
        if not fused:
            factor = one
            if norm > grad_clip * grad_clip:
                factor = _cast(W, grad_clip / np.sqrt(norm))
            _update(G, W, velocity, average, lr, momentum, nesterov, alpha, factor)
        loss_sum += (data_loss + reg * l2) * b
    if not _all_finite(W):
        return loss_sum, correct, _BAD_WEIGHTS, n_steps - 1
    return loss_sum, correct, _OK, n_steps


@njit(cache=True, parallel=True)  # see NESTED_PARALLEL_NOTE
def _batch_loss_and_grad_kernel(rows, labels, sample_weight, W, mean, scale, has_bias, reg,
                                reg_bias, clip):
    """Returns (loss, dW (C, D), correct, ok) for one minibatch, with train_epoch's code."""
    b, n_features = rows.shape
    S, dS, row_loss, row_correct, row_ok, lines, tiles, grad_tiles, acc, G, l2_parts, \
        norm_parts, W_fold, bias_fold, dS_sum = _workspace(b, n_features, W)
    zero, one = _cast(W, 0), _cast(W, 1)
    U = rows.copy()
    batch_rows = np.arange(b)
    no_flip = np.empty(0, np.bool_)
    no_shift = np.empty((0, 2), np.int64)
    _fold(W, mean, scale, has_bias, W_fold, bias_fold)
    _forward(rows, batch_rows[:0], batch_rows, False, labels, sample_weight, 0, no_flip,
             no_shift, 0, W_fold, bias_fold, _cast(W, clip), U, S, dS, row_loss, row_correct,
             row_ok, lines, tiles, zero)
    data_loss, correct = 0.0, 0
    for i in range(b):
        if not row_ok[i]:
            return 0.0, G, 0, False
        data_loss += row_loss[i]
        correct += row_correct[i]
    _column_sums(dS, zero, dS_sum)
    _gradient(U, dS, dS_sum, W, mean, scale, has_bias, _cast(W, 2 * reg), reg_bias, grad_tiles,
              acc, G, l2_parts, norm_parts, False, G, G, one, one, False, one, zero, one)
    l2 = 0.0
    for k in range(l2_parts.shape[0]):
        l2 += l2_parts[k]
    return data_loss + reg * l2, G, correct, True


@njit(cache=True, parallel=True)
def _predict_kernel(rows, W, mean, scale, has_bias, zero, chunk):
    n = rows.shape[0]
    S = np.empty((n, W.shape[0]), W.dtype)
    n_tasks = (n + chunk - 1) // chunk
    tiles = np.empty((n_tasks, TILE_ROWS, CHUNK), W.dtype)
    W_fold = np.empty((W.shape[0], rows.shape[1]), W.dtype)
    bias_fold = np.empty(W.shape[0], W.dtype)
    _fold(W, mean, scale, has_bias, W_fold, bias_fold)
    for task in prange(n_tasks):
        for i in range(task * chunk, min(n, (task + 1) * chunk), TILE_ROWS):
            _group_scores(rows, i, min(TILE_ROWS, n - i), W_fold, bias_fold, tiles[task], S,
                          zero)
    return S

# ---------------------------------------------------------------------------------------------
# Python entry points: check, convert, call, report


@contextlib.contextmanager
def _quiet_compilation():
    """Hide numba's "parallel=True but nothing to parallelise" warning (NESTED_PARALLEL_NOTE)
    raised while our entry kernels compile; every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*parallel=True.*no transformation",
                                category=NumbaPerformanceWarning)
        yield


def _readonly(array: np.ndarray) -> np.ndarray:
    """A read-only, C-contiguous plain ndarray view: one compiled signature serves writable
    arrays and read-only np.memmaps alike."""
    view = np.ascontiguousarray(array).view(np.ndarray)
    view.flags.writeable = False
    return view


def _check_rows(rows: np.ndarray, allowed: tuple) -> None:
    if rows.ndim != 2 or rows.dtype not in allowed:
        names = "/".join(np.dtype(t).name for t in allowed)
        raise TypeError(f"rows must be a 2-d {names} array, got {rows.dtype} {rows.shape}")


def _check_weights(W: np.ndarray, n_features: int, has_bias: bool, dtypes: tuple) -> None:
    expected = n_features + int(has_bias)
    if W.ndim != 2 or W.shape[1] != expected or W.dtype not in dtypes:
        raise ValueError(f"W must be (C, {expected}) of {'/'.join(map(str, dtypes))}, "
                         f"got {W.dtype} {W.shape}")
    if not W.flags.c_contiguous or not W.flags.writeable:
        raise ValueError("W must be C-contiguous and writable")


def _check_labels(labels: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels.min()}.."
                         f"{labels.max()}")
    return labels


def _vector(values: np.ndarray, n: int, dtype, name: str) -> np.ndarray:
    values = np.ascontiguousarray(values, dtype=dtype)
    if values.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {values.shape}")
    return values


def _sample_weight(sample_weight: np.ndarray, n: int, dtype) -> np.ndarray:
    weights = np.ascontiguousarray(sample_weight, dtype=dtype)
    if weights.shape not in ((0,), (n,)):
        raise ValueError(f"sample_weight must have shape ({n},) or (0,), got {weights.shape}")
    return weights


def _augmentation(flip, shift, n: int, rows: np.ndarray, padding: int):
    flip = np.ascontiguousarray(flip, dtype=np.bool_)
    shift = np.ascontiguousarray(shift, dtype=np.int64).reshape(-1, 2)
    if flip.shape not in ((0,), (n,)) or shift.shape not in ((0, 2), (n, 2)):
        raise ValueError(f"flip must be ({n},) or (0,) and shift ({n}, 2) or (0, 2), got "
                         f"{flip.shape} and {shift.shape}")
    if len(flip) or len(shift):
        if rows.dtype != np.uint8 or rows.shape[1] != N_PIXELS:
            raise ValueError("augmentation needs image rows: (N, 3072) uint8")
        if len(shift) and np.abs(shift).max() > 8:
            raise ValueError("shift must lie in [-8, 8]")
    if padding not in (0, 1, 2):
        raise ValueError(f"padding must be 0 (zero), 1 (edge) or 2 (reflect), got {padding}")
    return flip, shift


def _check_order(order: np.ndarray, n_rows: int) -> np.ndarray:
    order = np.ascontiguousarray(order, dtype=np.int64)
    if order.ndim != 1:
        raise ValueError(f"order must be 1-d, got shape {order.shape}")
    if len(order) and (order.min() < 0 or order.max() >= n_rows):
        raise ValueError(f"order must index rows in [0, {n_rows})")
    return order


@dataclass
class _Timings:
    """What the governor knows of one kind of kernel call: per thread count, the latest
    seconds per row, how many calls ran and how many calls ago it last ran; the count in use
    (None while both are first measured) and how long the other waits to be measured again."""

    latest: dict[int, float] = field(default_factory=dict)
    runs: dict[int, int] = field(default_factory=dict)
    age: dict[int, int] = field(default_factory=dict)
    current: int | None = None
    probe_every: int = 0


class ThreadGovernor:
    """Chooses numba's thread count for each kernel call of train_epoch (STEPS_PER_CALL
    steps): all of numba's threads (as numba.get_num_threads() says) or one.

    Calls of one kind (same features, batch size, augmentation, clipping) are timed per
    row. The first runs on all threads (it may include compiling), the second on one, the
    third on all again. Then all threads stay in use until their latest call is SLOWER times
    as slow as one thread's (another process holds a core: the usual slowdown is 3 to 50
    times, while a quiet machine's call-to-call noise stays well below SLOWER), and one
    thread until all threads' latest call beats it. The count not in use is measured again
    once it is `probe_every` calls old (PROBE_EVERY, doubled each time it loses again), so
    the choice follows the machine, and a losing probe costs only a few steps. With
    `enabled` False, or one thread to choose from, every call runs on numba's threads as set.
    """

    PROBE_EVERY = 4
    SLOWER = 1.5

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.enabled = True
        self.kinds: dict[tuple, _Timings] = {}

    def choose(self, kind: tuple, available: int) -> int:
        if not self.enabled or available < 2:
            return available
        timings = self.kinds.setdefault(kind, _Timings(probe_every=self.PROBE_EVERY))
        if timings.current is None:  # measuring: all threads, one, all again
            return 1 if timings.runs.get(available, 0) == 1 and 1 not in timings.runs \
                else available
        other = 1 if timings.current == available else available
        return other if timings.age[other] >= timings.probe_every else timings.current

    def record(self, kind: tuple, threads: int, seconds_per_row: float, available: int) -> None:
        timings = self.kinds.setdefault(kind, _Timings(probe_every=self.PROBE_EVERY))
        other = 1 if threads == available else available
        timings.latest[threads] = seconds_per_row
        timings.runs[threads] = timings.runs.get(threads, 0) + 1
        timings.age[threads] = 0
        timings.age[other] = timings.age.get(other, 0) + 1
        if timings.current is None:
            if timings.runs.get(available, 0) < 2:
                return
            timings.current = available
        if timings.current == available:
            preferred = 1 if timings.latest[available] > self.SLOWER * timings.latest[1] \
                else available
        else:
            preferred = available if timings.latest[available] < timings.latest[1] else 1
        if threads != timings.current and preferred == timings.current:  # a probe that lost
            timings.probe_every *= 2
        elif preferred != timings.current:
            timings.probe_every = self.PROBE_EVERY
        timings.current = preferred

    def run(self, kind: tuple, rows: int, epoch: Callable[[], tuple]) -> tuple:
        """epoch() over `rows` rows on the chosen number of threads, timed."""
        available = numba.get_num_threads()
        threads = self.choose(kind, available)
        if threads != available:
            numba.set_num_threads(threads)
        try:
            started = self.clock()
            result = epoch()
            if self.enabled and available > 1:
                self.record(kind, threads, (self.clock() - started) / max(rows, 1), available)
        finally:
            if threads != available:
                numba.set_num_threads(available)
        return result


THREAD_GOVERNOR = ThreadGovernor()
STEPS_PER_CALL = 16  # SGD steps per kernel call: the governor's unit of measure and choice


def train_epoch(rows, labels, order, sample_weight, flip, shift, padding, W, velocity, average,
                avg_alpha, mean, scale, has_bias, batch_size, lr, momentum, nesterov, grad_clip,
                reg, reg_bias, clip) -> tuple[float, int]:
    """One epoch of minibatch SGD in compiled calls of STEPS_PER_CALL steps each (each run on
    the thread count THREAD_GOVERNOR picks); see ENGINE_API.md for every argument.

    rows (N, P) uint8 or float32 (np.memmap allowed), labels (N,) int, order (n,) int,
    sample_weight (N,) float32 or (0,), flip (n,) bool or (0,), shift (n, 2) int or (0, 2),
    padding 0/1/2, W / velocity / average (C, D) float32 updated in place, avg_alpha
    (ceil(n / batch_size),) float64, mean / scale (P,) float32.
    Returns (loss_sum, correct). Raises NonFiniteError on inf/NaN scores or weights.
    """
    _check_rows(rows, (np.uint8, np.float32))
    n_rows, n_features = rows.shape
    _check_weights(W, n_features, has_bias, (np.float32,))
    for name, array in (("velocity", velocity), ("average", average)):
        if array.shape != W.shape or array.dtype != W.dtype or not array.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous {W.dtype} array of shape {W.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = _check_order(order, n_rows)
    n = len(order)
    n_steps = -(-n // int(batch_size))
    avg_alpha = _vector(avg_alpha, n_steps, np.float64, "avg_alpha")
    flip, shift = _augmentation(flip, shift, n, rows, int(padding))
    if n == 0:
        return 0.0, 0
    dtype = W.dtype.type
    rows, labels = _readonly(rows), _check_labels(labels, n_rows, W.shape[0])
    sample_weight = _sample_weight(sample_weight, n_rows, W.dtype)
    mean = _vector(mean, n_features, W.dtype, "mean")
    scale = _vector(scale, n_features, W.dtype, "scale")
    kind = (n_features, rows.dtype.str, W.shape, int(batch_size), len(flip) > 0, len(shift) > 0,
            grad_clip > 0)
    rows_per_call = STEPS_PER_CALL * int(batch_size)
    loss_sum, correct = 0.0, 0
    for start in range(0, n, rows_per_call):  # the same steps as one call, timed in slices
        stop = min(n, start + rows_per_call)
        first_step = start // int(batch_size)
        arguments = (
            rows, labels, order[start:stop], sample_weight, flip[start:stop] if len(flip) else flip,
            shift[start:stop] if len(shift) else shift, int(padding), W, velocity, average,
            avg_alpha[first_step:first_step + STEPS_PER_CALL], mean, scale, bool(has_bias),
            int(batch_size), dtype(lr), dtype(momentum), bool(nesterov), float(grad_clip),
            float(reg), bool(reg_bias), dtype(clip))
        with _quiet_compilation():
            part_loss, part_correct, status, step = THREAD_GOVERNOR.run(
                kind, stop - start, lambda arguments=arguments: _train_epoch_kernel(*arguments))
        if status == _BAD_SCORES:
            raise NonFiniteError(f"non-finite scores in minibatch {first_step + step + 1} (inf "
                                 "or NaN in the inputs or the weights)")
        if status == _BAD_WEIGHTS:
            raise NonFiniteError("non-finite weights")
        loss_sum += part_loss
        correct += part_correct
    return float(loss_sum), int(correct)


def predict_scores(rows, W, mean, scale, has_bias) -> np.ndarray:
    """Scores (N, C) of W's dtype for rows (N, P) uint8 or float32, W (C, D) float32/float64,
    mean / scale (P,): x = [(u - mean) * scale, 1] @ W.T, without BLAS."""
    _check_rows(rows, (np.uint8, np.float32))
    _check_weights(np.ascontiguousarray(W), rows.shape[1], has_bias, (np.float32, np.float64))
    W = np.ascontiguousarray(W)
    if len(rows) == 0:
        return np.empty((0, W.shape[0]), W.dtype)
    return _predict_kernel(_readonly(rows), W, _vector(mean, rows.shape[1], W.dtype, "mean"),
                           _vector(scale, rows.shape[1], W.dtype, "scale"), bool(has_bias),
                           W.dtype.type(0), 64)


def batch_loss_and_grad(rows, labels, sample_weight, W, mean, scale, has_bias, reg, reg_bias,
                        clip) -> tuple[float, np.ndarray, int]:
    """(loss, dW (C, D) of W's dtype, correct) of one minibatch rows (b, P) uint8 / float32 /
    float64 with labels (b,) and sample_weight (b,) or (0,): the code of one train_epoch step
    without the update, so that the gradient check can check it in float64."""
    _check_rows(rows, (np.uint8, np.float32, np.float64))
    b, n_features = rows.shape
    W = np.ascontiguousarray(W)
    _check_weights(W, n_features, has_bias, (np.float32, np.float64))
    if b == 0:
        raise ValueError("batch_loss_and_grad needs at least one row")
    with _quiet_compilation():
        loss, dW, correct, ok = _batch_loss_and_grad_kernel(
            _readonly(rows), _check_labels(labels, b, W.shape[0]),
            _sample_weight(sample_weight, b, W.dtype), W,
            _vector(mean, n_features, W.dtype, "mean"),
            _vector(scale, n_features, W.dtype, "scale"), bool(has_bias), float(reg),
            bool(reg_bias), float(clip))
    if not ok:
        raise NonFiniteError("non-finite scores (inf or NaN in the inputs or the weights)")
    return float(loss), dW, int(correct)


def kernels_are_compiled(rows_dtype=np.uint8) -> bool:
    """Whether train_epoch (on rows of `rows_dtype`, float32 weights) and predict_scores are in
    numba's on-disk cache, so that the next call starts at once instead of compiling for
    seconds (callers print a progress line when this is False)."""
    P, C = 4, 2
    rows = _readonly(np.zeros((1, P), rows_dtype))
    W = np.zeros((C, P + 1), np.float32)
    vec, f32 = np.zeros(P, np.float32), np.float32(0)
    train_args = (rows, np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(0, np.float32),
                  np.zeros(0, np.bool_), np.zeros((0, 2), np.int64), 0, W, W, W, np.zeros(1),
                  vec, vec, True, 1, f32, f32, True, 0.0, 0.0, True, f32)
    predict_args = (rows, W, vec, vec, True, f32, 64)
    try:
        for kernel, args in ((_train_epoch_kernel, train_args), (_predict_kernel, predict_args)):
            signature = tuple(numba.typeof(a) for a in args)
            if signature in kernel.overloads:
                continue
            cache = kernel._cache
            key = cache._index_key(signature, kernel.targetctx.codegen())
            if key not in cache._cache_file._load_index():
                return False
    except Exception:  # numba internals moved: assume the worst, the caller prints one line
        return False
    return True
