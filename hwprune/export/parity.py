"""Parity of an exported model with PyTorch: run both on the same inputs, parity_of outputs
(and top-1 agreement and accuracy where there are labels); over the tolerance is an :class:`ExportError`."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from profilers.inputs import as_inputs
from profilers.onnx_export import feeds

TOL_REL = 1e-4          # ONNX Runtime vs PyTorch, relative to the largest |output|


DYNAMIC_BATCHES = (1, 3)


DATA_BATCH = 32         # samples per run when the batch is dynamic


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    max_rel_diff: float  # max |diff| / max |reference|
    samples: int = 0
    top1_agreement: float | None = None  # share of samples whose argmax matches PyTorch's
    accuracy_torch: float | None = None  # with labels only
    accuracy_export: float | None = None


def _first(out) -> np.ndarray:
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def parity_of(run, model: torch.nn.Module, batches, labels=None) -> Parity:
    """``run(inputs) -> array`` (an exported model) against ``model`` on each
    tuple of tensors in ``batches``; ``labels`` (one array per batch) adds accuracies."""
    model = model.eval()
    diff = scale = 0.0
    n = agree = right_t = right_e = 0
    for i, inputs in enumerate(batches):
        got = np.asarray(run(inputs), dtype=np.float32)
        with torch.no_grad():
            ref = _first(model(*inputs))
        if got.shape != ref.shape:
            raise ExportError(f"exported output shape {got.shape} differs from PyTorch's {ref.shape}")
        if ref.size:
            diff = max(diff, float(np.max(np.abs(got - ref))))
            scale = max(scale, float(np.max(np.abs(ref))))
        n += ref.shape[0] if ref.ndim else 1
        if ref.ndim == 2:
            a, b = got.argmax(1), ref.argmax(1)
            agree += int((a == b).sum())
            if labels is not None:
                right_e, right_t = right_e + int((a == labels[i]).sum()), right_t + int((b == labels[i]).sum())
    classify = bool(batches) and ref.ndim == 2
    with_labels = classify and labels is not None
    return Parity(diff, diff / scale if scale > 0 else diff, n, agree / n if classify and n else None,
                  right_t / n if with_labels else None, right_e / n if with_labels else None)


def ort_session(model_bytes: bytes):
    import onnx
    import onnxruntime as ort
    try:
        onnx.checker.check_model(onnx.load_from_string(model_bytes))
    except Exception as exc:
        raise ExportError(f"the exported ONNX fails onnx.checker: {str(exc).splitlines()[0][:200]}") from None
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def ort_runner(sess):
    return lambda inputs: sess.run(None, feeds(inputs))[0]


def enforce(p: Parity, what: str, tol_rel: float) -> Parity:
    if p.max_rel_diff > tol_rel:
        raise ExportError(f"{what} differs from PyTorch: max abs {p.max_abs_diff:.3g}, "
                          f"relative {p.max_rel_diff:.3g} > {tol_rel:g}")
    return p


def check_parity(model: torch.nn.Module, example_inputs, model_bytes: bytes, tol_rel: float = TOL_REL,
                 more_inputs=()) -> Parity:
    """Check the ONNX model and compare ONNX Runtime's output with PyTorch's on
    the example inputs (and on each of ``more_inputs``, e.g. real data); raises
    :class:`ExportError` above ``tol_rel`` of the output's magnitude."""
    sess = ort_session(model_bytes)
    batches = [as_inputs(example_inputs), *[as_inputs(x) for x in more_inputs]]
    return enforce(parity_of(ort_runner(sess), model, batches), "ONNX output", tol_rel)


def random_batches(example_inputs, batch_sizes=(None,), count: int = 2, seed: int = 0) -> list[tuple]:
    """The example inputs plus ``count`` seeded random inputs of each batch size
    (``None``: the example's)."""
    gen = torch.Generator().manual_seed(seed)
    out = [as_inputs(example_inputs)] if None in batch_sizes else []
    for b in batch_sizes:
        for _ in range(count):
            out.append(tuple(torch.randn((b or t.shape[0], *t.shape[1:]), generator=gen, dtype=t.dtype)
                             if t.is_floating_point() else t for t in as_inputs(example_inputs)))
    return out


def parity_row(runtime: str, inputs: str, p: Parity, tol_rel: float | None) -> dict:
    return {"runtime": runtime, "inputs": inputs, **asdict(p), "tolerance_rel": tol_rel}
