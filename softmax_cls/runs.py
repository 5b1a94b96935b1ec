"""Starting and resuming a training run: config, data and checkpoint put together."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .checkpoint import check_matches, load_checkpoint
from .config import Config, config_from_dict, config_to_dict, load_config, parse_yaml
from .datasets import CifarData, load_dataset
from .errors import ConfigError
from .train import TrainResult, train

# What a resumed run may not change: the data, the split, the features and the initial weights.
FIXED_ON_RESUME = ("seed", "data.dataset", "data.format", "data.labels", "data.val_size",
                   "preprocess", "model")


def load_training_data(config: Config, progress: bool = True) -> CifarData:
    """The data set of a config, downloaded and verified on demand."""
    data = config.data
    return load_dataset(data.dataset, data.root, data.format, url=data.url, archive=data.archive,
                        labels=data.labels, download=data.download, progress=progress)


def start_or_resume(
    config_path: str | None,
    overrides: Iterable[str] = (),
    out: str | None = None,
    resume: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train from a config file, or continue the checkpoint `resume` (its own config, unless
    a config file is given, plus overrides); the run folder is `out`, or else output.dir for a
    new run and the checkpoint's folder for a resumed one."""
    if resume is None:
        if config_path is None:
            raise ConfigError("--config FILE is required (or --resume CHECKPOINT)")
        config = load_config(config_path, overrides)
        data = load_training_data(config, progress)
        return train(config, data, out or config.output.dir, progress=progress)

    checkpoint = load_checkpoint(resume)
    if config_path is None:
        config = config_from_dict(parse_yaml(checkpoint.config_yaml, resume), overrides)
    else:
        config = load_config(config_path, overrides)
    _check_resumable(checkpoint.config, config)
    data = load_training_data(config, progress)
    check_matches(checkpoint, data, resume)
    return train(config, data, out or Path(resume).parent, resume=checkpoint.state,
                 progress=progress)


def _check_resumable(before: Config, after: Config) -> None:
    old, new = config_to_dict(before), config_to_dict(after)
    for key in FIXED_ON_RESUME:
        a, b = old, new
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            raise ConfigError(f"{key}: cannot change when resuming (checkpoint has {a!r}, "
                              f"now {b!r})")
