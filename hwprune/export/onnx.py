"""Deployment export: one self-contained ONNX file checked against PyTorch with
ONNX Runtime (random and real inputs, dynamic batch), its measured latency, a
report next to it; TensorRT engines built from that ONNX (see ``trt_export``).

Outputs are written atomically (:func:`hwprune.export.outdir.atomic_files`): an
interrupted export leaves the old files or the new ones. ``FILE.report.json``
holds every number the CLI prints.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hwprune.errors import UserError
from hwprune.export.data import InputData, batches_of, load_data
from hwprune.export.outdir import atomic_files, check_outputs
from hwprune.report import atomic_write_bytes, format_table
from profilers.onnx_export import OPSET, feeds, to_onnx_bytes

log = logging.getLogger("hwprune")

TOL_REL = 1e-4          # ONNX Runtime vs PyTorch, relative to the largest |output|
DYNAMIC_BATCHES = (1, 3)
MAX_ONNX_BYTES = 2 ** 31 - 1  # protobuf's limit for one self-contained file
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


def _tuple(example_inputs) -> tuple:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def _first(out) -> np.ndarray:
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def compare(run, model: torch.nn.Module, batches, labels=None) -> Parity:
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


def _ort_session(model_bytes: bytes):
    import onnx
    import onnxruntime as ort
    try:
        onnx.checker.check_model(onnx.load_from_string(model_bytes))
    except Exception as exc:
        raise ExportError(f"the exported ONNX fails onnx.checker: {str(exc).splitlines()[0][:200]}") from None
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def _ort_run(sess):
    return lambda inputs: sess.run(None, feeds(inputs))[0]


def _enforce(p: Parity, what: str, tol_rel: float) -> Parity:
    if p.max_rel_diff > tol_rel:
        raise ExportError(f"{what} differs from PyTorch: max abs {p.max_abs_diff:.3g}, "
                          f"relative {p.max_rel_diff:.3g} > {tol_rel:g}")
    return p


def check_parity(model: torch.nn.Module, example_inputs, model_bytes: bytes, tol_rel: float = TOL_REL,
                 more_inputs=()) -> Parity:
    """Check the ONNX model and compare ONNX Runtime's output with PyTorch's on
    the example inputs (and on each of ``more_inputs``, e.g. real data); raises
    :class:`ExportError` above ``tol_rel`` of the output's magnitude."""
    sess = _ort_session(model_bytes)
    batches = [_tuple(example_inputs), *[_tuple(x) for x in more_inputs]]
    return _enforce(compare(_ort_run(sess), model, batches), "ONNX output", tol_rel)


def random_batches(example_inputs, batch_sizes=(None,), count: int = 2, seed: int = 0) -> list[tuple]:
    """The example inputs plus ``count`` seeded random inputs of each batch size
    (``None``: the example's)."""
    gen = torch.Generator().manual_seed(seed)
    out = [_tuple(example_inputs)] if None in batch_sizes else []
    for b in batch_sizes:
        for _ in range(count):
            out.append(tuple(torch.randn((b or t.shape[0], *t.shape[1:]), generator=gen, dtype=t.dtype)
                             if t.is_floating_point() else t for t in _tuple(example_inputs)))
    return out


def onnx_bytes_checked(model, example_inputs, opset: int = OPSET, dynamic_batch: bool = False) -> bytes:
    try:
        data = to_onnx_bytes(model.eval(), _tuple(example_inputs), opset=opset, dynamic_batch=dynamic_batch)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed (opset {opset}): "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    if len(data) > MAX_ONNX_BYTES:
        raise ExportError(f"the model is {len(data) / 2**30:.1f} GiB, over ONNX's 2 GiB limit for one file")
    return data


def export_onnx(model: torch.nn.Module, example_inputs, path, opset: int = OPSET,
                dynamic_batch: bool = False) -> Path:
    """Export to one self-contained ONNX file, checked with ONNX Runtime; returns the path."""
    data = onnx_bytes_checked(model, example_inputs, opset, dynamic_batch)
    sizes = DYNAMIC_BATCHES if dynamic_batch else ()
    check_parity(model, example_inputs, data, more_inputs=random_batches(example_inputs, sizes, count=1))
    atomic_write_bytes(Path(path), data)
    return Path(path)


def dynamic_shapes(example_inputs, max_batch: int) -> dict[str, tuple]:
    """Per input: (min, opt, max) shapes for batch 1, the example's batch and ``max_batch``."""
    out = {}
    for i, t in enumerate(_tuple(example_inputs)):
        rest, b = tuple(int(d) for d in t.shape[1:]), int(t.shape[0])
        out[f"input{i}"] = ((1, *rest), (b, *rest), (max(int(max_batch), b), *rest))
    return out


