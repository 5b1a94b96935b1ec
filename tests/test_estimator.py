"""SoftmaxClassifier: scikit-learn's own estimator checks, and the math against float64 numpy."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from softmax_cls.estimator import SoftmaxClassifier  # noqa: E402

# Listed the way scikit-learn lists them for its own SGDClassifier
# (sklearn/utils/_test_common/instance_generator.py, PER_ESTIMATOR_XFAIL_CHECKS).
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": (
        "sample_weight is not equivalent to removing/repeating samples: minibatch SGD "
        "divides by the rows of a minibatch, zero-weight rows still take places in the "
        "shuffled minibatches, and the standardisation statistics count every row."
    ),
}


def expected_failed_checks(estimator) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS


@parametrize_with_checks([SoftmaxClassifier(epochs=5), SoftmaxClassifier(epochs=5,
                                                                          engine="auto")],
                         expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def blobs(n=300, d=5, classes=3, seed=0, labels=None):
    """Gaussian blobs (n, d) float64 with offsets and scales, labels (n,) (or `labels`[y])."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, d))
    y = rng.integers(0, classes, n)
    X = (centers[y] + rng.standard_normal((n, d))) * rng.uniform(0.5, 20, d) + rng.normal(
        0, 5, d)
    return X, (y if labels is None else np.asarray(labels)[y])


def reference_one_step(X, y, classes, lr, reg, init_W):
    """One full-batch gradient step from init_W (C, D+1) in float64 numpy, on standardised
    features with a bias column: the math contract written out plainly. Returns the weights
    in the ORIGINAL feature space (C, D + 1), intercepts in the last column."""
    mean, std = X.mean(axis=0), X.std(axis=0)
    Z = np.hstack([(X - mean) / std, np.ones((len(X), 1))])
    S = Z @ init_W.T
    P = np.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    Y = np.eye(classes)[y]
    grad = (P - Y).T @ Z / len(X)
    grad[:, :-1] += 2 * reg * init_W[:, :-1]
    W = init_W - lr * grad
    coef = W[:, :-1] / std
    return np.hstack([coef, (W[:, -1] - coef @ mean)[:, None]])


