"""Shared folders are safe, and no input gets a traceback, tried through the console scripts.

A run folder or a data root may be writable by others, who can plant a symbolic link, a hard
link or a fifo under any name the tool writes. Each test here puts a victim file outside the
folder (or the victim's second name inside it) and checks its bytes afterwards.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import assert_one_line_error, limit_data, run
from fake_cifar import make_fake
from http_server import clear_proxy_env, loopback_servers

VICTIM = b"precious bytes that no command of this tool made\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of the user's, outside every folder the commands write."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


def plant(kind: str, at: Path, victim: Path) -> None:
    """Put a symbolic link to `victim`, a second name of it (hard link) or a fifo at `at`."""
    if kind == "symlink":
        at.symlink_to(victim)
    elif kind == "hardlink":
        os.link(victim, at)
    else:
        os.mkfifo(at)


def features_config(tmp_path: Path, **data) -> Path:
    """A config training on small feature files (no CIFAR needed) into tmp_path/run."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    X = (rng.normal(0, 3, (3, 8))[y] + rng.standard_normal((300, 8))).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    raw = {"engine": "numpy",
           "data": {"dataset": "features", "train": str(tmp_path / "X.npy"), "val_size": 50,
                    **data},
           "optim": {"epochs": 2, "batch_size": 64, "lr": 0.05},
           "augment": {"hflip": False, "translate": 0},
           "output": {"dir": str(tmp_path / "run"), "plots": False}}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --- 1. planted links: nothing outside is written, truncated or deleted ----------------------


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_train_refuses_a_run_lock_that_is_not_its_own_file(tmp_path, victim, kind):
    config = features_config(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    plant(kind, run_dir / ".lock", victim)
    result = run("softmax-train", "--config", str(config), "--quiet", timeout=60)
    assert_one_line_error(result, 1, str(run_dir / ".lock"), "refusing")
    assert victim.read_bytes() == VICTIM
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_download_refuses_a_root_lock_that_is_not_its_own_file(tmp_path, victim, kind):
    fake = make_fake()
    archive = fake.write(tmp_path / fake.spec.archive_name)
    root = tmp_path / "data"
    root.mkdir()
    plant(kind, root / ".lock", victim)
    result = run("softmax-download", "--root", str(root), "--archive", str(archive), "-q",
                 timeout=60)
    assert_one_line_error(result, 1, str(root / ".lock"), "refusing")
    assert victim.read_bytes() == VICTIM


@pytest.fixture
def serve(monkeypatch):
    clear_proxy_env(monkeypatch)  # the child inherits os.environ
    yield from loopback_servers()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_download_never_writes_through_a_planted_part_file(tmp_path, victim, serve, kind):
    fake = make_fake()
    server = serve({f"/{fake.spec.archive_name}": fake.archive})
    root = tmp_path / "data"
    root.mkdir()
    part = root / f"{fake.spec.archive_name}.part"
    plant(kind, part, victim)
    result = run("softmax-download", "--root", str(root), "--url", server.url_for("/"), "-q",
                 timeout=60)
    assert_one_line_error(result, 1, str(part), "refusing")
    assert victim.read_bytes() == VICTIM
    assert not (root / fake.spec.archive_name).exists()


def test_planted_run_files_are_never_written_through(tmp_path, victim):
    """config.yaml, history.jsonl, last.npz, best.npz and summary.json planted as links to
    the victim: they are no run's files, so --overwrite refuses them in one line and neither
    the links nor the victim change."""
    config = features_config(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    names = ("config.yaml", "history.jsonl", "last.npz", "best.npz", "summary.json")
    for name in names:
        (run_dir / name).symlink_to(victim)
    result = run("softmax-train", "--config", str(config), "--quiet", "--overwrite", timeout=120)
    assert_one_line_error(result, 2, "not written by softmax-train")
    assert victim.read_bytes() == VICTIM
    for name in names:
        assert (run_dir / name).is_symlink() and (run_dir / name).resolve() == victim


def test_extraction_replaces_a_planted_data_folder_link_without_touching_its_target(
        tmp_path, victim):
    """--force on a root whose data folder is a link to the user's folder: the new copy
    replaces the link; the folder it pointed at, and the scratch folders, are left alone."""
    from softmax_cls.data.fetch import prepare_dataset

    fake = make_fake()
    archive = fake.write(tmp_path / fake.spec.archive_name)
    root = tmp_path / "data"
    root.mkdir()
    (root / fake.spec.folder).symlink_to(victim.parent, target_is_directory=True)
    folder = prepare_dataset(root=root, archive=archive, spec=fake.spec, force=True,
                             progress=False)
    assert folder == root / fake.spec.folder and not folder.is_symlink()
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]
    assert victim.read_bytes() == VICTIM
    assert sorted(p.name for p in root.iterdir()) == [".lock", fake.spec.folder]


# --- 2. checkpoints: any file given as one is refused in one line, in bounded time and memory


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run folder of a small features run (8 features, 3 classes) made by softmax-train."""
    folder = tmp_path_factory.mktemp("trained")
    result = run("softmax-train", "--config", str(features_config(folder)), "--quiet")
    assert result.returncode == 0, result.stderr
    return folder


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header(shape: tuple, dtype: str = "<f4") -> bytes:
    """An npy header (version 1.0) declaring `shape` of `dtype`, whatever follows it."""
    text = repr({"descr": dtype, "fortran_order": False, "shape": shape})
    text += " " * (63 - (len(text) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def with_members(trained: Path, tmp_path: Path, **changed: bytes) -> Path:
    """A copy of the run's best.npz with some members' bytes replaced."""
    contents = members(trained / "run" / "best.npz")
    contents.update({f"{key}.npy": value for key, value in changed.items()})
    path = tmp_path / "changed.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return path


def member_text(trained: Path, key: str) -> str:
    return str(np.load(io.BytesIO(members(trained / "run" / "best.npz")[f"{key}.npy"])))


def with_meta(trained: Path, tmp_path: Path, edit) -> Path:
    meta_text = member_text(trained, "meta_json")
    return with_members(trained, tmp_path, meta_json=npy(np.array(edit(meta_text))))


def set_meta(key, value):
    def edit(text: str) -> str:
        meta = json.loads(text)
        meta[key] = value
        return json.dumps(meta)
    return edit


def eval_measured(path: Path | str, *args: str):
    from test_hostile import run_measured

    return run_measured("softmax-eval", str(path), "--quiet", *args)


def assert_refused(result, *needles: str, seconds: float = 20, peak_mb: float = 300) -> str:
    line = assert_one_line_error(result, 1, *needles)
    assert len(line) < 400, line
    assert "pickle" not in line and "np.str_" not in line, line
    assert result.seconds < seconds, result.seconds
    assert result.peak_mb < peak_mb, result.peak_mb
    return line


@pytest.mark.parametrize("edit, needle", [
    (lambda text: re.sub(r'"epoch": \d+, "best', '"epoch": Infinity, "best', text), "Infinity"),
    (lambda text: text.replace('"best_val_acc": ', '"best_val_acc": -Infinity, "x": '),
     "-Infinity"),
    (set_meta("epoch", -3), "epoch is -3"),
    (set_meta("best_epoch", 10**30), "cannot exceed"),
    (set_meta("history", "2 epochs"), "history"),
    (set_meta("history", [[1, 2]]), "history row"),
    # one row is enough only at epoch 0, for an L-BFGS solve that made no iteration
    (lambda text: set_meta("history", [{"epoch": 0, "iterations": 0}])(
        set_meta("epoch", 3)(text)), "history is not a list of 3 rows"),
    # ... and a row that is not a solve's (no iterations: 0) is one too many at epoch 0
    (lambda text: set_meta("history", [{"epoch": 0}])(set_meta("epoch", 0)(set_meta(
        "best_epoch", 0)(set_meta("epochs_since_best", 0)(text)))),
     "history is not a list of 0 rows"),
    (set_meta("fingerprint", ["X.npy"]), "fingerprint"),
    (set_meta("format_version", "x" * 100_000), "(100000 characters)"),
    (set_meta("format_version", "3"), "format '3' is not supported (this version reads 2, 3)"),
    (set_meta("format_version", 3.0), "format 3.0 is not supported"),
    (set_meta("best_val_acc", 1.5), "best_val_acc is 1.5, not an accuracy"),
    (set_meta("fingerprint", {"X.npy": 5}), "fingerprint is not a table of strings"),
    (lambda text: "[" * 100_000 + "]" * 100_000, "unreadable"),
])
def test_damaged_checkpoint_metadata_is_one_line(trained, tmp_path, edit, needle):
    result = eval_measured(with_meta(trained, tmp_path, edit))
    assert_refused(result, "changed.npz", needle)


def test_checkpoint_for_another_feature_count_is_refused(trained, tmp_path):
    """Consistent in itself (its fingerprint names the data given), but for 8 features when
    the data has 5."""
    from softmax_cls.config import config_from_dict, parse_yaml
    from softmax_cls.data.features import load_features

    rng = np.random.default_rng(1)
    np.save(tmp_path / "X.npy", rng.standard_normal((300, 5)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 300))
    raw = parse_yaml(member_text(trained, "config_yaml"), "config")
    raw["data"].update(train=str(tmp_path / "X.npy"), test=None)
    meta = json.loads(member_text(trained, "meta_json"))
    meta["fingerprint"] = load_features(config_from_dict(raw).data, progress=False).fingerprint
    path = with_members(trained, tmp_path, config_yaml=npy(np.array(yaml.safe_dump(raw))),
                        meta_json=npy(np.array(json.dumps(meta))))
    result = eval_measured(path, "--split", "val")
    assert_refused(result, "rows of 8 features, the data has 5")


def test_a_checkpoint_saved_big_endian_is_read_as_the_same_model(trained, tmp_path):
    """What np.savez writes on a big-endian machine (every array '>'): the same report and
    predictions. It was refused with 'W has shape (3, 9) float32, expected (3, 9) float32'."""
    def swapped(data: bytes) -> bytes:
        array = np.load(io.BytesIO(data), allow_pickle=False)
        return npy(array.astype(array.dtype.newbyteorder(">")))

    path = with_members(trained, tmp_path, **{
        name[:-4]: swapped(data) for name, data in members(trained / "run" / "best.npz").items()})
    with np.load(path) as arrays:
        assert arrays["W"].dtype.str == ">f4" and arrays["class_names"].dtype.byteorder == ">"
    reports = [run("softmax-eval", str(checkpoint), "--split", "val", "--json", "--quiet")
               for checkpoint in (trained / "run" / "best.npz", path)]
    assert reports[1].returncode == 0, reports[1].stderr
    assert ({k: v for k, v in json.loads(reports[1].stdout).items() if k != "checkpoint"}
            == {k: v for k, v in json.loads(reports[0].stdout).items() if k != "checkpoint"})
    predictions = [run("softmax-predict", str(checkpoint), str(trained / "X.npy"), "--json")
                   for checkpoint in (trained / "run" / "best.npz", path)]
    assert predictions[1].returncode == 0, predictions[1].stderr
    assert predictions[1].stdout == predictions[0].stdout


@pytest.mark.parametrize("shape", [(10**12, 3), (-1, 3), (2**62, 2**62), (9, -3), (-9, -3)])
def test_npy_header_with_a_huge_or_negative_shape_is_refused(trained, tmp_path, shape):
    path = with_members(trained, tmp_path, W=npy_header(shape) + bytes(9 * 3 * 4))
    result = eval_measured(path)
    line = assert_refused(result, "changed.npz", "W")
    assert min(shape) >= 0 or "declares the impossible shape" in line, line


def member_array(trained: Path, key: str) -> np.ndarray:
    return np.load(io.BytesIO(members(trained / "run" / "best.npz")[f"{key}.npy"]))


def nan_at_4(W: np.ndarray) -> np.ndarray:
    W = W.copy()
    W.flat[4] = np.nan
    return W


@pytest.mark.parametrize("key, change, needle", [
    ("W", nan_at_4, "W holds non-finite values"),
    ("val_rows", lambda rows: rows - rows.max() - 1, "val_rows must be a 1-d array"),
    ("W", np.asfortranarray, "member W is in Fortran order"),
], ids=["nan", "negative rows", "fortran"])
def test_a_damaged_checkpoint_array_is_one_line(trained, tmp_path, key, change, needle):
    path = with_members(trained, tmp_path, **{key: npy(change(member_array(trained, key)))})
    assert_refused(eval_measured(path), "changed.npz", needle)


def test_a_member_with_bytes_past_its_array_is_refused(trained, tmp_path):
    """A member's header accounts for exactly its bytes: 8 more after W's array are not
    ignored."""
    path = with_members(trained, tmp_path, W=npy(member_array(trained, "W")) + bytes(8))
    assert_refused(eval_measured(path), "changed.npz", "member W declares shape",
                   "does not fit its")


def zip_with_deflated(entries: dict[str, tuple[bytes, int, int, int]],
                      compressed: dict[str, int] | None = None) -> bytes:
    """A zip archive of (raw deflate data, crc32, uncompressed size, method) members; a
    member in `compressed` declares that compressed size (in both headers), not its data's."""
    local, central = bytearray(), bytearray()
    for name, (data, crc, size, method) in entries.items():
        encoded = name.encode()
        packed = (compressed or {}).get(name, len(data))
        header = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, packed,
                             size, len(encoded), 0)
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc,
                               packed, size, len(encoded), 0, 0, 0, 0, 0, len(local))
        central += encoded
        local += header + encoded + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                      len(central), len(local), 0)
    return bytes(local + central + end)


