"""The float64 reference every engine is held to: the engine contract's steps
(softmax_cls.engines.contract) written with the package's plain-numpy rules, in float64 (the
rules themselves are checked against loops and finite differences in test_softmax.py,
test_optim.py, test_preprocess.py and test_augment.py); and random problems to run them on.
Used by tests/test_engines.py and tests/test_kernels.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from softmax_cls.engines import get_engine
from softmax_cls.engines.contract import EpochPlan, OptimizerState, StepRule, TrainingRows
from softmax_cls.errors import SoftmaxClsError
from softmax_cls.math import softmax
from softmax_cls.math.augment import apply_augmentation
from softmax_cls.math.optim import average_step, sgd_step
from softmax_cls.math.preprocess import Preprocessor

ENGINES = ["numpy", "numba", "torch"]  # torch on its CPU device where no GPU is seen


def engine_named(name: str):
    """The engine called `name`; the test is skipped when its library is not installed."""
    try:
        return get_engine(name)
    except SoftmaxClsError:
        pytest.skip(f"engine {name} is not installed")


@dataclass
class Problem:
    """Raw rows (N, P) uint8 or float32, labels (N,) int64, sample_weight (N,) float32 or
    None, weights W (C, D) float32, and a preprocessing whose float64 statistics are exact
    float32 values (so float32 engines and the float64 reference see the same numbers)."""

    rows: np.ndarray
    labels: np.ndarray
    sample_weight: np.ndarray | None
    W: np.ndarray
    pre: Preprocessor

    @property
    def data(self) -> TrainingRows:
        return TrainingRows(self.rows, self.labels, self.sample_weight)


def problem(n_rows=23, n_features=40, n_classes=10, rows_dtype=np.float32, has_bias=True,
            seed=0, weighted=False) -> Problem:
    rng = np.random.default_rng(seed)
    if rows_dtype == np.uint8:
        rows = rng.integers(0, 256, size=(n_rows, n_features), dtype=np.uint8)
        mean = rng.uniform(100, 150, n_features).astype(np.float32)
        scale = rng.uniform(1 / 80, 1 / 50, n_features).astype(np.float32)
    else:
        rows = rng.standard_normal((n_rows, n_features)).astype(np.float32) * 3 + 1
        mean = rng.standard_normal(n_features).astype(np.float32)
        scale = rng.uniform(0.2, 0.5, n_features).astype(np.float32)
    labels = rng.integers(0, n_classes, n_rows).astype(np.int64)
    W = (rng.standard_normal((n_classes, n_features + int(has_bias))) * 0.1).astype(np.float32)
    weight = rng.uniform(0.2, 2.0, n_rows).astype(np.float32) if weighted else None
    pre = Preprocessor(mean.astype(np.float64), scale.astype(np.float64), has_bias)
    return Problem(rows, labels, weight, W, pre)


# ---------------------------------------------------------------------------------------------
# The reference


def reference_loss_and_grad(U, y, weight, W, pre: Preprocessor, rule: StepRule):
    """float64 (loss, dW (C, D), correct, scores (b, C)) of raw rows U (b, P) under W."""
    W = np.asarray(W, dtype=np.float64)
    X = pre.transform(U, np.float64)
    loss, grad = softmax.loss_and_grad(W, X, y, rule.reg, rule.clip, rule.penalise_last,
                                       None if weight is None else weight.astype(np.float64))
    S = X @ W.T
    return loss, grad, int(np.sum(S.argmax(axis=1) == y)), S


def reference_epoch(data: TrainingRows, plan: EpochPlan, rule: StepRule, pre: Preprocessor,
                    state: OptimizerState):
    """float64 (W, velocity, average) after the epoch, loss_sum, correct, and how many steps
    the gradient clipping changed."""
    W, V, A = (a.astype(np.float64) for a in (state.W, state.velocity, state.average))
    loss_sum, correct, clipped = 0.0, 0, 0
    for step, start in enumerate(range(0, len(plan.order), plan.batch_size)):
        batch = plan.order[start : start + plan.batch_size]
        U = data.rows[batch]
        if plan.flip is not None or plan.shift is not None:
            U = U.copy()
            n = len(batch)
            apply_augmentation(
                U, np.zeros(0, bool) if plan.flip is None else plan.flip[start : start + n],
                np.zeros((0, 2), np.int64) if plan.shift is None
                else plan.shift[start : start + n], plan.padding)
        weight = None if data.sample_weight is None else data.sample_weight[batch]
        loss, g, right, _ = reference_loss_and_grad(U, data.labels[batch], weight, W, pre, rule)
        if rule.grad_clip is not None and np.linalg.norm(g) > rule.grad_clip:
            clipped += 1
        sgd_step(W, V, g, rule.lr, rule.momentum, rule.nesterov, rule.grad_clip)
        average_step(A, W, plan.avg_alpha[step])
        loss_sum += loss * len(batch)
        correct += right
    return W, V, A, loss_sum, correct, clipped


def run_engine(engine_name: str, p: Problem, *, order=None, flip=None, shift=None,
               padding="edge", batch_size=8, alphas=None, velocity=None, **rule):
    """(W, V, A, loss_sum, correct) after the engine's train_epoch, and the reference's
    (float64 W, V, A, loss_sum, correct, steps clipped), on the same inputs. `rule` holds
    StepRule fields (lr defaults to 0.05)."""
    engine = engine_named(engine_name)
    n = len(p.rows) if order is None else len(order)
    order = (np.random.default_rng(1).permutation(len(p.rows))[:n] if order is None
             else np.asarray(order, dtype=np.int64))
    steps = -(-n // batch_size)
    plan = EpochPlan(order, batch_size, np.zeros(steps) if alphas is None else alphas,
                     flip, shift, padding)
    step_rule = StepRule(**{"lr": 0.05, **rule})
    V = np.zeros_like(p.W) if velocity is None else velocity.copy()
    start = OptimizerState(p.W.copy(), V, p.W * np.float32(0.5))
    expected = reference_epoch(p.data, plan, step_rule, p.pre, start)
    state = OptimizerState(start.W.copy(), start.velocity.copy(), start.average.copy())
    loss_sum, correct = engine.train_epoch(p.data, plan, step_rule, p.pre, state)
    return (state.W, state.velocity, state.average, loss_sum, correct), expected


def assert_close(actual, expected, rtol=2e-4):
    """An engine's epoch (run_engine's first result) equals the reference's within rtol."""
    W, V, A, loss_sum, correct = actual
    W_r, V_r, A_r, loss_r, correct_r, _ = expected
    for got, want in ((W, W_r), (V, V_r), (A, A_r)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
    assert loss_sum == pytest.approx(loss_r, rel=rtol)
    assert correct == correct_r
