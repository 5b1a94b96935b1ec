"""Running out of device memory in the torch engine: one error line naming what to lower,
spelt for the entry point that ran it (softmax-train's --set, softmax-eval's --device, the
estimator's parameters). The out-of-memory errors are faked (torch.OutOfMemoryError raised
where the engine would run out), through the console scripts and the estimator."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from cli_util import assert_one_line_error, limit_data, run
from engine_reference import problem

from softmax_cls.cli import OPTION_SPELLING
from softmax_cls.engines.contract import EpochPlan, OptimizerState, StepRule
from softmax_cls.errors import DeviceOutOfMemory, SoftmaxClsError

torch = pytest.importorskip("torch")

from softmax_cls.engines.torch_engine import epoch, full, make_engine, predict  # noqa: E402
from softmax_cls.engines.torch_engine.device import (  # noqa: E402
    LOWER_BATCH_SIZE,
    ON_THE_CPU,
    out_of_memory_as_error,
)


def no_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_the_remedies_are_the_batch_size_and_the_cpu_unless_on_it():
    with pytest.raises(DeviceOutOfMemory) as gpu:
        with out_of_memory_as_error(torch.device("cuda", 0), "in a training epoch", True):
            no_memory()
    assert gpu.value.remedies == (LOWER_BATCH_SIZE, ON_THE_CPU)
    assert str(gpu.value) == ("out of memory on cuda:0 in a training epoch: lower the batch "
                              "size (optim.batch_size: N), or run on the CPU (device: cpu)")
    with pytest.raises(DeviceOutOfMemory) as cpu:
        with out_of_memory_as_error(torch.device("cpu"), "in a training epoch", True):
            no_memory()
    assert cpu.value.remedies == (LOWER_BATCH_SIZE,)  # not "run on the CPU" on the CPU
    with pytest.raises(DeviceOutOfMemory) as scoring:
        with out_of_memory_as_error(torch.device("cuda", 1), "scoring rows"):
            no_memory()
    assert str(scoring.value) == "out of memory on cuda:1 scoring rows: run on the CPU " \
                                 "(device: cpu)"
    assert isinstance(scoring.value, SoftmaxClsError)


def test_other_errors_pass_unchanged_under_a_torch_without_its_top_level_class(monkeypatch):
    """PyTorch 2.2 and 2.3 (pyproject allows 2.2) have torch.cuda.OutOfMemoryError but no
    torch.OutOfMemoryError: an except clause naming the latter made every error inside the
    block an AttributeError there, a non-finite loss included (which fit() reports as its
    own one line)."""
    from softmax_cls.math.softmax import NonFiniteError

    monkeypatch.delattr(torch, "OutOfMemoryError")
    p = problem(seed=1)
    W = p.W.copy()
    W[0, 0] = np.inf
    state = OptimizerState(W, np.zeros_like(W), W.copy())
    with pytest.raises(NonFiniteError):
        make_engine("cpu").train_epoch(p.data, EpochPlan(np.arange(23), 8, np.zeros(3)),
                                       StepRule(lr=0.1), p.pre, state)
    with pytest.raises(DeviceOutOfMemory, match="^out of memory on cuda:0 scoring rows"):
        with out_of_memory_as_error(torch.device("cuda", 0), "scoring rows"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")


def test_each_entry_point_spells_the_settings_its_own_way():
    from softmax_cls.estimator import _spell_parameter

    error = DeviceOutOfMemory("cuda:0", "in a training epoch", (LOWER_BATCH_SIZE, ON_THE_CPU))
    assert str(error.spelled(OPTION_SPELLING["train"])) == (
        "out of memory on cuda:0 in a training epoch: lower the batch size "
        "(--set optim.batch_size=N), or run on the CPU (--set device=cpu)")
    assert str(error.spelled(OPTION_SPELLING["eval"])) == (
        "out of memory on cuda:0 in a training epoch: lower the batch size, or run on the "
        "CPU (--device cpu)")  # softmax-eval has no batch size option
    assert str(error.spelled(_spell_parameter, "SoftmaxClassifier: ")) == (
        "SoftmaxClassifier: out of memory on cuda:0 in a training epoch: lower the batch "
        'size (batch_size=N), or run on the CPU (device="cpu")')


@pytest.mark.parametrize("where", ["epoch", "scores", "batch", "full"])
def test_every_engine_function_turns_it_into_one_error(monkeypatch, where):
    p = problem(seed=1)
    engine = make_engine("cpu")
    target = {"epoch": (epoch.EpochRunner, "_epoch"), "scores": (predict, "_scores"),
              "batch": (predict, "_batch"), "full": (full, "_evaluate")}[where]
    monkeypatch.setattr(*target, no_memory)
    state = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())
    calls = {
        "epoch": lambda: engine.train_epoch(p.data, EpochPlan(np.arange(23), 8, np.zeros(3)),
                                            StepRule(lr=0.1), p.pre, state),
        "scores": lambda: engine.predict_scores(p.rows, p.W, p.pre),
        "batch": lambda: engine.loss_and_grad(p.rows, p.labels, None, p.W, p.pre,
                                              StepRule(lr=0.1)),
        "full": lambda: engine.full_loss_and_grad(p.data, np.arange(23), p.W.astype(float),
                                                  p.pre, StepRule(lr=0.1)),
    }
    with pytest.raises(DeviceOutOfMemory, match="^out of memory on cpu "):
        calls[where]()


def test_a_streamed_or_captured_epoch_is_dropped_after_running_out(monkeypatch):
    p = problem(n_rows=30, n_features=6)
    engine = make_engine("cpu", memory_budget=0)
    runner = engine.epoch_function
    state = OptimizerState(p.W.copy(), np.zeros_like(p.W), p.W.copy())
    plan = EpochPlan(np.arange(30), 8, np.zeros(4))
    engine.train_epoch(p.data, plan, StepRule(lr=0.1), p.pre, state)
    assert runner.stream is not None
    monkeypatch.setattr(epoch, "eager_epoch", no_memory)
    with pytest.raises(DeviceOutOfMemory):
        engine.train_epoch(p.data, plan, StepRule(lr=0.1), p.pre, state)
    assert runner.stream is None and runner.captured is None


FAKE_GPU = """
import torch
import softmax_cls.engines.torch_engine as torch_engine
from softmax_cls.engines.torch_engine import device, epoch, predict

torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch_engine.resolve_device = lambda text="auto": torch.device("cuda", 0)

def no_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

epoch.EpochRunner._epoch = no_memory
predict._scores = no_memory
"""


def fake_gpu(tmp_path, monkeypatch):
    """Console scripts started after this call see one CUDA GPU that is always out of memory
    (a sitecustomize module on PYTHONPATH)."""
    shadow = tmp_path / "fake-gpu"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text(textwrap.dedent(FAKE_GPU))
    monkeypatch.setenv("PYTHONPATH", str(shadow))


def probe_config(tmp_path, **top) -> str:
    import yaml

    X, y = problem(n_rows=300, n_features=8, n_classes=3).rows, np.arange(300) % 3
    np.savez(tmp_path / "train.npz", X=X, y=y)
    raw = {**top, "data": {"dataset": "features", "train": str(tmp_path / "train.npz"),
                           "test": str(tmp_path / "train.npz"), "val_size": 50},
           "augment": {"hflip": False, "translate": 0},
           "optim": {"epochs": 2, "batch_size": 50, "lr": 0.1},
           "output": {"plots": False, "dir": str(tmp_path / "run")}}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_softmax_train_names_its_set_overrides(tmp_path, monkeypatch):
    config = probe_config(tmp_path, engine="torch", device="cuda")
    fake_gpu(tmp_path, monkeypatch)
    result = run("softmax-train", "--config", config, "--quiet", cwd=tmp_path)
    line = assert_one_line_error(result, 1, "out of memory on cuda:0 in a training epoch")
    assert line == ("error: out of memory on cuda:0 in a training epoch: lower the batch "
                    "size (--set optim.batch_size=N), or run on the CPU (--set device=cpu)")


def test_softmax_eval_names_its_device_option(tmp_path, monkeypatch):
    config = probe_config(tmp_path, engine="numpy")
    assert run("softmax-train", "--config", config, "--quiet", cwd=tmp_path).returncode == 0
    fake_gpu(tmp_path, monkeypatch)
    result = run("softmax-eval", str(tmp_path / "run" / "best.npz"), "--engine", "torch",
                 "--device", "cuda", "--quiet", cwd=tmp_path)
    line = assert_one_line_error(result, 1, "out of memory on cuda:0 scoring rows")
    assert line.endswith("run on the CPU (--device cpu)") and "--set" not in line


def test_the_estimator_names_its_parameters(monkeypatch):
    pytest.importorskip("sklearn")
    from softmax_cls.engines import torch_engine
    from softmax_cls.estimator import SoftmaxClassifier

    real = torch_engine.make_engine

    def on_a_fake_gpu(device="auto", **kwargs):
        engine = real("cpu", **kwargs)
        engine.epoch_function.device = torch.device("cuda", 0)  # as on a GPU, for the line
        return engine

    monkeypatch.setattr(torch_engine, "make_engine", on_a_fake_gpu)
    monkeypatch.setattr(epoch.EpochRunner, "_epoch", no_memory)
    X = problem(n_rows=60, n_features=4).rows
    y = np.arange(60) % 3
    with pytest.raises(SoftmaxClsError) as error:
        SoftmaxClassifier(engine="torch", device="cpu", epochs=2).fit(X, y)
    assert str(error.value) == (
        "SoftmaxClassifier: out of memory on cuda:0 in a training epoch: lower the batch size "
        '(batch_size=N), or run on the CPU (device="cpu")')
    assert "--set" not in str(error.value)


def test_the_hosts_allocator_running_out_is_the_cpus_line_and_other_errors_pass():
    """PyTorch's CPU allocator raises a plain RuntimeError when the host's memory runs out:
    the CPU's line, with the bytes asked for; any other RuntimeError passes unchanged."""
    with pytest.raises(DeviceOutOfMemory) as host:
        with out_of_memory_as_error(torch.device("cuda", 0), "in a training epoch", True):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator"
                               ": can't allocate memory: you tried to allocate 3192080000 "
                               "bytes. Error code 12 (Cannot allocate memory)")
    assert str(host.value) == ("out of memory on cpu in a training epoch (could not get 3.19 "
                               "GB more): lower the batch size (optim.batch_size: N)")
    with pytest.raises(RuntimeError, match="^mat1 and mat2 shapes cannot be multiplied$"):
        with out_of_memory_as_error(torch.device("cpu"), "in the L-BFGS objective"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def test_a_real_host_out_of_memory_is_one_line_naming_the_batch_size(tmp_path):
    """A real out-of-memory in PyTorch's CPU allocator (a plain RuntimeError, not
    torch.OutOfMemoryError) was a traceback. Two features and 20,000 classes: the epoch's
    (batch, classes) float32 buffers of a 40,000-row batch are 3.2 GB, twice the 1.5 GB
    RLIMIT_DATA the child runs under, where the process before them is a few hundred MB."""
    import yaml

    rows, classes = 40_000, 20_000
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", X=rng.standard_normal((rows, 2)).astype(np.float32),
             y=np.arange(rows) % classes)
    raw = {"engine": "torch", "device": "cpu",
           "data": {"dataset": "features", "train": str(tmp_path / "wide.npz"), "val_size": 100},
           "augment": {"hflip": False, "translate": 0},
           "optim": {"epochs": 1, "batch_size": rows, "lr": 0.01},
           "output": {"plots": False, "dir": str(tmp_path / "run")}}
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(raw))
    result = run("softmax-train", "--config", str(tmp_path / "wide.yaml"), "--quiet",
                 cwd=tmp_path, preexec_fn=limit_data(1500 << 20))
    line = assert_one_line_error(result, 1, "out of memory on cpu in a training epoch")
    assert line.endswith("GB more): lower the batch size (--set optim.batch_size=N)"), line
