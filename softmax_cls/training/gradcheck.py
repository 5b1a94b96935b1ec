"""Gradient check: analytic gradients against centred finite differences, in float64.

For K random coordinates w of W (always one of the bias column among them): numeric =
(f(w + h) - f(w - h)) / 2h. h is `step` divided by the RMS of the coordinate's feature
column when that exceeds 1 (raw pixels reach 255), which keeps the truncation error
h^2 f'''/6 below the rounding error.

The difference quotient carries a rounding error: f is computed to a few ulps of the largest
value it is summed from, so n is known only to about
`rounding = NOISE_FACTOR * eps * sqrt(N) * max(|f(w +- h)|, M) / h` (absolute), f being a mean
over N rows: a sum of N row losses added one after another (the numba kernel's) carries a
rounding error that grows as sqrt(N) ulps, a random walk. M is the largest sum of |products|
in one score (score_magnitude): the engines fold the preprocessing into W, so their scores
are u @ (W * scale).T minus an offset (mean * scale) @ W.T, two large sums that cancel. Where a
pixel's std is near 0 (two samples that agree in a pixel: scale up to 1000), M reaches 100
times |f| and the scores, hence f, carry rounding that |f| alone does not predict. Each coordinate
reports its relative error beyond that rounding, max(0, |a - n| - rounding) / max(|a|, |n|),
and passes when it is at most the tolerance; a non-finite a or n (inf or NaN: an overflow or a
broken gradient) is an infinite error, which fails. The error depends on a, n, f and h, never
on the tolerance; a derivative too small for float64 differences to show a relative error of tol is
judged within its rounding instead of failing on noise.

A check must be able to fail: when the resolution is not far below the largest finite
derivative checked (NO_POWER_RATIO), the step cannot resolve these derivatives (h so small that
f(w + h) == f(w - h), say) and the check refuses with GradcheckRefused instead of passing.
On every coordinate, the loop reference is compared with the vectorized loss and gradient, and
each engine's minibatch objective (numpy; numba and torch on the CPU when installed, numba's
float64 variant; the preprocessing folded into W) with loss_and_grad on the explicitly
preprocessed features, each difference relative to max(1, the largest value compared)
(`difference`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..config import Config
from ..data.cifar import load_config_data
from ..data.datasets import IMAGE_BYTES
from ..engines import get_engine
from ..engines.contract import Engine, StepRule
from ..engines.memory import host_available_bytes, memory_budget
from ..errors import ConfigError, SoftmaxClsError
from ..math import softmax
from ..math.preprocess import Preprocessor, fit_preprocessor, split_and_fit
from ..math.softmax import penalises_last_column

EPS = float(np.finfo(np.float64).eps)
# f is a sum of thousands of products, a log-sum-exp and a mean: it carries a few ulps of
# rounding each side of h; measured at 2 samples x 3000 coordinates, |a - n| reached 1.5x
# 2 eps |f| / h, so 8 eps |f| / h is the bound (with room), times sqrt(N) for the sum over N
# rows (the numba objective at 10000 and 45000 rows exceeded 8 eps |f| / h by up to 6x).
NOISE_FACTOR = 8.0
NO_POWER_RATIO = 1e-3  # resolution / largest derivative above this: the check cannot fail
DEFAULT_STEP = 1e-5
DEFAULT_TOLERANCE = 1e-7
LOOP_TOLERANCE = 1e-10

# float64 arrays of each shape live at the check's peak, from the peak resident memory's growth
# with the numpy, numba and torch engines (the 2-core shared VM, 2026-12-07): 4.7 of (N, D) at
# 4000 rows x 3073 features x 10 classes, 9.4 of (C, D) at 200 x 3073 x 4000, about 1.3 of
# (N, C) at 1000 x 3073 x 4000; rounded up, the scores' share with room (they dominate at
# large N x C, and loss_and_grad holds its softmax's intermediates of that shape).
ROWS_FEATURES_COPIES = 5
CLASSES_FEATURES_COPIES = 10
ROWS_CLASSES_COPIES = 4

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


class GradcheckRefused(ConfigError):
    """The chosen step cannot resolve the derivatives: the check could not fail (exit 2)."""


@dataclass
class CoordinateCheck:
    coordinate: tuple[int, int]
    analytic: float
    numeric: float
    rel_error: float  # max(0, |a - n| - rounding) / max(|a|, |n|)
    rounding: float  # absolute rounding error the difference quotient may carry

    @property
    def raw_rel_error(self) -> float:
        """|a - n| / max(|a|, |n|), before the rounding allowance: shows the check ran."""
        return relative_error(self.analytic, self.numeric)


@dataclass
class CheckResult:
    """One objective's sparse check: the checked coordinates and the verdict."""

    name: str
    checks: list[CoordinateCheck]
    tolerance: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def max_rel_error(self) -> float:
        return max(c.rel_error for c in self.checks)

    @property
    def passed(self) -> bool:
        return all(c.rel_error <= self.tolerance for c in self.checks)


