"""The compiled math of one SGD step of the numba engine: tiles, scores, softmax rows, the
gradient and the update.

Layout and math are those of the engine interface: weights W (C, D) float32 (float64 for
the gradient check and predictions), D = P + 1 with the bias feature last when has_bias;
rows U (b, P) uint8 or float32 as they are stored. Per SGD step:

0. The preprocessing x = [(u - mean) * scale, 1] is folded into the weights (fold), so
   that the kernels compute with the raw rows u as they are: scores u @ W_fold.T + bias_fold.
   Only a run's first step calls fold; every update region folds its own blocks for the
   next step (fold_columns), and the per-block sums of bias_fold are added up serially in
   block order (fold_bias): C times the number of blocks additions between the regions.
1. Forward (forward), in parallel over tiles of TILE_ROWS minibatch rows: each row is
   gathered into U (gather.py) unless U already is the minibatch; the tile is converted
   chunk by chunk into a small float buffer of W's dtype that lives in the L1 cache; then
   come its C scores, the clipped softmax, its loss term, its gradient row dS and whether it
   is predicted right. No float copy of the data set exists.
2. Gradient and update (gradient), in parallel over blocks of feature columns
   (block_width): every sum over the minibatch of dS[i, c] * u[i, j] runs in row order,
   then is unfolded, dW = scale * (that - mean * sum(dS[:, c])), and the L2 term added;
   without gradient clipping the block is updated (momentum / Nesterov / averaging) in the
   same pass; with it, the caller sums the per-block squared norms and calls update_weights.

Determinism: every output of a parallel loop (a row's scores, a block's gradient columns, a
block's partial sums) is computed by one task whose work does not depend on the number of
threads, and partial sums are combined sequentially in block order, so results are
bit-identical whatever NUMBA_NUM_THREADS (or numba.set_num_threads) says.
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from numba import prange

from .cache import njit  # before any function is compiled: see cache.py
from .gather import gather_row, prefetch_rows

TILE_ROWS = 8  # minibatch rows per tile: 8 score sums share each load of W, 8 gradient rows
#                each load and store of the accumulators
CHUNK = 512  # features per tile of the score sums: (8, 512) floats + W's chunk stay in L1
BLOCK_FLOATS = 32768  # gradient accumulators (C, block width) per task: up to 128 KB, in L2


def vector_registers() -> int:
    """The vector registers of the machine code numba compiles here: 16 on x86 without
    AVX-512 (AVX2 and older), else 32 (AVX-512; other architectures, Arm's NEON among them).
    The features are the ones numba compiles for: NUMBA_CPU_FEATURES when set (a portable
    cache), else this CPU's."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return 32
    from numba.core import codegen

    features = numba.config.CPU_FEATURES
    if features is None:
        features = codegen.get_host_cpu_features()
    return 32 if "+avx512f" in features.split(",") else 16


# The score tiles' layout, chosen once by the registers: two classes of eight rows keep 16
# sums in registers, which fits 32; with 16 it spills to the stack, and four rows at a time
# is faster. The scores may differ in the last place between layouts (their sums are
# reassociated), never between runs or thread counts on one machine.
WIDE_REGISTERS = vector_registers() >= 32

# Score sums may be reassociated (vectorised); nothing may assume finite values, since
# non-finite scores must be seen and reported. The gradient sums keep their row order.
_DOT_MATH = {"reassoc", "contract", "nsz"}
_ORDERED_MATH = {"contract"}


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
    """S[i + r, c] (+)= sums[r] for the real rows r < n of the len(sums) rows from row i."""
    for r in range(len(sums)):
        if r < n:
            if add:
                S[i + r, c] += sums[r]
            else:
                S[i + r, c] = sums[r]


@njit(cache=True, fastmath=_DOT_MATH)
def _tile_scores_eight_rows(tile, m, W, j0, S, i, n, add, zero):
    """S[i:i+n, c] (+)= tile[:n, :m] . W[c, j0:j0+m] for every class c, two classes of all
    eight rows at a time: 16 sums in registers, 10 loads per 16 multiply-adds (for 32 vector
    registers: with 16 they spill)."""
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


@njit(cache=True, fastmath=_DOT_MATH)
def _tile_scores_four_rows(tile, m, W, j0, S, i, n, add, zero):
    """The same sums as _tile_scores_eight_rows, two classes of four rows at a time (each
    half of the tile in turn): 8 sums in registers, 6 loads per 8 multiply-adds, which fit
    16 vector registers (AVX2)."""
    n_classes = W.shape[0]
    first = np.uint64(j0)
    for r in range(0, TILE_ROWS, 4):
        c = 0
        while c + 2 <= n_classes:
            a0 = a1 = a2 = a3 = zero
            b0 = b1 = b2 = b3 = zero
            for jj in range(m):
                k = np.uint64(jj)
                j = first + k
                v, w = W[c, j], W[c + 1, j]
                t0, t1, t2, t3 = tile[r, k], tile[r + 1, k], tile[r + 2, k], tile[r + 3, k]
                a0 += t0 * v
                a1 += t1 * v
                a2 += t2 * v
                a3 += t3 * v
                b0 += t0 * w
                b1 += t1 * w
                b2 += t2 * w
                b3 += t3 * w
            _put_scores(S, i + r, n - r, c, (a0, a1, a2, a3), add)
            _put_scores(S, i + r, n - r, c + 1, (b0, b1, b2, b3), add)
            c += 2
        if c < n_classes:
            a0 = a1 = a2 = a3 = zero
            for jj in range(m):
                k = np.uint64(jj)
                v = W[c, first + k]
                a0 += tile[r, k] * v
                a1 += tile[r + 1, k] * v
                a2 += tile[r + 2, k] * v
                a3 += tile[r + 3, k] * v
            _put_scores(S, i + r, n - r, c, (a0, a1, a2, a3), add)


_tile_scores = _tile_scores_eight_rows if WIDE_REGISTERS else _tile_scores_four_rows


@njit(cache=True, fastmath={"reassoc", "contract"})
def fold_columns(W, mean, scale, W_fold, j0, j1, parts):
    """W_fold[:, j0:j1] = W[:, j0:j1] * scale[j0:j1], and parts[c] (float64) = the sum of
    W_fold[c, j0:j1] * mean[j0:j1]: one block's share of fold. Reassociated (vectorised)
    within this one loop, which one task runs for a whole block, whatever the thread count."""
    first = np.uint64(j0)
    for c in range(W.shape[0]):
        w, folded = W[c], W_fold[c]
        total = 0.0
        for jj in range(j1 - j0):
            j = first + np.uint64(jj)
            folded[j] = w[j] * scale[j]
            total += np.float64(folded[j]) * mean[j]
        parts[c] = total


@njit(cache=True)
def fold_bias(W, has_bias, fold_parts, bias_fold):
    """bias_fold (C,) = W[:, P] (0 without a bias column) - the sum of fold_parts (blocks, C)
    float64 over the blocks, in block order."""
    n_features = W.shape[1] - (1 if has_bias else 0)
    for c in range(W.shape[0]):
        total = 0.0
        for k in range(fold_parts.shape[0]):
            total += fold_parts[k, c]
        bias_fold[c] = (np.float64(W[c, n_features]) if has_bias else 0.0) - total


@njit(cache=True)
def block_count(n_classes, n_features):
    """The number of feature blocks of block_width(n_classes) columns (at least one)."""
    width = block_width(n_classes)
    return max(1, (n_features + width - 1) // width)


@njit(cache=True)
def fold(W, mean, scale, has_bias, W_fold, bias_fold):
    """The preprocessing folded into the weights: x @ W.T == u @ W_fold.T + bias_fold for
    x = [(u - mean) * scale, 1], with W_fold (C, P) = W[:, :P] * scale and bias_fold (C,) =
    W[:, P] - W_fold @ mean (summed in float64), so that the rows are used as they are.
    Summed per block of block_width(C) columns (fold_columns), the blocks in order
    (fold_bias): the same sums as the parallel gradient / update_weights regions, which fold
    the next step's weights block by block as they update them."""
    n_classes, n_features = W_fold.shape
    width = block_width(n_classes)
    parts = np.empty((block_count(n_classes, n_features), n_classes))
    for block in range(parts.shape[0]):
        fold_columns(W, mean, scale, W_fold, block * width,
                     min(n_features, (block + 1) * width), parts[block])
    fold_bias(W, has_bias, parts, bias_fold)


@njit(cache=True)
def group_scores(U, i, n, W_fold, bias_fold, tile, S, zero):
    """S[i:i+n] = U[i:i+n] @ W_fold.T + bias_fold for the n <= TILE_ROWS rows (see fold), in
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
def forward(rows, order, batch_rows, gather, labels, sample_weight, position, flip, shift,
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
            prefetch_rows(rows, order, ahead, ahead + TILE_ROWS)
            for r in range(i, i + n):
                gather_row(rows, batch_rows[r], position + r, flip, shift, padding,
                            lines[group], U[r])
        group_scores(U, i, n, W_fold, bias_fold, tiles[group], S, zero)
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
def block_width(n_classes):
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
    gradient with respect to W from the one with respect to the folded weights (fold)
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
def gradient(U, dS, dS_sum, W, mean, scale, has_bias, two_reg, reg_bias, tiles, acc, G,
              l2_parts, norm_parts, update, velocity, average, lr, momentum, nesterov, alpha,
              zero, one, W_fold, fold_parts):
    """G (C, D) = dS.T @ X (+ the bias column dS_sum, the sums of dS over the rows) + the L2
    gradient, with X the preprocessed minibatch U, in parallel over blocks of
    block_width(C) feature columns (the last block also does the bias column).

    l2_parts[k] / norm_parts[k] (float64) get block k's sum of penalised W*W (before any
    update) and of G*G. With `update`, each block is also updated right away (no clipping)
    and the G*G sums of the feature columns are skipped (only the bias column's is added).
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
            fold_columns(W, mean, scale, W_fold, j0, j1, fold_parts[block])


@njit(cache=True, parallel=True)
def update_weights(G, W, velocity, average, lr, momentum, nesterov, alpha, factor, mean, scale,
                   W_fold, fold_parts):
    """The SGD update of every column, in parallel over gradient's blocks of feature columns
    (the last one also updates the bias column), each block then folded for the next step
    as gradient does (fold_columns into W_fold and fold_parts; the caller's fold_bias)."""
    n_cols, n_features = W.shape[1], W_fold.shape[1]
    width = block_width(W.shape[0])
    count = fold_parts.shape[0]
    for block in prange(count):
        j0, j1 = block * width, min(n_features, (block + 1) * width)
        stop = n_cols if block == count - 1 else j1
        _update_columns(G, W, velocity, average, j0, stop, lr, momentum, nesterov, alpha, factor)
        fold_columns(W, mean, scale, W_fold, j0, j1, fold_parts[block])


@njit(cache=True)
def all_finite(A):
    for value in A.ravel():
        if not np.isfinite(value):
            return False
    return True
