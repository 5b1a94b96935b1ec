"""The compiled entry points of the numba engine, each one call from Python: a run of SGD
steps (train_epoch_kernel), one minibatch's loss and gradient (batch_loss_and_grad_kernel)
and scores (predict_kernel). The step math is in step.py; the checks in api.py.

NESTED_PARALLEL_NOTE: the entry kernels loop over steps serially and call the parallel
forward / gradient; they are compiled with parallel=True all the same. Without it, a
kernel loaded from numba's disk cache in a new process segfaults whenever its signature was
not the first one compiled (numba issues #8578, #4807); with it, every cached signature
loads on its own. numba then warns that it found nothing to parallelise in them: api.py
hides that one warning around its calls.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .cache import njit  # before any function is compiled: see cache.py
from .gather import N_PIXELS
from .step import (
    CHUNK,
    TILE_ROWS,
    all_finite,
    block_count,
    block_width,
    fold,
    fold_bias,
    forward,
    gradient,
    group_scores,
    update_weights,
)

OK, BAD_SCORES, BAD_WEIGHTS = 0, 1, 2  # train_epoch_kernel's status


@njit(cache=True)
def _workspace(batch_size, n_features, W):
    """Buffers of one minibatch of up to batch_size rows (besides the gathered rows)."""
    n_classes, n_cols = W.shape
    width = block_width(n_classes)
    n_blocks = block_count(n_classes, n_features)
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
            np.empty(n_classes, dtype), np.empty(n_classes, dtype),
            np.empty((n_blocks, n_classes)))


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
def train_epoch_kernel(rows, labels, order, sample_weight, flip, shift, padding, W, velocity,
                        average, avg_alpha, mean, scale, has_bias, batch_size, lr, momentum,
                        nesterov, grad_clip, reg, reg_bias, clip):
    """Returns (loss_sum, correct, status, step): status 0 fine, 1 non-finite scores in
    `step`, 2 non-finite weights after the epoch. lr, momentum and clip have W's dtype."""
    n = order.shape[0]
    n_features = rows.shape[1]
    batch = min(batch_size, n)
    U = np.empty((batch, n_features), rows.dtype)
    S, dS, row_loss, row_correct, row_ok, lines, tiles, grad_tiles, acc, G, l2_parts, \
        norm_parts, W_fold, bias_fold, dS_sum, fold_parts = _workspace(batch, n_features, W)
    zero, one, two_reg = _cast(W, 0), _cast(W, 1), _cast(W, 2 * reg)
    loss_sum, correct = 0.0, 0
    n_steps = (n + batch - 1) // batch
    fused = grad_clip <= 0
    fold(W, mean, scale, has_bias, W_fold, bias_fold)  # later steps': the update regions'
    for step in range(n_steps):
        start = step * batch
        b = min(batch, n - start)
        batch_rows = order[start:start + b]
        forward(rows, order, batch_rows, True, labels, sample_weight, start, flip, shift,
                 padding, W_fold, bias_fold, clip, U[:b], S[:b], dS[:b], row_loss,
                 row_correct, row_ok, lines, tiles, zero)
        data_loss = 0.0
        for i in range(b):
            if not row_ok[i]:
                return loss_sum, correct, BAD_SCORES, step
            data_loss += row_loss[i]
            correct += row_correct[i]
        alpha = _cast(W, avg_alpha[step])
        _column_sums(dS[:b], zero, dS_sum)
        gradient(U[:b], dS[:b], dS_sum, W, mean, scale, has_bias, two_reg, reg_bias,
                  grad_tiles, acc, G, l2_parts, norm_parts, fused, velocity, average, lr,
                  momentum, nesterov, alpha, zero, one, W_fold, fold_parts)
        l2, norm = 0.0, 0.0
        for k in range(l2_parts.shape[0]):
            l2 += l2_parts[k]
            norm += norm_parts[k]
        if not fused:
            factor = one
            if norm > grad_clip * grad_clip:
                factor = _cast(W, grad_clip / np.sqrt(norm))
            update_weights(G, W, velocity, average, lr, momentum, nesterov, alpha, factor,
                           mean, scale, W_fold, fold_parts)
        fold_bias(W, has_bias, fold_parts, bias_fold)
        loss_sum += (data_loss + reg * l2) * b
    if not all_finite(W):
        return loss_sum, correct, BAD_WEIGHTS, n_steps - 1
    return loss_sum, correct, OK, n_steps


@njit(cache=True, parallel=True)  # see NESTED_PARALLEL_NOTE
def batch_loss_and_grad_kernel(rows, labels, sample_weight, W, mean, scale, has_bias, reg,
                                reg_bias, clip):
    """Returns (loss, dW (C, D), correct, ok) for one minibatch, with train_epoch's code."""
    b, n_features = rows.shape
    S, dS, row_loss, row_correct, row_ok, lines, tiles, grad_tiles, acc, G, l2_parts, \
        norm_parts, W_fold, bias_fold, dS_sum, fold_parts = _workspace(b, n_features, W)
    zero, one = _cast(W, 0), _cast(W, 1)
    U = rows.copy()
    batch_rows = np.arange(b)
    no_flip = np.empty(0, np.bool_)
    no_shift = np.empty((0, 2), np.int64)
    fold(W, mean, scale, has_bias, W_fold, bias_fold)
    forward(rows, batch_rows[:0], batch_rows, False, labels, sample_weight, 0, no_flip,
             no_shift, 0, W_fold, bias_fold, _cast(W, clip), U, S, dS, row_loss, row_correct,
             row_ok, lines, tiles, zero)
    data_loss, correct = 0.0, 0
    for i in range(b):
        if not row_ok[i]:
            return 0.0, G, 0, False
        data_loss += row_loss[i]
        correct += row_correct[i]
    _column_sums(dS, zero, dS_sum)
    gradient(U, dS, dS_sum, W, mean, scale, has_bias, _cast(W, 2 * reg), reg_bias, grad_tiles,
              acc, G, l2_parts, norm_parts, False, G, G, one, one, False, one, zero, one,
              W_fold, fold_parts)
    l2 = 0.0
    for k in range(l2_parts.shape[0]):
        l2 += l2_parts[k]
    return data_loss + reg * l2, G, correct, True


@njit(cache=True, parallel=True)
def predict_kernel(rows, W, mean, scale, has_bias, zero, chunk):
    """S (N, C) of W's dtype = the scores of rows (N, P) (see fold), in parallel over
    chunks of `chunk` rows (each chunk in tiles of TILE_ROWS rows)."""
    n = rows.shape[0]
    S = np.empty((n, W.shape[0]), W.dtype)
    n_tasks = (n + chunk - 1) // chunk
    tiles = np.empty((n_tasks, TILE_ROWS, CHUNK), W.dtype)
    W_fold = np.empty((W.shape[0], rows.shape[1]), W.dtype)
    bias_fold = np.empty(W.shape[0], W.dtype)
    fold(W, mean, scale, has_bias, W_fold, bias_fold)
    for task in prange(n_tasks):
        for i in range(task * chunk, min(n, (task + 1) * chunk), TILE_ROWS):
            group_scores(rows, i, min(TILE_ROWS, n - i), W_fold, bias_fold, tiles[task], S,
                         zero)
    return S
