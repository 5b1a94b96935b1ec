"""The engine contract: what an engine is given, what it must do, checked once here for all.

Shapes: N rows of P raw values (uint8 pixels, or float32 or float16 features: an engine
converts float16 rows to float32 per minibatch or chunk, exactly; numba, which cannot read
float16, keeps one float32 copy); D = P + 1 features with the bias column, else P; C
classes. Weights are (C, D) everywhere, one row per class.

An engine is three functions behind an `Engine` (docs/engine-contract.md is the long form),
and optionally a `prepare(rows_dtype)` that compiles what the first call would:
- train_epoch(data, plan, rule, pre, state) -> (loss_sum, correct): the SGD steps of one
  epoch over data.rows[plan.order] in minibatches of plan.batch_size, in place on the arrays
  of `state`. Each step, for the minibatch's raw rows U (b, P) after plan's flips and shifts:
      features   X = pre.transform(U)                        (folded into W, never built)
      loss, dW   = softmax.loss_and_grad(W, X, y, rule.reg, rule.clip,
                                         rule.penalise_last, sample weights)
      W, velocity  by optim.sgd_step(W, velocity, dW, rule.lr, rule.momentum,
                                     rule.nesterov, rule.grad_clip)
      average    by optim.average_step(average, W, plan.avg_alpha[step])
  loss_sum adds loss * b over the steps, correct counts rows whose scores before their step
  had their label as argmax (the first maximum on ties).
- predict_scores(rows, W, pre) -> (N, C) scores in W's dtype: pre.transform(rows) @ W.T.
- loss_and_grad(rows, labels, sample_weight, W, pre, rule) -> (loss, dW, correct): one
  minibatch through the same code as a train_epoch step, without the update.
- full_loss_and_grad(data, index, W, pre, rule, views, padding, precision) -> (loss, dW)
  (optional; the L-BFGS solver's, training/lbfgs.py): the exact objective over the rows
  data.rows[index] (read chunk by chunk, never gathered whole) and every augmented view
  (flip, dy, dx) of each (math.augment.augmented_views), W (C, D) float64:
      loss = sum_v sum_i w_i CE_iv / (n V) + rule.reg * sum(W*W) over the penalised columns
  with CE_iv softmax.softmax_loss_from_scores' clipped, max-shifted cross-entropy of
  pre.transform(view v of row i) @ W.T, w_i the sample weights (1 without), n = len(index),
  V = len(views): softmax.loss_and_grad of all n V augmented rows at once. dW (C, D) float64.
  `precision` "float32" or "float64" is the dtype of the products (sums are float64).
The functions of softmax_cls.math named above are the reference, in plain numpy; an engine
that compiles its own arithmetic is tested against them (tests/test_engines.py).

`Engine` checks every argument (shapes, dtypes, ranges) before it calls an engine's function,
so an engine may assume what the docstrings of the objects below state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import MAX_SHIFT, Config
from ..data.datasets import IMAGE_BYTES as IMAGE_VALUES
from ..errors import SoftmaxClsError
from ..math.augment import PADDING_CODES
from ..math.preprocess import Preprocessor
from ..math.softmax import finite_loss, l2_penalty, penalises_last_column


@dataclass(frozen=True, eq=False)
class TrainingRows:
    """The rows an epoch reads: rows (N, P) uint8, float32 or float16 (a read-only memory
    map is fine), labels (N,) int64 in [0, C), sample_weight (N,) float32 or None (all ones)."""

    rows: np.ndarray
    labels: np.ndarray
    sample_weight: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """The epoch's randomness and its steps, made by training.fit for every engine alike.

    order (n,) int64 row indices in visiting order; batch_size >= 1 (the last minibatch may
    be short); avg_alpha (steps,) float64, after step s: average += avg_alpha[s] * (W -
    average) unless it is 0; flip (n,) bool or None; shift (n, 2) int64 (dy, dx) in
    [-MAX_SHIFT, MAX_SHIFT] or None; padding "zero", "edge" or "reflect" (what a shift
    brings in). Flips and shifts need image rows (P = 3072 uint8).
    """

    order: np.ndarray
    batch_size: int
    avg_alpha: np.ndarray
    flip: np.ndarray | None = None
    shift: np.ndarray | None = None
    padding: str = "edge"

    @property
    def steps(self) -> int:
        return -(-len(self.order) // self.batch_size)

    @property
    def padding_code(self) -> int:
        """0 zero, 1 edge, 2 reflect: the code compiled engines take."""
        return PADDING_CODES[self.padding]


@dataclass(frozen=True)
class StepRule:
    """The hyper-parameters of one SGD step: lr > 0, momentum in [0, 1), nesterov, grad_clip
    (> 0, or None for no clipping), reg >= 0 (L2 strength), penalise_last (whether the L2
    penalty covers W's last column), clip > 0 (max-shifted scores are clipped at -clip)."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    grad_clip: float | None = None
    reg: float = 0.0
    penalise_last: bool = False
    clip: float = 50.0

    @classmethod
    def from_config(cls, config: Config, lr: float, has_bias: bool) -> StepRule:
        """The rule of a step at learning rate lr (the schedule's) under `config`."""
        optim, loss = config.optim, config.loss
        return cls(lr=lr, momentum=optim.momentum, nesterov=optim.nesterov,
                   grad_clip=optim.grad_clip, reg=loss.reg,
                   penalise_last=penalises_last_column(has_bias, loss.reg_bias),
                   clip=loss.clip)


@dataclass(frozen=True, eq=False)
class OptimizerState:
    """The arrays an epoch updates in place: W, velocity (momentum) and average (the weight
    average), each (C, D) float32 and C-contiguous."""

    W: np.ndarray
    velocity: np.ndarray
    average: np.ndarray


# ---------------------------------------------------------------------------------------------
# The checks, once for every engine


ROW_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float16))


