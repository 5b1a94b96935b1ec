"""Benchmark: optim.solver lbfgs against scikit-learn's LogisticRegression(lbfgs) at the same
regularisation, time and agreement, interleaved repetitions, medians.

Two problems (docs/lbfgs.md has the mapping of conventions, C = 1 / (2 reg N)):
- CIFAR-10 pixels: the training images (uint8, standardised, no augmentation), --cifar-rows
  of them (the first ones; 0 skips the problem), read from the archive --archive (default
  shared/data/cifar-10-binary.tar.gz in the repository's parent folder, as
  scripts/benchmark.py, extracted once into --root); tested on the
  10,000 test images;
- the estimator benchmark's synthetic probe features (scripts/benchmark_estimator.py's
  linear_features), --feature-rows x 512 float32 (200,000 in the issue), 50,000 test rows.

Ours: the run's own path, softmax_cls.training.lbfgs.fit_lbfgs on the raw rows (uint8 pixels
as softmax-train reads them) with the standardisation folded in, timed with fitting the
statistics and the preconditioner (--precondition on, the default; off: the plain iteration,
optim.precondition false), on --ours-engine (default auto: the engine engine auto picks for
it on the CPU, named in the table; numba's kernels are compiled or loaded from its cache
before the first repetition). scikit-learn: StandardScaler then
LogisticRegression(solver="lbfgs", C, tol, max_iter) on float64, timed with the scaler. Both
stop at the same gradient tolerance (--tol, the max-norm of the mean loss's gradient;
scikit-learn's gtol). Each repetition fits ours then theirs; the table gives median seconds,
their ratio, iterations, the coefficients' largest difference relative to scikit-learn's
largest coefficient (intercepts centred: they are unpenalised), test accuracies, and the
time of one loss-and-gradient evaluation, ours (float32 and float64 products) and
scikit-learn's (interleaved, medians of 5), beside scikit-learn's time per iteration. Prints
Markdown; --json writes JSON.

    python scripts/benchmark_lbfgs.py --cifar-rows 10000 --feature-rows 50000 --repeats 3

--engine NAME (repeatable: numpy, numba, torch) times only one full-batch evaluation per
engine, row dtype (--row-dtype float32, float16: the rows as stored) and precision
(--precision), on random features of --eval-shape ROWSxFEATURESxCLASSES (standardised, with
the bias column, reg 1e-4), interleaved, medians of --repeats; torch on --device (cpu,
cuda, ...). --baseline torch adds the same objective written in plain PyTorch on the CPU
(float32 rows, X @ W, F.cross_entropy, backward), --baseline sklearn scikit-learn's own
loss and gradient (what LogisticRegression(lbfgs) evaluates per iteration, float64), in
the same rounds:

    python scripts/benchmark_lbfgs.py --engine numpy --engine torch --eval-shape 20000x512x100
    python scripts/benchmark_lbfgs.py --engine numpy --engine numba --engine torch \
        --eval-shape 160000x2048x1000 --precision float32 --row-dtype float32 \
        --row-dtype float16 --baseline torch --baseline sklearn

--path-shape ROWSxFEATURESxCLASSES times only a warm-started regularisation path over
--path-regs (10 values from 1e-1 to 1e-4 by default), on the estimator benchmark's
synthetic features of that shape with a quarter as many validation rows: ours is
SoftmaxClassifier(solver="lbfgs", warm_start=True) with set_params(reg=...) then fit per
point (engine --path-engine), scikit-learn's StandardScaler then
LogisticRegression(lbfgs, warm_start=True) with C = 1 / (2 reg N), both at --tol and
--max-iter; each repetition ours then theirs. It prints the total seconds of each, and per
point the iterations and seconds of each, the coefficients' agreement, the share of the
same validation predictions and the validation accuracies, and the reg each side's
validation picks. --path-ours-only runs ours alone (the path of two versions of ours, in
turns), with each point's evaluations:

    python scripts/benchmark_lbfgs.py --path-shape 40000x512x100 --repeats 2

--time-to-accuracy times only the features problem (--feature-rows, --feature-reg) by test
accuracy rather than by coefficients: scikit-learn's fit at each --sklearn-tols (default
1e-4, its own default, and 1e-5; at --max-iter, not its default 100: the table says whether
it converged, and in how many iterations) and ours at each --ours-tols (default 1e-3, 3e-4,
1e-4, 1e-5; engine --ours-engine), each repetition all of ours then all of theirs. The two
tolerances bound the same number, the max-norm of the same mean objective's gradient on the
standardised features, but not at the same moment: scikit-learn's is SciPy's gtol (the
projected gradient, which is the gradient here: no bounds) on its float64 iterates, beside
SciPy's relative-decrease stop (ftol 64 eps); ours is checked after every iteration on a
float64 evaluation, after a float32 phase, and SciPy's own tests are off. Per fit: median
seconds, iterations (evaluations), the test accuracy of each repetition; per scikit-learn
fit, each of ours' largest |accuracy difference| in points and the ratio of median times,
and the loosest tolerance of ours within 0.05 points:

    python scripts/benchmark_lbfgs.py --time-to-accuracy --feature-rows 200000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# A local copy of the CIFAR-10 binary archive beside the repository (as scripts/benchmark.py)
DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-binary.tar.gz"


def cifar_problem(archive: str, root: str, rows: int):
    from softmax_cls.data.cifar import load_dataset

    data = load_dataset(root=root, archive=archive, download=False, progress=False)
    return (np.ascontiguousarray(data.train_images[:rows]), data.train_labels[:rows],
            data.test_images, data.test_labels)


def feature_problem(rows: int):
    from benchmark_estimator import linear_features

    X, y, X_test, y_test, _ = linear_features(n_train=rows)
    return X, y, X_test, y_test


def ours(rows, labels, reg: float, tol: float, max_iter: int, precondition: bool = True,
         engine: str = "auto") -> dict:
    from softmax_cls.config import config_from_dict
    from softmax_cls.math.preprocess import Split, fit_preprocessor
    from softmax_cls.training.lbfgs import fit_lbfgs

    config = config_from_dict({
        "engine": engine, "preprocess": {"center": True, "scale": "std", "bias": True},
        "loss": {"reg": reg}, "optim": {"solver": "lbfgs", "tol": tol, "max_iter": max_iter,
                                       "precondition": precondition},
        "augment": {"hflip": False, "translate": 0}})
    started = time.perf_counter()
    pre = fit_preprocessor(rows, center=True, scale="std")
    split = Split(np.arange(len(rows), dtype=np.int64), np.zeros(0, np.int64))
    W0 = np.zeros((int(labels.max()) + 1, pre.n_features))
    result = fit_lbfgs(config, rows, labels, split, pre, W0, warn=lambda line: None)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "iterations": result.iterations,
            "evaluations": result.evaluations, "converged": result.converged,
            "coef": result.W[:, :-1], "intercept": result.W[:, -1], "pre": pre}


def theirs(rows, labels, reg: float, tol: float, max_iter: int) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    scaler = StandardScaler()
    X = scaler.fit_transform(np.asarray(rows, dtype=np.float64))
    model = LogisticRegression(solver="lbfgs", C=1 / (2 * reg * len(rows)), tol=tol,
                               max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, labels)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "iterations": int(model.n_iter_[0]),
            "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
            "coef": model.coef_, "intercept": model.intercept_, "scaler": scaler,
            "model": model}


def interleaved_medians(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each of `calls` (name -> function of no arguments), timed `repeats`
    times in turn, one of each per round: a load change hits them all."""
    spent: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            spent[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in spent.items()}


