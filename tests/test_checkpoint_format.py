"""Checkpoints written before the one (C, D) weight layout (format 2, weights (D, C)) still
load, converted once on load, and predict what they predicted then.

tests/data/checkpoint_format2.npz is the last.npz of a 2-epoch run on
tests/data/features_format2.npz (60 rows of 5 float32 features, 3 classes) made by softmax-cls
0.1.0 as released before the layout change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from softmax_cls.training.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from softmax_cls.training.evaluate import predict_checkpoint

DATA = Path(__file__).parent / "data"
OLD = DATA / "checkpoint_format2.npz"


def test_a_format_2_checkpoint_loads_in_the_class_by_feature_layout():
    with np.load(OLD) as raw:
        assert json.loads(str(raw["meta_json"]))["format_version"] == 2
        stored = {key: raw[key] for key in ("W", "velocity", "average", "best_W")}
    checkpoint = load_checkpoint(OLD)
    assert checkpoint.W.shape == (3, 6)  # 3 classes, 5 features and the bias column
    for key, array in stored.items():
        assert array.shape == (6, 3)
        converted = getattr(checkpoint.state, key)
        np.testing.assert_array_equal(converted, array.T)
        assert converted.flags.c_contiguous


def test_a_format_2_checkpoint_predicts_what_its_weights_said():
    checkpoint = load_checkpoint(OLD)
    with np.load(DATA / "features_format2.npz") as features, np.load(OLD) as raw:
        X, W_old = features["X"], raw["W"].astype(np.float64)  # W_old (D, C)
    pre = checkpoint.preprocessor
    expected = (np.hstack([(X - pre.mean) * pre.scale, np.ones((len(X), 1))]) @ W_old)
    np.testing.assert_array_equal(predict_checkpoint(checkpoint, X), expected.argmax(axis=1))


def test_resaving_writes_the_current_format(tmp_path):
    checkpoint = load_checkpoint(OLD)
    path = tmp_path / "new.npz"
    save_checkpoint(path, checkpoint.state, checkpoint.preprocessor, checkpoint.class_names,
                    checkpoint.config_yaml, checkpoint.fingerprint, checkpoint.status,
                    checkpoint.val_rows)
    with np.load(path) as raw:
        assert json.loads(str(raw["meta_json"]))["format_version"] == FORMAT_VERSION == 3
        assert raw["W"].shape == (3, 6)
    again = load_checkpoint(path)
    for key in ("W", "velocity", "average", "best_W"):
        np.testing.assert_array_equal(getattr(again.state, key), getattr(checkpoint.state, key))
