"""ONNX export checked against PyTorch with ONNX Runtime, and the TensorRT hint."""
from __future__ import annotations

import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .onnx_io import OPSET, feeds, to_onnx_bytes


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    max_rel_diff: float  # max |diff| / max |reference|


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_parity(model: torch.nn.Module, example_inputs, model_bytes: bytes, tol_rel: float = 1e-4) -> Parity:
    import onnx
    import onnxruntime as ort
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    onnx.checker.check_model(onnx.load_from_string(model_bytes))
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds(example_inputs))[0]
    with torch.no_grad():
        ref = model.eval()(*example_inputs)
    ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).detach().cpu().numpy()
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
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