def gather_rows(rows: np.ndarray, index: np.ndarray, out: np.ndarray | None = None
                ) -> np.ndarray:
    """rows[index] (n, P) in rows' dtype, into `out` (n, P) C-contiguous when given. np.take
    copies an unaligned array whole on every call (X memory-mapped from an .npz: its data
    starts at an odd offset in the zip), 50 MB for 64 rows of a 200,000 x 64 file; the
    rows' bytes, always aligned, are gathered instead: the same bits, only those rows."""
    if rows.flags.aligned or not rows.flags.c_contiguous:
        return np.take(rows, index, axis=0, out=out)
    if out is None:
        out = np.empty((len(index), *rows.shape[1:]), rows.dtype)
    np.take(rows.view(np.uint8), index, axis=0, out=out.view(np.uint8))
    return out


def check_rows(rows: np.ndarray, pre: Preprocessor) -> None:
    if rows.ndim != 2 or rows.dtype not in ROW_DTYPES:
        raise TypeError(f"rows must be a 2-d uint8, float32 or float16 array, got {rows.dtype} "
                        f"{rows.shape}")
    if rows.shape[1] != pre.n_raw:
        raise ValueError(f"rows have {rows.shape[1]} values, the preprocessing {pre.n_raw}")


def check_weights(W: np.ndarray, pre: Preprocessor, dtypes: tuple = (np.float32,)) -> None:
    if W.ndim != 2 or W.shape[1] != pre.n_features or W.dtype not in dtypes:
        names = "/".join(np.dtype(t).name for t in dtypes)
        raise ValueError(f"W must be (C, {pre.n_features}) {names}, got {W.dtype} {W.shape}")
    if not W.flags.c_contiguous:
        raise ValueError("W must be C-contiguous")


def check_labels(labels: np.ndarray, n_rows: int, n_classes: int) -> None:
    if labels.shape != (n_rows,) or labels.dtype != np.int64:
        raise ValueError(f"labels must be ({n_rows},) int64, got {labels.dtype} {labels.shape}")
    if n_rows and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels.min()}.."
                         f"{labels.max()}")


def check_sample_weight(sample_weight: np.ndarray | None, n_rows: int) -> None:
    if sample_weight is not None and (sample_weight.shape != (n_rows,)
                                      or sample_weight.dtype != np.float32):
        raise ValueError(f"sample_weight must be ({n_rows},) float32 or None, got "
                         f"{sample_weight.dtype} {sample_weight.shape}")


