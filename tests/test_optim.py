"""The optimizer against independent computations: steps by hand in plain Python, PyTorch's SGD
where it is installed, the schedules from their formulas, weight averaging as a hand average."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softmax_cls.config import AveragingConfig, load_config
from softmax_cls.math.optim import average_step, averaging_alphas, learning_rate, sgd_step


def steps_by_hand(w, grads, lr, momentum, nesterov, grad_clip):
    """Plain-Python floats, one coordinate list at a time: the update rule as written."""
    w, v = list(w), [0.0] * len(w)
    for g in grads:
        g = list(g)
        norm = math.sqrt(sum(x * x for x in g))
        if grad_clip is not None and norm > grad_clip:
            g = [x * grad_clip / norm for x in g]
        v = [momentum * vi + gi for vi, gi in zip(v, g, strict=True)]
        step = [gi + momentum * vi for gi, vi in zip(g, v, strict=True)] if nesterov else v
        w = [wi - lr * si for wi, si in zip(w, step, strict=True)]
    return w, v


GRADS = [[0.5, -1.0, 2.0, 0.25], [1.5, 0.5, -0.5, 1.0], [-2.0, 0.75, 1.0, -0.5]]


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("grad_clip", [None, 1.0, 100.0])
def test_three_steps_equal_the_rule_computed_by_hand(momentum, nesterov, grad_clip):
    w0 = [0.1, -0.2, 0.3, 0.05]
    W, velocity = np.array(w0), np.zeros(4)
    for g in GRADS:
        sgd_step(W, velocity, np.array(g), 0.1, momentum, nesterov, grad_clip)
    w_ref, v_ref = steps_by_hand(w0, GRADS, 0.1, momentum, nesterov, grad_clip)
    np.testing.assert_allclose(W, w_ref, rtol=0, atol=1e-15)
    np.testing.assert_allclose(velocity, v_ref, rtol=0, atol=1e-15)


def test_clipping_rescales_to_the_norm_and_only_above_it():
    W, velocity = np.zeros(2), np.zeros(2)
    grad = np.array([3.0, 4.0])  # norm 5
    sgd_step(W, velocity, grad, 1.0, 0.0, False, 2.5)
    np.testing.assert_allclose(W, [-1.5, -2.0])
    W, velocity = np.zeros(2), np.zeros(2)
    sgd_step(W, velocity, np.array([3.0, 4.0]), 1.0, 0.0, False, 5.0)
    np.testing.assert_allclose(W, [-3.0, -4.0])


def test_float32_weights_stay_float32():
    W, velocity = np.ones(3, np.float32), np.zeros(3, np.float32)
    sgd_step(W, velocity, np.ones(3, np.float32), 0.1, 0.9, True, 1.0)
    assert W.dtype == velocity.dtype == np.float32


def test_a_float32_step_is_computed_in_float32():
    """The same bits as the rule written out in float32: a product in float64, rounded once
    at the end, differs in about one weight in ten (and takes a float64 copy of W)."""
    rng = np.random.default_rng(3)
    W, grad = (rng.standard_normal(1000).astype(np.float32) for _ in range(2))
    expected = W - np.float32(0.1) * grad
    sgd_step(W, np.zeros_like(W), grad.copy(), 0.1, 0.0)
    np.testing.assert_array_equal(W, expected)


@pytest.mark.parametrize("nesterov", [False, True])
def test_steps_equal_pytorch_sgd(nesterov):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(6)
    grads = rng.standard_normal((4, 6))
    W, velocity = w0.copy(), np.zeros(6)
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = torch.optim.SGD([param], lr=0.05, momentum=0.9, nesterov=nesterov)
    for g in grads:
        sgd_step(W, velocity, g.copy(), 0.05, 0.9, nesterov)
        param.grad = torch.tensor(g)
        optimizer.step()
    np.testing.assert_allclose(W, param.detach().numpy(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name,formula", [
    ("constant", lambda e: 0.1),
    ("step", lambda e: 0.1 * 0.5 ** (e // 3)),
    ("exponential", lambda e: 0.1 * 0.5**e),
    ("cosine", lambda e: 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * e / 7)) / 2),
])
def test_schedules_follow_their_formulas(name, formula):
    optim = load_config(None, [f"optim.schedule.name={name}", "optim.lr=0.1", "optim.epochs=7",
                               "optim.schedule.gamma=0.5", "optim.schedule.step_size=3",
                               "optim.schedule.min_lr=0.01"]).optim
    for epoch in range(7):
        assert learning_rate(optim, epoch) == pytest.approx(formula(epoch), rel=1e-12)


def run_averaging(name: str, start: float, decay: float, weights: list[float],
                  steps_per_epoch: int, epochs: int) -> float:
    """The average after feeding the weights of each step through the alphas."""
    cfg = AveragingConfig(name=name, start=start, decay=decay)
    alphas = np.concatenate([averaging_alphas(cfg, e, steps_per_epoch, epochs)
                             for e in range(epochs)])
    average = 0.0
    for alpha, w in zip(alphas, weights, strict=True):
        if alpha:
            average += alpha * (w - average)
    return average


def test_uniform_averaging_is_the_plain_mean_from_the_start_fraction():
    weights = [float(w) for w in np.random.default_rng(1).standard_normal(12)]
    # 12 steps, start 0.5: the mean of the weights after steps 7..12 (indices 6..11)
    assert run_averaging("uniform", 0.5, 0.9, weights, 4, 3) == pytest.approx(
        sum(weights[6:]) / 6, rel=1e-12)
    assert run_averaging("uniform", 0.0, 0.9, weights, 4, 3) == pytest.approx(
        sum(weights) / 12, rel=1e-12)
    # start 0.3 is 3.6 steps: the weights after steps 4..12, each ending past 30 % of training
    assert run_averaging("uniform", 0.3, 0.9, weights, 4, 3) == pytest.approx(
        sum(weights[3:]) / 9, rel=1e-12)


def test_ema_averaging_is_the_moving_average_from_the_start_fraction():
    weights = [float(w) for w in np.random.default_rng(2).standard_normal(12)]
    expected = weights[5]  # before the start the average is the weights themselves
    for w in weights[6:]:
        expected = 0.8 * expected + 0.2 * w
    assert run_averaging("ema", 0.5, 0.8, weights, 4, 3) == pytest.approx(expected, rel=1e-12)


def test_no_averaging_leaves_the_average_alone():
    assert not averaging_alphas(AveragingConfig(name="none"), 0, 5, 3).any()


def test_the_default_step_is_heavy_ball_without_clipping():
    W, velocity = np.array([1.0, -1.0]), np.array([0.5, 0.5])
    sgd_step(W, velocity, np.array([30.0, 40.0]), 0.1, 0.5)
    np.testing.assert_allclose(velocity, [30.25, 40.25])
    np.testing.assert_allclose(W, [1.0 - 3.025, -1.0 - 4.025])


def test_average_step_moves_the_average_in_place_by_alpha_and_not_at_zero():
    W = np.array([[1.0, 2.0, -4.0], [0.5, 0.0, 8.0]], np.float32)
    average = np.array([[3.0, 2.0, 0.0], [0.5, -1.0, 4.0]], np.float32)
    before = average.copy()
    average_step(average, W, 0.0)
    np.testing.assert_array_equal(average, before)
    average_step(average, W, 0.25)
    np.testing.assert_allclose(average, before + 0.25 * (W - before), rtol=0, atol=1e-7)
    assert average.dtype == np.float32
    average_step(average, W, 1.0)
    np.testing.assert_array_equal(average, W)
