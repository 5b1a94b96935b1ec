"""The numba engine: the engine contract (softmax_cls.engines.contract) in compiled kernels
that read the uint8 rows directly (the optional extra `softmax-cls[fast]`).

Importing this package imports numba (ImportError without it). The kernels take flat
arguments; this adapter is the one place that unpacks the contract's objects for them.

numba has no float16 type on the CPU (an array of it does not compile), so float16 rows are
converted here: the training rows once per TrainingRows object to a float32 copy in memory
(twice the file; the numpy and torch engines convert per minibatch instead), the rows to
score or to differentiate chunk by chunk. `engine: auto` leaves this engine out where that
copy would not fit in memory (engines.auto_engine_name). The full-batch objective (full.py)
makes no copy: it reads float16 rows as their bits and converts them row by row.
"""

from __future__ import annotations

import sys
import weakref
from functools import partial

import numpy as np

from ...math.preprocess import Preprocessor
from ...math.softmax import PREDICT_CHUNK
from ..contract import Engine, EpochPlan, OptimizerState, StepRule, TrainingRows
from . import api as kernels
from . import cache, full

NO_SAMPLE_WEIGHT = np.zeros(0, np.float32)
NO_FLIP = np.zeros(0, np.bool_)
NO_SHIFT = np.zeros((0, 2), np.int64)


_converted: dict[int, tuple[weakref.ref, np.ndarray]] = {}  # float16 rows' float32 copy


def _kernel_rows(data: TrainingRows) -> np.ndarray:
    """data.rows as the kernels take them: float16 rows as a float32 copy, made once per
    TrainingRows object and kept while it lives (one at a time); other rows as they are."""
    if data.rows.dtype != np.float16:
        return data.rows
    key = id(data)
    held = _converted.get(key)
    if held is not None and held[0]() is data:
        return held[1]
    _converted.clear()
    rows = np.asarray(data.rows, dtype=np.float32)
    _converted[key] = (weakref.ref(data, lambda _: _converted.pop(key, None)), rows)
    return rows


def train_epoch(data: TrainingRows, plan: EpochPlan, rule: StepRule, pre: Preprocessor,
                state: OptimizerState) -> tuple[float, int]:
    mean, scale = pre.vectors(np.float32)
    return kernels.train_epoch(
        _kernel_rows(data), data.labels, plan.order,
        NO_SAMPLE_WEIGHT if data.sample_weight is None else data.sample_weight,
        NO_FLIP if plan.flip is None else plan.flip,
        NO_SHIFT if plan.shift is None else plan.shift, plan.padding_code,
        state.W, state.velocity, state.average, plan.avg_alpha, mean, scale, pre.bias,
        plan.batch_size, rule.lr, rule.momentum, rule.nesterov, rule.grad_clip or 0.0,
        rule.reg, rule.penalise_last, rule.clip)


def predict_scores(rows: np.ndarray, W: np.ndarray, pre: Preprocessor) -> np.ndarray:
    mean, scale = pre.vectors(W.dtype)
    if rows.dtype != np.float16:
        return kernels.predict_scores(rows, W, mean, scale, pre.bias)
    out = np.empty((len(rows), W.shape[0]), W.dtype)
    for start in range(0, len(rows), PREDICT_CHUNK):  # float32 chunks: no whole copy
        block = np.asarray(rows[start : start + PREDICT_CHUNK], dtype=np.float32)
        out[start : start + len(block)] = kernels.predict_scores(block, W, mean, scale,
                                                                 pre.bias)
    return out


def loss_and_grad(rows: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None,
                  W: np.ndarray, pre: Preprocessor, rule: StepRule
                  ) -> tuple[float, np.ndarray, int]:
    kinds = (np.dtype(np.float32) if rows.dtype == np.float16 else rows.dtype, W.dtype)
    if kinds not in _ready and not kernels.batch_kernel_is_compiled(*kinds):
        _announce()  # the gradient check's float64 kernel compiles on its first call
    _ready.add(kinds)
    mean, scale = pre.vectors(W.dtype)
    return kernels.batch_loss_and_grad(
        rows.astype(np.float32) if rows.dtype == np.float16 else rows, labels,
        NO_SAMPLE_WEIGHT if sample_weight is None else sample_weight, W, mean,
        scale, pre.bias, rule.reg, rule.penalise_last, rule.clip)


kernels_are_compiled = kernels.kernels_are_compiled
COMPILING = "compiling the numba kernels once (about 20 s; cached for later runs)"
_announced = False
_ready: set[tuple[np.dtype, np.dtype]] = set()  # (rows, weights) dtypes loss_and_grad has run


def _announce() -> None:
    """Say once per process that the kernels compile (unless the cache's own line already
    said that they compile in memory, uncached)."""
    global _announced
    if not _announced and not cache.caching_disabled():
        print(COMPILING, file=sys.stderr, flush=True)
        _announced = True


def prepare(rows_dtype: np.dtype) -> None:
    """Compile the training and prediction kernels for rows of `rows_dtype` now, on a
    one-row problem, unless numba's cache holds them; say so on stderr once per process. Done
    before a progress bar starts, the compile stays out of its rate."""
    if rows_dtype == np.float16:
        rows_dtype = np.dtype(np.float32)  # what the kernels are given
    if kernels_are_compiled(rows_dtype):
        return
    _announce()
    n_raw = kernels.N_PIXELS if rows_dtype == np.uint8 else 1
    rows = np.zeros((1, n_raw), rows_dtype)
    pre = Preprocessor(np.zeros(n_raw), np.ones(n_raw))
    W = np.zeros((2, n_raw + 1), np.float32)
    plan = EpochPlan(np.zeros(1, np.int64), 1, np.zeros(1))
    train_epoch(TrainingRows(rows, np.zeros(1, np.int64)), plan, StepRule(lr=0.1), pre,
                OptimizerState(W, W.copy(), W.copy()))
    predict_scores(rows, W, pre)


def prepare_full(rows_dtype: np.dtype, n_classes: int,
                 precisions: tuple[str, ...] = ("float32", "float64")) -> None:
    """Compile the full-batch (L-BFGS) kernel for rows of `rows_dtype` in each of
    `precisions` now, on a one-row problem of `n_classes` classes, unless numba's cache holds
    it (from full.BLAS_FROM_CLASSES classes numpy computes it: nothing compiles); say so on
    stderr once per process, as prepare."""
    n_raw = kernels.N_PIXELS if rows_dtype == np.uint8 else 1
    data = TrainingRows(np.zeros((1, n_raw), rows_dtype), np.zeros(1, np.int64))
    pre = Preprocessor(np.zeros(n_raw), np.ones(n_raw))
    W = np.zeros((n_classes, n_raw + 1))
    for precision in precisions:
        full.full_loss_and_grad(data, np.zeros(1, np.int64), W, pre, StepRule(lr=1.0),
                                ((False, 0, 0),), "edge", precision, on_compile=_announce)


# The full-batch objective (L-BFGS): its own kernel, one pass over each row (full.py)
ENGINE = Engine("numba", train_epoch, predict_scores, loss_and_grad, prepare,
                full_loss_and_grad_function=partial(full.full_loss_and_grad,
                                                    on_compile=_announce))
