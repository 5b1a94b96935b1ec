"""optim.solver lbfgs: the engines' full-batch objective against the plain-numpy reference,
augmented views, L-BFGS to the tolerance, run folders, the estimator against scikit-learn's
LogisticRegression, and warm-started regularisation paths through softmax-sweep."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import separable_data, small_config

from softmax_cls import cli
from softmax_cls.config import config_from_dict
from softmax_cls.engines import get_engine, numpy_engine
from softmax_cls.engines.contract import StepRule, TrainingRows
from softmax_cls.errors import ConfigError, SoftmaxClsError
from softmax_cls.math import softmax
from softmax_cls.math.augment import apply_augmentation, apply_view, augmented_views
from softmax_cls.math.preprocess import Preprocessor, Split, fit_preprocessor
from softmax_cls.training import lbfgs, runs
from softmax_cls.training.checkpoint import load_checkpoint
from softmax_cls.training.precondition import JITTER, Preconditioner, second_moment
from softmax_cls.training.runs import train_run

pytest.importorskip("scipy")
IDENTITY = ((False, 0, 0),)
TESTS = Path(__file__).resolve().parent
ENGINES = ["numpy", "numba", "torch"]  # each has a full-batch function of its own


def full_function(engine: str, device: str = "cpu"):
    """The engine's full_loss_and_grad itself (it takes `chunk`), not through the Engine."""
    if engine == "numpy":
        return numpy_engine.full_loss_and_grad
    if engine == "numba":
        pytest.importorskip("numba")
        from softmax_cls.engines.numba_engine import full

        return full.full_loss_and_grad
    torch = pytest.importorskip("torch")
    from softmax_cls.engines.torch_engine import full

    return partial(full.full_loss_and_grad, torch.device(device))


def image_problem(n: int = 120, classes: int = 4, seed: int = 0, weighted: bool = True):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.int64)
    weight = rng.uniform(0.2, 2.0, n).astype(np.float32) if weighted else None
    pre = fit_preprocessor(rows, scale="std")
    W = rng.standard_normal((classes, 3073)) * 0.02
    return TrainingRows(rows, labels, weight), pre, W


def reference(data: TrainingRows, index, W, pre, rule, views, padding="edge"):
    """softmax.loss_and_grad of every (view, row) pair, built explicitly in float64."""
    rows = data.rows[index]
    X = np.concatenate([pre.transform(apply_view(rows, v, padding) if v != (False, 0, 0)
                                      else rows, np.float64) for v in views])
    weight = None if data.sample_weight is None else np.tile(data.sample_weight[index],
                                                             len(views))
    return softmax.loss_and_grad(W, X, np.tile(data.labels[index], len(views)), rule.reg,
                                 rule.clip, rule.penalise_last, weight)


# --- the objective ---------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("penalise_last", [True, False])
@pytest.mark.parametrize("views", [IDENTITY, tuple(augmented_views(True, 1))])
@pytest.mark.parametrize("engine", ENGINES)
def test_full_loss_and_grad_is_the_reference_in_float64(engine, weighted, penalise_last,
                                                        views):
    check_against_the_reference(engine, "cpu", weighted, penalise_last, views, "reflect")


def check_against_the_reference(engine, device, weighted, penalise_last, views, padding):
    data, pre, W = image_problem(weighted=weighted)
    index = np.sort(np.random.default_rng(1).choice(120, 90, replace=False)).astype(np.int64)
    rule = StepRule(lr=1.0, reg=0.05, penalise_last=penalise_last, clip=20.0)
    want_loss, want_grad = reference(data, index, W, pre, rule, views, padding)
    for chunk in (32, 2):  # 2: 45 chunks, several to each of numpy's and numba's runs
        loss, grad = full_function(engine, device)(data, index, W, pre, rule, views, padding,
                                                   "float64", chunk=chunk)
        assert loss == pytest.approx(want_loss, rel=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-13)
    # float32 products, float64 sums: close to the float64 answer (and not float64 itself)
    loss32, grad32 = get_engine(engine, device).full_loss_and_grad(
        data, index, W, pre, rule, views, padding, "float32")
    assert loss32 == pytest.approx(want_loss, rel=1e-6)
    assert 0 < np.abs(grad32 - want_grad).max() <= 1e-5 * np.abs(want_grad).max()


@pytest.mark.parametrize("engine", ENGINES)
def test_scores_clipped_below_minus_clip_as_the_reference(engine):
    data, pre, W = image_problem(n=60)
    W *= 40  # score gaps of hundreds: most rows' lowest scores are clipped at -clip
    index = np.arange(60, dtype=np.int64)
    rule = StepRule(lr=1.0, reg=0.01, clip=5.0)
    views = ((False, 0, 0), (True, 0, 1))
    S = pre.transform(data.rows, np.float64) @ W.T
    assert ((S - S.max(1, keepdims=True)) < -rule.clip).mean() > 0.3
    got = full_function(engine)(data, index, W, pre, rule, views, "edge", "float64")
    want = reference(data, index, W, pre, rule, views)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("engine", ENGINES)
def test_features_without_centring_or_bias_and_a_contiguous_slice(engine):
    full_function(engine)
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((50, 7)).astype(np.float32) * 3 + 1
    labels = rng.integers(0, 3, 50).astype(np.int64)
    for pre in (Preprocessor(np.zeros(7), np.ones(7), bias=False),
                Preprocessor(rows.mean(0).astype(np.float64), np.full(7, 0.5), bias=True)):
        W = rng.standard_normal((3, pre.n_features))
        rule = StepRule(lr=1.0, reg=0.01, penalise_last=not pre.bias)
        index = np.arange(5, 45, dtype=np.int64)
        got = get_engine(engine, "cpu").full_loss_and_grad(
            TrainingRows(rows, labels), index, W, pre, rule, IDENTITY, "edge", "float64")
        want = reference(TrainingRows(rows, labels), index, W, pre, rule, IDENTITY)
        assert got[0] == pytest.approx(want[0], rel=1e-12)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-13)


def test_the_gradient_is_the_derivative_of_the_loss():
    data, pre, W = image_problem(n=40, classes=3)
    index = np.arange(40, dtype=np.int64)
    rule = StepRule(lr=1.0, reg=0.1)
    views = tuple(augmented_views(True, 1))

    def f(W):
        return numpy_engine.full_loss_and_grad(data, index, W, pre, rule, views, "edge",
                                               "float64")

    _, grad = f(W)
    rng = np.random.default_rng(5)
    for _ in range(6):
        c, d = rng.integers(0, 3), rng.choice([0, 5, 1000, 3071, 3072])
        step = np.zeros_like(W)
        step[c, d] = 1e-5
        numeric = (f(W + step)[0] - f(W - step)[0]) / 2e-5
        assert numeric == pytest.approx(grad[c, d], rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_memory_map_is_read_in_chunks_with_the_same_result(engine, tmp_path):
    function = full_function(engine)
    data, pre, W = image_problem(weighted=True)
    path = tmp_path / "rows.u8"
    data.rows.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=data.rows.shape)
    rule = StepRule(lr=1.0, reg=0.01)
    views = ((False, 0, 0), (True, 1, -2))
    for index in (np.arange(10, 120, dtype=np.int64),  # a slice of the file, and a gather
                  np.arange(3, 120, 2, dtype=np.int64)):
        whole = numpy_engine.full_loss_and_grad(data, index, W, pre, rule, views, "zero",
                                                "float64", chunk=1000)
        chunked = function(TrainingRows(mapped, data.labels, data.sample_weight), index, W,
                           pre, rule, views, "zero", "float64", chunk=7)
        assert chunked[0] == pytest.approx(whole[0], rel=1e-13)
        np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_non_finite_score_is_the_non_finite_error(engine):
    function = full_function(engine)
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((40, 5)).astype(np.float32)
    rows[33, 2] = np.nan  # chunk 8 of 10: numpy's last run, not numba's (a run per chunk)
    pre = Preprocessor(np.zeros(5), np.ones(5))
    data = TrainingRows(rows, rng.integers(0, 3, 40).astype(np.int64))
    message = "non-finite" if engine == "torch" else "non-finite scores"
    for precision in ("float32", "float64"):
        with pytest.raises(softmax.NonFiniteError, match=message):
            function(data, np.arange(40, dtype=np.int64), rng.standard_normal((3, 6)), pre,
                     StepRule(lr=1.0), IDENTITY, "edge", precision, chunk=4)


NUMBA_ON_THREADS = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {tests!r})
import numba
from test_lbfgs import full_function, image_problem
from softmax_cls.engines.contract import StepRule
data, pre, W = image_problem()
index = np.sort(np.random.default_rng(4).choice(120, 101, replace=False)).astype(np.int64)
loss, grad = full_function("numba")(data, index, W, pre, StepRule(lr=1.0, reg=0.02),
                                    ((False, 0, 0), (True, 1, -1)), "edge", {precision!r},
                                    chunk=5)
print(numba.get_num_threads(), loss.hex(), hashlib.sha256(grad.tobytes()).hexdigest())
"""


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_the_numba_evaluation_is_the_same_bit_for_bit_on_any_thread_count(precision):
    """The chunks, the runs and the order of every sum depend on the problem alone: one
    thread, two, and five (more threads than runs of a short problem) give the same bits."""
    function = full_function("numba")
    import numba

    data, pre, W = image_problem()
    index = np.sort(np.random.default_rng(4).choice(120, 101, replace=False)).astype(np.int64)
    rule = StepRule(lr=1.0, reg=0.02)
    views = ((False, 0, 0), (True, 1, -1))
    got = [function(data, index, W, pre, rule, views, "edge", precision, chunk=5, workers=k)
           for k in (2, 3, 1)]
    for loss, grad in got[1:]:
        assert loss == got[0][0] and np.array_equal(grad, got[0][1])
    lines = []
    for threads in ("1", "5"):
        done = subprocess.run(
            [sys.executable, "-c", NUMBA_ON_THREADS.format(tests=str(TESTS),
                                                           precision=precision)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "NUMBA_NUM_THREADS": threads})
        assert done.returncode == 0, done.stderr
        lines.append(done.stdout.split())
    assert [line[0] for line in lines] == ["1", "5"]
    assert lines[0][1:] == lines[1][1:] == [
        float(got[0][0]).hex(), hashlib.sha256(got[0][1].tobytes()).hexdigest()]
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # given back


def test_the_numba_evaluation_runs_on_the_thread_count_the_governor_picks(monkeypatch):
    """Without `workers` (the engine's calls), numba's THREAD_GOVERNOR runs each evaluation,
    as it runs SGD's calls: on a busy machine one thread beats two waiting for each other."""
    function = full_function("numba")
    from softmax_cls.engines.numba_engine import api

    calls = []
    original = api.THREAD_GOVERNOR.run

    def spy(kind, rows, call):
        calls.append((kind[0], rows))
        return original(kind, rows, call)

    monkeypatch.setattr(api.THREAD_GOVERNOR, "run", spy)
    data, pre, W = image_problem(n=40)
    index = np.arange(40, dtype=np.int64)
    views = ((False, 0, 0), (True, 0, 1))
    rule = StepRule(lr=1.0, reg=0.01)
    got = get_engine("numba").full_loss_and_grad(data, index, W, pre, rule, views)
    assert calls == [("full", 80)]  # timed per row: 40 rows in 2 views
    want = function(data, index, W, pre, rule, views, "edge", "float32", workers=1)
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    function(data, index, W, pre, rule, views, "edge", "float32", workers=2)
    assert len(calls) == 1  # `workers` given: that count, not the governor's


@pytest.mark.parametrize("classes", [63, 64])
def test_the_numba_engine_evaluates_many_classes_with_numpy_blas(classes):
    """From BLAS_FROM_CLASSES classes on, numba's evaluation is numpy's (bit for bit); below,
    its own kernel (the same objective, rounded differently)."""
    function = full_function("numba")
    from softmax_cls.engines.numba_engine.full import BLAS_FROM_CLASSES

    assert BLAS_FROM_CLASSES == 64
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((300, 9)).astype(np.float32)
    data = TrainingRows(rows, rng.integers(0, classes, 300).astype(np.int64))
    pre = Preprocessor(rows.mean(0).astype(np.float64), np.full(9, 0.7))
    W = rng.standard_normal((classes, 10)) * 0.3
    index = np.arange(300, dtype=np.int64)
    rule = StepRule(lr=1.0, reg=0.01)
    got = function(data, index, W, pre, rule, IDENTITY, "edge", "float32")
    blas = numpy_engine.full_loss_and_grad(data, index, W, pre, rule, IDENTITY, "edge",
                                           "float32")
    assert (got[0] == blas[0] and np.array_equal(got[1], blas[1])) == (classes == 64)
    want = reference(data, index, W, pre, rule, IDENTITY)
    assert got[0] == pytest.approx(want[0], rel=1e-6)


def test_read_only_labels_index_and_weights_need_no_second_numba_compile():
    """One compiled signature per rows dtype and precision: read-only labels, index and
    sample weights (a sweep worker's memory-mapped labels) reuse the writable arrays' code
    (numba would else compile, and cache, a variant for each, with no line saying so)."""
    function = full_function("numba")
    from softmax_cls.engines.numba_engine.full import full_kernel

    rng = np.random.default_rng(8)
    rows = rng.standard_normal((30, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 30).astype(np.int64)
    weight = rng.uniform(0.5, 2.0, 30).astype(np.float32)
    index = np.arange(2, 30, dtype=np.int64)
    pre = Preprocessor(np.zeros(4), np.ones(4))
    W = rng.standard_normal((3, 5))
    rule = StepRule(lr=1.0)
    want = function(TrainingRows(rows, labels, weight), index, W, pre, rule, IDENTITY, "edge",
                    "float32")
    compiled = len(full_kernel.overloads)
    for array in (labels, weight, index):
        array.flags.writeable = False
    got = function(TrainingRows(rows, labels, weight), index, W, pre, rule, IDENTITY, "edge",
                   "float32")
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    assert len(full_kernel.overloads) == compiled


def test_float16_bits_convert_exactly_in_the_numba_kernel():
    """Every one of the 65,536 float16 bit patterns, as numpy converts it to float32."""
    pytest.importorskip("numba")
    from softmax_cls.engines.numba_engine.full import _half_bits_to_float

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    values = np.empty(len(bits), np.float32)
    _half_bits_to_float(bits, values.view(np.uint32), values)
    finite = ~np.isnan(want)
    np.testing.assert_array_equal(values[finite].view(np.uint32),
                                  want[finite].view(np.uint32))
    assert np.isnan(values[~finite]).all()


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 40])
@pytest.mark.parametrize("contiguous", [True, False])
def test_the_chunks_split_over_workers_give_the_reference(workers, contiguous):
    data, pre, W = image_problem()
    index = (np.arange(7, 118, dtype=np.int64) if contiguous  # 16 chunks of 7 (the last 6)
             else np.sort(np.random.default_rng(2).choice(120, 97, replace=False)))
    rule = StepRule(lr=1.0, reg=0.02)
    views = ((False, 0, 0), (True, 1, 0))
    got = numpy_engine.full_loss_and_grad(data, index, W, pre, rule, views, "edge",
                                          "float64", chunk=7, workers=workers)
    want = reference(data, index, W, pre, rule, views)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-13)
    one = numpy_engine.full_loss_and_grad(data, index, W, pre, rule, views, "edge",
                                          "float64", chunk=7, workers=1)
    assert got[0] == one[0] and np.array_equal(got[1], one[1])  # bit for bit, any count


