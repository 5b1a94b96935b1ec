"""Training engines: one epoch of minibatch SGD behind one contract (engines.contract).

- numpy (engines.numpy_engine): the reference and the fallback;
- numba (engines.numba_engine, the optional extra `softmax-cls[fast]`): compiled kernels.

`get_engine` is the one place an engine is chosen by name.
"""

from __future__ import annotations

from ..config import ENGINE_NAMES
from ..errors import SoftmaxClsError
from ..threads import check_numba_threads_variable
from .contract import Engine

FAST_INSTALL = "pip install 'softmax-cls[fast]'"


def get_engine(name: str = "auto") -> Engine:
    """The engine called `name`: numba, numpy, or auto (numba when it is installed)."""
    if name not in ENGINE_NAMES:
        raise SoftmaxClsError(f"engine: must be one of {', '.join(ENGINE_NAMES)}, got {name!r}")
    if name == "numpy":
        from .numpy_engine import ENGINE

        return ENGINE
    check_numba_threads_variable()  # before numba loads: it would fail or warn at length
    try:
        from .numba_engine import ENGINE
    except ImportError:
        if name == "auto":
            from .numpy_engine import ENGINE

            return ENGINE
        raise SoftmaxClsError(f"engine numba needs numba: {FAST_INSTALL} (or --set "
                              "engine=numpy)") from None
    return ENGINE