def per_evaluation(rows, labels, pre, reg: float, repeats: int = 5, name: str = "auto"
                   ) -> dict:
    """Median seconds of one full-batch loss and gradient at W = 0.01: ours (engine `name`)
    with float32 and with float64 products, and scikit-learn's own
    (LinearModelLoss.loss_gradient, what its L-BFGS calls, on the standardised float64 rows,
    on as many threads as ours), interleaved."""
    from softmax_cls.engines import get_engine
    from softmax_cls.engines.contract import StepRule, TrainingRows

    classes = int(labels.max()) + 1
    engine = get_engine(name, "cpu", classes)
    data = TrainingRows(rows, np.asarray(labels, np.int64))
    index = np.arange(len(rows), dtype=np.int64)
    W = np.full((classes, pre.n_features), 0.01)
    calls = {
        "float32": lambda: engine.full_loss_and_grad(data, index, W, pre,
                                                     StepRule(lr=1.0, reg=reg),
                                                     precision="float32"),
        "float64": lambda: engine.full_loss_and_grad(data, index, W, pre,
                                                     StepRule(lr=1.0, reg=reg),
                                                     precision="float64"),
        "sklearn": sklearn_evaluation(pre.transform(rows, np.float64)[:, :-1], labels,
                                      classes),
    }
    return interleaved_medians(calls, repeats)


def sklearn_evaluation(X, labels, classes: int):
    """A call of no arguments: scikit-learn's own loss and gradient of the multinomial
    objective (LinearModelLoss.loss_gradient, what its LogisticRegression(lbfgs) calls once
    per evaluation) at coefficients 0.01, on X (N, P) float64 (the standardised rows; it
    adds the intercept itself) and labels (N,), on as many threads as ours."""
    from sklearn._loss.loss import HalfMultinomialLoss
    from sklearn.linear_model._linear_loss import LinearModelLoss

    from softmax_cls.engines.numpy_engine import blas_threads

    theirs = LinearModelLoss(HalfMultinomialLoss(n_classes=classes), fit_intercept=True)
    coef = np.full(classes * (X.shape[1] + 1), 0.01)
    y = np.asarray(labels, np.float64)
    return lambda: theirs.loss_gradient(coef, X, y, l2_reg_strength=1 / len(X),
                                        n_threads=blas_threads())


# Plain PyTorch's logits per chunk: at most this many values (512 MB of float32)
TORCH_PLAIN_LOGITS = 1 << 27


