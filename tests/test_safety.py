"""Shared folders are safe, and no input gets a traceback, tried through the console scripts.

A run folder or a data root may be writable by others, who can plant a symbolic link, a hard
link or a fifo under any name the tool writes. Each test here puts a victim file outside the
folder (or the victim's second name inside it) and checks its bytes afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_util import assert_one_line_error, run
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


def test_planted_run_files_are_replaced_never_written_through(tmp_path, victim):
    """config.yaml, history.jsonl, last.npz, best.npz and summary.json planted as links to
    the victim: --overwrite removes the links (not their targets), every file is new."""
    config = features_config(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    names = ("config.yaml", "history.jsonl", "last.npz", "best.npz", "summary.json")
    for name in names:
        (run_dir / name).symlink_to(victim)
    result = run("softmax-train", "--config", str(config), "--quiet", "--overwrite", timeout=120)
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == VICTIM
    for name in names:
        assert not (run_dir / name).is_symlink() and (run_dir / name).is_file()


def test_extraction_replaces_a_planted_data_folder_link_without_touching_its_target(
        tmp_path, victim):
    """--force on a root whose data folder is a link to the user's folder: the new copy
    replaces the link; the folder it pointed at, and the scratch folders, are left alone."""
    from softmax_cls.data.cifar import prepare_dataset

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
