"""The L-BFGS preconditioner: a change of variables W = V L^{-1} that makes the objective's
curvature near W = 0 the identity, so that L-BFGS needs far fewer iterations on correlated
features (CIFAR-10 pixels: about 260 iterations without it, under 20 with it).

At W = 0 every class has probability 1/C, and the Hessian of the mean softmax cross-entropy
is (I/C - 11^T/C^2) (x) S with S = (1/n) sum_i w_i x_i x_i^T the second moment of the
preprocessed rows x_i = [x_std, 1] (the bias column included; sample weights w_i divided by
the row count, as the objective divides them). Its non-zero eigenvalues over the classes are
1/C, so the curvature the preconditioner matches, per class row of W, is

    H0 = S / C + 2 * reg * Pen (+ a jitter on the diagonal)

with Pen the identity on the penalised columns (zero at an unpenalised bias column). With
H0 = L L^T (Cholesky, L lower), W = V L^{-1} gives f(V L^{-1}) the curvature L^{-1} H0 L^{-T}
= I per class row. The gradient with respect to V is grad_W L^{-T}; a start W0 maps to
V0 = W0 L. The optimum W is unchanged: this is a reparametrisation, not a different
objective. docs/lbfgs.md is the long form.

S is estimated on SAMPLE_ROWS of the objective's rows (pairs of a training row and one of its
augmented views) drawn with a fixed seed, in float32 products summed to float64: a few
evaluations' worth of work at most. A regularisation path computes it once and refactors H0
per reg value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.numpy_engine import one_blas_thread
from ..math.augment import apply_view
from ..math.preprocess import Preprocessor

SAMPLE_ROWS = 4096  # rows of the estimate of S: enough that S has full rank at D <= 4096
SAMPLE_SEED = 0
# Added to H0's diagonal, relative to its mean diagonal entry: float32 rounding of S may leave
# it a little indefinite where the rows are (nearly) collinear and the column unpenalised
JITTER = 1e-6
JITTER_TRIES = 12  # each ten times the last; then the identity (no preconditioning)


def second_moment(rows: np.ndarray, index: np.ndarray, pre: Preprocessor,
                  sample_weight: np.ndarray | None = None,
                  views: list | tuple = ((False, 0, 0),), padding: str = "edge",
                  sample_rows: int = SAMPLE_ROWS, seed: int = SAMPLE_SEED) -> np.ndarray:
    """S (D, D) float64: the weighted second moment (1/m) sum_j w_j x_j x_j^T of m =
    min(sample_rows, len(index) * len(views)) preprocessed augmented rows x_j =
    pre.transform(view v_j of rows[i_j]) (D values, the bias column included), the pairs
    (i_j, v_j) of a row of rows[index] and one of `views` drawn without replacement (fixed
    seed; every pair when there are at most sample_rows). rows (N, P) uint8 or float32;
    sample_weight (N,) or None (all ones). float32 products, float64 result."""
    index = np.asarray(index, dtype=np.int64)
    pairs = len(index) * len(views)
    m = min(sample_rows, pairs)
    picked = (np.sort(np.random.default_rng(seed).choice(pairs, m, replace=False))
              if m < pairs else np.arange(pairs))
    chosen, which = index[picked // len(views)], picked % len(views)
    raw = np.asarray(rows[chosen])
    for v, view in enumerate(views):
        if view != (False, 0, 0) and np.any(which == v):
            raw[which == v] = apply_view(raw[which == v], view, padding)
    X = pre.transform(raw, np.float32)
    if sample_weight is not None:  # a negative weight (no sense, but allowed) counts as 0
        X *= np.sqrt(np.maximum(np.asarray(sample_weight, dtype=np.float32)[chosen], 0))[:, None]
    # each column divided by its largest magnitude first: unscaled features of 1e18 would
    # overflow float32's products (their squares summed), and S is scaled back in float64
    column_scale = np.abs(X).max(axis=0).astype(np.float64)
    column_scale[column_scale == 0] = 1.0
    X /= column_scale.astype(np.float32)
    # numpy makes X.T @ X one symmetric product (syrk), on one BLAS thread: on two busy
    # cores OpenBLAS's two threads waited on each other (up to 0.2 s against 2 ms at D = 129),
    # and at CIFAR's 3,073 features one thread was as fast (docs/development.md, 2026-12-07)
    with one_blas_thread():
        S = (X.T @ X).astype(np.float64)
    S *= np.outer(column_scale, column_scale) / max(m, 1)
    return (S + S.T) / 2  # exactly symmetric, whatever the product's rounding


@dataclass(frozen=True)
class Preconditioner:
    """L (D, D) float64 lower triangular, H0 = L L^T: the maps between the weights W (C, D)
    and L-BFGS's variables V (C, D), W = V L^{-1}, all float64."""

    L: np.ndarray

    @classmethod
    def from_moment(cls, S: np.ndarray, n_classes: int, reg: float,
                    penalise_last: bool) -> Preconditioner:
        """The factor of H0 = S / n_classes + 2 reg Pen + jitter, Pen the identity on every
        column but the last unless `penalise_last`. S (D, D) from second_moment."""
        from scipy.linalg import LinAlgError, cholesky

        D = len(S)
        H = S / n_classes
        penalty = np.full(D, 2.0 * reg)
        if not penalise_last:
            penalty[-1] = 0.0
        H[np.diag_indices(D)] += penalty
        jitter = JITTER * max(float(np.trace(H)) / D, np.finfo(float).tiny)
        for _ in range(JITTER_TRIES):
            try:
                # OpenBLAS's threaded factor and solves round by the thread count (measured at
                # D = 600 to 3073): one thread, so that --threads never changes a fit
                with one_blas_thread():
                    L = cholesky(H + jitter * np.eye(D), lower=True, check_finite=False)
            except LinAlgError:  # float32 rounding made S indefinite by more than jitter
                jitter *= 10
                continue
            if np.isfinite(L).all():
                return cls(L)
            break
        return cls(np.eye(D))  # no usable factor: the plain iteration, W = V

    def weights(self, V: np.ndarray) -> np.ndarray:
        """W = V L^{-1} (C, D) of variables V (C, D)."""
        from scipy.linalg import solve_triangular

        with one_blas_thread():
            return solve_triangular(self.L, V.T, lower=True, trans="T", check_finite=False).T

    def variables(self, W: np.ndarray) -> np.ndarray:
        """V = W L (C, D): the variables whose weights are W (a warm start)."""
        with one_blas_thread():
            return W @ self.L

    def gradient(self, grad_W: np.ndarray) -> np.ndarray:
        """The gradient with respect to V (C, D), grad_W L^{-T}, of the gradient with respect
        to W (C, D)."""
        from scipy.linalg import solve_triangular

        with one_blas_thread():
            return solve_triangular(self.L, grad_W.T, lower=True, check_finite=False).T

