"""Image files to uint8 rows: decoding (Pillow), the resize policy, and the row layout.

One row is 3072 uint8 values in the CIFAR order (data.datasets.IMAGE_SHAPE): the red plane,
then green, then blue, each 32 x 32 row-major. A picture of another size is made square the
way torchvision's `Resize(size)` + `CenterCrop(size)` do it: the shorter side is resized to
`size` (bilinear, antialiased), then the centre `size` x `size` is cut out. EXIF orientation
is applied first, so a phone photo is read upright. Every mode Pillow reads (palette, grey,
alpha, 16-bit) is converted to RGB; an alpha channel is dropped, not composited.

Pillow is the optional extra `images`; `require_pillow` is the one place that says so.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import SoftmaxClsError, UnreadableImage
from .datasets import IMAGE_SHAPE

IMAGES_INSTALL = "pip install 'softmax-cls[images]'"
IMAGE_SIZE = IMAGE_SHAPE[1]  # 32: the side of the square the models take
# Pillow's own decompression-bomb guard, at a cap that a camera photo (up to ~100 MP) passes
# and a crafted header claiming billions of pixels does not: it is refused before decoding.
MAX_IMAGE_PIXELS = 128 * 1024 * 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".pnm", ".tga", ".ico")


def require_pillow():
    """The PIL.Image module, or one error line naming the pip command."""
    try:
        from PIL import Image
    except ImportError:
        raise SoftmaxClsError(f"reading images needs Pillow: {IMAGES_INSTALL}") from None
    return Image


def to_square(image, size: int = IMAGE_SIZE):
    """A PIL image resized (shorter side to `size`) and centre-cropped to size x size, RGB."""
    Image = require_pillow()
    image = image.convert("RGB")
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new_w = size if width <= height else max(size, int(width * scale))
        new_h = size if height <= width else max(size, int(height * scale))
        image = image.resize((new_w, new_h), Image.BILINEAR)
        left = int(round((new_w - size) / 2.0))
        top = int(round((new_h - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return image


def read_image(path: str | Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) uint8, height x width x RGB: the image file at `path`, made square.

    Raises UnreadableImage (naming the file and why) for a file Pillow cannot decode, a
    truncated one, or one with more than MAX_IMAGE_PIXELS pixels.
    """
    Image = require_pillow()
    from PIL import ImageOps, UnidentifiedImageError

    name = Path(path).name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
            try:
                with Image.open(path) as opened:  # refuses a bomb from its header alone
                    opened.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
                    image = ImageOps.exif_transpose(opened)
                    image.load()
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(f"{name}: too many pixels (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"{name}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnreadableImage(f"{name}: cannot be decoded ({type(exc).__name__})") from None
    return np.asarray(to_square(image, size), dtype=np.uint8)


def to_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 pictures (height x width x RGB) -> (N, 3072) uint8 rows in the
    CIFAR order (colour planes first)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1)


def from_rows(rows: np.ndarray) -> np.ndarray:
    """(N, 3072) uint8 rows in the CIFAR order -> (N, 32, 32, 3) uint8 pictures."""
    return np.ascontiguousarray(rows.reshape(len(rows), *IMAGE_SHAPE).transpose(0, 2, 3, 1))
