import json
import os
import sys

import archs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hwprune import UserError, apply_plan, export_onnx, zoo
from hwprune.cli.main import main
from hwprune.export.artifact import export_model
from hwprune.export.data import load_data
from hwprune.export.onnx import dynamic_shapes, report_path, trtexec_command
from hwprune.graph.plans import checkpoint, load_model, plan_fingerprint
from hwprune.graph.space import PruningSpace
from hwprune.graph.surgery import apply_kept

ZOO = ["resnet20", "resnet56", "vgg16", "mobilenetv2", "resnet18", "resnet50"]


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rel(got, ref):
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def _export(model, x, out, **kw):
    return export_model(model, x, out, latency_device=None, **kw)


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_exports_and_matches_pytorch(name, tmp_path):
    model, x = zoo.create(name)
    out = tmp_path / f"{name}.onnx"
    report = _export(model, x, out)
    onnx.checker.check_model(onnx.load(str(out)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, report_path(out).name], \
        "one self-contained file and its report"
    assert json.loads(report_path(out).read_text()) == json.loads(json.dumps(report, default=float))
    assert report["parity"][0]["max_rel_diff"] <= 1e-4
    fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(fresh).numpy()
    assert _rel(_ort(out).run(None, {"input0": fresh.numpy()})[0], ref) <= 1e-4


def test_export_onnx_api_writes_one_checked_file(tmp_path):
    model, x = zoo.create("resnet20")
    path = export_onnx(model, x, tmp_path / "m.onnx", dynamic_batch=True)
    onnx.checker.check_model(onnx.load(str(path)))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_dynamic_batch_runs_at_batch_1_and_3(tmp_path):
    model, x = zoo.create("mobilenetv2")
    report = _export(model, x, tmp_path / "m.onnx", dynamic_batch=True)
    assert report["onnx"]["dynamic_batches_checked"] == [1, 3]
    dim = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value
    sess = _ort(tmp_path / "m.onnx")
    for batch in (1, 3):
        xb = torch.randn(batch, *x.shape[1:])
        with torch.no_grad():
            ref = model(xb).numpy()
        got = sess.run(None, {"input0": xb.numpy()})[0]
        assert got.shape == (batch, 10) and _rel(got, ref) <= 1e-4


def test_static_export_has_a_fixed_batch(tmp_path):
    model, x = zoo.create("resnet20")
    _export(model, x, tmp_path / "m.onnx")
    dim = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 1


def test_real_inputs_parity_is_reported(tmp_path):
    model, x = zoo.create("resnet20")
    report = _export(model, x, tmp_path / "m.onnx", data="digits", dynamic_batch=True)
    row = [r for r in report["parity"] if r["inputs"] == "digits"][0]
    assert row["samples"] == 256 and row["max_rel_diff"] <= 1e-4 and row["max_abs_diff"] >= 0
    assert row["top1_agreement"] >= 0.99 and 0 <= row["accuracy_export"] <= 1
    xs = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=xs)
    report = _export(model, x, tmp_path / "n.onnx", data=str(tmp_path / "d.npz"))
    row = [r for r in report["parity"] if r["inputs"] == "d.npz"][0]
    assert row["samples"] == 5 and row["accuracy_export"] is None and row["max_rel_diff"] <= 1e-4


@pytest.mark.parametrize("arrays,needle", [
    ({"images": np.zeros((2, 3, 32, 32), np.float32)}, "no array 'x' (it has: images)"),
    ({"x": np.zeros((2, 3, 28, 28), np.float32)}, "has shape [2, 3, 28, 28]; this model takes [N, 3, 32, 32]"),
    ({"x": np.zeros((3, 32, 32), np.float32)}, "has shape [3, 32, 32]"),
    ({"x": np.zeros((2, 3, 32, 32), np.uint8)}, "dtype uint8; inputs must be floating point"),
    ({"x": np.zeros((2, 3, 32, 32)), "y": np.zeros(2)}, "d.npz has dtype float64; labels must be integers"),
    ({"x": np.zeros((2, 3, 32, 32)), "y": np.zeros(3, np.int64)}, "it must be [2], one label per x"),
    ({"x": np.full((1, 3, 32, 32), np.nan)}, "NaN"),
])
def test_npz_data_errors_are_clear(arrays, needle, tmp_path):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError) as e:
        load_data(str(tmp_path / "d.npz"), torch.zeros(1, 3, 32, 32))
    assert needle in str(e.value)


def test_data_files_that_are_not_npz(tmp_path):
    x = torch.zeros(1, 3, 32, 32)
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 32, 32), np.float32))
    (tmp_path / "t.npz").write_text("hello")
    np.savez(tmp_path / "o.npz", x=np.array([object()], dtype=object))
    for name, needle in [("a.npy", "single array"), ("t.npz", "not a .npz archive"),
                         ("o.npz", "object arrays"), ("missing.npz", "does not exist")]:
        with pytest.raises(UserError, match=needle):
            load_data(str(tmp_path / name), x)
    with pytest.raises(UserError, match="3xSxS"):
        load_data("digits", torch.zeros(1, 1, 28, 28))


