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

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..config import Config
from ..engines import get_engine
from ..engines.contract import Engine, StepRule, TrainingRows
from ..engines.numpy_engine import one_blas_thread
from ..errors import SoftmaxClsError
from ..math.augment import augmented_views
from ..math.preprocess import Preprocessor, Split
from ..text import counted
from .precondition import Preconditioner, second_moment

LBFGS_INSTALL = 'pip install "softmax-cls[lbfgs]"'
# L-BFGS-B's other stopping rule, on the relative decrease of the loss: as scikit-learn sets
# it (64 machine epsilons), so that optim.tol on the gradient is what stops a fit.
FTOL = 64 * np.finfo(float).eps
MAX_LINE_SEARCH = 50  # as scikit-learn
# The float32 run's: where float32 rounding in the loss stops the line search finding a
# decrease, each try is an evaluation wasted before the float64 run takes over
MAX_LINE_SEARCH_FAST = 5
# Points a line search evaluated, the last asked kept longest, by a digest of their bytes: when
# its steps shrink to the weights' rounding, SciPy asks again for one of its last trials
RECENT_POINTS = 4
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


class _StartMeetsTol(Exception):
    """The first point of a run already meets the tolerance: no iteration to make."""


class _FastLineSearchFailed(Exception):
    """A float32 line search found no acceptable point: the float64 run takes over from the
    last accepted iterate."""


TOL_MESSAGE = "CONVERGENCE: GRADIENT MAX-NORM <= OPTIM.TOL"
FAST_FAILED_MESSAGE = "ABNORMAL: THE FLOAT32 LINE SEARCH FAILED"
MAX_ITER_MESSAGE = "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"  # SciPy's words