def blas_threads_now() -> int:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return min(info["num_threads"] for info in threadpoolctl.threadpool_info()
               if info["user_api"] == "blas")


def test_the_workers_each_run_on_their_own_thread_with_one_blas_thread(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen: dict[int, int] = {}
    original = softmax.softmax_loss_from_scores
    both = threading.Barrier(2, timeout=20)  # breaks unless two runs are under way at once

    def spy(*args, **kwargs):
        if threading.get_ident() not in seen:
            seen[threading.get_ident()] = blas_threads_now()
            both.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(softmax, "softmax_loss_from_scores", spy)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # the default workers: BLAS's threads
    data, pre, W = image_problem()
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if blas_threads_now() != 2:
            pytest.skip("BLAS cannot run on two threads here")
        numpy_engine.full_loss_and_grad(data, np.arange(120), W, pre, StepRule(lr=1.0),
                                        IDENTITY, "edge", "float32", chunk=10)
        assert blas_threads_now() == 2  # given back after the evaluation
    assert len(seen) == 2 and set(seen.values()) == {1}


def test_one_blas_thread_in_two_threads_at_once_gives_blas_its_threads_back():
    """Two threads' contexts interleaved (A in, B in, A out, B out), as two estimator fits in
    threads do since gradient_ratio_ runs the numpy engine's evaluation: each restored the
    limit it found, out of order (and threadpoolctl lets only the thread that set a limit
    change it), so BLAS stayed on one thread for the rest of the process."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = blas_threads_now()
    if before < 2:
        pytest.skip("BLAS runs on one thread here")
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    inside = []

    def first():
        with numpy_engine.one_blas_thread():
            a_in.set()
            b_in.wait(20)
            inside.append(blas_threads_now())
        a_out.set()

    def second():
        a_in.wait(20)
        with numpy_engine.one_blas_thread():
            b_in.set()
            a_out.wait(20)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    after = blas_threads_now()
    if after != before:  # the later tests of this process get their threads back
        threadpoolctl.threadpool_limits(limits=before, user_api="blas")
    assert inside == [1] and after == before


def test_the_workers_are_blas_threads_or_one_without_threadpoolctl(monkeypatch):
    pytest.importorskip("threadpoolctl")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert numpy_engine.parallel_workers() == 3
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import raises ImportError
    assert numpy_engine.parallel_workers() == 1
    data, pre, W = image_problem(n=40)
    index = np.arange(40, dtype=np.int64)
    rule = StepRule(lr=1.0, reg=0.01)
    got = numpy_engine.full_loss_and_grad(data, index, W, pre, rule, IDENTITY, "edge",
                                          "float64", chunk=9)
    want = reference(data, index, W, pre, rule, IDENTITY)
    assert got[0] == pytest.approx(want[0], rel=1e-12)


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: {**a, "W": a["W"].astype(np.float32)}, "float64"),
    (lambda a: {**a, "index": np.array([0, 500])}, "index must hold rows"),
    (lambda a: {**a, "index": np.zeros(0, np.int64)}, "n >= 1"),
    (lambda a: {**a, "views": ((False, 9, 0),)}, "views must be"),
    (lambda a: {**a, "views": ()}, "views must be"),
    (lambda a: {**a, "precision": "float16"}, "precision"),
    (lambda a: {**a, "padding": "wrap"}, "padding"),
])
def test_the_contract_checks_the_arguments(change, message):
    data, pre, W = image_problem(n=10)
    args = {"data": data, "index": np.arange(10), "W": W, "pre": pre,
            "rule": StepRule(lr=1.0), "views": IDENTITY, "padding": "edge",
            "precision": "float32"}
    with pytest.raises(ValueError, match=message):
        get_engine("numpy").full_loss_and_grad(**change(args))


def test_views_need_image_rows():
    rows = np.zeros((4, 5), np.float32)
    data = TrainingRows(rows, np.zeros(4, np.int64))
    pre = Preprocessor(np.zeros(5), np.ones(5))
    with pytest.raises(ValueError, match="image rows"):
        get_engine("numpy").full_loss_and_grad(data, np.arange(4), np.zeros((2, 6)), pre,
                                               StepRule(lr=1.0), ((True, 0, 0),))


@pytest.mark.parametrize("padding", ["zero", "edge", "reflect"])
def test_augmented_views_are_every_copy_the_draws_can_make(padding):
    assert augmented_views(False, 0) == [(False, 0, 0)]
    views = augmented_views(True, 1)
    assert views[0] == (False, 0, 0) and len(views) == len(set(views)) == 18
    assert len(augmented_views(False, 2)) == 25
    images = np.random.default_rng(0).integers(0, 256, (5, 3072), dtype=np.uint8)
    for view in augmented_views(True, 2):  # apply_view gathers columns: the draws' copies
        expected = images.copy()
        apply_augmentation(expected, np.full(5, view[0]), np.tile(view[1:], (5, 1)), padding)
        assert np.array_equal(apply_view(images, view, padding), expected)


# --- the solver ------------------------------------------------------------------------------

def quadratic(target):
    def objective(W, precision):
        return float(((W - target) ** 2).sum()), 2 * (W - target)
    return objective


def test_minimize_reaches_the_tolerance_and_reports_it():
    target = np.arange(6.0).reshape(2, 3)
    result = lbfgs.minimize(quadratic(target), np.zeros((2, 3)), 1e-8, 100)
    assert result.converged and result.grad_max <= 1e-8
    np.testing.assert_allclose(result.W, target, atol=1e-8)


def test_converged_means_the_gradient_reached_tol():
    curvature = np.array([[1.0, 10.0, 100.0], [3.0, 30.0, 300.0]])

    def objective(W, precision):
        return float((curvature * (W - 1) ** 2).sum()), 2 * curvature * (W - 1)

    first = lbfgs.minimize(objective, np.zeros((2, 3)), 1e-12, 1)
    assert first.iterations == 1 and not first.converged
    half = lbfgs.minimize(objective, np.zeros((2, 3)), first.grad_max / 2, 1)
    assert half.grad_max == first.grad_max and not half.converged
    assert lbfgs.minimize(objective, np.zeros((2, 3)), first.grad_max * 2, 1).converged


def test_no_iteration_left_makes_none():
    """max_iter 0 (a resumed solve that made optim.max_iter already: fit_lbfgs passes
    max_iter - done) reached SciPy as maxiter 0, which still makes one iteration: the
    resumed run reported 13 iterations of optim.max_iter 12. Now only the start's float64
    gradient is evaluated."""
    target = np.arange(6.0).reshape(2, 3)
    asked = []

    def objective(W, precision):
        asked.append(precision)
        return quadratic(target)(W, precision)

    result = lbfgs.minimize(objective, np.zeros((2, 3)), 1e-8, 0)
    assert result.iterations == 0 and not result.converged and asked == ["float64"]
    assert result.message == lbfgs.MAX_ITER_MESSAGE
    np.testing.assert_array_equal(result.W, np.zeros((2, 3)))


def test_the_tolerance_is_met_in_float64_after_the_float32_run():
    target = np.arange(6.0).reshape(2, 3)
    asked = []

    def objective(W, precision):  # float32 rounding, exaggerated: a slightly wrong optimum
        asked.append(precision)
        shifted = target + (1e-3 if precision == "float32" else 0.0)
        return float(((W - shifted) ** 2).sum()), 2 * (W - shifted)

    result = lbfgs.minimize(objective, np.zeros((2, 3)), 1e-8, 100)
    assert asked[0] == "float32" and asked[-1] == "float64"
    assert result.converged and result.grad_max <= 1e-8
    np.testing.assert_allclose(result.W, target, atol=1e-8)


def test_a_line_search_that_finds_no_decrease_is_reported_as_such():
    def objective(W, precision):  # a gradient that points uphill: no step decreases the loss
        return float((W ** 2).sum()), -2 * W

    result = lbfgs.minimize(objective, np.ones((2, 3)), 1e-8, 100)
    assert not result.converged and result.iterations < 100
    line = lbfgs.not_converged_line(result, 100, 1e-8)
    assert "stopped after" in line and "max_iter" not in line
    abnormal = lbfgs.LbfgsResult(np.zeros((2, 3)), 7, 60, 1.0, 0.5, False, "ABNORMAL: ")
    line = lbfgs.not_converged_line(abnormal, 100, 1e-8)  # SciPy's words for it, bare
    assert "(the line search found no lower loss)" in line and "abnormal" not in line.lower()
    assert "raise optim.max_iter" in lbfgs.not_converged_line(result, result.iterations, 1e-8)


def test_scipys_evaluation_cap_never_stops_a_fit_before_max_iter(monkeypatch):
    # SciPy stops at 15,000 evaluations unless told: max_iter 100,000 was silently less
    from scipy import optimize

    seen = []
    real = optimize.minimize

    def spy(*args, options, **kwargs):
        seen.append(options)
        return real(*args, options=options, **kwargs)

    monkeypatch.setattr(optimize, "minimize", spy)
    lbfgs.minimize(lambda W, precision: (float((W ** 2).sum()), 2 * W), np.ones((2, 3)),
                   1e-8, 100_000)
    assert seen and all(o["maxfun"] >= (o["maxiter"] + 1) * (o["maxls"] + 1) for o in seen)


def test_a_float32_line_search_that_fails_gives_way_to_float64_soon():
    asked = []

    def objective(W, precision):  # float32 rounding at its worst: no step ever decreases
        asked.append(precision)
        sign = -1.0 if precision == "float32" else 1.0
        return float(((W - 1) ** 2).sum()), sign * 2 * (W - 1)

    result = lbfgs.minimize(objective, np.zeros((2, 3)), 1e-8, 100)
    assert result.converged
    assert asked.count("float32") <= 1 + lbfgs.MAX_LINE_SEARCH_FAST < lbfgs.MAX_LINE_SEARCH


def quantised_in_float32(curvature):
    """A quadratic whose float32 loss is rounded to 3 decimals (float32 rounding,
    exaggerated): float32 line searches fail near the optimum, after some iterations."""
    def objective(W, precision):
        loss = float((curvature * (W - 1) ** 2).sum())
        return (round(loss, 3) if precision == "float32" else loss), 2 * curvature * (W - 1)
    return objective


def test_a_float32_line_search_that_fails_with_memory_gives_way_at_once():
    """SciPy, its line search failed with a memory, would start again along the steepest
    descent (MAX_LINE_SEARCH_FAST more evaluations in float32): float64 takes over at once,
    from the last iterate the float32 run accepted."""
    quadratic = quantised_in_float32(np.linspace(1.0, 30.0, 12).reshape(2, 6))
    asked, accepted = [], []

    def objective(W, precision):
        asked.append((precision, W.copy()))
        return quadratic(W, precision)

    def on_iteration(iteration, loss, grad_max, W):
        accepted.append((len(asked), asked[-1][0], W.copy()))

    result = lbfgs.minimize(objective, np.zeros((2, 6)), 1e-6, 200, on_iteration)
    assert result.converged and result.grad_max <= 1e-6
    fast = [(n, W) for n, precision, W in accepted if precision == "float32"]
    assert len(fast) >= 2  # the failing line search had a memory
    first64 = next(i for i, (precision, _) in enumerate(asked) if precision == "float64")
    assert first64 - fast[-1][0] == lbfgs.MAX_LINE_SEARCH_FAST  # the failed tries, no more
    np.testing.assert_array_equal(asked[first64][1], fast[-1][1])


def test_a_float32_line_search_has_all_its_tries_before_giving_way():
    """Only tries past MAX_LINE_SEARCH_FAST since the last iterate (or the start) give way:
    here the first float32 line search takes its last try."""
    asked, accepted = [], []

    def objective(W, precision):  # log 2 cosh: far from quadratic, a long first search
        asked.append(precision)
        z = 5.0 * (W - 1)
        return float(np.logaddexp(z, -z).sum()), 5.0 * np.tanh(z)

    result = lbfgs.minimize(objective, np.full((2, 3), 3.7), 1e-6, 100,
                            lambda iteration, loss, grad_max, W: accepted.append(len(asked)))
    assert result.converged
    assert accepted[0] == 1 + lbfgs.MAX_LINE_SEARCH_FAST and asked[:accepted[0]] == [
        "float32"] * accepted[0]


def test_the_float64_run_keeps_scipys_whole_line_search(monkeypatch):
    """Only float32 gives way at a failed line search: in float64 SciPy's line search
    makes all its tries and then starts again along the steepest descent, and the fit goes
    on to tol. Here the float64 loss rises along every line from the first float64 iterate
    but the steepest descent, so the line search from there fails."""
    monkeypatch.setattr(lbfgs, "MAX_LINE_SEARCH", 8)  # 8 tries that do not shrink to nothing
    curvature = np.linspace(1.0, 30.0, 12).reshape(2, 6)
    honest = quantised_in_float32(curvature)
    asked, rising = [], {"from": None, "float64 iterations": 0}

    def objective(W, precision):
        asked.append(precision)
        base = rising["from"]
        if base is not None and precision == "float64":
            base_loss, base_grad = honest(base, precision)
            step, slope = float(np.linalg.norm(W - base)), float(np.linalg.norm(base_grad))
            if step > 0 and -float(((W - base) * base_grad).sum()) < (1 - 1e-9) * step * slope:
                return base_loss + slope * step, slope * (W - base) / step
        return honest(W, precision)

    def on_iteration(iteration, loss, grad_max, W):
        rising["float64 iterations"] += asked[-1] == "float64"
        rising["from"] = W.copy() if rising["float64 iterations"] == 1 else None

    result = lbfgs.minimize(objective, np.zeros((2, 6)), 1e-6, 200, on_iteration)
    assert result.converged and result.grad_max <= 1e-6
    assert asked.count("float64") > 3 + 8  # the start, 2 to the first iterate, 8 tries


def test_a_converged_fit_reports_convergence_whatever_ended_the_float32_run():
    def objective(W, precision):  # float32's gradient uphill and 10 times too large
        sign = -10.0 if precision == "float32" else 1.0
        return float(((W - 1) ** 2).sum()), sign * 2 * (W - 1)

    result = lbfgs.minimize(objective, np.full((2, 3), 1 + 1e-7), 1e-6, 100)
    assert result.converged and result.iterations == 0
    assert result.message == lbfgs.TOL_MESSAGE  # not the float32 run's "ABNORMAL: "


def test_a_fit_that_stops_at_max_iter_says_so_though_float32_met_tol():
    def objective(W, precision):  # float32's gradient 1,000 times too small
        scale = 1e-3 if precision == "float32" else 1.0
        return float(((W - 1) ** 2).sum()), scale * 2 * (W - 1)

    result = lbfgs.minimize(objective, np.zeros((2, 3)), 1.5e-3, 1)
    assert result.iterations == 1 and not result.converged
    assert result.message == lbfgs.MAX_ITER_MESSAGE


def test_a_line_search_back_at_its_last_trials_evaluates_each_point_once(monkeypatch):
    """SciPy's line search, its steps shrunk to the weights' rounding, asks for one of its
    last trials again, the same one between each new trial (seen with SciPy 1.17 on an AMD
    EPYC): each point is evaluated once per precision, whatever the order SciPy asks in.
    SciPy is replaced by a script of the points it asks for, so the test does not depend
    on its arithmetic."""
    from types import SimpleNamespace

    # a point asked again and again between new trials: the last one asked stays remembered
    steps = (0.25, 0.125, 0.0625, 0.03125, 0.015625)
    trials = [np.full(12, v) for v in (0.0, 0.5, *(x for step in steps for x in (step, 0.5)))]
    # then the oldest of the last RECENT_POINTS points asked (four new ones, the first again)
    trials += [np.full(12, v) for v in (0.7, 0.8, 0.9, 0.6, 0.7)]

    def scripted_minimize(fun, x0, **_):
        for x in trials:
            fun(x.copy())
        return SimpleNamespace(x=trials[-1].copy(), message="ABNORMAL: scripted")

    monkeypatch.setattr(lbfgs, "require_scipy",
                        lambda: SimpleNamespace(minimize=scripted_minimize))
    asked = []

    def objective(W, precision):
        asked.append((precision, W.tobytes()))
        return float(((W - 1) ** 2).sum()), 2 * (W - 1)

    lbfgs.minimize(objective, np.zeros((2, 6)), 1e-12, 50)
    assert len(asked) == len(set(asked))
    assert sum(precision == "float64" for precision, _ in asked) == 11  # each point once


def test_the_iterate_is_not_evaluated_again_and_the_iterates_never_rise():
    """A line search whose step shrinks below the weights' rounding asks for the iterate
    again: it is not evaluated again, and what each iteration reports is the point SciPy
    took (its loss never above the one before)."""
    curvature = np.random.default_rng(0).uniform(1.0, 30.0, (2, 6))
    asked, accepted = [], []

    def objective(W, precision):  # noise in the loss: line searches that shrink to nothing
        digest = hashlib.blake2b(W.tobytes(), digest_size=8).digest()
        noise = 1e-6 * (int.from_bytes(digest, "little") / 2 ** 64 - 0.5)
        asked.append((precision, W.tobytes()))
        return float((curvature * (W - 1) ** 2).sum()) + noise, 2 * curvature * (W - 1)

    def on_iteration(iteration, loss, grad_max, W):
        accepted.append((asked[-1][0], W.tobytes(), loss))

    lbfgs.minimize(objective, np.zeros((2, 6)), 1e-12, 200, on_iteration)
    assert len(accepted) > 10
    assert all(asked.count((precision, W)) == 1 for precision, W, _ in accepted)
    losses = [loss for *_, loss in accepted]
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))


def test_tol_and_max_iter_reach_scipy():
    data, pre, _ = image_problem(n=200, weighted=False)
    config = config_from_dict({"optim": {"solver": "lbfgs", "tol": 1e-2},
                               "loss": {"reg": 1e-3}, "augment": {"translate": 0,
                                                                  "hflip": False}})
    split = Split(np.arange(200, dtype=np.int64), np.zeros(0, np.int64))
    W0 = np.zeros((4, 3073))
    loose = lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, W0)
    config.optim.tol = 1e-6
    tight = lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, W0)
    assert loose.converged and tight.converged
    assert tight.grad_max <= 1e-6 < loose.grad_max <= 1e-2
    assert tight.iterations > loose.iterations
    config.optim.max_iter = 3
    lines = []
    short = lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, W0, warn=lines.append)
    assert short.iterations == 3 and not short.converged
    assert len(lines) == 1 and "3 iterations" in lines[0] and "optim.max_iter" in lines[0]
    with pytest.warns(lbfgs.ConvergenceWarning, match="did not converge"):
        lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, W0)
    # a warm start at the optimum has nothing left to do
    config.optim.max_iter = 500
    again = lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, tight.W)
    assert again.iterations <= 1 and again.converged


# --- the preconditioner ----------------------------------------------------------------------

def correlated_problem(n: int = 2000, p: int = 40, classes: int = 3, seed: int = 0):
    """float32 features (n, p) made of 4 latent values and a little noise: columns nearly
    collinear even after standardising, the curvature ill-conditioned."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 4))
    X = (z @ rng.standard_normal((4, p)) + 0.03 * rng.standard_normal((n, p))).astype(
        np.float32)
    y = (z @ rng.standard_normal((4, classes)) + rng.standard_normal((n, classes))).argmax(1)
    return X, y.astype(np.int64)


def lbfgs_config(precondition: bool, reg: float = 1e-2, tol: float = 1e-7,
                 reg_bias: bool = False, augment: bool = False):
    return config_from_dict({
        "engine": "numpy", "optim": {"solver": "lbfgs", "tol": tol,
                                     "precondition": precondition},
        "loss": {"reg": reg, "reg_bias": reg_bias},
        "augment": {"hflip": augment, "translate": int(augment)}})


@pytest.mark.parametrize(("classes", "weighted", "reg_bias", "augment"), [
    (5, True, False, False), (2, False, True, False), (5, False, False, True),
    (2, True, False, True)])
def test_with_and_without_the_preconditioner_the_same_optimum(classes, weighted, reg_bias,
                                                              augment):
    n = 40 if augment else 90  # 18 views of each image with augmentation
    data, pre, _ = image_problem(n=n, classes=classes, weighted=weighted)
    split = Split(np.arange(n, dtype=np.int64), np.zeros(0, np.int64))
    results = {}
    for precondition in (False, True):  # reg 0.1: curvature enough that tol pins W to 1e-4
        config = lbfgs_config(precondition, reg=0.1, reg_bias=reg_bias, augment=augment)
        results[precondition] = lbfgs.fit_lbfgs(
            config, data.rows, data.labels, split, pre, np.zeros((classes, 3073)),
            sample_weight=data.sample_weight)
        result = results[precondition]
        assert result.converged and result.grad_max <= 1e-7
        # the gradient with respect to W, from the plain-numpy reference
        rule = StepRule.from_config(config, 1.0, True)
        _, grad = reference(data, split.train_rows, result.W, pre, rule,
                            tuple(lbfgs.objective_views(config)))
        assert np.abs(grad).max() <= 1.001e-7
    plain, preconditioned = results[False].W, results[True].W
    if not reg_bias:  # an unpenalised bias is defined up to one constant for every class
        plain[:, -1] -= plain[:, -1].mean()
        preconditioned[:, -1] -= preconditioned[:, -1].mean()
    assert np.abs(plain - preconditioned).max() <= 1e-4 * np.abs(plain).max()


def test_the_preconditioner_cuts_the_iterations_on_correlated_features():
    X, y = correlated_problem()
    pre = fit_preprocessor(X, scale="std")
    split = Split(np.arange(len(X), dtype=np.int64), np.zeros(0, np.int64))
    found = {p: lbfgs.fit_lbfgs(lbfgs_config(p, reg=1e-4, tol=1e-6), X, y, split, pre,
                                np.zeros((3, 41))) for p in (False, True)}
    assert found[False].converged and found[True].converged
    # measured: 85 plain, 16 preconditioned (deterministic: fixed data, one thread or not)
    assert found[True].iterations * 3 <= found[False].iterations
    assert found[True].loss == pytest.approx(found[False].loss, rel=1e-8)


@pytest.mark.parametrize("size", [100.0, 0.01])
def test_it_stops_on_the_gradient_with_respect_to_w_not_v(size):
    """With L = size * I, V's gradient is W's divided by `size`: stopping on V's would stop
    too early (size 100: W's gradient still above tol) or too late (0.01: iterations past
    the first one whose W gradient met tol)."""
    curvature = np.linspace(1.0, 3.0, 12).reshape(2, 6)

    def objective(W, precision):
        return float((curvature * (W - 1) ** 2).sum()), 2 * curvature * (W - 1)

    seen = []
    precondition = Preconditioner(size * np.eye(6))
    result = lbfgs.minimize(objective, np.zeros((2, 6)), 1e-6, 200,
                            lambda i, loss, grad_max, W: seen.append(grad_max), precondition)
    assert result.converged and result.grad_max <= 1e-6
    assert seen[-1] <= 1e-6 and all(g > 1e-6 for g in seen[:-1])
    np.testing.assert_allclose(result.W, 1.0, atol=1e-6)


def test_it_stops_at_the_first_iteration_whose_gradient_meets_tol():
    curvature = np.linspace(1.0, 30.0, 12).reshape(2, 6)

    def objective(W, precision):
        return float((curvature * (W - 1) ** 2).sum()), 2 * curvature * (W - 1)

    precondition = Preconditioner(np.diag(np.linspace(0.5, 2.0, 6)))
    seen = []
    lbfgs.minimize(objective, np.zeros((2, 6)), 1e-14, 200,
                   lambda i, loss, grad_max, W: seen.append(grad_max), precondition)
    # the first iteration to reach a new low, past the first few: tol exactly its gradient
    k = next(i for i in range(3, len(seen)) if seen[i] < min(seen[:i]))
    result = lbfgs.minimize(objective, np.zeros((2, 6)), seen[k], 200,
                            precondition=precondition)
    assert result.iterations == k + 1 and result.converged and result.grad_max == seen[k]


def test_a_start_that_meets_tol_makes_no_iteration():
    curvature = np.linspace(1.0, 3.0, 12).reshape(2, 6)
    evaluated = []

    def objective(W, precision):
        evaluated.append(precision)
        return float((curvature * (W - 1) ** 2).sum()), 2 * curvature * (W - 1)

    start = np.ones((2, 6)) + 1e-9
    precondition = Preconditioner(np.linalg.cholesky(np.diag(np.arange(1.0, 7.0))))
    result = lbfgs.minimize(objective, start, 1e-6, 50, precondition=precondition)
    assert result.iterations == 0 and result.converged
    assert evaluated == ["float32", "float64"]
    np.testing.assert_allclose(result.W, start, rtol=1e-14)


def test_the_maps_between_w_and_v():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 5))
    L = np.linalg.cholesky(A @ A.T + np.eye(5))
    precondition = Preconditioner(L)
    W = rng.standard_normal((3, 5))
    V = precondition.variables(W)
    np.testing.assert_allclose(V, W @ L)
    np.testing.assert_allclose(precondition.weights(V), W, atol=1e-12)
    # the gradient with respect to V is the derivative of f(weights(V)) (f linear: <G, W>)
    G = rng.standard_normal((3, 5))
    dV = rng.standard_normal((3, 5))
    change = float((G * (precondition.weights(V + dV) - precondition.weights(V))).sum())
    assert change == pytest.approx(float((precondition.gradient(G) * dV).sum()), rel=1e-10)