@pytest.mark.parametrize("engine", ["numpy", "auto", "torch"])
def test_one_full_batch_step_matches_float64_reference(engine):
    X, y = blobs()
    model = SoftmaxClassifier(lr=0.5, reg=0.01, epochs=1, batch_size=len(X), momentum=0.0,
                              nesterov=False, schedule="constant", random_state=3,
                              engine=engine).fit(X, y)
    from softmax_cls.training.fit import initial_state

    init_W = initial_state(model._config(3, 1, 0.5, "constant", None), 6, 3).W
    expected = reference_one_step(X, y, 3, 0.5, 0.01, init_W.astype(np.float64))
    np.testing.assert_allclose(model.weights_, expected, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(model.coef_, expected[:, :-1], rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(model.intercept_, expected[:, -1], rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("classes", [2, 3])
def test_scores_probabilities_and_labels_agree(classes):
    names = ["cat", "dog", "emu"][:classes]
    X, y = blobs(classes=classes, labels=names)
    model = SoftmaxClassifier(epochs=5, random_state=0).fit(X, y)
    assert model.classes_.tolist() == names
    scores = X @ model.coef_.T + model.intercept_
    decision = model.decision_function(X)
    full = X @ model.weights_[:, :-1].T + model.weights_[:, -1]  # every class's score (n, C)
    proba = model.predict_proba(X)
    exp = np.exp(full - full.max(axis=1, keepdims=True))
    np.testing.assert_allclose(proba, exp / exp.sum(axis=1, keepdims=True), rtol=1e-9)
    np.testing.assert_allclose(model.predict_log_proba(X), np.log(proba), rtol=1e-9, atol=1e-12)
    if classes == 2:
        assert model.coef_.shape == (1, 5) and decision.shape == (len(X),)
        np.testing.assert_array_equal(decision, scores[:, 0])
        np.testing.assert_allclose(decision, full[:, 1] - full[:, 0], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-decision)), rtol=1e-9)
        assert np.array_equal(model.predict(X), np.where(decision > 0, "dog", "cat"))
    else:
        assert model.coef_.shape == (3, 5) and decision.shape == (len(X), 3)
        np.testing.assert_array_equal(decision, scores)
        assert np.array_equal(model.predict(X), np.array(names)[full.argmax(axis=1)])
    assert model.score(X, y) > 0.9
    assert model.n_features_in_ == 5 and model.n_iter_ == 5 and len(model.history_) == 5


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 1 epoch
def test_auto_leaves_numba_out_of_a_float16_fit_whose_copy_does_not_fit(monkeypatch):
    """SoftmaxClassifier(engine="auto") on float16 X, the host's available memory faked at
    the reserve (a budget of 0 bytes): fit() gives get_engine the rows, so auto picks the
    torch engine (it uses them as stored) instead of numba and its float32 copy."""
    pytest.importorskip("torch")
    import softmax_cls.engines as engines
    from softmax_cls.engines.memory import RESERVE_BYTES
    from softmax_cls.training import fit as fit_module

    monkeypatch.setattr(engines, "host_available_bytes", lambda: RESERVE_BYTES)
    chosen = []
    real = fit_module.get_engine
    monkeypatch.setattr(fit_module, "get_engine", lambda *args: chosen.append(real(*args)) or
                        chosen[-1])
    X, y = blobs()
    SoftmaxClassifier(epochs=1, engine="auto", device="cpu").fit(X.astype(np.float16), y)
    assert [engine.name for engine in chosen] == ["torch"]


def test_float32_and_float64_input_train_the_same():
    X, y = blobs()
    a = SoftmaxClassifier(epochs=3, random_state=1).fit(X.astype(np.float32), y)
    b = SoftmaxClassifier(epochs=3, random_state=1).fit(X.astype(np.float32).astype(np.float64), y)
    np.testing.assert_array_equal(a.coef_, b.coef_)


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 3 epochs
def test_float16_input_is_used_as_it_is_with_the_weights_of_float32(engine, solver,
                                                                    monkeypatch):
    if engine == "torch":
        pytest.importorskip("torch")
    from softmax_cls import estimator

    seen = []
    real = estimator.fit
    monkeypatch.setattr(estimator, "fit", lambda config, X, *args, **kwargs: seen.append(
        X.dtype) or real(config, X, *args, **kwargs))
    X, y = blobs()
    half = X.astype(np.float16)
    params = dict(epochs=3, random_state=1, engine=engine, device="cpu", solver=solver)
    a = SoftmaxClassifier(**params).fit(half, y)
    b = SoftmaxClassifier(**params).fit(half.astype(np.float32), y)
    assert seen == [np.float16, np.float32]  # no float32 copy of float16 X
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)
    if solver == "sgd":
        a.partial_fit(half, y)
        b.partial_fit(half.astype(np.float32), y)
        np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.predict_proba(half), b.predict_proba(half))


def test_sample_weight_and_class_weight_enter_the_loss_as_row_weights():
    X, y = blobs()
    params = dict(epochs=3, random_state=0, engine="numpy")
    plain = SoftmaxClassifier(**params).fit(X, y)
    ones = SoftmaxClassifier(**params).fit(X, y, sample_weight=np.ones(len(y)))
    np.testing.assert_array_equal(plain.coef_, ones.coef_)
    class_weight = {0: 0.5, 1: 2.0, 2: 1.0}
    by_class = SoftmaxClassifier(class_weight=class_weight, **params).fit(X, y)
    by_row = SoftmaxClassifier(**params).fit(X, y, sample_weight=np.array([0.5, 2.0, 1.0])[y])
    np.testing.assert_array_equal(by_class.coef_, by_row.coef_)
    assert not np.array_equal(by_class.coef_, plain.coef_)
    counts = np.bincount(y)
    balanced = SoftmaxClassifier(class_weight="balanced", **params).fit(X, y)
    manual = SoftmaxClassifier(**params).fit(X, y, sample_weight=(len(y) / (3 * counts))[y])
    np.testing.assert_array_equal(balanced.coef_, manual.coef_)


