"""Preprocessing: split, statistics on train only, 3073 features, the fold into the weights."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REAL_ARCHIVE, needs_real_data

from softmax_cls.data.cifar import load_dataset
from softmax_cls.math.preprocess import (
    Preprocessor,
    fit_preprocessor,
    image_scores,
    raw_features,
    split_train_val,
)
from softmax_cls.training.checkpoint import load_checkpoint, save_checkpoint
from softmax_cls.training.fit import TrainState


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



def float64_mean_std(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The statistics summed in float64 over the whole selection at once (exact for uint8),
    then mean = sum / N and std = sqrt(max(sum_sq / N - mean^2, 0)): pixel_mean_std's rule."""
    values = rows.astype(np.float64)
    mean = values.sum(axis=0) / len(rows)
    return mean, np.sqrt(np.maximum((values * values).sum(axis=0) / len(rows) - mean * mean,
                                    0.0))


@pytest.mark.parametrize("n", [1, 255, 256, 700])
def test_uint8_statistics_summed_in_integers_equal_float64_sums_bit_for_bit(n):
    """uint8 pixels are summed in int64 in chunks of STATS_CHUNK rows: the mean and std are
    the float64 ones to the last bit, extreme pixels included (255 squared needs 16 bits)."""
    from softmax_cls.math import preprocess

    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n + 20, 3072), dtype=np.uint8)
    images[:, :5] = 255
    images[:, 5:9] = 0
    rows = np.sort(rng.permutation(n + 20)[:n])
    mean, std = preprocess.pixel_mean_std(images, rows)
    reference = float64_mean_std(images[rows])
    assert np.array_equal(mean, reference[0]) and np.array_equal(std, reference[1])
    assert mean.dtype == std.dtype == np.float64
    only, none = preprocess.pixel_mean_std(images, rows, std=False)
    assert np.array_equal(only, mean) and none is None
    # float features take the float64 path, with the same result for the same values
    as_float = preprocess.pixel_mean_std(images.astype(np.float32), rows)
    assert np.array_equal(as_float[0], mean) and np.array_equal(as_float[1], std)
    whole = preprocess.pixel_mean_std(images)
    assert np.array_equal(whole[0], float64_mean_std(images)[0])


