"""The math contract: loss at W = 0, gradients, loop reference, stability, prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import random_problem
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from softmax_cls.math import softmax
from softmax_cls.training.gradcheck import check_gradient


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_loss_at_zero_weights_is_log_c(classes):
    _, X, y = random_problem(samples=50, features=31, classes=classes, seed=1)
    for dtype in (np.float32, np.float64):
        W = np.zeros((classes, 31), dtype=dtype)
        loss, _ = softmax.loss_and_grad(W, X.astype(dtype), y, reg=0.5)
        assert abs(loss - math.log(classes)) <= 1e-6


@pytest.mark.parametrize("shape", [(500, 3073, 10), (50, 20, 3), (200, 101, 100), (7, 5, 2)])
@pytest.mark.parametrize("reg", [0.0, 0.1])
def test_gradient_check_passes(shape, reg):
    samples, features, classes = shape
    W, X, y = random_problem(samples, features, classes, seed=sum(shape))
    result = check_gradient(lambda w: softmax.loss_and_grad(w, X, y, reg), W, 15,
                            np.random.default_rng(0))
    assert result.passed, result.max_rel_error
    assert result.max_rel_error <= 1e-7


@pytest.mark.parametrize("shape", [(60, 3073, 10), (40, 17, 5)])
@pytest.mark.parametrize("reg,penalise_last", [(0.0, False), (0.3, False), (0.3, True)])
def test_loop_and_vectorized_agree(shape, reg, penalise_last):
    W, X, y = random_problem(*shape, seed=3, init_std=0.1)
    loss_vec, grad_vec = softmax.loss_and_grad(W, X, y, reg, penalise_last=penalise_last)
    loss_loop, grad_loop = softmax.loss_and_grad_naive(W, X, y, reg,
                                                       penalise_last=penalise_last)
    assert abs(loss_vec - loss_loop) <= 1e-10
    assert np.max(np.abs(grad_vec - grad_loop)) <= 1e-10


def test_bias_column_is_not_penalized_unless_asked():
    W, X, y = random_problem(20, 6, 3, seed=0, init_std=1.0)
    base, _ = softmax.loss_and_grad(W, X, y, reg=0.0)
    without, grad = softmax.loss_and_grad(W, X, y, reg=0.5)
    assert without - base == pytest.approx(0.5 * np.sum(W[:, :-1] ** 2))
    with_bias, _ = softmax.loss_and_grad(W, X, y, reg=0.5, penalise_last=True)
    assert with_bias - base == pytest.approx(0.5 * np.sum(W**2))
    _, grad0 = softmax.loss_and_grad(W, X, y, reg=0.0)
    np.testing.assert_allclose(grad[:, -1], grad0[:, -1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_in_is_dtype_out(dtype):
    W, X, y = random_problem(30, 9, 4, seed=2)
    _, grad = softmax.loss_and_grad(W.astype(dtype), X.astype(dtype), y, 0.1)
    assert grad.dtype == dtype
    assert softmax.predict_proba(W.astype(dtype), X.astype(dtype)).dtype == dtype


def test_mixed_dtypes_are_refused():
    W, X, y = random_problem(5, 4, 3)
    with pytest.raises(TypeError):
        softmax.loss_and_grad(W.astype(np.float32), X, y)


def test_a_huge_float32_penalty_is_summed_in_float64():
    W, X, y = random_problem(5, 4, 3)
    W = W.astype(np.float32)
    W[:, 0] = 1e20  # one feature column, every class
    loss, _ = softmax.loss_and_grad(W, X.astype(np.float32), y, reg=1.0)
    assert math.isfinite(loss) and loss == pytest.approx(3e40, rel=1e-6)


def test_labels_out_of_range_are_refused():
    W, X, y = random_problem(5, 4, 3)
    y[0] = -1
    with pytest.raises(ValueError, match="labels"):
        softmax.loss_and_grad(W, X, y)


def test_non_finite_inputs_are_reported():
    W, X, y = random_problem(5, 4, 3)
    X[2, 1] = np.nan
    with pytest.raises(softmax.NonFiniteError):
        softmax.loss_and_grad(W, X, y)
    W[0, 0] = np.inf
    with pytest.raises(softmax.NonFiniteError):
        softmax.loss_and_grad(W, np.abs(X) + 1, y)
    # finite scores, a NaN sample weight: the loss itself is NaN
    W, X, y = random_problem(5, 4, 3)
    with pytest.raises(softmax.NonFiniteError, match="non-finite loss"):
        softmax.loss_and_grad(W, X, y, sample_weight=[1.0, np.nan, 1.0, 1.0, 1.0])


finite_scores = arrays(
    np.float32, st.tuples(st.integers(1, 8), st.integers(2, 12)),
    elements=st.floats(float(np.float32(-1e30)), float(np.float32(1e30)), width=32),
)


@settings(max_examples=300, deadline=None)
@given(S=finite_scores, data=st.data())
def test_finite_scores_give_finite_loss_gradient_and_normalised_probabilities(S, data):
    y = np.array(data.draw(st.lists(st.integers(0, S.shape[1] - 1), min_size=S.shape[0],
                                    max_size=S.shape[0])))
    loss, dS = softmax.softmax_loss_from_scores(S, y)
    assert math.isfinite(loss)
    assert np.isfinite(dS).all()
    assert dS.dtype == np.float32
    P = softmax.softmax_probs(S)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-6)
    # each row of P - Y sums to 0 (dS is (P - Y) / N)
    np.testing.assert_allclose(dS.sum(axis=1) * S.shape[0], 0.0, atol=1e-6)


@settings(max_examples=300, deadline=None)
@given(S=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(2, 12)),
                elements=st.floats(-1e3, 1e3)),
       data=st.data())
def test_loss_equals_exact_log_sum_exp_where_nothing_is_clipped(S, data):
    clip = 50.0
    y = np.array(data.draw(st.lists(st.integers(0, S.shape[1] - 1), min_size=S.shape[0],
                                    max_size=S.shape[0])))
    unclipped = (S.max(axis=1, keepdims=True) - S <= clip).all()
    loss, _ = softmax.softmax_loss_from_scores(S, y, clip)
    exact = np.mean([math.log(math.fsum(math.exp(s - row.max()) for s in row)) + row.max()
                     - row[label] for row, label in zip(S, y, strict=True)])
    if unclipped:
        assert abs(loss - exact) <= 1e-12 * max(1.0, abs(exact))
    else:
        assert loss <= exact + 1e-9  # clipping only ever lowers a row's loss


def test_huge_scores_stay_finite_in_float32():
    S = np.array([[1e30, -1e30, 0.0], [-1e30, -1e30, -1e30]], dtype=np.float32)
    loss, dS = softmax.softmax_loss_from_scores(S, np.array([1, 2]))
    assert math.isfinite(loss) and np.isfinite(dS).all()
    assert loss == pytest.approx((50 + math.log(1 + 2 * math.exp(-50)) + math.log(3)) / 2,
                                 rel=1e-5)


def test_predict_and_predict_proba_agree_and_chunk():
    W, X, y = random_problem(50, 8, 5, seed=4, init_std=1.0)
    P = softmax.predict_proba(W, X, chunk=7)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    np.testing.assert_array_equal(softmax.predict(W, X, chunk=7), np.argmax(X @ W.T, axis=1))
    np.testing.assert_array_equal(P.argmax(axis=1), softmax.predict(W, X))
    assert softmax.predict(W, X).dtype == np.int64


def test_defaults_are_no_penalty_and_the_bias_column_unpenalised():
    W, X, y = random_problem(20, 6, 3, seed=5, init_std=1.0)
    assert softmax.loss_and_grad(W, X, y)[0] == softmax.loss_and_grad(W, X, y, 0.0)[0]
    assert softmax.loss_and_grad_naive(W, X, y)[0] == pytest.approx(
        softmax.loss_and_grad(W, X, y)[0], rel=1e-12)
    value, grad = softmax.l2_penalty(W, 0.5)
    assert value == pytest.approx(0.5 * np.sum(W[:, :-1] ** 2)) and not grad[:, -1].any()
    naive_loss, _ = softmax.loss_and_grad_naive(W, X, y, 0.5)
    assert naive_loss == pytest.approx(softmax.loss_and_grad(W, X, y, 0.5)[0], rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipping_is_applied_with_the_given_clip_everywhere(dtype):
    """Scores spread far beyond a small clip: the clipped loss differs from log-sum-exp."""
    rng = np.random.default_rng(3)
    S = (rng.standard_normal((40, 5)) * 10).astype(dtype)
    y = rng.integers(0, 5, 40)
    loss, dS = softmax.softmax_loss_from_scores(S.copy(), y, clip=2.0)
    Z = np.maximum(S.astype(np.float64) - S.max(axis=1, keepdims=True), -2.0)
    P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(np.mean(-np.log(P[np.arange(40), y])), rel=1e-5)
    P[np.arange(40), y] -= 1
    np.testing.assert_allclose(dS, P / 40, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(softmax.softmax_probs(S, clip=2.0), np.exp(Z) / np.exp(Z).sum(
        axis=1, keepdims=True), rtol=1e-5)
    W, X, _ = random_problem(40, 6, 5, seed=1, init_std=10.0)
    a = softmax.loss_and_grad(W, X, y, 0.0, clip=2.0)
    b = softmax.loss_and_grad_naive(W, X, y, 0.0, clip=2.0)
    assert a[0] == pytest.approx(b[0], rel=1e-10) and a[0] != pytest.approx(
        softmax.loss_and_grad(W, X, y, 0.0, clip=50.0)[0], rel=1e-3)
    np.testing.assert_allclose(a[1], b[1], atol=1e-10)
    np.testing.assert_allclose(softmax.predict_proba(W, X, clip=2.0),
                               softmax.softmax_probs(X @ W.T, clip=2.0), atol=1e-12)


def test_sample_weights_scale_each_rows_loss_and_gradient():
    rng = np.random.default_rng(4)
    S = rng.standard_normal((30, 4))
    y = rng.integers(0, 4, 30)
    weight = rng.uniform(0, 3, 30)
    loss, dS = softmax.softmax_loss_from_scores(S.copy(), y, weight=weight)
    rows = [softmax.softmax_loss_from_scores(S[i : i + 1].copy(), y[i : i + 1]) for i in range(30)]
    assert loss == pytest.approx(sum(w * r[0] for w, r in zip(weight, rows, strict=True)) / 30,
                                 rel=1e-12)
    np.testing.assert_allclose(dS, np.vstack([w * r[1] for w, r in zip(weight, rows,
                                                                        strict=True)]) / 30,
                               rtol=1e-12)
    assert dS.dtype == S.dtype


def test_the_naive_reference_keeps_the_dtype():
    W, X, y = random_problem(6, 4, 3)
    assert softmax.loss_and_grad_naive(W.astype(np.float32), X.astype(np.float32), y)[1].dtype \
        == np.float32


def test_problem_checks_name_what_is_wrong():
    W, X, y = random_problem(5, 4, 3)
    with pytest.raises(ValueError, match="shapes do not fit"):
        softmax.loss_and_grad(W[0], X, y)
    with pytest.raises(ValueError, match="shapes do not fit"):
        softmax.loss_and_grad(W, X[0], y)
    with pytest.raises(ValueError, match=r"y must have shape \(5,\)"):
        softmax.loss_and_grad(W, X, y[:4])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        softmax.loss_and_grad(W, X, np.array([0, 1, 2, 3, 0]))
    with pytest.raises(TypeError, match="float32/float64"):
        softmax.loss_and_grad(W.astype(np.float32), X, y)
    with pytest.raises(softmax.NonFiniteError, match="non-finite scores"):
        softmax.softmax_loss_from_scores(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(softmax.NonFiniteError, match="non-finite loss"):
        softmax.finite_loss(float("inf"))


def test_scores_run_in_chunks_through_the_transform():
    W, X, _ = random_problem(10, 4, 3, seed=2, init_std=1.0)
    calls = []

    def double(block):
        calls.append(len(block))
        return block * 2

    np.testing.assert_allclose(softmax.scores(W, X, chunk=4, transform=double), 2 * X @ W.T)
    assert calls == [4, 4, 2]
    negated = softmax.predict(W, X, chunk=3, transform=lambda block: -block)
    assert np.array_equal(negated, (-X @ W.T).argmax(1))
    assert not np.array_equal(negated, (X @ W.T).argmax(1))
    np.testing.assert_allclose(softmax.predict_proba(W, X, chunk=3, transform=double),
                               softmax.softmax_probs(2 * X @ W.T))
    empty = softmax.predict_proba(W.astype(np.float32), X[:0].astype(np.float32))
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    assert softmax.predict(W, X[:0]).shape == (0,)


def test_sample_weights_in_loss_and_grad_equal_weighted_scores():
    W, X, y = random_problem(30, 6, 4, seed=6, init_std=1.0)
    weight = np.random.default_rng(6).uniform(0, 3, 30)
    loss, grad = softmax.loss_and_grad(W, X, y, 0.2, sample_weight=weight)
    data_loss, dS = softmax.softmax_loss_from_scores(X @ W.T, y, weight=weight)
    assert loss == pytest.approx(data_loss + 0.2 * np.sum(W[:, :-1] ** 2), rel=1e-12)
    np.testing.assert_allclose(grad, dS.T @ X + 0.4 * W * [1, 1, 1, 1, 1, 0], rtol=1e-12)
    ones = softmax.loss_and_grad(W, X, y, 0.2, sample_weight=np.ones(30))
    assert ones[0] == pytest.approx(softmax.loss_and_grad(W, X, y, 0.2)[0], rel=1e-12)


def test_the_last_column_is_penalised_unless_it_is_the_bias_column():
    assert softmax.penalises_last_column(has_bias=False, reg_bias=False)
    assert softmax.penalises_last_column(has_bias=False, reg_bias=True)
    assert softmax.penalises_last_column(has_bias=True, reg_bias=True)
    assert not softmax.penalises_last_column(has_bias=True, reg_bias=False)