def zeros_bomb_member(header: bytes, total: int) -> tuple[bytes, int, int, int]:
    """A deflated npy member: `header`, then zeros up to `total` bytes (a few MB deflated)."""
    chunk = bytes(16 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(total - len(header), len(chunk))
    tail = compressor.compress(bytes(rest)) + compressor.flush()
    crc = zlib.crc32(header)
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(bytes(rest), crc)
    return head + body * count + tail, crc, total, zipfile.ZIP_DEFLATED


@pytest.mark.parametrize("rows", [40_000_000, 20_000_000])
def test_checkpoint_inflating_to_gigabytes_is_refused_before_inflating(trained, tmp_path, rows):
    """Four weight members of (rows, 3) float32 zeros: 2 GB (each 480 MB) or 1 GB (each
    240 MB, each under the member cap), from a file of a few MB."""
    entries = {}
    for name, data in members(trained / "run" / "best.npz").items():
        entries[name] = data, zlib.crc32(data), len(data), zipfile.ZIP_STORED
    header = npy_header((rows, 3))
    bomb = zeros_bomb_member(header, len(header) + rows * 3 * 4)
    for key in ("W", "velocity", "average", "best_W"):
        entries[f"{key}.npy"] = bomb
    path = tmp_path / "bomb.npz"
    path.write_bytes(zip_with_deflated(entries))
    assert path.stat().st_size < 5_000_000
    result = eval_measured(path)
    assert_refused(result, "bomb.npz")


@pytest.mark.slow
def test_a_checkpoint_of_weights_over_256_mb_loads_unless_memory_is_short(trained, tmp_path):
    """What softmax-train writes loads again whatever its size: 33,000 classes x 2,048
    features are four 270 MB weight arrays (the loader once refused any over 256 MB, so a
    trained model could not be used). With less memory than it needs, one line says so."""
    from dataclasses import replace

    from softmax_cls.math.preprocess import Preprocessor
    from softmax_cls.training.checkpoint import load_checkpoint, save_checkpoint

    small = load_checkpoint(trained / "run" / "best.npz")
    classes, raw = 33_000, 2047
    W = np.zeros((classes, raw + 1), np.float32)
    W[1, -1] = 1  # every row: class c1
    path = tmp_path / "big.npz"
    save_checkpoint(path, replace(small.state, W=W, velocity=W, average=W, best_W=W),
                    Preprocessor(np.zeros(raw), np.ones(raw)),
                    tuple(f"c{i}" for i in range(classes)), small.config_yaml,
                    small.fingerprint, "done", small.val_rows)
    del W
    assert path.stat().st_size > 4 * (256 << 20)
    np.save(tmp_path / "rows.npy", np.zeros((2, raw), np.float32))
    result = run("softmax-predict", str(path), str(tmp_path / "rows.npy"), "--json",
                 timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["top_k"][0]["class"] for row in rows] == ["c1", "c1"], rows
    short = run("softmax-predict", str(path), str(tmp_path / "rows.npy"),
                preexec_fn=limit_data(700 << 20))
    assert_one_line_error(short, 1, "big.npz", "needs 1,0", "MB of memory")


def test_a_stored_member_declaring_more_bytes_than_the_file_holds_is_refused(trained,
                                                                            tmp_path):
    """Stored members are not capped (their bytes are in the file): one whose index declares
    3 GB (a header of (250 M, 3) float32) in a small file is refused before reading."""
    entries = {name: (data, zlib.crc32(data), len(data), zipfile.ZIP_STORED)
               for name, data in members(trained / "run" / "best.npz").items()}
    header = npy_header((250_000_000, 3))
    entries["W.npy"] = header + bytes(64), 0, len(header) + 3_000_000_000, zipfile.ZIP_STORED
    path = tmp_path / "liar.npz"
    path.write_bytes(zip_with_deflated(entries))
    assert_refused(eval_measured(path), "liar.npz", "member W declares")


def test_stored_members_declaring_more_bytes_than_the_file_holds_in_all_are_refused(trained,
                                                                                   tmp_path):
    """As above, but W's index entry declares 3 GB stored both as its size and as its
    compressed size (they agree): the sum of the stored members' bytes is held to the
    file's size, before an array of 3 GB is allocated to read it into."""
    entries = {name: (data, zlib.crc32(data), len(data), zipfile.ZIP_STORED)
               for name, data in members(trained / "run" / "best.npz").items()}
    header = npy_header((250_000_000, 3))
    declared = len(header) + 3_000_000_000
    entries["W.npy"] = header + bytes(64), 0, declared, zipfile.ZIP_STORED
    path = tmp_path / "liar.npz"
    path.write_bytes(zip_with_deflated(entries, compressed={"W.npy": declared}))
    assert_refused(eval_measured(path), "liar.npz", "member W declares")


@pytest.mark.parametrize("key", ["config_yaml", "meta_json"])
def test_a_stored_text_member_over_its_cap_is_refused_before_parsing(trained, tmp_path, key):
    """A config or history of 80 MB, stored (its bytes are in the file, so the arrays' lack
    of a cap would let it load): the texts keep their 16 MB cap however they are stored,
    refused from the zip index before a byte of them is read (the process stays near its
    start-up size; reading the member first took 80 MB more and more again to decode it)."""
    entries = {name: (data, zlib.crc32(data), len(data), zipfile.ZIP_STORED)
               for name, data in members(trained / "run" / "best.npz").items()}
    text = npy(np.array("x" * 20_000_000))  # 80 MB of UTF-32
    entries[f"{key}.npy"] = text, zlib.crc32(text), len(text), zipfile.ZIP_STORED
    path = tmp_path / "talk.npz"
    path.write_bytes(zip_with_deflated(entries))
    assert_refused(eval_measured(path), "talk.npz", f"member {key} is", "text", peak_mb=150)



def with_encryption_flag(data: bytes) -> bytes:
    """The zip archive `data` with every member's 'encrypted' flag set (local and central)."""
    data = bytearray(data)
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at >= 0:
            data[at + flags_at] |= 1
            at = data.find(signature, at + 1)
    return bytes(data)


@pytest.mark.parametrize("method, data, needles", [
    (zipfile.ZIP_DEFLATED, b"\x00garbage" * 10, ("corrupt or truncated", "decompressing")),
    (zipfile.ZIP_LZMA, b"\x09\x14\x05\x00" + b"\xff" * 5 + b"garbage" * 20,
     ("corrupt or truncated", "options")),
    (zipfile.ZIP_STORED, None, ("member W is encrypted", "not a checkpoint")),
], ids=["deflate", "lzma", "encrypted"])
def test_a_damaged_compressed_or_encrypted_member_is_one_line(trained, tmp_path, method, data,
                                                             needles):
    """W's deflated or LZMA data damaged (zlib.error and LZMAError are no ValueError), or the
    members flagged encrypted (zipfile.open raises RuntimeError): each printed a traceback."""
    entries = {name: (data, zlib.crc32(data), len(data), zipfile.ZIP_STORED)
               for name, data in members(trained / "run" / "best.npz").items()}
    if data is not None:
        entries["W.npy"] = data, 0, len(entries["W.npy"][0]), method
    content = zip_with_deflated(entries)
    path = tmp_path / "damaged.npz"
    path.write_bytes(content if data is not None else with_encryption_flag(content))
    assert_refused(eval_measured(path), "damaged.npz", *needles)
    predicted = run("softmax-predict", str(path), str(trained / "X.npy"))
    assert_one_line_error(predicted, 1, "damaged.npz", *needles)



def test_class_names_of_no_bytes_each_are_refused_from_their_header(trained, tmp_path):
    """30 million class names of dtype '<U0' (no bytes each) beside weights of shape
    (30 M, 0): an 8 KB file whose every member fits its declared bytes. Each name became a
    Python str before the weights' shape was refused (4.5 s and 290 MB here; a larger count
    had no bound); a zero-byte dtype is refused from the header."""
    entries = {name: (data, zlib.crc32(data), len(data), zipfile.ZIP_STORED)
               for name, data in members(trained / "run" / "best.npz").items()}
    classes = 30_000_000
    changed = {key: npy_header((classes, 0)) for key in ("W", "velocity", "average", "best_W")}
    changed["class_names"] = npy_header((classes,), "<U0")
    changed["pre_mean"] = changed["pre_scale"] = npy_header((0,), "<f8")
    for key, data in changed.items():
        entries[f"{key}.npy"] = data, zlib.crc32(data), len(data), zipfile.ZIP_STORED
    path = tmp_path / "nameless.npz"
    path.write_bytes(zip_with_deflated(entries))
    assert path.stat().st_size < 20_000
    assert_refused(eval_measured(path), "nameless.npz", "class_names", "<U0", seconds=2,
                   peak_mb=150)


NOISE = random.Random(5).randbytes(5000)


@pytest.mark.parametrize("content, needles", [
    (npy(np.zeros((3, 4), np.float32)), ("not a checkpoint of this tool", "a single .npy")),
    (npy(np.array(["a", "b"])), ("not a checkpoint of this tool", "a single .npy array")),
    (b"\x80\x04K\x01." + bytes(100), ("not a checkpoint of this tool", "not a zip archive")),
    (NOISE, ("not a checkpoint of this tool", "not a zip archive")),
    (b"", ("not a checkpoint of this tool", "not a zip archive")),
    (b"PK\x03\x04" + NOISE, ("corrupt or truncated checkpoint", "without its index")),
])
def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path, content, needles):
    path = tmp_path / "given.npz"
    path.write_bytes(content)
    result = eval_measured(path)
    assert_refused(result, "given.npz", *needles)


