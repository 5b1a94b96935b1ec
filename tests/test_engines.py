"""Every engine against the engine contract (softmax_cls.engines.contract) and its float64
reference (tests/engine_reference.py): SGD steps with momentum, Nesterov, clipping, L2 with
and without the bias column, sample weights, averaging, augmentation with every padding,
feature counts that are no multiple of any block width, row counts around every tile and
chunk, one minibatch's loss and gradient, predictions, ties, and the checks made once for
all engines. A new engine joins by adding its name to ENGINES."""

from __future__ import annotations

import numpy as np
import pytest
from engine_reference import (
    ENGINES,
    assert_close,
    engine_named,
    problem,
    reference_loss_and_grad,
    run_engine,
)

from softmax_cls.engines.contract import EpochPlan, OptimizerState, StepRule, TrainingRows
from softmax_cls.math.preprocess import Preprocessor
from softmax_cls.math.softmax import NonFiniteError


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    engine_named(request.param)  # skips an engine that is not installed
    return request.param


# ---------------------------------------------------------------------------------------------
# Whole epochs against the reference


@pytest.mark.parametrize("n_classes", [10, 100])
@pytest.mark.parametrize("rows_dtype", [np.float32, np.uint8])
def test_plain_steps_with_a_short_last_minibatch(engine, n_classes, rows_dtype):
    p = problem(n_classes=n_classes, rows_dtype=rows_dtype)
    actual, expected = run_engine(engine, p, batch_size=8)  # 8, 8, 7
    assert_close(actual, expected)
    assert not np.allclose(actual[0], p.W, atol=1e-3)  # the weights did move


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_clipping_and_averaging(engine, nesterov):
    p = problem(seed=2)
    velocity = np.random.default_rng(3).standard_normal(p.W.shape).astype(np.float32) * 0.1
    actual, expected = run_engine(engine, p, momentum=0.9, nesterov=nesterov, velocity=velocity,
                                  grad_clip=0.5, reg=0.01, alphas=np.array([1.0, 0.0, 0.25]))
    assert expected[5] >= 1  # the clipping did clip
    assert_close(actual, expected)


def test_clipping_compares_the_norm_not_its_square(engine):
    """A clip between the gradient norm and its square: only the norm decides."""
    p = problem(seed=21)
    plan_order = np.arange(8)
    _, g, _, _ = reference_loss_and_grad(p.rows[plan_order], p.labels[plan_order], None, p.W,
                                         p.pre, StepRule(lr=0.05))
    norm = float(np.linalg.norm(g))
    clip = (norm + norm**2) / 2  # between the two: comparing the square decides otherwise
    actual, expected = run_engine(engine, p, order=plan_order, batch_size=8, grad_clip=clip)
    assert expected[5] == int(norm > clip)
    assert_close(actual, expected)


@pytest.mark.parametrize("reg_bias", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
def test_l2_penalty_with_and_without_the_bias(engine, reg_bias, has_bias):
    p = problem(seed=5, has_bias=has_bias)
    p.W[:, -1] = 3.0  # a large last column: penalising it or not shows
    actual, expected = run_engine(engine, p, reg=0.2, lr=0.1,
                                  penalise_last=reg_bias or not has_bias)
    assert_close(actual, expected)


@pytest.mark.parametrize("penalise_last", [False, True])
def test_weights_whose_squares_overflow_float32_give_the_references_finite_loss(engine,
                                                                                penalise_last):
    """|W| about 1e20: sum(W * W) overflows float32 (3.4e38) but not float64, so the L2 term
    is finite (the reference sums it again in float64); no engine may call that divergence.
    With the last column penalised the float32 sum is inf, without it inf - inf, NaN."""
    p = problem(seed=22)
    p.W *= np.float32(1e21)
    actual, expected = run_engine(engine, p, reg=1e-3, lr=1e-3, penalise_last=penalise_last)
    assert np.isfinite(expected[3]) and expected[3] > 1e38  # the penalty itself: past float32
    assert_close(actual, expected)


def test_sample_weights(engine):
    actual, expected = run_engine(engine, problem(seed=6, weighted=True))
    assert_close(actual, expected)


def test_clipped_scores_follow_the_contract(engine):
    p = problem(seed=8)
    p.W *= 400  # score gaps far beyond clip = 5: the clipped softmax of the contract
    actual, expected = run_engine(engine, p, clip=5.0, lr=1e-3)
    assert_close(actual, expected)


@pytest.mark.parametrize("padding", ["zero", "edge", "reflect"])
def test_augmented_images_with_100_classes(engine, padding):
    p = problem(n_rows=13, n_features=3072, n_classes=100, rows_dtype=np.uint8, seed=9)
    p.W *= np.float32(0.01)
    rng = np.random.default_rng(10)
    flip = rng.random(13) < 0.5
    shift = rng.integers(-8, 9, size=(13, 2))
    actual, expected = run_engine(engine, p, flip=flip, shift=shift, padding=padding,
                                  batch_size=5, momentum=0.9)
    assert_close(actual, expected)


@pytest.mark.parametrize("n_features", [1, 7, 300, 384, 600])
@pytest.mark.parametrize("n_classes", [3, 10])
def test_feature_counts_off_every_block_width(engine, n_features, n_classes):
    p = problem(n_rows=21, n_features=n_features, n_classes=n_classes, seed=n_features)
    actual, expected = run_engine(engine, p, batch_size=8, reg=1e-3, momentum=0.5)
    assert_close(actual, expected)
    moved = np.abs(actual[0] - p.W).max(axis=0)
    assert (moved > 0).all()  # every column learned: none was dropped


@pytest.mark.parametrize("batch_size", [1, 7, 8, 9, 15, 16, 17, 33])
def test_batch_sizes_around_the_tiles(engine, batch_size):
    p = problem(n_rows=35, n_features=45, seed=batch_size, rows_dtype=np.uint8)
    actual, expected = run_engine(engine, p, batch_size=batch_size, lr=0.01)
    assert_close(actual, expected)


def test_an_empty_order_changes_nothing(engine):
    p = problem(seed=3)
    state = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())
    plan = EpochPlan(np.zeros(0, np.int64), 8, np.zeros(0))
    out = engine_named(engine).train_epoch(p.data, plan, StepRule(lr=0.1), p.pre, state)
    assert out == (0.0, 0)
    np.testing.assert_array_equal(state.W, p.W)