def relative_error(analytic: float, numeric: float, rounding: float = 0.0) -> float:
    """max(0, |a - n| - rounding) / max(|a|, |n|), 0 where both are 0; inf where a or n is
    not finite (a NaN would compare false with everything and pass as no error)."""
    if not (math.isfinite(analytic) and math.isfinite(numeric)):
        return math.inf
    scale = max(abs(analytic), abs(numeric))
    return max(0.0, abs(analytic - numeric) - rounding) / scale if scale > 0 else 0.0


def check_gradient(
    f: Objective,
    W: np.ndarray,
    num_checks: int,
    rng: np.random.Generator,
    step: float = DEFAULT_STEP,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str = "gradient",
    column_scale: np.ndarray | None = None,
    rows: int = 1,
    magnitude: float = 0.0,
) -> CheckResult:
    """Compare f's analytic gradient at W (C, D) float64 with centred differences.

    f(W) returns (loss, dW), the loss a mean over `rows` rows (its rounding grows with them).
    column_scale (D,) is the RMS of each feature column; the step of a coordinate in column j
    is step / max(1, column_scale[j]). magnitude: the largest sum of |products| in one of f's
    scores (score_magnitude), which bounds their rounding with |f|. The last column (the bias
    column) is always among the coordinates checked. W is left unchanged. Raises
    GradcheckRefused when the step cannot resolve the largest derivative checked (see the
    module docstring).
    """
    if W.dtype != np.float64:
        raise TypeError(f"the gradient check runs in float64, got {W.dtype}")
    _, analytic = f(W)
    count = min(num_checks, W.size)
    bias_index = int(rng.integers(W.shape[0])) * W.shape[1] + W.shape[1] - 1
    others = rng.choice(np.delete(np.arange(W.size), bias_index), size=count - 1, replace=False)
    work = W.copy()
    checks = []
    for index in [bias_index, *others]:
        coord = np.unravel_index(index, W.shape)
        h = (step / max(1.0, float(column_scale[coord[1]])) if column_scale is not None
             else step)
        work[coord] = W[coord] + h
        f_plus, _ = f(work)
        work[coord] = W[coord] - h
        f_minus, _ = f(work)
        work[coord] = W[coord]
        numeric = (f_plus - f_minus) / (2 * h)
        rounding = (NOISE_FACTOR * EPS * np.sqrt(max(rows, 1))
                    * max(abs(f_plus), abs(f_minus), magnitude) / h)
        a = float(analytic[coord])
        checks.append(CoordinateCheck(tuple(int(i) for i in coord), a, numeric,
                                      relative_error(a, numeric, rounding), rounding))
    _check_power(name, checks, step)
    return CheckResult(name, checks, tolerance)


def _check_power(name: str, checks: list[CoordinateCheck], step: float) -> None:
    """GradcheckRefused unless the differences resolve the largest finite derivative checked
    (a non-finite one already fails its check, whatever the step)."""
    finite = [c for c in checks if math.isfinite(c.analytic) and math.isfinite(c.numeric)]
    if not finite:
        return
    largest = max(finite, key=lambda c: max(abs(c.analytic), abs(c.numeric)))
    size = max(abs(largest.analytic), abs(largest.numeric))
    if not size > 0 or not largest.rounding <= NO_POWER_RATIO * size:
        raise GradcheckRefused(
            f"--step {step:g} cannot check {name}: float64 differences resolve derivatives only "
            f"to about {largest.rounding:.1e}, the largest checked is {size:.1e}, so no error "
            f"could show; {_power_remedy(step)}")


