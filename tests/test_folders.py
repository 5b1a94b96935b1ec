"""data.dataset folder: image folders scanned, cached, split, and used by every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from softmax_cls.config import FOLDER_TEST_FRACTION, config_from_dict
from softmax_cls.data import folders
from softmax_cls.errors import DataError
from softmax_cls.training.checkpoint import load_checkpoint
from tests.cli_util import assert_one_line_error, run

Image = pytest.importorskip("PIL.Image")

# three classes told apart by colour and by pattern, whatever the noise
CLASSES = {"red": (200, 40, 40), "green": (40, 180, 60), "stripes": (120, 120, 120)}


def picture(name: str, rng: np.random.Generator, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    """One noisy (height, width, 3) uint8 picture of class `name`."""
    pixels = np.array(CLASSES[name], float) + rng.normal(0, 20, (*size, 3))
    if name == "stripes":
        pixels[::4] = 250
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_folder(path: Path, per_class: int = 20, seed: int = 0) -> Path:
    """An image folder: one sub-folder per class, PNG and JPEG files alternating, some of each
    class one folder deeper."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        for i in range(per_class):
            folder = path / name / ("deeper" if i % 5 == 4 else "")
            folder.mkdir(parents=True, exist_ok=True)
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(picture(name, rng)).save(folder / f"{name}{i:02d}.{suffix}")
    return path


def data_config(train: Path, root: Path, **keys):
    return config_from_dict({"data": {"dataset": "folder", "train": str(train),
                                      "root": str(root), **keys}}).data


def listing(folder: Path) -> list[tuple[str, int, int]]:
    """Every entry below `folder`, hidden ones included, with size and mtime."""
    found = []
    for where, dirs, names in os.walk(folder):
        for name in dirs + names:
            info = os.lstat(Path(where) / name)
            found.append((str(Path(where, name).relative_to(folder)), info.st_size,
                          info.st_mtime_ns))
    return sorted(found)


@pytest.fixture
def counted_reads(monkeypatch):
    """Counts the images data.folders decodes."""
    calls = []
    real = folders.read_image

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folders, "read_image", counting)
    return calls


# -- discovery ----------------------------------------------------------------------------

