"""The export command's job: an ONNX file, a TensorRT engine (with its ONNX), an ExecuTorch
program or an OpenVINO IR, checked against PyTorch, measured, and described in
``OUT.report.json``; written atomically."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from hwprune.errors import UserError
from hwprune.export.data import load_data
from hwprune.export.deploy import FORMATS as DEPLOY_FORMATS
from hwprune.export.deploy import deploy_text
from hwprune.export.onnx import dynamic_shapes, onnx_part, report_path, trtexec_command, write_onnx
from hwprune.export.outdir import atomic_files, check_outputs
from hwprune.report import format_table
from profilers.inputs import as_inputs
from profilers.onnx_export import OPSET

FORMATS = ("onnx", "tensorrt", *DEPLOY_FORMATS)


def export_model(model: torch.nn.Module, example_inputs, out, *, fmt: str = "onnx", opset: int = OPSET,
                 dynamic_batch: bool = False, fp16: bool = False, int8: bool = False, data: str | None = None,
                 force: bool = False, latency_device: str | None = "auto", max_batch: int = 32,
                 source: str = "") -> dict:
    """Export ``model`` to ``out`` as ONNX, a TensorRT engine, an ExecuTorch
    program (``.pte``, XNNPACK) or an OpenVINO IR (``.xml`` and ``.bin``) and
    return the report (also written to ``out.report.json``). TensorRT exports
    also write ``out`` with the suffix ``.onnx``; where tensorrt does not
    import, that ONNX is written and :class:`UserError` gives the ``trtexec``
    line for it. ``latency_device``: where the export is measured (``auto``:
    ort-cpu-1t, or the format's own device for executorch and openvino;
    None: not measured)."""
    from hwprune.version import __version__
    inputs, out = as_inputs(example_inputs), Path(out)
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")
    if fmt != "tensorrt" and (fp16 or int8):
        raise UserError(f"--fp16 and --int8 apply to --format tensorrt (the {fmt} export is float32)")
    if fmt in DEPLOY_FORMATS and dynamic_batch:
        raise UserError(f"--dynamic-batch applies to onnx and tensorrt; the {fmt} export has the example's batch")
    if latency_device == "auto":
        latency_device = DEPLOY_FORMATS[fmt][0] if fmt in DEPLOY_FORMATS else "ort-cpu-1t"
    if int8 and not data:
        raise UserError("--int8 needs calibration inputs: pass --data digits or --data FILE.npz")
    if not 7 <= opset <= 21:
        raise UserError(f"--opset {opset} is outside 7..21 ({OPSET} is a safe default)")
    if int(max_batch) < 1:
        raise UserError(f"--max-batch {max_batch} must be at least 1")
    head = {"format": fmt, "model": source, "hwprune_version": __version__,
            "input_shapes": [list(t.shape) for t in inputs]}
    if fmt in DEPLOY_FORMATS:
        from hwprune.export.deploy import write_executorch, write_openvino
        loaded = load_data(data, inputs) if data else None
        if fmt == "executorch":
            return write_executorch(model, inputs, out, loaded, latency_device, force, head)
        return write_openvino(model, inputs, out, opset, loaded, latency_device, force, head)
    if fmt == "onnx":
        check_outputs([out, report_path(out)], force)
        return write_onnx(model, inputs, out, opset, dynamic_batch,
                           load_data(data, inputs) if data else None, latency_device, force, head)
    from hwprune.export.tensorrt import build_and_check, tensorrt_missing
    onnx_path = out.with_suffix(".onnx")
    if onnx_path == out:
        raise UserError(f"--out {out} is the ONNX file's name; name the engine e.g. {out.with_suffix('.engine')}")
    shapes = dynamic_shapes(inputs, max_batch) if dynamic_batch else None
    missing = tensorrt_missing()
    if missing:
        check_outputs([onnx_path, report_path(onnx_path)], force)
        write_onnx(model, inputs, onnx_path, opset, dynamic_batch, load_data(data, inputs) if data else None,
                    latency_device, force, {**head, "format": "onnx"})
        raise UserError(f"{missing}; wrote {onnx_path} (checked with ONNX Runtime); build the engine with: "
                        f"{trtexec_command(onnx_path, out, fp16, int8, shapes)}")
    check_outputs([out, onnx_path, report_path(out)], force)
    loaded = load_data(data, inputs) if data else None
    report = dict(head)
    with atomic_files([out, onnx_path, report_path(out)], force) as (tmp, tmp_onnx, tmp_report):
        onnx_data, part = onnx_part(model, inputs, opset, dynamic_batch, loaded, latency_device)
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
    lat = report.get("latency")
    lat_line = lat and f"\nlatency on {lat['device']}: {lat['median_ms']:.3f} ms (IQR {lat['iqr_ms']:.3f}, " \
        f"{lat['runs']} runs)"
    if "onnx" not in report:   # an on-device format: no ONNX file was written
        return text + "\n" + deploy_text(report) + (lat_line or "") + "\nwrote " + ", ".join(report["files"])
    o = report["onnx"]
    text += (f"\nONNX: opset {o['opset']}, {o['bytes'] / 1e6:.2f} MB, onnx.checker passed"
             + (f", dynamic batch (checked at {', '.join(map(str, o['dynamic_batches_checked']))})"
                if o["dynamic_batch"] else ", static batch"))
    text += lat_line or ""
    t = report.get("tensorrt")
    if t:
        text += (f"\nTensorRT {t['version']}: {t['precision']} engine, {t['bytes'] / 1e6:.2f} MB, built in "
                 f"{t['build_s']:.1f} s" + (f"; {t['latency_ms']:.3f} ms on {t['gpu']}" if t.get("latency_ms") else ""))
    return text + "\nwrote " + ", ".join(report["files"])
