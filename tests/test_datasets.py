"""datasets: locating, downloading, safely extracting, verifying and reading CIFAR data.

Offline: generated archives (fake_cifar) and a real HTTP server on 127.0.0.1 (http_server).
The real CIFAR-10 archive is used only when present in shared/data, else those tests skip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_ARCHIVE
from fake_cifar import make_fake, python2_pickle, tar_gz
from http_server import clear_proxy_env, loopback_servers

from softmax_cls.data import batches
from softmax_cls.data.cifar import load_dataset
from softmax_cls.data.datasets import (
    CIFAR10_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    SPECS,
    get_spec,
)
from softmax_cls.data.fetch import prepare_dataset
from softmax_cls.data.untrusted import MAX_MEMBERS, restricted_unpickle, safe_extract
from softmax_cls.errors import ConfigError, DataError, DownloadError

# The published per-file checksums, kept apart from SPECS on purpose.
REAL_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
PAIRS = [("cifar10", "binary"), ("cifar10", "python"), ("cifar100", "binary"),
         ("cifar100", "python")]
QUIET = {"progress": False}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No proxies for loopback traffic, no mirror from the environment, no backoff sleeps."""
    clear_proxy_env(monkeypatch)
    monkeypatch.delenv("SOFTMAX_CLS_MIRROR", raising=False)
    monkeypatch.setattr("softmax_cls.data.download.time.sleep", lambda seconds: None)


@pytest.fixture
def serve():
    yield from loopback_servers()