def test_classes_are_the_sorted_sub_folders_and_images_are_found_at_any_depth(tmp_path):
    images = tmp_path / "images"
    for name in ("b_dog", "a_cat", "C_bird"):
        (images / name / "sub").mkdir(parents=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(images / name / "z.png")
        Image.new("RGB", (8, 8), (1, 2, 3)).save(images / name / "sub" / "a.JPG")
    (images / "README.txt").write_text("top-level files belong to no class")
    (images / ".hidden").mkdir()
    (images / "a_cat" / ".DS_Store").write_bytes(b"\0")
    (images / "a_cat" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(images / "a_cat" / ".ipynb_checkpoints" / "copy.png")
    scan = folders.scan_folder(images)
    assert scan.class_names == ("C_bird", "a_cat", "b_dog")  # Python's sorted(), as torchvision
    assert scan.files == [(f"{name}/{rel}", index)  # a folder's files, then its sub-folders
                          for index, name in enumerate(scan.class_names)
                          for rel in ("z.png", "sub/a.JPG")]
    assert scan.skipped == []


def test_files_and_sub_folders_are_taken_in_sorted_order(tmp_path):
    """A class's files, then its sub-folders', each in sorted order whatever the order the
    file system lists them in: the row order, and so the held-out split, is the same on any
    machine."""
    images = tmp_path / "images"
    for rel in ("cat/z.png", "cat/m.png", "cat/b/y.png", "cat/a/x.png", "cat/a/w.png",
                "dog/d.png"):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(images / rel)
    assert [rel for rel, _ in folders.scan_folder(images).files] == [
        "cat/m.png", "cat/z.png", "cat/a/w.png", "cat/a/x.png", "cat/b/y.png", "dog/d.png"]


def test_the_usual_suffixes_are_images_in_any_case(tmp_path):
    """docs/images.md's suffixes, in upper or lower case: .jpeg and .tiff as well as .jpg and
    .tif."""
    images = tmp_path / "images"
    names = ("a.jpeg", "b.JPEG", "c.tiff", "d.TIF", "e.bmp", "f.Gif", "g.webp", "h.ppm")
    for name in ("cat", "dog"):
        (images / name).mkdir(parents=True)
        for file in names:
            Image.new("RGB", (8, 8)).save(images / name / file)
    scan = folders.scan_folder(images)
    assert scan.skipped == [] and len(scan.files) == 2 * len(names)


def test_labels_follow_the_class_order_and_rows_are_the_cifar_layout(tmp_path):
    images = tmp_path / "images"
    for name, colour in (("zebra", (0, 0, 250)), ("apple", (250, 0, 0))):
        (images / name).mkdir(parents=True)
        Image.new("RGB", (64, 32), colour).save(images / name / "one.png")
    loaded = folders.load_folders(data_config(images, tmp_path / "data", test_fraction=0),
                                  progress=False)
    assert loaded.class_names == ("apple", "zebra")
    assert loaded.train_labels.tolist() == [0, 1]
    assert loaded.train_images.shape == (2, 3072) and loaded.train_images.dtype == np.uint8
    red, blue = loaded.train_images
    assert (red[:1024] == 250).all() and (red[1024:] == 0).all()  # R plane first
    assert (blue[2048:] == 250).all() and (blue[:2048] == 0).all()


# -- the cache ----------------------------------------------------------------------------

def test_the_second_load_decodes_nothing(tmp_path, counted_reads):
    images = make_folder(tmp_path / "images", per_class=4)
    data = data_config(images, tmp_path / "data")
    first = folders.load_folders(data, progress=False)
    assert len(counted_reads) == 12
    cache = next((tmp_path / "data" / "image-cache").iterdir())
    stamps = listing(cache)
    second = folders.load_folders(data, progress=False)
    assert len(counted_reads) == 12  # nothing decoded the second time
    assert listing(cache) == stamps  # nor written
    assert second.fingerprint == first.fingerprint
    assert np.array_equal(second.train_images, first.train_images)
    assert np.array_equal(second.test_labels, first.test_labels)


@pytest.mark.parametrize("change", ["add", "remove", "rename", "modify"])
def test_a_changed_folder_is_read_again(tmp_path, counted_reads, change):
    images = make_folder(tmp_path / "images", per_class=4)
    data = data_config(images, tmp_path / "data", test_fraction=0)
    before = folders.scan_folder(images).fingerprint
    first = folders.load_folders(data, progress=False)
    target = images / "red" / "red00.jpg"
    if change == "add":
        Image.new("RGB", (9, 9), (0, 0, 0)).save(images / "green" / "new.png")
    elif change == "remove":
        target.unlink()
    elif change == "rename":
        target.rename(target.with_name("renamed.jpg"))
    else:  # other pixels, same size and the same modification time would not be noticed:
        info = target.stat()  # a file rewritten gets a new mtime
        Image.new("RGB", (40, 48), (0, 0, 255)).save(target, quality=100)
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
    assert folders.scan_folder(images).fingerprint != before
    reads = len(counted_reads)
    second = folders.load_folders(data, progress=False)
    assert len(counted_reads) > reads
    assert second.fingerprint != first.fingerprint
    assert len(second.train_labels) == 12 + {"add": 1, "remove": -1}.get(change, 0)


def test_the_fingerprint_sees_each_name_size_and_modification_time(tmp_path):
    images = tmp_path / "images"
    for name in ("a", "b"):
        (images / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (5, 6, 7)).save(images / name / "x.png")
    target = images / "a" / "x.png"
    stamp = target.stat().st_mtime_ns
    base = folders.scan_folder(images).fingerprint
    assert folders.scan_folder(images).fingerprint == base

    os.utime(target, ns=(stamp, stamp + 10**9))  # the modification time alone
    assert folders.scan_folder(images).fingerprint != base
    os.utime(target, ns=(stamp, stamp))
    assert folders.scan_folder(images).fingerprint == base

    with target.open("ab") as handle:  # the size alone
        handle.write(b"\0")
    os.utime(target, ns=(stamp, stamp))
    assert folders.scan_folder(images).fingerprint != base
    os.truncate(target, target.stat().st_size - 1)
    os.utime(target, ns=(stamp, stamp))
    assert folders.scan_folder(images).fingerprint == base

    target.rename(images / "a" / "y.png")  # the name alone (a rename keeps the mtime)
    assert folders.scan_folder(images).fingerprint != base


def test_the_cache_is_under_the_data_root_never_in_the_image_folder(tmp_path):
    images = make_folder(tmp_path / "images", per_class=3)
    before = listing(images)
    loaded = folders.load_folders(data_config(images, tmp_path / "data"), progress=False)
    assert listing(images) == before
    caches = list((tmp_path / "data" / "image-cache").iterdir())
    assert [cache.name for cache in caches] == [folders.scan_folder(images).fingerprint]
    assert sorted(path.name for path in caches[0].iterdir()) == ["labels.npy", "meta.json",
                                                                   "rows.u8"]
    assert len(loaded.train_labels) + len(loaded.test_labels) == 9
    # a data.root inside the image folder is refused before anything is written
    with pytest.raises(DataError, match="data.root: the image cache .* would be inside"):
        folders.load_folders(data_config(images, images / "red" / "data"), progress=False)
    assert listing(images) == before


def test_rows_written_in_blocks_are_each_files_picture(tmp_path, monkeypatch):
    """The cache file is written WRITE_ROWS rows at a time: with blocks of 4, 9 images are two
    whole blocks and one part, and each row is its file's picture, in the scan's order."""
    from softmax_cls.data.images import read_image, to_rows

    monkeypatch.setattr(folders, "WRITE_ROWS", 4)
    images = make_folder(tmp_path / "images", per_class=3)
    loaded = folders.load_folders(data_config(images, tmp_path / "data", test_fraction=0),
                                  progress=False)
    scan = folders.scan_folder(images)
    expected = to_rows(np.stack([read_image(images / rel) for rel, _ in scan.files]))
    assert np.array_equal(loaded.train_images, expected)
    assert loaded.train_labels.tolist() == [label for _, label in scan.files]


def test_a_half_written_cache_is_never_used(tmp_path, counted_reads, monkeypatch):
    images = make_folder(tmp_path / "images", per_class=3)
    data = data_config(images, tmp_path / "data")
    real = folders.read_image

    def failing(path, *args, **kwargs):
        if len(counted_reads) == 5:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folders, "read_image", failing)
    with pytest.raises(KeyboardInterrupt):
        folders.load_folders(data, progress=False)
    assert list((tmp_path / "data" / "image-cache").iterdir()) == []  # no part file left
    monkeypatch.setattr(folders, "read_image", real)
    assert len(folders.load_folders(data, progress=False).class_names) == 3


# -- the held-out split -------------------------------------------------------------------

def test_the_held_out_split_is_stratified_and_fixed():
    labels = np.repeat(np.arange(3), [10, 20, 1])
    train, test = folders.held_out_rows(labels, 3, 0.2)
    assert np.bincount(labels[test], minlength=3).tolist() == [2, 4, 0]  # never a whole class
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(31))
    again_train, again_test = folders.held_out_rows(labels, 3, 0.2)
    assert np.array_equal(test, again_test) and np.array_equal(train, again_train)
    # a class's split depends on its own rows only
    other = np.repeat(np.arange(3), [10, 25, 1])
    assert np.array_equal(folders.held_out_rows(other, 3, 0.2)[1][:2], test[:2])
    assert len(folders.held_out_rows(labels, 3, 0)[1]) == 0
    # round(0.29 x 10) = 3, not int() = 2
    assert len(folders.held_out_rows(np.zeros(10, np.int64), 1, 0.29)[1]) == 3
    # round(0.6 x 1) = 1 would take the one image of class 2: it stays in training
    assert np.bincount(labels[folders.held_out_rows(labels, 3, 0.6)[1]],
                       minlength=3).tolist() == [6, 12, 0]