def _half(space):
    return {g.gid: list(range(0, g.size, 2)) for g in space.groups}


def _plan(space, kept):
    from hwprune.loop.engine import make_plan
    return {**make_plan(space, kept, "ort-cpu-1t", 1.0), "fingerprint": plan_fingerprint(space)}


def test_checkpoint_round_trip_reproduces_outputs_exactly(tmp_path):
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    pruned = apply_kept(space, _half(space))
    plan = _plan(space, _half(space))
    torch.save(checkpoint(pruned, "resnet20", 10, plan), tmp_path / "model.pt")
    loaded = load_model(str(tmp_path / "model.pt"))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), pruned(x))
    assert json.loads(json.dumps(plan)) == plan  # JSON-serialisable


def test_plan_and_weights_rebuild_the_pruned_model_without_pickles(tmp_path):
    model, x = zoo.create("mobilenetv2")
    space = PruningSpace(model, x)
    pruned = apply_kept(space, _half(space))
    (tmp_path / "plan.json").write_text(json.dumps(_plan(space, _half(space))))
    torch.save(pruned.state_dict(), tmp_path / "weights.pt")
    fresh, _ = zoo.create("mobilenetv2", seed=123)  # other weights, same architecture
    rebuilt = apply_plan(fresh, tmp_path / "plan.json", (x,))
    rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    probe = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(probe), pruned(probe))


def test_make_plan_records_the_fingerprint():
    from hwprune.loop.engine import make_plan
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    assert make_plan(space, _half(space), "ort-cpu-1t", 1.0)["fingerprint"] == plan_fingerprint(space)


def test_fingerprint_names_the_architecture_not_the_weights_or_input_size():
    a, x = zoo.create("resnet20", seed=0)
    b, _ = zoo.create("resnet20", seed=1)
    fp = plan_fingerprint(PruningSpace(a, x))
    assert fp == plan_fingerprint(PruningSpace(b, torch.randn(2, 3, 40, 40))) and fp.startswith("sha256:")
    assert fp != plan_fingerprint(PruningSpace(*zoo.create("resnet20", num_classes=7)))


def test_plan_for_another_architecture_is_refused():
    m20, x = zoo.create("resnet20")
    space = PruningSpace(m20, x)
    plan = _plan(space, _half(space))
    m56, _ = zoo.create("resnet56")
    with pytest.raises(UserError, match="does not fit this model: it was made for another architecture"):
        apply_plan(m56, plan, (x,))
    del plan["fingerprint"]  # older plans: the channel groups decide
    with pytest.raises(UserError, match=r"does not fit this model \(group"):
        apply_plan(m56, plan, (x,))


@pytest.mark.parametrize("plan,needle", [
    ({"groups": "all"}, "not a hwprune plan"),
    ({"groups": [{"gid": 0}]}, "malformed"),
])
def test_malformed_plans_are_refused(plan, needle):
    model, x = zoo.create("resnet20")
    with pytest.raises(UserError, match=needle):
        apply_plan(model, plan, (x,))


def test_plan_with_out_of_range_channels_is_refused():
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    plan = _plan(space, _half(space))
    plan["groups"][0]["kept"] = [0, plan["groups"][0]["size"]]
    with pytest.raises(UserError, match="distinct indices"):
        apply_plan(model, plan, (x,))


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export_prints_the_report_and_writes_it(capsys, tmp_path):
    out = tmp_path / "m.onnx"
    code, text, err = run_cli(capsys, "export", "--model", "resnet20", "--out", str(out), "--data", "digits",
                              "--json")
    assert code == 0, err
    data = json.loads(text)
    assert data == json.loads(report_path(out).read_text())
    assert data["latency"]["device"] == "ort-cpu-1t" and data["latency"]["median_ms"] > 0
    assert [r["inputs"] for r in data["parity"]] == ["random", "digits"]
    code, text, err = run_cli(capsys, "export", "--model", "resnet20", "--out", str(out), "--force")
    assert code == 0 and "max rel diff" in text and "latency on ort-cpu-1t" in text


