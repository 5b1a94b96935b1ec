"""Independent float64 references for the engines (the interface of
softmax_cls.engines.numpy_engine), written from the math with plain numpy: one minibatch's
loss and gradient, a whole epoch of SGD with momentum, clipping, L2 and averaging, the
augmented image; and random problems to run them on. Used by tests/test_engines.py (both
engines) and tests/test_kernels.py (the numba engine alone)."""

from __future__ import annotations

import numpy as np
import pytest

PAD_MODES = {0: "constant", 1: "edge", 2: "reflect"}


# ---------------------------------------------------------------------------------------------
# The independent reference


def augmented(image: np.ndarray, flip: bool, dy: int, dx: int, padding: int) -> np.ndarray:
    """(3072,) uint8: mirror left-right, then move by (dy, dx) with np.pad's padding."""
    planes = image.reshape(3, 32, 32)
    if flip:
        planes = planes[:, :, ::-1]
    if dy or dx:
        planes = np.pad(planes, ((0, 0), (8, 8), (8, 8)), PAD_MODES[padding])
        planes = planes[:, 8 - dy : 40 - dy, 8 - dx : 40 - dx]
    return planes.reshape(-1)


def reference_loss_and_grad(U, y, weight, W, mean, scale, has_bias, reg, reg_bias, clip):
    """float64 (loss, dW, correct, scores) of raw rows U (b, P) under W (C, D), by the book."""
    b = len(U)
    X = (U.astype(np.float64) - mean) * scale
    if has_bias:
        X = np.hstack([X, np.ones((b, 1))])
    S = X @ W.T
    Z = np.maximum(S - S.max(axis=1, keepdims=True), -clip)
    E = np.exp(Z)
    probs = E / E.sum(axis=1, keepdims=True)
    w = np.ones(b) if weight is None else weight.astype(np.float64)
    data_loss = np.sum(w * (np.log(E.sum(axis=1)) - Z[np.arange(b), y])) / b
    onehot = np.eye(W.shape[0])[y]
    dS = w[:, None] * (probs - onehot) / b
    penalised = np.ones(W.shape[1], dtype=bool)
    if has_bias and not reg_bias:
        penalised[-1] = False
    grad = dS.T @ X + 2 * reg * W * penalised
    loss = data_loss + reg * np.sum(W[:, penalised] ** 2)
    return loss, grad, int(np.sum(S.argmax(axis=1) == y)), S


def reference_epoch(rows, labels, order, sample_weight, flip, shift, padding, W, velocity,
                    average, avg_alpha, mean, scale, has_bias, batch_size, lr, momentum,
                    nesterov, grad_clip, reg, reg_bias, clip):
    """float64 copies of W, velocity, average after the epoch; loss_sum, correct, and how
    many steps the gradient clipping changed."""
    W, V, A = (a.astype(np.float64) for a in (W, velocity, average))
    mean, scale = mean.astype(np.float64), scale.astype(np.float64)
    loss_sum, correct, clipped = 0.0, 0, 0
    for step, start in enumerate(range(0, len(order), batch_size)):
        batch = order[start : start + batch_size]
        U = rows[batch]
        if len(flip) or len(shift):
            U = np.stack([augmented(rows[r], bool(flip[start + i]) if len(flip) else False,
                                    *(shift[start + i] if len(shift) else (0, 0)), padding)
                          for i, r in enumerate(batch)])
        weight = sample_weight[batch] if len(sample_weight) else None
        loss, g, right, _ = reference_loss_and_grad(U, labels[batch], weight, W, mean, scale,
                                                    has_bias, reg, reg_bias, clip)
        norm = np.sqrt(np.sum(g * g))
        if grad_clip > 0 and norm > grad_clip:
            g = g * (grad_clip / norm)
            clipped += 1
        V = momentum * V + g
        W = W - lr * (g + momentum * V if nesterov else V)
        if avg_alpha[step] != 0:
            A = A + avg_alpha[step] * (W - A)
        loss_sum += loss * len(batch)
        correct += right
    return W, V, A, loss_sum, correct, clipped


def problem(n_rows=23, n_features=40, n_classes=10, rows_dtype=np.float32, has_bias=True,
            seed=0, weighted=False):
    rng = np.random.default_rng(seed)
    if rows_dtype == np.uint8:
        rows = rng.integers(0, 256, size=(n_rows, n_features), dtype=np.uint8)
        mean = rng.uniform(100, 150, n_features).astype(np.float32)
        scale = rng.uniform(1 / 80, 1 / 50, n_features).astype(np.float32)
    else:
        rows = rng.standard_normal((n_rows, n_features)).astype(np.float32) * 3 + 1
        mean = rng.standard_normal(n_features).astype(np.float32)
        scale = rng.uniform(0.2, 0.5, n_features).astype(np.float32)
    labels = rng.integers(0, n_classes, n_rows)
    W = (rng.standard_normal((n_classes, n_features + int(has_bias))) * 0.1).astype(np.float32)
    weight = (rng.uniform(0.2, 2.0, n_rows).astype(np.float32) if weighted
              else np.zeros(0, np.float32))
    return rows, labels, W, mean, scale, weight


def run_engine(train_epoch, rows, labels, W, mean, scale, weight, *, order=None, flip=None,
               shift=None, padding=1, has_bias=True, batch_size=8, lr=0.05, momentum=0.0,
               nesterov=False, grad_clip=0.0, reg=0.0, reg_bias=False, clip=50.0, alphas=None,
               velocity=None):
    """(W, V, A, loss_sum, correct) after train_epoch (an engine's) and the reference's
    (float64 W, V, A, loss_sum, correct, steps clipped), on the same inputs."""
    n = len(rows) if order is None else len(order)
    order = np.random.default_rng(1).permutation(len(rows))[:n] if order is None else order
    flip = np.zeros(0, bool) if flip is None else flip
    shift = np.zeros((0, 2), np.int64) if shift is None else shift
    steps = -(-n // batch_size)
    alphas = np.zeros(steps) if alphas is None else alphas
    V = np.zeros_like(W) if velocity is None else velocity.copy()
    A = W * 0.5
    args = dict(sample_weight=weight, flip=flip, shift=shift, padding=padding, avg_alpha=alphas,
                mean=mean, scale=scale, has_bias=has_bias, batch_size=batch_size, lr=lr,
                momentum=momentum, nesterov=nesterov, grad_clip=grad_clip, reg=reg,
                reg_bias=reg_bias, clip=clip)
    expected = reference_epoch(rows, labels, order, W=W, velocity=V, average=A, **args)
    W_k, V_k, A_k = W.copy(), V.copy(), A.copy()
    loss_sum, correct = train_epoch(rows, labels, order, W=W_k, velocity=V_k, average=A_k,
                                    **args)
    return (W_k, V_k, A_k, loss_sum, correct), expected


def assert_close(actual, expected, rtol=2e-4):
    """An engine's epoch (run_engine's first result) equals the reference's within rtol."""
    W, V, A, loss_sum, correct = actual
    W_r, V_r, A_r, loss_r, correct_r, _ = expected
    for got, want in ((W, W_r), (V, V_r), (A, A_r)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
    assert loss_sum == pytest.approx(loss_r, rel=rtol)
    assert correct == correct_r