def test_the_config_seed_does_not_move_the_held_out_split(tmp_path):
    images = make_folder(tmp_path / "images", per_class=10)
    splits = []
    for seed in (0, 1):
        data = config_from_dict({"seed": seed, "data": {
            "dataset": "folder", "train": str(images), "root": str(tmp_path / "data")}}).data
        assert data.test_fraction == FOLDER_TEST_FRACTION
        splits.append(folders.load_folders(data, progress=False).test_images)
    assert len(splits[0]) == 6 and np.array_equal(*splits)


def test_a_test_folder_takes_the_training_class_indices(tmp_path):
    train = make_folder(tmp_path / "train", per_class=3)
    test = tmp_path / "test"
    (test / "stripes").mkdir(parents=True)
    Image.fromarray(picture("stripes", np.random.default_rng(1))).save(test / "stripes" / "a.png")
    loaded = folders.load_folders(data_config(train, tmp_path / "data", test=str(test)),
                                  progress=False)
    assert loaded.test_labels.tolist() == [loaded.class_names.index("stripes")]
    assert len(loaded.train_labels) == 9 and set(loaded.fingerprint) == {"train folder",
                                                                          "test folder"}
    (test / "cow").mkdir()
    Image.new("RGB", (8, 8)).save(test / "cow" / "a.png")
    with pytest.raises(DataError, match="data.test: class folder 'cow' .* is not a class"):
        folders.load_folders(data_config(train, tmp_path / "data", test=str(test)))


def test_the_fingerprints_a_sweep_keeps_are_of_each_folder(tmp_path):
    """folder_fingerprints (what a sweep compares on resume) has the test folder's own scan."""
    train = make_folder(tmp_path / "train", per_class=2)
    test = make_folder(tmp_path / "test", per_class=1, seed=1)
    found = folders.folder_fingerprints(data_config(train, tmp_path / "data", test=str(test)))
    assert found == {"train": folders.scan_folder(train).fingerprint,
                     "test": folders.scan_folder(test, "test").fingerprint}
    assert found["train"] != found["test"]


# -- files that are not images, and links -------------------------------------------------