def entries(root: Path) -> list[str]:
    """Everything under `root`, as sorted relative paths (hidden files included), but the
    empty `.lock` file that lets processes preparing the root take turns."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p != root / ".lock") if root.exists() else []


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_matches(data, fake, labels="fine"):
    coarse = labels == "coarse"
    assert data.dataset == fake.spec.dataset
    for got, want in [
        (data.train_images, fake.train_images), (data.test_images, fake.test_images),
        (data.train_labels, fake.train_coarse if coarse else fake.train_fine),
        (data.test_labels, fake.test_coarse if coarse else fake.test_fine),
    ]:
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    for images in (data.train_images, data.test_images):
        assert images.dtype == np.uint8 and images.flags.c_contiguous
        assert images.shape[1] == 3072
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64


def assert_nothing_taken_as_good(root: Path, spec) -> None:
    """No folder, archive, .part or temporary folder: a later offline run finds no data."""
    assert [p for p in entries(root)] == []
    with pytest.raises(DataError, match="downloading is off"):
        load_dataset(root=root, spec=spec, download=False, **QUIET)


# --- specs -----------------------------------------------------------------------------------


def test_specs_cover_every_dataset_and_format():
    assert set(SPECS) == set(PAIRS)
    for (dataset, fmt), spec in SPECS.items():
        assert get_spec(dataset, fmt) is spec
        assert spec.url == "https://www.cs.toronto.edu/~kriz/" + spec.archive_name
        assert set(spec.files) <= {*spec.names_files, *spec.train_files, *spec.test_files}
        # every batch file has a published md5
        assert set(spec.train_files + spec.test_files) <= set(spec.files)
    assert get_spec().files == REAL_MD5
    assert get_spec().archive_md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert get_spec().sizes["data_batch_1.bin"] == 30_730_000
    assert get_spec("cifar100", "binary").sizes["train.bin"] == 50_000 * 3074


@pytest.mark.parametrize("dataset, fmt", [("cifar11", "binary"), ("cifar10", "matlab")])
def test_unknown_dataset_or_format_is_a_data_error(dataset, fmt):
    with pytest.raises(DataError, match="unknown"):
        get_spec(dataset, fmt)


# --- loading from a local archive ------------------------------------------------------------


@pytest.mark.parametrize("dataset, fmt", PAIRS)
def test_load_from_local_archive(tmp_path, dataset, fmt):
    fake = make_fake(dataset, fmt)
    archive = fake.write(tmp_path / "downloads" / fake.spec.archive_name)
    root = tmp_path / "data"

    data = load_dataset(root=root, archive=archive, spec=fake.spec, **QUIET)

    assert_matches(data, fake)
    assert data.class_names == (CIFAR10_CLASSES if dataset == "cifar10" else
                                CIFAR100_FINE_CLASSES)
    assert data.fingerprint == {name: hashlib.md5(content).hexdigest()
                                for name, content in fake.members.items()}
    assert archive.read_bytes() == fake.archive  # a user's archive is never touched
    assert entries(root)[0] == fake.spec.folder
    assert not [e for e in entries(root) if e.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_cifar100_coarse_labels(tmp_path, fmt):
    fake = make_fake("cifar100", fmt)
    archive = fake.write(tmp_path / fake.spec.archive_name)

    data = load_dataset(root=tmp_path / "data", archive=archive, spec=fake.spec,
                        labels="coarse", **QUIET)

    assert_matches(data, fake, labels="coarse")
    assert data.class_names == CIFAR100_COARSE_CLASSES
    assert not np.array_equal(data.train_labels, fake.train_fine)


@pytest.mark.parametrize("dataset, labels", [("cifar10", "fine"), ("cifar100", "fine"),
                                             ("cifar100", "coarse")])
def test_binary_batches_are_read_a_few_records_at_a_time(tmp_path, monkeypatch, dataset,
                                                         labels):
    """7 records per read: every file (20 to 40 records) spans reads and ends in a short
    one, each landing in its own rows of the split."""
    monkeypatch.setattr(batches, "READ_RECORDS", 7)
    fake = make_fake(dataset)
    root = tmp_path / "data"
    prepare_dataset(root=root, archive=fake.write(tmp_path / "a.tar.gz"), spec=fake.spec,
                    **QUIET)

    data = load_dataset(root=root, spec=fake.spec, labels=labels, download=False, **QUIET)

    assert_matches(data, fake, labels=labels)
    assert data.fingerprint == {name: hashlib.md5(content).hexdigest()
                                for name, content in fake.members.items()}


def test_the_test_split_can_be_left_on_disk_until_needed(tmp_path):
    fake = make_fake()
    root = tmp_path / "data"
    archive = fake.write(tmp_path / "a.tar.gz")
    whole = load_dataset(root=root, archive=archive, spec=fake.spec, **QUIET)

    data = load_dataset(root=root, spec=fake.spec, download=False, keep_test=False, **QUIET)

    assert data.test_images is None and data.test_labels is None
    assert data.n_test == 25 == whole.n_test
    assert data.fingerprint == whole.fingerprint  # the test file was hashed all the same
    np.testing.assert_array_equal(data.train_images, fake.train_images)
    loaded = data.with_test()
    assert_matches(loaded, fake)
    assert loaded.with_test() is loaded
    assert loaded.fingerprint == whole.fingerprint
    bare = loaded.without_train()
    assert bare.train_images.shape == (0, 3072) and bare.train_images.dtype == np.uint8
    assert bare.train_labels.shape == (0,) and bare.train_labels.dtype == np.int64
    assert bare.test_images is loaded.test_images and bare.fingerprint == loaded.fingerprint


def test_a_damaged_test_file_is_found_when_it_is_left_on_disk(tmp_path):
    fake = make_fake()
    folder = prepare_dataset(root=tmp_path / "data", archive=fake.write(tmp_path / "a.tgz"),
                             spec=fake.spec, **QUIET)
    batch = folder / "test_batch.bin"
    content = bytearray(batch.read_bytes())
    content[4000] ^= 0xFF
    batch.write_bytes(bytes(content))

    with pytest.raises(DataError, match=f"{re.escape(str(batch))}: md5 checksum mismatch"):
        load_dataset(root=folder, spec=fake.spec, download=False, keep_test=False, **QUIET)


@pytest.mark.parametrize("published_md5", [True, False])
def test_a_test_file_changed_after_loading_is_refused(tmp_path, published_md5):
    fake = make_fake()
    spec = fake.spec if published_md5 else dataclasses.replace(
        fake.spec, files={k: v for k, v in fake.spec.files.items() if k != "test_batch.bin"})
    folder = prepare_dataset(root=tmp_path / "data", archive=fake.write(tmp_path / "a.tgz"),
                             spec=spec, **QUIET)
    data = load_dataset(root=folder, spec=spec, download=False, keep_test=False, **QUIET)
    batch = folder / "test_batch.bin"
    content = bytearray(batch.read_bytes())
    content[4000] ^= 0xFF
    batch.write_bytes(bytes(content))

    problem = "md5 checksum mismatch" if published_md5 else "changed since it was first read"
    with pytest.raises(DataError, match=f"{re.escape(str(batch))}: {problem}"):
        data.with_test()



def damage(folder: Path, name: str, offset: int = 4000) -> bytes:
    """Flip one byte of folder/name; returns the damaged content."""
    content = bytearray((folder / name).read_bytes())
    content[offset] ^= 0xFF
    (folder / name).write_bytes(bytes(content))
    return bytes(content)


@pytest.mark.parametrize("keep_test", [True, False])
def test_files_read_at_once_still_report_the_first_damaged_file(tmp_path, monkeypatch,
                                                                keep_test):
    """The batch files are read by several threads; when several are damaged, the error
    names the first in order (train files, then test files) even when a later one fails
    first (the first file's read is slowed down here)."""
    import time

    fake = make_fake()
    folder = prepare_dataset(root=tmp_path / "data", archive=fake.write(tmp_path / "a.tgz"),
                             spec=fake.spec, **QUIET)
    slow_name = fake.spec.train_files[0]
    real = batches.BatchReader.stream_batch

    def slow_first(self, name, *args, **kwargs):
        if name == slow_name:
            time.sleep(0.3)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(batches.BatchReader, "stream_batch", slow_first)
    for name in (*fake.spec.train_files, *fake.spec.test_files):
        damage(folder, name)
    for expected in (*fake.spec.train_files, *fake.spec.test_files):
        with pytest.raises(DataError, match=f"{re.escape(str(folder / expected))}: md5"):
            load_dataset(root=folder, spec=fake.spec, download=False, keep_test=keep_test,
                         **QUIET)
        damage(folder, expected)  # repaired: the next file is the first damaged one


def test_files_are_read_by_several_threads_and_listed_in_file_order(tmp_path, monkeypatch):
    """The two training files are read at the same time: each read waits (10 s at most)
    until the other has started."""
    import threading

    fake = make_fake()
    folder = prepare_dataset(root=tmp_path / "data", archive=fake.write(tmp_path / "a.tgz"),
                             spec=fake.spec, **QUIET)
    both_started = threading.Barrier(2, timeout=10)
    real = batches.BatchReader.stream_batch

    def together(self, name, *args, **kwargs):
        if name in fake.spec.train_files:
            both_started.wait()  # BrokenBarrierError unless another thread reads the other
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(batches.BatchReader, "stream_batch", together)
    data = load_dataset(root=folder, spec=fake.spec, download=False, keep_test=False,
                        **QUIET)
    assert batches.READ_THREADS == 2
    assert list(data.fingerprint) == [*fake.spec.names_files, *fake.spec.train_files,
                                      *fake.spec.test_files]
    assert data.fingerprint == {name: hashlib.md5(content).hexdigest()
                                for name, content in fake.members.items()}
    np.testing.assert_array_equal(data.train_images, fake.train_images)
    np.testing.assert_array_equal(data.train_labels, fake.train_fine)

def test_coarse_labels_do_not_exist_for_cifar10(tmp_path):
    with pytest.raises(ConfigError, match="data.labels: cifar10 has no coarse labels"):
        load_dataset(root=tmp_path, labels="coarse", download=False, **QUIET)


def test_python_pickles_name_both_numpy_modules():
    """The fakes exercise both spellings of numpy's array reconstruction."""
    assert b"cnumpy.core.multiarray\n_reconstruct" in make_fake("cifar10", "python").members[
        "data_batch_1"]
    assert b"cnumpy._core.multiarray\n_reconstruct" in make_fake("cifar100", "python").members[
        "train"]


def test_archive_already_in_root_is_used_and_kept(tmp_path):
    fake = make_fake()
    root = tmp_path / "data"
    archive = fake.write(root / fake.spec.archive_name)

    data = load_dataset(root=root, spec=fake.spec, download=False, **QUIET)

    assert_matches(data, fake)
    assert archive.read_bytes() == fake.archive


def test_no_data_and_no_download_says_how_to_get_it(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DataError) as error:
        load_dataset(root=root, download=False, **QUIET)
    message = str(error.value)
    assert "softmax-download" in message and "--archive" in message and "--url" in message
    assert "\n" not in message
    assert not root.exists()


def test_missing_local_archive_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset(root=tmp_path / "data", archive=tmp_path / "nope.tar.gz", **QUIET)


# --- downloading through a loopback server ---------------------------------------------------


def served(fake, server):
    """The fake's spec with its official URL on `server`."""
    return dataclasses.replace(fake.spec, url=server.url_for("/kriz/" + fake.spec.archive_name))


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_download_then_load(serve, tmp_path, fmt):
    fake = make_fake("cifar10", fmt)
    server = serve({"/kriz/" + fake.spec.archive_name: fake.archive})
    root = tmp_path / "data"

    data = load_dataset(root=root, spec=served(fake, server), **QUIET)

    assert_matches(data, fake)
    assert [(r["method"], r["range"], r["status"]) for r in server.requests] == [
        ("GET", None, 200)]
    assert entries(root) == sorted([fake.spec.archive_name, fake.spec.folder] + [
        f"{fake.spec.folder}/{name}" for name in [*fake.members, "readme.html"]])


def test_cut_transfer_resumes_and_loads(serve, tmp_path):
    fake = make_fake("cifar100", "binary")
    cut = int(len(fake.archive) * 0.6)
    server = serve({"/kriz/" + fake.spec.archive_name: fake.archive}, cut_at=cut)

    data = load_dataset(root=tmp_path / "data", spec=served(fake, server), **QUIET)

    assert_matches(data, fake)
    assert [r["range"] for r in server.requests] == [None, f"bytes={cut}-"]
    assert server.requests[-1]["status"] == 206


def test_mirror_from_environment_need_not_match_the_official_archive(serve, tmp_path,
                                                                     monkeypatch):
    fake = make_fake("cifar10", "python")
    repack = make_fake("cifar10", "python", compresslevel=1)  # same files, other archive bytes
    assert repack.archive != fake.archive and repack.spec.files == fake.spec.files
    server = serve({"/mirror/" + fake.spec.archive_name: repack.archive})
    monkeypatch.setenv("SOFTMAX_CLS_MIRROR", server.url_for("/mirror/"))

    data = load_dataset(root=tmp_path / "data", spec=fake.spec, **QUIET)

    assert_matches(data, fake)
    assert [r["path"] for r in server.requests] == ["/mirror/" + fake.spec.archive_name]


def test_mirror_with_wrong_files_leaves_nothing(serve, tmp_path):
    good, bad = make_fake(), make_fake(seed=1)
    server = serve({"/mirror/x.tar.gz": bad.archive})
    root = tmp_path / "data"

    with pytest.raises(DataError) as error:
        load_dataset(root=root, url=server.url_for("/mirror/x.tar.gz"), spec=good.spec, **QUIET)

    message = str(error.value)
    assert "data_batch_1.bin" in message and "md5 checksum mismatch" in message
    assert good.spec.files["data_batch_1.bin"] in message
    assert hashlib.md5(bad.members["data_batch_1.bin"]).hexdigest() in message
    assert_nothing_taken_as_good(root, good.spec)


def test_official_url_with_wrong_archive_leaves_nothing(serve, tmp_path):
    good, bad = make_fake(), make_fake(seed=1)
    server = serve({"/kriz/" + good.spec.archive_name: bad.archive})
    root = tmp_path / "data"

    with pytest.raises(DownloadError, match="mismatch"):  # size or md5 of the archive
        load_dataset(root=root, spec=served(good, server), **QUIET)

    assert_nothing_taken_as_good(root, good.spec)


def test_http_404_is_a_clear_error(serve, tmp_path):
    fake = make_fake()
    server = serve({})
    root = tmp_path / "data"

    with pytest.raises(DownloadError, match=r"HTTP 404 .*/kriz/cifar-10-binary\.tar\.gz"):
        prepare_dataset(root=root, spec=served(fake, server), **QUIET)

    assert entries(root) == []


def test_force_downloads_again(serve, tmp_path):
    fake = make_fake()
    server = serve({"/kriz/" + fake.spec.archive_name: fake.archive})
    spec = served(fake, server)
    root = tmp_path / "data"
    prepare_dataset(root=root, spec=spec, **QUIET)

    prepare_dataset(root=root, spec=spec, force=True, **QUIET)

    assert len(server.requests) == 2


# --- safe extraction -------------------------------------------------------------------------


def evil_entries(kind: str, tmp_path: Path):
    """Archive entries with one unsafe member, and the outside path it would write."""
    folder = "cifar-10-batches-bin"
    outside = tmp_path / "outside"
    outside.mkdir()
    good = [(folder + "/", None), (f"{folder}/batches.meta.txt", b"airplane\n")]
    if kind == "parent":
        return good + [(f"{folder}/../../evil", b"pwned")], tmp_path / "evil"
    if kind == "absolute":
        return good + [(str(tmp_path / "evil"), b"pwned")], tmp_path / "evil"
    if kind == "symlink":
        link = tarfile.TarInfo(f"{folder}/link")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        return good + [(link, None), (f"{folder}/link/pwned", b"pwned")], outside / "pwned"
    if kind == "hardlink":
        victim = outside / "victim"
        victim.write_bytes(b"original")
        hard = tarfile.TarInfo(f"{folder}/hard")
        hard.type, hard.linkname = tarfile.LNKTYPE, str(victim)
        return good + [(hard, None), (f"{folder}/hard", b"pwned")], victim
    special = tarfile.TarInfo(f"{folder}/special")
    special.type = tarfile.FIFOTYPE if kind == "fifo" else tarfile.CHRTYPE
    return good + [(special, None)], tmp_path / "target" / folder / "special"


UNSAFE = ["parent", "absolute", "symlink", "hardlink", "fifo", "device"]


@pytest.mark.parametrize("kind", UNSAFE)
def test_safe_extract_refuses_unsafe_members(tmp_path, kind):
    members, outside = evil_entries(kind, tmp_path)
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_gz(members))
    bad_name = next(m.name for m in tarfile.open(archive) if not m.name.endswith(".txt")
                    and m.name != "cifar-10-batches-bin")
    if kind == "absolute":
        assert bad_name.startswith("/")  # the archive really holds an absolute name

    with pytest.raises(DataError, match=re.escape(repr(bad_name))):
        safe_extract(archive, tmp_path / "target")

    if kind == "hardlink":
        assert outside.read_bytes() == b"original"
    else:
        assert not os.path.lexists(outside)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "outside", "target"]
    assert [p for p in (tmp_path / "target").rglob("*") if p.is_symlink()] == []


