"""A trained model for prediction: a checkpoint loaded once, and every input a user may hold
turned into the raw rows the checkpoint scores, or refused with one InputError.

An image model (data.dataset cifar10, cifar100) takes
- uint8 arrays, pixel values 0-255: (N, 32, 32, 3) NHWC (height x width x RGB, as PIL,
  OpenCV after BGR->RGB, and matplotlib hold pictures), (N, 3, 32, 32) NCHW (as torch
  holds them), or one (32, 32, 3) / (3, 32, 32) image;
- PIL images and image file paths, of any size: resized as data.images states (shorter side
  to 32, centre crop);
- a list mixing them;
- (N, 3072) uint8 rows in CIFAR's order (red plane, green, blue) with layout="rows" only.
Refused: floats (pixels scaled to [0, 1] above all), other integer types, NaN, a wrong size, a
wrong layout, a wrong number of dimensions. A feature model (data.dataset features) takes
(N, P) real feature rows (or one (P,) row) and .npy / .npz feature files.
"""

from __future__ import annotations

import os

import numpy as np

from ..data.datasets import IMAGE_BYTES, IMAGE_SHAPE
from ..data.features import read_feature_rows
from ..data.images import IMAGE_SIZE, read_image, to_rows, to_square
from ..errors import InputError
from ..fsutil import require_file
from ..math.softmax import softmax_probs
from ..text import shorten
from ..training.checkpoint import Checkpoint, load_checkpoint
from ..training.evaluate import checkpoint_scores

LAYOUTS = ("auto", "nhwc", "nchw", "rows")
NHWC = (IMAGE_SIZE, IMAGE_SIZE, 3)  # one picture: height x width x RGB
NCHW = IMAGE_SHAPE  # (3, 32, 32): RGB planes
EXPECTED = (f"uint8 pixels 0-255 as (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) NHWC or "
            f"(N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) NCHW arrays, PIL images or file paths")