def bad_files(images: Path) -> None:
    png = (images / "red" / "red01.png").read_bytes()
    (images / "red" / "truncated.png").write_bytes(png[: len(png) // 2])
    (images / "green" / "text.jpg").write_text("not a picture")
    (images / "green" / "notes.txt").write_text("a note")


def test_unreadable_files_are_skipped_with_a_count_and_the_first_names(tmp_path, capsys):
    images = make_folder(tmp_path / "images", per_class=4)
    bad_files(images)
    data = data_config(images, tmp_path / "data", test_fraction=0)
    for _ in range(2):  # the same line from the cache
        loaded = folders.load_folders(data, progress=False)
        assert len(loaded.train_labels) == 12
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("warning: data.train: skipped 3 of 15 files in ")
        assert "green/notes.txt (not an image file name)" in lines[0]
        assert "green/text.jpg (not an image Pillow can read)" in lines[0]
        assert "red/truncated.png (cannot be decoded" in lines[0]
        assert "data.strict=true" in lines[0]


def test_a_file_skipped_since_the_cache_was_written_is_in_the_warning(tmp_path, capsys):
    """A skipped file is part of the fingerprint: one added to a cached folder is warned
    about (not the cache's old count), and one skip is counted without an 'and N more'."""
    images = make_folder(tmp_path / "images", per_class=4)
    data = data_config(images, tmp_path / "data", test_fraction=0)
    folders.load_folders(data, progress=False)
    assert capsys.readouterr().err == ""
    (images / "green" / "notes.txt").write_text("a note")
    assert len(folders.load_folders(data, progress=False).train_labels) == 12
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"warning: data.train: skipped 1 of 13 files in {images}: green/notes.txt "
                     "(not an image file name) (data.strict=true refuses them)"]


def test_strict_refuses_them_from_the_folder_and_from_the_cache(tmp_path):
    images = make_folder(tmp_path / "images", per_class=4)
    (images / "red" / "text.jpg").write_text("not a picture")
    data = data_config(images, tmp_path / "data")
    strict = data_config(images, tmp_path / "data", strict=True)
    with pytest.raises(DataError, match=r"data.strict: .*red/text.jpg: not an image Pillow"):
        folders.load_folders(strict, progress=False)
    assert not (tmp_path / "data" / "image-cache").exists() or not any(
        (tmp_path / "data" / "image-cache").iterdir())
    folders.load_folders(data, progress=False)  # skipped, cached
    with pytest.raises(DataError, match="data.strict: .*red/text.jpg"):
        folders.load_folders(strict, progress=False)
    (images / "red" / "text.jpg").unlink()
    assert len(folders.load_folders(strict, progress=False).class_names) == 3


def test_strict_refuses_a_file_named_as_no_image_before_decoding_any(tmp_path,
                                                                      counted_reads):
    images = make_folder(tmp_path / "images", per_class=2)
    (images / "green" / "notes.txt").write_text("a note")
    with pytest.raises(DataError, match="data.strict: .*green/notes.txt: not an image file name"):
        folders.load_folders(data_config(images, tmp_path / "data", strict=True))
    assert counted_reads == []


def test_a_sub_folder_that_cannot_be_listed_is_a_skip_not_a_silent_loss(tmp_path, monkeypatch):
    images = make_folder(tmp_path / "images", per_class=2)
    real_walk = os.walk

    def walk(top, **kwargs):  # as os.walk reports a folder it may not list (root reads all)
        if Path(top).name == "red":
            kwargs["onerror"](PermissionError(13, "Permission denied", str(Path(top) / "x")))
        yield from real_walk(top, **kwargs)

    monkeypatch.setattr(folders.os, "walk", walk)
    assert folders.scan_folder(images).skipped == [
        ("red/x", "a folder that cannot be read (Permission denied)")]


def test_links_out_of_the_folder_and_to_folders_are_not_followed(tmp_path, capsys):
    images = make_folder(tmp_path / "images", per_class=3)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(outside / "secret.png")
    (images / "red" / "secret.png").symlink_to(outside / "secret.png")  # out: skipped
    (images / "red" / "twin.png").symlink_to(images / "green" / "green01.png")  # in: read
    (images / "red" / "loop").symlink_to(images)  # a loop: never entered
    (images / "elsewhere").symlink_to(outside)  # a class folder elsewhere: not a class
    scan = folders.scan_folder(images)
    assert scan.class_names == ("green", "red", "stripes")
    assert ("red/twin.png", 1) in scan.files
    assert dict(scan.skipped) == {"elsewhere": "a link to a folder, not followed",
                                  "red/loop": "a link to a folder, not followed",
                                  "red/secret.png": "a link out of the folder, not followed"}
    loaded = folders.load_folders(data_config(images, tmp_path / "data", test_fraction=0),
                                  progress=False)
    assert len(loaded.train_labels) == 10
    assert "skipped 3 of 13 files" in capsys.readouterr().err
    with pytest.raises(DataError, match="data.strict: "):
        folders.load_folders(data_config(images, tmp_path / "data", strict=True))


def test_an_image_cache_folder_that_is_a_link_is_refused(tmp_path):
    images = make_folder(tmp_path / "images", per_class=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "image-cache").symlink_to(elsewhere)
    with pytest.raises(DataError, match="image-cache is a symbolic link; refusing"):
        folders.load_folders(data_config(images, tmp_path / "data"), progress=False)
    assert list(elsewhere.iterdir()) == []


def test_a_cache_folder_that_is_a_link_is_refused(tmp_path):
    """A fingerprint's cache folder that is a symbolic link (to a whole cache elsewhere) is
    not one this tool made: refused, not read."""
    images = make_folder(tmp_path / "images", per_class=2)
    data = data_config(images, tmp_path / "data")
    folders.load_folders(data, progress=False)
    cache = tmp_path / "data" / "image-cache" / folders.scan_folder(images).fingerprint
    cache.rename(tmp_path / "elsewhere")
    cache.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="not an image cache folder this tool made"):
        folders.load_folders(data, progress=False)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_folder_for_the_caches_labels_is_a_damaged_cache_not_a_hang(tmp_path, kind):
    """Data roots may be shared: labels.npy was opened blocking, so a fifo of its name held
    softmax-train for ever."""
    images = make_folder(tmp_path / "images", per_class=3)
    folders.load_folders(data_config(images, tmp_path / "data"), progress=False)
    cache = tmp_path / "data" / "image-cache" / folders.scan_folder(images).fingerprint
    (cache / "labels.npy").unlink()
    if kind == "fifo":
        os.mkfifo(cache / "labels.npy")
    else:
        (cache / "labels.npy").mkdir()
    result = run("softmax-train", "--config", write_config(tmp_path, train=str(images)), "-q",
                 "--no-plots", timeout=60)
    assert_one_line_error(result, 1, cache.name, "a damaged image cache")
    assert not (tmp_path / "run").exists()


