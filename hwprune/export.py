"""ONNX export checked against PyTorch with ONNX Runtime, and the TensorRT hint."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from profilers.onnx_export import OPSET, feeds, to_onnx_bytes
from .report import atomic_write_bytes


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    max_rel_diff: float  # max |diff| / max |reference|


def check_parity(model: torch.nn.Module, example_inputs, model_bytes: bytes, tol_rel: float = 1e-4,
                 more_inputs=()) -> Parity:
    """Check the ONNX model and compare ONNX Runtime's output with PyTorch's on
    the example inputs (and on each of ``more_inputs``, e.g. real data); raises
    :class:`ExportError` above ``tol_rel`` of the output's magnitude."""
    import onnx
    import onnxruntime as ort
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    onnx.checker.check_model(onnx.load_from_string(model_bytes))
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    diff, scale = 0.0, 0.0
    for inputs in [example_inputs, *[(x,) if isinstance(x, torch.Tensor) else x for x in more_inputs]]:
        got = sess.run(None, feeds(inputs))[0]
        with torch.no_grad():
            ref = model.eval()(*inputs)
        ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).detach().cpu().numpy()
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape}")
        if ref.size:
            diff, scale = max(diff, float(np.max(np.abs(got - ref)))), max(scale, float(np.max(np.abs(ref))))
    p = Parity(diff, diff / scale if scale > 0 else diff)
    if p.max_rel_diff > tol_rel:
        raise ExportError(f"ONNX output differs from PyTorch: max abs {p.max_abs_diff:.3g}, "
                          f"relative {p.max_rel_diff:.3g} > {tol_rel:g}")
    return p


def export_onnx(model: torch.nn.Module, example_inputs, path, opset: int = OPSET,
                dynamic_batch: bool = False) -> Path:
    """Export to one self-contained ONNX file, checked with ONNX Runtime; returns the path."""
    data = to_onnx_bytes(model, example_inputs, opset=opset, dynamic_batch=dynamic_batch)
    check_parity(model, example_inputs, data)
    atomic_write_bytes(Path(path), data)
    return Path(path)


def trtexec_command(onnx_path, engine_path, fp16: bool = True) -> str:
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if fp16:
        cmd.append("--fp16")
    return " ".join(shlex.quote(c) for c in cmd)