def torch_plain_evaluation(X, labels, W, reg: float):
    """A call of no arguments returning (loss float, gradient (C, P + 1) float64): the
    objective written in plain PyTorch on the CPU as a user would, on X (N, P) float32 (the
    rows as they are, shared with torch, no copy), labels (N,) and W (C, P + 1) (the bias
    column last): per chunk of TORCH_PLAIN_LOGITS // C rows, logits = X @ W^T + b in
    float32, F.cross_entropy summed and divided by N, backward into W's gradient; then
    reg * sum(W*W) over the weights (not the bias), backward. The value it computes is our
    objective on rows preprocessed by the identity."""
    import torch
    import torch.nn.functional as F

    X_t = torch.from_numpy(np.ascontiguousarray(X, np.float32))
    y_t = torch.from_numpy(np.asarray(labels, np.int64))
    W_t = torch.tensor(W[:, :-1], dtype=torch.float32, requires_grad=True)
    b_t = torch.tensor(W[:, -1], dtype=torch.float32, requires_grad=True)
    n = len(X_t)
    rows = max(1, TORCH_PLAIN_LOGITS // len(W))

    def evaluation():
        W_t.grad = b_t.grad = None
        loss = 0.0
        for start in range(0, n, rows):
            part = F.cross_entropy(X_t[start:start + rows] @ W_t.T + b_t,
                                   y_t[start:start + rows], reduction="sum") / n
            part.backward()
            loss += part.item()
        penalty = reg * (W_t * W_t).sum()
        penalty.backward()
        loss += penalty.item()
        grad = np.concatenate([W_t.grad.numpy(), b_t.grad.numpy()[:, None]], axis=1)
        return loss, grad.astype(np.float64)

    return evaluation


def engine_evaluations(engines: list[str], shape: str, device: str, repeats: int,
                       row_dtypes: tuple = ("float32",),
                       precisions: tuple = ("float32", "float64"),
                       baselines: tuple = ()) -> dict:
    """Median seconds of one full-batch loss and gradient per row dtype, engine and
    precision, at W = 0.01 on random standardised features of `shape`
    (ROWSxFEATURESxCLASSES; float32, or float16 as stored), reg 1e-4, interleaved; with
    `baselines` the same objective's evaluation by others on the float32 rows, in the same
    rounds: "torch" (torch_plain_evaluation, float32) and "sklearn" (sklearn_evaluation,
    float64)."""
    from softmax_cls.engines import get_engine
    from softmax_cls.engines.contract import StepRule, TrainingRows
    from softmax_cls.math.preprocess import fit_preprocessor

    n, p, classes = parse_shape(shape)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((n, p), dtype=np.float32)
    labels = rng.integers(0, classes, n).astype(np.int64)
    pre = fit_preprocessor(rows, scale="std")
    W = np.full((classes, pre.n_features), 0.01)
    index = np.arange(n, dtype=np.int64)
    rule = StepRule(lr=1.0, reg=1e-4)
    calls = {}
    for dtype in row_dtypes:
        data = TrainingRows(rows if dtype == "float32" else rows.astype(dtype), labels)
        for name in engines:
            engine = get_engine(name, device if name == "torch" else "auto", classes)
            for precision in precisions:
                calls[f"{name} ({engine.device}) {dtype} rows, {precision}"] = (
                    lambda engine=engine, data=data, precision=precision:
                    engine.full_loss_and_grad(data, index, W, pre, rule,
                                              precision=precision))
    if "torch" in baselines:
        calls["plain PyTorch (cpu) float32"] = torch_plain_evaluation(rows, labels, W, 1e-4)
    if "sklearn" in baselines:  # its own float64 copy, as LogisticRegression makes
        calls["scikit-learn loss_gradient float64"] = sklearn_evaluation(
            rows.astype(np.float64), labels, classes)
    for call in calls.values():  # warm up: imports, first allocations, a GPU's copy
        call()
    return interleaved_medians(calls, repeats)


def parse_shape(shape: str) -> tuple[int, int, int]:
    """ROWSxFEATURESxCLASSES as three ints (rows and features >= 1, classes >= 2); ValueError
    saying what is wrong otherwise."""
    parts = shape.lower().split("x")
    if len(parts) != 3 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"expected ROWSxFEATURESxCLASSES like 20000x512x100, got {shape!r}")
    n, p, classes = (int(part) for part in parts)
    if n < 1 or p < 1 or classes < 2:
        raise ValueError(f"{shape!r}: needs at least 1 row, 1 feature and 2 classes")
    return n, p, classes


def shape_argument(shape: str) -> str:
    """An argparse type: `shape` as given, once parse_shape accepts it."""
    try:
        parse_shape(shape)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return shape


