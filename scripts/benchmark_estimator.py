"""Benchmark: SoftmaxClassifier against scikit-learn's LogisticRegression (lbfgs) and
SGDClassifier(loss="log_loss"), accuracy and wall time, side by side in one run.

Two problems:
- CIFAR-10 pixels: the 50,000 training images (3072 uint8 values) and the 10,000 test images,
  from an extracted copy (--root, default /tmp/realdata);
- synthetic probe features: 200,000 x 512 float32 training rows and 50,000 test rows drawn
  from a known multinomial logistic model (see `linear_features`), with per-feature scales
  and offsets so that standardisation matters, as for real embeddings.

Each estimator is fitted once per problem (--repeats for more) with the threads the
environment gives (run with OPENBLAS_NUM_THREADS=1 for a fair single-thread comparison).
scikit-learn's estimators get StandardScaler in a pipeline (its time included);
SoftmaxClassifier standardises internally. Wall and CPU seconds are both printed: CPU well
below wall means the machine was busy with something else. Prints a Markdown table and
writes JSON with --json.

    OPENBLAS_NUM_THREADS=1 python scripts/benchmark_estimator.py --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np


def linear_features(n_train: int = 200_000, n_test: int = 50_000, dim: int = 512,
                    classes: int = 10, seed: int = 0, temperature: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(X_train (n_train, dim) float32, y_train (n_train,) int64, X_test, y_test, the Bayes
    accuracy on the test rows) of a known linear model.

    z ~ N(0, I_dim); y ~ softmax(z @ W_true / temperature) with W_true (dim, classes) of
    standard normal entries scaled by 1/sqrt(dim); the features are X = z * s + m with
    per-feature scales s (log-normal) and offsets m. The best possible classifier is linear
    in X: argmax(z @ W_true), whose test accuracy is returned.
    """
    rng = np.random.default_rng(seed)
    W_true = rng.standard_normal((dim, classes)) * (6.0 / np.sqrt(dim))
    scales = np.exp(rng.normal(0.0, 1.0, dim))
    offsets = rng.normal(0.0, 3.0, dim)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = rng.standard_normal((n, dim)).astype(np.float32)
        logits = z @ W_true.astype(np.float32) / temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        cumulative = probs.cumsum(axis=1)
        y = (rng.random((n, 1)) > cumulative).sum(axis=1).clip(0, classes - 1)
        X = (z * scales.astype(np.float32) + offsets.astype(np.float32)).astype(np.float32)
        return X, y.astype(np.int64), logits.argmax(axis=1)

    X_train, y_train, _ = draw(n_train)
    X_test, y_test, bayes = draw(n_test)
    return X_train, y_train, X_test, y_test, float(np.mean(bayes == y_test))


def cifar10(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from softmax_cls.data.cifar import load_dataset

    data = load_dataset(root=root, download=False, progress=False)
    return data.train_images, data.train_labels, data.test_images, data.test_labels


def estimators() -> dict:
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from softmax_cls.estimator import SoftmaxClassifier

    return {
        "SoftmaxClassifier()": lambda: SoftmaxClassifier(random_state=0),
        'SoftmaxClassifier(engine="auto")': lambda: SoftmaxClassifier(random_state=0,
                                                                      engine="auto"),
        "LogisticRegression(lbfgs)": lambda: make_pipeline(
            StandardScaler(), LogisticRegression(solver="lbfgs")),
        # max_iter 20, not the default 1000: with the default, the CIFAR-10 fit had not
        # stopped after 13 minutes (its tolerance test never fired on the noisy loss)
        'SGDClassifier(loss="log_loss", max_iter=20)': lambda: make_pipeline(
            StandardScaler(), SGDClassifier(loss="log_loss", max_iter=20, random_state=0)),
    }


def measure(make, X_train, y_train, X_test, y_test) -> dict:
    model = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(X_train, y_train)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    accuracy = float(np.mean(model.predict(X_test) == y_test))
    messages = sorted({type(w.message).__name__ for w in caught})
    return {"accuracy": accuracy, "fit_wall_s": wall, "fit_cpu_s": cpu, "warnings": messages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/realdata", help="extracted CIFAR-10 folder")
    parser.add_argument("--problems", default="cifar10,features")
    parser.add_argument("--only", default="", help="comma-separated estimator name prefixes")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    import sklearn

    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "numpy": np.__version__, "sklearn": sklearn.__version__,
                           "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
                           "loadavg_start": os.getloadavg()},
               "rows": []}
    for problem in args.problems.split(","):
        if problem == "cifar10":
            X_train, y_train, X_test, y_test = cifar10(args.root)
            note = "CIFAR-10 pixels, 50,000 x 3072 uint8"
        else:
            X_train, y_train, X_test, y_test, bayes = linear_features()
            note = f"features 200,000 x 512 float32 (Bayes accuracy {bayes:.4f})"
        for name, make in estimators().items():
            if args.only and not any(name.startswith(p) for p in args.only.split(",")):
                continue
            for repeat in range(args.repeats):
                row = {"problem": note, "estimator": name, "repeat": repeat,
                       "loadavg": os.getloadavg()[0],
                       **measure(make, X_train, y_train, X_test, y_test)}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    print("\n| problem | estimator | test accuracy | fit wall s | fit CPU s | load avg |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in results["rows"]:
        print(f"| {row['problem']} | {row['estimator']} | {row['accuracy']:.4f} | "
              f"{row['fit_wall_s']:.1f} | {row['fit_cpu_s']:.1f} | {row['loadavg']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
