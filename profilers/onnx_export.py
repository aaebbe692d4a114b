"""Turn a module into ONNX bytes, in memory (the legacy TorchScript exporter:
fast, one self-contained file, no onnxscript needed). torch is imported inside
the functions, so a board that only measures ONNX does not need it. Adaptive
pools the exporter refuses are replaced first (:mod:`profilers.onnx_pools`);
the exporter's dump of the graph on failure is kept off stdout."""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings

import numpy as np

from .inputs import as_inputs
from .onnx_pools import exportable

OPSET = 17


@contextlib.contextmanager
def quiet_output():
    """Swallow what C++ code writes to file descriptors 1 and 2 (the exporter
    logs its whole graph to stdout when it fails)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    with contextlib.ExitStack() as stack:
        for fd in (1, 2):
            stack.enter_context(_swallowed(fd))
        yield


@contextlib.contextmanager
def _swallowed(fd: int):
    try:
        saved = os.dup(fd)
    except OSError:   # no such descriptor: nothing to swallow
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def to_onnx_bytes(model, example_inputs, opset: int = OPSET, dynamic_batch: bool = False) -> bytes:
    import torch
    example_inputs = as_inputs(example_inputs)
    names = [f"input{i}" for i in range(len(example_inputs))]
    dyn = {n: {0: "batch"} for n in names} if dynamic_batch else None
    if dyn is not None:
        dyn["output"] = {0: "batch"}
    buf = io.BytesIO()
    model = exportable(model.eval(), example_inputs)
    with warnings.catch_warnings(), quiet_output():
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
