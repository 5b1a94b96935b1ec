"""augment.draw_augmentation and the numpy reference apply_augmentation, against np.pad applied
one image at a time."""

from __future__ import annotations

import numpy as np
import pytest

from softmax_cls.math.augment import PADDING_CODES, apply_augmentation, draw_augmentation

PAD_MODES = {"zero": "constant", "edge": "edge", "reflect": "reflect"}


def one_image(image: np.ndarray, flip: bool, dy: int, dx: int, padding: str) -> np.ndarray:
    planes = image.reshape(3, 32, 32)
    if flip:
        planes = planes[:, :, ::-1]
    planes = np.pad(planes, ((0, 0), (8, 8), (8, 8)), PAD_MODES[padding])
    return planes[:, 8 - dy : 40 - dy, 8 - dx : 40 - dx].reshape(-1)


def test_draws_have_the_documented_shapes_and_ranges():
    flip, shift = draw_augmentation(np.random.default_rng(0), 500, True, 3)
    assert flip.shape == (500,) and flip.dtype == bool and 150 < flip.sum() < 350
    assert shift.shape == (500, 2) and shift.dtype == np.int64
    assert shift.min() == -3 and shift.max() == 3
    flip, shift = draw_augmentation(np.random.default_rng(0), 500, False, 0)
    assert flip.shape == (0,) and shift.shape == (0, 2)


def test_draws_are_a_function_of_the_generator():
    a = draw_augmentation(np.random.default_rng(5), 50, True, 2)
    b = draw_augmentation(np.random.default_rng(5), 50, True, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_padding_codes_are_the_kernel_codes():
    assert PADDING_CODES == {"zero": 0, "edge": 1, "reflect": 2}


@pytest.mark.parametrize("padding", ["zero", "edge", "reflect"])
def test_apply_matches_np_pad_image_by_image(padding):
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, size=(40, 3072)).astype(np.uint8)
    flip = rng.random(40) < 0.5
    shift = rng.integers(-8, 9, size=(40, 2))
    expected = np.stack([one_image(batch[i], flip[i], *shift[i], padding) for i in range(40)])
    apply_augmentation(batch, flip, shift, padding)
    np.testing.assert_array_equal(batch, expected)


def test_flip_only_and_shift_only():
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, size=(6, 3072)).astype(np.uint8)
    flip = np.array([True, False, True, False, True, False])
    expected = np.stack([one_image(batch[i], flip[i], 0, 0, "zero") for i in range(6)])
    flipped = batch.copy()
    apply_augmentation(flipped, flip, np.zeros((0, 2), np.int64), "zero")
    np.testing.assert_array_equal(flipped, expected)
    shift = rng.integers(-2, 3, size=(6, 2))
    expected = np.stack([one_image(batch[i], False, *shift[i], "edge") for i in range(6)])
    apply_augmentation(batch, np.zeros(0, bool), shift, "edge")
    np.testing.assert_array_equal(batch, expected)


def test_known_image_edges():
    image = np.tile(np.arange(32, dtype=np.uint8), 96)[None].copy()  # lines 0, 1, ..., 31
    for padding, first in (("zero", [0, 0, 0, 1]), ("edge", [0, 0, 0, 1]),
                           ("reflect", [2, 1, 0, 1])):
        moved = image.copy()
        apply_augmentation(moved, np.zeros(0, bool), np.array([[0, 2]]), padding)
        np.testing.assert_array_equal(moved[0, :4], first)
