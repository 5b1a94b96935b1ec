"""Both engines (numpy: softmax_cls.engines.numpy_engine; numba:
softmax_cls.engines.numba_engine.api, skipped without numba) against the float64 reference of
tests/engine_reference.py: SGD steps in the (C, D) layout with the preprocessing folded into
the weights and the gradient unfolded, momentum, Nesterov, clipping, L2 with and without the
bias column, sample weights, averaging, augmentation, argmax ties, predictions, and
batch_loss_and_grad against the reference and finite differences; every one at feature and
row counts around the engines' tile, chunk and block sizes. Tests of the numba engine alone
are in test_kernels.py."""

from __future__ import annotations

import numpy as np
import pytest
from engine_reference import (
    assert_close,
    problem,
    reference_epoch,
    reference_loss_and_grad,
    run_engine,
)

from softmax_cls.engines import numpy_engine

# Sizes around the numba engine's: TILE_ROWS 8 rows, CHUNK 512 features per score tile,
# gradient blocks of 256 / 128 / 64 columns (C <= 128, C = 200, C > 512), predictions in
# chunks of 64 rows.
FEATURE_COUNTS = [1, 7, 300, 384, 511, 512, 513, 600]
BATCH_SIZES = [1, 7, 8, 9, 15, 16, 17]
PREDICT_ROWS = [1, 7, 8, 9, 63, 64, 65, 127, 129, 513]


@pytest.fixture(params=["numpy", "numba"])
def engine(request):
    """The engine's module (train_epoch, predict_scores, batch_loss_and_grad)."""
    if request.param == "numba":
        return pytest.importorskip("softmax_cls.engines.numba_engine.api")
    return numpy_engine


