"""The numba engine's full-batch loss and gradient (the engine contract's full_loss_and_grad,
the objective L-BFGS minimises: docs/lbfgs.md), in one compiled pass over the rows.

Layout: rows (N, P) uint8, float32, or float16 given as their uint16 bits; W_scaled (C, P)
= W[:, :P] * scale in the products' dtype (float32 or float64: the L-BFGS driver's
`precision`), bias (C,) float64, mean (P,) in the products' dtype.

Each row is read once, while it is in cache: per tile of TILE_ROWS rows of one view, the
rows are gathered (augmented through gather.py's _augment_row when the view flips or
shifts; float16 bits converted exactly to float32 here, without a copy of the data set)
and centred into a tile x_c = u - mean of the products' dtype; then come their C scores
x_c . W_scaled[c] (step.py's _tile_scores), the softmax in float64 as
softmax.softmax_loss_from_scores computes it (scores plus bias, max-shifted, clipped below
at -clip; the weighted loss; dS = (p - onehot) * w / total; exp by expo.exp_into, within an
ulp of numpy's, for the whole tile in one vectorised loop), and the gradient rows
dS^T x_c added into the chunk's accumulator G (C, P) of the products' dtype.

Sums and determinism: the rows are cut into chunks of `chunk` rows; each chunk's G (like one
BLAS product of the numpy engine) is added into its run's float64 sums, and the runs
(RUNS of consecutive chunks, fewer when there are fewer chunks or their sums would not fit
RUN_BYTES) are added in run order at the end. The chunks, the runs and every order of
summation depend on the problem alone, never on the thread count: the result is bit for
bit the same on one thread or many (prange takes the runs).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from numba import prange

from ...math import softmax
from ...math.augment import PADDING_CODES
from ...math.preprocess import Preprocessor
from .. import numpy_engine
from ..contract import StepRule, TrainingRows, full_objective
from .api import THREAD_GOVERNOR, _is_compiled, _readonly
from .cache import njit  # before any function is compiled: see cache.py
from .expo import exp_into, exp_scratch
from .gather import _augment_row
from .step import TILE_ROWS, _tile_scores

# From this many classes an evaluation is numpy's (two BLAS products per chunk): the wide
# products are BLAS's strength, and at 64 and 100 classes the kernel measured no faster
BLAS_FROM_CLASSES = 64
RUNS = 16  # runs of consecutive chunks whose float64 sums are added at the end
RUN_BYTES = 1 << 28  # at most this many bytes of float64 run sums (C x P x 8 each)
CHUNK_VALUES = 1 << 18  # values (rows x P) per chunk: 512 rows of 512 features
_ORDERED_MATH = {"contract"}  # the gradient sums keep their row order
_HALF_EXP = 0x7C00
_TWO_TO_MINUS_24 = 2.0 ** -24
_ready: set[tuple[np.dtype, np.dtype]] = set()  # (rows, products) dtypes known compiled


@njit(cache=True)
def _half_bits_to_float(src, bits, values):
    """values (P,) float32 = the float16 numbers whose bits are src (P,) uint16, exactly
    (bits (P,) uint32 is the same buffer as values): normal numbers, infinities and NaNs by
    moving the exponent and mantissa bits, zeros and subnormals by arithmetic."""
    for j in range(src.shape[0]):
        h = np.uint32(src[j])
        magnitude = h & np.uint32(0x7FFF)
        exponent = h & np.uint32(_HALF_EXP)
        if exponent == 0:  # zero or subnormal: mantissa * 2**-24
            value = np.float32(magnitude) * np.float32(_TWO_TO_MINUS_24)
            values[j] = -value if h & np.uint32(0x8000) else value
        else:
            out = (magnitude << np.uint32(13)) + np.uint32((127 - 15) << 23)
            if exponent == np.uint32(_HALF_EXP):  # inf or NaN: the largest exponent
                out += np.uint32((128 - 16) << 23)
            bits[j] = out | ((h & np.uint32(0x8000)) << np.uint32(16))


@njit(cache=True)
def _centre(src, mean, out):
    """out (P,) = src (P,) converted to out's dtype, minus mean (P,)."""
    for j in range(src.shape[0]):
        out[j] = src[j] - mean[j]


