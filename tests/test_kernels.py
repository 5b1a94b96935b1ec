"""What only the numba engine (softmax_cls.engines.numba_engine) has: the augmented image it
gathers, bit-identical results whatever the thread count, the thread governor at work, epochs
in calls of a few steps, non-finite detection, input checks, memory-mapped rows, the compile
cache, and no read out of bounds (NUMBA_BOUNDSCHECK). The math of both engines against the
float64 reference (tests/engine_reference.py) is in test_engines.py. Skipped without numba."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# ImportError without numba: skip
kernels = pytest.importorskip("softmax_cls.engines.numba_engine.api")
numba = pytest.importorskip("numba")

from engine_reference import problem as contract_problem  # noqa: E402

from softmax_cls.engines.governor import ThreadGovernor  # noqa: E402
from softmax_cls.engines.numba_engine import cache  # noqa: E402
from softmax_cls.math.softmax import NonFiniteError  # noqa: E402

PAD_MODES = {0: "constant", 1: "edge", 2: "reflect"}


def problem(**kwargs):
    """engine_reference.problem as the kernels' flat arguments: (rows, labels, W, mean and
    scale (P,) float32, sample_weight (N,) float32 or (0,))."""
    p = contract_problem(**kwargs)
    mean, scale = p.pre.vectors(np.float32)
    weight = np.zeros(0, np.float32) if p.sample_weight is None else p.sample_weight
    return p.rows, p.labels, p.W, mean.copy(), scale.copy(), weight


def augmented(image: np.ndarray, flip: bool, dy: int, dx: int, padding: int) -> np.ndarray:
    """(3072,) uint8 by np.pad, the independent oracle of the gather's augmentation: mirror
    left-right, then move by (dy, dx) with the padding's mode."""
    planes = image.reshape(3, 32, 32)
    if flip:
        planes = planes[:, :, ::-1]
    if dy or dx:
        planes = np.pad(planes, ((0, 0), (8, 8), (8, 8)), PAD_MODES[padding])
        planes = planes[:, 8 - dy : 40 - dy, 8 - dx : 40 - dx]
    return planes.reshape(-1)


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
# The tile kernels, the scores in both register layouts (the machine runs one)


SCORE_LAYOUTS = ["_tile_scores_eight_rows", "_tile_scores_four_rows"]


@pytest.mark.parametrize("layout", SCORE_LAYOUTS)
@pytest.mark.parametrize("n_classes", [1, 2, 3, 10])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 8])
def test_tile_scores_of_either_layout_against_float64_products(layout, n_classes, n):
    """S[i:i+n, c] (+)= tile[:n, :m] . W[c, j0:j0+m]: every real row and class against the
    float64 product, the rows past n and the columns outside the tile untouched."""
    from softmax_cls.engines.numba_engine import step

    kernel = getattr(step, layout)
    rng = np.random.default_rng(n_classes * 10 + n)
    m, j0, i = 37, 5, 2
    tile = rng.standard_normal((step.TILE_ROWS, 64)).astype(np.float32)
    tile[n:] = 0  # a short tile's rows past n are zero, as _tile makes them
    W = rng.standard_normal((n_classes, j0 + m + 3)).astype(np.float32)
    expected = tile[:n, :m].astype(np.float64) @ W[:, j0:j0 + m].T.astype(np.float64)
    for add in (False, True):
        S = np.full((i + step.TILE_ROWS + 2, n_classes), 7.0, np.float32)
        kernel(tile, m, W, j0, S, i, n, add, np.float32(0))
        np.testing.assert_allclose(S[i:i + n], expected + (7.0 if add else 0.0),
                                   rtol=1e-5, atol=1e-5)
        assert (S[:i] == 7).all() and (S[i + n:] == 7).all()


