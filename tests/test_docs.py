"""The documentation holds together: its links resolve, the modules and functions it names
exist, every markdown file the code cites exists, its prediction examples run, and the README
keeps the shape .ci/run relies on (the title, then a fenced block of the two commands) and its
size.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config

from softmax_cls.training.runs import train_run

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_BYTES = 10_500
# Pages whose Python examples load this checkpoint; the test runs them against a fresh one.
# (README's Predict section, which also reads image files and an export, is run by
# tests/test_predict.py.)
EXAMPLE_CHECKPOINT = "runs/default/best.npz"
PREDICTION_PAGES = (REPO / "docs" / "python.md",)
CODE_FOLDERS = ("softmax_cls", "tests", "scripts", "configs")

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
# A markdown file name as code and comments cite it: `docs/design.md`, README.md; not
# hashlib.md5 (a word character follows) and not a URL's last part (checked apart).
CITED_MD = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]*\w\.md)(?![\w-])")
PACKAGE_NAME = re.compile(r"\bsoftmax_cls(?:\.[A-Za-z_]\w*)+")
# Folders that hold what a checkout makes, not the project's own files.
NOT_THE_PROJECT = {"data", "runs", "build", "dist", "mutants"}


def markdown_pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def relative_links(text: str) -> list[str]:
    """Link and image targets of markdown `text` that are not URLs or mail addresses."""
    body = prose(text)
    targets = INLINE_LINK.findall(body) + REFERENCE_LINK.findall(body)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of markdown `text`: lower case, punctuation
    other than - and _ dropped, spaces turned into -, a repeat suffixed -1, -2, ..."""
    anchors: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", plain.lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        anchors.add(anchor)
    return anchors


def in_repository(path: Path) -> bool:
    return path.resolve() in project_file_set()


def broken_links(page: Path) -> list[str]:
    """`target (why)` for each relative link of `page` that misses its file or anchor."""
    broken = []
    text = page.read_text(encoding="utf-8")
    for target in relative_links(text):
        file_part, _, anchor = target.partition("#")
        linked = page if not file_part else page.parent / file_part
        if not in_repository(linked):
            broken.append(f"{target} (no such file in the repository)")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(
                linked.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading with that anchor)")
    return broken


def cited_markdown(text: str) -> list[str]:
    """The *.md file names and paths cited in `text`, URLs left out."""
    names = []
    for match in CITED_MD.finditer(text):
        word_start = max(text.rfind(space, 0, match.start()) for space in " \t\n") + 1
        if "://" not in text[word_start : match.end()]:
            names.append(match.group(1).removeprefix("./"))
    return names


def citation_exists(name: str, citing_file: Path, repository_files: set[str]) -> bool:
    """A bare name must be some repository file's name; a path must lead, from the
    repository's root or from the citing file's folder, to a file in the repository."""
    if "/" not in name:
        return name in repository_files
    return any(in_repository(base / name) for base in (REPO, citing_file.parent))


def project_files(folder: Path = REPO) -> list[Path]:
    """The files under `folder`, without hidden folders (.git, .venv, caches), what
    a checkout makes (data sets, runs, builds) and compiled Python."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            skipped = (path.name.startswith(".") or path.name == "__pycache__"
                       or path.name.endswith(".egg-info")
                       or (folder == REPO and path.name in NOT_THE_PROJECT))
            files += [] if skipped else project_files(path)
        elif path.is_file() and path.suffix != ".pyc":
            files.append(path)
    return files


def prediction_examples(page: Path) -> list[str]:
    """The Python blocks of `page` that load EXAMPLE_CHECKPOINT."""
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"),
                        re.MULTILINE | re.DOTALL)
    return [block for block in blocks if EXAMPLE_CHECKPOINT in block]


def resolves(dotted: str) -> bool:
    """Whether `dotted` (softmax_cls.training.fit.fit, say) names a module or an attribute
    of one."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


@functools.cache
def project_file_set() -> frozenset[Path]:
    return frozenset(path.resolve() for path in project_files())


# -- the helpers themselves


def test_relative_links_skip_urls_code_and_keep_anchors():
    text = ("See [commands](docs/commands.md#softmax-train), ![a picture](docs/curves.png),\n"
            "[Optuna](https://optuna.org), [mail](mailto:x@y.z) and `[not](a link)`.\n"
            "```python\nd[k](x)\n```\n[ref]: docs/sweeps.md\n")
    assert relative_links(text) == ["docs/commands.md#softmax-train", "docs/curves.png",
                                    "docs/sweeps.md"]


def test_heading_anchors_follow_github():
    text = "# softmax-cls\n## `softmax-train`\n## Offline, or with a copy\n## Results\n## Results\n"
    assert heading_anchors(text) == {"softmax-cls", "softmax-train", "offline-or-with-a-copy",
                                     "results", "results-1"}


