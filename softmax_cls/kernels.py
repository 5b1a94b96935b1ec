"""The numba engine: one compiled call per epoch that reads uint8 (or float32) rows directly.

Layout and math are those of the engine interface (weights W (C, D), D = P + 1 with the bias
feature last when has_bias; see ENGINE_API.md / DESIGN.md). Per SGD step:

1. Forward, in parallel over groups of ROWS_PER_TASK minibatch rows: each row is gathered from
   `rows`, augmented on the way (flip, then shift with zero/edge/reflect padding) and
   preprocessed, x = (u - mean) * scale, into a small float buffer X (b, P) of W's dtype that
   lives in the CPU caches; then its C scores, the clipped softmax, its loss term, its
   gradient row dS and whether it is predicted right. No float copy of the data set exists.
2. Gradient and update, in parallel over blocks of feature columns (_block_width): every
   dW[c, j] is a sum over the minibatch in row order, then the L2 term; without gradient
   clipping the block is updated (momentum / Nesterov / averaging) in the same pass; with it,
   after one more sequential sum of per-block squared norms.

Determinism: every output of a parallel loop (a row's scores, a block's gradient columns, a
block's partial sums) is computed by one task whose work does not depend on the number of
threads, and partial sums are combined sequentially in block order, so results are
bit-identical whatever NUMBA_NUM_THREADS (or numba.set_num_threads) says.

Threads: numba's own thread pool, NUMBA_NUM_THREADS threads (default: the number of CPUs);
numba.set_num_threads(k) lowers it at run time. No BLAS is called here, so no BLAS thread
pool competes with numba's; keep OPENBLAS_NUM_THREADS / OMP_NUM_THREADS for the numpy code
that runs between epochs.

Compiled code is cached on disk (cache=True): in the package's __pycache__ when that folder is
writable, else in NUMBA_CACHE_DIR, which this module sets (before numba is imported) to
$XDG_CACHE_HOME/softmax-cls/numba (~/.cache/softmax-cls/numba) when it is unset.
Importing this module without numba installed raises ImportError.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np


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


_cache_dir_for_numba()

import numba  # noqa: E402  (after the cache location is settled)
from numba import njit, prange  # noqa: E402
from numba.core.errors import NumbaPerformanceWarning  # noqa: E402

from .softmax import NonFiniteError  # noqa: E402

ROWS_PER_TASK = 4  # minibatch rows per forward task: 4 score sums share each load of W
CHUNK = 1024  # features per step of the score sums: 4 rows' chunks stay in the L1 cache
BLOCK_FLOATS = 8192  # gradient accumulators (C, block width) per task: 32 KB, about L1
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
# Gather: one row, augmented and preprocessed


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
def _preprocess_row(src, x, mean, scale):
    """x (P,) = (src (P,) - mean) * scale, in x's dtype."""
    for j in range(x.shape[0]):
        x[j] = (src[j] - mean[j]) * scale[j]


@njit(cache=True)
def _augment_row(src, flip, dy, dx, padding, image, x, mean, scale):
    """x (3072,) = the preprocessed image src (3072,) uint8, mirrored left-right if `flip`, then
    moved by dy rows and dx columns with the given padding (0 zero, 1 edge, 2 reflect).

    image (3072 + 2 MAX_SHIFT,) uint8 is scratch: the (mirrored) image with MAX_SHIFT bytes of
    slack on either side, so that every output line is one run of SIDE pixels read at an
    offset (a constant trip count, which the compiler turns into a few vector instructions);
    the |dx| pixels per line that came from beyond the source line are then padded one by
    one. Unsigned indices spare each access numba's negative-index check, which would stop
    the vectorisation.
    """
    if flip:
        for line in range(3 * SIDE):
            start = np.uint64(line * SIDE)
            for col in range(SIDE):
                image[start + np.uint64(MAX_SHIFT + col)] = src[start + np.uint64(SIDE - 1 - col)]
    else:
        for k in range(N_PIXELS):
            image[MAX_SHIFT + k] = src[k]
    pad_first, pad_stop = (0, dx) if dx > 0 else (SIDE + dx, SIDE)
    for plane in range(3):
        for row in range(SIDE):
            out = np.uint64(plane * PLANE + row * SIDE)
            source_row = _padded_index(row - dy, padding)
            if source_row < 0:  # zero padding: a line of zero pixels
                for col in range(SIDE):
                    k = out + np.uint64(col)
                    x[k] = (np.uint8(0) - mean[k]) * scale[k]
                continue
            line = MAX_SHIFT + plane * PLANE + source_row * SIDE
            start = np.uint64(line - dx)
            for col in range(SIDE):
                k = out + np.uint64(col)
                x[k] = (image[start + np.uint64(col)] - mean[k]) * scale[k]
            for col in range(pad_first, pad_stop):
                source_col = _padded_index(col - dx, padding)
                pixel = image[line + source_col] if source_col >= 0 else np.uint8(0)
                x[out + col] = (pixel - mean[out + col]) * scale[out + col]


