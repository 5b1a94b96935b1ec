"""Augmentation of uint8 images: the per-epoch random draws, and the numpy reference that
applies them to a minibatch (the numba kernel applies the same draws inside its gather).

Images are rows of 3072 bytes: 3 planes (R, G, B) of 32x32 pixels, row-major.
"""

from __future__ import annotations

import numpy as np

SIDE = 32


PADDING_CODES = {"zero": 0, "edge": 1, "reflect": 2}
_PAD_MODES = {"zero": "constant", "edge": "edge", "reflect": "reflect"}


def draw_augmentation(rng: np.random.Generator, n: int, hflip: bool, translate: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's augmentation draws for n images, made once so every engine sees them.

    Returns flip (n,) bool (shape (0,) when hflip is off) and shift (n, 2) int64 (dy, dx),
    each in [-translate, translate] (shape (0, 2) when translate is 0).
    """
    flip = rng.random(n) < 0.5 if hflip else np.zeros(0, dtype=bool)
    shift = (rng.integers(-translate, translate + 1, size=(n, 2), dtype=np.int64) if translate
             else np.zeros((0, 2), dtype=np.int64))
    return flip, shift


def apply_augmentation(batch: np.ndarray, flip: np.ndarray, shift: np.ndarray,
                       padding: str = "edge") -> None:
    """Augment images (b, 3072) uint8 in place: mirror where flip (b,), then move the content
    by shift (b, 2) = (dy, dx) pixels, filling from outside the image as `padding` says
    ("zero", "edge": the border pixel repeated, "reflect": mirrored about the border pixel).

    Either array may be empty (no flips, no shifts). Images that share a shift are moved
    together: at most (2T + 1)^2 slice copies for shifts up to T.
    """
    images = batch.reshape(len(batch), 3, SIDE, SIDE)
    if len(flip):
        images[flip] = images[flip][..., ::-1]
    if not len(shift) or not shift.any():
        return
    T = int(np.abs(shift).max())
    padded = np.pad(images, ((0, 0), (0, 0), (T, T), (T, T)), mode=_PAD_MODES[padding])
    for dy, dx in np.unique(shift, axis=0):
        if dy == 0 and dx == 0:
            continue
        chosen = np.flatnonzero((shift[:, 0] == dy) & (shift[:, 1] == dx))
        images[chosen] = padded[chosen, :, T - dy : T - dy + SIDE, T - dx : T - dx + SIDE]


def augmented_views(hflip: bool, translate: int) -> list[tuple[bool, int, int]]:
    """Every augmented copy of an image that the draws above can make: (flip, dy, dx) for
    flip in (False, True) when hflip (else False only) and dy, dx in [-translate, translate].
    The identity view (False, 0, 0) comes first. An exact solver's objective is the mean over
    these views of every training image (docs/lbfgs.md)."""
    flips = (False, True) if hflip else (False,)
    shifts = range(-translate, translate + 1)
    views = [(flip, dy, dx) for flip in flips for dy in shifts for dx in shifts]
    views.remove((False, 0, 0))
    return [(False, 0, 0), *views]


def view_columns(view: tuple[bool, int, int], padding: str = "edge") -> np.ndarray:
    """(3072,) int64: the source column of each value of an image in the augmented view
    (flip, dy, dx), -1 where zero padding fills in a zero. It is apply_augmentation applied
    to an image of column numbers, so the two cannot disagree."""
    flip, dy, dx = view
    numbers = np.arange(1, 3 * SIDE * SIDE + 1, dtype=np.int64)[None]  # 0: zero padding
    apply_augmentation(numbers, np.full(1 if flip else 0, True),
                       np.array([[dy, dx]] if dy or dx else np.zeros((0, 2)), np.int64),
                       padding)
    return numbers[0] - 1


def apply_view(rows: np.ndarray, view: tuple[bool, int, int], padding: str = "edge"
               ) -> np.ndarray:
    """A copy of images (b, 3072) uint8 in the augmented view (flip, dy, dx): every image
    flipped and shifted alike, as apply_augmentation does, in one gather of the columns
    (view_columns): a quarter of the time of flipping, padding and copying the batch."""
    columns = view_columns(view, padding)
    filled = columns < 0
    out = np.take(rows, np.maximum(columns, 0), axis=1)
    if filled.any():
        out[:, filled] = 0
    return out