def minimize(objective: Callable[[np.ndarray, str], tuple[float, np.ndarray]],
             W0: np.ndarray, tol: float, max_iter: int,
             on_iteration: Callable[[int, float, float, np.ndarray], None] | None = None,
             precondition: Preconditioner | None = None) -> LbfgsResult:
    """L-BFGS-B from W0 (C, D) on objective(W (C, D) float64, precision) -> (loss, grad).

    With `precondition`, L-BFGS-B's variables are V = W L (precondition.variables), the
    weights W = V L^{-1} and the gradient it sees grad_W L^{-T}; without, V = W. Either way it
    stops when the max-norm of the gradient with respect to W is at most `tol` (SciPy's own
    test, on V's gradient, is off: gtol 0; the callback stops it), checked after every
    iteration and at the start.

    The products run in FAST_PRECISION until that run stops (tolerance reached in float32,
    or its first line search that fails: float32 rounding in the loss), then L-BFGS continues
    in float64 from the last iterate the float32 run accepted, until the float64 gradient's
    max-norm is at most `tol` (or max_iter iterations in all); the float64 run keeps SciPy's
    whole line search, its restart along the steepest descent included. on_iteration(
    iteration, loss, grad max-norm, W (C, D) float64) after each iteration, with the iterate
    it accepted (what an interrupted run keeps). The result's message says what ended the
    fit: TOL_MESSAGE when it converged.
    """
    optimize = require_scipy()
    shape = W0.shape
    to_weights = (lambda V: V) if precondition is None else precondition.weights
    to_gradient = (lambda G: G) if precondition is None else precondition.gradient
    done = {"iterations": 0, "evaluations": 0}
    last: dict = {}  # the last point evaluated
    kept: dict = {}  # the run's last accepted iterate (or its start), where it may end

    recent: OrderedDict = OrderedDict()  # (precision, V's digest) -> (loss, grad)

    def evaluate(V: np.ndarray, precision: str) -> tuple[float, np.ndarray]:
        """The loss and W's gradient at V, remembered: a run's first point is the previous
        run's last, and a point SciPy asks for again (the iterate, when a line search's step
        is too short to move; one of the last RECENT_POINTS trials) is evaluated once."""
        if kept.get("precision") == precision and np.array_equal(kept["V"], V):
            last.update(kept)
            return kept["loss"], kept["grad"]
        key = (precision, hashlib.blake2b(V.tobytes(), digest_size=16).digest())
        if key in recent:
            recent.move_to_end(key)
            loss, grad = recent[key]
        else:
            loss, grad = objective(to_weights(V), precision)
            done["evaluations"] += 1
            recent[key] = loss, grad
            if len(recent) > RECENT_POINTS:
                recent.popitem(last=False)
        last.update(V=V.copy(), precision=precision, loss=loss, grad=grad)
        return loss, grad

    def run(start: np.ndarray, precision: str, iterations_left: int) -> tuple[np.ndarray, str]:
        """L-BFGS-B from the variables `start` (C, D): (its last accepted iterate, SciPy's
        message or FAST_FAILED_MESSAGE)."""
        line_search = MAX_LINE_SEARCH if precision == "float64" else MAX_LINE_SEARCH_FAST
        fast = precision != "float64"
        calls = [0]
        tries = [0]  # evaluations since the last accepted iterate (or the start)

        def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
            # SciPy evaluates at most maxls points per line search and restores the last
            # iterate when none will do; with a memory it then starts again along the
            # steepest descent. A point past maxls is that restart: in float32 the failure is
            # float32's rounding in the loss, and the float64 run takes over at once. (A
            # point asked twice in a row reaches no fun, SciPy's cache answers: uncounted,
            # the restart is then caught a try later.)
            if fast and tries[0] >= line_search:
                raise _FastLineSearchFailed
            loss, grad = evaluate(flat.reshape(shape), precision)
            calls[0] += 1
            if calls[0] == 1:
                kept.update(last)
                if float(np.abs(grad).max()) <= tol:
                    raise _StartMeetsTol
            else:
                tries[0] += 1
            return loss, to_gradient(grad).ravel()

        def callback(intermediate_result) -> None:
            tries[0] = 0  # the iterate is the last point evaluated: its loss
            kept.update(last)
            done["iterations"] += 1
            grad_max = float(np.abs(last["grad"]).max())
            if on_iteration is not None:
                on_iteration(done["iterations"], last["loss"], grad_max,
                             to_weights(last["V"]))
            if grad_max <= tol:
                raise StopIteration

        try:
            found = optimize.minimize(
                fun, start.ravel(), method="L-BFGS-B", jac=True, callback=callback,
                # maxfun: SciPy's own cap (15,000 evaluations) would stop a long fit short of
                # optim.max_iter; every iteration's line search fits in this one
                options={"maxiter": iterations_left, "gtol": 0.0, "ftol": FTOL,
                         "maxls": line_search,
                         "maxfun": max(15000, (iterations_left + 1) * (line_search + 1))})
        except _StartMeetsTol:
            return start, TOL_MESSAGE
        except _FastLineSearchFailed:
            return kept["V"], FAST_FAILED_MESSAGE
        message = str(found.message)
        return found.x.reshape(shape), TOL_MESSAGE if "StopIteration" in message else message

    # BLAS on one thread for the iteration and the objective's own BLAS calls (the L2 term's
    # vdot, threaded on long vectors, rounds by the thread count); an evaluation splits its
    # chunks over the threads itself
    with one_blas_thread():
        V = np.ascontiguousarray(W0, dtype=np.float64)
        if precondition is not None:
            V = precondition.variables(V)
        message = ""
        # SciPy's maxiter 0 still makes one iteration: none left (a resumed solve that made
        # optim.max_iter already) is no run, only the float64 gradient at the start
        if FAST_PRECISION != "float64" and max_iter > 0:
            V, message = run(V, FAST_PRECISION, max_iter)
        left = max_iter - done["iterations"]
        loss, grad = evaluate(V, "float64")
        if float(np.abs(grad).max()) > tol and left > 0:
            V, message = run(V, "float64", left)
            loss, grad = evaluate(V, "float64")
        grad_max = float(np.abs(grad).max())
        W = np.ascontiguousarray(to_weights(V))
    if grad_max <= tol:  # the float32 run's own ending is not the fit's
        message = TOL_MESSAGE
    elif done["iterations"] >= max_iter:
        message = MAX_ITER_MESSAGE
    return LbfgsResult(W, done["iterations"], done["evaluations"], float(loss), grad_max,
                       grad_max <= tol, message)