def test_cited_markdown_finds_names_and_paths_only():
    text = ('"""See docs/design.md and README.md; hashlib.md5(blob) is no file.\n'
            "The spec: https://example.org/spec/README.md, (./docs/sweeps.md).\"\"\"")
    assert cited_markdown(text) == ["docs/design.md", "README.md", "docs/sweeps.md"]


# -- the documentation


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda page: page.name)
def test_relative_links_resolve(page):
    broken = broken_links(page)
    assert not broken, f"broken links in {page.name}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda page: page.name)
def test_named_modules_and_functions_exist(page):
    named = dict.fromkeys(PACKAGE_NAME.findall(page.read_text(encoding="utf-8")))
    assert [name for name in named if not resolves(name)] == []


def test_cited_markdown_files_exist():
    repository_files = {path.name for path in project_file_set()}
    missing = []
    for path in [file for folder in CODE_FOLDERS for file in project_files(REPO / folder)]:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        missing += [f"{name} (cited in {path.relative_to(REPO)})"
                    for name in dict.fromkeys(cited_markdown(text))
                    if not citation_exists(name, path, repository_files)]
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_readme_opens_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# softmax-cls"
    opening = next(i for i, line in enumerate(lines[1:], 1) if line.strip())
    assert lines[opening].startswith("```")
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].startswith("```"))
    commands = [line for line in lines[opening + 1 : closing] if line.strip()]
    assert len(commands) == 2
    assert "softmax-train" in commands[0]
    assert re.search(r"pip install (-e )?[\"']?\.\[test\][\"']?", commands[1])
    assert re.search(r"&&\s*(python -m )?pytest\b", commands[1])


@pytest.mark.parametrize("page", PREDICTION_PAGES, ids=lambda page: page.name)
def test_prediction_examples_run(page, tmp_path, small_data, monkeypatch):
    examples = prediction_examples(page)
    assert examples, f"{page.name} shows no example that loads {EXAMPLE_CHECKPOINT}"
    config = small_config(tmp_path, engine="numpy")
    train_run(config, small_data, tmp_path / Path(EXAMPLE_CHECKPOINT).parent, progress=False)
    monkeypatch.chdir(tmp_path)
    for example in examples:
        namespace: dict = {}
        exec(compile(example, f"{page.name} example", "exec"), namespace)
        labels, images, rows = namespace["labels"], namespace["images"], namespace["rows"]
        assert labels.dtype == np.int64 and labels.shape == (len(images),)
        assert rows.dtype == np.uint8 and rows.shape == (len(images), 3072)
        for channel in range(3):  # CIFAR's order: the R, G, B planes, each row after row
            for row in range(32):
                start = channel * 1024 + row * 32
                np.testing.assert_array_equal(rows[:, start : start + 32],
                                              images[:, row, :, channel])
        assert set(labels.tolist()) <= set(range(len(small_data.class_names)))
        if "probabilities" in namespace:
            probabilities = namespace["probabilities"]
            np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
            np.testing.assert_array_equal(probabilities.argmax(axis=1), labels)


def test_readme_is_short():
    assert README.stat().st_size <= README_MAX_BYTES


def test_the_python_pages_training_example_runs(tmp_path, small_data, monkeypatch, capsys):
    """docs/python.md's fit() block, as written, on the small synthetic data: its config
    file and overrides are the page's (the data's 600 rows hold out 100 for validation, not
    CIFAR's 5000, and numpy trains without a compile); it prints one line per epoch, gives
    the best epoch's (C, 3073) float32 weights, and writes no file."""
    import shutil

    import softmax_cls.config
    import softmax_cls.data.cifar

    page = (REPO / "docs" / "python.md").read_text(encoding="utf-8")
    block = next(block for block in re.findall(r"^```python\n(.*?)^```", page,
                                                re.MULTILINE | re.DOTALL)
                 if "fit(config" in block)
    load_config = softmax_cls.config.load_config
    loaded = []

    def load_small(path, overrides=()):
        loaded.append((path, list(overrides)))
        return load_config(path, [*overrides, "data.val_size=100", "engine=numpy"])

    monkeypatch.setattr(softmax_cls.config, "load_config", load_small)
    monkeypatch.setattr(softmax_cls.data.cifar, "load_config_data",
                        lambda section, progress=True, **kwargs: small_data)
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "default.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "python.md training example", "exec"), namespace)
    assert loaded == [("configs/default.yaml", ["optim.epochs=5"])]
    result, W = namespace["result"], namespace["W"]
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["1", "2", "3", "4", "5"]
    assert W.dtype == np.float32 and W.shape == (len(small_data.class_names), 3073)
    best = result.state.history[result.state.best_epoch - 1]
    assert best["val_acc"] == max(row["val_acc"] for row in result.state.history)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]