@pytest.mark.parametrize("kind", ["parent", "symlink"])
def test_unsafe_archive_leaves_root_clean_and_keeps_the_users_archive(tmp_path, kind):
    members, outside = evil_entries(kind, tmp_path)
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_gz(members))
    root = tmp_path / "data"

    with pytest.raises(DataError, match="refusing unsafe archive member"):
        load_dataset(root=root, archive=archive, spec=make_fake().spec, **QUIET)

    assert not os.path.lexists(outside)
    assert entries(root) == []
    assert archive.exists()


def test_safe_extract_does_not_follow_a_symlink_already_in_the_target(tmp_path):
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "link").symlink_to(outside)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz([("link/pwned", b"pwned")]))

    with pytest.raises(DataError, match="resolves outside"):
        safe_extract(archive, target)

    assert list(outside.iterdir()) == []


def test_not_a_tar_archive_is_a_data_error(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(b"<html>502 Bad Gateway</html>")
    root = tmp_path / "data"

    with pytest.raises(DataError, match="not a readable tar archive"):
        load_dataset(root=root, archive=archive, spec=make_fake().spec, **QUIET)

    assert entries(root) == []


@pytest.mark.parametrize("kind, reason", [
    ("absolute", "absolute path"), ("dot-dot", "'..' in its path"), ("dot", "empty file name"),
])
def test_an_unsafe_name_is_refused_by_its_own_rule_even_where_it_stays_inside(tmp_path, kind,
                                                                            reason):
    """An absolute path into the target, a '..' that leads back into it, a file named '.'
    (the target itself): each is refused by its own rule, not left to the last check (where
    the path resolves) or to the error of opening a folder for writing."""
    target = tmp_path / "target"
    name = {"absolute": str(target / "inside.txt"), "dot-dot": "a/../inside.txt",
            "dot": "."}[kind]
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz([(tarfile.TarInfo(name), b"data")]))

    with pytest.raises(DataError, match=f"refusing unsafe archive member .*: {reason}$"):
        safe_extract(archive, target)

    assert list(target.iterdir()) == []


