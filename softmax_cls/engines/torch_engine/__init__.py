"""The torch engine: the engine contract (softmax_cls.engines.contract) with PyTorch, on the
CPU or a CUDA GPU (the optional extra `softmax-cls[torch]`).

- device: the `device` setting (auto | cpu | cuda | cuda:N) and the missing-torch error;
- rows: the training rows moved to the device once, or streamed when they do not fit;
- step: one minibatch (gather, augmentation, folded loss and gradient, update);
- epoch: the steps of an epoch, eager or captured in a CUDA graph;
- predict: scores and one minibatch's loss and gradient;
- full: the full-batch loss and gradient of the L-BFGS solver.

`make_engine(device)` is the one constructor; importing this package imports torch.
"""

from __future__ import annotations

from functools import partial

from ..contract import Engine
from .device import require_torch, resolve_device


def make_engine(device: str = "auto", cuda_graphs: bool = True,
                memory_budget: int | None = None) -> Engine:
    """The torch engine on `device` (auto, cpu, cuda or cuda:N); with cuda_graphs (the
    default) a CUDA device runs each epoch as one captured graph, else step by step.
    Training rows of more than `memory_budget` bytes stream from the host minibatch by
    minibatch, in the epochs and in the L-BFGS objective alike (default: on CUDA what fits
    in the free memory, memory.memory_budget; on the CPU no limit: the rows are read in
    place). SoftmaxClsError (one line) without torch or without the device."""
    require_torch(device)
    from .epoch import EpochRunner
    from .full import full_loss_and_grad
    from .predict import batch_loss_and_grad, predict_scores

    where = resolve_device(device)
    return Engine("torch", EpochRunner(where, cuda_graphs, memory_budget),
                  partial(predict_scores, where),
                  partial(batch_loss_and_grad, where),
                  full_loss_and_grad_function=partial(full_loss_and_grad, where,
                                                      memory_budget=memory_budget),
                  device=str(where))