@pytest.mark.parametrize("penalise_last", [False, True])
def test_h0_is_the_moment_over_c_plus_the_penalty(penalise_last):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((6, 4))
    S = A @ A.T  # rank 4 of 6: the penalty (and the jitter) make it definite
    precondition = Preconditioner.from_moment(S, 5, 0.25, penalise_last)
    H = precondition.L @ precondition.L.T
    penalty = np.full(6, 0.5)
    penalty[-1] = 0.5 if penalise_last else 0.0
    expected = S / 5 + np.diag(penalty)
    jitter = JITTER * np.trace(expected) / 6
    np.testing.assert_allclose(H, expected + jitter * np.eye(6), atol=1e-12)
    assert np.allclose(np.tril(precondition.L), precondition.L)


def test_an_indefinite_moment_gets_more_jitter():
    S = np.diag([1.0, 1.0, -1e-4])  # float32 rounding can leave S this indefinite
    precondition = Preconditioner.from_moment(S, 1, 0.0, False)
    H = precondition.L @ precondition.L.T
    assert np.all(np.linalg.eigvalsh(H) > 0)
    assert np.abs(H - S).max() < 1e-2  # the smallest power of ten that is enough


def test_a_moment_with_no_usable_factor_gives_the_plain_iteration():
    # a moment that no jitter makes definite (here not finite: it was an endless loop, or a
    # factor of NaN) leaves W = V: L-BFGS on the weights themselves
    for S in (np.full((3, 3), np.nan), -np.eye(3) * 1e300):
        np.testing.assert_array_equal(Preconditioner.from_moment(S, 2, 0.1, False).L,
                                      np.eye(3))


