"""fit_lbfgs(): the exact optimum of the configured objective by full-batch L-BFGS.

The quasi-Newton iteration and its line search are SciPy's L-BFGS-B (what scikit-learn's
LogisticRegression(lbfgs) uses), on the flattened weights (C * D,) float64; the objective
and its gradient come from the engine's full_loss_and_grad (engines.contract): the mean
softmax cross-entropy over every training row (and every augmented view of it, when flips or
shifts are on) plus loss.reg * sum(W*W) over the penalised columns. It stops when the
gradient's max-norm is at most optim.tol, or after optim.max_iter iterations (one warning
line then). docs/lbfgs.md is the long form. Needs the optional extra `softmax-cls[lbfgs]`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import Config
from ..engines import get_engine
from ..engines.contract import Engine, StepRule, TrainingRows
from ..errors import SoftmaxClsError
from ..math.augment import augmented_views
from ..math.preprocess import Preprocessor, Split

LBFGS_INSTALL = 'pip install "softmax-cls[lbfgs]"'
# L-BFGS-B's other stopping rule, on the relative decrease of the loss: as scikit-learn sets
# it (64 machine epsilons), so that optim.tol on the gradient is what stops a fit.
FTOL = 64 * np.finfo(float).eps
MAX_LINE_SEARCH = 50  # as scikit-learn
# The dtype of the products while far from the optimum; the last iterations run in float64.
FAST_PRECISION = "float32"


class ConvergenceWarning(UserWarning):
    """L-BFGS stopped at optim.max_iter before the gradient's max-norm reached optim.tol."""


@dataclass
class LbfgsResult:
    """The solution W (C, D) float64, the iterations and loss-and-gradient evaluations made,
    the final loss and gradient max-norm, whether it reached the tolerance, and SciPy's
    message."""

    W: np.ndarray
    iterations: int
    evaluations: int
    loss: float
    grad_max: float
    converged: bool
    message: str

    def summary(self) -> dict:
        """What summary.json and the sweep record of a fit."""
        return {"solver": "lbfgs", **self.numbers(), "converged": self.converged}

    def numbers(self) -> dict:
        """The report as numbers only, as a checkpoint's history row holds it (converged 1
        or 0)."""
        return {"iterations": self.iterations, "evaluations": self.evaluations,
                "final_loss": self.loss, "grad_max": self.grad_max,
                "converged": int(self.converged)}


def require_scipy():
    """scipy.optimize, or one error line naming the extra."""
    try:
        from scipy import optimize
    except ImportError:
        raise SoftmaxClsError(f"optim.solver lbfgs needs SciPy: {LBFGS_INSTALL}") from None
    return optimize


def objective_views(config: Config) -> list[tuple[bool, int, int]]:
    """The augmented views (flip, dy, dx) the exact objective averages over: every copy the
    config's flips and shifts can make (only the image itself without augmentation)."""
    return augmented_views(bool(config.augment.hflip), int(config.augment.translate or 0))