def positive_float(text: str) -> float:
    """An argparse type: a finite float > 0 (a reg: scikit-learn's C = 1 / (2 reg N); a tol)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (--repeats: a median of none was a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def json_path(text: str) -> str:
    """An argparse type: a file path whose folder exists (checked before any timing)."""
    folder = Path(text).parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {folder} does not exist")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file to write")
    return text


def resolved_engine(name: str, classes: int) -> str:
    """The engine `name` (auto included) runs for an L-BFGS fit of `classes` classes on the
    CPU, as fit_lbfgs asks for it."""
    from softmax_cls.engines import get_engine

    return get_engine(name, "cpu", classes, solver="lbfgs").name


def agreement(coef_a, intercept_a, coef_b, intercept_b) -> tuple[float, float]:
    """(the coefficients' largest difference, the intercepts' after centring each over the
    classes: they are unpenalised), each relative to b's largest coefficient (the
    intercepts' to the larger of that and b's largest centred intercept)."""
    scale = np.abs(coef_b).max()
    coef_diff = float(np.abs(coef_a - coef_b).max() / scale)
    bias_a, bias_b = intercept_a - intercept_a.mean(), intercept_b - intercept_b.mean()
    bias_diff = float(np.abs(bias_a - bias_b).max() / max(np.abs(bias_b).max(), scale))
    return coef_diff, bias_diff


def path_ours(X, y, X_val, regs, tol: float, max_iter: int, engine: str) -> dict:
    """The project's warm-started path as a user runs it from Python:
    SoftmaxClassifier(solver="lbfgs", warm_start=True), set_params(reg=...) then fit, for
    each reg of `regs` (largest first): _path's result, coef_ acting on X as given."""
    from softmax_cls.estimator import SoftmaxClassifier

    model = SoftmaxClassifier(solver="lbfgs", warm_start=True, tol=tol, max_iter=max_iter,
                              engine=engine)
    path = _path(model, lambda reg: {"reg": reg}, X, y, X_val, regs, lambda m: m.n_iter_,
                 lambda m: m.history_[-1]["evaluations"])
    return path


def path_theirs(X, y, X_val, regs, tol: float, max_iter: int) -> dict:
    """scikit-learn's: StandardScaler, then LogisticRegression(lbfgs, warm_start=True) on the
    float64 standardised rows, C = 1 / (2 reg N) for each reg of `regs` (largest first):
    _path's result (its seconds with the scaler's), coef_ acting on the standardised rows,
    and the scaler."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    scaler = StandardScaler()
    X_std = scaler.fit_transform(np.asarray(X, dtype=np.float64))
    model = LogisticRegression(solver="lbfgs", warm_start=True, tol=tol, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = _path(model, lambda reg: {"C": 1 / (2 * reg * len(X))}, X_std, y,
                       scaler.transform(np.asarray(X_val, np.float64)), regs,
                       lambda m: int(m.n_iter_[0]))
    result["seconds"] = time.perf_counter() - started
    result["scaler"] = scaler
    return result


def _path(model, params, X, y, X_val, regs, iterations, evaluations=lambda m: None) -> dict:
    """{"seconds": total, "points": [{reg, seconds, iterations, evaluations, coef,
    intercept, val_predictions}]}: `model` fitted for each reg of `regs`, largest first, with
    set_params(**params(reg)) in between (a warm start when the model keeps its solution)."""
    points = []
    started = time.perf_counter()
    for reg in sorted(regs, reverse=True):
        model.set_params(**params(reg))
        fitted = time.perf_counter()
        model.fit(X, y)
        points.append({"reg": reg, "seconds": time.perf_counter() - fitted,
                       "iterations": iterations(model), "evaluations": evaluations(model),
                       "coef": model.coef_.copy(),
                       "intercept": model.intercept_.copy(),
                       "val_predictions": model.predict(X_val)})
    return {"seconds": time.perf_counter() - started, "points": points}


def compare_paths(shape: str, regs, tol: float, max_iter: int, repeats: int,
                  engine: str = "auto", ours_only: bool = False) -> dict:
    """The regularisation path, ours against scikit-learn's, on the estimator benchmark's
    synthetic features of `shape` (ROWSxFEATURESxCLASSES) with a validation set of a quarter
    as many rows drawn from the same model: each repetition ours then theirs (interleaved),
    median total seconds; per point (from the last repetition) the iterations and seconds of
    each, the coefficients' agreement, the share of the same validation predictions, and
    each side's validation accuracy; and the reg each side's validation picks. ours_only:
    ours alone, per point its iterations, evaluations, seconds and validation accuracy."""
    from benchmark_estimator import linear_features

    n, p, classes = parse_shape(shape)
    X, y, X_val, y_val, _ = linear_features(n_train=n, n_test=max(1, n // 4), dim=p,
                                            classes=classes)
    with warnings.catch_warnings():  # numba: compile (or load from its cache) once
        warnings.simplefilter("ignore")
        path_ours(X[:256], y[:256], X_val[:8], regs[:1], tol, 2, engine)
    runs: dict[str, list] = {"ours": [], "sklearn": []}
    for _ in range(repeats):
        runs["ours"].append(path_ours(X, y, X_val, regs, tol, max_iter, engine))
        if not ours_only:
            runs["sklearn"].append(path_theirs(X, y, X_val, regs, tol, max_iter))
    if ours_only:
        points = [{"reg": a["reg"], "ours_iterations": a["iterations"],
                   "ours_evaluations": a["evaluations"], "ours_s": a["seconds"],
                   "ours_val_acc": float(np.mean(a["val_predictions"] == y_val))}
                  for a in runs["ours"][-1]["points"]]
        return {"shape": shape, "tol": tol, "engine": resolved_engine(engine, classes),
                "ours_s": statistics.median(r["seconds"] for r in runs["ours"]),
                "ours_s_all": [r["seconds"] for r in runs["ours"]],
                "ours_pick": max(points, key=lambda q: q["ours_val_acc"])["reg"],
                "points": points}
    ours_path, their_path = runs["ours"][-1], runs["sklearn"][-1]
    points = []
    scaler = their_path["scaler"]
    for a, b in zip(ours_path["points"], their_path["points"], strict=True):
        # ours act on the rows as given: the same function on the standardised rows
        coef_diff, bias_diff = agreement(a["coef"] * scaler.scale_,
                                         a["intercept"] + a["coef"] @ scaler.mean_,
                                         b["coef"], b["intercept"])
        points.append({
            "reg": a["reg"], "C": 1 / (2 * a["reg"] * n),
            "ours_iterations": a["iterations"], "sklearn_iterations": b["iterations"],
            "ours_s": a["seconds"], "sklearn_s": b["seconds"],
            "coef_rel_diff": coef_diff, "intercept_rel_diff": bias_diff,
            "same_predictions": float(np.mean(a["val_predictions"] == b["val_predictions"])),
            "ours_val_acc": float(np.mean(a["val_predictions"] == y_val)),
            "sklearn_val_acc": float(np.mean(b["val_predictions"] == y_val))})
    return {
        "shape": shape, "tol": tol, "engine": resolved_engine(engine, classes),
        "ours_s": statistics.median(r["seconds"] for r in runs["ours"]),
        "sklearn_s": statistics.median(r["seconds"] for r in runs["sklearn"]),
        "ours_s_all": [r["seconds"] for r in runs["ours"]],
        "sklearn_s_all": [r["seconds"] for r in runs["sklearn"]],
        "ours_pick": max(points, key=lambda q: q["ours_val_acc"])["reg"],
        "sklearn_pick": max(points, key=lambda q: q["sklearn_val_acc"])["reg"],
        "points": points}


def accuracy_ours(fit: dict, X_test) -> np.ndarray:
    """Our fit's predicted class (N,) for each row of X_test (N, P), as given."""
    pre = fit["pre"]
    scores = pre.transform(X_test, np.float64)[:, :-1] @ fit["coef"].T + fit["intercept"]
    return scores.argmax(axis=1)