def test_a_long_path_is_cut_and_a_newline_does_not_split_the_line(tmp_path):
    result = eval_measured("a" * 100_000 + ".npz")
    line = assert_refused(result, "(100004 characters)")
    assert "a" * 161 not in line
    odd = tmp_path / "two\nlines.npz"
    odd.write_bytes(b"random")
    result = eval_measured(odd)
    assert_refused(result, "two\\nlines.npz", "not a checkpoint of this tool")
    # any message, not only a checkpoint's: the CLI escapes what reaches it
    result = run("softmax-train", "--config", str(tmp_path / "a\rb\nc.yaml"))
    assert_one_line_error(result, 2, "config file not found", "a\\rb\\nc.yaml")


def test_a_long_label_is_cut_short_not_quoted_whole(tmp_path):
    # 250 characters: under the 1024-byte cap on one label (a longer one is refused from the
    # header, tests/test_feature_bombs.py), yet far longer than a message quotes
    label = "L" * 250
    config = features_config(tmp_path)
    np.save(tmp_path / "y.npy", np.array([label] * 300))
    result = run("softmax-train", "--config", str(config), "--quiet")
    line = assert_one_line_error(result, 1, "single class", "(250 characters)")
    assert len(line) < 400 and "np.str_" not in line


# --- 3. configs and the files beside them -------------------------------------------------------


