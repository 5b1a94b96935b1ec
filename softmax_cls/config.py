"""The one YAML config schema: typed dataclasses, validation that names key paths, overrides.

`load_config(path, overrides)` reads a file with yaml.safe_load, applies `key.path=value`
overrides (values parsed as YAML, then typed by the schema) and returns a validated Config.
Every problem raises ConfigError with a message such as `optim.lr: must be > 0, got -1`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _opt(default: Any, *, choices: tuple | None = None, low: float | None = None,
         low_open: bool = False, high: float | None = None, high_open: bool = False) -> Any:
    """A schema field with its default and the range or choices it must respect."""
    meta = {"choices": choices, "low": low, "low_open": low_open, "high": high,
            "high_open": high_open}
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = _opt("cifar10", choices=("cifar10", "cifar100", "features"))
    root: str = "data"
    format: str = _opt("binary", choices=("binary", "python"))
    labels: str = _opt("fine", choices=("fine", "coarse"))
    url: str | None = None
    archive: str | None = None
    download: bool = True
    val_size: int = _opt(5000, low=1)
    train: str | None = None
    test: str | None = None


@dataclass
class PreprocessConfig:
    center: bool = True
    scale: str = _opt("unit", choices=("none", "unit", "std"))
    bias: bool = True


@dataclass
class ModelConfig:
    init_std: float = _opt(1e-4, low=0.0)
    mirror_symmetric: bool = False


@dataclass
class LossConfig:
    reg: float = _opt(2.58e-05, low=0.0)
    reg_bias: bool = False
    clip: float = _opt(50.0, low=0.0, low_open=True)


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
    name: str = _opt("none", choices=("none", "uniform", "ema"))
    start: float = _opt(0.5, low=0.0, high=1.0)
    decay: float = _opt(0.999, low=0.0, high=1.0, high_open=True)


@dataclass
class OptimConfig:
    epochs: int = _opt(60, low=1)
    batch_size: int = _opt(128, low=1)
    lr: float = _opt(0.00637, low=0.0, low_open=True)
    momentum: float = _opt(0.9, low=0.0, high=0.999)
    nesterov: bool = True
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float | None = _opt(None, low=0.0, low_open=True)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)


@dataclass
class AugmentConfig:
    hflip: bool = True
    translate: int = _opt(0, low=0, high=8)
    padding: str = _opt("edge", choices=("edge", "zero", "reflect"))


@dataclass
class OutputConfig:
    dir: str = "runs/default"
    plots: bool | None = None


@dataclass
class Config:
    seed: int = _opt(0, low=0)
    engine: str = _opt("auto", choices=("auto", "numba", "numpy"))
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


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
        key = f"{path}.{unknown[0]}" if path else unknown[0]
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


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _check_value(key: str, value: Any, kind: type, nullable: bool, meta: Any) -> Any:
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
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    choices, low, high = meta.get("choices"), meta.get("low"), meta.get("high")
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {_show(value)}")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        raise ConfigError(f"{key}: must be {'>' if meta.get('low_open') else '>='} {low:g}, "
                          f"got {value:g}")
    if high is not None and (value >= high if meta.get("high_open") else value > high):
        raise ConfigError(f"{key}: must be {'<' if meta.get('high_open') else '<='} {high:g}, "
                          f"got {value:g}")
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `key.path=value` into (['key', 'path'], value typed by the schema).

    The value is parsed as YAML (`0.01`, `true`, `null`), except where the schema expects a
    string, which keeps the text as written (`data.root=007` stays "007").
    """
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text}: expected KEY.PATH=VALUE, e.g. optim.lr=0.01")
    keys = key.strip().split(".")
    if _schema_type(keys) is str and raw_value.strip() not in ("null", "~", ""):
        return keys, raw_value
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return keys, value


def apply_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """Return a copy of the raw mapping with each `key.path=value` override set in it."""
    raw = _deep_copy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(keys[: depth + 1])}: is not a section, cannot set "
                                  f"{'.'.join(keys)}")
            node = child
        node[keys[-1]] = value
    return raw


def _schema_type(keys: list[str]) -> Any:
    """The schema's type at a key path, or None where the path is not in the schema."""
    cls: Any = Config
    for key in keys:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if key not in hints:
            return None
        cls, _ = _split_optional(hints[key])
    return cls


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    return raw


def config_from_dict(raw: Any, overrides: typing.Iterable[str] = ()) -> Config:
    """Validate a raw mapping (as from YAML) plus overrides into a Config."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of keys at the top level, got {_show(raw)}")
    config = _build(Config, apply_overrides(raw, overrides), "")
    _check_combinations(config)
    return config


def _check_combinations(config: Config) -> None:
    """Rules that tie several keys together; each error names the key to change."""
    schedule = config.optim.schedule
    if schedule.name == "cosine" and schedule.min_lr > config.optim.lr:
        raise ConfigError(f"optim.schedule.min_lr: must be <= optim.lr ({config.optim.lr:g}) "
                          f"for the cosine schedule, got {schedule.min_lr:g}")
    data = config.data
    if data.dataset == "features":
        if data.train is None:
            raise ConfigError("data.train: data.dataset features needs the path of a training "
                              "feature file (.npz with X and y, or X.npy beside y.npy)")
        for key in ("hflip", "translate"):
            if getattr(config.augment, key):
                raise ConfigError(f"augment.{key}: augmentations move image pixels and do not "
                                  "apply to data.dataset features; set it to "
                                  f"{'false' if key == 'hflip' else '0'}")
        if config.model.mirror_symmetric:
            raise ConfigError("model.mirror_symmetric: needs images, not data.dataset features")
    else:
        for key in ("train", "test"):
            if getattr(data, key) is not None:
                raise ConfigError(f"data.{key}: only for data.dataset features (feature files), "
                                  f"not {data.dataset}")
    if config.model.mirror_symmetric and not config.preprocess.bias:
        raise ConfigError("model.mirror_symmetric: needs preprocess.bias true (the mirrored "
                          "mean image moves into the bias)")


def parse_yaml(text: str, source: str) -> Any:
    """yaml.safe_load with errors turned into one ConfigError line naming `source`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None


def load_config(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read, override and validate a YAML config file (defaults only when path is None)."""
    if path is None:
        return config_from_dict({}, overrides)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file is a directory: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return config_from_dict(parse_yaml(text, str(path)), overrides)


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def config_to_yaml(config: Config) -> str:
    """The effective config as YAML text; config_from_dict(yaml.safe_load(text)) round-trips."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
