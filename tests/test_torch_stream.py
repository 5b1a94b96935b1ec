"""The torch engine's training rows: resident when they fit the memory budget, else streamed
from the host minibatch by minibatch (rows.RowStream), with the same per-epoch order and the
same weights, bit for bit. On the CPU device a tiny budget runs the streamed path; on a CUDA
GPU (tests marked cuda) the default budget, pinned buffers and the side stream."""

from __future__ import annotations

import numpy as np
import pytest
from engine_reference import assert_close, problem, reference_epoch

from softmax_cls.engines.contract import EpochPlan, OptimizerState, StepRule, TrainingRows
from softmax_cls.engines.memory import RESERVE_BYTES, memory_budget

torch = pytest.importorskip("torch")

from softmax_cls.engines.torch_engine import make_engine  # noqa: E402
from softmax_cls.engines.torch_engine import rows as rows_module  # noqa: E402


def epochs(engine, p, plans, rule):
    """(W, velocity, average, [(loss_sum, correct), ...]) after `plans` in turn."""
    state = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())
    data = p.data
    totals = [engine.train_epoch(data, plan, rule, p.pre, state) for plan in plans]
    return state.W, state.velocity, state.average, totals


def plans_for(n, batch_sizes, augment=False, padding="edge", seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for epoch, batch in enumerate(batch_sizes):
        order = np.random.default_rng(epoch).permutation(n).astype(np.int64)
        steps = -(-n // batch)
        out.append(EpochPlan(order, batch, rng.uniform(0, 1, steps),
                             rng.random(n) < 0.5 if augment else None,
                             rng.integers(-8, 9, (n, 2)) if augment else None, padding))
    return out


@pytest.mark.parametrize("kind", ["float32 weighted", "float16", "uint8 augmented zero",
                                  "uint8 augmented reflect"])
def test_streamed_rows_give_the_resident_weights_bit_for_bit(kind):
    if kind.startswith("uint8"):
        p = problem(n_rows=53, n_features=3072, n_classes=10, rows_dtype=np.uint8, seed=4)
        plans = plans_for(53, [8, 8, 16], augment=True, padding=kind.split()[-1])
    else:
        p = problem(n_rows=61, n_features=37, n_classes=7, seed=4,
                    weighted=kind.endswith("weighted"))
        if kind == "float16":
            p.rows = p.rows.astype(np.float16)
        plans = plans_for(61, [8, 8, 7, 61, 100])  # short last minibatches, one whole
    rule = StepRule(lr=0.05, momentum=0.9, nesterov=True, grad_clip=2.0, reg=1e-3)
    resident = epochs(make_engine("cpu"), p, plans, rule)
    streamed = epochs(make_engine("cpu", memory_budget=p.rows.nbytes - 1), p, plans, rule)
    for a, b in zip(resident[:3], streamed[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert resident[3] == streamed[3]
    assert not np.array_equal(resident[0], p.W)


def test_a_streamed_epoch_against_the_float64_reference():
    p = problem(n_rows=45, n_features=3072, n_classes=10, rows_dtype=np.uint8, seed=2,
                weighted=True)
    plan = plans_for(45, [8], augment=True, padding="edge")[0]
    rule = StepRule(lr=0.05, momentum=0.9, reg=1e-3)
    start = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W * np.float32(0.5))
    expected = reference_epoch(p.data, plan, rule, p.pre, start)
    state = OptimizerState(start.W.copy(), start.velocity.copy(), start.average.copy())
    totals = make_engine("cpu", memory_budget=0).train_epoch(p.data, plan, rule, p.pre, state)
    assert_close((state.W, state.velocity, state.average, *totals), expected)


def test_rows_stream_only_past_the_budget(monkeypatch):
    p = problem(n_rows=20, n_features=5)
    data = p.data
    cpu = torch.device("cpu")
    assert rows_module.device_rows(data, cpu).rows is not None  # no budget on the CPU
    assert rows_module.device_rows(data, cpu, p.rows.nbytes).rows is not None
    streamed = rows_module.device_rows(data, cpu, p.rows.nbytes - 1)
    assert streamed.rows is None and streamed.labels is not None
    # the engine streams then: every minibatch through RowStream.batches
    calls = []
    real = rows_module.RowStream.batches

    def counted(self, order, batch_size):
        for batch in real(self, order, batch_size):
            calls.append(len(batch))
            yield batch

    monkeypatch.setattr(rows_module.RowStream, "batches", counted)
    plan = EpochPlan(np.arange(20, dtype=np.int64)[::-1].copy(), 8, np.zeros(3))
    state = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())
    make_engine("cpu", memory_budget=p.rows.nbytes - 1).train_epoch(
        data, plan, StepRule(lr=0.1), p.pre, state)
    assert calls == [8, 8, 4]
    calls.clear()
    make_engine("cpu", memory_budget=p.rows.nbytes).train_epoch(
        data, plan, StepRule(lr=0.1), p.pre, state)
    assert calls == []


def test_one_engine_streams_each_data_set_from_its_own_rows():
    """The engine keeps its RowStream from epoch to epoch; data of the same shape given
    next (another fold, a refit) must stream from its own rows."""
    first = problem(n_rows=30, n_features=6, n_classes=4, seed=1)
    second = problem(n_rows=30, n_features=6, n_classes=4, seed=2)
    plan = plans_for(30, [8])[0]
    rule = StepRule(lr=0.1, momentum=0.9)
    engine = make_engine("cpu", memory_budget=0)
    epochs(engine, first, [plan], rule)
    got = epochs(engine, second, [plan], rule)
    expected = epochs(make_engine("cpu", memory_budget=0), second, [plan], rule)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[3] == expected[3]


def test_a_stream_yields_the_rows_of_the_order_from_a_memory_map(tmp_path):
    rows = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float16,
                                     shape=(50, 6))
    rows[:] = np.arange(300).reshape(50, 6)
    rows.flush()
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    order = np.random.default_rng(0).permutation(50).astype(np.int64)
    stream = rows_module.RowStream(mapped, 16, torch.device("cpu"))
    got = [batch.numpy().copy() for batch in stream.batches(order, 16)]
    assert [len(b) for b in got] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate(got), mapped[order])
    assert got[0].dtype == np.float16  # as stored: converted in the step


