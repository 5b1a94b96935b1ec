"""The config schema: validation that names key paths, overrides, and the shipped configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from cli_util import assert_one_line_error, run
from conftest import separable_data

from softmax_cls.config import (
    AugmentConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    parse_yaml,
)
from softmax_cls.errors import ConfigError
from softmax_cls.math.preprocess import split_and_fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("text,needles", [
    ("optim:\n  lrr: 0.1\n", ["optim.lrr", "unknown key"]),
    ("optim:\n  epochs: ten\n", ["optim.epochs", "integer", "ten"]),
    ("optim:\n  lr: -1\n", ["optim.lr: must be > 0, got -1"]),
    ("optim: [1, 2\n", ["not valid YAML", "line"]),
    ("- just\n- a list\n", ["expected a mapping"]),
    ("data:\n  dataset: mnist\n", ["data.dataset", "cifar10, cifar100", "mnist"]),
])
def test_bad_config_through_the_console_script(tmp_path, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run("softmax-train", "--config", str(path), cwd=tmp_path)
    assert_one_line_error(result, 2, *needles)
    assert not (tmp_path / "runs").exists()


def test_missing_config_file_through_the_console_script(tmp_path):
    result = run("softmax-train", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert_one_line_error(result, 2, "config file not found", "nope.yaml")


def test_bad_override_through_the_console_script(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("seed: 1\n")
    result = run("softmax-train", "--config", str(path), "--set", "optim.momentum=2", cwd=tmp_path)
    assert_one_line_error(result, 2, "optim.momentum: must be <= 0.999, got 2")


@pytest.mark.parametrize("key,wrong", [
    (".lr", "starts with a dot"),
    ("optim.", "ends with a dot"),
    ("optim..lr", "has two dots in a row"),
    ("optim. lr", "holds whitespace"),
    ("optim.l\tr", "holds whitespace"),
])
def test_a_malformed_dotted_key_is_named_as_given(key, wrong):
    """`--set .lr=1` said `: unknown key`, naming the empty part alone."""
    with pytest.raises(ConfigError, match="^" + re.escape(f"--set {key!r}: the key {wrong}")):
        load_config(None, [f"{key}=1"])


def test_a_malformed_dotted_key_through_the_console_script(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("seed: 1\n")
    result = run("softmax-train", "--config", str(path), "--set", ".lr=1", cwd=tmp_path)
    assert_one_line_error(result, 2, "--set '.lr': the key starts with a dot", "optim.lr=0.01")
    assert list(tmp_path.iterdir()) == [path]


def test_unknown_option_is_one_line(tmp_path):
    result = run("softmax-train", "--frobnicate", cwd=tmp_path)
    assert_one_line_error(result, 2, "--frobnicate")


@pytest.mark.parametrize("override,check", [
    ("optim.lr=0.01", lambda c: c.optim.lr == 0.01),
    ("optim.epochs=7", lambda c: c.optim.epochs == 7 and isinstance(c.optim.epochs, int)),
    ("optim.lr=1", lambda c: c.optim.lr == 1.0 and isinstance(c.optim.lr, float)),
    ("optim.nesterov=true", lambda c: c.optim.nesterov is True),
    ("optim.grad_clip=null", lambda c: c.optim.grad_clip is None),
    ("optim.grad_clip=5", lambda c: c.optim.grad_clip == 5.0),
    ("data.root=007", lambda c: c.data.root == "007"),
    ("optim.schedule.name=cosine", lambda c: c.optim.schedule.name == "cosine"),
    ("optim.early_stopping.patience=null", lambda c: c.optim.early_stopping.patience is None),
    ("optim.lr=1e-3", lambda c: c.optim.lr == 0.001),
    ("model.init_std=5E-5", lambda c: c.model.init_std == 5e-5),
])
def test_overrides_are_typed_by_the_schema(override, check):
    assert check(load_config(None, [override]))


@pytest.mark.parametrize("override,message", [
    ("optim.lr", "expected KEY.PATH=VALUE"),
    ("optim.momentum=yes", "optim.momentum: must be a number"),
    ("loss.clip=0", "loss.clip: must be > 0"),
    ("loss.clip=.nan", "loss.clip: must be a finite number"),
    ("seed=1.5", "seed: must be an integer"),
    ("optim.epochs=true", "optim.epochs: must be an integer, got True"),
    ("nosuch.key=1", "nosuch: unknown key"),
    ("optim.lr.sub=1", "optim.lr: must be a number"),
    ("optim.schedule.name=cosine optim.schedule.min_lr=1",
     "optim.schedule.min_lr: must be <= optim.lr"),
    ("optim.lr=1e-3x", "optim.lr: must be a number"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, override.split())


def test_yaml_1_1_exponents_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 5e-3}\nmodel: {init_std: 1e-4}\n")
    config = load_config(path)
    assert config.optim.lr == 0.005 and config.model.init_std == 1e-4


def test_cosine_min_lr_above_lr_is_refused():
    load_config(None, ["optim.schedule.name=step", "optim.schedule.min_lr=1"])  # unused there
    with pytest.raises(ConfigError, match="min_lr"):
        load_config(None, ["optim.schedule.name=cosine", "optim.schedule.min_lr=1"])


def test_effective_config_round_trips_through_yaml():
    config = load_config(None, ["optim.lr=0.02", "augment.hflip=true"])
    assert config_from_dict(yaml.safe_load(config_to_yaml(config))) == config


def test_default_yaml_documents_every_key():
    text = (CONFIGS / "default.yaml").read_text()
    config = load_config(CONFIGS / "default.yaml")
    raw = yaml.safe_load(text)

    def keys(node, prefix=""):
        for key, value in node.items():
            yield prefix + key
            if isinstance(value, dict):
                yield from keys(value, prefix + key + ".")

    assert set(keys(raw)) == set(keys(config_to_dict(config)))
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            key_only = line.rstrip().endswith(":")
            assert key_only or "#" in line, f"undocumented: {line}"


def test_an_empty_config_is_exactly_the_default_config(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == load_config(CONFIGS / "default.yaml") == load_config(None)


def test_quick_config_lists_only_what_differs_from_the_defaults():
    raw = yaml.safe_load((CONFIGS / "quick.yaml").read_text())
    defaults = config_to_dict(load_config(None))

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, prefix + key + ".")
            else:
                yield prefix + key, value

    for key, value in leaves(raw):
        default = defaults
        for part in key.split("."):
            default = default[part]
        assert value != default, f"{key} repeats its default"


@pytest.mark.parametrize("value,rows", [(100, 100), (0.1, 60), (0.25, 150), (0.9999, 599),
                                        (1e-6, 1)])
def test_val_size_is_a_count_or_a_fraction_of_the_training_rows(value, rows):
    config = config_from_dict({"data": {"val_size": value}})
    assert config.data.val_size == value
    assert config.data.val_rows(600) == rows
    data = separable_data()
    split, _ = split_and_fit(config, data.train_images, data.train_labels)
    assert len(split.val_rows) == rows


@pytest.mark.parametrize("value", ["0", "1.0", "1.5", "-0.5", "true", "null", "abc", "[1]"])
def test_val_size_neither_a_count_nor_a_fraction_is_refused(value):
    with pytest.raises(ConfigError, match=r"^data\.val_size: must be an integer >= 1 \(a count\) "
                                          r"or a number in \(0, 1\) \(a fraction\), got "):
        load_config(None, [f"data.val_size={value}"])


def test_bad_val_size_through_the_console_script(tmp_path):
    result = run("softmax-train", "--config", str(CONFIGS / "quick.yaml"), "--set",
                 "data.download=false", "--set", "data.val_size=1.5", cwd=tmp_path)
    assert_one_line_error(result, 2, "data.val_size", "a count", "a fraction", "1.5")


def test_image_augmentations_follow_the_data_set():
    images = load_config(None).augment
    assert (images.hflip, images.translate) == (True, 1)
    features = load_config(None, ["data.dataset=features", "data.train=t.npz"]).augment
    assert (features.hflip, features.translate) == (False, 0)
    chosen = load_config(None, ["augment.hflip=false", "augment.translate=3"]).augment
    assert (chosen.hflip, chosen.translate) == (False, 3)


@pytest.mark.parametrize("override", ["augment.hflip=true", "augment.translate=2"])
def test_an_image_augmentation_asked_for_on_features_is_refused(tmp_path, override):
    result = run("softmax-train", "--config", str(CONFIGS / "probe.yaml"), "--set",
                 "data.train=t.npz", "--set", override, cwd=tmp_path)
    assert_one_line_error(result, 2, override.partition("=")[0], "data.dataset features")


def test_default_yaml_keeps_its_effective_values():
    """The values default.yaml trained with before its augment keys became null."""
    config = load_config(CONFIGS / "default.yaml")
    assert config.augment == AugmentConfig(hflip=True, translate=1, padding="edge")
    assert config.data.val_size == 5000 and type(config.data.val_size) is int
    text = config_to_yaml(config)
    assert "  hflip: true\n  translate: 1\n" in text and "  val_size: 5000\n" in text


# Each end of a range as docs/configuration.md's table of keys writes it: `[a, b]` includes
# both ends, `(a, b]` excludes a; None: accepted, else the error's text.
FOLDER = ["data.dataset=folder", "data.train=images"]
RANGE_ENDS = [
    (["optim.averaging.decay=0"], None),
    (["optim.averaging.decay=1"], "optim.averaging.decay: must be < 1, got 1"),
    (["optim.schedule.gamma=1"], None),
    (["optim.schedule.gamma=0"], "optim.schedule.gamma: must be > 0, got 0"),
    (["optim.momentum=0"], None),
    (["optim.momentum=0.999"], None),
    (["optim.averaging.start=0"], None),
    (["optim.averaging.start=1"], None),
    (["augment.translate=8"], None),
    (["augment.translate=9"], "augment.translate: must be <= 8, got 9"),
    (["model.init_std=0"], None),
    (["optim.lr=0"], "optim.lr: must be > 0, got 0"),
    ([*FOLDER, "data.test_fraction=0"], None),
    ([*FOLDER, "data.test_fraction=1"], "data.test_fraction: must be < 1, got 1"),
    # "at most optim.lr for cosine": min_lr equal to lr is allowed
    (["optim.schedule.name=cosine", "optim.lr=0.05", "optim.schedule.min_lr=0.05"], None),
    (["optim.schedule.name=cosine", "optim.lr=0.05", "optim.schedule.min_lr=0.0501"],
     "optim.schedule.min_lr: must be <= optim.lr (0.05) for the cosine schedule"),
]


@pytest.mark.parametrize(("overrides", "error"), RANGE_ENDS)
def test_each_end_of_a_documented_range_is_included_or_excluded_as_written(overrides, error):
    if error is None:
        load_config(None, overrides)
    else:
        with pytest.raises(ConfigError, match="^" + re.escape(error)):
            load_config(None, overrides)


def test_an_excluded_end_through_the_console_script(tmp_path):
    result = run("softmax-train", "--config", str(CONFIGS / "quick.yaml"), "--set",
                 "optim.averaging.decay=1", cwd=tmp_path)
    assert_one_line_error(result, 2, "optim.averaging.decay: must be < 1, got 1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("levels", "refused"), [(20, False), (21, True)])
def test_yaml_nests_at_most_20_levels(levels, refused):
    """configuration.md: at most 20 levels (a scalar inside 19 mappings is 20 levels)."""
    text = "{a: " * (levels - 1) + "1" + "}" * (levels - 1)
    if refused:
        with pytest.raises(ConfigError, match="nested more than 20 levels deep"):
            parse_yaml(text, "c.yaml")
    else:
        assert parse_yaml(text, "c.yaml") is not None
