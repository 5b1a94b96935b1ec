"""Training engines: one epoch of minibatch SGD behind one contract (engines.contract).

- numpy (engines.numpy_engine): the reference and the fallback;
- numba (engines.numba_engine, the optional extra `softmax-cls[fast]`): compiled kernels;
- torch (engines.torch_engine, the optional extra `softmax-cls[torch]`): PyTorch on the CPU
  or a CUDA GPU.

`get_engine` is the one place an engine is chosen by name, and `auto_engine_name` the one
place `engine: auto` is decided.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..config import ENGINE_NAMES
from ..errors import SoftmaxClsError
from ..threads import check_numba_threads_variable, compute_threads
from .contract import Engine
from .memory import host_available_bytes, memory_budget

FAST_INSTALL = "pip install 'softmax-cls[fast]'"
# On the CPU the torch engine overtakes the numba kernel from this many classes on, on one
# thread and without image augmentation (scripts/benchmark.py, docs/development.md,
# 2026-12-05: 1024 features, batch 256, 1 thread: numba ahead up to 32 classes, level at
# 48, torch 1.09x at 64, 1.2x at 100, 2.5x at 1000; 3072 pixels at 100 classes: torch 1.15x
# plain, numba 1.27x augmented). On 2 threads of the 2-core shared machine numba led at
# every probe shape (10 to 1000 classes): each of torch's many OpenMP regions per step waits
# for a thread another process holds, and numba's thread governor moves such work to one
# thread (one exception measured: 100 classes of unaugmented pixels, torch 1.19x).
# L-BFGS is left out of that: one evaluation of the torch engine's full.py (after its CPU
# layouts were fixed, 2026-12-07) took 1.2 to 1.4 times numba's on one thread at 64 to
# 1000 classes, and slower still on two (docs/development.md, "The torch engine's CPU SGD
# step").
TORCH_CPU_FROM_CLASSES = 64


def auto_engine_name(n_classes: int | None, device: str = "auto", *, has_torch: bool,
                     has_numba: bool, has_cuda: bool, threads: int = 1,
                     augmented: bool = False, numba_copy_bytes: int = 0,
                     host_budget: int | None = None, solver: str = "sgd") -> str:
    """The engine `engine: auto` runs for a problem of n_classes classes (None: unknown) on
    `device` (auto, cpu, cuda, cuda:N) with `threads` compute threads, training with image
    augmentation or not, given what is installed and whether torch sees a GPU.
    numba_copy_bytes: the bytes of the float32 copy the numba engine would make of the
    training rows (float16 rows; 0 for rows it reads as stored); host_budget: the bytes the
    host can hold (memory.memory_budget of its available memory; None: unknown); solver:
    optim.solver, sgd or lbfgs.

    A GPU (asked for, or visible with device auto) goes to torch. numba is left out when its
    copy exceeds host_budget (torch and numpy use float16 rows as stored). On the CPU torch
    only where the benchmark measured it faster: SGD on one thread, TORCH_CPU_FROM_CLASSES
    classes or more, no augmentation; numba everywhere else (also when the class count is
    unknown, and for L-BFGS, whose evaluations numba ran faster at every measured shape),
    each when installed; numpy when neither is.
    """
    if has_torch and (device.startswith("cuda") or (device == "auto" and has_cuda)):
        return "torch"
    if numba_copy_bytes and host_budget is not None and numba_copy_bytes > host_budget:
        has_numba = False  # its float32 copy would not fit in memory
    torch_faster = (n_classes is not None and n_classes >= TORCH_CPU_FROM_CLASSES
                    and threads == 1 and not augmented and solver == "sgd")
    if has_torch and (torch_faster or not has_numba):
        return "torch"
    return "numba" if has_numba else "numpy"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_device(name: str, device: str) -> None:
    """SoftmaxClsError (one line) at once, before any data is read or folder made, when
    `device` asks for a CUDA GPU (cuda, cuda:N) that engine `name` cannot use here: a CPU
    engine, PyTorch missing, or no such GPU. torch is imported only when a GPU is asked for."""
    from .torch_engine.device import check_device_text, resolve_device

    _check_name(name)
    check_device_text(device)
    if not device.startswith("cuda"):
        return
    if name not in ("torch", "auto"):
        raise _cpu_engine_on_gpu(name, device)
    resolve_device(device)


def _check_name(name: str) -> None:
    if name not in ENGINE_NAMES:
        raise SoftmaxClsError(f"engine: must be one of {', '.join(ENGINE_NAMES)}, got {name!r}")


def _cpu_engine_on_gpu(name: str, device: str) -> SoftmaxClsError:
    return SoftmaxClsError(f"device {device}: only engine torch runs on a GPU (set engine "
                           f"torch or auto, or device cpu), got engine {name}")


def get_engine(name: str = "auto", device: str = "auto", n_classes: int | None = None,
               augmented: bool = False, rows: np.ndarray | None = None,
               solver: str = "sgd") -> Engine:
    """The engine called `name` (auto, numba, numpy or torch) on `device` (auto, cpu, cuda,
    cuda:N: where the torch engine computes; numba and numpy run on the CPU). auto picks by
    the problem's class count, the thread count (compute_threads), whether the training
    augments images and, for float16 training `rows` (N, P) given, whether the numba
    engine's float32 copy of them fits the host's memory, and the solver it is for, sgd or
    lbfgs (auto_engine_name).
    SoftmaxClsError (one line) for a name, a device or an extra that is not there."""
    from .torch_engine.device import check_device_text, cuda_available

    _check_name(name)
    check_device_text(device)
    if name == "auto":
        has_torch = _installed("torch")
        copy = rows.size * 4 if rows is not None and rows.dtype == np.float16 else 0
        available = host_available_bytes() if copy else None
        name = auto_engine_name(n_classes, device, has_torch=has_torch,
                                has_numba=_installed("numba"),
                                has_cuda=has_torch and device == "auto" and cuda_available(),
                                threads=compute_threads(), augmented=augmented,
                                numba_copy_bytes=copy,
                                host_budget=None if available is None
                                else memory_budget(available), solver=solver)
    if name != "torch" and device.startswith("cuda"):
        raise _cpu_engine_on_gpu(name, device)
    if name == "torch":
        from .torch_engine import make_engine

        return make_engine(device)
    if name == "numpy":
        from .numpy_engine import ENGINE

        return ENGINE
    check_numba_threads_variable()  # before numba loads: it would fail or warn at length
    try:
        from .numba_engine import ENGINE
    except ImportError:
        raise SoftmaxClsError(f"engine numba needs numba: {FAST_INSTALL} (or use engine "
                              "numpy)") from None
    return ENGINE
