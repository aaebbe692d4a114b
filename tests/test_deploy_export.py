"""``hwprune export --format executorch|openvino``: the written program / IR runs
and matches PyTorch, outputs are atomic, the report describes them."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.cli.main import main
from hwprune.export.artifact import export_model
from hwprune.export.onnx import report_path
from hwprune.export.parity import ExportError


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()


X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def rel(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_executorch_program_round_trips(tmp_path):
    from executorch.runtime import Runtime
    m, out = net(), tmp_path / "m.pte"
    report = export_model(m, X, out, fmt="executorch", latency_device=None)
    assert report["format"] == "executorch" and report["files"] == [str(out), str(report_path(out))]
    assert json.loads(report_path(out).read_text())["executorch"]["sha256"] == report["executorch"]["sha256"]
    assert report["parity"][0]["max_rel_diff"] <= 1e-5 and report["executorch"]["backend"] == "xnnpack"
    # a fresh runtime loads the file and computes what PyTorch computes on new inputs
    x = torch.randn(1, 3, 32, 32)
    program = Runtime.get().load_program(out.read_bytes())   # the method needs its program alive
    got = program.load_method("forward").execute([x])[0]
    with torch.no_grad():
        assert rel(got.numpy(), m(x).numpy()) <= 1e-5


def test_openvino_ir_round_trips(tmp_path):
    import openvino
    m, out = net(), tmp_path / "m.xml"
    report = export_model(m, X, out, fmt="openvino", latency_device=None)
    assert out.exists() and out.with_suffix(".bin").exists() and report_path(out).exists()
    assert report["openvino"]["precision"] == "fp32" and report["parity"][0]["max_rel_diff"] <= 1e-5
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(out)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(1, 3, 32, 32)
    got = compiled({"input0": x.numpy()})[0]
    with torch.no_grad():
        assert rel(got, m(x).numpy()) <= 1e-5


def test_a_failed_parity_check_writes_nothing(tmp_path, monkeypatch):
    from profilers.executorch_rt import ExecuTorchRuntime
    monkeypatch.setattr(ExecuTorchRuntime, "run", lambda self, data, xs: [torch.zeros(1, 10) + 5])
    out = tmp_path / "m.pte"
    out.write_bytes(b"old")
    with pytest.raises(ExportError, match="ExecuTorch output differs from PyTorch"):
        export_model(net(), X, out, fmt="executorch", latency_device=None, force=True)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.pte"]


def test_formats_refuse_options_they_do_not_have(tmp_path):
    from hwprune.errors import UserError
    with pytest.raises(UserError, match="--dynamic-batch"):
        export_model(net(), X, tmp_path / "m.pte", fmt="executorch", dynamic_batch=True)
    with pytest.raises(UserError, match="--fp16"):
        export_model(net(), X, tmp_path / "m.xml", fmt="openvino", fp16=True)
    with pytest.raises(UserError, match="executorch, openvino"):
        export_model(net(), X, tmp_path / "m.x", fmt="tflite")


def test_cli_exports_openvino_measured_on_its_device(tmp_path, capsys):
    out = tmp_path / "r20.xml"
    code = main(["export", "--model", "resnet20", "--format", "openvino", "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and out.exists() and out.with_suffix(".bin").exists()
    assert report["latency"]["device"] == "openvino-cpu-1t" and report["latency"]["median_ms"] > 0
    assert main(["export", "--model", "resnet20", "--format", "openvino", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
