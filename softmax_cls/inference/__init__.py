"""Using a trained model: `Model` (predict on arrays, PIL images, files), the input files of
softmax-predict, and exports (npz, ONNX) for other tools."""

from .model import Model

__all__ = ["Model"]