@pytest.mark.parametrize("command", ["softmax-train", "softmax-gradcheck"])
def test_a_fifo_given_as_config_is_refused_at_once(tmp_path, command):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    result = run(command, "--config", str(fifo), timeout=30)
    assert_one_line_error(result, 2, str(fifo), "not a regular file")


def test_a_fifo_given_as_sweep_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "sweep.yaml"
    os.mkfifo(fifo)
    result = run("softmax-sweep", str(fifo), "--out", str(tmp_path / "sweep"), timeout=30)
    assert_one_line_error(result, 2, str(fifo), "not a regular file")


def test_a_fifo_given_as_sweep_base_is_refused_not_called_missing(tmp_path):
    os.mkfifo(tmp_path / "base.yaml")
    (tmp_path / "s.yaml").write_text("base: base.yaml\nspace:\n  optim.lr: [0.1]\n")
    result = run("softmax-sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "sweep"),
                 timeout=30)
    assert_one_line_error(result, 2, str(tmp_path / "base.yaml"), "not a regular file")


@pytest.mark.parametrize("role", ["train", "test", "labels"])
def test_a_fifo_given_as_feature_file_is_refused_not_opened(tmp_path, role):
    """A pipe is no missing file, and opening it would wait for a writer for ever."""
    config = features_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    fifo = tmp_path / ("y.npy" if role == "labels" else "pipe_X.npy")
    if role == "labels":
        fifo.unlink()
    else:
        raw["data"][role] = str(fifo)
    os.mkfifo(fifo)
    config.write_text(yaml.safe_dump(raw))
    result = run("softmax-train", "--config", str(config), "--quiet", timeout=30)
    line = assert_one_line_error(result, 1, str(fifo), "not a regular file")
    assert "not found" not in line and "missing" not in line
    assert not (tmp_path / "run").exists()