def _power_remedy(step: float) -> str:
    """What to change when the differences cannot resolve the derivatives: a step far from
    DEFAULT_STEP, else the size of the loss and scores the rounding is relative to."""
    if not DEFAULT_STEP / 10 <= step <= DEFAULT_STEP * 10:
        return f"use a step near {DEFAULT_STEP:g}"
    return ("the loss and its scores are too large for float64 differences at any step: "
            "lower the reg (--reg, loss.reg) or model.init_std")


def compare_with_loop(
    W: np.ndarray, X: np.ndarray, y: np.ndarray, reg: float, clip: float,
    penalise_last: bool = False,
) -> dict[str, float]:
    """Largest differences between the loop reference and the vectorized softmax, each
    relative to max(1, the largest value compared) (difference)."""
    loss_vec, grad_vec = softmax.loss_and_grad(W, X, y, reg, clip, penalise_last)
    loss_loop, grad_loop = softmax.loss_and_grad_naive(W, X, y, reg, clip, penalise_last)
    return {"loss_diff": difference(loss_vec, loss_loop),
            "grad_diff": difference(grad_vec, grad_loop)}


def difference(a, b) -> float:
    """max |a - b| over the entries of a and b (floats or arrays of one shape), divided by
    max(1, max |a|, max |b|): absolute for values up to 1, relative beyond, so that a loss
    of 1e6 (a large reg) is not held to 1e-10 absolute, below its own rounding. NaN when
    either holds a NaN or an inf (which fails every comparison with a tolerance)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    scale = max(1.0, float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


@dataclass
class GradcheckProblem:
    """What the check runs on: features X (N, D) float64, labels, and the trainers' objectives.

    `trainer_objectives` maps each available engine's name to its own minibatch function on
    the raw rows (preprocessing folded into the weights), with W (C, D) float64 in and out.
    """

    W: np.ndarray
    X: np.ndarray
    y: np.ndarray
    reg: float
    clip: float
    penalise_last: bool
    trainer_objectives: dict[str, Objective]
    trainer_magnitude: float = 0.0  # score_magnitude of the folded scores the engines compute


def score_magnitude(rows: np.ndarray, W: np.ndarray) -> float:
    """The largest sum of |products| in one score of rows (N, K) @ W.T (W (C, K)), float64:
    the size of the terms a score's rounding error is relative to."""
    return float(np.max(np.abs(rows) @ np.abs(W).T, initial=0.0))


def folded_magnitude(images: np.ndarray, pre: Preprocessor, W: np.ndarray) -> float:
    """score_magnitude of the engines' folded scores [u, 1] @ fold(W).T for raw rows (N, P):
    u @ (W * scale).T and the offset mean @ (W * scale).T summed term by term, plus the bias."""
    P = pre.n_raw
    scaled = np.abs(W[:, :P] * pre.scale)
    offset = np.abs(pre.mean) @ scaled.T + (np.abs(W[:, P]) if pre.bias else 0.0)
    return float(np.max(np.abs(images.astype(np.float64)) @ scaled.T + offset, initial=0.0))


def needed_bytes(samples: int, row_bytes: int, features: int, classes: int) -> int:
    """Bytes the check holds at its peak, about: `samples` raw rows of `row_bytes` bytes, and
    float64 copies of the (N, D) features, the (C, D) weights and the (N, C) scores (the
    counts measured, above)."""
    return samples * row_bytes + 8 * (ROWS_FEATURES_COPIES * samples * features
                                      + CLASSES_FEATURES_COPIES * classes * features
                                      + ROWS_CLASSES_COPIES * samples * classes)