def compare(name, rows, labels, X_test, y_test, reg, tol, max_iter, repeats,
            precondition: bool = True, engine: str = "auto", others: tuple = ()) -> dict:
    runs = {"ours": [], "sklearn": [], **{other: [] for other in others}}
    for other in (engine, *others):  # numba: compile (or load from its cache) once
        ours(rows[:256], labels[:256], reg, tol, 2, precondition, other)
    for _ in range(repeats):  # interleaved: a load change hits both
        runs["ours"].append(ours(rows, labels, reg, tol, max_iter, precondition, engine))
        for other in others:
            runs[other].append(ours(rows, labels, reg, tol, max_iter, precondition, other))
        runs["sklearn"].append(theirs(rows, labels, reg, tol, max_iter))
    a, b = runs["ours"][-1], runs["sklearn"][-1]
    coef_diff, bias_diff = agreement(a["coef"], a["intercept"], b["coef"], b["intercept"])
    predicted_ours = accuracy_ours(a, X_test)
    predicted_theirs = b["model"].predict(b["scaler"].transform(
        np.asarray(X_test, np.float64)))
    ours_s = statistics.median(r["seconds"] for r in runs["ours"])
    theirs_s = statistics.median(r["seconds"] for r in runs["sklearn"])
    evaluation = per_evaluation(rows, labels, a["pre"], reg, name=engine)
    return {
        "problem": name, "precondition": precondition, "rows": len(rows),
        "engine": resolved_engine(engine, int(labels.max()) + 1),
        "features": rows.shape[1], "reg": reg, "tol": tol,
        "C": 1 / (2 * reg * len(rows)),
        "ours_s": ours_s, "sklearn_s": theirs_s, "ratio": theirs_s / ours_s,
        "ours_s_all": [r["seconds"] for r in runs["ours"]],
        "other_engines_s_all": {other: [r["seconds"] for r in runs[other]]
                                for other in others},
        "sklearn_s_all": [r["seconds"] for r in runs["sklearn"]],
        "ours_iterations": a["iterations"], "ours_evaluations": a["evaluations"],
        "sklearn_iterations": b["iterations"],
        "ours_converged": a["converged"], "sklearn_converged": b["converged"],
        "coef_rel_diff": coef_diff, "intercept_rel_diff": bias_diff,
        "ours_test_acc": float(np.mean(predicted_ours == y_test)),
        "sklearn_test_acc": float(np.mean(predicted_theirs == y_test)),
        "same_predictions": float(np.mean(predicted_ours == predicted_theirs)),
        "ours_eval_s_float32": evaluation["float32"],
        "ours_eval_s_float64": evaluation["float64"],
        "sklearn_s_per_iteration": theirs_s / max(1, b["iterations"]),
        "sklearn_eval_s": evaluation["sklearn"],
    }