def test_an_archive_of_more_members_than_the_bound_is_refused(tmp_path):
    archive = tmp_path / "many.tar.gz"  # folders: nothing to write and fsync
    archive.write_bytes(tar_gz([(f"d{i}/", None) for i in range(MAX_MEMBERS + 1)]))

    with pytest.raises(DataError, match=f"more than {MAX_MEMBERS} members"):
        safe_extract(archive, tmp_path / "target")


def test_the_tar_stream_is_never_read_past_its_total_cap(tmp_path):
    """Ten members within the member cap: 15,360 bytes of tar stream (a 512-byte header and
    1,024 bytes of data each) and its end, refused at a cap of 12,000, taken at its size."""
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz([(f"f{i}", bytes(1024)) for i in range(10)]))
    with pytest.raises(DataError, match="expands to more than 12000 bytes"):
        safe_extract(archive, tmp_path / "refused", member_cap=1024, total_cap=12_000)

    safe_extract(archive, tmp_path / "taken", member_cap=1024, total_cap=10 * 1536 + 10240)
    assert len(list((tmp_path / "taken").iterdir())) == 10


def test_an_archive_expanding_past_its_data_sets_size_is_refused(tmp_path):
    """90 extra members of 60 KB, each under the small-file cap but 5.4 MB in all: more than
    the 4 MB an archive may hold past its data set's files. Refused, nothing left."""
    fake = make_fake(replace={f"extra_{i}.txt": bytes(60_000) for i in range(90)})
    archive = fake.write(tmp_path / fake.spec.archive_name)

    with pytest.raises(DataError, match="expands to more than"):
        load_dataset(root=tmp_path / "data", archive=archive, spec=fake.spec, **QUIET)

    assert entries(tmp_path / "data") == []