@pytest.mark.parametrize("n_classes", [1, 2, 3, 10])
@pytest.mark.parametrize("n", [1, 5, 8])
def test_tile_gradient_against_float64_sums(n_classes, n):
    """acc[c, :m] += sum over the tile's n real rows r of dS[i + r, c] * tile[r, :m], against
    the float64 sums; the columns past m untouched."""
    from softmax_cls.engines.numba_engine import step

    rng = np.random.default_rng(n_classes * 10 + n + 1)
    m, i = 37, 3
    tile = rng.standard_normal((step.TILE_ROWS, 40)).astype(np.float32)
    tile[n:] = 0
    dS = rng.standard_normal((i + step.TILE_ROWS, n_classes)).astype(np.float32)
    acc = rng.standard_normal((n_classes, 40)).astype(np.float32)
    expected = acc[:, :m].astype(np.float64) + (dS[i:i + n].astype(np.float64).T
                                                 @ tile[:n, :m].astype(np.float64))
    before = acc.copy()
    step._tile_grad(tile, dS, i, n, m, acc, np.float32(0))
    np.testing.assert_allclose(acc[:, :m], expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(acc[:, m:], before[:, m:])


def exp_of(x: np.ndarray) -> np.ndarray:
    """expo.exp_into over all of x (float64), into a fresh buffer."""
    from softmax_cls.engines.numba_engine import expo

    out = np.empty_like(x)
    expo.exp_into(x, out, len(x), *expo.exp_scratch(len(x)))
    return out


def test_exp_into_is_within_an_ulp_of_numpys_exp():
    """The softmax's vectorised exp against numpy's on 10^6 points of every range a max-shifted
    score takes: at most 1 ulp apart where the result is normal, at most 1 subnormal step
    where it is subnormal (below -708.4), in-range points near the reduction's boundaries
    (x / ln2 half-way between integers) included."""
    rng = np.random.default_rng(5)
    boundaries = (np.arange(-1074, 1) + 0.5) * np.log(2)
    x = np.concatenate([-rng.random(400_000) * 50, -rng.random(400_000) * 760,
                        -rng.random(100_000) * 1e-6, boundaries[boundaries <= 0],
                        np.nextafter(boundaries[boundaries <= 0], 0)])
    got, expected = exp_of(x), np.exp(x)
    normal = expected >= np.finfo(np.float64).tiny
    assert normal.sum() > 800_000 and (~normal).sum() > 10_000
    ulps = np.abs(got - expected)[normal] / np.spacing(expected[normal])
    assert ulps.max() <= 1
    assert np.abs(got - expected)[~normal].max() <= np.finfo(np.float64).smallest_subnormal


def test_exp_into_at_the_ends_of_its_range():
    """exp(0) and exp(-0) are 1 exactly; -745.2 and below, any clip however large and -inf
    give 0; the smallest subnormal comes out where numpy gives it; only the first n values
    are written."""
    x = np.array([0.0, -0.0, -5e-324, -745.1, -745.2, -746.0, -1e4, -1e300, -np.inf, -1.0])
    got = exp_of(x)
    assert got[0] == 1.0 and got[1] == 1.0 and got[2] == 1.0
    assert got[3] == np.exp(-745.1) == np.finfo(np.float64).smallest_subnormal
    assert (got[4:9] == 0).all()
    assert got[9] == pytest.approx(np.exp(-1.0), rel=2e-16)

    from softmax_cls.engines.numba_engine import expo

    out = np.full(5, 7.0)
    expo.exp_into(np.zeros(5), out, 3, *expo.exp_scratch(5))
    assert out.tolist() == [1.0, 1.0, 1.0, 7.0, 7.0]


@pytest.mark.parametrize("features, machine, registers", [
    ("+avx,+avx2,+fma,-avx512f", "x86_64", 16),
    ("+avx,+avx2,+fma,+avx512f,+avx512vl", "x86_64", 32),
    ("+sse2", "AMD64", 16),
    ("+neon", "aarch64", 32),
])
def test_the_tile_layout_follows_the_vector_registers(monkeypatch, features, machine,
                                                      registers):
    """16 registers (x86 without AVX-512) take the four-row score tiles; 32 keep two classes
    of eight rows. The features are numba's (NUMBA_CPU_FEATURES here)."""
    from softmax_cls.engines.numba_engine import step

    monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
    monkeypatch.setattr(step.platform, "machine", lambda: machine)
    assert step.vector_registers() == registers
    code = ("from softmax_cls.engines.numba_engine import step\n"
            "print(step._tile_scores.py_func.__name__)")
    if machine == "x86_64":  # the module's choice, made at import
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "NUMBA_CPU_FEATURES": features},
                             timeout=120, check=True).stdout.split()
        assert out == [SCORE_LAYOUTS[0] if registers == 32 else SCORE_LAYOUTS[1]]


# ---------------------------------------------------------------------------------------------
# Determinism, errors, predictions, the gradient check


