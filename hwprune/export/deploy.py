"""On-device deployment formats: an ExecuTorch program (``.pte``, lowered to
XNNPACK) and an OpenVINO IR (``.xml`` + ``.bin``), each run by its own runtime
and checked against PyTorch before anything is written, measured on the
format's device, and described in ``OUT.report.json`` like an ONNX export.
Outputs are written atomically (:func:`hwprune.export.outdir.atomic_files`)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import tempfile
from pathlib import Path

from hwprune import devices
from hwprune.export.data import InputData, batches_of
from hwprune.export.onnx import onnx_bytes_checked, report_path
from hwprune.export.outdir import atomic_files
from hwprune.export.parity import TOL_REL, ExportError, enforce, parity_of, parity_row, random_batches
from profilers.inputs import as_inputs
from profilers.onnx_export import OPSET, feeds

log = logging.getLogger("hwprune")

FORMATS = {"executorch": ("executorch-xnnpack-1t", ".pte"), "openvino": ("openvino-cpu-1t", ".xml")}


def checked_rows(run, model, inputs, data: InputData | None, runtime: str, what: str) -> list[dict]:
    """Parity of ``run`` with PyTorch on the example and seeded random inputs (and ``data``)."""
    rows = [parity_row(runtime, "random", enforce(parity_of(run, model, random_batches(inputs)), what, TOL_REL),
                       TOL_REL)]
    if data is not None:
        xs, ys = batches_of(data, int(inputs[0].shape[0]))
        rows.append(parity_row(runtime, data.source, enforce(parity_of(run, model, xs, ys), f"{what} on "
                                                              f"{data.source}", TOL_REL), TOL_REL))
    return rows


def latency_of(timing, device: str) -> dict:
    log.info("%s: %.3f ms (IQR %.3f)", device, timing.median_ms, timing.iqr_ms)
    return {"device": device, "median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms, "runs": timing.runs,
            "stable": timing.stable}


def open_runtime(name: str, kind: str):
    """The runtime of device ``name``, which must be of ``kind`` (the format's runtime)."""
    rt = devices.get(name).open()
    if getattr(rt, "kind", None) != kind:
        raise ExportError(f"latency device {name!r} does not run {kind} programs; pick a {kind} device")
    return rt


def write_executorch(model, inputs, out: Path, data: InputData | None, latency_device: str | None,
                     force: bool, head: dict) -> dict:
    """Lower ``model`` to an XNNPACK ``.pte`` at ``out``, checked by running it."""
    from profilers.executorch_rt import lower
    rt = open_runtime("executorch-xnnpack-1t", "executorch-xnnpack")
    inputs = as_inputs(inputs)
    report = dict(head)
    with atomic_files([out, report_path(out)], force) as (tmp, tmp_report):
        try:
            program = lower(model, inputs)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
            raise ExportError(f"torch.export / XNNPACK lowering failed: {type(exc).__name__}: {first}") from None
        rows = checked_rows(lambda xs: rt.run(program, xs)[0].numpy(), model, inputs, data,
                            "executorch-xnnpack", "ExecuTorch output")
        tmp.write_bytes(program)
        report["executorch"] = {"path": str(out), "bytes": len(program),
                                "sha256": hashlib.sha256(program).hexdigest(), "backend": "xnnpack",
                                "version": importlib.metadata.version("executorch")}
        report["parity"] = rows
        report["latency"] = None
        if latency_device:
            lat_rt = open_runtime(latency_device, "executorch-xnnpack")
            report["latency"] = latency_of(lat_rt.measure_pte(program, inputs), latency_device)
        report["files"] = [str(out), str(report_path(out))]
        tmp_report.write_text(json.dumps(report, indent=2, default=float))
    return report


def write_openvino(model, inputs, out: Path, opset: int, data: InputData | None, latency_device: str | None,
                   force: bool, head: dict) -> dict:
    """Convert ``model`` (through ONNX) to an OpenVINO IR at ``out`` (``.xml``) and
    ``out`` with ``.bin``, fp32 weights, checked by compiling and running the IR."""
    import openvino
    rt = open_runtime("openvino-cpu-1t", "openvino-cpu")
    inputs = as_inputs(inputs)
    bin_path = out.with_suffix(".bin")
    if bin_path == out:
        raise ExportError(f"--out {out} would be the weights file; name the IR e.g. {out.with_suffix('.xml')}")
    onnx_data = onnx_bytes_checked(model, inputs, opset)
    report = dict(head)
    with atomic_files([out, bin_path, report_path(out)], force) as (tmp, tmp_bin, tmp_report), \
            tempfile.TemporaryDirectory() as scratch:
        xml = Path(scratch) / "model.xml"
        onnx_file = Path(scratch) / "model.onnx"
        onnx_file.write_bytes(onnx_data)
        openvino.save_model(openvino.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)
        rows = checked_rows(lambda xs: rt.run(xml, feeds(xs))[0], model, inputs, data, "openvino-cpu",
                            "OpenVINO output")
        timing = None
        if latency_device:
            timing = open_runtime(latency_device, "openvino-cpu").measure_onnx(xml, feeds(inputs))
        ir, weights = xml.read_bytes(), xml.with_suffix(".bin").read_bytes()
        tmp.write_bytes(ir)
        tmp_bin.write_bytes(weights)
        report["openvino"] = {"path": str(out), "weights": str(bin_path), "xml_bytes": len(ir),
                              "bin_bytes": len(weights), "sha256": hashlib.sha256(ir + weights).hexdigest(),
                              "opset": opset, "precision": "fp32", "version": importlib.metadata.version("openvino")}
        report["parity"] = rows
        report["latency"] = latency_of(timing, latency_device) if timing is not None else None
        report["files"] = [str(out), str(bin_path), str(report_path(out))]
        tmp_report.write_text(json.dumps(report, indent=2, default=float))
    return report


def deploy_text(report: dict) -> str:
    """The lines the CLI adds for these formats."""
    if "executorch" in report:
        e = report["executorch"]
        return f"ExecuTorch {e['version']}: XNNPACK-lowered program, {e['bytes'] / 1e6:.2f} MB"
    if "openvino" in report:
        o = report["openvino"]
        return (f"OpenVINO {o['version']}: IR (fp32 weights), {(o['xml_bytes'] + o['bin_bytes']) / 1e6:.2f} MB, "
                f"from ONNX opset {o['opset']}")
    return ""


__all__ = ["FORMATS", "OPSET", "deploy_text", "write_executorch", "write_openvino"]