def time_to_accuracy(rows, labels, X_test, y_test, reg: float, our_tols, their_tols,
                     max_iter: int, repeats: int, precondition: bool = True,
                     engine: str = "auto") -> dict:
    """Time to scikit-learn's test accuracy: ours (the benchmark's `ours`) at each tolerance
    of `our_tols` and scikit-learn's (`theirs`) at each of `their_tols`, on rows (N, P),
    labels (N,), scored on X_test, y_test; each repetition every fit of ours then every fit
    of theirs (interleaved: a load change hits all). Per fit: median seconds (and each),
    iterations (evaluations, ours), converged, and the test accuracy of every repetition.
    Per scikit-learn reference: each of ours' |accuracy difference| in points (the largest
    over the repetitions), the ratio of median times theirs / ours, and the loosest of
    `our_tols` whose every repetition is within `within` (0.05) points of it (None: none)."""
    within = 0.05
    ours(rows[:256], labels[:256], reg, our_tols[0], 2, precondition, engine)  # numba: compile
    fits = {("ours", tol): [] for tol in our_tols}
    fits.update({("sklearn", tol): [] for tol in their_tols})
    for _ in range(repeats):
        for side, tol in fits:
            if side == "ours":
                fit = ours(rows, labels, reg, tol, max_iter, precondition, engine)
                predicted = accuracy_ours(fit, X_test)
            else:
                fit = theirs(rows, labels, reg, tol, max_iter)
                predicted = fit["model"].predict(fit["scaler"].transform(
                    np.asarray(X_test, np.float64)))
            fits[side, tol].append({
                "seconds": fit["seconds"], "iterations": fit["iterations"],
                "evaluations": fit.get("evaluations"), "converged": fit["converged"],
                "test_acc": float(np.mean(predicted == y_test))})
    runs = [{"side": side, "tol": tol,
             "seconds": statistics.median(f["seconds"] for f in done),
             "seconds_all": [f["seconds"] for f in done],
             "iterations": done[-1]["iterations"], "evaluations": done[-1]["evaluations"],
             "converged": all(f["converged"] for f in done),
             "test_acc_all": [f["test_acc"] for f in done]}
            for (side, tol), done in fits.items()]
    references = []
    for ref in (r for r in runs if r["side"] == "sklearn"):
        acc = statistics.median(ref["test_acc_all"])
        against = [{"tol": r["tol"], "ratio": ref["seconds"] / r["seconds"],
                    "acc_diff_points": max(100 * abs(a - acc) for a in r["test_acc_all"])}
                   for r in runs if r["side"] == "ours"]
        close = [q for q in against if q["acc_diff_points"] <= within]
        references.append({"tol": ref["tol"], "test_acc": acc, "seconds": ref["seconds"],
                           "ours": against,
                           "loosest_within": max(close, key=lambda q: q["tol"])
                           if close else None})
    return {"rows": len(rows), "features": rows.shape[1], "reg": reg,
            "C": 1 / (2 * reg * len(rows)), "max_iter": max_iter, "within_points": within,
            "engine": resolved_engine(engine, int(labels.max()) + 1),
            "precondition": precondition, "runs": runs, "references": references}


def print_time_to_accuracy(result: dict) -> None:
    """--time-to-accuracy's report: one row per fit, then per scikit-learn reference the
    loosest tolerance of ours within 0.05 points of its test accuracy."""
    references = result["references"]
    print(f"at the end: {load_line()}\n")
    print("| fit | tol | s (median; each) | iterations (evaluations) | converged | test acc % "
          "(each) | " + " | ".join(f"vs sklearn tol {r['tol']:g}: |diff| points, "
                                   "sklearn s / s" for r in references) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(references))
    for run in result["runs"]:
        name = (f"ours ({result['engine']})" if run["side"] == "ours" else "scikit-learn")
        cells = []
        for ref in references:
            match = [q for q in ref["ours"] if q["tol"] == run["tol"]]
            if run["side"] == "ours":
                cells.append(f"{match[0]['acc_diff_points']:.3f}, {match[0]['ratio']:.2f}")
            else:
                acc = statistics.median(run["test_acc_all"])
                cells.append(f"{100 * abs(acc - ref['test_acc']):.3f}, "
                             f"{ref['seconds'] / run['seconds']:.2f}")
        evaluations = "" if run["evaluations"] is None else f" ({run['evaluations']})"
        print(f"| {name} | {run['tol']:g} | {run['seconds']:.2f} "
              f"({', '.join(f'{t:.2f}' for t in run['seconds_all'])}) | "
              f"{run['iterations']}{evaluations} | {'yes' if run['converged'] else 'no'} | "
              f"{', '.join(f'{100 * a:.3f}' for a in run['test_acc_all'])} | "
              + " | ".join(cells) + " |")
    print()
    for ref in references:
        best = ref["loosest_within"]
        print(f"scikit-learn tol {ref['tol']:g} ({100 * ref['test_acc']:.3f}%, "
              f"{ref['seconds']:.2f} s): " + (
                  f"ours' loosest tol within {result['within_points']} points is "
                  f"{best['tol']:g}, {ref['seconds'] / best['ratio']:.2f} s, "
                  f"{best['ratio']:.2f} times faster" if best else
                  f"no tol of ours within {result['within_points']} points"))