def float_rows(dtype, n: int = 203, P: int = 37) -> np.ndarray:
    """Float rows (n, P) of `dtype` far from zero mean (so a lost or doubled row shows), a
    constant column and a column of extremes included."""
    rng = np.random.default_rng(7)
    rows = (100 + 3 * rng.standard_normal((n, P))).astype(dtype)
    rows[:, 0] = 5
    rows[::2, 1], rows[1::2, 1] = -1e3, 1e3
    return rows


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("selection", ["all", "range", "strided", "shuffled", "negative",
                                       "one", "repeated", "list"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
def test_float_statistics_are_numpys_float64_ones(monkeypatch, dtype, selection,
                                                  chunk_rows):
    """Float rows: the mean and std of the selected rows are np.mean / np.std of a float64
    copy up to float64 rounding, over one chunk or many (a ragged last one included), with
    rows read in place (all, a contiguous range) or gathered (any other index list)."""
    from softmax_cls.math import preprocess

    P = 37
    monkeypatch.setattr(preprocess, "STATS_CHUNK", chunk_rows)
    images = float_rows(dtype, P=P)
    rows = {"all": None, "range": np.arange(20, 151), "strided": np.arange(3, 203, 3),
            "shuffled": np.random.default_rng(1).permutation(203)[:90],
            "negative": np.arange(-50, 0), "one": np.array([202]),
            "repeated": np.array([5, 5, 7]),  # spans 3 rows, as a range would, but is not
            "list": [5, 6, 7, 9]}[selection]
    chosen = images.astype(np.float64)[slice(None) if rows is None else rows]
    mean, std = preprocess.pixel_mean_std(images, rows)
    assert mean.dtype == std.dtype == np.float64 and mean.shape == std.shape == (P,)
    np.testing.assert_allclose(mean, chosen.mean(axis=0), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(std, chosen.std(axis=0), rtol=1e-9, atol=1e-9)
    only, none = preprocess.pixel_mean_std(images, rows, std=False)
    assert np.array_equal(only, mean) and none is None


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("rows", [[0, 203], [-204, 5], [3, 1000, 4], list(range(200, 210))])
def test_statistics_of_rows_outside_the_array_raise_index_error(dtype, rows):
    from softmax_cls.math import preprocess

    with pytest.raises(IndexError):  # not wrapped around, not clipped
        preprocess.pixel_mean_std(np.zeros((203, 5), dtype=dtype), np.array(rows))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_statistics_of_a_memory_map_and_of_gathered_rows_are_the_same_bits(
        tmp_path, monkeypatch, dtype):
    """The same values in the same order give the same bits, wherever they come from: a
    memory-mapped file read in place, a contiguous range of it, a copy, or rows gathered
    from every other row of a larger array (float64 values: their sums round by order)."""
    from softmax_cls.math import preprocess

    monkeypatch.setattr(preprocess, "STATS_CHUNK", 16)
    images = float_rows(dtype)
    images[:, 2:] += np.random.default_rng(3).standard_normal((203, 35)) * 1e-9
    path = tmp_path / "rows.bin"
    images.tofile(path)
    mapped = np.memmap(path, dtype=dtype, mode="r", shape=images.shape)
    interleaved = np.zeros((2 * len(images), images.shape[1]), dtype=dtype)
    interleaved[1::2] = images
    expected = preprocess.pixel_mean_std(np.array(images))
    for result in (preprocess.pixel_mean_std(mapped),
                   preprocess.pixel_mean_std(mapped, np.arange(len(images))),
                   preprocess.pixel_mean_std(interleaved, np.arange(1, 2 * len(images), 2))):
        assert np.array_equal(result[0], expected[0])
        assert np.array_equal(result[1], expected[1])
    part = preprocess.pixel_mean_std(mapped, np.arange(40, 90))
    reference = images[40:90].astype(np.float64)
    np.testing.assert_allclose(part[0], reference.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(part[1], reference.std(axis=0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scale", ["none", "unit", "std"])
@pytest.mark.parametrize("center", [True, False])
def test_preprocessor_statistics_are_the_float64_ones(images, scale, center):
    rows = np.arange(0, 300, 2)
    pre = fit_preprocessor(images, center=center, scale=scale, rows=rows)
    mean, std = float64_mean_std(images[rows])
    assert np.array_equal(pre.mean, mean if center else np.zeros(3072))
    expected = {"none": np.ones(3072), "unit": np.full(3072, 1 / 255), "std": 1 / std}[scale]
    assert np.array_equal(pre.scale, expected)

@pytest.mark.parametrize("bias", [True, False])
def test_folded_weights_give_the_same_scores_and_gradient(images, bias):
    pre = fit_preprocessor(images, bias=bias)
    W = np.ascontiguousarray(np.random.default_rng(1).standard_normal((pre.n_features, 7)).T)
    X = pre.transform(images, np.float64)
    R = raw_features(images, dtype=np.float64)
    assert pre.fold(W).shape == (7, 3073)
    np.testing.assert_allclose(R @ pre.fold(W).T, X @ W.T, atol=1e-10)
    G = np.random.default_rng(2).standard_normal((300, 7))
    np.testing.assert_allclose(pre.unfold_grad(G.T @ R), G.T @ X, atol=1e-9)
    np.testing.assert_allclose(image_scores(W, pre, images), X @ W.T, atol=1e-10)
    if bias:
        np.testing.assert_allclose(pre.unfold(pre.fold(W)), W, atol=1e-12)


def test_split_is_seeded_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), [500, 400, 600, 500, 500, 500, 500, 500, 500, 500])
    split = split_train_val(labels, 1000, seed=0)
    train, val = split.train_rows, split.val_rows
    assert len(val) == 1000 and len(train) == len(labels) - 1000
    assert not set(train) & set(val)
    assert np.bincount(labels[val]).tolist() == [100, 80, 120] + [100] * 7
    assert val.dtype == train.dtype == np.int64
    assert np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0)
    again = split_train_val(labels, 1000, seed=0).train_rows
    other = split_train_val(labels, 1000, seed=1).train_rows
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(ValueError, match="between"):
        split_train_val(labels, len(labels), seed=0)


def test_statistics_survive_a_checkpoint(tmp_path, images):
    pre = fit_preprocessor(images, scale="unit")
    W = np.zeros((3, 3073), np.float32)
    save_checkpoint(tmp_path / "c.npz", TrainState(W, W.copy(), W.copy(), W.copy()), pre,
                    ("a", "b", "c"), "seed: 0\n", {"fake.bin": "0" * 32}, "running",
                    np.arange(5))
    loaded = load_checkpoint(tmp_path / "c.npz").preprocessor
    assert isinstance(loaded, Preprocessor)
    np.testing.assert_array_equal(loaded.transform(images), pre.transform(images))


@needs_real_data
def test_real_training_features(tmp_path):
    data = load_dataset(root=tmp_path, archive=REAL_ARCHIVE, progress=False)
    train = split_train_val(data.train_labels, 1000, seed=0).train_rows
    pre = fit_preprocessor(data.train_images, scale="std", rows=train)
    X = pre.transform(data.train_images[train])
    assert X.shape == (49000, 3073)
    assert np.all(X[:, -1] == 1)
    assert np.abs(X[:, :-1].mean(axis=0, dtype=np.float64)).max() <= 1e-4


@pytest.mark.parametrize("bias", [True, False])
def test_float32_in_float32_out(images, bias):
    pre = fit_preprocessor(images, scale="std", bias=bias)
    W = np.random.default_rng(3).standard_normal((pre.n_features, 4)).T.astype(np.float32)
    assert pre.transform(images).dtype == np.float32
    assert pre.fold(W).dtype == pre.unfold(pre.fold(W)).dtype == np.float32
    assert pre.unfold_grad(np.ones((4, 3073), np.float32)).dtype == np.float32
    assert raw_features(images).dtype == np.float32
    assert image_scores(W, pre, images).dtype == np.float32
    np.testing.assert_allclose(image_scores(W, pre, images),
                               pre.transform(images, np.float64) @ W.T.astype(np.float64),
                               rtol=1e-4, atol=1e-3)


def test_a_constant_pixel_gets_a_bounded_scale(images):
    images = images.copy()
    images[:, 5] = 77
    pre = fit_preprocessor(images, scale="std")
    assert pre.scale[5] == pytest.approx(1e3) and pre.mean[5] == 77
    with pytest.raises(ValueError, match="scale must be none, unit or std"):
        fit_preprocessor(images, scale="minmax")


def test_split_gives_remainders_to_the_largest_fractions_and_allows_no_validation():
    labels = np.repeat(np.arange(3), [50, 30, 20])  # quotas 3.5, 2.1, 1.4 of 7
    val = split_train_val(labels, 7, seed=0).val_rows
    assert np.bincount(labels[val]).tolist() == [4, 2, 1]
    labels = np.repeat(np.arange(3), [20, 50, 30])  # quotas 1.4, 3.5, 2.1
    assert np.bincount(labels[split_train_val(labels, 7, seed=0).val_rows]).tolist() == [1, 4, 2]
    empty = split_train_val(labels, 0, seed=0)
    assert len(empty.val_rows) == 0 and np.array_equal(empty.train_rows, np.arange(100))
    with pytest.raises(ValueError, match="between 1 and 99"):
        split_train_val(labels, 100, seed=0)
    with pytest.raises(ValueError):
        split_train_val(labels, -1, seed=0)


def test_split_and_fit_follows_the_config(tmp_path, images):
    from conftest import small_config

    from softmax_cls.errors import ConfigError
    from softmax_cls.math.preprocess import split_and_fit

    labels = np.arange(300) % 3
    config = small_config(tmp_path, preprocess={"bias": False, "center": False, "scale": "unit"},
                          data={"val_size": 30})
    split, pre = split_and_fit(config, images, labels)
    assert not pre.bias and not pre.mean.any() and np.all(pre.scale == 1 / 255)
    assert len(split.val_rows) == 30
    with pytest.raises(ConfigError, match=r"^data\.val_size: must be between 1 and 299"):
        split_and_fit(small_config(tmp_path, data={"val_size": 300}), images, labels)


def test_checkpoint_keeps_a_preprocessing_without_bias(tmp_path, images):
    pre = fit_preprocessor(images, bias=False)
    W = np.zeros((2, 3072), np.float32)
    save_checkpoint(tmp_path / "c.npz", TrainState(W, W.copy(), W.copy(), W.copy()), pre,
                    ("a", "b"), "seed: 0\n", {"fake.bin": "0" * 32}, "running", np.arange(3))
    assert load_checkpoint(tmp_path / "c.npz").preprocessor.bias is False


def test_split_breaks_ties_between_equal_classes_by_class_order():
    labels = np.repeat(np.arange(100), 10)  # 100 equal classes: every fraction ties
    val = split_train_val(labels, 130, seed=0).val_rows
    assert np.bincount(labels[val]).tolist() == [2] * 30 + [1] * 70


def test_mirror_weights_need_image_columns_and_the_bias(images):
    from softmax_cls.math.preprocess import mirror_weights

    W = np.random.default_rng(0).standard_normal((3073, 2)).T.astype(np.float32)
    assert mirror_weights(W, fit_preprocessor(images)).dtype == np.float32
    with pytest.raises(ValueError, match="need 3072 image columns and the bias column"):
        mirror_weights(W[:, :3072], fit_preprocessor(images, bias=False))
    with pytest.raises(ValueError, match="need 3072 image columns"):
        mirror_weights(W[:, :101], fit_preprocessor(images[:, :100]))


@pytest.mark.parametrize("bias", [True, False])
def test_fold_and_unfold_grad_write_into_the_given_buffers(images, bias):
    pre = fit_preprocessor(images, scale="std", bias=bias)
    rng = np.random.default_rng(4)
    W = rng.standard_normal((5, pre.n_features))
    out = np.full((5, 3073), np.nan)
    assert pre.fold(W, out=out) is out
    np.testing.assert_array_equal(out, pre.fold(W))
    grad_raw = rng.standard_normal((5, 3073))
    grad, scratch = np.full((5, pre.n_features), np.nan), np.full((5, 3072), np.nan)
    assert pre.unfold_grad(grad_raw, out=grad, scratch=scratch) is grad
    np.testing.assert_array_equal(grad, pre.unfold_grad(grad_raw))
    mean, scale = pre.vectors(np.float32)
    assert mean.dtype == scale.dtype == np.float32
    np.testing.assert_array_equal(mean, pre.mean.astype(np.float32))
    np.testing.assert_array_equal(scale, pre.scale.astype(np.float32))


def test_a_constant_float_column_whose_sums_round_below_zero_variance_gets_the_bounded_scale():
    rows = float_rows(np.float32)
    rows[:, 2] = 0.7  # its float64 sums give E[x^2] - E[x]^2 of about -1e-15, not 0
    pre = fit_preprocessor(rows, scale="std")
    assert pre.scale[2] == pytest.approx(1 / 1e-3)


def test_split_floors_each_quota_before_giving_out_the_remainders():
    labels = np.repeat(np.arange(3), [13, 13, 9])  # quotas 2.6, 2.6, 1.8 of 7
    val = split_train_val(labels, 7, seed=0).val_rows
    assert np.bincount(labels[val]).tolist() == [3, 2, 2]


def test_split_and_fit_fits_the_statistics_on_its_train_rows_only(tmp_path, images):
    from conftest import small_config

    from softmax_cls.math.preprocess import split_and_fit

    labels = np.arange(300) % 3
    config = small_config(tmp_path, preprocess={"center": True, "scale": "std"},
                          data={"val_size": 100})
    split, pre = split_and_fit(config, images, labels)
    mean, std = float64_mean_std(images[split.train_rows])
    np.testing.assert_allclose(pre.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(pre.scale, 1 / std, rtol=1e-12)


def test_mirror_weights_score_an_image_as_the_mean_of_it_and_its_mirror_image(images):
    from softmax_cls.math.preprocess import mirror_weights

    pre = fit_preprocessor(images)
    W = np.ascontiguousarray(np.random.default_rng(3).standard_normal((pre.n_features, 4)).T)
    mirrored = images.reshape(-1, 3, 32, 32)[..., ::-1].reshape(len(images), 3072)
    flip_tta = (pre.transform(images, np.float64) @ W.T
                + pre.transform(mirrored, np.float64) @ W.T) / 2
    symmetric = mirror_weights(W, pre)
    assert symmetric.dtype == np.float64
    np.testing.assert_allclose(pre.transform(images, np.float64) @ symmetric.T, flip_tta,
                               rtol=0, atol=1e-10 * np.abs(flip_tta).max())