def test_a_known_size_holds_for_a_member_named_with_a_leading_dot_slash(tmp_path):
    """'./folder/file.bin' is the path 'folder/file.bin': held to its exact size, not to
    the far larger cap of files of unknown size."""
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz([("./folder/file.bin", bytes(11))]))

    with pytest.raises(DataError, match="expected 10 bytes, found 11"):
        safe_extract(archive, tmp_path / "target", sizes={"folder/file.bin": 10})


@pytest.mark.parametrize("name", ["folder/" + "n" * 90 + ".txt", "folder/tab\there.txt"],
                         ids=["long", "tab"])
def test_a_long_or_odd_member_name_is_extracted_under_its_own_name(tmp_path, name):
    """Names are shortened and quoted for messages only. A name of over 80 characters was
    extracted as '<its first 80>... (97 characters)', one holding a tab under its repr(),
    quotes and all ("'folder/tab\\there.txt'", in a folder named "'folder")."""
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz([(name, b"data")]))

    safe_extract(archive, tmp_path / "target")

    assert sorted(str(p.relative_to(tmp_path / "target"))
                  for p in (tmp_path / "target").rglob("*")) == ["folder", name]


# --- restricted unpickling -------------------------------------------------------------------


class RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_that_runs_a_command_is_refused(tmp_path):
    def payload(path):  # a batch as Python 2 wrote it, with a command where the array goes
        return python2_pickle({"data": RunsCommand(f"touch {path}"), "labels": [0]})

    control, marker = tmp_path / "control", tmp_path / "pwned"
    pickle.loads(payload(control), encoding="bytes")
    assert control.exists()  # the payload is live: plain pickle runs the command
    fake = make_fake("cifar10", "python", replace={"data_batch_1": payload(marker)})
    archive = fake.write(tmp_path / fake.spec.archive_name)

    with pytest.raises(DataError, match=r"data_batch_1.*refusing to unpickle (os|posix)\.system"):
        load_dataset(root=tmp_path / "data", archive=archive, spec=fake.spec, **QUIET)

    assert not marker.exists()
    assert entries(tmp_path / "data") == []