def check_memory(samples: int, row_bytes: int, features: int, classes: int,
                 lower: str) -> None:
    """SoftmaxClsError naming `lower` (the options to lower) when needed_bytes exceeds the
    memory budget (engines.memory) of what this process may still allocate; nothing where
    that is not known."""
    available = host_available_bytes()
    if available is None:
        return
    need, budget = needed_bytes(samples, row_bytes, features, classes), memory_budget(available)
    if need > budget:
        raise SoftmaxClsError(
            f"not enough memory: the gradient check of {samples} samples x {features} features "
            f"x {classes} classes needs about {need / 2**30:,.1f} GiB, and "
            f"{max(budget, 0) / 2**30:,.1f} GiB may be used ({available / 2**30:,.1f} GiB "
            f"free, less a tenth or 0.5 GiB); lower {lower}")


def available_engines() -> list[Engine]:
    """The numpy engine, and the numba and torch (on the CPU) engines where installed."""
    engines = [get_engine("numpy")]
    for name in ("numba", "torch"):
        with contextlib.suppress(SoftmaxClsError):
            engines.append(get_engine(name, "cpu"))
    return engines


def image_problem(
    images: np.ndarray, labels: np.ndarray, pre: Preprocessor, n_classes: int, reg: float,
    clip: float, reg_bias: bool, seed: int, init_std: float = 1e-4,
) -> GradcheckProblem:
    """The check's problem on raw rows (N, P): features X = pre.transform(rows) in float64,
    and each engine's minibatch objective on the same rows."""
    rng = np.random.default_rng([seed, 1])
    W = np.ascontiguousarray((rng.standard_normal((pre.n_features, n_classes)) * init_std).T)
    labels = np.asarray(labels, dtype=np.int64)
    rule = StepRule(lr=1.0, reg=reg, penalise_last=penalises_last_column(pre.bias, reg_bias),
                    clip=clip)

    def objective_of(engine: Engine) -> Objective:
        def trainer_objective(w: np.ndarray) -> tuple[float, np.ndarray]:
            loss, dW, _ = engine.loss_and_grad(images, labels, None, w, pre, rule)
            return loss, dW

        return trainer_objective

    return GradcheckProblem(W, pre.transform(images, np.float64), labels, reg, clip,
                            rule.penalise_last,
                            {engine.name: objective_of(engine) for engine in available_engines()},
                            folded_magnitude(images, pre, W))


def random_image_problem(samples: int = 500, classes: int = 10, seed: int = 0,
                         reg: float = 0.01, clip: float = softmax.DEFAULT_CLIP
                         ) -> GradcheckProblem:
    """A seeded problem of random uint8 images, centred and scaled by their std: 3073 features.
    SoftmaxClsError, before anything is allocated, when it would not fit in memory."""
    check_memory(samples, IMAGE_BYTES, IMAGE_BYTES + 1, classes, "--samples or --classes")
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(samples, IMAGE_BYTES), dtype=np.uint8)
    labels = rng.integers(0, classes, size=samples)
    pre = fit_preprocessor(images, center=True, scale="std", bias=True)
    return image_problem(images, labels, pre, classes, reg, clip, False, seed)


def config_problem(config: Config, samples: int, seed: int, reg: float | None = None
                   ) -> GradcheckProblem:
    """A sample of `samples` rows of the config's real training split, preprocessed as the
    trainer would (statistics fitted on the whole training split). SoftmaxClsError, before
    the sample is copied, when the check would not fit in memory."""
    data = load_config_data(config.data, progress=False)
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    samples = min(samples, len(split.train_rows))
    images = data.train_images
    check_memory(samples, images.itemsize * images[0].size, pre.n_features,
                 len(data.class_names), "--samples")
    rows = np.sort(np.random.default_rng(seed).choice(split.train_rows, size=samples,
                                                      replace=False))
    reg = config.loss.reg if reg is None else reg
    return image_problem(data.train_images[rows], data.train_labels[rows], pre,
                         len(data.class_names), reg if reg > 0 else 0.01, config.loss.clip,
                         config.loss.reg_bias, seed, config.model.init_std)


