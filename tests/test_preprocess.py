"""Preprocessing: split, statistics on train only, 3073 features, the fold into the weights."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REAL_ARCHIVE, needs_real_data

from softmax_cls.augment import hflip, translate
from softmax_cls.checkpoint import TrainState, load_checkpoint, save_checkpoint
from softmax_cls.datasets import load_dataset
from softmax_cls.errors import ConfigError
from softmax_cls.preprocess import (
    Preprocessor,
    fit_preprocessor,
    image_scores,
    raw_features,
    split_train_val,
)


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(300, 3072), dtype=np.uint8)


@pytest.mark.parametrize("scale", ["none", "unit", "std"])
@pytest.mark.parametrize("center", [True, False])
def test_features_have_a_bias_column_and_centred_means(images, scale, center):
    pre = fit_preprocessor(images, center=center, scale=scale)
    X = pre.transform(images)
    assert X.shape == (300, 3073) and X.dtype == np.float32
    assert np.all(X[:, -1] == 1)
    if center:
        assert np.abs(X[:, :-1].mean(axis=0)).max() <= 1e-4
    if scale == "std":
        np.testing.assert_allclose(X[:, :-1].std(axis=0), 1.0, rtol=1e-4)
    assert fit_preprocessor(images, bias=False).transform(images).shape == (300, 3072)


def test_statistics_come_from_the_given_rows_only(images):
    rows = np.arange(0, 300, 3)
    np.testing.assert_allclose(fit_preprocessor(images, rows=rows).mean,
                               images[rows].mean(axis=0))
    np.testing.assert_allclose(fit_preprocessor(images, rows=rows).scale,
                               1 / images[rows].std(axis=0))


@pytest.mark.parametrize("bias", [True, False])
def test_folded_weights_give_the_same_scores_and_gradient(images, bias):
    pre = fit_preprocessor(images, bias=bias)
    W = np.random.default_rng(1).standard_normal((pre.n_features, 7))
    X = pre.transform(images, np.float64)
    R = raw_features(images, dtype=np.float64)
    np.testing.assert_allclose(R @ pre.fold(W), X @ W, atol=1e-10)
    G = np.random.default_rng(2).standard_normal((300, 7))
    np.testing.assert_allclose(pre.unfold_grad(R.T @ G), X.T @ G, atol=1e-9)
    np.testing.assert_allclose(image_scores(W, pre, images, chunk=64), X @ W, atol=1e-10)


def test_split_is_seeded_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), [500, 400, 600, 500, 500, 500, 500, 500, 500, 500])
    train, val = split_train_val(labels, 1000, seed=0)
    assert len(val) == 1000 and len(train) == len(labels) - 1000
    assert not set(train) & set(val)
    assert np.bincount(labels[val]).tolist() == [100, 80, 120] + [100] * 7
    again, _ = split_train_val(labels, 1000, seed=0)
    other, _ = split_train_val(labels, 1000, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(ConfigError, match="data.val_size"):
        split_train_val(labels, len(labels), seed=0)


def test_statistics_survive_a_checkpoint(tmp_path, images):
    pre = fit_preprocessor(images, scale="unit")
    W = np.zeros((3073, 3), np.float32)
    save_checkpoint(tmp_path / "c.npz", TrainState(W, W.copy(), W.copy()), pre, ("a", "b", "c"),
                    "seed: 0\n", {"fake.bin": "0" * 32}, "running")
    loaded = load_checkpoint(tmp_path / "c.npz").preprocessor
    assert isinstance(loaded, Preprocessor)
    np.testing.assert_array_equal(loaded.transform(images), pre.transform(images))


def test_augmentations_move_pixels_as_described():
    image = np.arange(3072, dtype=np.int64).reshape(3, 32, 32) % 251
    batch = np.repeat(image.reshape(1, -1).astype(np.uint8), 64, axis=0)
    flipped = batch.copy()
    hflip(flipped, np.random.default_rng(0))
    mirrored = image[..., ::-1].reshape(-1).astype(np.uint8)
    is_flipped = [np.array_equal(row, mirrored) for row in flipped]
    is_same = [np.array_equal(row, batch[0]) for row in flipped]
    assert all(a or b for a, b in zip(is_flipped, is_same, strict=True))
    assert 10 < sum(is_flipped) < 54
    shifted = batch.copy()
    translate(shifted, 2, np.random.default_rng(0))
    assert sum(not np.array_equal(row, batch[0]) for row in shifted) > 40  # 24 of 25 shifts move
    for row in shifted.reshape(64, 3, 32, 32):  # each row is the image moved by (dy, dx)
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(row[:, max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)],
                                   image[:, max(-dy, 0):32 - max(dy, 0),
                                         max(-dx, 0):32 - max(dx, 0)].astype(np.uint8))]
        assert found
        dy, dx = found[0]
        if dy > 0:
            assert not row[:, :dy].any()  # shifted in from outside: black, not wrapped around
        if dx < 0:
            assert not row[:, :, dx:].any()


@needs_real_data
def test_real_training_features(tmp_path):
    data = load_dataset(root=tmp_path, archive=REAL_ARCHIVE, progress=False)
    train, val = split_train_val(data.train_labels, 1000, seed=0)
    pre = fit_preprocessor(data.train_images, rows=train)
    X = pre.transform(data.train_images[train])
    assert X.shape == (49000, 3073)
    assert np.all(X[:, -1] == 1)
    assert np.abs(X[:, :-1].mean(axis=0, dtype=np.float64)).max() <= 1e-4