def test_without_pillow_a_new_folder_names_the_extra_and_a_cached_one_loads(tmp_path):
    images = make_folder(tmp_path / "images", per_class=3)
    config = write_config(tmp_path, train=str(images))
    code = ("import sys; sys.modules['PIL'] = None\n"
            "from softmax_cls.cli import train_command\n"
            f"train_command.main(['--config', {config!r}, '-q', '--no-plots', "
            "'--set', 'optim.epochs=1', '--set', 'engine=numpy'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert_one_line_error(result, 1, "pip install 'softmax-cls[images]'")
    folders.load_folders(data_config(images, tmp_path / "data"), progress=False)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


# -- wrong configs and folders: one error line --------------------------------------------

def write_config(tmp_path: Path, **data) -> str:
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": "folder", "val_size": 0.2,
                                             "root": str(tmp_path / "data"), **data},
                                    "optim": {"epochs": 2},
                                    "output": {"dir": str(tmp_path / "run")}}))
    return str(path)


def one_class(tmp_path: Path) -> str:
    (tmp_path / "one" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "cat" / "a.png")
    return str(tmp_path / "one")


def empty_folder(tmp_path: Path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def empty_class(tmp_path: Path, name: str = "empty") -> str:
    """An image folder with an empty class folder `name`."""
    images = make_folder(tmp_path / "images", per_class=2)
    (images / name).mkdir()
    return str(images)


def unreadable_class(tmp_path: Path) -> str:
    images = make_folder(tmp_path / "images", per_class=2)
    (images / "broken").mkdir()
    (images / "broken" / "a.png").write_text("no picture")
    return str(images)


def odd_class(tmp_path: Path, name: str) -> str:
    """An image folder with a class folder `name` (a str, or bytes that are not UTF-8)."""
    images = make_folder(tmp_path / "images", per_class=2)
    odd = images / os.fsdecode(name)
    odd.mkdir()
    Image.new("RGB", (8, 8)).save(odd / "a.png")
    return str(images)


def split_layout(tmp_path: Path, train: str = "train", test: str = "test") -> str:
    """photos/train/<class>, photos/test/<class>: a data set as downloaded, one level up."""
    make_folder(tmp_path / "photos" / train, per_class=2)
    make_folder(tmp_path / "photos" / test, per_class=1)
    return str(tmp_path / "photos")


@pytest.mark.parametrize("keys, code, needles", [
    (lambda p: {"train": split_layout(p)}, 1,
     ["class folders are test, train", "one level too high", "photos/train"]),
    (lambda p: {"train": split_layout(p, "Training", "Testing")}, 1,
     ["class folders are Testing, Training", "photos/Training"]),
    (lambda p: {"train": str(make_folder(p / "images", 2)), "test": str(p / "images")}, 1,
     ["data.test: ", "is the training folder"]),
    (lambda p: {"train": str(make_folder(p / "images", 2)), "test": str(p / "images/../images")},
     1, ["is the training folder"]),
    (lambda p: {"train": str(make_folder(p / "images", 5)), "test": str(p / "images" / "red")},
     1, ["or overlaps it"]),
    (lambda p: {"train": str(make_folder(p / "images" / "inner", 2)), "test": str(p / "images")},
     1, ["or overlaps it"]),
    (lambda p: {"train": odd_class(p, "two\nlines")}, 1,
     ["class folder 'two\\nlines'", "not printable text"]),
    (lambda p: {"train": odd_class(p, "\x1b[2Jclear")}, 1, ["'\\x1b[2Jclear'"]),
    (lambda p: {"train": odd_class(p, b"caf\xe9")}, 1, ["'caf\\udce9'", "rename it"]),
    (lambda p: {"train": None}, 2, ["data.train: data.dataset folder needs the path"]),
    (lambda p: {"train": str(p / "missing")}, 1, ["data.train: image folder not found"]),
    (lambda p: {"train": write_config(p)}, 1, ["data.train: ", "is not a folder"]),
    (lambda p: {"train": one_class(p)}, 1, ["has 1 class folder (cat)", "at least 2"]),
    (lambda p: {"train": empty_class(p)}, 1, ["class folder 'empty'", "holds no images"]),
    (lambda p: {"train": empty_class(p, "zebra")}, 1, ["class folder 'zebra'", "no images"]),
    (lambda p: {"train": unreadable_class(p)}, 1, ["'broken'", "holds no readable images"]),
    (lambda p: {"train": str(make_folder(p / "images", 2)), "test": empty_folder(p)}, 1,
     ["data.test: ", "has no class folders"]),
    (lambda p: {"train": str(p), "test": str(p), "test_fraction": 0.1}, 2,
     ["data.test_fraction: give either data.test"]),
    (lambda p: {"train": str(p), "test_fraction": 1.5}, 2, ["data.test_fraction: must be < 1"]),
    (lambda p: {"train": str(p), "labels": "coarse"}, 2, ["data.labels: an image folder"]),
    (lambda p: {"dataset": "cifar10", "test_fraction": 0.1}, 2,
     ["data.test_fraction: only for data.dataset folder"]),
    (lambda p: {"dataset": "cifar10", "strict": True}, 2,
     ["data.strict: only for data.dataset folder"]),
])
def test_wrong_folder_configs_are_one_error_line(tmp_path, keys, code, needles):
    result = run("softmax-train", "--config", write_config(tmp_path, **keys(tmp_path)), "-q")
    assert_one_line_error(result, code, *needles)


def test_a_class_named_like_a_split_among_others_is_a_class(tmp_path):
    # only class folders that are all split names are refused: "test" beside "cat" is a class
    for name in ("test", "val"):
        (tmp_path / name / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name / name / "a.png")
        (tmp_path / name / "cat").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "cat" / "a.png")
        assert folders.scan_folder(tmp_path / name).class_names == ("cat", name)


