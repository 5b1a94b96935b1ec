"""Where a numba SGD step's time goes: the forward and gradient regions of
train_epoch_kernel's steps, timed one by one with the CPU's cycle counter, at a thread count.

    python scripts/profile_numba_step.py --root DIR --threads 1 [--epochs 4]
    python scripts/profile_numba_step.py --root DIR --threads 2

The steps are the kernel's own (entry.train_epoch_kernel's loop without clipping: the
default config's), on the 45,000 first CIFAR-10 training rows at batch 128, C = 10, with
flips and 1-pixel shifts, edge padding; the loop is repeated here only to read the clock
between its regions. Prints, per step in microseconds, the median and the 10th percentile
of the forward region, the serial work between the regions and the gradient region, over
every step of --epochs epochs after one warm-up epoch, and the load average. On a shared
machine the 10th percentile (steps no other process interrupted) is the figure to compare;
two-thread medians are inflated many times when other processes hold a core.
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from softmax_cls.data.cifar import load_dataset
from softmax_cls.engines.numba_engine import entry
from softmax_cls.engines.numba_engine.cache import njit
from softmax_cls.engines.numba_engine.step import fold, fold_bias, forward, gradient

BATCH, TRAIN_ROWS = 128, 45000


@intrinsic
def _cycles(typingctx):
    """The CPU's cycle counter (llvm.readcyclecounter: rdtsc on x86)."""
    def codegen(context, builder, signature, args):
        function = builder.module.declare_intrinsic(
            "llvm.readcyclecounter", fnty=ir.FunctionType(ir.IntType(64), []))
        return builder.call(function, [])

    return types.int64(), codegen


@njit
def _now():
    return _cycles()


@njit
def _timed_steps(rows, labels, order, flip, shift, W, velocity, average, mean, scale, times):
    """train_epoch_kernel's steps (no clipping, no sample weights, edge padding), times[step]
    = the cycles of (forward, serial, gradient, serial)."""
    n, n_features = order.shape[0], rows.shape[1]
    U = np.empty((BATCH, n_features), rows.dtype)
    S, dS, row_loss, row_correct, row_ok, lines, tiles, grad_tiles, acc, G, l2_parts, \
        norm_parts, W_fold, bias_fold, dS_sum, fold_parts = entry._workspace(BATCH, n_features, W)
    zero, one, two_reg = entry._cast(W, 0), entry._cast(W, 1), entry._cast(W, 2 * 2.94e-6)
    lr, momentum, clip, alpha = entry._cast(W, 0.03), entry._cast(W, 0.9), entry._cast(W, 50), zero
    no_weights = np.empty(0, W.dtype)
    fold(W, mean, scale, True, W_fold, bias_fold)
    for step in range(n // BATCH):
        start = step * BATCH
        t0 = _cycles()
        forward(rows, order, order[start:start + BATCH], True, labels, no_weights, start, flip,
                shift, 1, W_fold, bias_fold, clip, U, S, dS, row_loss, row_correct, row_ok,
                lines, tiles, zero)
        t1 = _cycles()
        entry._column_sums(dS, zero, dS_sum)
        t2 = _cycles()
        gradient(U, dS, dS_sum, W, mean, scale, True, two_reg, False, grad_tiles, acc, G,
                 l2_parts, norm_parts, True, velocity, average, lr, momentum, True, alpha,
                 zero, one, W_fold, fold_parts)
        t3 = _cycles()
        fold_bias(W, True, fold_parts, bias_fold)
        t4 = _cycles()
        times[step, 0], times[step, 1] = t1 - t0, (t2 - t1) + (t4 - t3)
        times[step, 2] = t3 - t2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data", help="the extracted CIFAR-10 (its parent)")
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    data = load_dataset("cifar10", args.root, download=False, progress=False, keep_test=False)
    rows = np.ascontiguousarray(data.train_images[:TRAIN_ROWS])
    labels = np.ascontiguousarray(data.train_labels[:TRAIN_ROWS], dtype=np.int64)
    rows.flags.writeable = False
    rng = np.random.default_rng(0)
    mean = rows.mean(axis=0).astype(np.float32)
    scale = np.full(rows.shape[1], 1 / 255, np.float32)
    W = (rng.standard_normal((10, rows.shape[1] + 1)) * 1e-4).astype(np.float32)
    velocity, average = np.zeros_like(W), W.copy()
    steps = TRAIN_ROWS // BATCH
    kept = []
    for epoch in range(args.epochs + 1):  # the first one compiles and warms up
        order = rng.permutation(TRAIN_ROWS)
        flip = rng.random(TRAIN_ROWS) < 0.5
        shift = rng.integers(-1, 2, (TRAIN_ROWS, 2))
        times = np.zeros((steps, 3), np.int64)
        _timed_steps(rows, labels, order, flip, shift, W, velocity, average, mean, scale, times)
        if epoch:
            kept.append(times)
    _now()
    wall, first = time.perf_counter(), _now()
    time.sleep(0.5)
    hz = (_now() - first) / (time.perf_counter() - wall)
    us = np.concatenate(kept) / hz * 1e6
    median, q10 = np.median(us, axis=0), np.quantile(us, 0.1, axis=0)
    step_median, step_q10 = np.median(us.sum(axis=1)), np.quantile(us.sum(axis=1), 0.1)
    print(f"threads {args.threads}, {len(us)} steps, us per step (median / 10th percentile): "
          f"forward {median[0]:.1f} / {q10[0]:.1f}, serial {median[1]:.1f} / {q10[1]:.1f}, "
          f"gradient {median[2]:.1f} / {q10[2]:.1f}, step {step_median:.1f} / {step_q10:.1f}; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