@pytest.mark.parametrize("callable_, argument, name", [
    (eval, "1 + 1", "(builtins|__builtin__).eval"),
    (np.load, "x.npy", "numpy.load"),
    (getattr, "x", "(builtins|__builtin__).getattr"),
])
def test_restricted_unpickle_refuses_every_other_global(callable_, argument, name):
    class Reduces:
        def __reduce__(self):
            return callable_, (argument,)

    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with pytest.raises(DataError, match=f"refusing to unpickle {name}"):
            restricted_unpickle(io.BytesIO(pickle.dumps(Reduces(), protocol=protocol)))


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_restricted_unpickle_reads_python2_numpy_pickles(module):
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    blob = python2_pickle({"data": images, "labels": [3, 4], "batch_label": "b"}, module)

    batch = restricted_unpickle(io.BytesIO(blob))

    assert batch[b"labels"] == [3, 4] and batch[b"batch_label"] == b"b"
    np.testing.assert_array_equal(batch[b"data"], images)


def test_malformed_pickle_is_a_data_error():
    with pytest.raises(DataError, match="not a valid CIFAR pickle"):
        restricted_unpickle(io.BytesIO(b"\x80\x02}q\x00(U\x04data"))


class PersistentIds(pickle.Pickler):
    def persistent_id(self, obj):
        return "an object outside the pickle" if obj == "marker" else None


def test_restricted_unpickle_refuses_a_persistent_id():
    buffer = io.BytesIO()
    PersistentIds(buffer, protocol=2).dump({"data": "marker"})

    with pytest.raises(DataError, match="refusing to unpickle a persistent id"):
        restricted_unpickle(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("kind", ["floats", "bools"])
def test_python_batch_labels_that_are_not_integers_are_refused(tmp_path, kind):
    """Labels of floats (2.7) or bools in a python-format batch whose md5 and size are its
    spec's: refused, not cast to int64 (2.7 as class 2, True as class 1)."""
    original = make_fake("cifar10", "python").members["data_batch_1"]
    batch = {key.decode(): value for key, value in restricted_unpickle(
        io.BytesIO(original)).items()}
    batch["labels"] = [v + 0.7 if kind == "floats" else v % 2 == 1 for v in batch["labels"]]
    fake = make_fake("cifar10", "python", replace={"data_batch_1": python2_pickle(batch)})
    archive = fake.write(tmp_path / fake.spec.archive_name)

    with pytest.raises(DataError, match="data_batch_1.*integer labels under b'labels'"):
        load_dataset(root=tmp_path / "data", archive=archive, spec=fake.spec, **QUIET)


# --- binary batches --------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [-1, +7, -92190 // 2])
def test_wrong_size_bin_in_archive_names_file_and_sizes(tmp_path, delta):
    good = make_fake().members["data_batch_1.bin"]
    wrong = good[:delta] if delta < 0 else good + bytes(delta)
    fake = make_fake(replace={"data_batch_1.bin": wrong})
    archive = fake.write(tmp_path / fake.spec.archive_name)

    with pytest.raises(DataError, match=re.escape(
            f"data_batch_1.bin in {archive.name}: expected 92190 bytes, found {len(wrong)}")):
        load_dataset(root=tmp_path / "data", archive=archive, spec=fake.spec, **QUIET)

    assert entries(tmp_path / "data") == []


def test_truncated_bin_in_existing_folder_names_file_and_sizes(tmp_path):
    fake = make_fake()
    root = tmp_path / "data"
    folder = prepare_dataset(root=root, archive=fake.write(tmp_path / "a.tar.gz"),
                             spec=fake.spec, **QUIET)
    batch = folder / "test_batch.bin"
    batch.write_bytes(batch.read_bytes()[:1000])

    with pytest.raises(DataError, match=re.escape(
            f"{batch}: expected {25 * 3073} bytes, found 1000")):
        load_dataset(root=root, spec=fake.spec, download=False, **QUIET)


def test_longer_bin_in_existing_folder_names_file_and_sizes(tmp_path):
    fake = make_fake()
    folder = prepare_dataset(root=tmp_path / "data", archive=fake.write(tmp_path / "a.tgz"),
                             spec=fake.spec, **QUIET)
    batch = folder / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes() + b"x")

    with pytest.raises(DataError, match=re.escape(
            f"{batch}: expected {20 * 3073} bytes, found more than {20 * 3073}")):
        load_dataset(root=folder, spec=fake.spec, download=False, **QUIET)