def test_strict_from_the_command_line_is_one_error_line(tmp_path):
    images = make_folder(tmp_path / "images", per_class=3)
    (images / "red" / "text.jpg").write_text("not a picture")
    result = run("softmax-train", "--config", write_config(tmp_path, train=str(images)), "-q",
                 "--set", "data.strict=true")
    assert_one_line_error(result, 1, "data.strict: ", "red/text.jpg: not an image Pillow can read")


# -- every command on a folder ------------------------------------------------------------

def test_train_eval_plot_and_checkpoint_on_a_folder(tmp_path):
    images = make_folder(tmp_path / "images", per_class=30)
    bad_files(images)
    config = write_config(tmp_path, train=str(images))
    train = run("softmax-train", "--config", config, "--set", "optim.epochs=8",
                "--no-plots", cwd=tmp_path, timeout=300)
    assert train.returncode == 0, train.stderr
    assert "skipped 3 of 93 files" in train.stderr and "reading train images" in train.stderr
    accuracy = float(train.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy >= 0.9  # chance is 1/3; 18 held-out images
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["test_fraction"] == FOLDER_TEST_FRACTION
    assert saved["augment"]["hflip"] is True and saved["augment"]["translate"] == 1
    checkpoint = load_checkpoint(tmp_path / "run" / "best.npz")
    assert checkpoint.class_names == ("green", "red", "stripes")

    again = run("softmax-train", "--config", config, "--set", "optim.epochs=1", "-q",
                "--no-plots", "--out", str(tmp_path / "run2"), cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "reading train images" not in again.stderr  # from the cache

    evaluated = run("softmax-eval", str(tmp_path / "run" / "best.npz"), "--json", "-q")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["accuracy"] == pytest.approx(accuracy)
    assert [row["class"] for row in report["per_class"]] == ["green", "red", "stripes"]
    assert_one_line_error(run("softmax-eval", str(tmp_path / "run" / "best.npz"), "--download",
                              "-q"), 2, "--download", "data.dataset folder")

    pytest.importorskip("matplotlib")
    plotted = run("softmax-plot", str(tmp_path / "run"), "-q", timeout=300)
    assert plotted.returncode == 0, plotted.stderr
    assert {"templates.png", "confusion.png", "mistakes.png"} <= {
        Path(line).name for line in plotted.stdout.split()}

    # a changed folder no longer matches the checkpoint
    for bad in ("red/truncated.png", "green/text.jpg", "green/notes.txt"):
        (images / bad).unlink()
    Image.fromarray(picture("red", np.random.default_rng(9))).save(images / "red" / "new.png")
    changed = run("softmax-eval", str(tmp_path / "run" / "best.npz"), "-q")
    assert_one_line_error(changed, 1, "the data does not match the checkpoint")


def test_a_sweep_on_a_folder(tmp_path):
    pytest.importorskip("optuna")
    images = make_folder(tmp_path / "images", per_class=10)
    write_config(tmp_path, train=str(images))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "folder.yaml", "sampler": "random", "trials": 2,
                                     "seed": 0, "pruner": "none",
                                     "space": {"optim.lr": {"log_uniform": [0.001, 0.1]}}}))
    result = run("softmax-sweep", str(sweep), "--out", str(tmp_path / "sweep"), "-q",
                 "--no-plots", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 complete" in result.stdout and "test accuracy" in result.stdout
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["test_acc"] >= 0.8
    cached = json.loads((tmp_path / "sweep" / "cache" / "data.json").read_text())
    assert cached["class_names"] == ["green", "red", "stripes"]
    assert cached["data"]["folder_fingerprints"] == {"train": folders.scan_folder(images)
                                                     .fingerprint}


def test_a_sweep_on_a_folder_names_its_skipped_files_once(tmp_path):
    """The sweep read the folder into its cache, then again for the test split at its end,
    and each read printed the same warning line."""
    pytest.importorskip("optuna")
    images = make_folder(tmp_path / "images", per_class=4)
    bad_files(images)
    write_config(tmp_path, train=str(images))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "folder.yaml", "sampler": "grid",
                                     "space": {"optim.lr": {"grid": [0.01]}}}))
    result = run("softmax-sweep", str(sweep), "--out", str(tmp_path / "sweep"), "-q",
                 "--no-plots", timeout=300)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("warning: data.train: skipped 3 of 15 files in ")


