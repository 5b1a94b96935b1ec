"""Image files to uint8 rows: decoding (Pillow), the resize policy, and the row layout.

One row is 3072 uint8 values in the CIFAR order (data.datasets.IMAGE_SHAPE): the red plane,
then green, then blue, each 32 x 32 row-major. A picture of another size is made square the
way torchvision's `Resize(size)` + `CenterCrop(size)` do it: the shorter side is resized to
`size` (bilinear, antialiased), then the centre `size` x `size` is cut out (a long strip:
MAX_RESIZED_PIXELS). EXIF orientation is applied first, so a phone photo is read upright.
Every mode Pillow reads (palette, grey, alpha, 16-bit) is converted to RGB; an alpha channel
is dropped, not composited. 16-bit grey (Pillow's I;16, and I as its PGM reader gives 16-bit
values) keeps its high byte, as 16-bit colour does; float pixels (mode F) and integers
beyond 16 bits have no stated 0-255 scale and are refused rather than clipped.

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
# A picture resized shorter side first is cropped from an image of new_w x new_h pixels; past
# this many (an aspect ratio beyond 1024:1, a 20 million x 1 strip would be 60 GB) the centre
# square's source box is resized alone, the same within a rounding step of the pixel values.
MAX_RESIZED_PIXELS = 1 << 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".pnm", ".tga", ".ico")


def require_pillow():
    """The PIL.Image module, or one error line naming the pip command."""
    try:
        from PIL import Image
    except ImportError:
        raise SoftmaxClsError(f"reading images needs Pillow: {IMAGES_INSTALL}") from None
    return Image


def eight_bit(image):
    """A PIL image whose channels are 8-bit: 16-bit grey scaled by 1/256 (Pillow's own
    convert would clip it: mid-grey would read as white); UnreadableImage for float pixels
    and for integers beyond 0-65535."""
    Image = require_pillow()
    if image.mode == "F":
        raise UnreadableImage("float pixels (mode F) have no stated 0-255 scale")
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnreadableImage("integer pixels beyond 16 bits (mode I) have no stated "
                                  "0-255 scale")
        return Image.fromarray((values >> 8).astype(np.uint8))
    return image


def to_square(image, size: int = IMAGE_SIZE):
    """A PIL image resized (shorter side to `size`) and centre-cropped to size x size, RGB
    (eight_bit first)."""
    Image = require_pillow()
    image = eight_bit(image)
    if image.mode != "RGB":  # convert("RGB") of an RGB image is a copy: 400 MB at 100 MP
        image = image.convert("RGB")
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new_w = size if width <= height else max(size, int(width * scale))
        new_h = size if height <= width else max(size, int(height * scale))
        left = int(round((new_w - size) / 2.0))
        top = int(round((new_h - size) / 2.0))
        if new_w * new_h <= MAX_RESIZED_PIXELS:
            image = image.resize((new_w, new_h), Image.BILINEAR)
            image = image.crop((left, top, left + size, top + size))
        else:  # a long strip: only the centre square, the same source box, is resized
            x, y = width / new_w, height / new_h
            image = image.resize((size, size), Image.BILINEAR,
                                 box=(left * x, top * y, (left + size) * x, (top + size) * y))
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
            # Pillow's warnings about damage it tolerates (a tag past the end of the file,
            # corrupt EXIF) would be lines of its source on stderr: the file is read or refused
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
            try:
                with Image.open(path) as opened:  # refuses a bomb from its header alone
                    opened.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
                    opened.load()
                    # in place: a copy of a 100-megapixel image is 400 MB more at the peak
                    image = ImageOps.exif_transpose(opened, in_place=True) or opened
                    try:
                        image = eight_bit(image)
                    except UnreadableImage as exc:
                        raise UnreadableImage(f"{name}: {exc}") from None
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