def run_gradcheck(
    problem: GradcheckProblem,
    num_checks: int = 10,
    step: float = DEFAULT_STEP,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> list[CheckResult]:
    """All checks: the vectorized loss with reg = 0 and reg > 0, the trainer's minibatch
    objective, and loop-versus-vectorized agreement (as the last result's `extra`)."""
    rng = np.random.default_rng(seed)
    W, X, y, clip = problem.W, problem.X, problem.y, problem.clip
    penalise_last = problem.penalise_last
    column_scale = np.sqrt(np.mean(X * X, axis=0))
    results = []
    for reg in (0.0, problem.reg):
        def objective(w, reg=reg):
            return softmax.loss_and_grad(w, X, y, reg, clip, penalise_last)

        results.append(check_gradient(objective, W, num_checks, rng, step, tolerance,
                                      f"loss_and_grad, reg={reg:g}", column_scale, len(X),
                                      score_magnitude(X, W)))
    for name, objective in problem.trainer_objectives.items():
        results.append(check_gradient(objective, W, num_checks, rng, step, tolerance,
                                      f"{name} engine minibatch objective, reg={problem.reg:g}",
                                      column_scale, len(X), problem.trainer_magnitude))
    extra = results[-1].extra
    extra.update(compare_with_loop(W, X, y, problem.reg, clip, penalise_last))
    plain_loss, plain_grad = softmax.loss_and_grad(W, X, y, problem.reg, clip, penalise_last)
    for name, objective in problem.trainer_objectives.items():
        trainer_loss, trainer_grad = objective(W)
        extra[f"{name}_loss_diff"] = difference(trainer_loss, plain_loss)
        extra[f"{name}_grad_diff"] = difference(trainer_grad, plain_grad)
    return results


def full_comparisons_agree(results: list[CheckResult]) -> bool:
    """Whether the loop reference and the trainer objective agree on every coordinate."""
    return _agree(results[-1].extra.values())


def _agree(differences) -> bool:
    """Every difference within LOOP_TOLERANCE; a NaN one (an inf minus an inf) is not."""
    return all(value <= LOOP_TOLERANCE for value in differences)


def format_report(results: list[CheckResult]) -> str:
    """The table per check (coordinate (class, feature), analytic, numeric, the rounding
    allowance, the raw relative error and the relative error beyond rounding, which is
    judged), and the verdicts."""
    lines = []
    for result in results:
        lines.append(f"{result.name}")
        lines.append(f"  {'coordinate':>14}  {'analytic':>14}  {'numeric':>14}  {'rounding':>9}"
                     f"  {'raw rel.':>9}  {'beyond rounding':>15}")
        for c in result.checks:
            coord = f"({c.coordinate[0]}, {c.coordinate[1]})"
            lines.append(f"  {coord:>14}  {c.analytic:>14.6e}  {c.numeric:>14.6e}"
                         f"  {c.rounding:>9.1e}  {c.raw_rel_error:>9.1e}  {c.rel_error:>15.2e}")
        verdict = "ok" if result.passed else "FAIL"
        lines.append(f"  max relative error {result.max_rel_error:.2e} "
                     f"(tolerance {result.tolerance:.0e}): {verdict}")
    extra = results[-1].extra
    labels = [("loop reference vs vectorized", "")] + [
        (f"{key[:-len('_loss_diff')]} engine objective vs loss_and_grad on the features",
         key[: -len("loss_diff")]) for key in extra if key.endswith("_loss_diff")]
    for label, key in labels:
        loss_diff, grad_diff = extra[f"{key}loss_diff"], extra[f"{key}grad_diff"]
        verdict = "ok" if _agree((loss_diff, grad_diff)) else "FAIL"
        lines.append(f"{label}: loss diff {loss_diff:.2e}, max grad diff {grad_diff:.2e} "
                     f"(relative to max(1, |value|); tolerance {LOOP_TOLERANCE:.0e}, every "
                     f"coordinate): {verdict}")
    worst = max(r.max_rel_error for r in results)
    lines.append(f"maximum relative error: {worst:.2e}")
    return "\n".join(lines)