def test_the_second_moment_of_huge_features_does_not_overflow():
    # features of 1e19 unscaled: their squares summed overflowed float32's products to inf
    rng = np.random.default_rng(5)
    rows = (rng.standard_normal((300, 4)) * 1e19).astype(np.float32)
    pre = Preprocessor(mean=np.zeros(4), scale=np.ones(4), bias=True)
    S = second_moment(rows, np.arange(300), pre)
    X = np.hstack([rows.astype(np.float64), np.ones((300, 1))])
    expected = X.T @ X / 300
    np.testing.assert_allclose(S, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_the_second_moment_of_preprocessed_rows_and_weights():
    data, pre, _ = image_problem(n=50, weighted=True)
    index = np.arange(3, 50, dtype=np.int64)
    S = second_moment(data.rows, index, pre, data.sample_weight)
    X = pre.transform(data.rows[index], np.float64)
    expected = X.T @ (X * data.sample_weight[index, None]) / len(index)
    np.testing.assert_allclose(S, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert S[-1, -1] == pytest.approx(data.sample_weight[index].mean(), rel=1e-6)
    # a sample: SAMPLE_ROWS of them, drawn with a fixed seed, the same each time
    small = second_moment(data.rows, index, pre, sample_rows=20)
    np.testing.assert_array_equal(small, second_moment(data.rows, index, pre, sample_rows=20))
    picked = index[np.sort(np.random.default_rng(0).choice(len(index), 20, replace=False))]
    X = pre.transform(data.rows[picked], np.float64)
    np.testing.assert_allclose(small, X.T @ X / 20, rtol=1e-5, atol=1e-5 * np.abs(X).max())
    assert small[-1, -1] == pytest.approx(1.0)


def test_the_second_moment_is_one_product_on_one_blas_thread(monkeypatch):
    """X.T @ X of the sample on one BLAS thread, whatever BLAS's own count: on two busy cores
    OpenBLAS's two threads waited on each other (docs/development.md, 2026-12-07)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []

    class Spy(np.ndarray):
        def __matmul__(self, other):
            seen.append(blas_threads_now())
            return np.asarray(self) @ np.asarray(other)

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((300, 7)).astype(np.float32)
    pre = fit_preprocessor(rows, center=True, scale="std")
    transform = Preprocessor.transform
    monkeypatch.setattr(Preprocessor, "transform",
                        lambda *a, **k: transform(*a, **k).view(Spy))
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if blas_threads_now() != 2:
            pytest.skip("BLAS cannot run on two threads here")
        S = second_moment(rows, np.arange(300), pre)
        assert blas_threads_now() == 2  # given back afterwards
    assert seen == [1]
    X = transform(pre, rows, np.float32).astype(np.float64)
    np.testing.assert_allclose(S, X.T @ X / 300, rtol=1e-5, atol=1e-6)


def test_the_second_moment_draws_the_objectives_views():
    data, pre, _ = image_problem(n=40, weighted=False)
    index = np.arange(40, dtype=np.int64)
    views = tuple(augmented_views(True, 1))
    every = np.concatenate([apply_view(data.rows, view, "zero") for view in views])
    X = pre.transform(every, np.float64)
    S = second_moment(data.rows, index, pre, views=views, padding="zero")
    np.testing.assert_allclose(S, X.T @ X / len(X), rtol=1e-5, atol=1e-5 * np.abs(S).max())
    assert not np.allclose(S, second_moment(data.rows, index, pre), rtol=1e-3)
    # a sample of (row, view) pairs: 100 of the 720
    picked = np.sort(np.random.default_rng(0).choice(720, 100, replace=False))
    sample = pre.transform(np.concatenate([apply_view(data.rows[k // 18:k // 18 + 1],
                                                      views[k % 18], "zero")
                                           for k in picked]), np.float64)
    S = second_moment(data.rows, index, pre, views=views, padding="zero", sample_rows=100)
    np.testing.assert_allclose(S, sample.T @ sample / 100, rtol=1e-5,
                               atol=1e-5 * np.abs(S).max())


def test_the_preconditioner_weighs_the_rows_as_the_objective(monkeypatch):
    data, pre, _ = image_problem(n=30, classes=3, weighted=True)
    split = Split(np.arange(30, dtype=np.int64), np.zeros(0, np.int64))
    made = []
    real = lbfgs.second_moment
    monkeypatch.setattr(lbfgs, "second_moment", lambda *a, **k: made.append(real(*a, **k))
                        or made[-1])
    lbfgs.fit_lbfgs(lbfgs_config(True, tol=1e-3), data.rows, data.labels, split, pre,
                    np.zeros((3, 3073)), sample_weight=data.sample_weight)
    weighted = real(data.rows, split.train_rows, pre, data.sample_weight)
    np.testing.assert_array_equal(made[0], weighted)
    assert not np.allclose(weighted, real(data.rows, split.train_rows, pre))


def test_a_warm_start_maps_to_its_variables():
    data, pre, _ = image_problem(n=80, classes=3, weighted=False)
    split = Split(np.arange(80, dtype=np.int64), np.zeros(0, np.int64))
    config = lbfgs_config(True, tol=1e-6)
    cold = lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, np.zeros((3, 3073)))
    again = lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, cold.W)
    assert again.iterations == 0 and again.converged
    assert np.abs(again.W - cold.W).max() <= 1e-12 * np.abs(cold.W).max()
    config.loss.reg = 5e-3
    nearby = lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, cold.W)
    fresh = lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, np.zeros((3, 3073)))
    assert nearby.converged and nearby.iterations < fresh.iterations


def test_a_bad_precondition_is_one_line_through_the_console_script(tmp_path):
    from cli_util import assert_one_line_error, run

    with pytest.raises(ConfigError, match="optim.precondition"):
        config_from_dict({"optim": {"precondition": "sometimes"}})
    config = tmp_path / "c.yaml"
    config.write_text("optim: {solver: lbfgs}\n")
    assert_one_line_error(run("softmax-train", "--config", str(config), "--set",
                              "optim.precondition=sometimes"), 2, "optim.precondition")


def test_without_scipy_one_line_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(SoftmaxClsError, match=r'pip install "softmax-cls\[lbfgs\]"'):
        lbfgs.require_scipy()
    config = tmp_path / "c.yaml"
    config.write_text("optim: {solver: lbfgs}\n")
    code = ("import sys; sys.modules['scipy'] = None\nfrom softmax_cls import cli\n"
            f"sys.argv = ['softmax-train', '--config', {str(config)!r}, '--out', "
            f"{str(tmp_path / 'run')!r}]\ncli.train_command()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "softmax-cls[lbfgs]" in lines[0]
    assert not (tmp_path / "run").exists()


# --- config ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "message"), [
    ({"optim": {"solver": "newton"}}, "optim.solver: must be one of sgd, lbfgs"),
    ({"optim": {"tol": 0}}, "optim.tol: must be > 0"),
    ({"optim": {"max_iter": 0}}, "optim.max_iter: must be >= 1"),
    ({"optim": {"solver": "lbfgs", "early_stopping": {"patience": 3}}},
     "optim.early_stopping.patience"),
    ({"optim": {"solver": "lbfgs", "grad_clip": 1.0}}, "optim.grad_clip"),
    ({"optim": {"solver": "lbfgs"}, "model": {"mirror_symmetric": True}},
     "model.mirror_symmetric"),
])
def test_lbfgs_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_a_bad_solver_is_one_line_through_the_console_script(tmp_path):
    from cli_util import assert_one_line_error, run

    config = tmp_path / "c.yaml"
    config.write_text("optim: {solver: lbfgs, early_stopping: {patience: 2}}\n")
    assert_one_line_error(run("softmax-train", "--config", str(config)), 2,
                          "optim.early_stopping.patience")


# --- run folders -----------------------------------------------------------------------------

def test_a_run_with_lbfgs_writes_the_usual_folder_and_resumes_warm(tmp_path, monkeypatch):
    data = separable_data(noise=120)
    config = small_config(tmp_path, optim={"solver": "lbfgs", "tol": 1e-6},
                          loss={"reg": 1e-3})
    result = train_run(config, data, tmp_path / "run", progress=False)
    folder = result.out_dir
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["solver"] == "lbfgs" and summary["converged"] is True
    assert summary["grad_max"] <= 1e-6 and summary["iterations"] == result.state.epoch > 0
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().split("\n")
               if line]
    assert [row["epoch"] for row in history] == list(range(1, result.state.epoch + 1))
    assert history[-1]["val_acc"] == result.state.best_val_acc and history[-1]["converged"]
    best = load_checkpoint(folder / "best.npz")
    np.testing.assert_array_equal(best.W, result.state.best_W)
    assert result.test_acc >= 0.95
    # the CLI's line, and a resumed run that starts at the optimum (in another folder: in
    # its own, a converged solve is finished, test_lbfgs_cli.py)
    monkeypatch.setattr(runs, "load_config_data", lambda config, progress=True, **kw: data)
    out = CliRunner().invoke(cli.train_command, ["--resume", str(folder / "last.npz"), "-q",
                                                 "--out", str(tmp_path / "again")])
    assert out.exit_code == 0, out.output
    assert "L-BFGS optimum" in out.output and "converged" in out.output
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    # the solve's iterations in all (those before the resume counted): at most one more
    assert result.state.epoch <= again["iterations"] == again["epochs"] <= result.state.epoch + 1


def test_a_continued_solve_numbers_its_history_one_row_per_iteration(tmp_path):
    from softmax_cls.math.preprocess import split_and_fit
    from softmax_cls.training.fit import fit

    data = separable_data(n_train=200, classes=3, seed=11, noise=120)

    def solve(state, tol, max_iter):
        config = small_config(tmp_path, optim={"solver": "lbfgs", "tol": tol,
                                                "max_iter": max_iter}, loss={"reg": 1e-3})
        split, pre = split_and_fit(config, data.train_images, data.train_labels)
        return fit(config, data.train_images, data.train_labels, split, pre, 3, state=state,
                   warn=lambda line: None).state, split, pre  # max_iter, on purpose

    # a tolerance the zero start meets: no iteration, the one row is the solution's (epoch 0)
    state, _, _ = solve(None, 10.0, 50)
    assert [row["epoch"] for row in state.history] == [0] and state.epoch == 0
    state, _, _ = solve(state, 1e-9, 3)
    assert [row["epoch"] for row in state.history] == [1, 2, 3]
    state, split, pre = solve(state, 1e-9, 8)
    assert [row["epoch"] for row in state.history] == list(range(1, 9))
    # each row's train_loss is the objective at its iterate: the last one's recomputed here
    X = pre.transform(data.train_images[split.train_rows], np.float64)
    loss, _ = softmax.loss_and_grad(state.W.astype(np.float64), X,
                                    data.train_labels[split.train_rows], 1e-3)
    losses = [row["train_loss"] for row in state.history]
    assert losses[-1] == pytest.approx(loss, rel=1e-5)
    assert all(a >= b for a, b in zip(losses, losses[1:], strict=False))


def test_lbfgs_minimises_the_augmented_objective(tmp_path):
    data = separable_data(n_train=200, noise=120)
    config = small_config(tmp_path, optim={"solver": "lbfgs"}, loss={"reg": 1e-2},
                          augment={"hflip": True, "translate": 1})
    result = train_run(config, data, tmp_path / "run", progress=False)
    assert result.solver["converged"]
    split, pre = runs.split_and_fit(config, data.train_images, data.train_labels)
    rule = StepRule.from_config(config, 1.0, True)
    W = result.state.best_W.astype(np.float64)
    _, grad = reference(TrainingRows(data.train_images, data.train_labels), split.train_rows,
                        W, pre, rule, tuple(augmented_views(True, 1)))
    assert np.abs(grad).max() < 1e-4  # float32 weights of a float64 optimum
    _, unaugmented = reference(TrainingRows(data.train_images, data.train_labels),
                               split.train_rows, W, pre, rule, IDENTITY)
    assert np.abs(unaugmented).max() > 10 * np.abs(grad).max()


def features_problem(folder: Path, engine: str, device: str = "cpu") -> str:
    """A tiny features problem (float32, 8 values, 5 classes) and its lbfgs config."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    X = (rng.normal(0, 2, (5, 8))[labels] + rng.standard_normal((400, 8)) * 2).astype(
        np.float32)
    np.savez(folder / "train.npz", X=X[:300], y=labels[:300])
    np.savez(folder / "test.npz", X=X[300:], y=labels[300:])
    raw = {"engine": engine, "device": device,
           "data": {"dataset": "features", "train": str(folder / "train.npz"),
                    "test": str(folder / "test.npz"), "val_size": 50},
           "preprocess": {"scale": "std"}, "augment": {"hflip": False, "translate": 0},
           "optim": {"solver": "lbfgs", "tol": 1e-8}, "loss": {"reg": 1e-2},
           "output": {"plots": False, "dir": str(folder / f"run-{engine}-{device}")}}
    path = folder / f"{engine}-{device}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def check_same_optimum_as_numpy(tmp_path, device):
    from cli_util import run

    pytest.importorskip("torch")
    solutions = []
    for engine, where in (("numpy", "cpu"), ("torch", device)):
        config = features_problem(tmp_path, engine, where)
        result = run("softmax-train", "--config", config, "--quiet", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        folder = tmp_path / f"run-{engine}-{where}"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["solver"] == "lbfgs" and summary["converged"] is True
        assert yaml.safe_load((folder / "config.yaml").read_text())["engine"] == engine
        solutions.append(load_checkpoint(folder / "best.npz").W)
    ours, numpys = solutions
    # float32 checkpoints of two float64 optima, each with gradient max-norm <= 1e-8: they
    # meet within a float32 rounding (at tol 1e-7 they were 1.3e-6 apart, about the bound)
    assert np.abs(ours - numpys).max() <= 1e-6 * np.abs(numpys).max()


def test_engine_torch_solves_lbfgs_to_numpys_optimum_through_the_console_script(tmp_path):
    check_same_optimum_as_numpy(tmp_path, "cpu")


def test_the_estimator_with_engine_torch_and_lbfgs():
    pytest.importorskip("torch")
    from softmax_cls.estimator import SoftmaxClassifier

    X, y = logistic_problem(n=800, p=12, classes=4)
    weight = np.random.default_rng(2).uniform(0.5, 2, len(y))
    fits = [SoftmaxClassifier(solver="lbfgs", reg=1e-3, tol=1e-7, engine=engine,
                              device="cpu" if engine == "torch" else "auto").fit(
                                  X, y, sample_weight=weight) for engine in ("numpy", "torch")]
    assert fits[1].get_params()["engine"] == "torch"
    np.testing.assert_allclose(fits[1].coef_, fits[0].coef_,
                               atol=1e-5 * np.abs(fits[0].coef_).max())


@pytest.mark.cuda
def test_engine_torch_solves_lbfgs_on_cuda(tmp_path):
    check_same_optimum_as_numpy(tmp_path, "cuda")
    for views in (IDENTITY, tuple(augmented_views(True, 2))):
        for padding in ("zero", "edge", "reflect"):
            check_against_the_reference("torch", "cuda", True, False, views, padding)


@pytest.mark.cuda
def test_resident_rows_on_cuda_give_the_chunked_result():
    torch = pytest.importorskip("torch")
    from softmax_cls.engines.torch_engine.rows import device_rows, resident_rows

    data, pre, W = image_problem()
    device = torch.device("cuda")
    index = np.arange(5, 100, 3, dtype=np.int64)
    rule = StepRule(lr=1.0, reg=0.01)
    views = tuple(augmented_views(True, 1))
    want = numpy_engine.full_loss_and_grad(data, index, W, pre, rule, views, "edge", "float64")
    assert resident_rows(data, device) is None
    moved = full_function("torch", "cuda")(data, index, W, pre, rule, views, "edge", "float64",
                                           chunk=16)
    assert resident_rows(data, device) is not None  # small rows: moved once, to stay
    device_rows(data, device)
    again = full_function("torch", "cuda")(data, index, W, pre, rule, views, "edge", "float64",
                                           chunk=16)
    for got in (moved, again):
        assert got[0] == pytest.approx(want[0], rel=1e-12)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-13)


# --- the estimator against scikit-learn -------------------------------------------------------

def logistic_problem(n=3000, p=40, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)).astype(np.float32)
    y = (X @ rng.standard_normal((classes, p)).T + 2 * rng.standard_normal((n, classes))
         ).argmax(1)
    return X, y


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_estimator_is_logistic_regression_at_c_one_over_2_reg_n(classes, weighted):
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    from softmax_cls.estimator import SoftmaxClassifier

    X, y = logistic_problem(classes=classes)
    weight = np.random.default_rng(1).uniform(0.5, 2, len(y)) if weighted else None
    reg = 1e-3
    ours = SoftmaxClassifier(solver="lbfgs", reg=reg, standardize=False, tol=1e-7).fit(
        X, y, sample_weight=weight)
    # two classes: scikit-learn fits one logistic model d = w1 - w0, and at our optimum
    # w0 = -w1, so reg * (|w0|^2 + |w1|^2) = reg / 2 * |d|^2: C = 1 / (reg N) there
    C = 1 / (2 * reg * len(y)) if classes > 2 else 1 / (reg * len(y))
    theirs = sklearn_linear.LogisticRegression(C=C, tol=1e-10,
                                               max_iter=10_000).fit(
        X.astype(np.float64), y, sample_weight=weight)
    if classes == 2:  # both report w1 - w0 and b1 - b0
        coef, theirs_coef = ours.coef_, theirs.coef_
        bias, theirs_bias = ours.intercept_, theirs.intercept_
    else:  # intercepts are unpenalised: defined up to one constant
        coef, theirs_coef = ours.coef_, theirs.coef_
        bias = ours.intercept_ - ours.intercept_.mean()
        theirs_bias = theirs.intercept_ - theirs.intercept_.mean()
    scale = np.abs(theirs_coef).max()
    assert np.abs(coef - theirs_coef).max() <= 1e-3 * scale
    assert np.abs(bias - theirs_bias).max() <= 1e-3 * max(np.abs(theirs_bias).max(), scale)
    X_test, _ = logistic_problem(n=5000, classes=classes, seed=9)
    assert np.mean(ours.predict(X_test) == theirs.predict(X_test)) >= 0.999


