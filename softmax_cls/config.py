"""The one YAML config schema: typed dataclasses, validation that names key paths, overrides.

`load_config(path, overrides)` reads a file with `parse_yaml`, applies `key.path=value`
overrides (values parsed as YAML, then typed by the schema) and returns a validated Config.
Every problem raises ConfigError with a message such as `optim.lr: must be > 0, got -1`.

YAML from users (config files, --set values, the config text inside checkpoints, sweep files)
is read by `parse_yaml`: yaml.safe_load's types and syntax, but anchors and aliases are
refused (a config has no use for them, and an alias chain expands exponentially), a key
given twice in one mapping is an error naming both lines, nesting deeper than MAX_DEPTH is
one error, and a file is at most MAX_CONFIG_BYTES. Messages never quote a value whole
(`_show` summarises long strings, lists and mappings).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .fsutil import FileTooLarge, read_capped
from .text import shorten


def _opt(default: Any, *, choices: tuple | None = None, low: float | None = None,
         low_open: bool = False, high: float | None = None, high_open: bool = False,
         fraction: bool = False) -> Any:
    """A schema field with its default and the range or choices it must respect; with
    `fraction`, an integer field that also takes a fraction in (0, 1)."""
    meta = {"choices": choices, "low": low, "low_open": low_open, "high": high,
            "high_open": high_open, "fraction": fraction}
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = _opt("cifar10", choices=("cifar10", "cifar100", "features", "folder"))
    root: str = "data"
    format: str = _opt("binary", choices=("binary", "python"))
    labels: str = _opt("fine", choices=("fine", "coarse"))
    url: str | None = None
    archive: str | None = None
    download: bool = True
    val_size: int | float = _opt(5000, low=1, fraction=True)
    train: str | None = None
    test: str | None = None
    # folder only: the share of each class's images held out as the test split when data.test
    # is null (null: FOLDER_TEST_FRACTION then); 0 = no test split
    test_fraction: float | None = _opt(None, low=0.0, high=1.0, high_open=True)
    strict: bool = False  # folder only: refuse, rather than skip, files that are not images

    def val_rows(self, n_train: int) -> int:
        """How many of `n_train` training rows are held out for validation: val_size when it
        is a count; a fraction's share, rounded, kept within 1..n_train - 1 when that range
        is not empty."""
        if isinstance(self.val_size, int):
            return self.val_size
        return max(1, min(n_train - 1, round(self.val_size * n_train)))


@dataclass
class PreprocessConfig:
    center: bool = True
    scale: str = _opt("unit", choices=("none", "unit", "std"))
    bias: bool = True


FLOAT32_MAX = 3.4028234663852886e38
# The largest model.init_std whose Gaussian weights stay finite in float32: a draw past 64
# standard deviations never happens.
INIT_STD_MAX = FLOAT32_MAX / 64
MAX_SHIFT = 8  # the largest shift, in pixels, augment.translate may ask for (every engine)
ENGINE_NAMES = ("auto", "numba", "numpy", "torch")
# where the torch engine computes: auto (a CUDA GPU when torch sees one), cpu, cuda, cuda:N
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class ModelConfig:
    init_std: float = _opt(1e-4, low=0.0, high=INIT_STD_MAX)
    mirror_symmetric: bool = False


@dataclass
class LossConfig:
    reg: float = _opt(2.94e-06, low=0.0)
    reg_bias: bool = False
    # -clip is compared with float32 scores: past float32's range it overflowed to -inf
    clip: float = _opt(50.0, low=0.0, low_open=True, high=FLOAT32_MAX)


@dataclass
class ScheduleConfig:
    name: str = _opt("cosine", choices=("constant", "step", "exponential", "cosine"))
    gamma: float = _opt(0.9, low=0.0, low_open=True, high=1.0)
    step_size: int = _opt(5, low=1)
    min_lr: float = _opt(0.0, low=0.0)


@dataclass
class EarlyStoppingConfig:
    patience: int | None = _opt(None, low=1)


@dataclass
class AveragingConfig:
    name: str = _opt("uniform", choices=("none", "uniform", "ema"))
    start: float = _opt(0.5, low=0.0, high=1.0)
    decay: float = _opt(0.999, low=0.0, high=1.0, high_open=True)


SOLVERS = ("sgd", "lbfgs")


@dataclass
class OptimConfig:
    solver: str = _opt("sgd", choices=SOLVERS)
    tol: float = _opt(1e-5, low=0.0, low_open=True)
    max_iter: int = _opt(500, low=1)
    precondition: bool = True
    epochs: int = _opt(60, low=1)
    batch_size: int = _opt(128, low=1)
    lr: float = _opt(0.0297, low=0.0, low_open=True)
    momentum: float = _opt(0.9, low=0.0, high=0.999)
    nesterov: bool = True
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float | None = _opt(None, low=0.0, low_open=True)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)


@dataclass
class AugmentConfig:
    """Image augmentations. hflip and translate null (None) follow the data set: on for
    images (IMAGE_AUGMENT), off for features (FEATURE_AUGMENT); config_from_dict resolves
    them, so a built Config never holds None there."""

    hflip: bool | None = None
    translate: int | None = _opt(None, low=0, high=MAX_SHIFT)
    padding: str = _opt("edge", choices=("edge", "zero", "reflect"))

    @property
    def active(self) -> bool:
        """Whether SGD's minibatches are augmented (a flip or a shift)."""
        return bool(self.hflip or self.translate)