def test_class_weight_multiplies_the_given_sample_weight():
    """Both given: each row's weight is its sample_weight times its class's weight (a fit
    dropping the sample weights was caught only by the float32 overflow test's message)."""
    X, y = blobs()
    params = dict(epochs=3, random_state=0, engine="numpy")
    row_weight = np.random.default_rng(1).uniform(0.2, 3.0, len(y))
    class_weight = {0: 0.5, 1: 2.0, 2: 1.0}
    both = SoftmaxClassifier(class_weight=class_weight, **params).fit(
        X, y, sample_weight=row_weight)
    product = SoftmaxClassifier(**params).fit(
        X, y, sample_weight=row_weight * np.array([0.5, 2.0, 1.0])[y])
    np.testing.assert_array_equal(both.coef_, product.coef_)


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
@pytest.mark.parametrize("weights", [
    dict(sample_weight=[1.0, -0.5]), dict(class_weight={0: 1.0, 1: -2.0, 2: 1.0}),
])
def test_negative_row_weights_are_refused_before_training(method, weights):
    """A negative weight (given, or from class_weight) would reward misclassifying its row:
    one ValueError naming the row, nothing fitted (LogisticRegression fits it silently)."""
    X, y = blobs()
    sample_weight = weights.get("sample_weight")
    if sample_weight is not None:
        sample_weight = np.where(np.arange(len(y)) == 4, sample_weight[1], sample_weight[0])
    model = SoftmaxClassifier(epochs=2, random_state=0, engine="numpy",
                              class_weight=weights.get("class_weight"))
    extra = {"classes": [0, 1, 2]} if method == "partial_fit" else {}
    with pytest.raises(ValueError, match=r"sample weights must be >= 0 .*: row \d+ has -"):
        getattr(model, method)(X, y, sample_weight=sample_weight, **extra)
    assert not hasattr(model, "coef_")
    zero = np.where(np.arange(len(y)) == 4, 0.0, 1.0)  # zero weights stay allowed
    SoftmaxClassifier(epochs=2, random_state=0, engine="numpy").fit(X, y, sample_weight=zero)


@pytest.mark.parametrize("method, solver", [("fit", "sgd"), ("fit", "lbfgs"),
                                            ("partial_fit", "sgd")])
@pytest.mark.parametrize("row_4, others, class_weight, message", [
    (1e39, 1.0, None, r"finite and representable in float32 .*: row 4 has 1e\+39"),
    (1e30, 1e30, {0: 1.0, 1: 1e10, 2: 1.0},
     r"finite and representable in float32 .*: row \d+ has 1e\+40"),
    (1e-46, 1e-46, None, r"at least one positive weight in float32"),
])
def test_row_weights_float32_cannot_hold_are_refused_before_training(
        method, solver, row_4, others, class_weight, message):
    """Training's weights are float32: 1e39 became inf ("training diverged ... lower lr", the
    wrong cause) and weights that all round to 0 fitted nothing, without a word."""
    X, y = blobs()
    model = SoftmaxClassifier(epochs=2, max_iter=5, random_state=0, engine="numpy",
                              solver=solver, class_weight=class_weight)
    extra = {"classes": [0, 1, 2]} if method == "partial_fit" else {}
    with pytest.raises(ValueError, match=message):
        getattr(model, method)(X, y, sample_weight=np.where(np.arange(len(y)) == 4, row_4,
                                                            others), **extra)
    assert not hasattr(model, "coef_")
    # the edges pass: the largest float32, and the smallest positive one alone
    for edge in (float(np.finfo(np.float32).max), float(np.finfo(np.float32).smallest_subnormal)):
        model._effective_sample_weight(X, y, np.arange(3), np.where(np.arange(len(y)) == 4,
                                                                    edge, 0.0))


def test_partial_fit_once_is_one_epoch_of_fit():
    X, y = blobs()
    one = SoftmaxClassifier(epochs=1, schedule="constant", random_state=4).fit(X, y)
    streamed = SoftmaxClassifier(epochs=10, random_state=4).partial_fit(X, y, classes=[0, 1, 2])
    np.testing.assert_array_equal(one.coef_, streamed.coef_)
    np.testing.assert_array_equal(one.intercept_, streamed.intercept_)