def test_a_stream_from_an_unaligned_memory_map_gathers_only_its_rows(tmp_path):
    """X mapped from an .npz starts at an odd offset (unaligned): np.take copies such an
    array whole on every call, 5 MB here for each 64-row minibatch."""
    import tracemalloc

    X = np.random.default_rng(0).standard_normal((20000, 64)).astype(np.float32)
    (tmp_path / "X.bin").write_bytes(b"\0" + X.tobytes())
    mapped = np.memmap(tmp_path / "X.bin", np.float32, "r", offset=1, shape=X.shape)
    assert not mapped.flags.aligned
    order = np.random.default_rng(1).permutation(len(X)).astype(np.int64)[:640]
    stream = rows_module.RowStream(mapped, 64, torch.device("cpu"))
    tracemalloc.start()
    got = [batch.numpy().copy() for batch in stream.batches(order, 64)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(np.concatenate(got), X[order])
    assert peak < 1_000_000, peak


def test_the_default_cuda_budget_is_the_free_memory_less_a_reserve(monkeypatch):
    free = 10 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 80 << 30))
    budget = free - free // 10

    class Rows:
        nbytes = budget

    gpu = torch.device("cuda", 0)
    assert rows_module.fits(TrainingRows(Rows(), None), gpu)
    Rows.nbytes = budget + 1
    assert not rows_module.fits(TrainingRows(Rows(), None), gpu)
    free = 1 << 30  # the reserve is at least RESERVE_BYTES
    Rows.nbytes = free - RESERVE_BYTES
    assert rows_module.fits(TrainingRows(Rows(), None), gpu)
    Rows.nbytes += 1
    assert not rows_module.fits(TrainingRows(Rows(), None), gpu)


def test_the_budget_is_the_free_memory_less_a_tenth_at_least_the_reserve():
    assert memory_budget(10 << 30) == (10 << 30) - (1 << 30)
    assert memory_budget(2 << 30) == (2 << 30) - RESERVE_BYTES  # a tenth is less
    assert memory_budget(RESERVE_BYTES) == 0


def test_the_lbfgs_objective_keeps_rows_on_a_gpu_by_the_epochs_budget(monkeypatch):
    """full._resident, on a faked CUDA device with 10 GB free: rows of the training budget's
    size (memory_budget: 9 GB, not half the free memory) are moved there, a byte more are
    not; a given budget decides instead of the free memory."""
    from softmax_cls.engines.torch_engine import full

    free = 10 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 80 << 30))
    monkeypatch.setattr(full, "resident_rows", lambda data, device: None)
    moved = []
    monkeypatch.setattr(full, "device_rows", lambda data, device, budget=None:
                        moved.append(budget) or "resident")

    class Rows:
        nbytes = memory_budget(free)

    gpu, data = torch.device("cuda", 0), TrainingRows(Rows(), None)
    assert full._resident(data, gpu) == "resident"
    Rows.nbytes += 1
    assert full._resident(data, gpu) is None
    assert full._resident(data, gpu, Rows.nbytes) == "resident"
    assert full._resident(data, gpu, Rows.nbytes - 1) is None
    assert moved == [None, Rows.nbytes]


def test_the_engines_memory_budget_reaches_the_lbfgs_objective(monkeypatch):
    from softmax_cls.engines.torch_engine import full

    seen = []
    monkeypatch.setattr(full, "_resident", lambda data, device, budget=None:
                        seen.append(budget))  # None: the rows stay on the host
    p = problem(seed=2)
    for budget in (None, 123):
        make_engine("cpu", memory_budget=budget).full_loss_and_grad(
            p.data, np.arange(len(p.rows)), p.W.astype(np.float64), p.pre, StepRule(lr=1.0))
    assert seen == [None, 123]


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["uint8 augmented", "float16", "float32"])
def test_streamed_rows_on_cuda_give_the_resident_weights(kind):
    """Pinned host buffers and the side stream's copies: the same steps as resident rows."""
    if kind == "uint8 augmented":
        p = problem(n_rows=300, n_features=3072, n_classes=10, rows_dtype=np.uint8, seed=4,
                    weighted=True)
        plans = plans_for(300, [64, 64, 32], augment=True, padding="reflect")
    else:
        p = problem(n_rows=500, n_features=300, n_classes=100, seed=4)
        if kind == "float16":
            p.rows = p.rows.astype(np.float16)
        plans = plans_for(500, [64, 64, 128])
    rule = StepRule(lr=0.05, momentum=0.9, grad_clip=2.0, reg=1e-3)
    eager = epochs(make_engine("cuda", cuda_graphs=False), p, plans, rule)
    streamed = epochs(make_engine("cuda", memory_budget=0), p, plans, rule)
    for a, b in zip(eager[:3], streamed[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert eager[3] == streamed[3]
    stream = rows_module.RowStream(p.rows, 64, torch.device("cuda", 0))
    assert stream.host[0].is_pinned() and stream.on_device[0].is_cuda