def check_epoch(data: TrainingRows, plan: EpochPlan, rule: StepRule, pre: Preprocessor,
                state: OptimizerState) -> None:
    """Raise TypeError / ValueError unless the arguments of train_epoch are as stated."""
    rows, n_rows = data.rows, len(data.rows)
    check_rows(rows, pre)
    check_weights(state.W, pre)
    for name in ("velocity", "average"):
        array = getattr(state, name)
        if array.shape != state.W.shape or array.dtype != np.float32 \
                or not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous float32 of shape {state.W.shape}")
    check_labels(data.labels, n_rows, state.W.shape[0])
    check_sample_weight(data.sample_weight, n_rows)
    order = plan.order
    if order.ndim != 1 or order.dtype != np.int64:
        raise ValueError(f"order must be (n,) int64, got {order.dtype} {order.shape}")
    if len(order) and (order.min() < 0 or order.max() >= n_rows):
        raise ValueError(f"order must index rows in [0, {n_rows})")
    if plan.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {plan.batch_size}")
    if plan.avg_alpha.shape != (plan.steps,):
        raise ValueError(f"avg_alpha must have shape ({plan.steps},), got "
                         f"{plan.avg_alpha.shape}")
    n = len(order)
    if plan.flip is not None and (plan.flip.shape != (n,) or plan.flip.dtype != np.bool_):
        raise ValueError(f"flip must be ({n},) bool or None")
    if plan.shift is not None:
        if plan.shift.shape != (n, 2) or plan.shift.dtype != np.int64:
            raise ValueError(f"shift must be ({n}, 2) int64 or None")
        if n and np.abs(plan.shift).max() > MAX_SHIFT:
            raise ValueError(f"shift must lie in [-{MAX_SHIFT}, {MAX_SHIFT}]")
    if (plan.flip is not None or plan.shift is not None) and (
            rows.dtype != np.uint8 or rows.shape[1] != IMAGE_VALUES):
        raise ValueError(f"flips and shifts need image rows: (N, {IMAGE_VALUES}) uint8")
    if plan.padding not in PADDING_CODES:
        raise ValueError(f"padding must be one of {', '.join(PADDING_CODES)}, got "
                         f"{plan.padding!r}")
    check_rule(rule)
    if not (rule.lr > 0 and 0 <= rule.momentum < 1):
        raise ValueError(f"a step needs lr > 0 and momentum in [0, 1), got {rule}")


def check_rule(rule: StepRule) -> None:
    if not (rule.reg >= 0 and rule.clip > 0 and (rule.grad_clip is None or rule.grad_clip > 0)):
        raise ValueError(f"step rule out of range: {rule}")


# ---------------------------------------------------------------------------------------------
# An engine: its name and its functions, called only after the checks


@dataclass(frozen=True)
class Engine:
    """An engine's name and its three functions, and the optional ones (the contract
    above), and the device it computes on ("cpu", or a torch device such as "cuda:0");
    calling through the Engine checks the arguments first."""

    name: str
    epoch_function: Callable[..., tuple[float, int]]
    scores_function: Callable[..., np.ndarray]
    loss_and_grad_function: Callable[..., tuple[float, np.ndarray, int]]
    prepare_function: Callable[[np.dtype], None] | None = None
    full_loss_and_grad_function: Callable[..., tuple[float, np.ndarray]] | None = None
    device: str = "cpu"

    def prepare(self, rows_dtype: np.dtype) -> None:
        """Make the engine ready for rows of `rows_dtype` before any timing starts (a
        compiled engine compiles here, saying so once per process)."""
        if self.prepare_function is not None:
            self.prepare_function(np.dtype(rows_dtype))

    def train_epoch(self, data: TrainingRows, plan: EpochPlan, rule: StepRule,
                    pre: Preprocessor, state: OptimizerState) -> tuple[float, int]:
        check_epoch(data, plan, rule, pre, state)
        if len(plan.order) == 0:
            return 0.0, 0
        return self.epoch_function(data, plan, rule, pre, state)

    def predict_scores(self, rows: np.ndarray, W: np.ndarray, pre: Preprocessor) -> np.ndarray:
        check_rows(rows, pre)
        check_weights(W, pre, (np.float32, np.float64))
        if len(rows) == 0:
            return np.empty((0, W.shape[0]), W.dtype)
        return self.scores_function(rows, W, pre)

    def loss_and_grad(self, rows: np.ndarray, labels: np.ndarray,
                      sample_weight: np.ndarray | None, W: np.ndarray, pre: Preprocessor,
                      rule: StepRule) -> tuple[float, np.ndarray, int]:
        check_rows(rows, pre)
        check_weights(W, pre, (np.float32, np.float64))
        check_labels(labels, len(rows), W.shape[0])
        if sample_weight is not None and sample_weight.shape != (len(rows),):
            raise ValueError(f"sample_weight must be ({len(rows)},) or None")
        check_rule(rule)
        return self.loss_and_grad_function(rows, labels, sample_weight, W, pre, rule)

    def full_loss_and_grad(self, data: TrainingRows, index: np.ndarray, W: np.ndarray,
                           pre: Preprocessor, rule: StepRule,
                           views: Sequence[tuple[bool, int, int]] = ((False, 0, 0),),
                           padding: str = "edge", precision: str = "float32"
                           ) -> tuple[float, np.ndarray]:
        """The full-batch objective and its gradient (C, D) float64 (the contract above)."""
        if self.full_loss_and_grad_function is None:
            raise SoftmaxClsError(f"engine {self.name} has no full-batch loss and gradient "
                                  "(optim.solver lbfgs): use engine numpy")
        check_full_batch(data, index, W, pre, rule, views, padding, precision)
        return self.full_loss_and_grad_function(data, index, W, pre, rule, tuple(views),
                                                padding, precision)