class Model:
    """A checkpoint ready to predict. class_names (C,) tuple of str; is_image_model: whether it
    takes images (else feature rows of n_inputs columns)."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.class_names: tuple[str, ...] = checkpoint.class_names
        self.is_image_model = checkpoint.config.data.dataset != "features"
        self.n_inputs = checkpoint.preprocessor.n_raw

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """The checkpoint at `path` (a run's best.npz), checked as every command checks it;
        DataError naming the file when it is missing or not a checkpoint."""
        return cls(load_checkpoint(path))

    @property
    def expects(self) -> str:
        """What predict takes, in words."""
        if self.is_image_model:
            return EXPECTED
        return f"feature rows (N, {self.n_inputs}) of real numbers, or .npy / .npz files"

    def rows(self, x, layout: str = "auto") -> np.ndarray:
        """The raw rows (N, P) the checkpoint scores, uint8 CIFAR-order pixels or float32
        features, from any input the module docstring lists; InputError for the rest."""
        if layout not in LAYOUTS:
            raise InputError(f"layout must be one of {', '.join(LAYOUTS)}, got "
                             f"{shorten(layout, 40, quote=True)}")
        if not self.is_image_model:
            return self._feature_rows(x)
        if isinstance(x, (list, tuple)):
            if layout == "rows":
                raise InputError("layout='rows' takes one (N, 3072) uint8 array, not a list")
            parts = [self.rows(item, layout) for item in x]
            return np.concatenate(parts) if parts else np.empty((0, IMAGE_BYTES), np.uint8)
        if isinstance(x, (str, os.PathLike)):
            if os.path.isdir(x):
                raise InputError(f"{shorten(x)} is a folder: pass its files (softmax-predict "
                                 "takes folders)")
            # a pipe is not opened: it would wait for a writer
            require_file(x, f"no such image file: {shorten(x)}", shorten(x), InputError)
            return to_rows(read_image(x)[None])
        if _is_pil_image(x):
            return to_rows(np.asarray(to_square(x), dtype=np.uint8)[None])
        if not isinstance(x, np.ndarray):
            raise InputError(f"cannot predict on a {type(x).__name__}; this model takes "
                             f"{EXPECTED}")
        return image_rows(x, layout)

    def scores(self, x, layout: str = "auto") -> np.ndarray:
        """Class scores (N, C) float32: the path softmax-eval scores a split by."""
        return checkpoint_scores(self.checkpoint, self.rows(x, layout))

    def predict_proba(self, x, layout: str = "auto") -> np.ndarray:
        """Class probabilities (N, C) float32, rows summing to 1 (math.softmax)."""
        scores = self.scores(x, layout)
        return softmax_probs(scores) if len(scores) else scores

    def predict(self, x, layout: str = "auto") -> np.ndarray:
        """Class indices (N,) int64 into class_names: the argmax of the scores."""
        return self.scores(x, layout).argmax(axis=1).astype(np.int64)

    def top_k(self, x, k: int | None = None, layout: str = "auto"
              ) -> tuple[np.ndarray, np.ndarray]:
        """(classes (N, k) int64, probabilities (N, k) float32): each row's k most probable
        classes (k: 3, or every class of a model with fewer, as softmax-predict's default),
        most probable first (equal probabilities: the lower class index first). InputError,
        before x is read, unless k is an int (numpy's too; not a bool or a float) from 1 to
        the classes."""
        if k is None:
            k = min(3, len(self.class_names))
        check_k(k, len(self.class_names))  # before the inputs are scored
        return top_k(self.predict_proba(x, layout), k)

    def _feature_rows(self, x) -> np.ndarray:
        P = self.n_inputs
        if isinstance(x, (str, os.PathLike)):
            x = read_feature_rows(x)
        elif isinstance(x, (list, tuple)) or _is_pil_image(x):
            raise InputError(f"this checkpoint is a linear probe on {P} features, not an "
                             f"image model: it takes {self.expects}")
        if not isinstance(x, np.ndarray):
            raise InputError(f"cannot predict on a {type(x).__name__}; this model takes "
                             f"{self.expects}")
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != P:
            raise InputError(f"this checkpoint takes feature rows (N, {P}), got an array of "
                             f"shape {shorten(x.shape, 60)}"
                             + (" (an image? it is a linear probe on features, not an image "
                                "model)" if x.shape[-3:] in (NHWC, NCHW) else ""))
        if x.dtype.kind not in "fiu":
            raise InputError(f"feature rows must hold real numbers, got {shorten(x.dtype, 40)}")
        # float16 rows are scored as they are (converted chunk by chunk, exactly): a float16
        # file needs no float32 copy to be predicted on
        rows = x if x.dtype == np.float16 else x.astype(np.float32, copy=False)
        if not np.isfinite(rows).all():
            row = int(np.argwhere(~np.isfinite(rows))[0][0])
            raise InputError(f"feature row {row} holds NaN or inf (features must be finite)")
        return rows


def image_rows(x: np.ndarray, layout: str = "auto") -> np.ndarray:
    """(N, 3072) uint8 CIFAR-order rows of a uint8 image array: (N, 32, 32, 3) or one
    (32, 32, 3) image with layout "nhwc", (N, 3, 32, 32) or (3, 32, 32) with "nchw", either
    with "auto", (N, 3072) rows with "rows" only: a 2-d array is ambiguous (a picture
    flattened height x width x RGB has the same shape). InputError for every other dtype,
    shape or layout."""
    _check_pixels(x)
    shape = shorten(x.shape, 60)
    if layout == "rows":
        if x.ndim != 2 or x.shape[1] != IMAGE_BYTES:
            raise InputError(f"layout='rows' takes (N, {IMAGE_BYTES}) uint8 rows in CIFAR's "
                             f"order (R, G, B planes), got shape {shape}")
        return x
    if x.ndim == 2:
        raise InputError(f"a 2-d array {shape} is ambiguous: pass images as {EXPECTED}; rows "
                         f"(N, {IMAGE_BYTES}) already in CIFAR's order (R, G, B planes, as the "
                         "data set stores them) need layout='rows'")
    if x.ndim not in (3, 4):
        raise InputError(f"a {x.ndim}-d array of shape {shape}: expected {EXPECTED}")
    batch = x if x.ndim == 4 else x[None]
    fits = [name for name, picture in (("nhwc", NHWC), ("nchw", NCHW))
            if batch.shape[1:] == picture and layout in ("auto", name)]
    if len(fits) != 1:
        raise InputError(_layout_problem(batch.shape[1:], layout, shape))
    if len(batch) == 0:
        return np.empty((0, IMAGE_BYTES), np.uint8)
    if fits[0] == "nchw":
        return np.ascontiguousarray(batch).reshape(len(batch), IMAGE_BYTES)
    return to_rows(batch)


def _layout_problem(picture: tuple[int, ...], layout: str, shape: str) -> str:
    """Why one picture's shape (its 3 dimensions) fits no layout allowed."""
    wanted = {"nhwc": f"(N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3)",
              "nchw": f"(N, 3, {IMAGE_SIZE}, {IMAGE_SIZE})"}
    if sorted(picture) == sorted(NHWC):
        if layout in wanted:
            return f"layout='{layout}' takes {wanted[layout]}, got shape {shape}"
        return (f"shape {shape} is neither NHWC {wanted['nhwc']} nor NCHW {wanted['nchw']}; "
                "transpose it to one of them")
    if 3 in picture:
        return (f"images of shape {shape}: this model takes {IMAGE_SIZE} x {IMAGE_SIZE} RGB "
                "pictures; resize them first, or pass the files or PIL images, which are "
                "resized (shorter side, then a centre crop)")
    return f"shape {shape} has no colour axis of 3: expected {EXPECTED}"


def _check_pixels(x: np.ndarray) -> None:
    """InputError unless `x` holds uint8 pixels."""
    if x.dtype == np.uint8:
        return
    if x.dtype.kind == "f":
        if x.size and np.isnan(x).any():
            raise InputError("the images hold NaN; pass uint8 pixels 0-255")
        if x.size and x.min() >= 0 and x.max() <= 1:
            raise InputError(f"float pixels in [0, 1] ({x.dtype}): pass uint8 pixels 0-255, "
                             "e.g. (x * 255).round().astype(np.uint8)")
        raise InputError(f"float pixels ({x.dtype}): pass uint8 pixels 0-255; the model would "
                         "read floats of another scale as other colours")
    if x.dtype.kind in "iu":
        fits = x.size == 0 or (x.min() >= 0 and x.max() <= 255)
        raise InputError(f"{x.dtype} pixels: pass uint8 pixels 0-255"
                         + (" (these fit: x.astype(np.uint8))" if fits else ""))
    raise InputError(f"a {shorten(x.dtype, 40)} array: pass uint8 pixels 0-255")


def _is_pil_image(x) -> bool:
    """Whether x is a PIL image, without importing Pillow when nothing could be one."""
    module = type(x).__module__ or ""
    if not module.startswith("PIL."):
        return False
    from PIL import Image

    return isinstance(x, Image.Image)


def check_k(k, classes: int) -> None:
    """InputError unless `k` is an integer (a Python or numpy int, not a bool, not a float
    such as 2.0; numpy's bool is no np.integer) with 1 <= k <= classes."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"top-k must be an integer between 1 and {classes} (the classes), "
                         f"got {shorten(repr(k), 40)} ({type(k).__name__})")
    if not 1 <= k <= classes:
        raise InputError(f"top-k must be between 1 and {classes} (the classes), got {k}")


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes (N, k) int64, probabilities (N, k)) of probabilities (N, C): each row's k
    largest, largest first, ties by the lower class index. InputError unless k is an
    integer with 1 <= k <= C (check_k)."""
    check_k(k, probabilities.shape[1])
    k = int(k)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k].astype(np.int64)
    return order, np.take_along_axis(probabilities, order, axis=1)

