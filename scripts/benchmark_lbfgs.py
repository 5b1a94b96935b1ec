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
engine and precision, on random float32 features of --eval-shape ROWSxFEATURESxCLASSES
(standardised, with the bias column, reg 1e-4), interleaved, medians of --repeats; torch
on --device (cpu, cuda, ...). No scikit-learn there:

    python scripts/benchmark_lbfgs.py --engine numpy --engine torch --eval-shape 20000x512x100
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
    from sklearn._loss.loss import HalfMultinomialLoss
    from sklearn.linear_model._linear_loss import LinearModelLoss

    from softmax_cls.engines import get_engine
    from softmax_cls.engines.contract import StepRule, TrainingRows
    from softmax_cls.engines.numpy_engine import blas_threads

    classes = int(labels.max()) + 1
    engine = get_engine(name, "cpu", classes)
    data = TrainingRows(rows, np.asarray(labels, np.int64))
    index = np.arange(len(rows), dtype=np.int64)
    W = np.full((classes, pre.n_features), 0.01)
    X = pre.transform(rows, np.float64)[:, :-1]
    theirs = LinearModelLoss(HalfMultinomialLoss(n_classes=classes), fit_intercept=True)
    coef = np.full(classes * (X.shape[1] + 1), 0.01)
    y = np.asarray(labels, np.float64)
    calls = {
        "float32": lambda: engine.full_loss_and_grad(data, index, W, pre,
                                                     StepRule(lr=1.0, reg=reg),
                                                     precision="float32"),
        "float64": lambda: engine.full_loss_and_grad(data, index, W, pre,
                                                     StepRule(lr=1.0, reg=reg),
                                                     precision="float64"),
        "sklearn": lambda: theirs.loss_gradient(coef, X, y, l2_reg_strength=1 / len(rows),
                                                n_threads=blas_threads()),
    }
    return interleaved_medians(calls, repeats)


def engine_evaluations(engines: list[str], shape: str, device: str, repeats: int) -> dict:
    """Median seconds of one full-batch loss and gradient per engine and precision, at W =
    0.01 on random standardised features of `shape` (ROWSxFEATURESxCLASSES), interleaved."""
    from softmax_cls.engines import get_engine
    from softmax_cls.engines.contract import StepRule, TrainingRows
    from softmax_cls.math.preprocess import fit_preprocessor

    n, p, classes = (int(part) for part in shape.lower().split("x"))
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((n, p), dtype=np.float32)
    data = TrainingRows(rows, rng.integers(0, classes, n).astype(np.int64))
    pre = fit_preprocessor(rows, scale="std")
    W = np.full((classes, pre.n_features), 0.01)
    index = np.arange(n, dtype=np.int64)
    rule = StepRule(lr=1.0, reg=1e-4)
    calls = {}
    for name in engines:
        engine = get_engine(name, device if name == "torch" else "auto", classes)
        for precision in ("float32", "float64"):
            calls[f"{name} ({engine.device}) {precision}"] = (
                lambda engine=engine, precision=precision: engine.full_loss_and_grad(
                    data, index, W, pre, rule, precision=precision))
    for call in calls.values():  # warm up: imports, first allocations, a GPU's copy
        call()
    return interleaved_medians(calls, repeats)


def resolved_engine(name: str, classes: int) -> str:
    """The engine `name` (auto included) runs for an L-BFGS fit of `classes` classes on the
    CPU, as fit_lbfgs asks for it."""
    from softmax_cls.engines import get_engine

    return get_engine(name, "cpu", classes).name


def accuracy_ours(fit: dict, X_test) -> float:
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
    scale = np.abs(b["coef"]).max()
    coef_diff = float(np.abs(a["coef"] - b["coef"]).max() / scale)
    bias_a, bias_b = a["intercept"] - a["intercept"].mean(), b["intercept"] - b[
        "intercept"].mean()
    bias_diff = float(np.abs(bias_a - bias_b).max() / max(np.abs(bias_b).max(), scale))
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precondition", choices=["on", "off"], default="on",
                        help="ours with optim.precondition true (default) or false")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--ours-engine", action="append",
                        choices=["auto", "numpy", "numba", "torch"],
                        help="the engine of our fit and its one-evaluation times (default "
                             "auto: what engine auto picks for an L-BFGS fit on the CPU); "
                             "again: more engines' fits, in each repetition's turn "
                             "(their seconds in the JSON line, other_engines_s_all)")
    parser.add_argument("--engine", action="append", choices=["numpy", "numba", "torch"],
                        help="only time one evaluation of this engine (repeatable)")
    parser.add_argument("--eval-shape", default="20000x512x100",
                        help="ROWSxFEATURESxCLASSES of --engine's evaluations")
    parser.add_argument("--device", default="auto", help="the torch engine's device")
    args = parser.parse_args()
    if args.engine:
        print(f"one evaluation, {args.eval_shape}, medians of {args.repeats}, load average "
              f"{os.getloadavg()[0]:.1f}, OPENBLAS_NUM_THREADS="
              f"{os.environ.get('OPENBLAS_NUM_THREADS', '-')}")
        print("\n| engine (device) precision | seconds |\n|---|---|")
        times = engine_evaluations(args.engine, args.eval_shape, args.device, args.repeats)
        for name, seconds in times.items():
            print(f"| {name} | {seconds:.4f} |")
        if args.json:
            Path(args.json).write_text(json.dumps(times, indent=2))
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
    print("\n| problem | rows x features | ours (engine) s | sklearn s | sklearn / ours | "
          "iterations (ours / sklearn) | coef rel. diff | test acc ours / sklearn | "
          "ours s/eval f32 (f64) | sklearn s/eval | sklearn s/iter |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        print(f"| {r['problem']} | {r['rows']:,} x {r['features']} | {r['ours_s']:.2f} "
              f"({r['engine']}) | "
              f"{r['sklearn_s']:.1f} | {r['ratio']:.2f} | {r['ours_iterations']} / "
              f"{r['sklearn_iterations']} | {r['coef_rel_diff']:.1e} | "
              f"{100 * r['ours_test_acc']:.2f} / {100 * r['sklearn_test_acc']:.2f} | "
              f"{r['ours_eval_s_float32']:.3f} ({r['ours_eval_s_float64']:.3f}) | "
              f"{r['sklearn_eval_s']:.3f} | {r['sklearn_s_per_iteration']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
