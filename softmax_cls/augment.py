"""On-the-fly augmentation of uint8 minibatches, vectorized over the batch (no per-image loop).

Images are rows of 3072 bytes: 3 planes (R, G, B) of 32x32 pixels, row-major.
"""

from __future__ import annotations

import numpy as np

SIDE = 32


def hflip(batch: np.ndarray, rng: np.random.Generator) -> None:
    """Mirror a random half of the images (B, 3072) uint8 left-right, in place."""
    flip = rng.random(len(batch)) < 0.5
    images = batch[flip].reshape(-1, 3, SIDE, SIDE)
    batch[flip] = images[..., ::-1].reshape(-1, 3 * SIDE * SIDE)


def translate(batch: np.ndarray, max_shift: int, rng: np.random.Generator) -> None:
    """Shift each image (B, 3072) uint8 by up to max_shift pixels in x and y, in place.

    Pixels shifted in from outside the image are 0, as in the usual pad-and-crop. Images that
    drew the same shift are copied together: at most (2 max_shift + 1)^2 slice copies.
    """
    if max_shift == 0:
        return
    n, side = len(batch), SIDE
    padded = np.zeros((n, 3, side + 2 * max_shift, side + 2 * max_shift), dtype=batch.dtype)
    padded[:, :, max_shift:-max_shift, max_shift:-max_shift] = batch.reshape(n, 3, side, side)
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    images = batch.reshape(n, 3, side, side)
    for y in range(2 * max_shift + 1):
        for x in range(2 * max_shift + 1):
            chosen = np.flatnonzero((dy == y) & (dx == x))
            if len(chosen):
                images[chosen] = padded[chosen, :, y : y + side, x : x + side]


def augment_batch(batch: np.ndarray, rng: np.random.Generator, flip: bool, max_shift: int) -> None:
    """Apply the configured augmentations to a uint8 batch (B, 3072) in place."""
    if flip:
        hflip(batch, rng)
    if max_shift:
        translate(batch, max_shift, rng)