@njit(cache=True)
def _gather_row(rows, r, position, flip, shift, padding, line, x, mean, scale):
    """x (P,) = preprocessed (and, when flip/shift are given, augmented) features of rows[r]."""
    do_flip = flip.shape[0] > 0 and flip[position]
    dy = shift[position, 0] if shift.shape[0] > 0 else 0
    dx = shift[position, 1] if shift.shape[0] > 0 else 0
    if do_flip or dy != 0 or dx != 0:
        _augment_row(rows[r], do_flip, dy, dx, padding, line, x, mean, scale)
    else:
        _preprocess_row(rows[r], x, mean, scale)


# ---------------------------------------------------------------------------------------------
# Scores


@njit(cache=True, fastmath=_DOT_MATH)
def _scores_4(X, i, W, S, zero):
    """S[i:i+4, c] = X[i:i+4] . W[c, :P] for every class c (no bias).

    In chunks of CHUNK features, so that the four rows' chunks stay in the L1 cache while
    every class reads them; the chunks' sums are added in order.
    """
    n = X.shape[1]
    for j0 in range(0, n, CHUNK):
        j1 = min(n, j0 + CHUNK)
        first = np.uint64(j0)  # unsigned: no negative-index check to stop vectorisation
        for c in range(W.shape[0]):
            s0 = s1 = s2 = s3 = zero
            for jj in range(j1 - j0):
                j = first + np.uint64(jj)
                w = W[c, j]
                s0 += X[i, j] * w
                s1 += X[i + 1, j] * w
                s2 += X[i + 2, j] * w
                s3 += X[i + 3, j] * w
            if j0 == 0:
                S[i, c], S[i + 1, c], S[i + 2, c], S[i + 3, c] = s0, s1, s2, s3
            else:
                S[i, c] += s0
                S[i + 1, c] += s1
                S[i + 2, c] += s2
                S[i + 3, c] += s3


@njit(cache=True, fastmath=_DOT_MATH)
def _scores_1(X, i, W, S, zero):
    """S[i, c] = X[i] . W[c, :P] for every class c (no bias)."""
    for c in range(W.shape[0]):
        s = zero
        for j in range(X.shape[1]):
            s += X[i, j] * W[c, j]
        S[i, c] = s


