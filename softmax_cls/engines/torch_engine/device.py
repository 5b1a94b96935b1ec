"""Which torch device the engine computes on: the `device` setting (auto | cpu | cuda |
cuda:N) checked against what this machine has, and PyTorch itself, with one error line when
it is not installed."""

from __future__ import annotations

import glob
import os
import re
import sys
from contextlib import contextmanager

from ...config import DEVICE_PATTERN
from ...errors import DeviceOutOfMemory, SoftmaxClsError

TORCH_INSTALL = 'pip install "softmax-cls[torch]"'


def require_torch(device: str = "auto"):
    """The torch module, or SoftmaxClsError naming the pip command when it is missing (and
    device cpu beside engine numpy when `device` is a GPU, which engine numpy refuses)."""
    try:
        import torch
    except ImportError:
        instead = ("device cpu and engine numpy" if str(device).startswith("cuda")
                   else "engine numpy")
        raise SoftmaxClsError(f"engine torch needs PyTorch: {TORCH_INSTALL} (or use "
                              f"{instead})") from None
    return torch


def check_device_text(text: str) -> str:
    """`text` itself when it is auto, cpu, cuda or cuda:N, else SoftmaxClsError. Needs no
    torch."""
    if not isinstance(text, str) or not DEVICE_PATTERN.fullmatch(text):
        raise SoftmaxClsError(f"device: must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def gpu_driver_present() -> bool:
    """False only where there surely is no CUDA GPU: Linux without NVIDIA's driver files
    (/proc/driver/nvidia, /dev/nvidia0...) or WSL's GPU device (/dev/dxg). Cheap: lets
    `engine: auto` on a machine without a GPU skip importing torch (a second and some
    hundred MB) when it then picks numba."""
    if not sys.platform.startswith("linux"):
        return True
    return (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/dxg")
            or bool(glob.glob("/dev/nvidia[0-9]*")))


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA GPU (False without torch); torch is
    imported only where a GPU driver is present."""
    if not gpu_driver_present():
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_device(text: str = "auto"):
    """The torch.device for `text`: auto is the first CUDA GPU when one is visible, else the
    CPU; cuda and cuda:N must exist. SoftmaxClsError otherwise (one line)."""
    torch = require_torch(text)
    check_device_text(text)
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SoftmaxClsError(f"device {text}: PyTorch sees no CUDA GPU here "
                              "(torch.cuda.is_available() is false); use device cpu")
    index = int(text.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise SoftmaxClsError(f"device {text}: PyTorch sees {count} CUDA GPU(s), numbered from "
                              f"0 to {count - 1}")
    return torch.device("cuda", index)


LOWER_BATCH_SIZE = ("lower the batch size", "optim.batch_size", "N")
ON_THE_CPU = ("run on the CPU", "device", "cpu")


# PyTorch's CPU allocator out of memory: a plain RuntimeError (c10::Error, not
# torch.OutOfMemoryError), its message "[enforce fail at alloc_cpu.cpp:N] ...
# DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes. Error code 12"
CPU_ALLOCATOR_FAILED = re.compile(r"DefaultCPUAllocator: can't allocate memory: you tried to "
                                  r"allocate (\d+) bytes")


@contextmanager
def out_of_memory_as_error(device, during: str, batch_size: bool = False):
    """torch.cuda.OutOfMemoryError inside the block as DeviceOutOfMemory, one line naming what
    to lower: the batch size when `batch_size` (it sizes the work), the device (CPU) when it
    is not the CPU already. The class is named through torch.cuda, which has it from PyTorch
    1.13 on (torch.OutOfMemoryError, the same class, is newer than 2.3: under 2.2 and 2.3
    an except clause naming it turned every error in the block into an AttributeError).

    The host's memory running out in PyTorch's CPU allocator (a RuntimeError whose message
    is CPU_ALLOCATOR_FAILED's; every other RuntimeError passes unchanged) is the same line
    for the CPU, with the bytes asked for: the batch size when `batch_size`, never "run on
    the CPU"."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError:
        remedies = ((LOWER_BATCH_SIZE,) if batch_size else ()) + (
            (ON_THE_CPU,) if device.type != "cpu" else ())
        raise DeviceOutOfMemory(device, during, remedies) from None
    except RuntimeError as exc:
        asked = CPU_ALLOCATOR_FAILED.search(str(exc))
        if asked is None:
            raise
        remedies = (LOWER_BATCH_SIZE,) if batch_size else ()
        raise DeviceOutOfMemory(torch.device("cpu"), f"{during} (could not get "
                                f"{int(asked.group(1)) / 1e9:.2f} GB more)",
                                remedies) from None