def test_a_huge_learning_rate_is_non_finite(engine):
    p = problem(seed=15)
    state = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())
    plan = EpochPlan(np.arange(23, dtype=np.int64), 8, np.zeros(3))
    with pytest.raises(NonFiniteError, match="non-finite"):
        engine_named(engine).train_epoch(p.data, plan, StepRule(lr=1e38, momentum=0.9), p.pre,
                                         state)
        if not np.isfinite(state.W).all():  # an engine may leave that check to its caller
            raise NonFiniteError("non-finite weights")


def test_nesterov_differs_from_plain_momentum(engine):
    p = problem(seed=2)
    plain, _ = run_engine(engine, p, momentum=0.9)
    nesterov, _ = run_engine(engine, p, momentum=0.9, nesterov=True)
    assert not np.allclose(plain[0], nesterov[0])


def test_gradient_clipping_clips_every_step(engine):
    actual, expected = run_engine(engine, problem(seed=4), grad_clip=0.05, momentum=0.5,
                                  reg=0.01)
    assert expected[5] == 3  # every step's gradient was longer than 0.05: really clipped
    assert_close(actual, expected)


def test_averaging_alphas_and_zero_alpha_leaves_the_average(engine):
    p = problem(seed=7)
    actual, expected = run_engine(engine, p, alphas=np.array([1.0, 0.0, 0.25]))
    assert_close(actual, expected)
    untouched, _ = run_engine(engine, p, alphas=np.zeros(3))
    np.testing.assert_array_equal(untouched[2], p.W * np.float32(0.5))


# Sizes around the numba engine's: TILE_ROWS 8 rows, CHUNK 512 features per score tile,
# gradient blocks of 256 / 128 / 64 columns (C <= 128, C = 200, C > 512), predictions in
# chunks of 64 rows.
FEATURE_COUNTS = [1, 7, 300, 384, 511, 512, 513, 600]
BATCH_SIZES = [1, 7, 8, 9, 15, 16, 17]


