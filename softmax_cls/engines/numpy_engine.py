"""The numpy engine: the engine contract (softmax_cls.engines.contract) with numpy and BLAS.

The reference engine and the fallback when numba is not installed. Each step gathers the
minibatch's rows into preallocated buffers, augments them (math.augment), converts them once
to float32 raw rows u, folds the preprocessing into the weights (Preprocessor.fold: the
weights on u and a bias),
takes the loss and the gradient with respect to the folded weights, unfolds it
(Preprocessor.unfold_grad) and updates with optim.sgd_step and optim.average_step.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from ..math import softmax
from ..math.augment import apply_augmentation, apply_view
from ..math.optim import average_step, sgd_step
from ..math.preprocess import Preprocessor, image_scores
from .contract import (
    Engine,
    EpochPlan,
    OptimizerState,
    StepRule,
    TrainingRows,
    full_objective,
    gather_rows,
)


class _StepBuffers:
    """The large arrays one step needs, allocated once per epoch (a step still allocates the
    b x C arrays of numpy's softmax helper and C x D temporaries of the update).

    rows (b, P) of the data's dtype (gathered, augmented) and their copy `raw` in the weights'
    dtype; the folded weights W_raw (C, P + 1); scores (b, C); the gradients grad (C, D) and
    grad_raw (C, P + 1) (with respect to the folded weights; grad_pc (P, C) is its BLAS
    output), and a (C, P) scratch.
    """

    def __init__(self, batch_size: int, n_raw: int, n_classes: int, n_cols: int, rows_dtype,
                 dtype=np.float32):
        self.gathered = np.empty((batch_size, n_raw), dtype=rows_dtype)
        self.raw = np.empty((batch_size, n_raw), dtype=dtype)
        self.W_raw = np.empty((n_classes, n_raw + 1), dtype=dtype)
        self.scores = np.empty((batch_size, n_classes), dtype=dtype)
        self.grad = np.empty((n_classes, n_cols), dtype=dtype)
        self.scratch = np.empty((n_classes, n_raw), dtype=dtype)
        self.grad_raw = np.empty((n_classes, n_raw + 1), dtype=dtype)
        self.grad_pc = np.empty((n_raw, n_classes), dtype=dtype)


def _step_loss_and_grad(W: np.ndarray, raw: np.ndarray, labels: np.ndarray,
                        weight: np.ndarray | None, pre: Preprocessor, rule: StepRule,
                        buffers: _StepBuffers) -> tuple[float, int]:
    """Loss and gradient of one minibatch, the gradient into buffers.grad (C, D): the one
    code of train_epoch's steps and of loss_and_grad.

    W (C, D) float32 or float64, raw (b, P) raw values in W's dtype, labels (b,), weight (b,)
    or None. Returns (loss incl. the L2 penalty, correct).
    """
    n, P = raw.shape
    W_raw = pre.fold(W, out=buffers.W_raw)
    scores = buffers.scores[:n]
    np.matmul(raw, W_raw[:, :P].T, out=scores)
    scores += W_raw[:, P]
    data_loss, dscores = softmax.softmax_loss_from_scores(scores, labels, rule.clip, weight)
    correct = int(np.count_nonzero(scores.argmax(axis=1) == labels))
    grad_raw = buffers.grad_raw
    # (P, C) = raw.T @ dS then one transposed copy: OpenBLAS splits this shape better over
    # threads than (C, P) = dS.T @ raw (174 vs 218 us at b = 256, 2 threads; equal at 1)
    np.matmul(raw.T, dscores, out=buffers.grad_pc)
    np.copyto(grad_raw[:, :P], buffers.grad_pc.T)
    np.sum(dscores, axis=0, out=grad_raw[:, P])
    grad = pre.unfold_grad(grad_raw, out=buffers.grad, scratch=buffers.scratch)
    penalty = 0.0
    if rule.reg:
        flat = W.ravel()  # W is C-contiguous: BLAS dot, then the bias column taken out
        with np.errstate(over="ignore", invalid="ignore"):
            squares = float(np.dot(flat, flat))
            if not rule.penalise_last:
                squares -= float(np.dot(W[:, P], W[:, P]))
        if not math.isfinite(squares):  # past float32's range: the reference's float64 sum
            squares = softmax.penalised_squares(W, rule.penalise_last)
        two_reg = W.dtype.type(2 * rule.reg)
        if rule.penalise_last:
            grad += two_reg * W
        else:  # then W's last column is the bias column: W[:, :P] the pixel columns
            np.multiply(W[:, :P], two_reg, out=buffers.scratch)
            grad[:, :P] += buffers.scratch
        penalty = rule.reg * squares
    return softmax.finite_loss(data_loss + penalty), correct


def train_epoch(data: TrainingRows, plan: EpochPlan, rule: StepRule, pre: Preprocessor,
                state: OptimizerState) -> tuple[float, int]:
    """One epoch of the contract: per step a gather into preallocated buffers, one conversion
    to float32, two BLAS products, optim.sgd_step and optim.average_step."""
    rows, labels, weights = data.rows, data.labels, data.sample_weight
    W, velocity, average = state.W, state.velocity, state.average
    batch_size = min(plan.batch_size, len(plan.order))
    buffers = _StepBuffers(batch_size, rows.shape[1], W.shape[0], W.shape[1], rows.dtype)
    augmenting = plan.flip is not None or plan.shift is not None
    no_flip, no_shift = np.zeros(0, bool), np.zeros((0, 2), np.int64)
    total_loss, total_correct = 0.0, 0
    for step, start in enumerate(range(0, len(plan.order), plan.batch_size)):
        batch_rows = plan.order[start : start + plan.batch_size]
        n = len(batch_rows)
        gathered, raw = buffers.gathered[:n], buffers.raw[:n]
        gather_rows(rows, batch_rows, gathered)
        if augmenting:
            apply_augmentation(
                gathered, no_flip if plan.flip is None else plan.flip[start : start + n],
                no_shift if plan.shift is None else plan.shift[start : start + n],
                plan.padding)
        np.copyto(raw, gathered)
        loss, correct = _step_loss_and_grad(
            W, raw, labels[batch_rows], None if weights is None else weights[batch_rows], pre,
            rule, buffers)
        sgd_step(W, velocity, buffers.grad, rule.lr, rule.momentum, rule.nesterov,
                 rule.grad_clip)
        average_step(average, W, plan.avg_alpha[step])
        total_loss += loss * n
        total_correct += correct
    return total_loss, total_correct


def loss_and_grad(rows: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None,
                  W: np.ndarray, pre: Preprocessor, rule: StepRule
                  ) -> tuple[float, np.ndarray, int]:
    """The loss, gradient dW (C, D) in W's dtype and correct predictions of one minibatch
    (b, P), with the code of one train_epoch step."""
    buffers = _StepBuffers(len(rows), rows.shape[1], W.shape[0], W.shape[1], rows.dtype,
                           W.dtype)
    np.copyto(buffers.raw, rows)
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=W.dtype)
    loss, correct = _step_loss_and_grad(W, buffers.raw, labels, weight, pre, rule, buffers)
    return loss, buffers.grad, correct


def predict_scores(rows: np.ndarray, W: np.ndarray, pre: Preprocessor) -> np.ndarray:
    """Class scores (N, C) in W's dtype of raw rows (N, P) under weights W (C, D)."""
    return image_scores(W, pre, rows)


# Values (rows x raw values) per chunk of the full-batch objective: 4 MB of float32 (1365
# CIFAR rows, 2048 rows of 512 features), few enough BLAS calls that a loaded machine's
# thread hand-offs do not dominate, small enough to stay in cache between the products
FULL_BATCH_VALUES = 1 << 20
# Runs of consecutive chunks whose sums the full-batch objective adds at the end: a constant,
# not the thread count, so that one thread and many add the same numbers in the same order
# (blas_threads(), hence the workers, is at most 8 too)
SUM_RUNS = 8


def full_loss_and_grad(data: TrainingRows, index: np.ndarray, W: np.ndarray, pre: Preprocessor,
                       rule: StepRule, views: tuple, padding: str, precision: str,
                       chunk: int | None = None, workers: int | None = None
                       ) -> tuple[float, np.ndarray]:
    """The full-batch objective of the contract over data.rows[index] and `views`, and its
    gradient (C, D) float64, for W (C, D) float64.

    Per chunk of `chunk` rows (default: FULL_BATCH_VALUES values of the rows or of the
    scores, whichever is wider): one gather, then per
    view one pass that converts and centres the raw rows into `precision` (x_c = u - mean;
    the scale is folded into the weights), the scores x_c @ (W * scale).T (a BLAS product
    in `precision`), the softmax and its loss in float64
    (softmax.softmax_loss_from_scores), and x_c.T @ dS (a BLAS product in `precision`)
    added into a float64 sum. The chunks are summed in SUM_RUNS runs of consecutive
    chunks (fewer when there are fewer chunks), each with its own float64 sums, added in run
    order at the end: the same runs and order for any thread count, so that the result is
    bit for bit the same on one thread or many. `workers` threads (default
    parallel_workers()) take the runs, with BLAS held to one thread meanwhile: on a few
    cores that is faster than BLAS's own threads on these narrow products
    (docs/development.md). Centring before the
    product keeps the float32 products as accurate as on standardised features (folding
    the mean into a bias would cancel large terms). The float32 mean differs from the
    float64 one by its rounding only; docs/lbfgs.md says what float32 products cost in
    agreement with float64.
    """
    rows, labels, weights = data.rows, data.labels, data.sample_weight
    dtype = np.dtype(precision)
    n_classes, P = W.shape[0], pre.n_raw
    mean = pre.vectors(dtype)[0] if pre.mean.any() else None
    W_scaled = np.ascontiguousarray((W[:, :P] * pre.scale).T, dtype=dtype)  # (P, C)
    bias = W[:, P].copy() if pre.bias else np.zeros(n_classes)
    total = len(index) * len(views)
    # the rows' (chunk, P) and the scores' (chunk, C) blocks both within the values: sized
    # by P alone, 20,000 classes of 2 features made (39,900, 20,000) score blocks, 3 GB each
    chunk = max(64, FULL_BATCH_VALUES // max(P, n_classes)) if chunk is None else chunk
    size = min(chunk, len(index))
    starts = range(0, len(index), size)
    contiguous = bool(np.all(np.diff(index) == 1))

    def run(first: int, stop_chunk: int) -> tuple[float, np.ndarray, np.ndarray]:
        """(loss sum, sum of x_c.T @ dS (P, C), sum of dS (C,)), float64, over the chunks
        starts[first:stop_chunk]."""
        grad_pc = np.zeros((P, n_classes))
        grad_bias = np.zeros(n_classes)
        loss_sum = 0.0
        gathered = np.empty((size, P), dtype=rows.dtype)
        centred = np.empty((size, P), dtype=dtype)
        scores = np.empty((size, n_classes), dtype=dtype)
        product = np.empty((P, n_classes), dtype=dtype)
        for start in starts[first:stop_chunk]:
            stop = min(start + size, len(index))
            n = stop - start
            if contiguous:  # a slice of the file: no gather copy
                block = rows[index[start] : index[start] + n]
            else:
                block = gather_rows(rows, index[start:stop], gathered[:n])
            chunk_labels = labels[index[start:stop]]
            chunk_weight = None if weights is None else weights[index[start:stop]].astype(
                np.float64)
            for view in views:
                u = block if view == (False, 0, 0) else apply_view(block, view, padding)
                x = centred[:n]
                if mean is None:
                    np.copyto(x, u)
                else:
                    np.subtract(u, mean, out=x, dtype=dtype)
                S = np.matmul(x, W_scaled, out=scores[:n]).astype(np.float64)
                S += bias
                loss, dS = softmax.softmax_loss_from_scores(S, chunk_labels, rule.clip,
                                                            chunk_weight)
                loss_sum += loss * n
                dS *= n / total  # softmax_loss_from_scores divided by n
                grad_bias += dS.sum(axis=0)
                np.matmul(x.T, dS.astype(dtype), out=product)
                grad_pc += product
        return loss_sum, grad_pc, grad_bias

    runs = min(len(starts), SUM_RUNS)
    cuts = [k * len(starts) // runs for k in range(runs + 1)]
    workers = min(runs, parallel_workers() if workers is None else workers)
    if workers <= 1:
        sums = [run(first, stop) for first, stop in zip(cuts[:-1], cuts[1:], strict=True)]
    else:
        with ThreadPoolExecutor(workers) as pool, one_blas_thread():
            sums = list(pool.map(run, cuts[:-1], cuts[1:]))
    return full_objective(W, pre, rule, sum(part[0] for part in sums), total,
                          sum(part[1] for part in sums).T, sum(part[2] for part in sums))


def blas_threads() -> int:
    """The threads BLAS uses (OPENBLAS_NUM_THREADS or OMP_NUM_THREADS, else every CPU), at
    most 8."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        text = os.environ.get(name, "")
        if text.strip().isdigit() and int(text) >= 1:
            return min(int(text), 8)
    return max(1, min(os.cpu_count() or 1, 8))


def parallel_workers() -> int:
    """The threads full_loss_and_grad splits its chunks over: blas_threads(), or 1 without
    threadpoolctl (the lbfgs extra brings it), which holds BLAS to one thread per worker;
    then BLAS's own threads share each product."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return 1
    return blas_threads()


_BLAS_LIMITED = threading.Lock()  # held by the thread whose one_blas_thread set the limit


@contextmanager
def one_blas_thread():
    """A context in which BLAS (every BLAS library loaded) runs on one thread; a context that
    changes nothing without threadpoolctl (the lbfgs extra brings it). One thread at a time
    sets and restores the limit; a thread that finds it set meanwhile leaves it alone. Each
    thread's own limit (an estimator fit in each of two threads) restored the one it found,
    out of order, and threadpoolctl lets only the thread that set a limit change it: BLAS
    stayed on one thread for the rest of the process."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    if not _BLAS_LIMITED.acquire(blocking=False):
        yield
        return
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        _BLAS_LIMITED.release()


ENGINE = Engine("numpy", train_epoch, predict_scores, loss_and_grad,
                full_loss_and_grad_function=full_loss_and_grad)