@njit(cache=True)
def _scores_of_rows(X, first, stop, W, has_bias, S, zero):
    """S[first:stop] = X[first:stop] @ W[:, :P].T (+ W[:, P] when has_bias)."""
    i = first
    while i + ROWS_PER_TASK <= stop:
        _scores_4(X, i, W, S, zero)
        i += ROWS_PER_TASK
    while i < stop:
        _scores_1(X, i, W, S, zero)
        i += 1
    if has_bias:
        bias = X.shape[1]
        for i in range(first, stop):
            for c in range(W.shape[0]):
                S[i, c] += W[c, bias]


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
def _forward(rows, batch_rows, labels, sample_weight, positions, flip, shift, padding, W,
             mean, scale, has_bias, clip, X, S, dS, row_loss, row_correct, row_ok, lines,
             zero):
    """Gather, augment and preprocess the minibatch rows[batch_rows] into X (b, P), and give
    every row its scores S, gradient row dS, loss term, correctness and finiteness.

    positions: the position in the epoch's order of the first minibatch row (for flip/shift).
    Parallel over tasks of ROWS_PER_TASK rows; lines (tasks, 3088) uint8 is their scratch.
    """
    b = batch_rows.shape[0]
    n_tasks = (b + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    inv_b = 1.0 / b
    for task in prange(n_tasks):
        first = task * ROWS_PER_TASK
        stop = min(b, first + ROWS_PER_TASK)
        for i in range(first, stop):
            _gather_row(rows, batch_rows[i], positions + i, flip, shift, padding,
                        lines[task], X[i], mean, scale)
        _scores_of_rows(X, first, stop, W, has_bias, S, zero)
        for i in range(first, stop):
            r = batch_rows[i]
            weight = sample_weight[r] if sample_weight.shape[0] > 0 else 1.0
            row_ok[i] = _softmax_row(S, i, labels[r], weight, inv_b, clip, dS, row_loss,
                                     row_correct, zero)


# ---------------------------------------------------------------------------------------------
# Gradient and update


@njit(cache=True, fastmath=_ORDERED_MATH)
def _data_grad_block(X, dS, j0, j1, acc):
    """acc[c, :j1-j0] = sum over rows i, in order, of dS[i, c] * X[i, j0:j1]."""
    b, n_classes = dS.shape
    width = j1 - j0
    first = np.uint64(j0)
    for c in range(n_classes):
        for j in range(width):
            acc[c, j] = 0
    i = 0
    while i + 4 <= b:
        for c in range(n_classes):
            d0, d1, d2, d3 = dS[i, c], dS[i + 1, c], dS[i + 2, c], dS[i + 3, c]
            for j in range(width):
                k = first + np.uint64(j)
                acc[c, j] = (acc[c, j] + d0 * X[i, k] + d1 * X[i + 1, k] + d2 * X[i + 2, k]
                             + d3 * X[i + 3, k])
        i += 4
    while i < b:
        for c in range(n_classes):
            d0 = dS[i, c]
            for j in range(width):
                acc[c, j] = acc[c, j] + d0 * X[i, first + np.uint64(j)]
        i += 1


@njit(cache=True)
def _block_width(n_classes):
    """Feature columns per gradient task: a multiple of 64 in [64, 256] whose (C, width)
    accumulators fit BLOCK_FLOATS. A function of C alone, never of the thread count."""
    return max(64, min(256, BLOCK_FLOATS // n_classes // 64 * 64))


@njit(cache=True)
def _update_columns(G, W, velocity, average, j0, j1, lr, momentum, nesterov, alpha, factor):
    """SGD on columns j0:j1: g = factor * G; velocity = momentum velocity + g; W -= lr * step
    (step = g + momentum velocity with Nesterov, else velocity); average += alpha (W - average)
    when alpha != 0."""
    for c in range(W.shape[0]):
        for j in range(j0, j1):
            g = G[c, j] * factor
            v = momentum * velocity[c, j] + g
            velocity[c, j] = v
            step = g + momentum * v if nesterov else v
            w = W[c, j] - lr * step
            W[c, j] = w
            if alpha != 0:
                average[c, j] += alpha * (w - average[c, j])


@njit(cache=True, parallel=True)
def _gradient(X, dS, W, has_bias, two_reg, reg_bias, acc, G, l2_parts, norm_parts,
              update, velocity, average, lr, momentum, nesterov, alpha, one):
    """G (C, D) = dS.T @ X (+ the bias column sum(dS, rows)) + the L2 gradient, in parallel
    over blocks of _block_width(C) columns (the bias column is one more block).

    l2_parts[k] / norm_parts[k] (float64) get block k's sum of penalised W*W (before any
    update) and of G*G. With `update`, each block is also updated right away (no clipping).
    """
    n_classes, n_cols = W.shape[0], X.shape[1]
    width = acc.shape[2]
    n_blocks = (n_cols + width - 1) // width
    n_tasks = n_blocks + 1 if has_bias else n_blocks
    for block in prange(n_tasks):
        l2, norm = 0.0, 0.0
        if block < n_blocks:
            j0, j1 = block * width, min(n_cols, (block + 1) * width)
            _data_grad_block(X, dS, j0, j1, acc[block])
            for c in range(n_classes):
                for j in range(j0, j1):
                    w = W[c, j]
                    g = acc[block, c, j - j0] + two_reg * w
                    G[c, j] = g
                    l2 += np.float64(w) * w
                    norm += np.float64(g) * g
        else:  # the bias column: its data gradient is the column sums of dS, in row order
            j0, j1 = n_cols, n_cols + 1
            for c in range(n_classes):
                g = one - one
                for i in range(dS.shape[0]):
                    g += dS[i, c]
                w = W[c, n_cols]
                if reg_bias:
                    g += two_reg * w
                    l2 += np.float64(w) * w
                G[c, n_cols] = g
                norm += np.float64(g) * g
        l2_parts[block], norm_parts[block] = l2, norm
        if update:
            _update_columns(G, W, velocity, average, j0, j1, lr, momentum, nesterov, alpha,
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
    """Buffers of one minibatch of up to batch_size rows."""
    n_classes, n_cols = W.shape
    width = _block_width(n_classes)
    n_blocks = (n_features + width - 1) // width
    n_tasks = (batch_size + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    dtype = W.dtype
    return (np.empty((batch_size, n_features), dtype), np.empty((batch_size, n_classes), dtype),
            np.empty((batch_size, n_classes), dtype), np.empty(batch_size),
            np.empty(batch_size, np.bool_), np.empty(batch_size, np.bool_),
            np.empty((n_tasks, N_PIXELS + 2 * MAX_SHIFT), np.uint8),
            np.empty((n_blocks, n_classes, width), dtype), np.empty((n_classes, n_cols), dtype),
            np.empty(n_blocks + 1), np.empty(n_blocks + 1))


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
    X, S, dS, row_loss, row_correct, row_ok, lines, acc, G, l2_parts, norm_parts = \
        _workspace(batch, n_features, W)
    zero, one, two_reg = _cast(W, 0), _cast(W, 1), _cast(W, 2 * reg)
    loss_sum, correct = 0.0, 0
    n_steps = (n + batch - 1) // batch
    fused = grad_clip <= 0
    for step in range(n_steps):
        start = step * batch
        b = min(batch, n - start)
        batch_rows = order[start:start + b]
        _forward(rows, batch_rows, labels, sample_weight, start, flip, shift, padding, W, mean,
                 scale, has_bias, clip, X[:b], S[:b], dS[:b], row_loss, row_correct, row_ok,
                 lines, zero)
        data_loss = 0.0
        for i in range(b):
            if not row_ok[i]:
                return loss_sum, correct, _BAD_SCORES, step
            data_loss += row_loss[i]
            correct += row_correct[i]
        alpha = _cast(W, avg_alpha[step])
        _gradient(X[:b], dS[:b], W, has_bias, two_reg, reg_bias, acc, G, l2_parts, norm_parts,
                  fused, velocity, average, lr, momentum, nesterov, alpha, one)
        l2, norm = 0.0, 0.0
        for k in range(l2_parts.shape[0] - (0 if has_bias else 1)):
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
    X, S, dS, row_loss, row_correct, row_ok, lines, acc, G, l2_parts, norm_parts = \
        _workspace(b, n_features, W)
    zero, one = _cast(W, 0), _cast(W, 1)
    batch_rows = np.arange(b)
    no_flip = np.empty(0, np.bool_)
    no_shift = np.empty((0, 2), np.int64)
    _forward(rows, batch_rows, labels, sample_weight, 0, no_flip, no_shift, 0, W, mean, scale,
             has_bias, _cast(W, clip), X, S, dS, row_loss, row_correct, row_ok, lines, zero)
    data_loss, correct = 0.0, 0
    for i in range(b):
        if not row_ok[i]:
            return 0.0, G, 0, False
        data_loss += row_loss[i]
        correct += row_correct[i]
    _gradient(X, dS, W, has_bias, _cast(W, 2 * reg), reg_bias, acc, G, l2_parts, norm_parts,
              False, G, G, one, one, False, one, one)
    l2 = 0.0
    for k in range(l2_parts.shape[0] - (0 if has_bias else 1)):
        l2 += l2_parts[k]
    return data_loss + reg * l2, G, correct, True


@njit(cache=True, parallel=True)
def _predict_kernel(rows, W, mean, scale, has_bias, zero, chunk):
    n, n_features = rows.shape
    S = np.empty((n, W.shape[0]), W.dtype)
    no_flip = np.empty(0, np.bool_)
    no_shift = np.empty((0, 2), np.int64)
    line = np.empty(0, np.uint8)
    for task in prange((n + chunk - 1) // chunk):
        first, stop = task * chunk, min(n, (task + 1) * chunk)
        X = np.empty((stop - first, n_features), W.dtype)
        for i in range(first, stop):
            _gather_row(rows, i, i, no_flip, no_shift, 0, line, X[i - first], mean, scale)
        _scores_of_rows(X, 0, stop - first, W, has_bias, S[first:stop], zero)
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


def train_epoch(rows, labels, order, sample_weight, flip, shift, padding, W, velocity, average,
                avg_alpha, mean, scale, has_bias, batch_size, lr, momentum, nesterov, grad_clip,
                reg, reg_bias, clip) -> tuple[float, int]:
    """One epoch of minibatch SGD in one compiled call; see ENGINE_API.md for every argument.

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
    with _quiet_compilation():
        loss_sum, correct, status, step = _train_epoch_kernel(
            _readonly(rows), _check_labels(labels, n_rows, W.shape[0]), order,
            _sample_weight(sample_weight, n_rows, W.dtype), flip, shift, int(padding), W, velocity,
            average, avg_alpha, _vector(mean, n_features, W.dtype, "mean"),
            _vector(scale, n_features, W.dtype, "scale"), bool(has_bias), int(batch_size),
            dtype(lr), dtype(momentum), bool(nesterov), float(grad_clip), float(reg),
            bool(reg_bias), dtype(clip))
    if status == _BAD_SCORES:
        raise NonFiniteError(f"non-finite scores in minibatch {step + 1} (inf or NaN in the "
                             "inputs or the weights)")
    if status == _BAD_WEIGHTS:
        raise NonFiniteError("non-finite weights")
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