def run(engine, *args, **kwargs):
    """(the engine's W, V, A, loss_sum, correct) and the reference's, on the same inputs."""
    return run_engine(engine.train_epoch, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# SGD steps against the reference


@pytest.mark.parametrize("n_classes", [10, 100])
@pytest.mark.parametrize("rows_dtype", [np.float32, np.uint8])
def test_plain_steps_with_a_short_last_minibatch(engine, n_classes, rows_dtype):
    rows, labels, W, mean, scale, weight = problem(n_classes=n_classes, rows_dtype=rows_dtype)
    actual, expected = run(engine, rows, labels, W, mean, scale, weight, batch_size=8)  # 8 8 7
    assert_close(actual, expected)
    assert not np.allclose(actual[0], W, atol=1e-3)  # the weights did move


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_clipping_and_averaging(engine, nesterov):
    rows, labels, W, mean, scale, weight = problem(seed=2)
    velocity = np.random.default_rng(3).standard_normal(W.shape).astype(np.float32) * 0.1
    actual, expected = run(engine, rows, labels, W, mean, scale, weight, momentum=0.9,
                           nesterov=nesterov, velocity=velocity, grad_clip=0.5, reg=0.01,
                           alphas=np.array([1.0, 0.0, 0.25]))
    assert expected[5] >= 1  # the clipping did clip
    assert_close(actual, expected)


def test_nesterov_differs_from_plain_momentum(engine):
    rows, labels, W, mean, scale, weight = problem(seed=2)
    plain, _ = run(engine, rows, labels, W, mean, scale, weight, momentum=0.9)
    nesterov, _ = run(engine, rows, labels, W, mean, scale, weight, momentum=0.9, nesterov=True)
    assert not np.allclose(plain[0], nesterov[0])


def test_gradient_clipping_clips_every_step(engine):
    rows, labels, W, mean, scale, weight = problem(seed=4)
    actual, expected = run(engine, rows, labels, W, mean, scale, weight, grad_clip=0.05,
                           momentum=0.5, reg=0.01)
    assert expected[5] == 3  # every step's gradient was longer than 0.05: really clipped
    assert_close(actual, expected)


@pytest.mark.parametrize("target_norm", [0.5, 2.0])  # gradient norms below 1 and above 1
@pytest.mark.parametrize("ratio", [0.9, 1.1])  # the clip just below and just above the norm
def test_gradient_clipping_compares_the_norm_not_its_square(engine, target_norm, ratio):
    rows, labels, W, mean, scale, _ = problem(seed=21, n_classes=3)
    one_step = dict(batch_size=len(rows), lr=0.1)
    ones = np.ones(len(rows), np.float32)
    _, unclipped = run(engine, rows, labels, W, mean, scale, ones, **one_step)
    norm = float(np.sqrt(np.sum((W - unclipped[0]) ** 2))) / 0.1  # the step's gradient norm
    weight = ones * np.float32(target_norm / norm)  # the gradient scales with the weights
    actual, expected = run(engine, rows, labels, W, mean, scale, weight,
                           grad_clip=ratio * target_norm, **one_step)
    assert expected[5] == (1 if ratio < 1 else 0)
    assert_close(actual, expected, rtol=1e-5)


@pytest.mark.parametrize("reg_bias", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
def test_l2_penalty_with_and_without_the_bias(engine, reg_bias, has_bias):
    rows, labels, W, mean, scale, weight = problem(seed=5, has_bias=has_bias)
    W[:, -1] = 3.0  # a large last column: penalising it or not shows
    actual, expected = run(engine, rows, labels, W, mean, scale, weight, reg=0.2,
                           reg_bias=reg_bias, has_bias=has_bias, lr=0.1)
    assert_close(actual, expected)


def test_sample_weights(engine):
    rows, labels, W, mean, scale, weight = problem(seed=6, weighted=True)
    actual, expected = run(engine, rows, labels, W, mean, scale, weight)
    assert_close(actual, expected)
    unweighted, _ = run(engine, rows, labels, W, mean, scale, np.zeros(0, np.float32))
    assert not np.allclose(actual[0], unweighted[0])


def test_averaging_alphas_and_zero_alpha_leaves_the_average(engine):
    rows, labels, W, mean, scale, weight = problem(seed=7)
    actual, expected = run(engine, rows, labels, W, mean, scale, weight,
                           alphas=np.array([1.0, 0.0, 0.25]))
    assert_close(actual, expected)
    untouched, _ = run(engine, rows, labels, W, mean, scale, weight, alphas=np.zeros(3))
    np.testing.assert_array_equal(untouched[2], W * 0.5)


def test_clipped_scores_follow_the_contract(engine):
    rows, labels, W, mean, scale, weight = problem(seed=8)
    W *= 400  # score gaps far beyond clip = 5: the clipped softmax of the contract
    actual, expected = run(engine, rows, labels, W, mean, scale, weight, clip=5.0, lr=1e-3)
    assert_close(actual, expected)


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_augmented_images_with_100_classes(engine, padding):
    rows, labels, W, mean, scale, weight = problem(n_rows=13, n_features=3072, n_classes=100,
                                                   rows_dtype=np.uint8, seed=9)
    rng = np.random.default_rng(10)
    flip = rng.random(13) < 0.5
    shift = rng.integers(-8, 9, size=(13, 2))
    actual, expected = run(engine, rows, labels, W * 0.01, mean, scale, weight, flip=flip,
                           shift=shift, padding=padding, batch_size=5, momentum=0.9)
    assert_close(actual, expected)


def test_argmax_ties_count_for_the_first_class(engine):
    """numpy's argmax rule: of equal top scores, the first class is the prediction."""
    rows, labels, W, mean, scale, weight = problem(n_classes=5, seed=22)
    labels[:] = np.arange(len(labels)) % 5
    W[:] = 0  # every score 0: class 0 predicted for every row of the first step
    actual, expected = run(engine, rows, labels, W, mean, scale, weight, batch_size=len(rows))
    assert actual[4] == expected[4] == np.sum(labels == 0)
    W[:, :-1], W[1:4, -1], W[(0, 4), -1] = 0, 2.0, 1.0  # classes 1, 2 and 3 tie on top
    actual, expected = run(engine, rows, labels, W, mean, scale, weight, batch_size=len(rows))
    assert actual[4] == expected[4] == np.sum(labels == 1)


# ---------------------------------------------------------------------------------------------
# Sizes around tiles, chunks and blocks: every row and every gradient column counts


@pytest.mark.parametrize("n_features", FEATURE_COUNTS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_sizes_of_rows_and_features(engine, n_features, batch_size):
    n_rows = 2 * batch_size + (batch_size + 1) // 2  # two full minibatches and a short one
    rows, labels, W, mean, scale, weight = problem(n_rows=n_rows, n_features=n_features,
                                                   n_classes=3, seed=n_features + batch_size,
                                                   weighted=True)
    actual, expected = run(engine, rows, labels, W, mean, scale, weight, batch_size=batch_size,
                           momentum=0.9, reg=1e-3, alphas=np.full(3, 0.5))
    assert_close(actual, expected)


# 200 classes: gradient blocks of 128 columns; 600: of 64, the narrowest
@pytest.mark.parametrize("n_classes", [2, 7, 100, 200, 600])
@pytest.mark.parametrize("n_features", [7, 300, 384, 600])
@pytest.mark.parametrize("grad_clip", [0.0, 0.05])  # the fused update, then the clipped one
def test_sizes_of_classes_and_features(engine, n_classes, n_features, grad_clip):
    rows, labels, W, mean, scale, weight = problem(n_rows=19, n_features=n_features,
                                                   n_classes=n_classes, seed=n_classes)
    actual, expected = run(engine, rows, labels, W, mean, scale, weight, batch_size=9,
                           grad_clip=grad_clip, momentum=0.5)
    assert expected[5] == (3 if grad_clip else 0)
    assert_close(actual, expected)


@pytest.mark.parametrize("n_features", FEATURE_COUNTS)
@pytest.mark.parametrize("n_rows", [1, 7, 8, 9, 17])
def test_sizes_of_batch_loss_and_grad(engine, n_features, n_rows):
    rows, labels, W, mean, scale, weight = problem(n_rows=n_rows, n_features=n_features,
                                                   n_classes=3, seed=n_rows, weighted=True)
    W = W.astype(np.float64)
    loss, dW, correct = engine.batch_loss_and_grad(rows, labels, weight, W, mean, scale, True,
                                                   0.05, True, 50.0)
    loss_r, dW_r, correct_r, _ = reference_loss_and_grad(
        rows, labels, weight, W, mean.astype(np.float64), scale.astype(np.float64), True,
        0.05, True, 50.0)
    assert loss == pytest.approx(loss_r, rel=1e-10) and correct == correct_r
    np.testing.assert_allclose(dW, dW_r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_rows", PREDICT_ROWS)
@pytest.mark.parametrize("n_features", [7, 384, 600])
@pytest.mark.parametrize("w_dtype", [np.float32, np.float64])
def test_sizes_of_predictions(engine, n_rows, n_features, w_dtype):
    rows, _, W, mean, scale, _ = problem(n_rows=n_rows, n_features=n_features, n_classes=3,
                                         seed=n_rows)
    W = W.astype(w_dtype)
    scores = engine.predict_scores(rows, W, mean, scale, True)
    *_, expected = reference_loss_and_grad(rows, np.zeros(n_rows, np.int64), None,
                                           W.astype(np.float64), mean.astype(np.float64),
                                           scale.astype(np.float64), True, 0.0, False, 50.0)
    assert scores.dtype == w_dtype and scores.shape == (n_rows, 3)
    tolerance = 1e-4 if w_dtype == np.float32 else 1e-6  # the numpy engine centres in float32
    np.testing.assert_allclose(scores, expected, rtol=tolerance, atol=tolerance)


def test_reference_epoch_counts_the_clipped_steps():
    """The reference itself: the tests above read its count of clipped steps."""
    rows, labels, W, mean, scale, _ = problem(seed=23)
    common = dict(flip=np.zeros(0, bool), shift=np.zeros((0, 2), np.int64), padding=0,
                  velocity=np.zeros_like(W), average=np.zeros_like(W), avg_alpha=np.zeros(3),
                  mean=mean, scale=scale, has_bias=True, batch_size=8, lr=0.1, momentum=0.0,
                  nesterov=False, reg=0.0, reg_bias=False, clip=50.0)
    order, none = np.arange(23), np.zeros(0, np.float32)
    assert reference_epoch(rows, labels, order, none, W=W, grad_clip=1e-6, **common)[5] == 3
    assert reference_epoch(rows, labels, order, none, W=W, grad_clip=1e6, **common)[5] == 0


# ---------------------------------------------------------------------------------------------
# The gradient check's function


@pytest.mark.parametrize("has_bias", [True, False])
def test_batch_loss_and_grad_against_the_reference_and_finite_differences(engine, has_bias):
    rows, labels, W, mean, scale, weight = problem(n_rows=11, n_features=20, seed=17,
                                                   weighted=True, has_bias=has_bias)
    W = W.astype(np.float64) * 5
    args = (mean, scale, has_bias, 0.05, False, 50.0)
    loss, dW, correct = engine.batch_loss_and_grad(rows, labels, weight, W, *args)
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
        numeric = (engine.batch_loss_and_grad(rows, labels, weight, plus, *args)[0]
                   - engine.batch_loss_and_grad(rows, labels, weight, minus, *args)[0]) / (2 * h)
        assert abs(numeric - dW[c, j]) <= 1e-6 * max(abs(numeric), abs(dW[c, j]), 1e-12)


def test_batch_loss_and_grad_of_uint8_rows_without_bias(engine):
    rows, labels, W, mean, scale, _ = problem(n_rows=9, n_features=30, rows_dtype=np.uint8,
                                              has_bias=False, seed=19)
    W = W.astype(np.float64)
    loss, dW, correct = engine.batch_loss_and_grad(rows, labels, np.zeros(0), W, mean, scale,
                                                   False, 0.1, False, 50.0)
    loss_r, dW_r, correct_r, _ = reference_loss_and_grad(
        rows, labels, None, W, mean.astype(np.float64), scale.astype(np.float64), False, 0.1,
        False, 50.0)
    assert loss == pytest.approx(loss_r, rel=1e-12) and correct == correct_r
    np.testing.assert_allclose(dW, dW_r, rtol=1e-10, atol=1e-13)
