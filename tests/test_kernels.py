"""The numba engine (softmax_cls.engines.numba_engine.kernels) against plain float64 numpy
from the math of ENGINE_API.md (tests/engine_reference.py; the plain steps are in
test_engines.py, for both
engines): one or a few SGD steps, augmentation, predictions,
the gradient check, thread-count independence, non-finite detection, the cache location.
Skipped without numba."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# ImportError without numba: skip
kernels = pytest.importorskip("softmax_cls.engines.numba_engine.kernels")
numba = pytest.importorskip("numba")

from engine_reference import (  # noqa: E402
    assert_close,
    augmented,
    problem,
    reference_loss_and_grad,
    run_engine,
)

from softmax_cls.math.softmax import NonFiniteError  # noqa: E402


def run_both(*args, **kwargs):
    """(kernel W, V, A, loss_sum, correct) and the reference's, on the same inputs."""
    return run_engine(kernels.train_epoch, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# SGD steps against the reference


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_and_nesterov(nesterov):
    rows, labels, W, mean, scale, weight = problem(seed=2)
    velocity = np.random.default_rng(3).standard_normal(W.shape).astype(np.float32) * 0.1
    actual, expected = run_both(rows, labels, W, mean, scale, weight, momentum=0.9,
                                nesterov=nesterov, velocity=velocity)
    assert_close(actual, expected)


def test_nesterov_differs_from_plain_momentum():
    rows, labels, W, mean, scale, weight = problem(seed=2)
    plain, _ = run_both(rows, labels, W, mean, scale, weight, momentum=0.9)
    nesterov, _ = run_both(rows, labels, W, mean, scale, weight, momentum=0.9, nesterov=True)
    assert not np.allclose(plain[0], nesterov[0])


def test_gradient_clipping_clips():
    rows, labels, W, mean, scale, weight = problem(seed=4)
    actual, expected = run_both(rows, labels, W, mean, scale, weight, grad_clip=0.05,
                                momentum=0.5, reg=0.01)
    assert expected[5] == 3  # every step's gradient was longer than 0.05: really clipped
    assert_close(actual, expected)


@pytest.mark.parametrize("reg_bias", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
def test_l2_penalty_with_and_without_the_bias(reg_bias, has_bias):
    rows, labels, W, mean, scale, weight = problem(seed=5, has_bias=has_bias)
    W[:, -1] = 3.0  # a large last column: penalising it or not shows
    actual, expected = run_both(rows, labels, W, mean, scale, weight, reg=0.2,
                                reg_bias=reg_bias, has_bias=has_bias, lr=0.1)
    assert_close(actual, expected)


def test_sample_weights():
    rows, labels, W, mean, scale, weight = problem(seed=6, weighted=True)
    actual, expected = run_both(rows, labels, W, mean, scale, weight)
    assert_close(actual, expected)
    unweighted, _ = run_both(rows, labels, W, mean, scale, np.zeros(0, np.float32))
    assert not np.allclose(actual[0], unweighted[0])


def test_averaging_alphas_and_zero_alpha_leaves_the_average():
    rows, labels, W, mean, scale, weight = problem(seed=7)
    alphas = np.array([1.0, 0.0, 0.25])
    actual, expected = run_both(rows, labels, W, mean, scale, weight, alphas=alphas)
    assert_close(actual, expected)
    untouched, _ = run_both(rows, labels, W, mean, scale, weight, alphas=np.zeros(3))
    np.testing.assert_array_equal(untouched[2], W * 0.5)


def test_clipped_scores_follow_the_contract():
    rows, labels, W, mean, scale, weight = problem(seed=8)
    W *= 400  # score gaps far beyond clip = 5: the clipped softmax of the contract
    actual, expected = run_both(rows, labels, W, mean, scale, weight, clip=5.0, lr=1e-3)
    assert_close(actual, expected)


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_augmented_images_with_100_classes(padding):
    rows, labels, W, mean, scale, weight = problem(n_rows=13, n_features=3072, n_classes=100,
                                                   rows_dtype=np.uint8, seed=9)
    rng = np.random.default_rng(10)
    flip = rng.random(13) < 0.5
    shift = rng.integers(-8, 9, size=(13, 2))
    actual, expected = run_both(rows, labels, W * 0.01, mean, scale, weight, flip=flip,
                                shift=shift, padding=padding, batch_size=5, momentum=0.9)
    assert_close(actual, expected)


# ---------------------------------------------------------------------------------------------
# Augmentation content: the gathered image, read back from one SGD step


def gathered_image(image, flip, dy, dx, padding):
    """The image the kernel trained on, recovered exactly: with W = 0, two classes, mean 0,
    scale 1, no bias and lr 1, one step sets W[other class] = -0.5 * x."""
    W = np.zeros((2, 3072), np.float32)
    kernels.train_epoch(image[None], np.array([0]), np.array([0]), np.zeros(0, np.float32),
                        np.array([flip]), np.array([[dy, dx]]), padding, W, np.zeros_like(W),
                        np.zeros_like(W), np.zeros(1), np.zeros(3072, np.float32),
                        np.ones(3072, np.float32), False, 1, 1.0, 0.0, False, 0.0, 0.0,
                        False, 50.0)
    return -2 * W[1]


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_padding_content_against_np_pad(padding):
    image = np.random.default_rng(11).integers(0, 256, 3072).astype(np.uint8)
    for flip in (False, True):
        for dy, dx in [(0, 0), (3, -2), (-8, 8), (8, -8), (0, 5), (-1, 0), (2, 7)]:
            got = gathered_image(image, flip, dy, dx, padding)
            np.testing.assert_array_equal(got, augmented(image, flip, dy, dx, padding),
                                          err_msg=f"flip {flip} shift ({dy}, {dx})")


def test_flip_comes_before_the_shift():
    image = np.random.default_rng(12).integers(0, 256, 3072).astype(np.uint8)
    got = gathered_image(image, True, 1, 3, 0)
    shifted_first = augmented(augmented(image, False, 1, 3, 0), True, 0, 0, 0)
    assert not np.array_equal(got, shifted_first)
    np.testing.assert_array_equal(got, augmented(image, True, 1, 3, 0))


def test_edge_and_reflect_on_a_known_image():
    image = np.tile(np.arange(32, dtype=np.uint8), 96)  # every line is 0, 1, ..., 31
    np.testing.assert_array_equal(gathered_image(image, False, 0, 2, 1)[:6], [0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(gathered_image(image, False, 0, 2, 2)[:6], [2, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(gathered_image(image, False, 0, 2, 0)[:6], [0, 0, 0, 1, 2, 3])
    # mirrored: 31, 30, ..., 0; moved left by 2 with reflection: ..., 1, 0, 1, 2
    np.testing.assert_array_equal(gathered_image(image, True, 0, -2, 2)[-4:], [1, 0, 1, 2])


# ---------------------------------------------------------------------------------------------
# Determinism, errors, predictions, the gradient check


def test_bit_identical_whatever_the_thread_count(monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba runs with one thread here (NUMBA_NUM_THREADS)")
    monkeypatch.setattr(kernels.THREAD_GOVERNOR, "enabled", False)  # exactly 1, then 2
    rows, labels, W, mean, scale, weight = problem(n_rows=150, n_features=3072, n_classes=10,
                                                   rows_dtype=np.uint8, seed=13, weighted=True)
    rng = np.random.default_rng(14)
    order = rng.permutation(150)
    flip, shift = rng.random(150) < 0.5, rng.integers(-2, 3, size=(150, 2))
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            for grad_clip in (0.0, 0.01):  # 0.01 clips every step
                W_k, V_k, A_k = W * 0.01, np.zeros_like(W), np.zeros_like(W)
                out = kernels.train_epoch(rows, labels, order, weight, flip, shift, 1, W_k, V_k,
                                          A_k, np.full(3, 0.5), mean, scale, True, 64, 0.01,
                                          0.9, True, grad_clip, 1e-3, False, 50.0)
                scores = kernels.predict_scores(rows, W_k, mean, scale, True)
                results.append((W_k, V_k, A_k, out, scores))
    finally:
        numba.set_num_threads(before)
    for one, two in zip(results[:2], results[2:], strict=True):
        for a, b in zip(one, two, strict=True):
            assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# The thread governor: one thread while another process holds a core


def governor_after(epochs: list[tuple[int, float]], available: int = 2):
    """A fresh governor fed epochs of one kind: (the thread count it must choose, the
    seconds per row that epoch then took)."""
    governor = kernels.ThreadGovernor()
    for threads, seconds in epochs:
        assert governor.choose("kind", available) == threads
        governor.record("kind", threads, seconds, available)
    return governor


def test_governor_measures_both_counts_then_keeps_the_faster_and_probes_less_often():
    every = kernels.ThreadGovernor.PROBE_EVERY
    quiet = [(2, 1.0), (1, 1.6), (2, 1.0)]  # all threads (maybe compiling), one, all again
    governor = governor_after([*quiet, *[(2, 1.0)] * (every - 1), (1, 1.6),
                               *[(2, 1.0)] * (2 * every), (1, 1.6),
                               *[(2, 1.0)] * (4 * every - 1)])
    assert governor.choose("kind", 2) == 2
    governor.record("kind", 2, 1.0, 2)
    assert governor.choose("kind", 2) == 1  # the probes of one thread: after 4, 8, 16 epochs
    assert governor.choose("other kind", 2) == 2  # kinds are timed apart


def test_governor_moves_to_one_thread_when_all_threads_get_slower_and_back_after():
    every = kernels.ThreadGovernor.PROBE_EVERY
    quiet = [(2, 1.0), (1, 1.6), (2, 1.0)]
    contended = [(2, 9.0), *[(1, 1.7)] * every]  # another process takes a core
    governor = governor_after([*quiet, *contended, (2, 8.0), *[(1, 1.7)] * (2 * every)])
    assert governor.choose("kind", 2) == 2  # the probe, after twice as many epochs
    governor.record("kind", 2, 1.0, 2)  # the machine is quiet again
    assert governor.choose("kind", 2) == 2


def test_governor_picks_one_thread_when_the_machine_is_busy_from_the_start():
    governor = governor_after([(2, 9.0), (1, 1.6), (2, 8.0), (1, 1.6), (1, 1.6)])
    assert governor.choose("kind", 2) == 1


def test_governor_can_be_switched_off_and_has_nothing_to_choose_from_one_thread():
    governor = governor_after([(2, 9.0), (1, 1.6), (2, 8.0)])
    governor.enabled = False
    assert governor.choose("kind", 2) == 2
    assert governor_after([(1, 1.0), (1, 5.0), (1, 1.0)], available=1).choose("kind", 1) == 1


def test_train_epoch_runs_on_the_thread_count_the_governor_picks(monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba runs with one thread here (NUMBA_NUM_THREADS)")
    seconds = iter([0.0, 0.9, 1.0, 1.2, 2.0, 2.9])  # 0.9 s on 2 threads, 0.2 s on 1, 0.9 s
    governor = kernels.ThreadGovernor(clock=lambda: next(seconds, 3.0))
    monkeypatch.setattr(kernels, "THREAD_GOVERNOR", governor)
    threads_seen = []
    real_kernel = kernels._train_epoch_kernel

    def spy(*args):
        threads_seen.append(numba.get_num_threads())
        return real_kernel(*args)

    monkeypatch.setattr(kernels, "_train_epoch_kernel", spy)
    rows, labels, W, mean, scale, weight = problem(seed=16)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        governed = [W * 0.01, np.zeros_like(W), np.zeros_like(W)]
        for _ in range(4):
            kernels.train_epoch(rows, labels, np.arange(23), weight, np.zeros(0, bool),
                                np.zeros((0, 2), np.int64), 1, *governed, np.zeros(3), mean,
                                scale, True, 8, 0.01, 0.9, True, 0.0, 1e-3, False, 50.0)
            assert numba.get_num_threads() == 2  # restored after an epoch on one thread
    finally:
        numba.set_num_threads(before)
    assert threads_seen == [2, 1, 2, 1]
    governor.enabled = False
    fixed = [W * 0.01, np.zeros_like(W), np.zeros_like(W)]
    for _ in range(4):  # the same epochs on numba's threads as set: the same weights
        kernels.train_epoch(rows, labels, np.arange(23), weight, np.zeros(0, bool),
                            np.zeros((0, 2), np.int64), 1, *fixed, np.zeros(3), mean, scale,
                            True, 8, 0.01, 0.9, True, 0.0, 1e-3, False, 50.0)
    for a, b in zip(governed, fixed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_epoch_in_calls_of_a_few_steps_equals_one_call(monkeypatch):
    rows, labels, W, mean, scale, weight = problem(n_rows=61, n_features=3072, seed=17,
                                                   rows_dtype=np.uint8, weighted=True)
    rng = np.random.default_rng(18)
    order, flip = rng.permutation(61), rng.random(61) < 0.5
    shift = rng.integers(-2, 3, size=(61, 2))
    results = []
    for steps in (100, 1, 3):  # 8 steps of 8 rows (the last 5): one call, 8 calls, 3 calls
        monkeypatch.setattr(kernels, "STEPS_PER_CALL", steps)
        state = [W * 0.01, np.zeros_like(W), np.zeros_like(W)]
        out = kernels.train_epoch(rows, labels, order, weight, flip, shift, 1, *state,
                                  np.linspace(0, 1, 8), mean, scale, True, 8, 0.01, 0.9, True,
                                  0.0, 1e-3, False, 50.0)
        results.append((*state, out))
    for other in results[1:]:  # the weights bit for bit; the loss sum adds the calls' sums
        for a, b in zip(results[0][:3], other[:3], strict=True):
            np.testing.assert_array_equal(a, b)
        assert other[3][1] == results[0][3][1]
        assert other[3][0] == pytest.approx(results[0][3][0], rel=1e-12)


def test_a_non_finite_minibatch_is_numbered_across_calls(monkeypatch):
    monkeypatch.setattr(kernels, "STEPS_PER_CALL", 2)
    rows, labels, W, mean, scale, weight = problem(n_rows=40, rows_dtype=np.float32, seed=19)
    rows[33] = np.inf  # the 34th row of the order: minibatch 5 of 8 rows, in the third call
    with pytest.raises(NonFiniteError, match="minibatch 5 "):
        kernels.train_epoch(rows, labels, np.arange(40), weight, np.zeros(0, bool),
                            np.zeros((0, 2), np.int64), 1, W * 0.01, np.zeros_like(W),
                            np.zeros_like(W), np.zeros(5), mean, scale, True, 8, 0.01, 0.9,
                            True, 0.0, 1e-3, False, 50.0)


def test_huge_learning_rate_raises_non_finite():
    rows, labels, W, mean, scale, weight = problem(seed=15)
    with pytest.raises(NonFiniteError, match="non-finite"):
        kernels.train_epoch(rows, labels, np.arange(23), weight, np.zeros(0, bool),
                            np.zeros((0, 2), np.int64), 0, W, np.zeros_like(W),
                            np.zeros_like(W), np.zeros(3), mean, scale, True, 8, 1e38, 0.9,
                            False, 0.0, 0.0, False, 50.0)


def test_non_finite_rows_raise():
    rows, labels, W, mean, scale, weight = problem(seed=16)
    rows[3, 2] = np.inf
    with pytest.raises(NonFiniteError, match="non-finite scores"):
        kernels.batch_loss_and_grad(rows, labels, weight, W, mean, scale, True, 0.0, False, 50.0)


@pytest.mark.parametrize("rows_dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("w_dtype", [np.float32, np.float64])
def test_predict_scores(rows_dtype, w_dtype, tmp_path):
    rows, _, W, mean, scale, _ = problem(n_rows=70, n_features=33, rows_dtype=rows_dtype)
    path = tmp_path / "rows.bin"
    rows.tofile(path)
    mapped = np.memmap(path, dtype=rows_dtype, mode="r", shape=rows.shape)
    W = W.astype(w_dtype)
    scores = kernels.predict_scores(mapped, W, mean, scale, True)
    X = np.hstack([(rows - mean.astype(np.float64)) * scale, np.ones((70, 1))])
    assert scores.dtype == w_dtype and scores.shape == (70, 10)
    np.testing.assert_allclose(scores, X @ W.T.astype(np.float64),
                               rtol=1e-5 if w_dtype == np.float32 else 1e-12, atol=1e-5)


def test_batch_loss_and_grad_against_the_reference_and_finite_differences():
    rows, labels, W, mean, scale, weight = problem(n_rows=11, n_features=20, seed=17,
                                                   weighted=True)
    W = W.astype(np.float64) * 5
    args = (mean, scale, True, 0.05, False, 50.0)
    loss, dW, correct = kernels.batch_loss_and_grad(rows, labels, weight, W, *args)
    loss_r, dW_r, correct_r, _ = reference_loss_and_grad(
        rows, labels, weight, W, mean.astype(np.float64), scale.astype(np.float64), True, 0.05,
        False, 50.0)
    assert dW.dtype == np.float64 and correct == correct_r
    assert loss == pytest.approx(loss_r, rel=1e-12)
    np.testing.assert_allclose(dW, dW_r, rtol=1e-10, atol=1e-13)
    h = 1e-5
    rng = np.random.default_rng(18)
    coordinates = [(c, j) for c, j in zip(rng.integers(0, 10, 12), rng.integers(0, 21, 12),
                                          strict=True)] + [(3, 20)]  # 20: the bias column
    for c, j in coordinates:
        plus, minus = W.copy(), W.copy()
        plus[c, j] += h
        minus[c, j] -= h
        numeric = (kernels.batch_loss_and_grad(rows, labels, weight, plus, *args)[0]
                   - kernels.batch_loss_and_grad(rows, labels, weight, minus, *args)[0]) / (2 * h)
        relative = abs(numeric - dW[c, j]) / max(abs(numeric), abs(dW[c, j]), 1e-12)
        assert relative < 1e-6, (c, j, numeric, dW[c, j])


def test_batch_loss_and_grad_of_uint8_rows_without_bias():
    rows, labels, W, mean, scale, _ = problem(n_rows=9, n_features=30, rows_dtype=np.uint8,
                                              has_bias=False, seed=19)
    W = W.astype(np.float64)
    loss, dW, correct = kernels.batch_loss_and_grad(rows, labels, np.zeros(0), W, mean, scale,
                                                    False, 0.1, False, 50.0)
    loss_r, dW_r, correct_r, _ = reference_loss_and_grad(
        rows, labels, None, W, mean.astype(np.float64), scale.astype(np.float64), False, 0.1,
        False, 50.0)
    assert loss == pytest.approx(loss_r, rel=1e-12) and correct == correct_r
    np.testing.assert_allclose(dW, dW_r, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Compilation cache and the missing extra


def test_kernels_are_compiled_after_use():
    rows, labels, W, mean, scale, weight = problem(rows_dtype=np.uint8, seed=20)
    run_both(rows, labels, W, mean, scale, weight)
    kernels.predict_scores(rows, W, mean, scale, True)
    assert kernels.kernels_are_compiled(np.uint8) is True


def test_cache_folder_when_the_package_folder_is_read_only(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    kernels._cache_dir_for_numba()
    expected = str(tmp_path / "softmax-cls" / "numba")
    assert os.environ["NUMBA_CACHE_DIR"] == expected
    assert numba.config.CACHE_DIR == expected


def test_user_cache_folder_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    kernels._cache_dir_for_numba()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")


def test_import_without_numba_is_an_import_error():
    code = ("import sys; sys.modules['numba'] = None\n"
            "try:\n    import softmax_cls.engines.numba_engine.kernels\n"
            "except ImportError:\n    print('ImportError')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == "ImportError"