@njit(cache=True)
def _load_tile(rows, index, i, n, view, padding, half, mean, tile, image, line, bits,
               values):
    """tile (TILE_ROWS, P) of the products' dtype: tile[r] = the view `view` (3,) int64
    (flip, dy, dx) of rows[index[i + r]], centred (minus mean (P,)), for the tile's n real
    rows r < n; rows n..TILE_ROWS-1 zero. rows (N, P) uint8, float32, or uint16 float16 bits
    when `half`; index (n_index,) int64; padding 0 zero, 1 edge, 2 reflect. Scratch: image
    and line (P,) of rows' dtype (the augmented row), values (P,) float32 and bits (P,)
    uint32, the same buffer (the converted float16 row)."""
    flip, dy, dx = view[0] != 0, view[1], view[2]
    plain = not flip and dy == 0 and dx == 0
    for r in range(TILE_ROWS):
        out = tile[r]
        if r >= n:
            out[:] = 0
            continue
        src = rows[index[i + r]]
        if not plain:
            _augment_row(src, flip, dy, dx, padding, image, line)
            src = line
        if half:
            _half_bits_to_float(src, bits, values)
            _centre(values, mean, out)
        else:
            _centre(src, mean, out)


@njit(cache=True)
def _tile_softmax(scores, n, labels, weight, index, i, bias, clip, total, d, bias_sum, z,
                  exp_z, low_power, high_power):
    """For the n real rows of a tile, rows[index[i + r]] for r < n: scores (TILE_ROWS, C) of
    the products' dtype, plus bias (C,) float64, in float64, max-shifted and clipped below at
    -clip; labels (N,) int64 and weight (N,) float32, or (0,) for all ones, of the data set's
    rows. Returns (the sum of w * row loss, all scores finite); d (TILE_ROWS, C) of the
    products' dtype = (p - onehot) * w / total, rows n.. zero; bias_sum (C,) float64 += the
    float64 d rows. At the first non-finite score it returns (0, False), d and bias_sum half
    done: the caller raises. z and exp_z (TILE_ROWS * C,) float64 hold the tile's shifted
    scores and their exp, low_power and high_power exp_into's scratch: the exps of the whole
    tile are one vectorised loop (expo.py)."""
    n_classes = scores.shape[1]
    for r in range(n):
        top = -np.inf
        for c in range(n_classes):
            value = np.float64(scores[r, c]) + bias[c]
            if not np.isfinite(value):
                return 0.0, False
            z[r * n_classes + c] = value
            top = max(top, value)
        for c in range(n_classes):
            z[r * n_classes + c] = max(z[r * n_classes + c] - top, -clip)
    exp_into(z, exp_z, n * n_classes, low_power, high_power)
    loss = 0.0
    for r in range(TILE_ROWS):
        if r >= n:
            d[r, :] = 0
            continue
        total_exp = 0.0
        for c in range(n_classes):
            total_exp += exp_z[r * n_classes + c]
        row = index[i + r]
        y = labels[row]
        w = weight[row] if weight.shape[0] else 1.0
        loss += w * (np.log(total_exp) - z[r * n_classes + y])
        for c in range(n_classes):
            g = exp_z[r * n_classes + c] / total_exp
            if c == y:
                g -= 1.0
            g = g * w / total
            d[r, c] = g
            bias_sum[c] += g
    return loss, True


@njit(cache=True, fastmath=_ORDERED_MATH)
def _tile_gradient(tile, d, G):
    """G (C, P) += d (TILE_ROWS, C)^T @ tile (TILE_ROWS, P), all of the products' dtype, each
    entry's eight products (TILE_ROWS is 8: the rows are unrolled here) added in pairs,
    then pairs of pairs, the same order every time."""
    for c in range(G.shape[0]):
        g = G[c]
        d0, d1, d2, d3 = d[0, c], d[1, c], d[2, c], d[3, c]
        d4, d5, d6, d7 = d[4, c], d[5, c], d[6, c], d[7, c]
        t0, t1, t2, t3 = tile[0], tile[1], tile[2], tile[3]
        t4, t5, t6, t7 = tile[4], tile[5], tile[6], tile[7]
        for j in range(g.shape[0]):
            g[j] += (((d0 * t0[j] + d1 * t1[j]) + (d2 * t2[j] + d3 * t3[j]))
                     + ((d4 * t4[j] + d5 * t5[j]) + (d6 * t6[j] + d7 * t7[j])))


