"""float16 feature rows, used as stored: every engine gives the float64 reference's epoch
within float32 tolerance, and bit for bit what it gives on the float32 conversion of the same
rows (every float16 value is a float32 value; the engines convert per minibatch or chunk):
train_epoch, predict_scores, loss_and_grad and the full-batch objective."""

from __future__ import annotations

import numpy as np
import pytest
from engine_reference import ENGINES, assert_close, engine_named, problem, run_engine

from softmax_cls.engines.contract import StepRule, TrainingRows
from softmax_cls.math.softmax import PREDICT_CHUNK


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    engine_named(request.param)
    return request.param


def half_problem(**kwargs):
    """A problem whose rows are float16 (values exactly representable in float32), and the
    same problem with its rows converted to float32."""
    p = problem(**kwargs)
    p.rows = p.rows.astype(np.float16)
    single = problem(**kwargs)
    single.rows = p.rows.astype(np.float32)
    return p, single


@pytest.mark.parametrize("weighted", [False, True])
def test_an_epoch_on_float16_rows_is_the_epoch_on_their_float32_conversion(engine, weighted):
    half, single = half_problem(n_rows=41, n_features=37, n_classes=7, weighted=weighted)
    rule = dict(momentum=0.9, nesterov=True, reg=1e-3, grad_clip=5.0)
    alphas = np.linspace(0, 1, 6)
    actual, expected = run_engine(engine, half, batch_size=8, alphas=alphas, **rule)
    assert_close(actual, expected)  # the float64 reference, on the float16 values
    converted, _ = run_engine(engine, single, batch_size=8, alphas=alphas, **rule)
    for got, want in zip(actual, converted, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("w_dtype", [np.float32, np.float64])
def test_scores_of_float16_rows_are_those_of_their_float32_conversion(engine, w_dtype):
    half, single = half_problem(n_rows=PREDICT_CHUNK + 5, n_features=9)
    E = engine_named(engine)
    W = half.W.astype(w_dtype)
    got = E.predict_scores(half.rows, W, half.pre)
    assert got.dtype == w_dtype
    np.testing.assert_array_equal(got, E.predict_scores(single.rows, W, single.pre))


@pytest.mark.parametrize("w_dtype", [np.float32, np.float64])
def test_one_minibatch_of_float16_rows_is_that_of_their_float32_conversion(engine, w_dtype):
    half, single = half_problem(n_rows=19, n_features=11, weighted=True)
    E = engine_named(engine)
    rule = StepRule(lr=0.1, reg=1e-2)
    W = half.W.astype(w_dtype)
    loss, grad, correct = E.loss_and_grad(half.rows, half.labels, half.sample_weight, W,
                                          half.pre, rule)
    loss32, grad32, correct32 = E.loss_and_grad(single.rows, single.labels,
                                                single.sample_weight, W, single.pre, rule)
    assert (loss, correct) == (loss32, correct32)
    np.testing.assert_array_equal(grad, grad32)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("contiguous", [True, False])
def test_the_full_batch_objective_of_float16_rows_is_that_of_float32(engine, precision,
                                                                     contiguous):
    half, single = half_problem(n_rows=300, n_features=13, weighted=True)
    E = engine_named(engine)
    index = (np.arange(20, 280) if contiguous
             else np.random.default_rng(3).permutation(300)[:250]).astype(np.int64)
    W = half.W.astype(np.float64)
    rule = StepRule(lr=1.0, reg=1e-3)
    loss, grad = E.full_loss_and_grad(half.data, index, W, half.pre, rule,
                                      precision=precision)
    loss32, grad32 = E.full_loss_and_grad(single.data, index, W, single.pre, rule,
                                          precision=precision)
    assert loss == loss32
    np.testing.assert_array_equal(grad, grad32)


def test_the_numba_engine_converts_float16_training_rows_once_per_data_set():
    """numba has no float16 type on the CPU: its one float32 copy of the training rows is
    made on the first epoch and reused while the TrainingRows object lives."""
    engine_named("numba")
    from softmax_cls.engines import numba_engine

    half, _ = half_problem(n_rows=30, n_features=6)
    data = TrainingRows(half.rows, half.labels)
    first = numba_engine._kernel_rows(data)
    assert first.dtype == np.float32 and numba_engine._kernel_rows(data) is first
    np.testing.assert_array_equal(first, half.rows.astype(np.float32))
    other = TrainingRows(half.rows[:10], half.labels[:10])
    numba_engine._kernel_rows(other)
    assert list(numba_engine._converted) == [id(other)]  # one copy at a time: data's let go
    numba_engine._kernel_rows(data)
    del data
    assert not numba_engine._converted  # freed with its rows
