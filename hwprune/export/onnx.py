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
import re
import shlex
from pathlib import Path

import torch

from hwprune.export.data import InputData, batches_of
from hwprune.export.outdir import atomic_files
from hwprune.export.parity import (
    DATA_BATCH,
    DYNAMIC_BATCHES,
    TOL_REL,
    ExportError,
    check_parity,
    enforce,
    ort_runner,
    ort_session,
    parity_of,
    parity_row,
    random_batches,
)
from profilers.atomic import atomic_write_bytes
from profilers.inputs import as_inputs
from profilers.onnx_export import OPSET, feeds, to_onnx_bytes

log = logging.getLogger("hwprune")

MAX_ONNX_BYTES = 2 ** 31 - 1  # protobuf's limit for one self-contained file


def export_failure(exc: Exception, opset: int) -> str:
    """One line on why ``torch.onnx.export`` failed: the operator and the exporter's reason."""
    first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
    m = (re.search(r"ONNX export of (?:operator )?([\w:.]+)(?:,\s*(.*))?", first)
         or re.search(r"Exporting the operator '?([\w:.]+)'? to ONNX opset version \d+ (is not supported)", first))
    if m is None:
        return f"torch.onnx.export failed (opset {opset}): {type(exc).__name__}: {first}"
    op, why = m.group(1), re.split(r"\. Please |\s+\[Caused by", m.group(2) or "")[0].rstrip(". ")
    why = why or "not supported by the exporter"
    if "not factor of input size" in why:
        why = "its output size does not divide its input size"
    hint = ""
    if op.startswith("adaptive_"):
        hint = (" (nn.AdaptiveAvgPool2d/AdaptiveMaxPool2d modules are rewritten for export; this one is a "
                "functional call in forward: make it a module, or pick an input size whose feature map the "
                "output size divides)")
    return f"cannot export operator {op} to ONNX (opset {opset}): {why}{hint}"


def onnx_bytes_checked(model, example_inputs, opset: int = OPSET, dynamic_batch: bool = False) -> bytes:
    try:
        data = to_onnx_bytes(model.eval(), as_inputs(example_inputs), opset=opset, dynamic_batch=dynamic_batch)
    except Exception as exc:
        raise ExportError(export_failure(exc, opset)) from None
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
    for i, t in enumerate(as_inputs(example_inputs)):
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


def onnx_part(model, example_inputs, opset, dynamic_batch, data: InputData | None,
               latency_device: str | None) -> tuple[bytes, dict]:
    """Export, check and measure; nothing is written."""
    from hwprune import devices
    data_bytes = onnx_bytes_checked(model, example_inputs, opset, dynamic_batch)
    sess = ort_session(data_bytes)
    run = ort_runner(sess)
    sizes = DYNAMIC_BATCHES if dynamic_batch else ()
    rows = [parity_row("onnxruntime-cpu", "random", enforce(parity_of(run, model, random_batches(example_inputs)),
                                                              "ONNX output", TOL_REL), TOL_REL)]
    if dynamic_batch:
        p = parity_of(run, model, random_batches(example_inputs, sizes, count=1, seed=1))
        rows.append(parity_row("onnxruntime-cpu", "random, batch " + " and ".join(map(str, sizes)),
                                enforce(p, "ONNX output with a dynamic batch", TOL_REL), TOL_REL))
    if data is not None:
        batch = DATA_BATCH if dynamic_batch else int(as_inputs(example_inputs)[0].shape[0])
        xs, ys = batches_of(data, batch)
        p = enforce(parity_of(run, model, xs, ys), f"ONNX output on {data.source}", TOL_REL)
        rows.append(parity_row("onnxruntime-cpu", data.source, p, TOL_REL))
    part = {"bytes": len(data_bytes), "sha256": hashlib.sha256(data_bytes).hexdigest(), "opset": opset,
            "dynamic_batch": dynamic_batch, "dynamic_batches_checked": list(sizes), "checker": "passed"}
    latency = None
    if latency_device:
        t = devices.get(latency_device).open().measure_onnx(data_bytes, feeds(as_inputs(example_inputs)))
        latency = {"device": latency_device, "median_ms": t.median_ms, "iqr_ms": t.iqr_ms, "runs": t.runs,
                   "stable": t.stable}
        log.info("%s: %.3f ms (IQR %.3f)", latency_device, t.median_ms, t.iqr_ms)
    return data_bytes, {"onnx": part, "parity": rows, "latency": latency}


def write_onnx(model, inputs, out: Path, opset, dynamic_batch, data, latency_device, force, head) -> dict:
    report = dict(head)
    with atomic_files([out, report_path(out)], force) as (tmp, tmp_report):
        data_bytes, part = onnx_part(model, inputs, opset, dynamic_batch, data, latency_device)
        tmp.write_bytes(data_bytes)
        report.update(part)
        report["onnx"]["path"] = str(out)
        report["files"] = [str(out), str(report_path(out))]
        tmp_report.write_text(json.dumps(report, indent=2, default=float))
    return report