def trtexec_command(onnx_path, engine_path, fp16: bool = True, int8: bool = False,
                    shapes: dict[str, tuple] | None = None) -> str:
    """The ``trtexec`` line that builds the same engine (``shapes``: see :func:`dynamic_shapes`)."""
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if fp16:
        cmd.append("--fp16")
    if int8:
        cmd.append("--int8")
    if shapes:
        for k, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            cmd.append(f"{flag}=" + ",".join(f"{name}:{'x'.join(map(str, s[k]))}" for name, s in shapes.items()))
    return " ".join(shlex.quote(c) for c in cmd)


def report_path(out: Path) -> Path:
    return Path(f"{out}.report.json")


def _parity_row(runtime: str, inputs: str, p: Parity, tol_rel: float | None) -> dict:
    return {"runtime": runtime, "inputs": inputs, **asdict(p), "tolerance_rel": tol_rel}


def _onnx_part(model, example_inputs, opset, dynamic_batch, data: InputData | None,
               latency_device: str | None) -> tuple[bytes, dict]:
    """Export, check and measure; nothing is written."""
    from hwprune import devices
    data_bytes = onnx_bytes_checked(model, example_inputs, opset, dynamic_batch)
    sess = _ort_session(data_bytes)
    run = _ort_run(sess)
    sizes = DYNAMIC_BATCHES if dynamic_batch else ()
    rows = [_parity_row("onnxruntime-cpu", "random", _enforce(compare(run, model, random_batches(example_inputs)),
                                                              "ONNX output", TOL_REL), TOL_REL)]
    if dynamic_batch:
        p = compare(run, model, random_batches(example_inputs, sizes, count=1, seed=1))
        rows.append(_parity_row("onnxruntime-cpu", "random, batch " + " and ".join(map(str, sizes)),
                                _enforce(p, "ONNX output with a dynamic batch", TOL_REL), TOL_REL))
    if data is not None:
        batch = DATA_BATCH if dynamic_batch else int(_tuple(example_inputs)[0].shape[0])
        xs, ys = batches_of(data, batch)
        p = _enforce(compare(run, model, xs, ys), f"ONNX output on {data.source}", TOL_REL)
        rows.append(_parity_row("onnxruntime-cpu", data.source, p, TOL_REL))
    part = {"bytes": len(data_bytes), "sha256": hashlib.sha256(data_bytes).hexdigest(), "opset": opset,
            "dynamic_batch": dynamic_batch, "dynamic_batches_checked": list(sizes), "checker": "passed"}
    latency = None
    if latency_device:
        t = devices.get(latency_device).open().measure_onnx(data_bytes, feeds(_tuple(example_inputs)))
        latency = {"device": latency_device, "median_ms": t.median_ms, "iqr_ms": t.iqr_ms, "runs": t.runs,
                   "stable": t.stable}
        log.info("%s: %.3f ms (IQR %.3f)", latency_device, t.median_ms, t.iqr_ms)
    return data_bytes, {"onnx": part, "parity": rows, "latency": latency}


def _write_onnx(model, inputs, out: Path, opset, dynamic_batch, data, latency_device, force, head) -> dict:
    report = dict(head)
    with atomic_files([out, report_path(out)], force) as (tmp, tmp_report):
        data_bytes, part = _onnx_part(model, inputs, opset, dynamic_batch, data, latency_device)
        tmp.write_bytes(data_bytes)
        report.update(part)
        report["onnx"]["path"] = str(out)
        report["files"] = [str(out), str(report_path(out))]
        tmp_report.write_text(json.dumps(report, indent=2, default=float))
    return report