def precondition_moment(config: Config, rows: np.ndarray, split: Split, pre: Preprocessor,
                        sample_weight: np.ndarray | None = None) -> np.ndarray | None:
    """The second moment S (D, D) float64 of the training rows that the preconditioner of
    fit_lbfgs is made of (precondition.second_moment, over the objective's views), or None
    when optim.precondition is off. It depends on neither loss.reg nor W: a path makes it
    once."""
    if not config.optim.precondition:
        return None
    return second_moment(rows, np.asarray(split.train_rows, dtype=np.int64), pre,
                         sample_weight, objective_views(config), config.augment.padding)


def fit_lbfgs(config: Config, rows: np.ndarray, labels: np.ndarray, split: Split,
              pre: Preprocessor, W0: np.ndarray, *, sample_weight: np.ndarray | None = None,
              engine: Engine | None = None, moment: np.ndarray | None = None,
              on_iteration: Callable[[int, float, float, np.ndarray], None] | None = None,
              warn: Callable[[str], None] | None = None, done: int = 0) -> LbfgsResult:
    """Minimise the config's objective over rows[split.train_rows] from W0 (C, D).

    rows (N, P) uint8 pixels or float32 or float16 features (a memory map is fine: read
    chunk by chunk), labels (N,) int64, sample_weight (N,) or None. Starts at W0 (zeros for a
    new fit,
    the previous solution for a warm start). Not reaching optim.tol within optim.max_iter is
    one line given to `warn` (default: warnings.warn with ConvergenceWarning). Raises
    softmax.NonFiniteError when the objective stops being finite. With optim.precondition,
    L-BFGS runs on preconditioned variables (training.precondition) made of `moment` (S from
    precondition_moment; computed here when None). `done`: the iterations a resumed run's
    solve has made already, which optim.max_iter counts too (at most max_iter - done here);
    the result's `iterations` count them too (the solve's in all, as its history rows and
    the warning do), its `evaluations` only this call's (earlier ones are not recorded).
    """
    require_scipy()
    engine = (get_engine(config.engine, config.device, W0.shape[0], solver="lbfgs")
              if engine is None else engine)
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
    precondition = None
    if optim.precondition:
        if moment is None:
            moment = precondition_moment(config, rows, split, pre, data.sample_weight)
        precondition = Preconditioner.from_moment(moment, W0.shape[0], rule.reg,
                                                  rule.penalise_last)
    result = minimize(objective, W0, optim.tol, max(optim.max_iter - done, 0), on_iteration,
                      precondition)
    result = replace(result, iterations=done + result.iterations)
    if not result.converged:
        line = not_converged_line(result, optim.max_iter, optim.tol)
        if warn is None:
            warnings.warn(line, ConvergenceWarning, stacklevel=2)
        else:
            warn(line)
    return result


def not_converged_line(result: LbfgsResult, max_iter: int, tol: float) -> str:
    """The one warning line of a fit that stopped short of tol: at max_iter (result's
    iterations: the solve's in all, a resumed one's earlier iterations included), or earlier
    when the line search found no decrease."""
    if result.iterations >= max_iter:
        return (f"L-BFGS did not converge: {counted(result.iterations, 'iteration')} "
                f"(optim.max_iter {max_iter}), gradient max-norm {result.grad_max:.3g} > "
                f"optim.tol {tol:g}; "
                "raise optim.max_iter")
    status, _, detail = result.message.partition(":")
    if status.strip() == "ABNORMAL":  # SciPy's line search found no lower loss
        why = "the line search found no lower loss"
    else:
        why = (detail.strip() or status.strip()).lower() or "no reason given"
    return (f"L-BFGS did not converge: it stopped after {counted(result.iterations, 'iteration')} "
            f"({why}) with gradient max-norm {result.grad_max:.3g} > optim.tol {tol:g}; "
            "huge or badly scaled features can cause it (preprocess.scale std), or "
            "optim.tol set below what float64 rounding of the loss allows")