def test_grid_search_and_warm_starts_with_lbfgs():
    model_selection = pytest.importorskip("sklearn.model_selection")
    from sklearn.exceptions import ConvergenceWarning

    from softmax_cls.estimator import SoftmaxClassifier

    X, y = logistic_problem(n=600, p=20)
    search = model_selection.GridSearchCV(SoftmaxClassifier(solver="lbfgs"),
                                          {"reg": [1e-4, 1e-2, 1.0]}, cv=3).fit(X, y)
    assert search.best_params_["reg"] in (1e-4, 1e-2)
    assert search.best_estimator_.n_iter_ > 0
    # a warm start from the optimum of a nearby reg takes fewer iterations to the same optimum
    cold = SoftmaxClassifier(solver="lbfgs", reg=1e-3, tol=1e-7).fit(X, y)
    warm = SoftmaxClassifier(solver="lbfgs", reg=2e-3, tol=1e-7, warm_start=True).fit(X, y)
    warm.set_params(reg=1e-3).fit(X, y)
    assert warm.n_iter_ < cold.n_iter_
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=1e-4 * np.abs(cold.coef_).max())
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        SoftmaxClassifier(solver="lbfgs", max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="early_stopping"):
        SoftmaxClassifier(solver="lbfgs", early_stopping=True).fit(X, y)
    with pytest.raises(ValueError, match="partial_fit"):
        SoftmaxClassifier(solver="lbfgs").partial_fit(X, y, classes=np.unique(y))
    with pytest.raises(ValueError, match="solver"):
        SoftmaxClassifier(solver="newton").fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning of any kind
        SoftmaxClassifier(solver="lbfgs").fit(X, y)


def test_the_estimators_precondition_is_optim_precondition():
    pytest.importorskip("sklearn")
    from softmax_cls.estimator import SoftmaxClassifier

    X, y = correlated_problem()
    plain = SoftmaxClassifier(solver="lbfgs", reg=1e-4, tol=1e-6, precondition=False).fit(X, y)
    fast = SoftmaxClassifier(solver="lbfgs", reg=1e-4, tol=1e-6).fit(X, y)
    assert fast.get_params()["precondition"] is True
    assert fast.n_iter_ * 3 <= plain.n_iter_
    assert np.mean(fast.predict(X) == plain.predict(X)) >= 0.999
    with pytest.raises(ValueError, match="precondition"):
        SoftmaxClassifier(solver="lbfgs", precondition="sometimes").fit(X, y)


# --- regularisation paths --------------------------------------------------------------------

REGS = [1.0e-4, 1.0e-1, 3.0e-3, 1.0]