@pytest.mark.parametrize("dataset, label_bytes, bad_label", [("cifar10", 1, 10),
                                                             ("cifar100", 2, 100)])
def test_label_out_of_range_is_refused(tmp_path, dataset, label_bytes, bad_label):
    name = "data_batch_2.bin" if dataset == "cifar10" else "train.bin"
    content = bytearray(make_fake(dataset).members[name])
    content[3 * (label_bytes + 3072) + label_bytes - 1] = bad_label  # fine label of record 3
    fake = make_fake(dataset, replace={name: bytes(content)})
    archive = fake.write(tmp_path / fake.spec.archive_name)

    with pytest.raises(DataError, match=f"{name}.*label {bad_label} out of range"):
        load_dataset(root=tmp_path / "data", archive=archive, spec=fake.spec, **QUIET)


def test_wrong_class_names_are_refused(tmp_path):
    fake = make_fake(replace={"batches.meta.txt": b"cat\ndog\n"})
    archive = fake.write(tmp_path / fake.spec.archive_name)

    with pytest.raises(DataError, match="batches.meta.txt.*class names"):
        load_dataset(root=tmp_path / "data", archive=archive, spec=fake.spec, **QUIET)


# --- existing folders ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_root_pointing_at_an_extracted_folder_is_used_in_place(tmp_path, fmt):
    fake = make_fake("cifar10", fmt)
    user_copy = tmp_path / "cache" / fake.spec.folder  # e.g. a torchvision or keras cache
    for name, content in fake.members.items():
        user_copy.mkdir(parents=True, exist_ok=True)
        (user_copy / name).write_bytes(content)
    before, listing = snapshot(user_copy), entries(tmp_path)

    assert prepare_dataset(root=user_copy, spec=fake.spec, download=False, **QUIET) == user_copy
    data = load_dataset(root=user_copy, spec=fake.spec, download=False, **QUIET)
    nested = load_dataset(root=user_copy.parent, spec=fake.spec, download=False, **QUIET)

    assert_matches(data, fake)
    assert_matches(nested, fake)
    assert snapshot(user_copy) == before
    assert entries(tmp_path) == listing  # nothing added, nothing removed


def test_a_folder_of_the_other_format_is_named(tmp_path):
    fake = make_fake("cifar10", "python")
    folder = prepare_dataset(root=tmp_path / "data", archive=fake.write(tmp_path / "a.tgz"),
                             spec=fake.spec, **QUIET)

    with pytest.raises(DataError, match="python format, not cifar10 in the binary format"):
        load_dataset(root=folder, fmt="binary", download=False, **QUIET)


@pytest.mark.parametrize(("args", "wanted"), [
    (["--format", "python"], "the cifar10 python-format one, cifar-10-python.tar.gz"),
    (["--dataset", "cifar100"], "the cifar100 binary-format one, cifar-100-binary.tar.gz"),
])
def test_the_official_archive_of_another_format_or_data_set_is_named(tmp_path, args, wanted):
    """The binary archive (by its official name) given for --format python was 'corrupt or
    not the official cifar10 data', which it is."""
    from cli_util import assert_one_line_error, run

    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(tar_gz([("cifar-10-batches-bin/", None),
                                ("cifar-10-batches-bin/data_batch_1.bin", bytes(100_000))]))
    result = run("softmax-download", "--archive", str(archive), "--root",
                 str(tmp_path / "data"), *args, "--quiet")
    assert_one_line_error(result, 1, "cifar-10-binary.tar.gz is the name of the cifar10 "
                          f"binary-format archive; this command wants {wanted}")
    assert "corrupt" not in result.stderr