def print_ours_path(path: dict) -> None:
    """--path-ours-only's report: the total seconds, and per point the iterations,
    evaluations (loss-and-gradient, float32 and float64), seconds and validation accuracy."""
    points = path["points"]
    print(f"at the end: {load_line()}\n\nours ({path['engine']}) {path['ours_s']:.2f} s "
          f"(median; each: {', '.join(f'{t:.2f}' for t in path['ours_s_all'])}); "
          f"{sum(q['ours_iterations'] for q in points)} iterations, "
          f"{sum(q['ours_evaluations'] for q in points)} evaluations; validation picks reg "
          f"{path['ours_pick']:.3g}")
    print_table(["reg", "iterations", "evaluations", "s", "val acc"],
                ([f"{q['reg']:.3g}", str(q["ours_iterations"]), str(q["ours_evaluations"]),
                  f"{q['ours_s']:.2f}", f"{100 * q['ours_val_acc']:.2f}"] for q in points))


def print_table(header: list[str], rows) -> None:
    """A markdown table after an empty line: the header's cells, then each row's (strings)."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


def load_line() -> str:
    """The load averages over 1, 5 and 15 minutes, as uptime prints them."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
    parser.add_argument("--root", default="/tmp/lbfgs-bench-data")
    parser.add_argument("--cifar-rows", type=int, default=50_000)
    parser.add_argument("--feature-rows", type=int, default=200_000)
    parser.add_argument("--cifar-reg", type=float, default=1e-3)
    parser.add_argument("--feature-reg", type=float, default=1e-4)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--precondition", choices=["on", "off"], default="on",
                        help="ours with optim.precondition true (default) or false")
    parser.add_argument("--json", type=json_path, help="write the results here")
    parser.add_argument("--ours-engine", action="append",
                        choices=["auto", "numpy", "numba", "torch"],
                        help="the engine of our fit and its one-evaluation times (default "
                             "auto: what engine auto picks for an L-BFGS fit on the CPU); "
                             "again: more engines' fits, in each repetition's turn "
                             "(their seconds in the JSON line, other_engines_s_all)")
    parser.add_argument("--engine", action="append", choices=["numpy", "numba", "torch"],
                        help="only time one evaluation of this engine (repeatable)")
    parser.add_argument("--eval-shape", default="20000x512x100", type=shape_argument,
                        help="ROWSxFEATURESxCLASSES of --engine's evaluations")
    parser.add_argument("--device", default="auto", help="the torch engine's device")
    parser.add_argument("--row-dtype", action="append", choices=["float32", "float16"],
                        help="--engine's rows stored as this (repeatable; default float32)")
    parser.add_argument("--precision", action="append", choices=["float32", "float64"],
                        help="--engine's products (repeatable; default both)")
    parser.add_argument("--baseline", action="append", choices=["torch", "sklearn"],
                        help="with --engine: also time the same evaluation in plain PyTorch "
                             "on the CPU, or scikit-learn's (repeatable)")
    parser.add_argument("--path-shape", type=shape_argument,
                        help="only the regularisation path, ours against scikit-learn's, on "
                             "synthetic features of ROWSxFEATURESxCLASSES")
    parser.add_argument("--path-regs", type=positive_float, nargs="+",
                        default=list(np.geomspace(1e-1, 1e-4, 10)),
                        help="the path's reg values (default 10 from 1e-1 to 1e-4)")
    parser.add_argument("--path-engine", default="auto",
                        choices=["auto", "numpy", "numba", "torch"])
    parser.add_argument("--path-ours-only", action="store_true",
                        help="the path of ours alone (before and after a change of ours)")
    parser.add_argument("--time-to-accuracy", action="store_true",
                        help="only the features problem: ours at each --ours-tols against "
                             "scikit-learn at each --sklearn-tols, by test accuracy")
    parser.add_argument("--ours-tols", type=positive_float, nargs="+",
                        default=[1e-3, 3e-4, 1e-4, 1e-5],
                        help="--time-to-accuracy's tolerances of ours (optim.tol)")
    parser.add_argument("--sklearn-tols", type=positive_float, nargs="+",
                        default=[1e-4, 1e-5],
                        help="--time-to-accuracy's tolerances of scikit-learn (1e-4: its "
                             "default)")
    args = parser.parse_args()
    if args.time_to_accuracy:
        if args.feature_rows < 1:
            parser.error("--time-to-accuracy needs --feature-rows of at least 1")
        print(f"time to scikit-learn's test accuracy, features {args.feature_rows:,} x 512, "
              f"reg {args.feature_reg:g}, max_iter {args.max_iter}, {args.repeats} "
              f"repetitions, {load_line()}", flush=True)
        rows, labels, X_test, y_test = feature_problem(args.feature_rows)
        result = time_to_accuracy(rows, labels, X_test, y_test, args.feature_reg,
                                  args.ours_tols, args.sklearn_tols, args.max_iter,
                                  args.repeats, args.precondition == "on",
                                  (args.ours_engine or ["auto"])[0])
        print_time_to_accuracy(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return
    if args.engine:
        print(f"one evaluation, {args.eval_shape}, medians of {args.repeats}, "
              f"{load_line()}, OPENBLAS_NUM_THREADS="
              f"{os.environ.get('OPENBLAS_NUM_THREADS', '-')}")
        times = engine_evaluations(args.engine, args.eval_shape, args.device, args.repeats,
                                   tuple(args.row_dtype or ["float32"]),
                                   tuple(args.precision or ["float32", "float64"]),
                                   tuple(args.baseline or ()))
        print_table(["engine (device) rows, products", "seconds"],
                    ([name, f"{seconds:.4f}"] for name, seconds in times.items()))
        print(f"\nat the end: {load_line()}")
        if args.json:
            Path(args.json).write_text(json.dumps(times, indent=2))
        return
    if args.path_shape:
        print(f"regularisation path, {args.path_shape}, tol {args.tol}, "
              f"{len(args.path_regs)} points, {args.repeats} repetitions, {load_line()}",
              flush=True)
        path = compare_paths(args.path_shape, args.path_regs, args.tol, args.max_iter,
                             args.repeats, args.path_engine, args.path_ours_only)
        if args.path_ours_only:
            print_ours_path(path)
            if args.json:
                Path(args.json).write_text(json.dumps(path, indent=2))
            return
        print(f"at the end: {load_line()}\n\nours ({path['engine']}) "
              f"{path['ours_s']:.2f} s, scikit-learn {path['sklearn_s']:.2f} s (medians; "
              f"each: {', '.join(f'{t:.2f}' for t in path['ours_s_all'])} / "
              f"{', '.join(f'{t:.2f}' for t in path['sklearn_s_all'])}); validation picks "
              f"reg {path['ours_pick']:.3g} (ours), {path['sklearn_pick']:.3g} (scikit-learn)")
        print_table(["reg", "C", "iterations ours / sklearn", "s ours / sklearn",
                     "coef rel. diff", "intercept rel. diff", "same val. predictions",
                     "val acc ours / sklearn"],
                    ([f"{q['reg']:.3g}", f"{q['C']:.3g}",
                      f"{q['ours_iterations']} / {q['sklearn_iterations']}",
                      f"{q['ours_s']:.2f} / {q['sklearn_s']:.2f}", f"{q['coef_rel_diff']:.1e}",
                      f"{q['intercept_rel_diff']:.1e}", f"{100 * q['same_predictions']:.2f}%",
                      f"{100 * q['ours_val_acc']:.2f} / {100 * q['sklearn_val_acc']:.2f}"]
                     for q in path["points"]))
        if args.json:
            Path(args.json).write_text(json.dumps(path, indent=2))
        return
    import scipy
    import sklearn

    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__, "scipy": scipy.__version__,
                          "sklearn": sklearn.__version__, "loadavg_start": os.getloadavg()},
              "rows": []}
    problems = []
    if args.cifar_rows:
        if Path(args.archive).is_file():
            problems.append(("CIFAR-10 pixels", lambda: cifar_problem(
                args.archive, args.root, args.cifar_rows), args.cifar_reg))
        else:
            print(f"no CIFAR-10 archive at {args.archive}: skipping that problem")
    if args.feature_rows:
        problems.append(("probe features", lambda: feature_problem(args.feature_rows),
                         args.feature_reg))
    engines = args.ours_engine or ["auto"]
    for name, load, reg in problems:
        rows, labels, X_test, y_test = load()
        row = compare(name, rows, labels, X_test, y_test, reg, args.tol, args.max_iter,
                      args.repeats, args.precondition == "on", engines[0],
                      tuple(engines[1:]))
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    report["machine"]["loadavg_end"] = os.getloadavg()
    print_table(["problem", "rows x features", "ours (engine) s", "sklearn s", "sklearn / ours",
                 "iterations (ours / sklearn)", "coef rel. diff", "test acc ours / sklearn",
                 "ours s/eval f32 (f64)", "sklearn s/eval", "sklearn s/iter"],
                ([r["problem"], f"{r['rows']:,} x {r['features']}",
                  f"{r['ours_s']:.2f} ({r['engine']})", f"{r['sklearn_s']:.1f}",
                  f"{r['ratio']:.2f}", f"{r['ours_iterations']} / {r['sklearn_iterations']}",
                  f"{r['coef_rel_diff']:.1e}",
                  f"{100 * r['ours_test_acc']:.2f} / {100 * r['sklearn_test_acc']:.2f}",
                  f"{r['ours_eval_s_float32']:.3f} ({r['ours_eval_s_float64']:.3f})",
                  f"{r['sklearn_eval_s']:.3f}", f"{r['sklearn_s_per_iteration']:.3f}"]
                 for r in report["rows"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