@dataclass
class OutputConfig:
    dir: str = "runs/default"
    plots: bool | None = None


@dataclass
class Config:
    seed: int = _opt(0, low=0)
    engine: str = _opt("auto", choices=ENGINE_NAMES)
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
# What augment's null keys become for images (data.dataset cifar10 or cifar100) and for
# features (image augmentations move pixels: they do not apply to features).
IMAGE_AUGMENT = {"hflip": True, "translate": 1}
FEATURE_AUGMENT = {"hflip": False, "translate": 0}
FOLDER_TEST_FRACTION = 0.2  # data.test_fraction of an image folder without data.test


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) of an annotation such as `float | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner[0], True
    return annotation, False


def _build(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass `cls` from a mapping, validating every key; `path` prefixes messages."""
    where = path or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(map(str, raw)) - set(fields))
    if unknown:
        key = shorten(f"{path}.{unknown[0]}" if path else unknown[0], SHOWN_CHARS)
        raise ConfigError(f"{key}: unknown key (known keys: {', '.join(fields)})")
    values = {}
    for name, spec in fields.items():
        key = f"{path}.{name}" if path else name
        if name not in raw:
            continue
        kind, nullable = _split_optional(hints[name])
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, raw[name], key)
        else:
            values[name] = _check_value(key, raw[name], kind, nullable, spec.metadata)
    return cls(**values)


SHOWN_CHARS = 60  # the most of a user's value any message quotes


def _show(value: Any) -> str:
    """A short description of a user's value for messages: never longer than ~80 characters."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key{'s' if len(value) != 1 else ''}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    return shorten(repr(value), SHOWN_CHARS)


def _number(value: float | int) -> str:
    """A number as messages show it: %g for floats, digits (cut) for any size of integer."""
    return f"{value:g}" if isinstance(value, float) else _show(value)


def _check_value(key: str, value: Any, kind: type, nullable: bool, meta: Any) -> Any:
    if meta.get("fraction"):
        return _check_count_or_fraction(key, value, meta)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{key}: must be {_TYPE_NAMES[kind]}, got null")
    if kind is float and isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value)
    is_bool = isinstance(value, bool)
    if kind is float and isinstance(value, (int, float)) and not is_bool:
        value = float(value)
    elif kind is str and isinstance(value, (int, float)) and not is_bool:
        value = str(value)
    ok = isinstance(value, kind) and (kind is bool or not is_bool)
    if not ok:
        raise ConfigError(f"{key}: must be {_TYPE_NAMES[kind]}, got {_show(value)}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {_show(value)}")
    if kind is str and "\0" in value:  # YAML's "\0": no path or name can hold one
        raise ConfigError(f"{key}: must not hold a NUL character, got {_show(value)}")
    choices, low, high = meta.get("choices"), meta.get("low"), meta.get("high")
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {_show(value)}")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        raise ConfigError(f"{key}: must be {'>' if meta.get('low_open') else '>='} {low:g}, "
                          f"got {_number(value)}")
    if high is not None and (value >= high if meta.get("high_open") else value > high):
        raise ConfigError(f"{key}: must be {'<' if meta.get('high_open') else '<='} {high:g}, "
                          f"got {_number(value)}")
    return value


def _check_count_or_fraction(key: str, value: Any, meta: Any) -> int | float:
    """An integer >= meta's low, or a fraction strictly between 0 and 1."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads 1e-1 (no dot) as a string
            value = float(value)
    if isinstance(value, float) and 0 < value < 1:
        return value
    low = meta["low"]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}: must be an integer >= {low:g} (a count) or a number in "
                          f"(0, 1) (a fraction), got {_show(value)}")
    return value


def _split_key(key: str) -> list[str]:
    """The parts of a dotted `--set` key (`optim.lr` -> ['optim', 'lr']); ConfigError naming
    the key as given when a part is empty (a leading or trailing dot, two dots in a row) or
    holds whitespace, where the schema's "unknown key" would name only the bad part."""
    keys = key.split(".")
    shown = shorten(key, SHOWN_CHARS, quote=True)
    if "" in keys:
        where = ("starts with a dot" if not keys[0] else "ends with a dot" if not keys[-1]
                 else "has two dots in a row")
        raise ConfigError(f"--set {shown}: the key {where}; write its parts joined by single "
                          "dots, e.g. optim.lr=0.01")
    if any(not part.isprintable() or any(c.isspace() for c in part) for part in keys):
        raise ConfigError(f"--set {shown}: the key holds whitespace or a control character; "
                          "write its parts joined by single dots, e.g. optim.lr=0.01")
    return keys


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `key.path=value` into (['key', 'path'], value typed by the schema).

    The value is parsed as YAML (`0.01`, `true`, `null`, `{lr: 0.1}`) with `parse_yaml`'s
    rules, except where the schema expects a string, which keeps the text as written
    (`data.root=007` stays "007"). Text that is not valid YAML stays a string, which the
    schema then refuses where it expects something else.
    """
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {shorten(text, SHOWN_CHARS)}: expected KEY.PATH=VALUE, e.g. "
                          "optim.lr=0.01")
    keys = _split_key(key.strip())
    if _schema_type(keys) is str and raw_value.strip() not in ("null", "~", ""):
        return keys, raw_value
    if not raw_value.strip():
        return keys, None
    try:
        value = _load_strict(raw_value)
    except _RefusedYaml as exc:
        raise ConfigError(f"--set {shorten(key.strip(), SHOWN_CHARS)}: {exc}") from None
    except yaml.YAMLError:
        value = raw_value
    return keys, value


def apply_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """Return a copy of the raw mapping with each `key.path=value` override set in it.

    A mapping value merges into the section it names (`optim={lr: 0.1}` sets optim.lr and
    keeps the other optim keys); null or any other non-mapping value for a section is an
    error (a section has no value of its own: set its keys).
    """
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                section = shorten(".".join(keys[: depth + 1]), SHOWN_CHARS)
                raise ConfigError(f"{section}: is not a section, cannot set "
                                  f"{shorten('.'.join(keys), SHOWN_CHARS)}")
            node = child
        dotted = shorten(".".join(keys), SHOWN_CHARS)
        if dataclasses.is_dataclass(_schema_type(keys)):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: is a section; --set its keys one by one (e.g. "
                                  f"{dotted}.KEY=VALUE) or give a mapping such as "
                                  f"{dotted}={{KEY: VALUE}}, got {_show(value)}")
            existing = node.get(keys[-1])
            node[keys[-1]] = _merge(existing if isinstance(existing, dict) else {}, value)
        else:
            node[keys[-1]] = value
    return raw


def _merge(base: dict, update: dict) -> dict:
    """`update` merged into a copy of `base`, mapping into mapping, key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _schema_type(keys: list[str]) -> Any:
    """The schema's type at a key path, or None where the path is not in the schema."""
    cls: Any = Config
    for key in keys:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if key not in hints:
            return None
        cls, _ = _split_optional(hints[key])
    return cls


def config_from_dict(raw: Any, overrides: typing.Iterable[str] = (),
                     source: str = "config") -> Config:
    """Validate a raw mapping (as from YAML) plus overrides into a Config; `source` names
    where the mapping came from (a file) when it is not one."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got "
                          f"{_show(raw)}")
    config = _build(Config, apply_overrides(raw, overrides), "")
    _check_combinations(config)
    _resolve_augment(config)
    if config.data.dataset == "folder" and config.data.test is None \
            and config.data.test_fraction is None:
        config.data.test_fraction = FOLDER_TEST_FRACTION
    return config


def _resolve_augment(config: Config) -> None:
    """Set augment's null keys from the data set: IMAGE_AUGMENT or FEATURE_AUGMENT."""
    values = FEATURE_AUGMENT if config.data.dataset == "features" else IMAGE_AUGMENT
    for key, value in values.items():
        if getattr(config.augment, key) is None:
            setattr(config.augment, key, value)


def _check_combinations(config: Config) -> None:
    """Rules that tie several keys together; each error names the key to change."""
    if not DEVICE_PATTERN.fullmatch(config.device):
        raise ConfigError(f"device: must be auto, cpu, cuda or cuda:N, got "
                          f"{shorten(config.device, 40, quote=True)}")
    if config.device.startswith("cuda") and config.engine in ("numba", "numpy"):
        raise ConfigError(f"device: {config.device} needs engine torch (or auto); engine "
                          f"{config.engine} runs on the CPU")
    schedule = config.optim.schedule
    if schedule.name == "cosine" and schedule.min_lr > config.optim.lr:
        raise ConfigError(f"optim.schedule.min_lr: must be <= optim.lr ({config.optim.lr:g}) "
                          f"for the cosine schedule, got {schedule.min_lr:g}")
    data = config.data
    if data.dataset == "features":
        if data.train is None:
            raise ConfigError("data.train: data.dataset features needs the path of a training "
                              "feature file (.npz with X and y, or X.npy beside y.npy)")
        for key in IMAGE_AUGMENT:
            if getattr(config.augment, key):
                raise ConfigError(f"augment.{key}: augmentations move image pixels and do not "
                                  "apply to data.dataset features; leave it out (null: off "
                                  f"for features) or set it to "
                                  f"{'false' if key == 'hflip' else '0'}")
        if config.model.mirror_symmetric:
            raise ConfigError("model.mirror_symmetric: needs images, not data.dataset features")
    elif data.dataset == "folder":
        if data.train is None:
            raise ConfigError("data.train: data.dataset folder needs the path of an image "
                              "folder (one sub-folder of images per class)")
        if data.labels != "fine":
            raise ConfigError("data.labels: an image folder's classes are its sub-folders; "
                              "use fine")
        if data.test is not None and data.test_fraction is not None:
            raise ConfigError("data.test_fraction: give either data.test (a test folder) or "
                              "data.test_fraction (a share held out of data.train), not both")
    else:
        if data.dataset == "cifar10" and data.labels == "coarse":
            raise ConfigError("data.labels: cifar10 has no coarse labels (only cifar100 has); "
                              "use fine")
        for key in ("train", "test"):
            if getattr(data, key) is not None:
                raise ConfigError(f"data.{key}: only for data.dataset features (feature files) "
                                  f"or folder (image folders), not {data.dataset}")
    if data.dataset != "folder":
        if data.test_fraction is not None:
            raise ConfigError(f"data.test_fraction: only for data.dataset folder, not "
                              f"{data.dataset}")
        if data.strict:
            raise ConfigError(f"data.strict: only for data.dataset folder, not {data.dataset}")
    if config.optim.solver == "lbfgs":
        _check_lbfgs(config)
    if config.model.mirror_symmetric and not config.preprocess.bias:
        raise ConfigError("model.mirror_symmetric: needs preprocess.bias true (the mirrored "
                          "mean image moves into the bias)")


def _check_lbfgs(config: Config) -> None:
    """optim.solver lbfgs minimises the objective exactly: the SGD keys (epochs, batch_size,
    lr, momentum, nesterov, schedule, averaging) and model.init_std are ignored
    (docs/lbfgs.md); keys that would change what a user expects of the result are refused."""
    optim = config.optim
    if optim.early_stopping.patience is not None:
        raise ConfigError("optim.early_stopping.patience: optim.solver lbfgs runs to the "
                          "optimum (optim.tol, optim.max_iter), it does not stop early; set "
                          "it to null")
    if optim.grad_clip is not None:
        raise ConfigError("optim.grad_clip: clips SGD steps, and optim.solver lbfgs takes "
                          "none; set it to null")
    if config.model.mirror_symmetric:
        raise ConfigError("model.mirror_symmetric: not with optim.solver lbfgs (the optimum "
                          "is not made mirror-symmetric); use augment.hflip for the "
                          "symmetric objective")


MAX_DEPTH = 20  # a config nests 4 levels; sweep files a few more
MAX_CONFIG_BYTES = 1 << 20


class _RefusedYaml(yaml.YAMLError):
    """YAML that safe_load would read but a config must not hold; str() is the message."""


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors and aliases, without duplicate keys, of bounded depth.

    Aliases are refused while composing, before any value is built, so an alias chain never
    expands; depth is checked on the way down, before the recursion that builds the value.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _RefusedYaml(f"line {event.start_mark.line + 1}: aliases "
                               f"(*{shorten(event.anchor, SHOWN_CHARS)}) are not allowed in a "
                               "config; write the value out")
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise _RefusedYaml(f"line {event.start_mark.line + 1}: anchors "
                               f"(&{shorten(event.anchor, SHOWN_CHARS)}) are not allowed in a "
                               "config; write the value out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise _RefusedYaml(f"line {event.start_mark.line + 1}: nested more than "
                                   f"{MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise _RefusedYaml(f"key {_show(key)} is given twice (lines "
                                           f"{lines[key]} and {line}); keep one")
                    lines[key] = line
                except TypeError:  # an unhashable key: safe_load's own error follows
                    continue
        return super().construct_mapping(node, deep=deep)


def _load_strict(text: str) -> Any:
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str) -> Any:
    """Parse untrusted YAML text with `StrictLoader`; any problem is one ConfigError line
    naming `source`: not valid YAML (with line and column), an anchor or alias, a duplicate
    key (both lines), nesting deeper than MAX_DEPTH, or more than MAX_CONFIG_BYTES."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters; a config is at most "
                          f"{MAX_CONFIG_BYTES} (1 MB)")
    try:
        return _load_strict(text)
    except _RefusedYaml as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = shorten(getattr(exc, "problem", None) or type(exc).__name__, SHOWN_CHARS)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    except RecursionError:  # defence in depth: MAX_DEPTH stops nesting long before this
        raise ConfigError(f"{source}: nested too deeply") from None


def read_yaml_text(path: Path, what: str = "config file") -> str:
    """The text of a YAML file a user names (a config or a sweep file), at most
    MAX_CONFIG_BYTES, checked to be a regular file first (fsutil.read_capped); every problem
    is one ConfigError naming `what` and the file."""
    try:
        return read_capped(path, MAX_CONFIG_BYTES).decode("utf-8")
    except FileTooLarge as exc:
        raise ConfigError(f"{path}: {exc.strerror}; a {what} is at most 1 MB") from None
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory: {path}") from None
    except PermissionError:
        raise ConfigError(f"cannot read {what} {path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {what} {path}: not UTF-8 text (byte "
                          f"{exc.start})") from None


def load_config(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read, override and validate a YAML config file (defaults only when path is None)."""
    if path is None:
        return config_from_dict({}, overrides)
    path = Path(path)
    return config_from_dict(parse_yaml(read_yaml_text(path), str(path)), overrides,
                            f"config {shorten(path)}")


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def config_to_yaml(config: Config) -> str:
    """The effective config as YAML text; config_from_dict(yaml.safe_load(text)) round-trips."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