@pytest.mark.parametrize("n_features", FEATURE_COUNTS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_sizes_of_rows_and_features(engine, n_features, batch_size):
    n_rows = 2 * batch_size + (batch_size + 1) // 2  # two full minibatches and a short one
    p = problem(n_rows=n_rows, n_features=n_features, n_classes=3,
                seed=n_features + batch_size, weighted=True)
    actual, expected = run_engine(engine, p, batch_size=batch_size, momentum=0.9, reg=1e-3,
                                  alphas=np.full(3, 0.5))
    assert_close(actual, expected)


# 200 classes: gradient blocks of 128 columns; 600: of 64, the narrowest
@pytest.mark.parametrize("n_classes", [2, 7, 100, 200, 600])
@pytest.mark.parametrize("n_features", [7, 300, 384, 600])
@pytest.mark.parametrize("grad_clip", [None, 0.05])  # the fused update, then the clipped one
def test_sizes_of_classes_and_features(engine, n_classes, n_features, grad_clip):
    p = problem(n_rows=19, n_features=n_features, n_classes=n_classes, seed=n_classes)
    actual, expected = run_engine(engine, p, batch_size=9, grad_clip=grad_clip, momentum=0.5)
    assert expected[5] == (3 if grad_clip else 0)
    assert_close(actual, expected)


@pytest.mark.parametrize("n_features", FEATURE_COUNTS)
@pytest.mark.parametrize("n_rows", [1, 7, 8, 9, 17])
def test_sizes_of_loss_and_grad(engine, n_features, n_rows):
    p = problem(n_rows=n_rows, n_features=n_features, n_classes=3, seed=n_rows, weighted=True)
    W = p.W.astype(np.float64)
    rule = StepRule(lr=1.0, reg=0.05, penalise_last=True)
    loss, dW, correct = engine_named(engine).loss_and_grad(p.rows, p.labels, p.sample_weight,
                                                           W, p.pre, rule)
    loss_r, dW_r, correct_r, _ = reference_loss_and_grad(p.rows, p.labels, p.sample_weight, W,
                                                         p.pre, rule)
    assert loss == pytest.approx(loss_r, rel=1e-10) and correct == correct_r
    np.testing.assert_allclose(dW, dW_r, rtol=1e-9, atol=1e-12)


def test_the_reference_counts_the_clipped_steps():
    """The reference itself: the tests above read its count of clipped steps."""
    p = problem(seed=23)
    state = OptimizerState(p.W, np.zeros_like(p.W), np.zeros_like(p.W))
    plan = EpochPlan(np.arange(23, dtype=np.int64), 8, np.zeros(3))
    from engine_reference import reference_epoch

    for clip, clipped in ((1e-6, 3), (1e6, 0)):
        rule = StepRule(lr=0.1, grad_clip=clip)
        assert reference_epoch(p.data, plan, rule, p.pre, state)[5] == clipped


# ---------------------------------------------------------------------------------------------
# One minibatch, predictions, ties


@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("rows_dtype", [np.float32, np.uint8])
def test_loss_and_grad_against_the_reference_and_finite_differences(engine, has_bias,
                                                                    rows_dtype):
    p = problem(n_rows=11, n_features=20, seed=17, weighted=True, has_bias=has_bias,
                rows_dtype=rows_dtype)
    W = p.W.astype(np.float64) * 5
    weight = p.sample_weight.astype(np.float64) / 3  # float64 values float32 cannot hold
    rule = StepRule(lr=1.0, reg=0.05, penalise_last=not has_bias)
    run = engine_named(engine).loss_and_grad
    loss, dW, correct = run(p.rows, p.labels, weight, W, p.pre, rule)
    loss_r, dW_r, correct_r, _ = reference_loss_and_grad(p.rows, p.labels, weight, W, p.pre,
                                                         rule)
    assert dW.dtype == np.float64 and dW.shape == W.shape and correct == correct_r
    assert loss == pytest.approx(loss_r, rel=1e-12)
    np.testing.assert_allclose(dW, dW_r, rtol=1e-10, atol=1e-13)
    h = 1e-5
    for c, j in [(0, 0), (3, 7), (9, 19), (5, W.shape[1] - 1)]:  # the last: bias if any
        plus, minus = W.copy(), W.copy()
        plus[c, j] += h
        minus[c, j] -= h
        numeric = (run(p.rows, p.labels, weight, plus, p.pre, rule)[0]
                   - run(p.rows, p.labels, weight, minus, p.pre, rule)[0]) / (2 * h)
        assert abs(numeric - dW[c, j]) <= 1e-6 * max(abs(numeric), abs(dW[c, j]), 1e-12)


def test_non_finite_rows_raise(engine):
    p = problem(seed=16)
    p.rows[3, 2] = np.inf
    with pytest.raises(NonFiniteError, match="non-finite"):
        engine_named(engine).loss_and_grad(p.rows, p.labels, None, p.W, p.pre, StepRule(lr=1))


@pytest.mark.parametrize("n_rows", [1, 7, 8, 9, 63, 64, 65, 127, 129, 513, 4095, 4097])
@pytest.mark.parametrize("n_features", [7, 33, 384, 600])
@pytest.mark.parametrize("w_dtype", [np.float32, np.float64])
def test_predict_scores_for_row_counts_around_every_chunk(engine, n_rows, n_features, w_dtype,
                                                          tmp_path):
    p = problem(n_rows=n_rows, n_features=n_features, rows_dtype=np.uint8, seed=n_rows)
    path = tmp_path / "rows.bin"
    p.rows.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=p.rows.shape)
    W = p.W.astype(w_dtype)
    scores = engine_named(engine).predict_scores(mapped, W, p.pre)
    expected = p.pre.transform(p.rows, np.float64) @ W.T.astype(np.float64)
    assert scores.dtype == w_dtype and scores.shape == (n_rows, 10)
    np.testing.assert_allclose(scores, expected,
                               rtol=1e-4 if w_dtype == np.float32 else 1e-10, atol=1e-4)