def path_sweep(folder: Path, **fields) -> Path:
    raw = {"set": {"engine": "numpy", "data.val_size": 100, "optim.solver": "lbfgs",
                   "augment.hflip": False, "augment.translate": 0},
           "sampler": "grid", "seed": 0, "pruner": "none",
           "space": {"loss.reg": {"grid": REGS}}}
    raw.update(fields)
    path = folder / "path.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def served(monkeypatch):
    optuna = pytest.importorskip("optuna")
    from sweep_util import sweep_data

    import softmax_cls.data.cifar

    data = sweep_data()
    monkeypatch.setattr(softmax_cls.data.cifar, "load_config_data",
                        lambda section, progress=True, **kw: data)
    return data, optuna


def test_a_reg_grid_with_lbfgs_is_one_warm_started_path(tmp_path, served, capsys,
                                                        monkeypatch):
    from sweep_util import read_trials

    from softmax_cls.sweep import driver, path
    from softmax_cls.training import lbfgs as solver

    data, _ = served
    starts = []
    real = solver.fit_lbfgs

    moments = []

    def spy(config, *args, **kwargs):
        result = real(config, *args, **kwargs)
        starts.append((config.loss.reg, float(np.abs(args[4]).max()), result.iterations))
        moments.append(kwargs["moment"])
        return result

    monkeypatch.setattr(path, "fit_lbfgs", spy)
    pytest.importorskip("matplotlib")
    result = driver.run_sweep(path_sweep(tmp_path), out=tmp_path / "out", progress=True,
                              plots=True)
    # largest reg first, from zeros; each next one from the previous solution
    assert [reg for reg, _, _ in starts] == sorted(REGS, reverse=True)
    assert starts[0][1] == 0 and all(start > 0 for _, start, _ in starts[1:])
    # one second moment of the rows for the preconditioner of every point
    assert moments[0].shape == (3073, 3073) and all(m is moments[0] for m in moments)
    rows = read_trials(tmp_path / "out")
    assert [float(r["loss.reg"]) for r in rows] == sorted(REGS, reverse=True)
    assert [r["state"] for r in rows] == ["complete"] * 4
    accs = {float(r["loss.reg"]): float(r["best_val_acc"]) for r in rows}
    assert result.best_val_acc == max(accs.values())
    table = capsys.readouterr().out
    assert "loss.reg" in table and table.count("\n") >= 5
    assert (tmp_path / "out" / "plots" / "sweep.png").is_file()
    # best.npz: the path's solution at the best reg, the optimum a cold solve finds
    best_reg = float(result.summary["best_params"]["loss.reg"])
    config = config_from_dict({**yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())})
    assert config.loss.reg == best_reg
    split, pre = runs.split_and_fit(config, data.train_images, data.train_labels)
    cold = real(config, data.train_images, data.train_labels, split, pre,
                np.zeros((4, 3073)))
    best = load_checkpoint(tmp_path / "out" / "best.npz")
    assert np.abs(best.W - cold.W).max() <= 1e-3 * np.abs(cold.W).max()
    # the same command again solves nothing, reads no data (nor the test split) and says so
    starts.clear()

    def no_reading(*args, **kwargs):
        raise AssertionError("a finished path read its data again")

    monkeypatch.setattr("softmax_cls.data.cifar.load_config_data", no_reading)
    again = driver.run_sweep(path_sweep(tmp_path), out=tmp_path / "out", progress=False,
                             plots=False)
    assert starts == []
    assert again.finished.endswith("each point of its grid has run; nothing written")


def test_a_path_refuses_workers(tmp_path, served):
    from softmax_cls.sweep import driver

    with pytest.raises(ConfigError, match="--workers: a regularisation path"):
        driver.run_sweep(path_sweep(tmp_path), out=tmp_path / "out", workers=2,
                         progress=False)
    assert not (tmp_path / "out").exists()


def test_other_grids_with_lbfgs_run_as_trials(tmp_path, served):
    from softmax_cls.sweep import path
    from softmax_cls.sweep.spec import load_sweep

    spec = load_sweep(path_sweep(tmp_path, space={"loss.reg": {"grid": REGS},
                                                  "optim.tol": {"grid": [1e-4, 1e-5]}}))
    assert not path.is_reg_path(spec)
    assert path.is_reg_path(load_sweep(path_sweep(tmp_path)))
    sgd = path_sweep(tmp_path)
    sgd.write_text(sgd.read_text().replace("optim.solver: lbfgs", "optim.solver: sgd"))
    assert not path.is_reg_path(load_sweep(sgd))
    assert path.path_order([1e-3, 1.0, 1e-3, 0.1]) == [1.0, 0.1, 1e-3]


def test_each_point_of_a_path_is_its_regs_cold_optimum_scored_on_the_val_rows(
        tmp_path, served, monkeypatch):
    """Each warm-started point is the optimum a cold solve of its own reg finds, and its
    recorded val accuracy is that optimum's accuracy on the val rows (numpy's argmax here);
    a path solving every point at the first reg, or scoring the training rows, passed
    every other test."""
    from sweep_util import read_trials

    from softmax_cls.sweep import driver, path

    data, _ = served
    solved = {}
    real = lbfgs.fit_lbfgs

    def spy(config, *args, **kwargs):
        result = real(config, *args, **kwargs)
        solved[config.loss.reg] = result.W
        return result

    monkeypatch.setattr(path, "fit_lbfgs", spy)
    regs = [1.0e-1, 1.0e-2]
    sweep = path_sweep(tmp_path, space={"loss.reg": {"grid": regs}})
    raw = yaml.safe_load(sweep.read_text())
    raw["set"]["optim.tol"] = 1e-8  # both solves near enough the optimum to compare them
    sweep.write_text(yaml.safe_dump(raw, sort_keys=False))
    driver.run_sweep(sweep, out=tmp_path / "out", progress=False, plots=False)
    recorded = {float(r["loss.reg"]): float(r["best_val_acc"])
                for r in read_trials(tmp_path / "out")}
    assert sorted(recorded) == sorted(regs)
    for reg in regs:
        config = config_from_dict({"engine": "numpy", "data": {"val_size": 100},
                                   "loss": {"reg": reg},
                                   "optim": {"solver": "lbfgs", "tol": 1e-8},
                                   "augment": {"hflip": False, "translate": 0}})
        split, pre = runs.split_and_fit(config, data.train_images, data.train_labels)
        cold = real(config, data.train_images, data.train_labels, split, pre,
                    np.zeros((4, 3073)))
        assert np.abs(solved[reg] - cold.W).max() <= 1e-3 * np.abs(cold.W).max()
        scores = pre.transform(data.train_images[split.val_rows], np.float64) @ cold.W.T
        accuracy = np.mean(scores.argmax(1) == data.train_labels[split.val_rows])
        assert abs(recorded[reg] - accuracy) <= 1 / len(split.val_rows) + 1e-12


def test_a_path_resumed_solves_only_the_points_it_had_not_solved(tmp_path, served,
                                                                   monkeypatch):
    """Interrupted after its first two points, the same command solves the other two only
    (the first of them from zeros) and the study holds each reg once."""
    from sweep_util import read_trials

    from softmax_cls.sweep import driver, path

    real = lbfgs.fit_lbfgs
    solved = []

    def stop_at_the_third(config, *args, **kwargs):
        if len(solved) == 2:
            raise KeyboardInterrupt
        solved.append(config.loss.reg)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(path, "fit_lbfgs", stop_at_the_third)
    with pytest.raises(driver.SweepInterrupted):
        driver.run_sweep(path_sweep(tmp_path), out=tmp_path / "out", progress=False,
                         plots=False)
    assert solved == sorted(REGS, reverse=True)[:2]
    starts = []

    def spy(config, *args, **kwargs):
        starts.append((config.loss.reg, float(np.abs(args[4]).max())))
        return real(config, *args, **kwargs)

    monkeypatch.setattr(path, "fit_lbfgs", spy)
    driver.run_sweep(path_sweep(tmp_path), out=tmp_path / "out", progress=False, plots=False)
    assert [reg for reg, _ in starts] == sorted(REGS, reverse=True)[2:]
    assert starts[0][1] == 0 and starts[1][1] > 0
    rows = read_trials(tmp_path / "out")
    assert sorted(float(r["loss.reg"]) for r in rows) == sorted(REGS)
    assert [r["state"] for r in rows] == ["complete"] * 4


def test_a_path_points_warnings_name_the_trial_it_became_beside_another_command(
        tmp_path, served, monkeypatch, capsys):
    """A point's warnings said `trial N`, N the count of the study's trials before its solve:
    when another command sharing the study (--storage) added a trial meanwhile, the point
    became trial N + 1 and two commands' warnings named the same trial."""
    from sweep_util import read_trials

    from softmax_cls.sweep import driver, path
    from softmax_cls.sweep.study import open_storage_for

    optuna = served[1]
    real = lbfgs.fit_lbfgs

    def beside_another(config, *args, warn, **kwargs):
        storage = open_storage_for(tmp_path / "out")
        other = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0],
                                  storage=storage)
        other.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
        warn(f"probe at reg {config.loss.reg!r}")
        return real(config, *args, warn=warn, **kwargs)

    monkeypatch.setattr(path, "fit_lbfgs", beside_another)
    capsys.readouterr()
    driver.run_sweep(path_sweep(tmp_path, space={"loss.reg": {"grid": [1.0e-1, 1.0e-2]}}),
                     out=tmp_path / "out", progress=False, plots=False)
    said = dict(line.split(": probe at reg ")[::-1] for line in
                capsys.readouterr().err.splitlines() if ": probe at reg " in line)
    rows = [row for row in read_trials(tmp_path / "out") if row["state"] == "complete"]
    assert said == {row["loss.reg"]: f"warning: trial {row['number']}" for row in rows}
    assert sorted(said.values()) == ["warning: trial 1", "warning: trial 3"]


def test_a_path_asks_engine_auto_for_an_lbfgs_engine(tmp_path, served, monkeypatch):
    """engine auto on a path is auto's L-BFGS pick (the SGD rule measured slower there), as
    for a trial's fit_lbfgs: dropping the path's solver passed every other test."""
    import softmax_cls.engines as engines
    from softmax_cls.sweep import driver, path

    asked = []

    def spy(*args, solver="sgd", **kwargs):
        asked.append(solver)
        return engines.get_engine("numpy")

    monkeypatch.setattr(path, "get_engine", spy)
    sweep = path_sweep(tmp_path, space={"loss.reg": {"grid": [1.0]}})
    sweep.write_text(sweep.read_text().replace("engine: numpy", "engine: auto"))
    driver.run_sweep(sweep, out=tmp_path / "out", progress=False, plots=False)
    assert asked == ["lbfgs"]


def test_a_path_without_scipy_is_one_error_before_its_folder_exists(tmp_path, served,
                                                                      monkeypatch):
    from softmax_cls.sweep import driver

    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(SoftmaxClsError, match=r"softmax-cls\[lbfgs\]"):
        driver.run_sweep(path_sweep(tmp_path), out=tmp_path / "out", progress=False,
                         plots=False)
    assert not (tmp_path / "out").exists()