def export_model(model: torch.nn.Module, example_inputs, out, *, fmt: str = "onnx", opset: int = OPSET,
                 dynamic_batch: bool = False, fp16: bool = False, int8: bool = False, data: str | None = None,
                 force: bool = False, latency_device: str | None = "ort-cpu-1t", max_batch: int = 32,
                 source: str = "") -> dict:
    """Export ``model`` to ``out`` as ONNX or a TensorRT engine and return the
    report (also written to ``out.report.json``). TensorRT exports also write
    ``out`` with the suffix ``.onnx``; where tensorrt does not import, that ONNX
    is written and :class:`UserError` gives the ``trtexec`` line for it."""
    from hwprune.version import __version__
    inputs, out = _tuple(example_inputs), Path(out)
    if fmt not in ("onnx", "tensorrt"):
        raise UserError(f"unknown export format {fmt!r}; use onnx or tensorrt")
    if fmt == "onnx" and (fp16 or int8):
        raise UserError("--fp16 and --int8 apply to --format tensorrt (the ONNX file is float32)")
    if int8 and not data:
        raise UserError("--int8 needs calibration inputs: pass --data digits or --data FILE.npz")
    if not 7 <= opset <= 21:
        raise UserError(f"--opset {opset} is outside 7..21 (17 is a safe default)")
    if int(max_batch) < 1:
        raise UserError(f"--max-batch {max_batch} must be at least 1")
    head = {"format": fmt, "model": source, "hwprune_version": __version__,
            "input_shapes": [list(t.shape) for t in inputs]}
    if fmt == "onnx":
        check_outputs([out, report_path(out)], force)
        return _write_onnx(model, inputs, out, opset, dynamic_batch,
                           load_data(data, inputs) if data else None, latency_device, force, head)
    from hwprune.export.tensorrt import build_and_check, tensorrt_missing
    onnx_path = out.with_suffix(".onnx")
    if onnx_path == out:
        raise UserError(f"--out {out} is the ONNX file's name; name the engine e.g. {out.with_suffix('.engine')}")
    shapes = dynamic_shapes(inputs, max_batch) if dynamic_batch else None
    missing = tensorrt_missing()
    if missing:
        check_outputs([onnx_path, report_path(onnx_path)], force)
        _write_onnx(model, inputs, onnx_path, opset, dynamic_batch, load_data(data, inputs) if data else None,
                    latency_device, force, {**head, "format": "onnx"})
        raise UserError(f"{missing}; wrote {onnx_path} (checked with ONNX Runtime); build the engine with: "
                        f"{trtexec_command(onnx_path, out, fp16, int8, shapes)}")
    check_outputs([out, onnx_path, report_path(out)], force)
    loaded = load_data(data, inputs) if data else None
    report = dict(head)
    with atomic_files([out, onnx_path, report_path(out)], force) as (tmp, tmp_onnx, tmp_report):
        onnx_data, part = _onnx_part(model, inputs, opset, dynamic_batch, loaded, latency_device)
        tmp_onnx.write_bytes(onnx_data)
        plan, trt_part, trt_rows = build_and_check(model, inputs, onnx_data, fp16=fp16, int8=int8, data=loaded,
                                                   shapes=shapes, opset=opset)
        tmp.write_bytes(plan)
        report.update(part)
        report["onnx"]["path"] = str(onnx_path)
        report["parity"] += trt_rows
        report["tensorrt"] = {"path": str(out), "bytes": len(plan), "sha256": hashlib.sha256(plan).hexdigest(),
                              "trtexec_equivalent": trtexec_command(onnx_path, out, fp16, int8, shapes), **trt_part}
        report["files"] = [str(out), str(onnx_path), str(report_path(out))]
        tmp_report.write_text(json.dumps(report, indent=2, default=float))
    return report


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def report_text(report: dict) -> str:
    """The report as a table and a few lines, for the CLI."""
    rows = [[r["runtime"], r["inputs"], r["samples"], _num(r["max_abs_diff"], ".3g"), _num(r["max_rel_diff"], ".3g"),
             _num(r["top1_agreement"] and 100 * r["top1_agreement"], ".1f"),
             _num(r["accuracy_export"] and 100 * r["accuracy_export"], ".1f")] for r in report["parity"]]
    text = format_table(["runtime", "inputs vs PyTorch", "samples", "max abs diff", "max rel diff",
                         "top-1 agree %", "accuracy %"], rows)
    o = report["onnx"]
    text += (f"\nONNX: opset {o['opset']}, {o['bytes'] / 1e6:.2f} MB, onnx.checker passed"
             + (f", dynamic batch (checked at {', '.join(map(str, o['dynamic_batches_checked']))})"
                if o["dynamic_batch"] else ", static batch"))
    lat = report.get("latency")
    if lat:
        text += f"\nlatency on {lat['device']}: {lat['median_ms']:.3f} ms (IQR {lat['iqr_ms']:.3f}, {lat['runs']} runs)"
    t = report.get("tensorrt")
    if t:
        text += (f"\nTensorRT {t['version']}: {t['precision']} engine, {t['bytes'] / 1e6:.2f} MB, built in "
                 f"{t['build_s']:.1f} s" + (f"; {t['latency_ms']:.3f} ms on {t['gpu']}" if t.get("latency_ms") else ""))
    return text + "\nwrote " + ", ".join(report["files"])
