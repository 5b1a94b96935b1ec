"""data.images: the resize policy, the row layout, and what an unreadable file gets."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from softmax_cls.data import images
from softmax_cls.errors import UnreadableImage

Image = pytest.importorskip("PIL.Image")


def test_rows_are_colour_planes_first():
    picture = np.zeros((1, 32, 32, 3), np.uint8)
    picture[0, 0, 1] = (10, 20, 30)  # row 0, column 1
    rows = images.to_rows(picture)
    assert rows.shape == (1, 3072) and rows.dtype == np.uint8
    assert (rows[0, [1, 1024 + 1, 2048 + 1]] == (10, 20, 30)).all()
    assert np.count_nonzero(rows) == 3
    assert (images.from_rows(rows) == picture).all()


def test_shorter_side_resized_then_centre_cropped(tmp_path):
    # 32 rows x 96 columns: three 32 x 32 squares, red, green, blue; the centre crop is green
    picture = np.zeros((32, 96, 3), np.uint8)
    for third in range(3):
        picture[:, 32 * third:32 * (third + 1), third] = 200
    Image.fromarray(picture).save(tmp_path / "wide.png")
    read = images.read_image(tmp_path / "wide.png")
    assert read.shape == (32, 32, 3) and read.dtype == np.uint8
    assert (read == picture[:, 32:64]).all()


def test_downscale_keeps_a_flat_colour_and_a_linear_ramp(tmp_path):
    Image.new("RGB", (100, 50), (12, 34, 56)).save(tmp_path / "flat.png")
    assert (images.read_image(tmp_path / "flat.png") == (12, 34, 56)).all()
    # a horizontal ramp 0..255 over 256 columns, 64 rows: halved and cropped, each output
    # column is the mean of its source columns (a linear ramp is kept by any symmetric filter)
    ramp = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    read = images.read_image(tmp_path / "ramp.png").astype(float)
    # 256 x 64 -> 128 x 32, crop columns 48..80: output column j holds source 96 + 2j + 0.5
    expected = 96 + 2 * np.arange(32) + 0.5
    assert np.abs(read[:, :, 0] - expected).max() <= 1.0


def test_grey_palette_and_alpha_become_rgb(tmp_path):
    Image.new("L", (32, 32), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 0)).save(tmp_path / "alpha.png")
    Image.new("RGB", (32, 32), (9, 8, 7)).convert("P").save(tmp_path / "palette.gif")
    assert (images.read_image(tmp_path / "grey.png") == 77).all()
    assert (images.read_image(tmp_path / "alpha.png") == (1, 2, 3)).all()
    assert images.read_image(tmp_path / "palette.gif").shape == (32, 32, 3)


def test_exif_orientation_is_applied(tmp_path):
    # stored 64 wide x 32 tall, left half white; the tag says "rotate 90 degrees clockwise to
    # view": upright it is 32 wide x 64 tall with the white half on top, so the centre crop's
    # top rows are white and its bottom rows black (read as stored, left white, right black)
    picture = Image.new("RGB", (64, 32), (0, 0, 0))
    picture.paste((255, 255, 255), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    picture.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    read = images.read_image(tmp_path / "rotated.jpg").astype(float)
    assert read[:12].mean() > 200 and read[-12:].mean() < 50


def test_a_tall_picture_keeps_its_middle(tmp_path):
    # 96 rows x 32 columns: three squares stacked, red, green, blue; the centre crop is green
    picture = np.zeros((96, 32, 3), np.uint8)
    for third in range(3):
        picture[32 * third:32 * (third + 1), :, third] = 200
    Image.fromarray(picture).save(tmp_path / "tall.png")
    assert (images.read_image(tmp_path / "tall.png") == picture[32:64]).all()


def test_downscaling_is_antialiased(tmp_path):
    # columns alternating 0 and 255, halved: an antialiased filter averages them to about 128,
    # nearest-neighbour sampling would keep 0s or 255s
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    read = images.read_image(tmp_path / "stripes.png").astype(float)
    assert np.abs(read[:, 1:-1] - 127.5).max() <= 2  # the edge columns see one side only


def test_not_an_image_and_truncated_files_are_named(tmp_path):
    (tmp_path / "text.png").write_bytes(b"not a picture")
    Image.new("RGB", (64, 64), (5, 5, 5)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(UnreadableImage, match="text.png"):
        images.read_image(tmp_path / "text.png")
    with pytest.raises(UnreadableImage, match="cut.jpg"):
        images.read_image(tmp_path / "cut.jpg")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(60000, 60000))
    with pytest.raises(UnreadableImage, match="bomb.png"):
        images.read_image(tmp_path / "bomb.png")
    assert Image.MAX_IMAGE_PIXELS != images.MAX_IMAGE_PIXELS  # Pillow's global restored
    # past the cap but under twice it Pillow only warns (and would then decode): refused too
    (tmp_path / "half.png").write_bytes(_png_header_only(12000, 12000))
    with pytest.raises(UnreadableImage, match="half.png: too many pixels"):
        images.read_image(tmp_path / "half.png")


def test_missing_pillow_is_one_line_naming_pip(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(Exception, match=r"pip install 'softmax-cls\[images\]'"):
        images.require_pillow()


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    # a mid-grey 16-bit PNG (Pillow's I;16) and PGM (Pillow's I) are mid-grey, not white
    Image.fromarray(np.full((40, 40), 32768, np.uint16)).save(tmp_path / "grey16.png")
    (tmp_path / "grey16.pgm").write_bytes(b"P5\n8 8\n65535\n"
                                          + np.full(64, 32768, ">u2").tobytes())
    for name in ("grey16.png", "grey16.pgm"):
        assert (images.read_image(tmp_path / name) == 128).all(), name
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "white16.png")
    assert (images.read_image(tmp_path / "white16.png") == 255).all()  # 65535 is 16 bits
    assert (np.asarray(images.to_square(Image.open(tmp_path / "grey16.png"))) == 128).all()


def test_float_and_wide_integer_pixels_are_refused(tmp_path):
    # mode F has no stated scale ([0, 1] would read as black), nor I beyond 16 bits
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "float.tif")
    Image.fromarray(np.full((8, 8), 1 << 20, np.int32)).save(tmp_path / "wide.tif")
    for name in ("float.tif", "wide.tif"):
        with pytest.raises(UnreadableImage, match=name):
            images.read_image(tmp_path / name)


def test_a_long_strip_is_read_in_bounded_memory(tmp_path):
    # 20 million x 1 pixels is under the pixel cap, but resized shorter side first it would
    # be 640 million x 32 (60 GB): the centre square is resized alone. A 1 GB address space
    # limit in a fresh process makes the unbounded way fail at once rather than swap.
    Image.new("RGB", (20_000_000, 1), (10, 200, 30)).save(tmp_path / "strip.png")
    Image.new("RGB", (1, 3_000_000), (40, 50, 60)).save(tmp_path / "tall.png")
    code = ("import resource, sys; from softmax_cls.data.images import read_image; "
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "print(read_image(sys.argv[1])[16, 16].tolist(), read_image(sys.argv[2]).shape)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "strip.png"),
                             str(tmp_path / "tall.png")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[10,", "200,", "30]", "(32,", "32,", "3)"]


def test_the_strip_way_matches_resize_then_crop_within_one_step(monkeypatch):
    rng = np.random.default_rng(2)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))
                for h, w in ((3, 700), (500, 2), (40, 90), (33, 32))]
    usual = [np.asarray(images.to_square(p), dtype=int) for p in pictures]
    monkeypatch.setattr(images, "MAX_RESIZED_PIXELS", 0)
    for picture, expected in zip(pictures, usual, strict=True):
        assert np.abs(np.asarray(images.to_square(picture), dtype=int) - expected).max() <= 1


def test_the_resize_and_crop_boxes_are_torchvisions(tmp_path):
    """Resize(32) + CenterCrop(32) as torchvision computes them, by hand: 110 x 60 becomes
    int(110 * 32 / 60) = 58 x 32 (truncated, not 59) cropped from column
    int(round((58 - 32) / 2)) = 13; 35 x 32 is not resized, its crop starts at
    int(round(1.5)) = 2 (not 1)."""
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 256, (60, 110, 3), np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    resized = np.asarray(Image.fromarray(wide).resize((58, 32), Image.BILINEAR))
    assert (images.read_image(tmp_path / "wide.png") == resized[:, 13:45]).all()
    narrow = rng.integers(0, 256, (32, 35, 3), np.uint8)
    Image.fromarray(narrow).save(tmp_path / "narrow.png")
    assert (images.read_image(tmp_path / "narrow.png") == narrow[:, 2:34]).all()