def check_full_batch(data: TrainingRows, index: np.ndarray, W: np.ndarray, pre: Preprocessor,
                     rule: StepRule, views, padding: str, precision: str) -> None:
    """Raise TypeError / ValueError unless the arguments of full_loss_and_grad are as stated."""
    rows = data.rows
    check_rows(rows, pre)
    check_weights(W, pre, (np.float64,))
    check_labels(data.labels, len(rows), W.shape[0])
    check_sample_weight(data.sample_weight, len(rows))
    if index.ndim != 1 or index.dtype != np.int64 or len(index) == 0:
        raise ValueError(f"index must be (n,) int64 with n >= 1, got {index.dtype} "
                         f"{index.shape}")
    if index.min() < 0 or index.max() >= len(rows):
        raise ValueError(f"index must hold rows in [0, {len(rows)})")
    if not views or any(len(v) != 3 or abs(v[1]) > MAX_SHIFT or abs(v[2]) > MAX_SHIFT
                        for v in views):
        raise ValueError(f"views must be (flip, dy, dx) with shifts in [-{MAX_SHIFT}, "
                         f"{MAX_SHIFT}], at least one")
    if any(tuple(v) != (False, 0, 0) for v in views) and (
            rows.dtype != np.uint8 or rows.shape[1] != IMAGE_VALUES):
        raise ValueError(f"flips and shifts need image rows: (N, {IMAGE_VALUES}) uint8")
    if padding not in PADDING_CODES:
        raise ValueError(f"padding must be one of {', '.join(PADDING_CODES)}, got {padding!r}")
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be float32 or float64, got {precision!r}")
    check_rule(rule)


def full_objective(W: np.ndarray, pre: Preprocessor, rule: StepRule, loss_sum: float,
                   total: int, grad_scaled: np.ndarray, grad_bias: np.ndarray
                   ) -> tuple[float, np.ndarray]:
    """The full-batch objective and its gradient (C, D) float64 for W (C, D) float64, from
    the sums every engine's full_loss_and_grad computes over its `total` rows: loss_sum of
    w * row loss, grad_scaled (C, P) float64 = sum of dS^T x_c in the scaled coordinates
    (the scale folded into the weights), grad_bias (C,) float64 = sum of dS; dS already
    divided by total. Unfolds the scale, adds the bias column and the L2 term."""
    P = pre.n_raw
    grad = np.empty_like(W)
    np.multiply(grad_scaled, pre.scale, out=grad[:, :P])
    if pre.bias:
        grad[:, P] = grad_bias
    penalty, penalty_grad = l2_penalty(W, rule.reg, rule.penalise_last)
    grad += penalty_grad
    return finite_loss(loss_sum / total + penalty), grad
