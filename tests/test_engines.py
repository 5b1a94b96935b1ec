"""The numpy engine (softmax_cls.engines.numpy_engine) against plain float64 numpy from the math of
ENGINE_API.md (tests/engine_reference.py): SGD steps in the (C, D) layout with the
preprocessing folded into the weights and the gradient unfolded, momentum, Nesterov, clipping,
L2 with and without the bias column, sample weights, averaging, augmentation, and
batch_loss_and_grad against the reference and finite differences. The plain steps are checked
here for the numba engine too; its other tests are in test_kernels.py."""

from __future__ import annotations

import numpy as np
import pytest
from engine_reference import assert_close, problem, reference_loss_and_grad, run_engine

from softmax_cls.engines import numpy_engine as engines


def run(*args, **kwargs):
    """(numpy engine W, V, A, loss_sum, correct) and the reference's, on the same inputs."""
    return run_engine(engines.train_epoch, *args, **kwargs)


def train_epoch_of(engine: str):
    """The engine's train_epoch; the numba test is skipped without numba."""
    if engine == "numba":
        return pytest.importorskip("softmax_cls.engines.numba_engine.kernels").train_epoch
    return engines.train_epoch


@pytest.mark.parametrize("engine", ["numpy", "numba"])
@pytest.mark.parametrize("n_classes", [10, 100])
@pytest.mark.parametrize("rows_dtype", [np.float32, np.uint8])
def test_plain_steps_with_a_short_last_minibatch(engine, n_classes, rows_dtype):
    rows, labels, W, mean, scale, weight = problem(n_classes=n_classes, rows_dtype=rows_dtype)
    actual, expected = run_engine(train_epoch_of(engine), rows, labels, W, mean, scale, weight,
                                  batch_size=8)  # 8, 8, 7
    assert_close(actual, expected)
    assert not np.allclose(actual[0], W, atol=1e-3)  # the weights did move


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_clipping_and_averaging(nesterov):
    rows, labels, W, mean, scale, weight = problem(seed=2)
    velocity = np.random.default_rng(3).standard_normal(W.shape).astype(np.float32) * 0.1
    actual, expected = run(rows, labels, W, mean, scale, weight, momentum=0.9,
                           nesterov=nesterov, velocity=velocity, grad_clip=0.5, reg=0.01,
                           alphas=np.array([1.0, 0.0, 0.25]))
    assert expected[5] >= 1  # the clipping did clip
    assert_close(actual, expected)


@pytest.mark.parametrize("reg_bias", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
def test_l2_penalty_with_and_without_the_bias(reg_bias, has_bias):
    rows, labels, W, mean, scale, weight = problem(seed=5, has_bias=has_bias)
    W[:, -1] = 3.0  # a large last column: penalising it or not shows
    actual, expected = run(rows, labels, W, mean, scale, weight, reg=0.2, reg_bias=reg_bias,
                           has_bias=has_bias, lr=0.1)
    assert_close(actual, expected)


def test_sample_weights():
    rows, labels, W, mean, scale, weight = problem(seed=6, weighted=True)
    actual, expected = run(rows, labels, W, mean, scale, weight)
    assert_close(actual, expected)


def test_clipped_scores_follow_the_contract():
    rows, labels, W, mean, scale, weight = problem(seed=8)
    W *= 400  # score gaps far beyond clip = 5: the clipped softmax of the contract
    actual, expected = run(rows, labels, W, mean, scale, weight, clip=5.0, lr=1e-3)
    assert_close(actual, expected)


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_augmented_images_with_100_classes(padding):
    rows, labels, W, mean, scale, weight = problem(n_rows=13, n_features=3072, n_classes=100,
                                                   rows_dtype=np.uint8, seed=9)
    rng = np.random.default_rng(10)
    flip = rng.random(13) < 0.5
    shift = rng.integers(-8, 9, size=(13, 2))
    actual, expected = run(rows, labels, W * 0.01, mean, scale, weight, flip=flip, shift=shift,
                           padding=padding, batch_size=5, momentum=0.9)
    assert_close(actual, expected)


@pytest.mark.parametrize("has_bias", [True, False])
def test_batch_loss_and_grad_against_the_reference_and_finite_differences(has_bias):
    rows, labels, W, mean, scale, weight = problem(n_rows=11, n_features=20, seed=17,
                                                   weighted=True, has_bias=has_bias)
    W = W.astype(np.float64) * 5
    args = (mean, scale, has_bias, 0.05, False, 50.0)
    loss, dW, correct = engines.batch_loss_and_grad(rows, labels, weight, W, *args)
    loss_r, dW_r, correct_r, _ = reference_loss_and_grad(
        rows, labels, weight, W, mean.astype(np.float64), scale.astype(np.float64), has_bias,
        0.05, False, 50.0)
    assert dW.dtype == np.float64 and dW.shape == W.shape and correct == correct_r
    assert loss == pytest.approx(loss_r, rel=1e-12)
    np.testing.assert_allclose(dW, dW_r, rtol=1e-10, atol=1e-13)
    h = 1e-5
    for c, j in [(0, 0), (3, 7), (9, 19), (5, W.shape[1] - 1)]:  # the last: bias if any
        plus, minus = W.copy(), W.copy()
        plus[c, j] += h
        minus[c, j] -= h
        numeric = (engines.batch_loss_and_grad(rows, labels, weight, plus, *args)[0]
                   - engines.batch_loss_and_grad(rows, labels, weight, minus, *args)[0]) / (2 * h)
        assert abs(numeric - dW[c, j]) <= 1e-6 * max(abs(numeric), abs(dW[c, j]), 1e-12)