@pytest.mark.parametrize("key", ["data.test_fraction", "data.strict"])
def test_a_sweep_may_not_vary_the_folder_split_or_strictness(tmp_path, key):
    pytest.importorskip("optuna")
    images = make_folder(tmp_path / "images", per_class=2)
    write_config(tmp_path, train=str(images))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "folder.yaml", "sampler": "grid",
                                     "space": {key: {"grid": [0.1, 0.2] if "fraction" in key
                                                     else [True, False]}}}))
    result = run("softmax-sweep", str(sweep), "--out", str(tmp_path / "sweep"), "-q")
    assert_one_line_error(result, 2, key, "cannot vary between trials")


def test_a_model_trained_on_a_folder_predicts_new_files_by_its_class_names(tmp_path):
    """Trained through softmax-train on a folder; new files of another size predicted through
    softmax-predict and through Model in both layouts give the classes of a float64
    recomputation from the checkpoint's own arrays."""
    from softmax_cls.data.images import read_image
    from softmax_cls.inference.model import Model

    images = make_folder(tmp_path / "images", per_class=20)
    config = write_config(tmp_path, train=str(images))
    train = run("softmax-train", "--config", config, "--set", "optim.epochs=4", "-q",
                "--no-plots", cwd=tmp_path, timeout=300)
    assert train.returncode == 0, train.stderr
    checkpoint = tmp_path / "run" / "best.npz"

    rng = np.random.default_rng(5)
    new, truth = tmp_path / "new", []
    new.mkdir()
    for i, name in enumerate(["red", "stripes", "green", "red", "green", "stripes"]):
        Image.fromarray(picture(name, rng, size=(50, 70))).save(new / f"{i}.png")
        truth.append(name)
    pictures = np.stack([read_image(new / f"{i}.png") for i in range(len(truth))])

    with np.load(checkpoint) as arrays:
        W = arrays["W"].astype(np.float64)
        mean, scale = arrays["pre_mean"], arrays["pre_scale"]
    planes = pictures.transpose(0, 3, 1, 2).reshape(len(pictures), -1).astype(np.float64)
    scores = np.hstack([(planes - mean) * scale, np.ones((len(planes), 1))]) @ W.T
    names = ["green", "red", "stripes"]
    expected = [names[i] for i in scores.argmax(axis=1)]
    assert expected == truth  # the classes are easy: the model learned them

    predicted = run("softmax-predict", str(checkpoint), str(new), "--json", "--top-k", "1")
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [line["top_k"][0]["class"] for line in lines] == expected

    model = Model.load(checkpoint)
    assert list(model.predict(pictures)) == list(scores.argmax(axis=1))
    assert list(model.predict(pictures.transpose(0, 3, 1, 2))) == list(scores.argmax(axis=1))