@pytest.mark.parametrize("n_features", [1, 63, 64, 65, 255, 256, 257, 3072])
@pytest.mark.parametrize("n_classes", [3, 10, 200])
@pytest.mark.parametrize("has_bias", [True, False])
def test_fold_in_blocks_is_the_preprocessors_and_any_block_order_gives_the_same_bits(
        n_features, n_classes, has_bias):
    """The update regions fold the next step's weights block by block, the blocks in
    whatever order the threads reach them; the per-block sums are added in block order."""
    from softmax_cls.engines.numba_engine import step
    from softmax_cls.math.preprocess import Preprocessor

    rng = np.random.default_rng(n_features + n_classes)
    W = rng.standard_normal((n_classes, n_features + has_bias)).astype(np.float32)
    mean = rng.uniform(0, 255, n_features).astype(np.float32)
    scale = rng.uniform(0.001, 0.01, n_features).astype(np.float32)
    W_fold, bias_fold = np.empty((n_classes, n_features), np.float32), np.empty(n_classes,
                                                                                np.float32)
    step.fold(W, mean, scale, has_bias, W_fold, bias_fold)
    reference = Preprocessor(mean.astype(np.float64), scale.astype(np.float64),
                             bias=has_bias).fold(W.astype(np.float64))
    np.testing.assert_allclose(W_fold, reference[:, :n_features], rtol=1e-6)
    np.testing.assert_allclose(bias_fold, reference[:, n_features], rtol=1e-5, atol=1e-5)
    width = step.block_width(n_classes)
    count = step.block_count(n_classes, n_features)
    assert count == max(1, -(-n_features // width))
    blocked, parts = np.full_like(W_fold, np.nan), np.full((count, n_classes), np.nan)
    for block in reversed(range(count)):
        step.fold_columns(W, mean, scale, blocked, block * width,
                          min(n_features, (block + 1) * width), parts[block])
    blocked_bias = np.empty_like(bias_fold)
    step.fold_bias(W, has_bias, parts, blocked_bias)
    assert np.array_equal(blocked, W_fold) and np.array_equal(blocked_bias, bias_fold)


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


def test_train_epoch_runs_on_the_thread_count_the_governor_picks(monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba runs with one thread here (NUMBA_NUM_THREADS)")
    seconds = iter([0.0, 0.9, 1.0, 1.2, 2.0, 2.9])  # 0.9 s on 2 threads, 0.2 s on 1, 0.9 s
    governor = ThreadGovernor(numba.get_num_threads, numba.set_num_threads,
                              clock=lambda: next(seconds, 3.0))
    monkeypatch.setattr(kernels, "THREAD_GOVERNOR", governor)
    threads_seen = []
    real_kernel = kernels.train_epoch_kernel

    def spy(*args):
        threads_seen.append(numba.get_num_threads())
        return real_kernel(*args)

    monkeypatch.setattr(kernels, "train_epoch_kernel", spy)
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


def test_weights_that_overflow_in_the_last_step_of_a_call_raise():
    """The scores of the one step are finite (W starts at zero); its update is not."""
    rows, labels, W, mean, scale, weight = problem(seed=15)
    W = np.zeros_like(W)
    with pytest.raises(NonFiniteError, match="non-finite weights"):
        kernels.train_epoch(rows, labels, np.arange(8), weight, np.zeros(0, bool),
                            np.zeros((0, 2), np.int64), 0, W, np.zeros_like(W),
                            np.zeros_like(W), np.zeros(1), mean, scale * 1e3, True, 8, 1e38,
                            0.0, False, 0.0, 0.0, False, 50.0)


def test_non_finite_rows_raise():
    rows, labels, W, mean, scale, weight = problem(seed=16)
    rows[3, 2] = np.inf
    with pytest.raises(NonFiniteError, match="non-finite scores"):
        kernels.batch_loss_and_grad(rows, labels, weight, W, mean, scale, True, 0.0, False, 50.0)


def epoch_arguments(**changes):
    """train_epoch's arguments for a small float32 problem (23 rows, 40 features, 10
    classes), with `changes` made."""
    rows, labels, W, mean, scale, weight = problem(seed=25)
    arguments = dict(rows=rows, labels=labels, order=np.arange(23), sample_weight=weight,
                     flip=np.zeros(0, bool), shift=np.zeros((0, 2), np.int64), padding=0, W=W,
                     velocity=np.zeros_like(W), average=np.zeros_like(W), avg_alpha=np.zeros(3),
                     mean=mean, scale=scale, has_bias=True, batch_size=8, lr=0.1, momentum=0.0,
                     nesterov=False, grad_clip=0.0, reg=0.0, reg_bias=False, clip=50.0)
    arguments.update(changes)
    return arguments


IMAGES = np.zeros((23, 3072), np.uint8)
READ_ONLY_W = np.zeros((10, 41), np.float32)
READ_ONLY_W.flags.writeable = False


@pytest.mark.parametrize("changes, message", [
    (dict(order=np.array([0, 23])), r"order must index rows in \[0, 23\)"),
    (dict(order=np.array([-1, 0])), r"order must index rows"),
    (dict(order=np.zeros((2, 2), np.int64)), "order must be 1-d"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(avg_alpha=np.zeros(2)), r"avg_alpha must have shape \(3,\)"),
    (dict(sample_weight=np.ones(5, np.float32)), "sample_weight must have shape"),
    (dict(padding=3), "padding must be 0"),
    (dict(flip=np.zeros(23, bool)), "augmentation needs image rows"),
    (dict(rows=np.zeros((23, 40), np.uint8), flip=np.zeros(23, bool)),
     "augmentation needs image rows"),  # uint8, but not 32x32x3: gathered out of bounds
    (dict(rows=IMAGES, mean=np.zeros(3072, np.float32), scale=np.ones(3072, np.float32),
          W=np.zeros((10, 3073), np.float32), velocity=np.zeros((10, 3073), np.float32),
          average=np.zeros((10, 3073), np.float32), shift=np.full((23, 2), 9)),
     r"shift must lie in \[-8, 8\]"),
    (dict(W=np.zeros((10, 40), np.float32)), r"W must be \(C, 41\)"),
    (dict(W=READ_ONLY_W), "W must be C-contiguous and writable"),
    (dict(velocity=np.zeros((10, 40), np.float32)), "velocity must be"),
    (dict(mean=np.zeros(39, np.float32)), r"mean must have shape \(40,\)"),
])
def test_bad_arguments_are_refused_before_any_step(changes, message):
    arguments = epoch_arguments(**changes)
    W_before = arguments["W"].copy()
    with pytest.raises(ValueError, match=message):
        kernels.train_epoch(**arguments)
    np.testing.assert_array_equal(arguments["W"], W_before)


def test_shifts_up_to_eight_pixels_are_taken():
    arguments = epoch_arguments(rows=IMAGES, mean=np.zeros(3072, np.float32),
                                scale=np.ones(3072, np.float32),
                                W=np.zeros((10, 3073), np.float32),
                                velocity=np.zeros((10, 3073), np.float32),
                                average=np.zeros((10, 3073), np.float32),
                                shift=np.tile([[8, -8]], (23, 1)))
    assert kernels.train_epoch(**arguments)[1] >= 0


@pytest.mark.parametrize("bad_label", [-1, 10])  # 10 = the class count: one row past W
def test_labels_outside_the_classes_are_refused(bad_label):
    rows, labels, W, mean, scale, weight = problem(seed=24)
    labels[5] = bad_label
    W_before = W.copy()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        kernels.train_epoch(rows, labels, np.arange(23), weight, np.zeros(0, bool),
                            np.zeros((0, 2), np.int64), 0, W, np.zeros_like(W),
                            np.zeros_like(W), np.zeros(3), mean, scale, True, 8, 0.1, 0.0,
                            False, 0.0, 0.0, False, 50.0)
    np.testing.assert_array_equal(W, W_before)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
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




def test_no_rows_score_as_no_rows_of_the_classes_and_have_no_batch_gradient():
    rows, labels, W, mean, scale, weight = problem(seed=26)
    assert kernels.predict_scores(rows[:0], W, mean, scale, True).shape == (0, 10)
    with pytest.raises(ValueError, match="at least one row"):
        kernels.batch_loss_and_grad(rows[:0], labels[:0], weight[:0], W, mean, scale, True,
                                    0.0, False, 50.0)


# ---------------------------------------------------------------------------------------------
# Compilation cache and the missing extra


def test_kernels_are_compiled_after_use():
    rows, labels, W, mean, scale, weight = problem(rows_dtype=np.uint8, seed=20)
    kernels.train_epoch(rows, labels, np.arange(len(rows)), weight, np.zeros(0, bool),
                        np.zeros((0, 2), np.int64), 1, W, np.zeros_like(W), W.copy(),
                        np.zeros(3), mean, scale, True, 8, 0.01, 0.0, False, 0.0, 0.0, False,
                        50.0)
    kernels.predict_scores(rows, W, mean, scale, True)
    assert kernels.kernels_are_compiled(np.uint8) is True


@pytest.mark.parametrize("missing", ["train_epoch_kernel", "predict_kernel"])
def test_kernels_are_compiled_only_when_both_are(monkeypatch, missing):
    """A run trains and scores: either kernel left to compile is seconds before the first
    epoch."""
    monkeypatch.setattr(kernels, "_is_compiled",
                        lambda kernel, args: kernel is not getattr(kernels, missing))
    assert kernels.kernels_are_compiled(np.uint8) is False


def test_cache_folder_when_the_package_folder_is_read_only(monkeypatch, tmp_path):
    # a copy of the environment: the NUMBA_CACHE_DIR the call sets must not outlive the test
    # (numba would compile every kernel again for the console scripts run after it)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    cache.cache_dir_for_numba()
    expected = str(tmp_path / "softmax-cls" / "numba")
    assert os.environ["NUMBA_CACHE_DIR"] == expected
    assert numba.config.CACHE_DIR == expected


@pytest.mark.parametrize("package, pycache, moved", [(True, True, False), (True, False, True),
                                                   (False, True, True)])
def test_cache_folder_moves_unless_the_package_and_its_pycache_are_writable(
        monkeypatch, tmp_path, package, pycache, moved):
    folder = Path(cache.__file__).resolve().parent
    if not (folder / "__pycache__").is_dir():
        pytest.skip("no __pycache__ in the package folder")
    # a copy of the environment: the NUMBA_CACHE_DIR the call sets must not outlive the test
    # (numba would compile every kernel again for the console scripts run after it)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)
    writable = {folder: package, folder / "__pycache__": pycache}
    monkeypatch.setattr(os, "access", lambda path, mode: writable[Path(path)])
    cache.cache_dir_for_numba()
    assert os.environ.get("NUMBA_CACHE_DIR") == (
        str(tmp_path / "softmax-cls" / "numba") if moved else None)


def test_the_source_digest_changes_with_any_name_or_content_of_the_py_files(tmp_path):
    """What makes the cached kernels stale: a renamed module, a line moved from one module
    to the next (the same bytes in a row), an edit; not a file of another kind."""
    def digest(files: dict[str, str]) -> str:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        return cache.source_digest(folder)

    base = {"entry.py": "a = 1\nb = 2\n", "step.py": "c = 3\n"}
    assert digest(base) == digest({**base, "notes.txt": "x"})
    assert len({digest(base), digest({"entry.py": base["entry.py"], "steps.py": "c = 3\n"}),
                digest({"entry.py": "a = 1\n", "step.py": "b = 2\nc = 3\n"}),
                digest({**base, "step.py": "c = 4\n"})}) == 4


def test_user_cache_folder_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    cache.cache_dir_for_numba()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")


def test_import_without_numba_is_an_import_error():
    code = ("import sys; sys.modules['numba'] = None\n"
            "try:\n    import softmax_cls.engines.numba_engine.api\n"
            "except ImportError:\n    print('ImportError')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == "ImportError"


# ---------------------------------------------------------------------------------------------
# No read out of bounds: a read past a tile's rows would be masked, so let numba check


# The sweeps of sizes around every tile, chunk and block size (test_engines.py), the
# gathered images and memory-mapped predictions: every compiled entry point, with the
# minibatch, tile and chunk remainders. Only the numba engine's parameters of test_engines.py:
# the numpy and torch ones call no compiled code (and torch's would skip without torch).
BOUNDSCHECKED = ("numba and (sizes or test_predict_scores) or test_padding_content"
                 " or test_kernels.py and test_predict_scores")


@pytest.mark.slow
def test_no_read_out_of_bounds(tmp_path):
    """The tests above and the sizes of test_engines.py, compiled with NUMBA_BOUNDSCHECK=1
    into a private cache (numba's cache index does not tell bounds-checked code apart)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(root),
                                                       os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                          "-n", "0",  # one process, inside this test's worker
                          "tests/test_engines.py", "tests/test_kernels.py", "-k", BOUNDSCHECKED],
                         capture_output=True, text=True, cwd=root, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " skipped" not in out.stdout, out.stdout[-3000:]


def test_every_scripted_kernel_mutant_still_applies():
    """scripts/mutate_kernels.py's breaks name text of the kernels; one whose text moved (an
    edit, a rename) would stop the script before any mutant runs, unnoticed until then."""
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        import mutate_kernels
    finally:
        sys.path.remove(str(scripts))
    names = [mutant.name for mutant in mutate_kernels.MUTANTS]
    assert len(names) == len(set(names))
    for mutant in mutate_kernels.MUTANTS:
        mutate_kernels.apply(mutant, None)  # SystemExit unless its text is there once
