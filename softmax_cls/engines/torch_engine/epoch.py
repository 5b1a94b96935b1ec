"""One epoch of the contract on the device: eager steps, or (on CUDA) the epoch's steps
captured once in a CUDA graph and replayed every epoch.

A minibatch of a few hundred rows is microseconds of GPU work, so eager PyTorch would spend
the epoch launching kernels. The captured epoch reads everything that changes from epoch to
epoch (order, flips, shifts, averaging factors, learning rate, weights, statistics) from
static device tensors that are refilled before each replay, so one capture serves every
epoch of the same shape; the short last minibatch is captured with the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import DeviceOutOfMemory
from ...math.preprocess import Preprocessor
from ...math.softmax import NonFiniteError
from ..contract import EpochPlan, OptimizerState, StepRule, TrainingRows
from .device import out_of_memory_as_error
from .rows import DeviceRows, RowStream, as_tensor, device_rows, torch_dtype
from .step import Folding, StepBuffers, average_update, loss_and_grad, scaled_minibatch, sgd_update


@dataclass
class EpochTensors:
    """Everything the steps of one epoch read and write, on one device: the plan's order
    (n,) int64, flip (n,) bool or None, shift (n, 2) int64 or None, alphas (steps,) (a numpy
    array, or a tensor in a captured graph), neg_lr (-lr: a float or a 0-d tensor), the
    state W, velocity, average (C, D) float32, and the totals loss (0-d float64) and correct
    (0-d int64)."""

    order: torch.Tensor
    flip: torch.Tensor | None
    shift: torch.Tensor | None
    alphas: object
    neg_lr: object
    W: torch.Tensor
    velocity: torch.Tensor
    average: torch.Tensor
    loss: torch.Tensor
    correct: torch.Tensor


def run_steps(rows: DeviceRows, t: EpochTensors, batch_size: int, padding: str,
              averaging: bool, rule: StepRule, folding: Folding, buffers: StepBuffers,
              limit: int | None = None, batches: Iterator | None = None) -> None:
    """The SGD steps of the epoch (the first `limit` of them when given), totals included;
    the minibatches' rows gathered from rows.rows, or taken from `batches` (one (n, P) tensor
    per step, in the order's minibatches: RowStream.batches) when rows.rows is None."""
    t.loss.zero_()
    t.correct.zero_()
    host_alphas = isinstance(t.alphas, np.ndarray)
    for step, start in enumerate(range(0, len(t.order), batch_size)):
        if limit is not None and step >= limit:
            break
        stop = start + batch_size
        index = t.order[start:stop]
        n = len(index)
        raw = scaled_minibatch(rows.rows if batches is None else next(batches),
                               index if batches is None else None,
                               None if t.flip is None else t.flip[start:stop],
                               None if t.shift is None else t.shift[start:stop], padding,
                               folding.scale, buffers)
        weight = None if rows.sample_weight is None else rows.sample_weight[index]
        loss, correct = loss_and_grad(t.W, raw, rows.labels[index], weight, folding, rule,
                                      buffers)
        sgd_update(t.W, t.velocity, buffers.grad, rule, t.neg_lr)
        if averaging:
            alpha = t.alphas[step]
            if not (host_alphas and alpha == 0):
                average_update(t.average, t.W, float(alpha) if host_alphas else alpha)
        t.loss.add_(loss, alpha=n)
        t.correct.add_(correct)


def _buffers(data: TrainingRows, plan: EpochPlan, W_shape: tuple[int, int], device
             ) -> StepBuffers:
    return StepBuffers(_batch(plan), data.rows.shape[1], W_shape[0], W_shape[1],
                       torch_dtype(data.rows.dtype), torch.float32, device)


def _batch(plan: EpochPlan) -> int:
    return min(plan.batch_size, len(plan.order))


def _totals(device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.zeros((), dtype=torch.float64, device=device),
            torch.zeros((), dtype=torch.int64, device=device))