def benchmark_script():
    """scripts/benchmark_lbfgs.py as a module (it imports its sibling scripts)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import benchmark_lbfgs

    return benchmark_lbfgs


@pytest.mark.parametrize("args, needle", [
    (["--engine", "numpy", "--eval-shape", "10x4"], "argument --eval-shape: expected ROWS"),
    (["--engine", "numpy", "--eval-shape", "axbxc"], "argument --eval-shape: expected ROWS"),
    (["--engine", "numpy", "--eval-shape", "0x4x3"], "argument --eval-shape: '0x4x3': needs"),
    (["--engine", "numpy", "--eval-shape", "10x4x1"], "needs at least 1 row, 1 feature and 2"),
    (["--path-shape", "20x3x3", "--path-regs", "0.1", "-0.001"],
     "argument --path-regs: must be a finite number > 0, got -0.001"),
    (["--path-shape", "20x3x3", "--path-regs", "0"], "argument --path-regs: must be"),
    (["--time-to-accuracy", "--ours-tols", "1e-3", "0"],
     "argument --ours-tols: must be a finite number > 0, got 0"),
    (["--time-to-accuracy", "--feature-rows", "0"],
     "--time-to-accuracy needs --feature-rows of at least 1"),
    (["--time-to-accuracy", "--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    (["--engine", "numpy", "--eval-shape", "10x4x3", "--repeats", "x"],
     "argument --repeats: expected an integer, got 'x'"),
    (["--engine", "numpy", "--eval-shape", "10x4x3", "--json", "{tmp}/missing/t.json"],
     "argument --json: {tmp}/missing/t.json: folder {tmp}/missing does not exist"),
])
def test_the_benchmarks_bad_arguments_are_usage_errors(tmp_path, args, needle):
    """A bad shape, reg or --json folder was a traceback, the last after the whole timing."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_lbfgs.py"
    result = subprocess.run([sys.executable, str(script),
                             *(a.format(tmp=tmp_path) for a in args)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("benchmark_lbfgs.py: error: "), result.stderr
    assert needle.format(tmp=tmp_path) in last, last
    assert result.stdout == ""


def test_the_benchmark_times_its_calls_interleaved_and_gives_medians():
    """scripts/benchmark_lbfgs.py's one timing loop: one call of each per round (a load
    change hits every call alike), the median of each call's times."""
    import time

    interleaved_medians = benchmark_script().interleaved_medians

    order: list[str] = []
    pauses = {"a": iter([0.0, 0.09, 0.0]), "b": iter([0.02, 0.02, 0.02])}

    def call(name):
        def timed():
            order.append(name)
            time.sleep(next(pauses[name]))
        return timed

    medians = interleaved_medians({"a": call("a"), "b": call("b")}, 3)
    assert order == ["a", "b"] * 3
    assert medians["a"] < 0.02 <= medians["b"]  # a's mean would be 0.03


def test_the_benchmarks_plain_pytorch_evaluation_is_our_objective(monkeypatch):
    """The plain-PyTorch baseline of scripts/benchmark_lbfgs.py computes the objective our
    engines compute (rows preprocessed by the identity, the bias unpenalised), over chunks
    of rows as over one: it is timed beside them as the same work."""
    pytest.importorskip("torch")
    bench = benchmark_script()
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 7), dtype=np.float32)
    y = rng.integers(0, 4, 50)
    W = rng.normal(0.0, 0.3, (4, 8))
    pre = Preprocessor(np.zeros(7), np.ones(7))
    expected, grad = numpy_engine.full_loss_and_grad(
        TrainingRows(X, y), np.arange(50), W, pre, StepRule(lr=1.0, reg=0.05),
        ((False, 0, 0),), "edge", "float64")
    monkeypatch.setattr(bench, "TORCH_PLAIN_LOGITS", 4 * 16)  # 4 chunks of 16 rows or less
    evaluation = bench.torch_plain_evaluation(X, y, W, 0.05)
    for _ in range(2):  # a second call starts from a zero gradient again
        loss, theirs = evaluation()
        assert loss == pytest.approx(expected, rel=1e-6)
        np.testing.assert_allclose(theirs, grad, rtol=1e-5, atol=1e-7)


def test_the_benchmark_times_every_evaluation_at_a_tiny_shape():
    """--engine with float16 rows, one precision and both baselines: one median for each
    row dtype, engine and precision, and for each baseline."""
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    times = benchmark_script().engine_evaluations(
        ["numpy", "torch"], "40x5x3", "cpu", 1, ("float32", "float16"), ("float32",),
        ("torch", "sklearn"))
    assert list(times) == [f"{engine} (cpu) {rows} rows, float32"
                           for rows in ("float32", "float16") for engine in ("numpy", "torch")
                           ] + ["plain PyTorch (cpu) float32",
                                "scikit-learn loss_gradient float64"]
    assert all(seconds > 0 for seconds in times.values())


def test_the_benchmarks_path_agrees_with_scikit_learns_at_each_point():
    """--path-shape: our estimator's warm-started path and scikit-learn's, largest reg
    first, C = 1 / (2 reg N): each point's coefficients (ours taken to the standardised
    rows) within 1e-3 and the same validation predictions; validation picks a point.
    scikit-learn's path is warm-started: its last point takes fewer iterations than a fit
    from zeros (ours is the estimator's own warm start, tested with the estimator)."""
    pytest.importorskip("sklearn")
    bench = benchmark_script()  # puts scripts/ on the path: benchmark_estimator
    from benchmark_estimator import linear_features
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    regs = [1e-3, 1e-1, 1e-2]
    path = bench.compare_paths("600x6x3", regs, 1e-7, 500, 1, "numpy")
    X, y = linear_features(n_train=600, n_test=150, dim=6, classes=3)[:2]
    cold_theirs = LogisticRegression(C=1 / (2 * 1e-3 * 600), tol=1e-7).fit(
        StandardScaler().fit_transform(X.astype(np.float64)), y).n_iter_[0]
    assert path["points"][-1]["sklearn_iterations"] < cold_theirs
    assert [q["reg"] for q in path["points"]] == [1e-1, 1e-2, 1e-3]
    for q in path["points"]:
        assert q["coef_rel_diff"] < 1e-3 and q["intercept_rel_diff"] < 1e-3
        assert q["same_predictions"] >= 0.99
        assert q["ours_iterations"] >= 1 and q["sklearn_iterations"] >= 1
    assert path["points"][0]["ours_val_acc"] < path["points"][-1]["ours_val_acc"]
    assert path["ours_pick"] in regs and path["sklearn_pick"] in regs
    assert len(path["ours_s_all"]) == len(path["sklearn_s_all"]) == 1
    alone = bench.compare_paths("600x6x3", regs, 1e-7, 500, 2, "numpy", ours_only=True)
    assert "sklearn_s" not in alone and len(alone["ours_s_all"]) == 2
    assert [(q["reg"], q["ours_iterations"]) for q in alone["points"]] == [
        (q["reg"], q["ours_iterations"]) for q in path["points"]]
    assert all(q["ours_evaluations"] > q["ours_iterations"] for q in alone["points"])


def test_each_iteration_reports_the_weights_of_the_iterate_it_accepted():
    """on_iteration's W (what an interrupted run keeps) is the iterate's weights W = V L^-1,
    not L-BFGS's variables V: its loss and gradient are the ones reported with it."""
    curvature = np.linspace(1.0, 30.0, 12).reshape(2, 6)

    def objective(W, precision):
        return float((curvature * (W - 1) ** 2).sum()), 2 * curvature * (W - 1)

    precondition = Preconditioner(np.diag(np.linspace(0.5, 2.0, 6)))
    seen = []
    result = lbfgs.minimize(objective, np.zeros((2, 6)), 1e-8, 200,
                            lambda i, loss, grad_max, W: seen.append((loss, grad_max,
                                                                      W.copy())),
                            precondition)
    assert len(seen) == result.iterations >= 3
    for loss, grad_max, W in seen:
        assert W.shape == (2, 6) and W.dtype == np.float64
        value, grad = objective(W, "float64")
        assert value == pytest.approx(loss, rel=1e-12, abs=1e-300)
        assert np.abs(grad).max() == pytest.approx(grad_max, rel=1e-12)
    np.testing.assert_allclose(seen[-1][2], result.W)


def test_the_preconditioner_is_the_same_on_one_blas_thread_or_two():
    """OpenBLAS's threaded Cholesky and solves round differently on two threads; a fit's
    weights must not depend on --threads."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from softmax_cls.training.precondition import Preconditioner

    rng = np.random.default_rng(0)
    X = rng.standard_normal((700, 600))
    S, V = X.T @ X / len(X), rng.standard_normal((10, 600))
    got = {}
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            p = Preconditioner.from_moment(S, 10, 1e-3, False)
            got[threads] = (p.L, p.weights(V), p.variables(V), p.gradient(V))
    for one, two in zip(got[1], got[2], strict=True):
        assert np.array_equal(one, two)


def test_a_fit_is_the_same_on_one_blas_thread_or_two():
    """The objective's own BLAS calls (the L2 term's vdot over 30,000 weights: OpenBLAS
    threads it) round differently on two threads; lbfgs.minimize holds BLAS to one."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(0)
    A, B = rng.uniform(0.5, 50.0, (10, 3000)), rng.standard_normal((10, 3000))

    def objective(W, precision):
        penalty, penalty_grad = softmax.l2_penalty(W, 0.3)
        return float(0.5 * np.sum(A * (W - B) ** 2)) + penalty, A * (W - B) + penalty_grad

    got = {}
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            result = lbfgs.minimize(objective, np.zeros((10, 3000)), 1e-10, 30, None, None)
            got[threads] = (result.W, result.loss)
    assert np.array_equal(got[1][0], got[2][0]) and got[1][1] == got[2][1]


def test_the_not_converged_line_counts_one_iteration_in_the_singular():
    from softmax_cls.training.lbfgs import LbfgsResult, not_converged_line

    result = LbfgsResult(W=np.zeros((2, 2)), iterations=1, evaluations=2, loss=1.0,
                         grad_max=0.5, converged=False, message="STOP: TOTAL NO. OF ITERATIONS")
    assert "converge: 1 iteration (optim.max_iter 1)" in not_converged_line(result, 1, 1e-5)
    stopped = LbfgsResult(**{**vars(result), "message": "ABNORMAL: "})
    assert "stopped after 1 iteration (" in not_converged_line(stopped, 5, 1e-5)


def test_the_benchmarks_time_to_accuracy_picks_the_loosest_tol_within_005_points(
        monkeypatch):
    """--time-to-accuracy: each repetition all of ours then all of scikit-learn's; per
    scikit-learn fit, ours' largest |accuracy difference| over the repetitions in points, the
    ratio of median times theirs / ours, and the loosest tol of ours within 0.05 points
    (a repetition outside disqualifies it)."""
    bench = benchmark_script()
    y_test = np.zeros(10_000, np.int64)
    calls: list[tuple[str, float]] = []
    rounds = {"n": 0}
    # test accuracy per (side, tol), one per repetition; seconds per (side, tol)
    accuracy = {("ours", 1e-2): [0.90, 0.90], ("ours", 1e-3): [0.9004, 0.9006],
                ("ours", 1e-4): [0.9001, 0.9001], ("sklearn", 1e-4): [0.9001, 0.9001]}
    seconds = {("ours", 1e-2): 0.5, ("ours", 1e-3): 1.0, ("ours", 1e-4): 2.0,
               ("sklearn", 1e-4): 8.0}

    def predictions(side, tol):
        wrong = round((1 - accuracy[side, tol][rounds["n"]]) * len(y_test))
        return np.r_[np.ones(wrong, np.int64), np.zeros(len(y_test) - wrong, np.int64)]

    def fake_ours(rows, labels, reg, tol, max_iter, precondition=True, engine="auto"):
        if max_iter == 2:  # the compile warm-up
            return {}
        calls.append(("ours", tol))
        return {"seconds": seconds["ours", tol], "iterations": 3, "evaluations": 4,
                "converged": True, "predicted": predictions("ours", tol)}

    class Model:
        def __init__(self, predicted):
            self.predicted = predicted

        def predict(self, X):
            return self.predicted

    class Scaler:
        def transform(self, X):
            return X

    def fake_theirs(rows, labels, reg, tol, max_iter):
        calls.append(("sklearn", tol))
        fit = {"seconds": seconds["sklearn", tol], "iterations": 5, "converged": True,
               "model": Model(predictions("sklearn", tol)), "scaler": Scaler()}
        rounds["n"] += 1
        return fit

    monkeypatch.setattr(bench, "ours", fake_ours)
    monkeypatch.setattr(bench, "theirs", fake_theirs)
    monkeypatch.setattr(bench, "accuracy_ours", lambda fit, X: fit["predicted"])
    monkeypatch.setattr(bench, "resolved_engine", lambda name, classes: "numpy")
    rows = np.zeros((20, 3), np.float32)
    result = bench.time_to_accuracy(rows, np.array([0, 1] * 10), np.zeros((10_000, 3)),
                                    y_test, 1e-4, [1e-2, 1e-3, 1e-4], [1e-4], 100, 2)
    assert calls == [("ours", 1e-2), ("ours", 1e-3), ("ours", 1e-4), ("sklearn", 1e-4)] * 2
    (ref,) = result["references"]
    assert ref["test_acc"] == pytest.approx(0.9001)
    diffs = {q["tol"]: q["acc_diff_points"] for q in ref["ours"]}
    assert diffs == pytest.approx({1e-2: 0.01, 1e-3: 0.05, 1e-4: 0.0}, abs=1e-9)
    assert {q["tol"]: q["ratio"] for q in ref["ours"]} == pytest.approx(
        {1e-2: 16.0, 1e-3: 8.0, 1e-4: 4.0})
    assert ref["loosest_within"]["tol"] == 1e-2
    accuracy["ours", 1e-2] = [0.90, 0.9008]  # its second repetition 0.07 points off
    calls.clear()
    rounds["n"] = 0
    result = bench.time_to_accuracy(rows, np.array([0, 1] * 10), np.zeros((10_000, 3)),
                                    y_test, 1e-4, [1e-2, 1e-3, 1e-4], [1e-4], 100, 2)
    assert result["references"][0]["loosest_within"]["tol"] == 1e-3
    assert [r["test_acc_all"] for r in result["runs"]][0] == pytest.approx([0.90, 0.9008])