# sitecustomize for a child: every feature file passes the stat check, as a file replaced by
# a pipe just after it was checked would
STAT_SAYS_REGULAR = ("import softmax_cls.data.features as features\n"
                     "features.file_problem = lambda path: None\n")


@pytest.mark.parametrize("role", ["train.npz", "train.npy", "labels"])
def test_a_feature_file_replaced_by_a_fifo_after_its_check_is_refused_not_waited_on(
        tmp_path, monkeypatch, role):
    """The reader checked the path with a stat, then opened it blocking: a pipe put there
    between the two hung the command for ever. It is opened without waiting and checked
    on the descriptor."""
    config = features_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    fifo = tmp_path / {"train.npz": "pipe.npz", "train.npy": "pipe_X.npy"}.get(role, "y.npy")
    if role == "labels":
        fifo.unlink()
    else:
        raw["data"]["train"] = str(fifo)
    os.mkfifo(fifo)
    config.write_text(yaml.safe_dump(raw))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(STAT_SAYS_REGULAR)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    result = run("softmax-train", "--config", str(config), "--quiet", timeout=20)
    assert_one_line_error(result, 1, str(fifo), "not a regular file")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [("softmax-eval",), ("softmax-predict", "X.npy"),
                                     ("softmax-train", "--resume")])