def _finish(loss: torch.Tensor, correct: torch.Tensor) -> tuple[float, int]:
    loss_sum = float(loss)
    if not math.isfinite(loss_sum):
        raise NonFiniteError(f"non-finite loss ({loss_sum}): inf or NaN in the scores")
    return loss_sum, int(correct)


def _plan_tensors(plan: EpochPlan, device):
    return (as_tensor(plan.order, device),
            None if plan.flip is None else as_tensor(plan.flip, device),
            None if plan.shift is None else as_tensor(plan.shift, device))


def eager_epoch(device, data: TrainingRows, plan: EpochPlan, rule: StepRule,
                pre: Preprocessor, state: OptimizerState, rows: DeviceRows | None = None,
                stream: RowStream | None = None) -> tuple[float, int]:
    """The epoch step by step, on `rows` (default: device_rows(data, device)); when their
    rows stream (rows.rows None), each minibatch comes from `stream`. On the CPU the state's
    arrays are updated in place through tensors that share their memory; elsewhere they are
    copied there and back."""
    rows = device_rows(data, device) if rows is None else rows
    batches = None
    if rows.rows is None:
        batches = stream.batches(plan.order, plan.batch_size)
    order, flip, shift = _plan_tensors(plan, device)
    W, velocity, average = (as_tensor(a, device) for a in (state.W, state.velocity,
                                                            state.average))
    t = EpochTensors(order, flip, shift, plan.avg_alpha, -rule.lr, W, velocity, average,
                     *_totals(device))
    run_steps(rows, t, plan.batch_size, plan.padding, bool(plan.avg_alpha.any()), rule,
              Folding.of(pre, torch.float32, device), _buffers(data, plan, W.shape, device),
              batches=batches)
    if device.type != "cpu":
        _copy_back(t, state)
    return _finish(t.loss, t.correct)


def _copy_back(t: EpochTensors, state: OptimizerState) -> None:
    for tensor, array in ((t.W, state.W), (t.velocity, state.velocity),
                          (t.average, state.average)):
        np.copyto(array, tensor.cpu().numpy())