def test_existing_output_needs_force_and_is_left_unchanged(capsys, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old model")
    code, text, err = run_cli(capsys, "export", "--model", "resnet20", "--out", str(out))
    assert code == 2 and "--force" in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"old model" and not report_path(out).exists()
    model, x = zoo.create("resnet20")
    _export(model, x, out, force=True)
    onnx.checker.check_model(onnx.load(str(out)))


def test_interrupted_export_leaves_the_old_files(tmp_path, monkeypatch):
    model, x = zoo.create("resnet20")
    out = tmp_path / "m.onnx"
    _export(model, x, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import hwprune.export.onnx as ex

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(ex, "parity_of", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _export(model, x, out, force=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary files either


def test_a_crash_between_renames_never_pairs_old_and_new(tmp_path, monkeypatch):
    from hwprune.export.outdir import atomic_files
    main_file, report = tmp_path / "m.onnx", tmp_path / "m.onnx.report.json"
    main_file.write_text("old")
    report.write_text("old report")
    calls = []
    real = os.replace

    def replace(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the main file, before its report
        real(a, b)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic_files([main_file, report], force=True) as (tmp, tmp_report):
            tmp.write_text("new")
            tmp_report.write_text("new report")
    assert main_file.read_text() == "new" and not report.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bad_export_options_are_errors(tmp_path):
    model, x = zoo.create("resnet20")
    for kw, needle in [({"int8": True, "fmt": "tensorrt"}, "--int8 needs calibration inputs"),
                       ({"fp16": True}, "apply to --format tensorrt"), ({"opset": 3}, "--opset 3"),
                       ({"fmt": "tensorrt", "out": tmp_path / "m.onnx"}, "name the engine")]:
        out = kw.pop("out", tmp_path / "x.onnx")
        with pytest.raises(UserError, match=needle):
            _export(model, x, out, **kw)
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        _export(model, x, tmp_path / "dir.onnx", force=True)


def test_trtexec_command_lines():
    x = torch.zeros(1, 3, 32, 32)
    assert trtexec_command("m.onnx", "m.engine") == "trtexec --onnx=m.onnx --saveEngine=m.engine --fp16"
    assert trtexec_command("a b/m.onnx", "m.engine", fp16=False, int8=True) == \
        "trtexec '--onnx=a b/m.onnx' --saveEngine=m.engine --int8"
    line = trtexec_command("m.onnx", "m.engine", fp16=True, shapes=dynamic_shapes(x, 16))
    assert line.endswith("--fp16 --minShapes=input0:1x3x32x32 --optShapes=input0:1x3x32x32 "
                         "--maxShapes=input0:16x3x32x32")
    two = dynamic_shapes((torch.zeros(2, 3, 8, 8), torch.zeros(2, 5)), 4)
    assert "--maxShapes=input0:4x3x8x8,input1:4x5" in trtexec_command("m.onnx", "e", shapes=two)


def test_tensorrt_missing_is_one_error_with_the_trtexec_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    code, text, err = run_cli(capsys, "export", "--model", "resnet20", "--format", "tensorrt", "--int8",
                              "--data", "digits", "--dynamic-batch", "--out", str(tmp_path / "m.engine"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert "tensorrt package is not installed" in err and "pip install 'hwprune[tensorrt]'" in err
    onnx_path = tmp_path / "m.onnx"
    assert f"trtexec --onnx={onnx_path} --saveEngine={tmp_path / 'm.engine'} --int8" in err
    assert "--minShapes=input0:1x3x32x32" in err and "--maxShapes=input0:32x3x32x32" in err
    onnx.checker.check_model(onnx.load(str(onnx_path)))
    assert report_path(onnx_path).exists() and not (tmp_path / "m.engine").exists()


def _require_tensorrt():
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (pip install 'hwprune[tensorrt]')")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs an NVIDIA GPU; torch.cuda.is_available() is False")


@pytest.mark.parametrize("kw", [{"fp16": True}, {"fp16": True, "dynamic_batch": True},
                                {"int8": True, "data": "digits", "dynamic_batch": True}])
def test_tensorrt_engine_matches_pytorch(kw, tmp_path):
    _require_tensorrt()
    model, x = zoo.create("resnet20")
    out = tmp_path / "m.engine"
    report = _export(model, x, out, fmt="tensorrt", **kw)
    assert out.stat().st_size > 1000 and (tmp_path / "m.onnx").exists() and report_path(out).exists()
    rows = [r for r in report["parity"] if r["runtime"] == "tensorrt"]
    assert rows and all(r["tolerance_rel"] is None or r["max_rel_diff"] <= r["tolerance_rel"] for r in rows)
    if kw.get("int8"):
        assert report["tensorrt"]["calibration_samples"] > 0 and "int8" in report["tensorrt"]["precision"]
        assert [r for r in rows if r["inputs"] == "digits"][0]["top1_agreement"] >= 0.5


def test_pickled_module_needs_trust(tmp_path):
    model, x = archs.create("concat")
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(UserError, match="trust-pickle"):
        load_model(str(tmp_path / "whole.pt"), input_shape=(1, 3, 32, 32))
    loaded = load_model(str(tmp_path / "whole.pt"), input_shape=(1, 3, 32, 32), trust_pickle=True)
    assert loaded.model(x).shape == (1, 10)


def test_torch_export_file_loads_with_its_input(tmp_path):
    model, x = archs.create("invres")
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    loaded = load_model(str(tmp_path / "m.pt2"))
    assert tuple(loaded.example_input.shape) == (1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-5)


def test_pruning_a_torch_export_file_is_a_clear_error(tmp_path):
    import hwprune
    model, x = archs.create("invres")
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    loaded = load_model(str(tmp_path / "m.pt2"))
    with pytest.raises(UserError, match="torch.export program cannot be pruned.*torchvision:NAME"):
        hwprune.prune(loaded.model, (loaded.example_input,), device="ort-cpu-1t", budget_fraction=0.5)


def test_garbage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot read model file"):
        load_model(str(bad))
    with pytest.raises(UserError, match="unknown model"):
        load_model("resnet99")
