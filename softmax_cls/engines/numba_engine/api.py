"""The numba engine's Python entry points: train_epoch, predict_scores, batch_loss_and_grad
(the engine contract's objects unpacked into flat arguments by numba_engine/__init__.py) and
kernels_are_compiled. Each checks and converts its arguments, calls one compiled entry point
(entry.py) and reports.

Threads: numba's own thread pool, NUMBA_NUM_THREADS threads (default: the number of CPUs);
numba.set_num_threads(k) lowers it at run time. No BLAS is called in the compiled code, so no
BLAS thread pool competes with numba's; keep OPENBLAS_NUM_THREADS / OMP_NUM_THREADS for the
numpy code that runs between epochs. THREAD_GOVERNOR (softmax_cls.engines.governor) times
every compiled call of train_epoch (STEPS_PER_CALL steps) and runs it on one thread while
that is faster.

Compiled code is cached on disk (cache.py says where). Importing this module without numba
installed raises ImportError.
"""

from __future__ import annotations

import contextlib
import warnings

import numba
import numpy as np
from numba.core.errors import NumbaPerformanceWarning

from ...config import MAX_SHIFT
from ...math.softmax import NonFiniteError
from ..governor import ThreadGovernor
from .entry import (
    BAD_SCORES,
    BAD_WEIGHTS,
    batch_loss_and_grad_kernel,
    predict_kernel,
    train_epoch_kernel,
)
from .gather import N_PIXELS


@contextlib.contextmanager
def _quiet_compilation():
    """Hide numba's "parallel=True but nothing to parallelise" warning (entry.py's
    NESTED_PARALLEL_NOTE) raised while our entry kernels compile; every other warning
    passes."""
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
        if len(shift) and np.abs(shift).max() > MAX_SHIFT:
            raise ValueError(f"shift must lie in [-{MAX_SHIFT}, {MAX_SHIFT}]")
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



THREAD_GOVERNOR = ThreadGovernor(numba.get_num_threads, numba.set_num_threads)
STEPS_PER_CALL = 16  # SGD steps per kernel call: the governor's unit of measure and choice


def train_epoch(rows, labels, order, sample_weight, flip, shift, padding, W, velocity, average,
                avg_alpha, mean, scale, has_bias, batch_size, lr, momentum, nesterov, grad_clip,
                reg, reg_bias, clip) -> tuple[float, int]:
    """One epoch of minibatch SGD in compiled calls of STEPS_PER_CALL steps each (each run on
    the thread count THREAD_GOVERNOR picks). The arguments are the engine contract's objects
    unpacked flat (softmax_cls.engines.numba_engine.ENGINE does that after the contract's
    checks); the checks here guard direct callers, since a wrong index would be a write out
    of bounds in compiled code.

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
                kind, stop - start, lambda arguments=arguments: train_epoch_kernel(*arguments))
        if status == BAD_SCORES:
            raise NonFiniteError(f"non-finite scores in minibatch {first_step + step + 1} (inf "
                                 "or NaN in the inputs or the weights)")
        if status == BAD_WEIGHTS:
            raise NonFiniteError("non-finite weights")
        loss_sum += part_loss
        correct += part_correct
    return float(loss_sum), int(correct)


def predict_scores(rows, W, mean, scale, has_bias) -> np.ndarray:
    """Scores (N, C) of W's dtype for rows (N, P) uint8 or float32, W (C, D) float32/float64,
    mean / scale (P,): x = [(u - mean) * scale, 1] @ W.T, without BLAS."""
    _check_rows(rows, (np.uint8, np.float32))
    W = np.ascontiguousarray(W)
    _check_weights(W, rows.shape[1], has_bias, (np.float32, np.float64))
    if len(rows) == 0:
        return np.empty((0, W.shape[0]), W.dtype)
    return predict_kernel(_readonly(rows), W, _vector(mean, rows.shape[1], W.dtype, "mean"),
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
        loss, dW, correct, ok = batch_loss_and_grad_kernel(
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
    return _is_compiled(train_epoch_kernel, train_args) and _is_compiled(predict_kernel,
                                                                          predict_args)


def batch_kernel_is_compiled(rows_dtype=np.uint8, w_dtype=np.float64) -> bool:
    """Whether batch_loss_and_grad on rows of `rows_dtype` and weights of `w_dtype` is
    compiled in this process or in numba's on-disk cache (as kernels_are_compiled)."""
    P, C = 4, 2
    W = np.zeros((C, P + 1), w_dtype)
    vec = np.zeros(P, w_dtype)
    args = (_readonly(np.zeros((1, P), rows_dtype)), np.zeros(1, np.int64), np.zeros(0, w_dtype),
            W, vec, vec, True, 0.0, True, 0.0)
    return _is_compiled(batch_loss_and_grad_kernel, args)


def _is_compiled(kernel, args: tuple) -> bool:
    """Whether `kernel` has, or numba's cache holds, code for the types of `args`."""
    try:
        signature = tuple(numba.typeof(a) for a in args)
        if signature in kernel.overloads:
            return True
        cache = kernel._cache
        key = cache._index_key(signature, kernel.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # numba internals moved: assume the worst, the caller prints one line
        return False
