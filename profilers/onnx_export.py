"""Turn a module into ONNX bytes, in memory (the legacy TorchScript exporter:
fast, one self-contained file, no onnxscript needed). torch is imported inside
the functions, so a board that only measures ONNX does not need it."""
from __future__ import annotations

import io
import warnings

import numpy as np

from .inputs import as_inputs

OPSET = 17


def to_onnx_bytes(model, example_inputs, opset: int = OPSET, dynamic_batch: bool = False) -> bytes:
    import torch
    example_inputs = as_inputs(example_inputs)
    names = [f"input{i}" for i in range(len(example_inputs))]
    dyn = {n: {0: "batch"} for n in names} if dynamic_batch else None
    if dyn is not None:
        dyn["output"] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), example_inputs, buf, dynamo=False, opset_version=opset,
                          input_names=names, output_names=["output"], dynamic_axes=dyn,
                          do_constant_folding=True)
    return buf.getvalue()


def feeds(example_inputs) -> dict[str, np.ndarray]:
    return {f"input{i}": t.detach().cpu().numpy() for i, t in enumerate(as_inputs(example_inputs))}


class OnnxModuleMeasurer:
    """For runtimes that run ONNX: torch modules are exported and measured with
    the runtime's ``measure_onnx`` / ``measure_onnx_interleaved``."""

    def measure_module(self, model, example_inputs, protocol=None):
        kw = {} if protocol is None else {"protocol": protocol}
        return self.measure_onnx(to_onnx_bytes(model, example_inputs), feeds(example_inputs), **kw)

    def measure_modules_interleaved(self, models, example_inputs, protocol=None):
        kw = {} if protocol is None else {"protocol": protocol}
        f = feeds(example_inputs)
        return self.measure_onnx_interleaved([(to_onnx_bytes(m, example_inputs), f) for m in models], **kw)
