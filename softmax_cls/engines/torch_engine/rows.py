"""The training rows on the device, moved there once: uint8 images and float32 features
stay resident (on the CPU they are the numpy arrays themselves, shared without a copy).

A CUDA copy is kept per TrainingRows object (fit() makes one per run and passes it to every
epoch) for as long as that object lives; the rows must not change meanwhile.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import numpy as np

from ...errors import SoftmaxClsError
from ..contract import TrainingRows


@dataclass(frozen=True, eq=False)
class DeviceRows:
    """rows (N, P) uint8 or float32, labels (N,) int64, sample_weight (N,) float32 or None:
    torch tensors on one device."""

    rows: object
    labels: object
    sample_weight: object | None


_resident: dict[int, tuple[weakref.ref, str, DeviceRows]] = {}


def as_tensor(array: np.ndarray, device):
    """`array` as a tensor on `device`: shared (no copy) on the CPU, where a read-only memory
    map is fine because the engine never writes to its rows."""
    import torch

    with warnings.catch_warnings():  # read-only arrays: torch warns that it could write
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(np.asarray(array))
    if device.type == "cpu":
        return tensor
    try:
        return tensor.to(device)
    except torch.cuda.OutOfMemoryError:
        raise SoftmaxClsError(
            f"out of memory on {device} moving {array.nbytes / 1e9:.2f} GB of rows there: use "
            "fewer rows or --set device=cpu") from None


def resident_rows(data: TrainingRows, device) -> DeviceRows | None:
    """The tensors of `data` on `device` when an earlier device_rows moved them there, else
    None (nothing is moved)."""
    held = _resident.get(id(data))
    if held is not None and held[0]() is data and held[1] == str(device):
        return held[2]
    return None


def device_rows(data: TrainingRows, device) -> DeviceRows:
    """The tensors of `data` on `device`, moved there on the first call for this `data`."""
    key = id(data)
    held = resident_rows(data, device)
    if held is not None:
        return held
    moved = DeviceRows(as_tensor(data.rows, device), as_tensor(data.labels, device),
                       None if data.sample_weight is None
                       else as_tensor(data.sample_weight, device))
    if device.type != "cpu":
        _resident.clear()  # one data set resident at a time
        _resident[key] = (weakref.ref(data, lambda _: _resident.pop(key, None)), str(device),
                          moved)
    return moved