def test_partial_fit_keeps_the_model_when_the_statistics_move():
    X, y = blobs(n=400)
    model = SoftmaxClassifier(epochs=10, random_state=0).partial_fit(X[:200], y[:200],
                                                                      classes=[0, 1, 2])
    before = model.decision_function(X)
    model.set_params(lr=1e-12)  # the step then changes nothing: only the re-expression acts
    model.partial_fit(X[200:] * 3 + 7, y[200:])
    np.testing.assert_allclose(model.decision_function(X), before, rtol=1e-4, atol=1e-4)
    stacked = np.vstack([X[:200], X[200:] * 3 + 7])
    np.testing.assert_allclose(model._pre.mean, stacked.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(1 / model._pre.scale, stacked.std(axis=0), rtol=1e-5)
    assert model.n_iter_ == 1 and len(model.history_) == 2
    with pytest.raises(ValueError, match="classes"):
        SoftmaxClassifier().partial_fit(X, y)
    with pytest.raises(ValueError, match="not in classes"):
        model.partial_fit(X, y + 5)


def test_warm_start_starts_from_the_current_model():
    X, y = blobs()
    model = SoftmaxClassifier(epochs=3, random_state=0).fit(X, y)
    before = model.decision_function(X)
    model.set_params(warm_start=True, lr=1e-12)
    model.fit(X[:150] * 2 - 1, y[:150])  # new statistics, no real step
    np.testing.assert_allclose(model.decision_function(X), before, rtol=1e-4, atol=1e-4)
    cold = SoftmaxClassifier(epochs=3, random_state=0, lr=1e-12).fit(X[:150], y[:150])
    assert np.abs(cold.decision_function(X)).max() < 1e-2  # from the tiny initial weights
    with pytest.raises(ValueError, match="warm_start"):
        model.fit(X, np.where(y == 2, 1, y))


def test_a_warm_start_refuses_other_labels_of_the_same_count():
    """Another label in place of one (as many classes) is not the model's classes either."""
    pytest.importorskip("scipy")
    X, y = blobs()
    model = SoftmaxClassifier(solver="lbfgs", warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match=r"warm_start: y has the classes \[0, 1, 5\]"):
        model.fit(X, np.where(y == 2, 5, y))


def test_early_stopping_keeps_the_best_validation_epoch():
    X, y = blobs(n=400, seed=2)
    model = SoftmaxClassifier(epochs=40, lr=0.5, early_stopping=True, validation_fraction=0.25,
                              patience=2, random_state=0).fit(X, y)
    val_accs = [row["val_acc"] for row in model.history_]
    assert None not in val_accs and len(model.history_) < 40
    assert model.best_epoch_ == 1 + int(np.argmax(val_accs))
    assert len(model.history_) - model.best_epoch_ == 2
    no_stop = SoftmaxClassifier(epochs=3, random_state=0).fit(X, y)
    assert [row["val_acc"] for row in no_stop.history_] == [None] * 3


def test_estimator_trains_exactly_as_the_cli_path(tmp_path):
    """The same seed, data and hyper-parameters as a features run of softmax-train."""
    from softmax_cls.config import config_from_dict
    from softmax_cls.data.features import load_features
    from softmax_cls.training.checkpoint import load_checkpoint
    from softmax_cls.training.runs import train_run

    X, y = blobs(n=500, d=8, classes=4, seed=5)
    X = X.astype(np.float32)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    config = config_from_dict({
        "seed": 7, "engine": "numpy",
        "data": {"dataset": "features", "train": str(tmp_path / "train.npz"), "val_size": 100},
        "preprocess": {"scale": "std"}, "loss": {"reg": 1e-3},
        "optim": {"epochs": 6, "batch_size": 32, "lr": 0.05, "momentum": 0.8,
                  "nesterov": False, "schedule": {"name": "cosine"},
                  "early_stopping": {"patience": 2}},
        "augment": {"hflip": False, "translate": 0}})
    train_run(config, load_features(config.data, False), tmp_path / "run", progress=False)
    best = load_checkpoint(tmp_path / "run" / "best.npz")
    model = SoftmaxClassifier(lr=0.05, reg=1e-3, epochs=6, batch_size=32, momentum=0.8,
                              nesterov=False, early_stopping=True, validation_fraction=0.2,
                              patience=2, random_state=7, engine="numpy").fit(X, y)
    np.testing.assert_array_equal(model._model, best.W)
    np.testing.assert_array_equal(model.weights_,
                                  best.preprocessor.fold(best.W.astype(np.float64)))


@pytest.mark.parametrize("params, match", [
    ({"lr": -1.0}, "lr: must be > 0"), ({"epochs": 0}, "epochs: must be >= 1"),
    ({"schedule": "linear"}, "schedule: must be one of"),
    ({"random_state": -3}, "random_state: must be >= 0"),
    ({"engine": "gpu"}, "engine: must be one of"),
    ({"device": "tpu"}, "device: must be auto, cpu, cuda or cuda:N"),
    ({"engine": "numba", "device": "cuda"}, "device: cuda needs engine torch"),
    ({"early_stopping": True, "validation_fraction": 1.5}, "validation_fraction"),
    ({"tol": "1e-3", "solver": "lbfgs"}, "tol: must be a number, got the string '1e-3'"),
    ({"lr": "0.1"}, "lr: must be a number"), ({"max_iter": "10"}, "max_iter: must be a"),
])
def test_bad_parameters_name_the_parameter(params, match):
    X, y = blobs()
    with pytest.raises(ValueError, match=match):
        SoftmaxClassifier(**params).fit(X, y)


def test_divergence_is_a_value_error_naming_lr():
    X, y = blobs()
    with pytest.raises(ValueError, match="diverged.*lower lr"):
        SoftmaxClassifier(lr=1e30, standardize=False, random_state=0).fit(X * 1e10, y)


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def test_the_default_epochs_converge_on_a_small_problem():
    """scikit-learn's digits: 5 epochs of batches of 256 are 25 steps (0.854 test accuracy);
    "auto" runs enough epochs for 1,000 steps and lands near LogisticRegression."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, y_test = digits_split()
    scaler = StandardScaler().fit(X_train)
    exact = LogisticRegression(max_iter=2000).fit(scaler.transform(X_train), y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # the default does not warn
        model = SoftmaxClassifier(random_state=0).fit(X_train, y_train)
    assert model.n_iter_ == 200 and model.gradient_ratio_ < 0.05
    assert model.score(X_test, y_test) >= exact.score(scaler.transform(X_test), y_test) - 0.015


def test_a_fit_far_from_the_optimum_warns():
    from sklearn.exceptions import ConvergenceWarning

    X_train, _, y_train, _ = digits_split()
    with pytest.warns(ConvergenceWarning, match=r"far from the optimum after 5 epochs: .* 6\d%"):
        model = SoftmaxClassifier(epochs=5, random_state=0).fit(X_train, y_train)
    assert model.gradient_ratio_ > 0.5
    # the ratio is the objective's: the same model refitted to convergence has a small one
    assert SoftmaxClassifier(epochs=400, lr=0.05, random_state=0).fit(
        X_train, y_train).gradient_ratio_ < 0.01
    with pytest.warns(ConvergenceWarning, match=r"far from the optimum after 1 epoch: "):
        SoftmaxClassifier(epochs=1, random_state=0).fit(X_train, y_train)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_the_gradient_ratio_is_the_reference_objectives(solver):
    """gradient_ratio_ (computed by the numpy engine's full-batch evaluation) is the ratio of
    the reference gradient's norms (softmax.loss_and_grad: mean weighted cross-entropy plus
    reg * |W|^2, the bias unpenalised) at the model and at zero weights, over every training
    row with its sample weight, on float16 rows too."""
    from softmax_cls.math.softmax import loss_and_grad

    X_train, _, y_train, _ = digits_split()
    weight = np.random.default_rng(0).uniform(0.2, 3.0, len(y_train))
    for X in (X_train.astype(np.float32), X_train.astype(np.float16)):
        model = SoftmaxClassifier(epochs=3, reg=0.05, random_state=0, solver=solver,
                                  max_iter=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, y_train, sample_weight=weight)
        features = model._pre.transform(X, np.float64)
        labels = np.searchsorted(model.classes_, y_train)
        W = model._model.astype(np.float64)
        norms = [np.linalg.norm(loss_and_grad(at, features, labels, 0.05,
                                              sample_weight=weight)[1])
                 for at in (W, np.zeros_like(W))]
        assert 0.01 < model.gradient_ratio_ < 1
        assert model.gradient_ratio_ == pytest.approx(norms[0] / norms[1], rel=1e-7)


def test_an_lbfgs_convergence_warning_points_at_the_callers_line():
    """The ConvergenceWarning of solver="lbfgs" was attributed to numpy's errstate wrapper
    (numpy/_core/_ufunc_config.py, `return func(*args, **kwargs)`), so a filter on the
    user's module missed it and every fit's warning shared numpy's location."""
    pytest.importorskip("scipy")
    from sklearn.exceptions import ConvergenceWarning

    X, y = blobs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SoftmaxClassifier(solver="lbfgs", max_iter=1).fit(X, y)  # the caller's line
    found = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(found) == 1 and "max_iter 1" in str(found[0].message)
    assert found[0].filename == __file__


def test_numpy_scalars_are_parameters_as_python_numbers():
    """GridSearchCV over np.arange(...) or a float32 array hands out numpy scalars:
    max_iter=np.int64(50) was refused with "max_iter: must be an integer, got np.int64(50)"
    (and epochs, batch_size, lr, tol alike), where scikit-learn's own estimators take them."""
    pytest.importorskip("scipy")
    from sklearn.model_selection import GridSearchCV

    X, y = blobs()
    search = GridSearchCV(SoftmaxClassifier(solver="lbfgs"),
                          {"max_iter": np.array([20, 200]),
                           "tol": np.array([1e-4], dtype=np.float32)}, cv=2).fit(X, y)
    assert search.best_params_["max_iter"] in (20, 200)
    plain = SoftmaxClassifier(epochs=3, batch_size=32, lr=0.0625, random_state=0).fit(X, y)
    numpy = SoftmaxClassifier(epochs=np.int64(3), batch_size=np.int32(32), lr=np.float32(0.0625),
                              random_state=np.int64(0), nesterov=np.bool_(True),
                              standardize=np.bool_(True)).fit(X, y)
    np.testing.assert_allclose(numpy.coef_, plain.coef_, rtol=1e-6)


def test_an_lbfgs_warning_names_the_estimators_parameters():
    """L-BFGS stopping early on unstandardised features of size 1e18 (gradient max-norm
    8e4) blamed only `tol ... below what float64 rounding allows`; and the advice on scale
    must name the estimator's parameter, not the config key preprocess.scale."""
    pytest.importorskip("scipy")
    from sklearn.exceptions import ConvergenceWarning

    X, y = blobs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SoftmaxClassifier(solver="lbfgs", standardize=False, reg=0.0).fit(X * 1e18, y)
    found = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(found) == 1, found
    assert "standardize=True" in found[0] and "preprocess" not in found[0]
    assert "optim." not in found[0] and "or tol set below" in found[0]


def test_the_documented_auto_epoch_counts_are_what_auto_gives():
    """The docstring and docs/estimator.md give epochs="auto"'s count on CIFAR-10 and on
    digits; they said 5 on CIFAR-10, where 50,000 rows in batches of 256 get 6."""
    import math
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "estimator.md").read_text()
    auto = SoftmaxClassifier()
    for text in (" ".join(SoftmaxClassifier.__doc__.split()), page):
        cifar = re.search(r"(\d+) on CIFAR-10's ([\d,]+) training images", text)
        digits = re.search(r"(\d+) on the ([\d,]+) rows of a 70% split of scikit-learn's digits",
                           text)
        assert cifar and digits
        for count, rows in (cifar.groups(), digits.groups()):
            assert auto._epochs(int(rows.replace(",", ""))) == int(count)
    assert len(digits_split()[0]) == 1257
    docstring = " ".join(SoftmaxClassifier.__doc__.split())
    steps = re.search(r"where 5 epochs are (\d+) steps", docstring)
    assert steps and int(steps.group(1)) == 5 * math.ceil(1257 / auto.batch_size)


def test_the_estimator_pages_example_runs():
    """docs/estimator.md's first example, as written, on scikit-learn's digits."""
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "estimator.md").read_text()
    block = re.search(r"^```python\n(.*?)^```", page, re.MULTILINE | re.DOTALL).group(1)
    X_train, X_test, y_train, y_test = digits_split()
    namespace = {"X_train": X_train, "X_test": X_test, "y_train": y_train, "y_test": y_test}
    exec(compile(block, "estimator.md example", "exec"), namespace)
    assert namespace["clf"].score(X_test, y_test) > 0.9