def test_corrupted_file_in_existing_folder_is_reported_and_left_alone(tmp_path):
    fake = make_fake()
    root = tmp_path / "data"
    folder = prepare_dataset(root=root, archive=fake.write(tmp_path / "a.tar.gz"),
                             spec=fake.spec, **QUIET)
    batch = folder / "data_batch_2.bin"
    content = bytearray(batch.read_bytes())
    content[5000] ^= 0xFF
    batch.write_bytes(bytes(content))
    before, listing = snapshot(folder), entries(root)

    for call in (prepare_dataset, load_dataset):
        with pytest.raises(DataError) as error:
            call(root=root, spec=fake.spec, download=False, **QUIET)
        message = str(error.value)
        assert str(batch) in message and "md5 checksum mismatch" in message
        assert fake.spec.files["data_batch_2.bin"] in message
        assert hashlib.md5(content).hexdigest() in message
        assert f"softmax-download --force --root {root}" in message  # the one with --force

    assert snapshot(folder) == before
    assert entries(root) == listing


def test_force_replaces_a_folder_only_after_the_new_copy_verified(tmp_path):
    good, bad = make_fake(), make_fake(seed=1)
    root = tmp_path / "data"
    good_archive = good.write(tmp_path / "good.tar.gz")
    folder = prepare_dataset(root=root, archive=good_archive, spec=good.spec, **QUIET)
    (folder / "marker").write_bytes(b"old copy")
    before, listing = snapshot(folder), entries(root)

    with pytest.raises(DataError, match="md5 checksum mismatch"):
        prepare_dataset(root=root, archive=bad.write(tmp_path / "bad.tar.gz"), spec=good.spec,
                        force=True, **QUIET)
    assert snapshot(folder) == before
    assert entries(root) == listing and (tmp_path / "bad.tar.gz").exists()

    prepare_dataset(root=root, archive=good_archive, spec=good.spec, force=True, **QUIET)
    assert not (folder / "marker").exists()
    assert_matches(load_dataset(root=root, spec=good.spec, download=False, **QUIET), good)
    assert entries(root) == sorted(
        [good.spec.folder] + [f"{good.spec.folder}/{n}" for n in [*good.members, "readme.html"]])


def test_force_never_replaces_a_folder_the_user_pointed_at(tmp_path):
    fake = make_fake()
    folder = prepare_dataset(root=tmp_path / "data", archive=fake.write(tmp_path / "a.tgz"),
                             spec=fake.spec, **QUIET)
    before = snapshot(folder)

    with pytest.raises(DataError, match="--force cannot replace"):
        prepare_dataset(root=folder, archive=tmp_path / "a.tgz", spec=fake.spec, force=True,
                        **QUIET)

    assert snapshot(folder) == before


# --- the real CIFAR-10 archive, when present -------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """ONE extraction of the real 170 MB archive, shared by the tests below."""
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"real CIFAR-10 archive not present at {REAL_ARCHIVE}")
    root = tmp_path_factory.mktemp("real") / "data"
    return root, load_dataset(root=root, archive=REAL_ARCHIVE, **QUIET)


def test_real_batches_match_the_published_md5s(real):
    root, data = real
    assert {name: data.fingerprint[name] for name in REAL_MD5} == REAL_MD5
    assert set(data.fingerprint) == {*REAL_MD5, "batches.meta.txt"}
    assert not [e for e in entries(root) if e.startswith(".")]


def test_real_arrays_shapes_labels_and_classes(real):
    _, data = real
    assert data.train_images.shape == (50_000, 3072) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (10_000, 3072) and data.test_images.dtype == np.uint8
    assert data.train_images.flags.c_contiguous and data.test_images.flags.c_contiguous
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert data.class_names == CIFAR10_CLASSES


def test_real_folder_reloads_in_place_without_the_archive(real, tmp_path):
    root, data = real
    folder = root / "cifar-10-batches-bin"
    again = load_dataset(root=folder, download=False, **QUIET)
    assert again.fingerprint == data.fingerprint
    np.testing.assert_array_equal(again.test_images, data.test_images)
    np.testing.assert_array_equal(again.train_labels, data.train_labels)


def test_partial_extraction_leaves_no_temporary_folder(tmp_path):
    """A member refused after good ones were extracted: the temporary folder goes too."""
    fake = make_fake()
    members = [(fake.spec.folder + "/", None)] + [
        (f"{fake.spec.folder}/{n}", c) for n, c in fake.members.items()] + [
        (f"{fake.spec.folder}/../../escape", b"x")]
    archive = tmp_path / "partial.tar.gz"
    archive.write_bytes(tar_gz(members))
    root = tmp_path / "data"

    with pytest.raises(DataError, match="escape"):
        prepare_dataset(root=root, archive=archive, spec=fake.spec, **QUIET)

    assert entries(root) == []
