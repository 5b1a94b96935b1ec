"""Sweep files: the format, reading and validating one into a SweepSpec, a trial's parameters.

The sweep-file format (this docstring is its one reference; the other modules point here):

    base: default.yaml          # a config file: as given when absolute, else beside the sweep
                                # file, else in configs/ (default: the config defaults)
    set: {optim.epochs: 20}     # fixed overrides of the base (optional)
    sampler: tpe                # tpe | random | grid
    trials: 40                  # tpe and random; a grid runs each of its points once
    seed: 0                     # the sampler's seed
    pruner: median              # median | none, or {name: median, startup_trials: 5,
                                #                    warmup_epochs: 0}
    space:                      # any config key but FIXED_KEYS (the data's identity, output.*)
      optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}
      optim.epochs: {int: [5, 40]}          # also {int: [..], log: true}, {uniform: [a, b]}
      optim.batch_size: {choice: [64, 128, 256]}
      # sampler grid: every key {grid: [v1, v2, ...]}, at most MAX_GRID_POINTS points in all

A sweep file is at most MAX_CONFIG_BYTES (checked before it is read), YAML as parse_yaml reads
it. Every problem is one ConfigError line naming the file and the key; every searched value is
checked by the config schema itself.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import (
    Config,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_yaml,
    read_yaml_text,
)
from ..errors import ConfigError

SWEEP_KEYS = ("base", "set", "sampler", "trials", "seed", "pruner", "space")
SAMPLERS = ("tpe", "random", "grid")
KINDS = ("log_uniform", "uniform", "int", "choice", "grid")
PRUNER_KEYS = ("name", "startup_trials", "warmup_epochs")
DEFAULT_PRUNER = {"name": "median", "startup_trials": 5, "warmup_epochs": 0}
MAX_GRID_POINTS = 10_000  # each point is one enqueued trial in the study, one trials.csv row
# Keys a trial may not vary: they name the data every trial shares, or where files go.
FIXED_KEYS = ("data.dataset", "data.root", "data.format", "data.labels", "data.url",
              "data.archive", "data.download", "data.train", "data.test",
              "data.test_fraction", "data.strict", "output.dir", "output.plots")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file. `base_raw`: the base config mapping with `set` applied;
    `space`: {dotted key: {kind: values, ...}} in file order; `trials`: the budget (the number
    of points for a grid); `pruner`: {name, startup_trials, warmup_epochs}."""

    path: Path
    base_path: Path | None
    base_raw: dict
    fixed: dict
    sampler: str
    trials: int
    seed: int
    pruner: dict
    space: dict

    @property
    def base_config(self) -> Config:
        return config_from_dict(self.base_raw)

    def as_dict(self) -> dict:
        """The sweep as run: what sweep.yaml in the sweep folder holds."""
        return {"base": None if self.base_path is None else str(self.base_path),
                "set": self.fixed, "sampler": self.sampler,
                "trials": self.trials, "seed": self.seed, "pruner": self.pruner,
                "space": self.space}

    def identity(self) -> dict:
        """What a resumed study must share with the sweep that started it (all but the
        budget and the base file's path): the sampler, seed, pruner, space and base config."""
        return {"base_config": config_to_dict(self.base_config), "sampler": self.sampler,
                "seed": self.seed, "pruner": self.pruner, "space": self.space}