def test_the_images_page_example_config_trains_into_its_output_dir(tmp_path):
    """docs/images.md's folder.yaml, as written, on a small photos/ folder, run as its first
    line says: the run lands in the folder its output.dir names (it named none, and the run
    went to runs/default, or runs/default-2 beside a CIFAR run)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "images.md").read_text()
    example = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "folder.yaml").write_text(example)
    command = example.splitlines()[0].lstrip("# ").split(": ", 1)[1].split()
    assert command == ["softmax-train", "--config", "folder.yaml"]
    make_folder(tmp_path / "photos", per_class=10)
    (tmp_path / "runs" / "default").mkdir(parents=True)  # a CIFAR run's folder, say
    tiny = ["--set", "optim.epochs=1", "--set", "engine=numpy", "--no-plots", "--quiet"]
    result = run(*command, *tiny, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / yaml.safe_load(example)["output"]["dir"]
    assert (out / "summary.json").is_file()
    assert result.stdout.rstrip().endswith(f"run folder {out.relative_to(tmp_path)}")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["default", out.name]
    assert load_checkpoint(out / "best.npz").class_names == tuple(sorted(CLASSES))


def test_a_caches_labels_declaring_more_rows_than_its_meta_are_refused_unread(tmp_path):
    """labels.npy was read whole (np.load) before its shape was compared with meta.json's
    count: one declaring 2**28 rows (2 GiB, here a sparse file) under a 1 GiB RLIMIT_DATA
    was `error: out of memory`, or gigabytes read without one. Its header is compared
    first now: the damaged-cache line, at once."""
    from tests.cli_util import limit_data

    images = make_folder(tmp_path / "images", per_class=3)
    folders.load_folders(data_config(images, tmp_path / "data"), progress=False)
    cache = tmp_path / "data" / "image-cache" / folders.scan_folder(images).fingerprint
    labels = cache / "labels.npy"
    rows = 1 << 28
    with open(labels, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<i8", "fortran_order": False, "shape": (rows,)})
        handle.truncate(handle.tell() + rows * 8)  # sparse: no disk spent on it
    result = run("softmax-train", "--config", write_config(tmp_path, train=str(images)), "-q",
                 "--no-plots", "--set", "engine=numpy", timeout=60,
                 preexec_fn=limit_data(1 << 30))
    assert_one_line_error(result, 1, cache.name, "a damaged image cache")
    assert labels.stat().st_size > rows * 8  # untouched
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["short", "big-endian", "one-more", "float", "rows-short",
                                    "rows-long", "count-infinite", "label-out-of-range",
                                    "float-zeros"])
def test_a_caches_labels_of_another_shape_dtype_or_length_are_a_damaged_cache(tmp_path,
                                                                             damage):
    images = make_folder(tmp_path / "images", per_class=3)
    folders.load_folders(data_config(images, tmp_path / "data"), progress=False)
    cache = tmp_path / "data" / "image-cache" / folders.scan_folder(images).fingerprint
    labels = np.load(cache / "labels.npy")
    if damage == "short":  # the last label missing (it would read as class 0)
        whole = (cache / "labels.npy").read_bytes()
        (cache / "labels.npy").write_bytes(whole[:-8])
    elif damage == "count-infinite":  # int(inf) raised OverflowError: a traceback
        meta = json.loads((cache / "meta.json").read_text())
        (cache / "meta.json").write_text(json.dumps({**meta, "count": 1}).replace(
            '"count": 1,', '"count": 1e400,'))
    elif damage in ("rows-short", "rows-long"):
        with open(cache / "rows.u8", "r+b") as handle:
            handle.truncate(handle.seek(0, 2) + (1 if damage == "rows-long" else -1))
    else:
        np.save(cache / "labels.npy", {"big-endian": labels.astype(">i8"),
                                       "one-more": np.append(labels, 0),
                                       "float": labels.astype(float),
                                       "label-out-of-range": np.append(labels[:-1], 3),
                                       # its bytes are int64 zeros: only the dtype tells
                                       "float-zeros": np.zeros(len(labels))}[damage])
    with pytest.raises(DataError, match="a damaged image cache"):
        folders.load_folders(data_config(images, tmp_path / "data"), progress=False)
    np.save(cache / "labels.npy", labels)  # restored: loads again
    if damage in ("rows-short", "rows-long", "count-infinite"):
        return
    assert (folders.load_folders(data_config(images, tmp_path / "data"), progress=False)
            .train_labels.size > 0)