def test_a_fifo_given_as_checkpoint_is_refused_not_opened(tmp_path, command):
    fifo = tmp_path / "best.npz"
    os.mkfifo(fifo)
    np.save(tmp_path / "X.npy", np.zeros((2, 3), np.float32))
    args = ([command[0], "--resume", str(fifo)] if command[-1] == "--resume"
            else [command[0], str(fifo), *command[1:]])
    result = run(*args, cwd=tmp_path, timeout=30)
    assert_one_line_error(result, 1, f"checkpoint {fifo} is not a regular file")


def test_an_init_std_whose_weights_overflow_float32_names_the_key(tmp_path):
    result = run("softmax-train", "--config", str(features_config(tmp_path)), "--quiet",
                 "--set", "model.init_std=1e300")
    assert_one_line_error(result, 2, "model.init_std", "1e+300")
    assert not (tmp_path / "run").exists()


def sparse(path: Path, size: int = 2 << 30) -> Path:
    """A file of `size` bytes that takes no disk space (a hole)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def test_a_huge_sweep_file_is_refused_before_it_is_read(tmp_path):
    from test_hostile import run_measured

    sweep_file = sparse(tmp_path / "sweep.yaml")
    result = run_measured("softmax-sweep", str(sweep_file), "--out", str(tmp_path / "out"))
    line = assert_one_line_error(result, 2, str(sweep_file), "bytes")
    assert result.seconds < 20 and result.peak_mb < 300, (result.seconds, result.peak_mb, line)


@pytest.mark.parametrize("name", ["history.jsonl", "summary.json"])
def test_a_huge_file_in_a_run_folder_is_refused_before_it_is_read(trained, tmp_path, name):
    pytest.importorskip("matplotlib")
    from test_hostile import run_measured

    folder = tmp_path / "run"
    shutil.copytree(trained / "run", folder)
    sparse(folder / name)
    result = run_measured("softmax-plot", str(folder), "--quiet")
    line = assert_one_line_error(result, 1, str(folder / name), "bytes")
    assert result.seconds < 60 and result.peak_mb < 400, (result.seconds, result.peak_mb, line)


@pytest.mark.parametrize("value", ["0", "lots", "", "1000000"])
def test_an_invalid_numba_thread_count_is_one_line(tmp_path, monkeypatch, value):
    """A million threads: numba started them at the first parallel region and the process
    died of a segmentation fault, without a line."""
    pytest.importorskip("numba")
    config = features_config(tmp_path)
    monkeypatch.setenv("NUMBA_NUM_THREADS", value)
    result = run("softmax-train", "--config", str(config), "--quiet", "--set", "engine=numba")
    assert_one_line_error(result, 1, "NUMBA_NUM_THREADS", f"got '{value}'")
    assert "warn" not in result.stderr.lower()


def test_sweep_never_writes_its_journal_through_a_planted_link(tmp_path, victim):
    """The victim is empty, so optuna would take it for a fresh journal and append to it."""
    pytest.importorskip("optuna")
    victim.write_bytes(b"")
    features_config(tmp_path)
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text("base: probe.yaml\ntrials: 1\nsampler: random\n"
                          "space:\n  optim.lr: {log_uniform: [0.01, 0.1]}\n")
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "study.journal").symlink_to(victim)
    result = run("softmax-sweep", str(sweep_file), "--out", str(folder), "--quiet", "--no-plots",
                 timeout=120)
    assert_one_line_error(result, 1, str(folder / "study.journal"), "refusing")
    assert victim.read_bytes() == b""


def test_pictures_never_land_in_a_folder_a_planted_plots_link_names(trained, tmp_path, victim):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "run"
    shutil.copytree(trained / "run", folder)
    shutil.rmtree(folder / "plots", ignore_errors=True)
    drawn = victim.parent / "curves.png"
    drawn.write_bytes(VICTIM)
    (folder / "plots").symlink_to(victim.parent, target_is_directory=True)
    result = run("softmax-plot", str(folder), "--split", "val", "--quiet")
    # softmax-plot's way out is --out (softmax-train's, --no-plots)
    assert_one_line_error(result, 1, str(folder / "plots"), "symbolic link", "--out")
    assert drawn.read_bytes() == VICTIM
    assert sorted(p.name for p in victim.parent.iterdir()) == ["curves.png", "victim.txt"]


def test_sweep_never_keeps_its_data_cache_in_a_folder_a_planted_link_names(tmp_path, victim):
    pytest.importorskip("optuna")
    features_config(tmp_path)
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text("base: probe.yaml\ntrials: 1\nsampler: random\n"
                          "space:\n  optim.lr: {log_uniform: [0.01, 0.1]}\n")
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "cache").symlink_to(victim.parent, target_is_directory=True)
    result = run("softmax-sweep", str(sweep_file), "--out", str(folder), "--quiet", "--no-plots",
                 timeout=120)
    assert_one_line_error(result, 1, str(folder / "cache"), "symbolic link")
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]
