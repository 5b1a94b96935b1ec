"""Exports of a checkpoint for other tools, the preprocessing folded into the weights.

npz: W_raw (C, P + 1) float64 with scores = [u, 1] @ W_raw.T for raw inputs u (P,) as
float (an image model's u: the 3072 pixel values in CIFAR's order, red plane, green, blue,
each 32 x 32 row-major); class_names (C,) str; input_layout (str); source and
softmax_cls_version (str). No pickle is needed to read it.

ONNX (opset 17, built with onnx.helper): an image model takes `pixels` uint8
(N, 32, 32, 3), height x width x RGB (NHWC), and computes Cast to float32, Transpose to
(N, 3, 32, 32), Reshape to (N, 3072), MatMul by W_raw[:, :P].T, Add W_raw[:, P], Softmax:
the output `probabilities` (N, C) float32. A feature model takes `features` float32 (N, P).
The ONNX weights are folded in float32 exactly as softmax-eval folds them. Its metadata holds
the class names one per line, so a class name that is not printable text is refused.

Files are written atomically (fsutil.atomic_write: a temporary file renamed over OUT, so a
symbolic link at OUT is replaced, never written through); an existing OUT is refused unless
`overwrite`, and one that is not a regular file (a device, a fifo, a socket) always, as is an
OUT that ends in / (a folder's name). OUT's missing parent folders are made, and removed again
when the export fails (those that were there stay, empty or not).
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.datasets import IMAGE_SHAPE
from ..errors import InputError, SoftmaxClsError
from ..fsutil import atomic_write, missing_folders, removed_on_error
from ..text import shorten
from .model import Model

FORMATS = ("onnx", "npz")
ONNX_INSTALL = "pip install 'softmax-cls[onnx]'"
ONNX_OPSET = 17
IMAGE_LAYOUT = ("pixels: uint8 (N, 32, 32, 3), height x width x RGB (NHWC); u is each image's "
                "3072 values in CIFAR's order (red plane, green, blue, each 32 x 32 row-major)")


def require_onnx():
    """The onnx module, or one error line naming the pip command."""
    try:
        import onnx
    except ImportError:
        raise SoftmaxClsError(f"exporting to ONNX needs onnx: {ONNX_INSTALL}") from None
    return onnx


def folded_weights(model: Model, dtype=np.float64) -> np.ndarray:
    """W_raw (C, P + 1) of `dtype`: scores = [u, 1] @ W_raw.T on raw inputs u (P,)
    (Preprocessor.fold of the checkpoint's W)."""
    checkpoint = model.checkpoint
    return checkpoint.preprocessor.fold(checkpoint.W.astype(dtype))


def input_layout(model: Model) -> str:
    if model.is_image_model:
        return IMAGE_LAYOUT
    return f"features: float32 (N, {model.n_inputs}), the feature rows u as trained on"


def npz_bytes(model: Model) -> bytes:
    """The npz export (module docstring) as bytes."""
    buffer = io.BytesIO()
    np.savez(buffer, W_raw=folded_weights(model), class_names=np.array(model.class_names),
             input_layout=np.array(input_layout(model)),
             source=np.array(str(model.checkpoint.path)),
             softmax_cls_version=np.array(__version__))
    return buffer.getvalue()


def onnx_model(model: Model):
    """The ONNX ModelProto of the module docstring, checked by onnx.checker."""
    onnx = require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    for name in model.class_names:  # the metadata lists them one per line, in UTF-8
        if not name.isprintable():
            raise InputError(f"class name {shorten(name, 60, quote=True)} is not printable text "
                             "(a newline, a control character or bytes that are not UTF-8): "
                             "the ONNX metadata lists class names one per line; --format npz "
                             "keeps them as they are")

    W_raw = model.checkpoint.preprocessor.fold(model.checkpoint.W).astype(np.float32)
    P = model.n_inputs
    C = len(model.class_names)
    initializers = [numpy_helper.from_array(np.ascontiguousarray(W_raw[:, :P].T), "weights"),
                    numpy_helper.from_array(np.ascontiguousarray(W_raw[:, P]), "bias")]
    nodes = []
    if model.is_image_model:
        height, width = IMAGE_SHAPE[1:]
        graph_input = helper.make_tensor_value_info("pixels", TensorProto.UINT8,
                                                    ["N", height, width, IMAGE_SHAPE[0]])
        initializers.append(numpy_helper.from_array(np.array([-1, P], np.int64), "row_shape"))
        nodes += [
            helper.make_node("Cast", ["pixels"], ["pixels_float"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["pixels_float"], ["planes"], perm=[0, 3, 1, 2]),
            helper.make_node("Reshape", ["planes", "row_shape"], ["rows"]),
        ]
        rows = "rows"
    else:
        graph_input = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", P])
        rows = "features"
    nodes += [
        helper.make_node("MatMul", [rows, "weights"], ["weighted"]),
        helper.make_node("Add", ["weighted", "bias"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probabilities"], axis=-1),
    ]
    output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", C])
    graph = helper.make_graph(nodes, "softmax_cls", [graph_input], [output], initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="softmax-cls", producer_version=__version__)
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime >= 1.14
    helper.set_model_props(proto, {"class_names": "\n".join(model.class_names),
                                   "input_layout": input_layout(model)})
    onnx.checker.check_model(proto)
    return proto


def export(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike,
           overwrite: bool = False) -> Path:
    """Write the `fmt` export of the checkpoint to `out`; the path written."""
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got "
                         f"{shorten(fmt, 40, quote=True)}")
    if os.fspath(out).endswith(("/", os.sep)):  # Path() would drop the slash: a file "exports"
        raise InputError(f"{shorten(os.fspath(out))} ends in /, a folder; name the file to "
                         "write")
    out = Path(out)
    other = next(name for name in FORMATS if name != fmt)
    if out.suffix.lower() == f".{other}":  # an npz named .onnx: onnxruntime fails on it later
        raise InputError(f"{shorten(out)} names an {other} file, and --format {fmt} writes "
                         f"{fmt}: name it {shorten(out.with_suffix('.' + fmt).name, 60)}, or "
                         f"pass --format {other}")
    if fmt == "onnx":
        require_onnx()  # before the checkpoint is read
    if os.path.lexists(out):
        if out.is_dir() and not out.is_symlink():
            raise InputError(f"{shorten(out)} is a folder; name the file to write")
        if not (out.is_symlink() or stat.S_ISREG(os.lstat(out).st_mode)):  # /dev/null, a fifo
            raise InputError(f"{shorten(out)} is not a regular file (a device, a fifo or a "
                             "socket), which an export never replaces; name a file to write")
        if os.path.exists(out) and os.path.exists(checkpoint) and os.path.samefile(out,
                                                                                 checkpoint):
            raise InputError(f"{shorten(out)} is the checkpoint itself; name another file")
        if not overwrite:
            raise InputError(f"{shorten(out)} exists; pass --overwrite to replace it")
    model = Model.load(checkpoint)
    blob = npz_bytes(model) if fmt == "npz" else onnx_model(model).SerializeToString()
    with removed_on_error(missing_folders(out.parent)), atomic_write(out) as handle:
        handle.write(blob)  # atomic_write makes OUT's missing folders; a failure removes them
    return out