def load_sweep(path: str | os.PathLike, trials: int | None = None) -> SweepSpec:
    """Read and validate a sweep file. Every problem raises ConfigError, one line naming the
    file and the key: unknown keys, keys that are not config keys, wrong types, empty or
    inverted ranges, values the config schema rejects. `trials` (the command's --trials, not
    checked here) stands in for a tpe or random sweep file's missing trials."""
    path = Path(path)
    raw = parse_yaml(read_yaml_text(path, "sweep file"), str(path))
    where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with {', '.join(SWEEP_KEYS)}")
    unknown = [k for k in raw if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key (known keys: "
                          f"{', '.join(SWEEP_KEYS)})")

    base_path = _resolve_base(path, raw.get("base"), where)
    base_raw = _base_mapping(base_path)
    fixed = raw.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: set: expected a mapping of config keys to values")
    for key, value in fixed.items():
        _leaf_type(str(key), f"{where}: set")
        base_raw = set_dotted(base_raw, str(key), value)
    try:
        config_from_dict(base_raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: base and set: {exc}") from None

    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError(f"{where}: sampler: must be one of {', '.join(SAMPLERS)}, got "
                          f"{sampler!r}")
    seed = _integer(raw.get("seed", 0), f"{where}: seed", low=0)
    pruner = _pruner(raw.get("pruner", "median"), f"{where}: pruner")
    space = _space(raw.get("space"), base_raw, fixed, sampler, where)
    if sampler == "grid":
        if "trials" in raw:
            raise ConfigError(f"{where}: trials: a grid sweep runs each of its points once; "
                              "remove trials")
        trials = math.prod(len(spec["grid"]) for spec in space.values())
    else:
        if "trials" in raw:
            trials = _integer(raw["trials"], f"{where}: trials", low=1)
        elif trials is None:
            raise ConfigError(f"{where}: trials: required for sampler {sampler} (the number "
                              "of trials to run), or --trials N")
    return SweepSpec(path=path, base_path=base_path, base_raw=base_raw,
                     fixed={str(k): v for k, v in fixed.items()}, sampler=sampler,
                     trials=trials, seed=seed, pruner=pruner, space=space)


def _resolve_base(sweep_path: Path, base: Any, where: str) -> Path | None:
    """The base config file: as given when absolute, else beside the sweep file, else in
    configs/ (relative to the working folder). None: the defaults."""
    if base is None:
        return None
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{where}: base: expected the path of a config file, got {base!r}")
    candidates = [Path(base)] if Path(base).is_absolute() else [
        sweep_path.parent / base, Path("configs") / base]
    for candidate in candidates:
        if candidate.exists():  # a pipe or a folder: read_yaml_text says so, opening nothing
            return candidate.resolve()
    raise ConfigError(f"{where}: base: config file not found: {base} (looked in "
                      f"{', '.join(str(c.parent) for c in candidates)})")


def _base_mapping(base_path: Path | None) -> dict:
    if base_path is None:
        return {}
    load_config(base_path)  # validates, with the config's own messages
    raw = parse_yaml(read_yaml_text(base_path), str(base_path))
    return raw or {}


def set_dotted(raw: dict, key: str, value: Any) -> dict:
    """A copy of the raw config mapping with the dotted `key` set to `value`."""
    raw = copy.deepcopy(raw)
    *sections, name = key.split(".")
    node = raw
    for section in sections:
        child = node.get(section)
        if not isinstance(child, dict):
            child = node[section] = {}
        node = child
    node[name] = value
    return raw


def _leaf_type(key: str, where: str) -> type:
    """The type of a config leaf key (int for `int | None`); ConfigError for a section or an
    unknown key."""
    import types
    import typing

    cls: Any = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            prefix = ".".join(parts[:depth]) or "config"
            known = ", ".join(hints) if hints else "none"
            raise ConfigError(f"{where}: {key}: not a config key ({prefix} has: {known})")
        cls = hints[part]
        if isinstance(cls, types.UnionType) or typing.get_origin(cls) is typing.Union:
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
    if dataclasses.is_dataclass(cls):
        raise ConfigError(f"{where}: {key}: a section, not a config key; name one of its keys")
    return cls


def _integer(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if value < low:
        raise ConfigError(f"{where}: must be >= {low}, got {value}")
    return value


def _pruner(raw: Any, where: str) -> dict:
    settings = dict(DEFAULT_PRUNER)
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be median, none or a mapping with "
                          f"{', '.join(PRUNER_KEYS)}")
    unknown = [k for k in raw if k not in PRUNER_KEYS]
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key (known keys: "
                          f"{', '.join(PRUNER_KEYS)})")
    settings.update(raw)
    if settings["name"] not in ("median", "none"):
        raise ConfigError(f"{where}: name: must be median or none, got {settings['name']!r}")
    settings["startup_trials"] = _integer(settings["startup_trials"],
                                          f"{where}: startup_trials", 0)
    settings["warmup_epochs"] = _integer(settings["warmup_epochs"], f"{where}: warmup_epochs", 0)
    return settings


def _number(value: Any) -> float | None:
    """A YAML number (also 1e-4, which YAML 1.1 reads as a string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return None


def _space(raw: Any, base_raw: dict, fixed: dict, sampler: str, where: str) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: space: expected a non-empty mapping of config keys to "
                          f"ranges, e.g. optim.lr: {{log_uniform: [1.0e-4, 1.0e-1]}}")
    if sampler == "grid":
        _check_grid_size([len(spec["grid"]) for spec in raw.values()
                          if isinstance(spec, dict) and isinstance(spec.get("grid"), list)],
                         where)
    space = {}
    for key, spec in raw.items():
        key = str(key)
        at = f"{where}: space: {key}"
        kind = _leaf_type(key, f"{where}: space")
        if key in FIXED_KEYS:
            raise ConfigError(f"{at}: cannot vary between trials (it names the shared data "
                              "or the output); set it in the base config or under set:")
        if key in fixed:
            raise ConfigError(f"{at}: both searched and fixed under set:")
        if not isinstance(spec, dict):
            raise ConfigError(f"{at}: expected a mapping such as {{choice: [a, b]}} (one of "
                              f"{', '.join(KINDS)})")
        kinds = [k for k in spec if k in KINDS]
        extra = [k for k in spec if k not in KINDS and k != "log"]
        if len(kinds) != 1 or extra:
            raise ConfigError(f"{at}: expected exactly one of {', '.join(KINDS)} (plus log: "
                              f"true for uniform or int), got {', '.join(map(str, spec))}")
        how = kinds[0]
        if (sampler == "grid") != (how == "grid"):
            raise ConfigError(f"{at}: {'sampler grid needs {grid: [...]} for every key' if sampler == 'grid' else 'grid values need sampler: grid'}")  # noqa: E501
        values = spec[how]
        if how in ("choice", "grid"):
            space[key] = {how: _listed(values, key, base_raw, at, how)}
            if "log" in spec:
                raise ConfigError(f"{at}: log: only for uniform and int ranges")
            continue
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{at}: log: must be true or false, got {log!r}")
        if how == "log_uniform":
            log = True
        if how in ("uniform", "log_uniform") and kind is not float:
            raise ConfigError(f"{at}: {how} needs a number key, {key} takes "
                              f"{kind.__name__} values; use int or choice")
        if how == "int" and kind is not int:
            raise ConfigError(f"{at}: int needs an integer key, {key} takes "
                              f"{kind.__name__} values; use uniform or choice")
        low, high = _range(values, at, how)
        if log and low <= 0:
            raise ConfigError(f"{at}: a log range needs low > 0, got [{low:g}, {high:g}]")
        for end in (low, high):
            _check_value(key, end, base_raw, at)
        space[key] = {how: [low, high]} if how == "log_uniform" or not log else {
            how: [low, high], "log": True}
    return space


def _check_grid_size(sizes: list[int], where: str) -> None:
    """ConfigError when a grid whose keys have these numbers of values exceeds MAX_GRID_POINTS:
    checked before any value is validated or any point enumerated."""
    points = math.prod(sizes)
    if points > MAX_GRID_POINTS:
        raise ConfigError(f"{where}: space: a grid of {points} points ("
                          f"{' x '.join(map(str, sizes))} values); at most "
                          f"{MAX_GRID_POINTS}: search a space this large with sampler tpe or "
                          "random")


def _range(values: Any, at: str, how: str) -> tuple[float, float]:
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"{at}: {how}: expected [low, high], got {values!r}")
    ends = [_number(v) for v in values]
    if any(e is None for e in ends):
        raise ConfigError(f"{at}: {how}: expected two numbers, got {values!r}")
    if how == "int":
        if any(isinstance(v, float) or isinstance(v, str) for v in values):
            raise ConfigError(f"{at}: int: expected two integers, got {values!r}")
    else:
        ends = [float(e) for e in ends]
    if not all(math.isfinite(e) for e in ends):
        raise ConfigError(f"{at}: {how}: expected finite numbers, got {values!r}")
    low, high = ends
    if low >= high:
        problem = "empty" if low == high else "inverted"
        raise ConfigError(f"{at}: {how}: {problem} range [{low:g}, {high:g}]: low must be "
                          "below high")
    return low, high


def _listed(values: Any, key: str, base_raw: dict, at: str, how: str) -> list:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{at}: {how}: expected a non-empty list of values, got {values!r}")
    checked = []
    for value in values:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{at}: {how}: values must be plain values, got {value!r}")
        checked.append(_check_value(key, value, base_raw, at))
    if len(set(map(repr, checked))) != len(checked):
        raise ConfigError(f"{at}: {how}: duplicate values in {values!r}")
    return checked


def _check_value(key: str, value: Any, base_raw: dict, at: str) -> Any:
    """The value as the config schema types it (1e-4 as a float); ConfigError naming the
    sweep file and key when the schema rejects it."""
    try:
        config = config_from_dict(set_dotted(base_raw, key, value))
    except ConfigError as exc:
        raise ConfigError(f"{at}: {exc}") from None
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def grid_points(spec: SweepSpec) -> Iterator[dict[str, Any]]:
    """Every point {dotted key: value} of a grid sweep, the last key varying fastest, one at a
    time (at most MAX_GRID_POINTS)."""
    keys = list(spec.space)
    for values in itertools.product(*(spec.space[k]["grid"] for k in keys)):
        yield dict(zip(keys, values, strict=True))


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's parameters {dotted key: value}, one optuna suggestion per searched key
    (an enqueued trial gets its fixed values back)."""
    params = {}
    for key, s in spec.space.items():
        if "log_uniform" in s or "uniform" in s:
            low, high = s.get("log_uniform", s.get("uniform"))
            params[key] = trial.suggest_float(key, low, high,
                                              log="log_uniform" in s or s.get("log", False))
        elif "int" in s:
            low, high = s["int"]
            params[key] = trial.suggest_int(key, low, high, log=s.get("log", False))
        else:
            params[key] = trial.suggest_categorical(key, s.get("choice", s.get("grid")))
    return params


def trial_raw_config(spec: SweepSpec, params: dict) -> dict:
    """The complete raw config of a trial: the base, `set`, then the trial's parameters."""
    raw = spec.base_raw
    for key, value in params.items():
        raw = set_dotted(raw, key, value)
    return raw


