"""The training rows on the device: resident when they fit, else streamed.

Rows that fit the memory budget (uint8 images, float32 or float16 features, as stored) are
moved to the device once and stay there; on the CPU they are the numpy arrays themselves,
shared without a copy. A CUDA copy is kept per TrainingRows object (fit() makes one per run
and passes it to every epoch) for as long as that object lives; the rows must not change
meanwhile.

Rows that do not fit (a memory-mapped file larger than the GPU) stay on the host: each
minibatch is gathered from them into a pinned host buffer and copied to the device on a side
stream, one minibatch ahead of the compute (RowStream); labels and sample weights (12 bytes a
row) are resident either way. The budget is the device's free memory less a reserve on CUDA,
unlimited on the CPU unless given (tests give a tiny one to run the streamed path there).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..contract import TrainingRows, gather_rows
from ..memory import memory_budget
from .device import out_of_memory_as_error


@dataclass(frozen=True, eq=False)
class DeviceRows:
    """rows (N, P) uint8, float32 or float16 (None when they stream from the host), labels
    (N,) int64, sample_weight (N,) float32 or None: torch tensors on one device."""

    rows: object | None
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
    with out_of_memory_as_error(device, f"moving {array.nbytes / 1e9:.2f} GB there"):
        return tensor.to(device)


def _held(data: TrainingRows, device) -> DeviceRows | None:
    held = _resident.get(id(data))
    if held is not None and held[0]() is data and held[1] == str(device):
        return held[2]
    return None


def resident_rows(data: TrainingRows, device) -> DeviceRows | None:
    """The tensors of `data` on `device` when an earlier device_rows moved its rows there,
    else None (nothing is moved)."""
    held = _held(data, device)
    return held if held is not None and held.rows is not None else None


def device_rows(data: TrainingRows, device, budget: int | None = None) -> DeviceRows:
    """The tensors of `data` on `device`, moved there on the first call for this `data`: the
    rows too when they fit `budget` bytes (fits), else rows None (they stream: RowStream)."""
    key = id(data)
    held = _held(data, device)
    if held is not None and (held.rows is not None or not fits(data, device, budget)):
        return held
    moved = DeviceRows(as_tensor(data.rows, device) if fits(data, device, budget) else None,
                       as_tensor(data.labels, device),
                       None if data.sample_weight is None
                       else as_tensor(data.sample_weight, device))
    if device.type != "cpu":
        _resident.clear()  # one data set resident at a time
        _resident[key] = (weakref.ref(data, lambda _: _resident.pop(key, None)), str(device),
                          moved)
    return moved


def fits(data: TrainingRows, device, budget: int | None = None) -> bool:
    """Whether the rows of `data` may be resident on `device`: their bytes at most `budget`;
    without one, on the CPU always (they are read in place), on CUDA when they fit
    memory.memory_budget of its free memory (less a tenth, at least RESERVE_BYTES)."""
    if budget is None:
        if device.type == "cpu":
            return True
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        budget = memory_budget(free)
    return data.rows.nbytes <= budget


def torch_dtype(dtype: np.dtype):
    """The torch dtype of a numpy dtype (uint8, float16, float32, ...)."""
    import torch

    return torch.from_numpy(np.empty(0, dtype)).dtype


class RowStream:
    """Minibatches of host rows (N, P) (a memory map is fine) on `device`, one ahead of the
    compute: each is gathered (np.take, in the plan's order) into one of two host buffers,
    pinned on CUDA, and copied from there to one of two device buffers on a side stream,
    while the device computes the step before. On the CPU the host buffer is the minibatch.
    """

    DEPTH = 2

    def __init__(self, rows: np.ndarray, batch: int, device):
        import torch

        self.rows, self.device = rows, device
        self.cuda = device.type == "cuda"
        shape, kind = (batch, rows.shape[1]), torch_dtype(rows.dtype)
        self.host = [torch.empty(shape, dtype=kind, pin_memory=self.cuda)
                     for _ in range(self.DEPTH)]
        self.on_device = (self.host if not self.cuda else
                          [torch.empty(shape, dtype=kind, device=device)
                           for _ in range(self.DEPTH)])
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        if self.cuda:  # written on the copy stream, allocated on the compute stream: freed
            for buffer in self.on_device:  # (a run that stopped) only after pending copies
                buffer.record_stream(self.copy_stream)
        self.copied: list = [None] * self.DEPTH  # CUDA events: the slot's copy is done
        self.used: list = [None] * self.DEPTH  # CUDA events: the slot's step is done

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator:
        """The rows of order[start : start + batch_size] on the device (n, P), minibatch by
        minibatch; each is valid until the step after the one it is yielded for."""
        import torch

        starts = range(0, len(order), batch_size)
        if self.cuda:  # the last step of an earlier epoch (its slot's `used` event was not
            # recorded: nothing asked for a batch after it) before this epoch's first copy
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        self._load(0, order[:batch_size])
        for k, start in enumerate(starts):
            slot = k % self.DEPTH
            n = min(batch_size, len(order) - start)
            if self.cuda:
                torch.cuda.current_stream(self.device).wait_event(self.copied[slot])
            yield self.on_device[slot][:n]
            if self.cuda:  # the step of minibatch k is queued: its buffer is free after it
                self.used[slot] = torch.cuda.Event()
                self.used[slot].record(torch.cuda.current_stream(self.device))
            if k + 1 < len(starts):
                self._load(k + 1, order[start + batch_size : start + 2 * batch_size])

    def _load(self, k: int, index: np.ndarray) -> None:
        import torch

        slot, n = k % self.DEPTH, len(index)
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # the host buffer's last copy has left it
        gather_rows(self.rows, index, self.host[slot].numpy()[:n])
        if not self.cuda:
            return
        with torch.cuda.stream(self.copy_stream):
            if self.used[slot] is not None:
                self.copy_stream.wait_event(self.used[slot])
            self.on_device[slot][:n].copy_(self.host[slot][:n], non_blocking=True)
            self.copied[slot] = torch.cuda.Event()
            self.copied[slot].record(self.copy_stream)