def test_ties_count_the_first_class_as_numpy_argmax_does(engine):
    """All-zero weights: every score ties, so argmax is class 0 (numpy's first maximum): the
    rows labelled 0 count as correct, no other."""
    p = problem(n_rows=16, n_features=12, n_classes=4, seed=30)
    W = np.zeros_like(p.W)
    _, _, correct = engine_named(engine).loss_and_grad(p.rows, p.labels, None, W, p.pre,
                                                       StepRule(lr=1))
    assert correct == int(np.sum(p.labels == 0))
    state = OptimizerState(W.copy(), np.zeros_like(W), W.copy())
    plan = EpochPlan(np.arange(16, dtype=np.int64), 16, np.zeros(1))
    _, correct = engine_named(engine).train_epoch(p.data, plan, StepRule(lr=0.1), p.pre, state)
    assert correct == int(np.sum(p.labels == 0))


# ---------------------------------------------------------------------------------------------
# The checks, made once by the contract for every engine


def call_epoch(engine: str, **change):
    p = problem(seed=40)
    parts = {"data": p.data, "plan": EpochPlan(np.arange(23, dtype=np.int64), 8, np.zeros(3)),
             "rule": StepRule(lr=0.1), "pre": p.pre,
             "state": OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())}
    parts.update(change)
    return engine_named(engine).train_epoch(**parts)


def test_a_label_equal_to_the_class_count_is_refused(engine):
    p = problem(seed=40)
    labels = p.labels.copy()
    labels[5] = p.W.shape[0]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        call_epoch(engine, data=TrainingRows(p.rows, labels))
    with pytest.raises(ValueError, match="labels"):
        engine_named(engine).loss_and_grad(p.rows, labels, None, p.W, p.pre, StepRule(lr=1))


@pytest.mark.parametrize("change, match", [
    ({"plan": EpochPlan(np.array([0, 23]), 8, np.zeros(1))}, "order must index rows"),
    ({"plan": EpochPlan(np.arange(23, dtype=np.int64), 8, np.zeros(2))}, "avg_alpha"),
    ({"plan": EpochPlan(np.arange(23, dtype=np.int64), 0, np.zeros(3))}, "batch_size"),
    ({"plan": EpochPlan(np.arange(23, dtype=np.int64), 8, np.zeros(3),
                        flip=np.zeros(23, bool))}, "need image rows"),
    ({"plan": EpochPlan(np.arange(23, dtype=np.int64), 8, np.zeros(3), padding="wrap")},
     "padding"),
    ({"rule": StepRule(lr=0.0)}, "lr > 0"),
    ({"rule": StepRule(lr=0.1, clip=0.0)}, "out of range"),
    ({"rule": StepRule(lr=0.1, momentum=1.0)}, "momentum in"),
    ({"data": TrainingRows(problem(seed=40).rows, problem(seed=40).labels,
                           np.ones(23, np.float64))}, "sample_weight must be"),
    ({"state": OptimizerState(np.zeros((10, 41), np.float32, order="F"),
                              np.zeros((10, 41), np.float32), np.zeros((10, 41), np.float32))},
     "C-contiguous"),
    ({"state": OptimizerState(np.zeros((10, 40), np.float32), np.zeros((10, 41), np.float32),
                              np.zeros((10, 41), np.float32))}, r"W must be \(C, 41\)"),
    ({"state": OptimizerState(np.zeros((10, 41), np.float32), np.zeros((10, 41), np.float64),
                              np.zeros((10, 41), np.float32))}, "velocity"),
    ({"pre": Preprocessor(np.zeros(39), np.ones(39))}, "rows have 40 values"),
])
def test_bad_arguments_are_refused_for_every_engine(engine, change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call_epoch(engine, **change)


def test_shifts_past_eight_pixels_are_refused(engine):
    p = problem(n_rows=4, n_features=3072, rows_dtype=np.uint8, seed=41)
    plan = EpochPlan(np.arange(4, dtype=np.int64), 4, np.zeros(1),
                     shift=np.full((4, 2), 9, np.int64))
    with pytest.raises(ValueError, match="shift must lie"):
        call_epoch(engine, data=p.data, plan=plan, pre=p.pre,
                   state=OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy()))