def test_the_benchmarks_time_to_accuracy_runs_from_the_command_line(tmp_path):
    """--time-to-accuracy on a small features problem: a table row per fit, each reference's
    verdict line, and the JSON; tight tolerances of ours reach scikit-learn's accuracy."""
    pytest.importorskip("sklearn")
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_lbfgs.py"
    out = tmp_path / "tta.json"
    result = subprocess.run(
        [sys.executable, str(script), "--time-to-accuracy", "--feature-rows", "1500",
         "--repeats", "1", "--ours-engine", "numpy", "--ours-tols", "1e-2", "1e-7",
         "--sklearn-tols", "1e-7", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("| ours (numpy) |") for line in lines) == 2
    assert sum(line.startswith("| scikit-learn | 1e-07 |") for line in lines) == 1
    report = json.loads(out.read_text())
    (ref,) = report["references"]
    tight = [q for q in ref["ours"] if q["tol"] == 1e-7][0]
    assert tight["acc_diff_points"] <= 0.05
    assert ref["loosest_within"]["tol"] in (1e-2, 1e-7)
    assert any(line.startswith("scikit-learn tol 1e-07 (") and
               f"ours' loosest tol within 0.05 points is {ref['loosest_within']['tol']:g}"
               in line for line in lines)


def test_the_lbfgs_fits_ask_engine_auto_for_an_lbfgs_engine(monkeypatch):
    """fit_full_batch and fit_lbfgs, given no engine, ask get_engine with solver lbfgs:
    auto's SGD rule (torch from 64 classes on one thread) measured slower for L-BFGS."""
    import softmax_cls.training.fit as fit_module

    asked = []

    def spy(*args, solver="sgd", **kwargs):
        asked.append(solver)
        return get_engine("numpy")

    monkeypatch.setattr(fit_module, "get_engine", spy)
    monkeypatch.setattr(lbfgs, "get_engine", spy)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5)).astype(np.float32), np.arange(40) % 3
    config = config_from_dict({"engine": "auto", "optim": {"solver": "lbfgs", "max_iter": 3},
                               "augment": {"hflip": False, "translate": 0}})
    pre = fit_preprocessor(X)
    split = Split(np.arange(len(X), dtype=np.int64), np.zeros(0, np.int64))
    fit_module.fit_full_batch(config, X, y, split, pre, 3, warn=lambda line: None)
    lbfgs.fit_lbfgs(config, X, y, split, pre, np.zeros((3, pre.n_features)),
                    warn=lambda line: None)
    assert asked == ["lbfgs", "lbfgs"]


def test_a_tie_on_a_path_keeps_the_first_point_solved_and_solves_nothing_again(
        tmp_path, served, monkeypatch):
    """Two points of one val accuracy: the study's best is the first solved (optuna keeps the
    first of a tie), and best.npz, written when it was solved, is kept; a best.npz of the
    later point was solved again at the end, cold (a whole solve more on CIFAR-10)."""
    from sweep_util import read_trials

    import softmax_cls.training.fit as fit_module
    from softmax_cls.sweep import driver

    def no_solving_again(*args, **kwargs):
        raise AssertionError("the best point was solved again")

    monkeypatch.setattr(fit_module, "fit", no_solving_again)
    regs = [1.0e4, 1.0e3]  # so strong that both predict alike
    result = driver.run_sweep(path_sweep(tmp_path, space={"loss.reg": {"grid": regs}}),
                              out=tmp_path / "out", progress=False, plots=False)
    accs = [float(r["best_val_acc"]) for r in read_trials(tmp_path / "out")]
    assert accs[0] == accs[1]
    best = load_checkpoint(tmp_path / "out" / "best.npz")
    assert config_from_dict(yaml.safe_load(best.config_yaml)).loss.reg == regs[0]
    assert float(result.summary["best_params"]["loss.reg"]) == regs[0]


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_one_row_past_a_whole_number_of_chunks_is_summed(engine):
    """22 rows in chunks of 7: a last chunk of one row (the other tests' last chunks hold 6;
    chunk starts that stop one row short dropped it)."""
    function = full_function(engine)
    data, pre, W = image_problem(n=40, classes=3)
    index = np.arange(9, 31, dtype=np.int64)
    rule = StepRule(lr=1.0, reg=0.02)
    want = reference(data, index, W, pre, rule, IDENTITY)
    got = function(data, index, W, pre, rule, IDENTITY, "edge", "float64", chunk=7)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_float32_products_are_summed_in_float64(engine):
    """4,000 rows of one label and positive features, a chunk a row: every product adds to
    the gradient with one sign. Summed in float64 the float32 products are off by 7e-9 of
    the largest entry; summed in float32 by 1.7e-7 (numpy's)."""
    rng = np.random.default_rng(0)
    rows = rng.uniform(1, 2, (4000, 3)).astype(np.float32)
    labels = np.zeros(4000, np.int64)
    pre = Preprocessor(np.zeros(3), np.ones(3), bias=True)
    W = rng.standard_normal((3, 4)) * 0.1
    X = np.hstack([rows.astype(np.float64), np.ones((4000, 1))])
    want_loss, want_grad = softmax.loss_and_grad(W, X, labels, 0.0, 20.0, True)
    loss, grad = full_function(engine)(TrainingRows(rows, labels), np.arange(4000), W, pre,
                                       StepRule(lr=1.0, clip=20.0), IDENTITY, "edge",
                                       "float32", chunk=1)
    assert loss == pytest.approx(want_loss, rel=1e-7)
    assert np.abs(grad - want_grad).max() <= 3e-8 * np.abs(want_grad).max()


def test_a_column_of_zeros_has_a_second_moment_of_zeros():
    """A feature that is 0 in every sampled row (a constant pixel centred): its column is
    scaled by 1, not divided by its largest magnitude 0, which made S NaN and left L-BFGS
    without a preconditioner."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((50, 4)).astype(np.float32)
    rows[:, 2] = 0.0
    pre = Preprocessor(np.zeros(4), np.ones(4), bias=True)
    S = second_moment(rows, np.arange(50), pre)
    X = np.hstack([rows.astype(np.float64), np.ones((50, 1))])
    np.testing.assert_allclose(S, X.T @ X / 50, rtol=1e-5, atol=1e-6)


def test_a_chunk_of_many_classes_holds_the_values_of_one_chunk(monkeypatch):
    """3,000 classes of 2 features: the chunk is sized by the (chunk, C) scores too, at most
    FULL_BATCH_VALUES values (sized by the 2 features alone, a chunk was every row: scores of
    1,000 x 3,000 here, 3 GB blocks at 20,000 classes)."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((1000, 2)).astype(np.float32)
    data = TrainingRows(rows, rng.integers(0, 3000, 1000).astype(np.int64))
    pre = Preprocessor(np.zeros(2), np.ones(2), bias=True)
    W = rng.standard_normal((3000, 3)) * 0.01
    seen = []
    original = softmax.softmax_loss_from_scores
    monkeypatch.setattr(softmax, "softmax_loss_from_scores",
                        lambda S, *a, **k: seen.append(S.shape) or original(S, *a, **k))
    got = numpy_engine.full_loss_and_grad(data, np.arange(1000), W, pre, StepRule(lr=1.0),
                                          IDENTITY, "edge", "float64")
    assert sum(rows for rows, _ in seen) == 1000
    assert max(rows * classes for rows, classes in seen) <= numpy_engine.FULL_BATCH_VALUES
    want = reference(data, np.arange(1000), W, pre, StepRule(lr=1.0), IDENTITY)
    assert got[0] == pytest.approx(want[0], rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_float32_scores_go_to_the_softmax_in_float64(engine):
    """Margins of about 10: each row's loss log(1 + 4.5e-5 ...) is below float32's resolution
    at 1 (6e-8 of it is 1e-3 of the loss), so the softmax of float32 products must run in
    float64 (a float32 softmax was off by about 1e-3 of the loss; float64 by 1e-6)."""
    rng = np.random.default_rng(1)
    rows = rng.uniform(1, 2, (300, 3)).astype(np.float32)
    labels = np.zeros(300, np.int64)
    pre = Preprocessor(np.zeros(3), np.ones(3), bias=True)
    W = np.zeros((3, 4))
    W[0, :3] = 10.0 / rows.sum(axis=1).mean()  # class 0 ahead by about 10 on every row
    X = np.hstack([rows.astype(np.float64), np.ones((300, 1))])
    want_loss, want_grad = softmax.loss_and_grad(W, X, labels, 0.0, 30.0, True)
    assert 1e-5 < want_loss < 1e-3
    loss, grad = full_function(engine)(TrainingRows(rows, labels), np.arange(300), W, pre,
                                       StepRule(lr=1.0, clip=30.0), IDENTITY, "edge",
                                       "float32")
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-4 * np.abs(want_grad).max())


def test_a_start_whose_gradient_max_norm_is_exactly_tol_has_converged():
    target = np.arange(6.0).reshape(2, 3)  # the gradient at zeros is -2 * target: max-norm 10
    for max_iter in (0, 50):
        result = lbfgs.minimize(quadratic(target), np.zeros((2, 3)), 10.0, max_iter)
        assert result.iterations == 0 and result.converged and result.grad_max == 10.0
        assert result.message == lbfgs.TOL_MESSAGE


def test_evaluations_are_the_objectives_calls():
    curvature = np.linspace(1.0, 30.0, 12).reshape(2, 6)
    calls = []

    def objective(W, precision):
        calls.append(precision)
        return float((curvature * (W - 1) ** 2).sum()), 2 * curvature * (W - 1)

    result = lbfgs.minimize(objective, np.zeros((2, 6)), 1e-8, 200)
    assert result.evaluations == len(calls) > result.iterations > 1


def test_the_not_converged_lines_give_the_iterations_max_iter_gradient_and_tol():
    result = lbfgs.LbfgsResult(W=np.zeros((2, 2)), iterations=7, evaluations=9, loss=2.5,
                               grad_max=0.0123, converged=False, message=lbfgs.MAX_ITER_MESSAGE)
    # a resumed solve whose optim.max_iter was lowered below the iterations it had made
    assert ("converge: 7 iterations (optim.max_iter 5), gradient max-norm 0.0123 > "
            "optim.tol 0.0001; raise optim.max_iter") in lbfgs.not_converged_line(result, 5, 1e-4)
    early = replace(result, iterations=3, message="CONVERGENCE: REL_REDUCTION_OF_F_<=_FACTR*EPSMCH")
    assert ("stopped after 3 iterations (rel_reduction_of_f_<=_factr*epsmch) with gradient "
            "max-norm 0.0123 > optim.tol 0.0001;") in lbfgs.not_converged_line(early, 5, 1e-4)


def test_without_the_bias_column_the_fit_penalises_every_column():
    data, pre, _ = image_problem(n=100, weighted=False)
    pre = Preprocessor(pre.mean, pre.scale, bias=False)  # the last column is a pixel's
    config = lbfgs_config(False, reg=1e-1, tol=1e-6)
    split = Split(np.arange(100, dtype=np.int64), np.zeros(0, np.int64))
    result = lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, np.zeros((4, 3072)))
    X = pre.transform(data.rows, np.float64)
    _, grad = softmax.loss_and_grad(result.W, X, data.labels, 1e-1, config.loss.clip, True)
    assert result.converged and np.abs(grad).max() <= 1e-5


def test_fit_lbfgs_warns_at_its_callers_line():
    data, pre, _ = image_problem(n=100, weighted=False)
    config = lbfgs_config(False, tol=1e-12)
    config.optim.max_iter = 1
    split = Split(np.arange(100, dtype=np.int64), np.zeros(0, np.int64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lbfgs.fit_lbfgs(config, data.rows, data.labels, split, pre, np.zeros((4, 3073)))
    found = [w for w in caught if issubclass(w.category, lbfgs.ConvergenceWarning)]
    assert len(found) == 1 and found[0].filename == __file__


def test_the_preconditioner_penalises_the_last_column_as_the_objective(monkeypatch):
    data, pre, _ = image_problem(n=30, classes=3, weighted=False)
    split = Split(np.arange(30, dtype=np.int64), np.zeros(0, np.int64))
    penalise_last = []
    real = lbfgs.Preconditioner.from_moment
    monkeypatch.setattr(lbfgs.Preconditioner, "from_moment",
                        lambda *args: penalise_last.append(args[-1]) or real(*args))
    for reg_bias, bias in ((False, True), (True, True), (False, False)):
        fitted = Preprocessor(pre.mean, pre.scale, bias=bias)
        lbfgs.fit_lbfgs(lbfgs_config(True, tol=1e-3, reg_bias=reg_bias), data.rows,
                        data.labels, split, fitted, np.zeros((3, fitted.n_features)))
    assert penalise_last == [False, True, True]  # the bias column only with loss.reg_bias