@njit(cache=True, parallel=True)
def full_kernel(rows, index, labels, weight, views, padding, half, mean, W_scaled, bias,
                clip, chunk, runs, total):
    """(loss sum float64 = the sum of w * row loss, grad (C, P) float64 = the sum of
    dS^T x_c, bias grad (C,) float64 = the sum of dS, all scores finite) over rows[index] in
    every view of views (V, 3) int64 (flip, dy, dx).

    rows (N, P) uint8, float32, or uint16 (float16 bits, `half`); index (n,) int64; labels
    (N,) int64; weight (N,) float32, or (0,) for all ones; padding 0 zero, 1 edge, 2
    reflect; mean (P,) and W_scaled (C, P) of the products' dtype; bias (C,) float64; clip
    > 0; `chunk` rows per chunk; `runs` runs of consecutive chunks; total = n * V, the
    divisor of dS. See the module's docstring."""
    n = index.shape[0]
    n_classes, P = W_scaled.shape
    dtype = W_scaled.dtype
    n_chunks = (n + chunk - 1) // chunk
    grad_runs = np.zeros((runs, n_classes, P))
    bias_runs = np.zeros((runs, n_classes))
    loss_runs = np.zeros(runs)
    ok_runs = np.ones(runs, np.bool_)
    zero = np.zeros(1, dtype)[0]
    for k in prange(runs):
        tile = np.zeros((TILE_ROWS, P), dtype)
        scores = np.zeros((TILE_ROWS, n_classes), dtype)
        d = np.zeros((TILE_ROWS, n_classes), dtype)
        z = np.empty(TILE_ROWS * n_classes)
        exp_z = np.empty(TILE_ROWS * n_classes)
        low_power, high_power = exp_scratch(TILE_ROWS * n_classes)
        G = np.zeros((n_classes, P), dtype)
        image = np.empty(P, rows.dtype)
        line = np.empty(P, rows.dtype)
        values = np.empty(P, np.float32)
        bits = values.view(np.uint32)
        run_grad, run_bias = grad_runs[k], bias_runs[k]
        loss = 0.0
        for chunk_number in range(k * n_chunks // runs, (k + 1) * n_chunks // runs):
            start, stop = chunk_number * chunk, min(n, (chunk_number + 1) * chunk)
            G[:] = 0
            for v in range(views.shape[0]):
                for i in range(start, stop, TILE_ROWS):
                    real_rows = min(TILE_ROWS, stop - i)
                    _load_tile(rows, index, i, real_rows, views[v], padding, half, mean, tile,
                               image, line, bits, values)
                    _tile_scores(tile, P, W_scaled, 0, scores, 0, real_rows, False, zero)
                    tile_loss, ok = _tile_softmax(scores, real_rows, labels, weight, index, i,
                                                  bias, clip, total, d, run_bias, z,
                                                  exp_z, low_power, high_power)
                    if not ok:
                        ok_runs[k] = False
                        break
                    loss += tile_loss
                    _tile_gradient(tile, d, G)
            for c in range(n_classes):
                for j in range(P):
                    run_grad[c, j] += G[c, j]
        loss_runs[k] = loss
    loss_sum = 0.0
    grad = np.zeros((n_classes, P))
    bias_grad = np.zeros(n_classes)
    ok = True
    for k in range(runs):  # in run order, whatever the threads
        loss_sum += loss_runs[k]
        grad += grad_runs[k]
        bias_grad += bias_runs[k]
        ok = ok and ok_runs[k]
    return loss_sum, grad, bias_grad, ok


def full_loss_and_grad(data: TrainingRows, index: np.ndarray, W: np.ndarray, pre: Preprocessor,
                       rule: StepRule, views: tuple, padding: str, precision: str,
                       chunk: int | None = None, workers: int | None = None,
                       on_compile: Callable[[], None] | None = None
                       ) -> tuple[float, np.ndarray]:
    """The full-batch objective of the contract over data.rows[index] and `views`, and its
    gradient (C, D) float64, for W (C, D) float64 (arguments checked by the Engine), in one
    compiled pass (full_kernel): products in `precision`, the softmax, the loss and every
    sum across chunks in float64. `chunk` rows per chunk (default CHUNK_VALUES values);
    `workers` threads (default: numba's, which --threads sets, or one while the engine's
    THREAD_GOVERNOR measures one faster: on a busy machine a parallel region waits for a
    descheduled thread); the result does not depend on them. rows may be a memory map of
    any size (read in place when C-contiguous, as the data loaders make them; another
    layout is copied) and float16 (converted row by row in the kernel). From
    BLAS_FROM_CLASSES classes on, numpy_engine.full_loss_and_grad computes it instead.
    `on_compile` is called first when the kernel must compile for these dtypes (it is
    neither in memory nor in numba's disk cache)."""
    if W.shape[0] >= BLAS_FROM_CLASSES:
        return numpy_engine.full_loss_and_grad(data, index, W, pre, rule, views, padding,
                                               precision, chunk, workers)
    dtype = np.dtype(precision)
    rows = data.rows
    half = rows.dtype == np.float16
    if half:
        rows = rows.view(np.uint16)  # the kernel converts the bits: numba has no float16
    rows = _readonly(rows)  # a memory map: the same pages, the signature of any array
    n_classes, P = W.shape[0], pre.n_raw
    mean = np.ascontiguousarray(pre.vectors(dtype)[0])
    W_scaled = np.ascontiguousarray(W[:, :P] * pre.scale, dtype=dtype)  # (C, P)
    bias = W[:, P].copy() if pre.bias else np.zeros(n_classes)
    index = _readonly(np.asarray(index, dtype=np.int64))  # read-only, as rows: one signature
    views_array = np.array([(int(bool(f)), int(dy), int(dx)) for f, dy, dx in views],
                           np.int64).reshape(-1, 3)
    weight = _readonly(np.zeros(0, np.float32) if data.sample_weight is None
                       else np.asarray(data.sample_weight, dtype=np.float32))
    labels = _readonly(np.asarray(data.labels, dtype=np.int64))
    chunk = max(64, CHUNK_VALUES // P) if chunk is None else int(chunk)
    n_chunks = -(-len(index) // chunk)
    runs = max(1, min(n_chunks, RUNS, RUN_BYTES // (8 * n_classes * P)))
    total = len(index) * len(views_array)
    arguments = (rows, index, labels, weight,
                 views_array, PADDING_CODES[padding], half, mean, W_scaled, bias,
                 float(rule.clip), chunk, runs, float(total))
    kind = (rows.dtype, dtype)
    if on_compile is not None and kind not in _ready:
        if not _is_compiled(full_kernel, arguments):
            on_compile()
        _ready.add(kind)
    before = numba.get_num_threads()
    if workers is not None:
        numba.set_num_threads(max(1, min(int(workers), numba.config.NUMBA_NUM_THREADS)))
    try:
        if workers is None:  # numba's threads, or one while that is faster (a busy machine)
            call = ("full", rows.dtype.str, P, n_classes, len(views_array), dtype.str)
            loss_sum, grad_raw, grad_bias, ok = THREAD_GOVERNOR.run(
                call, total, lambda: full_kernel(*arguments))
        else:
            loss_sum, grad_raw, grad_bias, ok = full_kernel(*arguments)
    finally:
        numba.set_num_threads(before)
    if not ok:
        raise softmax.NonFiniteError("non-finite scores (inf or NaN in the inputs or the "
                                     "weights)")
    return full_objective(W, pre, rule, loss_sum, total, grad_raw, grad_bias)
