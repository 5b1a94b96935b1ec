"""fit() against an independent float64 trainer written here from the math contract.

The reference materialises the preprocessed features from statistics it computes itself on
the training rows, never folds anything, and writes every line of the update rule, the
schedule, the L2 term and the split out again. Any one-line change to those in the package
moves fit()'s weights far beyond float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import separable_data, small_config

from softmax_cls.math.preprocess import split_and_fit
from softmax_cls.training.fit import fit

ENGINES = ["numpy", "numba"]


def engine_or_skip(name: str) -> str:
    if name == "numba":
        pytest.importorskip("numba")
    return name


def reference_fit(config, images, labels, n_classes):
    """(W (C, D) float64 after training, [val accuracy per epoch], [the initial W, then W
    after each step], [learning rate per epoch]) by the contract, in float64."""
    n = len(labels)
    # split: seeded, stratified, the same draw as the package's documented rule
    rng = np.random.default_rng([config.seed, 0x5A1])
    classes, counts = np.unique(labels, return_counts=True)
    quota = config.data.val_size * counts / n
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: config.data.val_size - take.sum()]] += 1
    val = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k]
                                  for c, k in zip(classes, take, strict=True)]))
    train = np.setdiff1d(np.arange(n), val)
    # statistics on the training rows only
    pixels = images[train].astype(np.float64)
    mean = pixels.mean(axis=0) if config.preprocess.center else np.zeros(images.shape[1])
    scale = {"none": np.ones(images.shape[1]), "unit": np.full(images.shape[1], 1 / 255),
             "std": 1 / np.maximum(pixels.std(axis=0), 1e-3)}[config.preprocess.scale]
    X = np.hstack([(images - mean) * scale, np.ones((n, 1))])
    # initial weights as documented: N(0, init_std) from the seed drawn in (D, C) order and
    # transposed to (C, D), rounded to float32
    W = (np.random.default_rng(config.seed).standard_normal((X.shape[1], n_classes)).T
         * config.model.init_std).astype(np.float32).astype(np.float64)
    velocity = np.zeros_like(W)
    optim, loss = config.optim, config.loss
    penalised = np.ones_like(W)
    if not loss.reg_bias:
        penalised[:, -1] = 0  # the bias column
    val_accuracies, weights, lrs = [], [W], []
    for epoch in range(optim.epochs):
        s = optim.schedule
        lr = {"constant": optim.lr, "step": optim.lr * s.gamma ** (epoch // s.step_size),
              "exponential": optim.lr * s.gamma**epoch,
              "cosine": s.min_lr + (optim.lr - s.min_lr)
              * (1 + math.cos(math.pi * epoch / optim.epochs)) / 2}[s.name]
        lrs.append(lr)
        order = train[np.random.default_rng([config.seed, epoch]).permutation(len(train))]
        for start in range(0, len(order), optim.batch_size):
            rows = order[start : start + optim.batch_size]
            Xb, yb = X[rows], labels[rows]
            S = Xb @ W.T
            Z = np.maximum(S - S.max(axis=1, keepdims=True), -loss.clip)
            P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
            P[np.arange(len(rows)), yb] -= 1
            g = P.T @ Xb / len(rows) + 2 * loss.reg * W * penalised
            norm = np.linalg.norm(g)
            if optim.grad_clip is not None and norm > optim.grad_clip:
                g = g * optim.grad_clip / norm
            velocity = optim.momentum * velocity + g
            W = W - lr * (g + optim.momentum * velocity if optim.nesterov else velocity)
            weights.append(W)
        val_accuracies.append(float(np.mean((X[val] @ W.T).argmax(axis=1) == labels[val])))
    return W, val_accuracies, weights, lrs


CASES = {
    "momentum": {},
    "nesterov, clipped": {"optim": {"nesterov": True, "grad_clip": 0.05}},
    "heavy ball, std": {"optim": {"nesterov": False}, "preprocess": {"scale": "std"}},
    "step schedule, strong L2": {"optim": {"schedule": {"name": "step", "gamma": 0.3,
                                                       "step_size": 1}},
                                 "loss": {"reg": 0.05}},
    "exponential, bias penalised": {"optim": {"schedule": {"name": "exponential",
                                                          "gamma": 0.5}},
                                    "loss": {"reg": 0.05, "reg_bias": True}},
    "cosine to min_lr, no centring": {"optim": {"schedule": {"name": "cosine",
                                                            "min_lr": 0.004}},
                                      "preprocess": {"center": False}},
    "scores clipped at 0.5": {"loss": {"clip": 0.5}},
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", list(CASES))
def test_fit_equals_the_float64_reference(tmp_path, engine, case):
    data = separable_data(n_train=240, classes=3, seed=5, noise=90)
    sections = {"optim": {"epochs": 3, "batch_size": 50, "lr": 0.01, "momentum": 0.9,
                          "schedule": {"name": "constant"}, "averaging": {"name": "none"}},
                "augment": {"hflip": False, "translate": 0}, "data": {"val_size": 60},
                "preprocess": {"scale": "unit"}}
    for key, value in CASES[case].items():
        section = sections.setdefault(key, {})
        for inner, inner_value in value.items():
            if isinstance(inner_value, dict):
                section.setdefault(inner, {}).update(inner_value)
            else:
                section[inner] = inner_value
    config = small_config(tmp_path, engine=engine_or_skip(engine), **sections)
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    result = fit(config, data.train_images, data.train_labels, split, pre, 3)
    W_ref, val_ref, _, lrs = reference_fit(config, data.train_images, data.train_labels, 3)
    scale = np.abs(W_ref).max()
    np.testing.assert_allclose(result.state.W, W_ref, rtol=0, atol=2e-5 * scale)
    assert [row["val_acc"] for row in result.state.history] == pytest.approx(val_ref, abs=0.02)
    assert [row["lr"] for row in result.state.history] == pytest.approx(lrs, rel=1e-12)


def test_statistics_come_from_the_training_rows_only(tmp_path):
    data = separable_data(n_train=300, classes=3, seed=1)
    config = small_config(tmp_path, preprocess={"scale": "std"})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    train = data.train_images[split.train_rows].astype(np.float64)
    np.testing.assert_allclose(pre.mean, train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(pre.scale, 1 / np.maximum(train.std(axis=0), 1e-3), rtol=1e-9)
    assert not np.allclose(pre.mean, data.train_images.mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
def test_validation_accuracy_is_measured_on_the_validation_rows(tmp_path, engine):
    data = separable_data(n_train=300, classes=4, seed=2, noise=60)
    config = small_config(tmp_path, engine=engine_or_skip(engine), augment={"hflip": False})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    # wrong labels on the validation rows only: near 0 on them, near 1 on the training rows
    labels = data.train_labels.copy()
    labels[split.val_rows] = (labels[split.val_rows] + 1) % 4
    epochs = []
    fit(config, data.train_images, labels, split, pre, 4,
        on_epoch=lambda state: epochs.append((state.W.copy(), state.history[-1]["val_acc"])))
    features = pre.transform(data.train_images[split.val_rows], np.float64)
    for W, val_acc in epochs:
        expected = float(np.mean((features @ W.T).argmax(axis=1) == labels[split.val_rows]))
        assert val_acc == pytest.approx(expected, abs=1e-9)
    assert epochs[-1][1] < 0.2


def test_early_stopping_patience_counts_epochs_without_improvement(tmp_path):
    data = separable_data(n_train=300, classes=3, seed=3)
    config = small_config(tmp_path, engine="numpy",
                          optim={"epochs": 40, "lr": 0.05, "early_stopping": {"patience": 2}})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    result = fit(config, data.train_images, data.train_labels, split, pre, 3)
    accs = [row["val_acc"] for row in result.state.history]
    best = int(np.argmax(accs))  # the first epoch reaching the maximum
    assert result.stopped_early and len(accs) == best + 1 + 2
    assert result.state.best_epoch == best + 1 and result.state.best_val_acc == accs[best]
    # the patience running out in the last epoch stops nothing: the run did all its epochs
    config = small_config(tmp_path, engine="numpy", optim={"epochs": len(accs), "lr": 0.05,
                                                           "early_stopping": {"patience": 2}})
    whole = fit(config, data.train_images, data.train_labels, split, pre, 3)
    assert [row["val_acc"] for row in whole.state.history] == accs
    assert not whole.stopped_early


def test_epochs_since_best_counts_from_the_last_improvement(tmp_path):
    data = separable_data(n_train=300, classes=3, seed=1)
    labels = data.train_labels.copy()  # half the labels drawn anew: the accuracy swings
    rng = np.random.default_rng(1)
    noisy = rng.random(300) < 0.5
    labels[noisy] = rng.integers(0, 3, noisy.sum())
    config = small_config(tmp_path, engine="numpy", optim={"epochs": 8, "lr": 0.05})
    split, pre = split_and_fit(config, data.train_images, labels)
    seen = []
    fit(config, data.train_images, labels, split, pre, 3,
        on_epoch=lambda state: seen.append((state.history[-1]["val_acc"], state.best_epoch,
                                            state.epochs_since_best)))
    accs = [acc for acc, _, _ in seen]
    expected = [(accs.index(max(accs[: k + 1])) + 1, k - accs.index(max(accs[: k + 1])))
                for k in range(len(accs))]
    assert [(best, since) for _, best, since in seen] == expected
    # a later improvement after an epoch without one: the count starts again from 0
    assert any(expected[k][1] > 0 and expected[k + 1][1] == 0 for k in range(len(accs) - 1))


def test_a_validation_accuracy_of_zero_is_a_best_epoch_like_any_other(tmp_path):
    data = separable_data(n_train=300, classes=3, seed=3)
    config = small_config(tmp_path, engine="numpy",
                          optim={"epochs": 6, "early_stopping": {"patience": 2}})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    # class 2 is never trained on and is every validation row's label: accuracy 0 throughout
    labels = data.train_labels.copy()
    labels[labels == 2] = 0
    labels[split.val_rows] = 2
    result = fit(config, data.train_images, labels, split, pre, 3)
    assert [row["val_acc"] for row in result.state.history] == [0.0, 0.0, 0.0]
    assert result.stopped_early and result.state.best_epoch == 1
    assert result.state.best_val_acc == 0.0


def test_divergence_after_the_first_epoch_names_its_epoch_and_a_lower_lr(tmp_path):
    from softmax_cls.training.fit import TrainingDiverged

    data = separable_data(n_train=200, classes=3, seed=4)
    # initial weights past the features' scale that train finely: not the init_std message
    config = small_config(tmp_path, engine="numpy", model={"init_std": 2.0},
                          optim={"epochs": 3, "lr": 0.01})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)

    def overflow_after_epoch_1(state):
        if state.epoch == 1:
            state.W[0, 0] = np.inf

    with pytest.raises(TrainingDiverged) as caught:
        fit(config, data.train_images, data.train_labels, split, pre, 3,
            on_epoch=overflow_after_epoch_1)
    message = str(caught.value)
    assert message.startswith("training diverged in epoch 2 (")
    assert "optim.lr = 0.01" in message and "--set optim.lr=0.001)" in message
    assert "init_std" not in message


def test_fit_without_validation_rows_keeps_the_last_weights(tmp_path):
    data = separable_data(n_train=200, classes=3, seed=4)
    config = small_config(tmp_path, engine="numpy")
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    split = type(split)(np.arange(200), np.empty(0, np.int64))
    result = fit(config, data.train_images, data.train_labels, split, pre, 3)
    assert result.state.best_epoch == result.state.epoch == 3
    np.testing.assert_array_equal(result.state.best_W, result.state.W)
    assert all(row["val_acc"] is None for row in result.state.history)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["uniform", "ema"])
@pytest.mark.parametrize("start", [0.5, 0.0])
def test_averaged_weights_equal_a_hand_average_of_the_steps(tmp_path, engine, name, start):
    data = separable_data(n_train=240, classes=3, seed=6, noise=90)
    config = small_config(tmp_path, engine=engine_or_skip(engine), augment={"hflip": False},
                          data={"val_size": 60}, preprocess={"scale": "unit"},
                          model={"init_std": 0.01},
                          optim={"epochs": 4, "batch_size": 50, "lr": 0.01,
                                 "schedule": {"name": "constant"},
                                 "averaging": {"name": name, "start": start, "decay": 0.7}})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    state = fit(config, data.train_images, data.train_labels, split, pre, 3).state
    _, _, weights, _ = reference_fit(config, data.train_images, data.train_labels, 3)
    first = round(start * (len(weights) - 1))  # 4 epochs x 4 steps: averaged from step 8, 0
    if name == "uniform":
        expected = np.mean(weights[first + 1 :], axis=0)
    else:
        # the average until its first averaged step is W itself: at start 0 the initial W
        expected = weights[first]
        for W in weights[first + 1 :]:
            expected = 0.7 * expected + 0.3 * W
    scale = np.abs(expected).max()
    np.testing.assert_allclose(state.average, expected, rtol=0, atol=2e-5 * scale)
    # the average is the model: it is what is validated and kept as best_W
    assert not np.allclose(state.average, state.W, rtol=0, atol=1e-3 * scale)
    features = pre.transform(data.train_images[split.val_rows], np.float64)
    best = state.history[state.best_epoch - 1]["val_acc"]
    assert best == pytest.approx(float(np.mean((features @ state.best_W.T).argmax(axis=1)
                                               == data.train_labels[split.val_rows])))


def test_mirror_symmetric_weights_equal_flip_test_time_augmentation(tmp_path):
    data = separable_data(n_train=200, classes=3, seed=7)
    config = small_config(tmp_path, engine="numpy", preprocess={"scale": "std"},
                          model={"mirror_symmetric": True})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    raw_weights = []
    state = fit(config, data.train_images, data.train_labels, split, pre, 3,
                on_epoch=lambda state: raw_weights.append(state.W.astype(np.float64))).state
    images = data.test_images
    mirrored = images.reshape(-1, 3, 32, 32)[..., ::-1].reshape(len(images), 3072)
    W = raw_weights[state.best_epoch - 1]  # the trained weights of the epoch kept as best
    flip_tta = (pre.transform(images, np.float64) @ W.T
                + pre.transform(mirrored, np.float64) @ W.T) / 2
    symmetric = pre.transform(images, np.float64) @ state.best_W.T.astype(np.float64)
    np.testing.assert_allclose(symmetric, flip_tta, rtol=0, atol=1e-5 * np.abs(flip_tta).max())
    # a symmetric model scores an image and its mirror image alike; the trained W does not
    np.testing.assert_allclose(pre.transform(mirrored, np.float64)
                               @ state.best_W.T.astype(np.float64), symmetric, rtol=0,
                               atol=1e-5 * np.abs(symmetric).max())
    assert not np.allclose(pre.transform(images, np.float64) @ W.T, flip_tta, rtol=1e-3)


@pytest.mark.parametrize("engine", ENGINES)
def test_weights_and_average_resume_exactly_through_a_checkpoint(tmp_path, engine):
    from softmax_cls.training.checkpoint import load_checkpoint, save_checkpoint

    data = separable_data(n_train=240, classes=3, seed=8)
    config = small_config(tmp_path, engine=engine_or_skip(engine),
                          augment={"hflip": True, "translate": 2},
                          optim={"epochs": 4, "averaging": {"name": "uniform", "start": 0.25}})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    full = fit(config, data.train_images, data.train_labels, split, pre, 3).state

    def stop_after_two(state):
        if state.epoch == 2:
            save_checkpoint(tmp_path / "last.npz", state, pre, data.class_names, "", {"x": "y"},
                            "running", split.val_rows)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, data.train_images, data.train_labels, split, pre, 3, on_epoch=stop_after_two)
    state = load_checkpoint(tmp_path / "last.npz").state
    resumed = fit(config, data.train_images, data.train_labels, split, pre, 3, state=state).state
    for name in ("W", "velocity", "average", "best_W"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name), err_msg=name)
    assert resumed.history == [dict(row, seconds=r["seconds"]) for row, r in
                               zip(full.history, resumed.history, strict=True)]


def test_a_compile_is_said_once_per_process_and_made_before_the_bar(tmp_path, monkeypatch,
                                                                    capsys):
    # fit asks softmax_cls.engines.numba_engine (the adapter) whether the kernels are compiled
    numba_engine = pytest.importorskip("softmax_cls.engines.numba_engine")
    data = separable_data(n_train=100, classes=2, seed=9)
    config = small_config(tmp_path, engine="numba", optim={"epochs": 1}, data={"val_size": 20})
    split, pre = split_and_fit(config, data.train_images, data.train_labels)
    events = []
    real_train_epoch = numba_engine.kernels.train_epoch  # every epoch's call: record its rows
    monkeypatch.setattr(numba_engine.kernels, "train_epoch",
                        lambda *args: events.append(len(args[0])) or real_train_epoch(*args))
    monkeypatch.setattr(numba_engine, "_announced", False)
    for compiled, progress in ((True, True), (False, False), (False, True)):
        monkeypatch.setattr(numba_engine, "kernels_are_compiled", lambda dtype, c=compiled: c)
        events.clear()
        fit(config, data.train_images, data.train_labels, split, pre, 2, progress=progress)
        said = capsys.readouterr().err.count("compiling the numba kernels once")
        # said on the first uncompiled fit only, progress bar or not (the estimator's,
        # the sweep's trials); the one-row compile call comes before the first epoch
        assert said == (1 if (compiled, progress) == (False, False) else 0)
        assert events == ([100] if compiled else [1, 100])