def capture_graph(steps, device):
    """A torch.cuda.CUDAGraph of steps() on `device`, whose replay() runs its kernels again on
    the same tensors. As PyTorch's CUDA graph notes ask: first two steps, steps(limit=2), on
    a side stream (cuBLAS handles and workspaces are made there, outside the capture), then
    the capture on that stream, made on `device`. torch.cuda.graph's own capture stream is
    made once per process, on the device current at its first capture: an engine on another
    GPU later would capture on a stream its kernels do not run on, so they would run once,
    at the capture, and the graph would be empty (PyTorch only warns), every replay leaving
    the weights as they were."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        steps(limit=2)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        steps()
    return graph


class CapturedEpoch:
    """An epoch's steps captured in one CUDA graph (capture_graph), for plans and rules of
    one shape (`key`); `run` refills its static tensors (its own: copies on any device) and
    replays it."""

    def __init__(self, key: tuple, device, data: TrainingRows, rows: DeviceRows,
                 plan: EpochPlan, rule: StepRule, pre: Preprocessor, state: OptimizerState):
        self.key, self.device, self.rows, self.rule = key, device, rows, rule
        self.batch_size, self.padding = plan.batch_size, plan.padding
        self.averaging = bool(plan.avg_alpha.any())
        order, flip, shift, W, velocity, average = (
            None if a is None else torch.tensor(a, device=device)  # its own copies
            for a in (plan.order, plan.flip, plan.shift, state.W, state.velocity,
                      state.average))
        alphas = torch.zeros(plan.steps, dtype=torch.float32, device=device)
        neg_lr = torch.zeros((), dtype=torch.float32, device=device)
        self.tensors = EpochTensors(order, flip, shift, alphas, neg_lr, W, velocity, average,
                                    *_totals(device))
        self.folding = Folding.of(pre, torch.float32, device)
        self.buffers = _buffers(data, plan, W.shape, device)
        self.graph = capture_graph(self._steps, device)

    def _steps(self, limit: int | None = None) -> None:
        run_steps(self.rows, self.tensors, self.batch_size, self.padding, self.averaging,
                  self.rule, self.folding, self.buffers, limit)

    def run(self, plan: EpochPlan, rule: StepRule, pre: Preprocessor,
            state: OptimizerState) -> tuple[float, int]:
        t = self.tensors
        for tensor, array in ((t.order, plan.order), (t.flip, plan.flip),
                              (t.shift, plan.shift), (t.W, state.W),
                              (t.velocity, state.velocity), (t.average, state.average)):
            if tensor is not None:
                tensor.copy_(torch.from_numpy(array))
        t.alphas.copy_(torch.from_numpy(plan.avg_alpha))
        t.neg_lr.fill_(-rule.lr)
        self.folding.load(pre)
        self.graph.replay()
        _copy_back(t, state)
        return _finish(t.loss, t.correct)


def epoch_key(rows: DeviceRows, plan: EpochPlan, rule: StepRule, pre: Preprocessor,
              state: OptimizerState) -> tuple:
    """What a captured epoch is specific to: everything but the values that change."""
    return (id(rows), len(plan.order), plan.batch_size, plan.flip is None,
            plan.shift is None, plan.padding, bool(plan.avg_alpha.any()),
            (rule.momentum, rule.nesterov, rule.grad_clip, rule.reg, rule.penalise_last,
             rule.clip), pre.bias, pre.n_raw, state.W.shape)


class EpochRunner:
    """train_epoch on one device: eager on the CPU (and on CUDA with cuda_graphs False, or
    when the rows stream), else through a CapturedEpoch kept until a plan of another shape
    comes. Rows larger than `memory_budget` bytes (rows.fits; default: what the device has
    free) stream from the host through a RowStream, kept for plans of one batch size."""

    def __init__(self, device, cuda_graphs: bool = True, memory_budget: int | None = None):
        self.device = device
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self.memory_budget = memory_budget
        self.captured: CapturedEpoch | None = None
        self.stream: RowStream | None = None

    def __call__(self, data: TrainingRows, plan: EpochPlan, rule: StepRule, pre: Preprocessor,
                 state: OptimizerState) -> tuple[float, int]:
        try:
            with out_of_memory_as_error(self.device, "in a training epoch", batch_size=True):
                return self._epoch(data, plan, rule, pre, state)
        except DeviceOutOfMemory:
            self.captured = None  # its graph's memory
            self.stream = None
            raise

    def _epoch(self, data: TrainingRows, plan: EpochPlan, rule: StepRule, pre: Preprocessor,
               state: OptimizerState) -> tuple[float, int]:
        rows = device_rows(data, self.device, self.memory_budget)
        if rows.rows is None:
            self.captured = None
            return eager_epoch(self.device, data, plan, rule, pre, state, rows,
                               self._stream(data, plan))
        if not self.cuda_graphs:
            return eager_epoch(self.device, data, plan, rule, pre, state, rows)
        with torch.cuda.device(self.device):
            key = epoch_key(rows, plan, rule, pre, state)
            if self.captured is None or self.captured.key != key:
                self.captured = None  # its graph's memory goes before the next one is made
                self.captured = CapturedEpoch(key, self.device, data, rows, plan, rule, pre,
                                              state)
            return self.captured.run(plan, rule, pre, state)

    def _stream(self, data: TrainingRows, plan: EpochPlan) -> RowStream:
        """The RowStream of data.rows for minibatches of the plan's size (kept while they
        stay the same rows and size)."""
        s = self.stream
        if s is None or s.rows is not data.rows or s.host[0].shape[0] != _batch(plan):
            self.stream = None
            self.stream = RowStream(data.rows, _batch(plan), self.device)
        return self.stream