def minimize(objective: Callable[[np.ndarray, str], tuple[float, np.ndarray]],
             W0: np.ndarray, tol: float, max_iter: int,
             on_iteration: Callable[[int, float, float], None] | None = None
             ) -> LbfgsResult:
    """L-BFGS-B from W0 (C, D) on objective(W (C, D) float64, precision) -> (loss, grad).

    The products run in FAST_PRECISION until that run stops (tolerance reached in float32,
    or the line search meeting float32's rounding in the loss), then L-BFGS continues from
    there in float64 until the float64 gradient's max-norm is at most `tol` (or max_iter
    iterations in all). on_iteration(iteration, loss, grad max-norm) after each iteration.
    """
    optimize = require_scipy()
    shape = W0.shape
    done = {"iterations": 0, "evaluations": 0}
    last: dict = {}

    def run(start: np.ndarray, precision: str, iterations_left: int):
        def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
            loss, grad = objective(flat.reshape(shape), precision)
            done["evaluations"] += 1
            last.update(loss=loss, grad=grad)
            return loss, grad.ravel()

        def callback(flat: np.ndarray) -> None:
            done["iterations"] += 1  # the iterate is the last point evaluated: its loss
            if on_iteration is not None:
                on_iteration(done["iterations"], last["loss"],
                             float(np.abs(last["grad"]).max()))

        return optimize.minimize(
            fun, start.ravel(), method="L-BFGS-B", jac=True, callback=callback,
            options={"maxiter": iterations_left, "gtol": tol, "ftol": FTOL,
                     "maxls": MAX_LINE_SEARCH})

    start = np.ascontiguousarray(W0, dtype=np.float64)
    if FAST_PRECISION != "float64":
        found = run(start, FAST_PRECISION, max_iter)
        start = found.x.reshape(shape)
    left = max_iter - done["iterations"]
    loss, grad = objective(start, "float64")
    done["evaluations"] += 1
    message = "" if FAST_PRECISION == "float64" else str(found.message)
    if float(np.abs(grad).max()) > tol and left > 0:
        found = run(start, "float64", left)
        start = found.x.reshape(shape)
        loss, grad = objective(start, "float64")
        done["evaluations"] += 1
        message = str(found.message)
    grad_max = float(np.abs(grad).max())
    return LbfgsResult(np.ascontiguousarray(start), done["iterations"], done["evaluations"],
                       float(loss), grad_max, grad_max <= tol, message)


def fit_lbfgs(config: Config, rows: np.ndarray, labels: np.ndarray, split: Split,
              pre: Preprocessor, W0: np.ndarray, *, sample_weight: np.ndarray | None = None,
              engine: Engine | None = None,
              on_iteration: Callable[[int, float, float], None] | None = None,
              warn: Callable[[str], None] | None = None) -> LbfgsResult:
    """Minimise the config's objective over rows[split.train_rows] from W0 (C, D).

    rows (N, P) uint8 pixels or float32 features (a memory map is fine: read chunk by
    chunk), labels (N,) int64, sample_weight (N,) or None. Starts at W0 (zeros for a new fit,
    the previous solution for a warm start). Not reaching optim.tol within optim.max_iter is
    one line given to `warn` (default: warnings.warn with ConvergenceWarning). Raises
    softmax.NonFiniteError when the objective stops being finite.
    """
    require_scipy()
    engine = (get_engine(config.engine, config.device, W0.shape[0]) if engine is None
              else engine)
    data = TrainingRows(rows, np.asarray(labels, dtype=np.int64),
                        None if sample_weight is None
                        else np.ascontiguousarray(sample_weight, dtype=np.float32))
    rule = StepRule.from_config(config, 1.0, pre.bias)
    views = objective_views(config)
    index = np.asarray(split.train_rows, dtype=np.int64)

    def objective(W: np.ndarray, precision: str) -> tuple[float, np.ndarray]:
        return engine.full_loss_and_grad(data, index, W, pre, rule, views,
                                         config.augment.padding, precision)

    optim = config.optim
    result = minimize(objective, W0, optim.tol, optim.max_iter, on_iteration)
    if not result.converged:
        line = not_converged_line(result, optim.max_iter, optim.tol)
        if warn is None:
            warnings.warn(line, ConvergenceWarning, stacklevel=2)
        else:
            warn(line)
    return result


def not_converged_line(result: LbfgsResult, max_iter: int, tol: float) -> str:
    """The one warning line of a fit that stopped short of tol: at max_iter, or earlier when
    the line search found no decrease."""
    if result.iterations >= max_iter:
        return (f"L-BFGS did not converge: {result.iterations} iterations (optim.max_iter "
                f"{max_iter}), gradient max-norm {result.grad_max:.3g} > optim.tol {tol:g}; "
                "raise optim.max_iter")
    status, _, detail = result.message.partition(":")
    if status.strip() == "ABNORMAL":  # SciPy's line search found no lower loss
        why = "the line search found no lower loss"
    else:
        why = (detail.strip() or status.strip()).lower() or "no reason given"
    return (f"L-BFGS did not converge: it stopped after {result.iterations} iterations "
            f"({why}) with gradient max-norm {result.grad_max:.3g} > optim.tol {tol:g}; "
            "huge or badly scaled features can cause it (preprocess.scale std), or "
            "optim.tol set below what float64 rounding of the loss allows")
