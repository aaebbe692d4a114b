"""``hwprune validate``, predictions for arbitrary models, and peak activation
memory. Latency assertions compare numbers measured in the same run."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import archs
import pytest
import torch
from torch import nn

import hwprune
from hwprune.cli.main import main
from hwprune.latency.memory import measure_activation_bytes, peak_activation_bytes, trace_ops
from hwprune.latency.validate import SubnetRow, ValidationResult, scatter_png
from latency_models.memory import OpShape, activation_timeline, layer_activation_bytes
from latency_models.memory import peak_activation_bytes as peak_from_ops
from latency_models.metrics import accuracy
from profilers import LayerSpec, Timing

ROOT = Path(__file__).resolve().parent.parent


def one_error_line(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["--device", "nope", "--model", "resnet20"], "unknown device"),
    (["--device", "ort-cpu-1t", "--model", "resnet99"], "unknown model"),
    (["--device", "ort-cpu-1t", "--model", "resnet20", "--samples", "0"], "positive integer"),
    (["--device", "ort-cpu-1t", "--model", "resnet20", "--samples", "x"], "positive integer"),
    (["--device", "ort-cpu-1t", "--model", "resnet20", "--models", "lookup", "magic"], "unknown latency model"),
    (["--device", "ort-cpu-1t"], "--model"),
    (["--device", "ort-cpu-2t", "--model", "resnet20", "--clock", "thread"], "thread clock"),
])
def test_bad_input_is_one_error_line(capsys, tmp_path, argv, needle):
    out = tmp_path / "v"
    line = one_error_line(capsys, ["validate", *argv, "--out", str(out), "--store", str(tmp_path / "s.sqlite")])
    assert needle in line
    assert not out.exists()


def test_out_must_be_a_folder(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    line = one_error_line(capsys, ["validate", "--device", "ort-cpu-1t", "--model", "resnet20", "--out", str(f)])
    assert "is a file" in line and f.read_text() == "x"


def _result(n=6):
    rows = tuple(SubnetRow("validation" if i else "calibration", {"0": [8 * (i + 1)]}, 0.1 * (i + 1),
                           0.5 * (i + 1), 0.01, 1, 1000 * i, 100 * i,
                           {"step-quadratic": 0.5 * (i + 1) * (1.04 if i % 2 else 0.97),
                            "flops": 0.5 * (i + 1) * (1.3 if i % 2 else 0.8)}) for i in range(n))
    val = [r for r in rows if r.role == "validation"]
    scores = {m: accuracy([r.predicted_ms[m] for r in val], [r.measured_ms for r in val])
              for m in ("step-quadratic", "flops")}
    return ValidationResult("ort-cpu-1t", "net", n - 1, 0, 5.0, 2.0, scores, 40, 5, 400, 3, rows, 1.0)


def test_result_serialises_and_plots():
    res = _result()
    d = json.loads(json.dumps(res.to_dict()))
    assert d["scores"]["step-quadratic"]["within_5_pct"] == 100.0
    assert d["scores"]["flops"]["within_10_pct"] == 0.0
    assert len(d["rows"]) == 6 and d["rows"][0]["role"] == "calibration"
    png = scatter_png(res)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


# ---------------------------------------------------------------- memory

def test_peak_of_a_chain_and_of_a_residual_from_shapes():
    t = (1, 16, 8, 8)   # 4 KiB in fp32
    chain = [OpShape("conv", (t,)), OpShape("relu", (t,), (0,)), OpShape("conv", (t,), (1,), is_output=True)]
    assert activation_timeline(chain) == [4096, 8192, 8192]
    # a residual keeps the block input alive across the branch
    res = [OpShape("conv", (t,)), OpShape("conv", (t,), (0,)), OpShape("conv", (t,), (1,)),
           OpShape("add", (t,), (0, 2), is_output=True)]
    assert peak_from_ops(res) == 3 * 4096
    with pytest.raises(ValueError, match="does not run before"):
        peak_from_ops([OpShape("a", (t,), (1,)), OpShape("b", (t,))])
    spec = LayerSpec("conv", 16, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1, 8, 8)
    assert layer_activation_bytes(spec) == 4 * (16 * 64 + 32 * 16)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "concat", "invres", "concat_residual"])
def test_peak_activation_memory_from_shapes_matches_the_allocator(name):
    """Computed from traced shapes vs measured by PyTorch's CPU allocator on the
    model's graph (which frees every value after its last use): equal. Eager
    PyTorch keeps some tensors longer, so it measures at least as much."""
    from hwprune import zoo
    model, x = zoo.create(name) if name in zoo.list_models() else archs.create(name)
    computed = peak_activation_bytes(model, x)
    assert computed > 0
    assert measure_activation_bytes(model, x) == computed
    assert measure_activation_bytes(model, x, graph=False) >= computed
    ops = trace_ops(model, x)
    assert any(op.is_output for op in ops) and any("conv" in op.name for op in ops)


# ---------------------------------------------------------------- predict_latency

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture
def devices_without_profiles(tmp_path, monkeypatch):
    folder = tmp_path / "devices"
    folder.mkdir()
    for p in (ROOT / "devices").glob("*.toml"):
        shutil.copy(p, folder / p.name)
    monkeypatch.setenv("HWPRUNE_DEVICES_DIR", str(folder))
    return folder


def test_prediction_without_profiling_names_the_missing_shapes(devices_without_profiles, store):
    model, x = Tiny().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(hwprune.UserError, match=r"conv 3x3/1 16->24 at 8x8") as e:
        hwprune.predict_latency(model, x, "ort-cpu-1t", store=store, profile=False)
    assert "3 layer shape(s)" in str(e.value) and "hwprune profile" in str(e.value)
    # with every layer family stored, it is the sum of the layer predictions
    from hwprune.graph.space import PruningSpace
    space = PruningSpace(model, (x,))
    key = json.dumps({"device": "ort-cpu-1t", "host": "elsewhere"}, sort_keys=True)
    truth = {}
    for s in space.specs(space.full_choice()):
        ins = [s.in_channels] if s.in_channels == 3 else [s.in_channels, s.in_channels + 8]
        outs = [s.out_channels] if s.kind == "linear" else [s.out_channels, s.out_channels + 8]
        for v in (replace(s, in_channels=a, out_channels=b) for a in ins for b in outs):
            truth[v] = 0.01 + v.flops * 1e-8   # bilinear in the widths: the quadratic fits it exactly
            store.put(key, v.key(), Timing(truth[v], 0.0, 40, 0.01, True))
    pred = hwprune.predict_latency(model, x, "ort-cpu-1t", store=store, profile=False)
    assert pred == pytest.approx(sum(truth[s] for s in space.specs(space.full_choice())), rel=1e-6)


def test_a_device_that_cannot_run_here_predicts_from_stored_measurements(devices_without_profiles, store):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    model, x = Tiny().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(hwprune.UserError, match=r"tensorrt-fp16 cannot be measured here .*linear 24->10"):
        hwprune.predict_latency(model, x, "tensorrt-fp16", store=store)


# ---------------------------------------------------------------- measuring, on simulated runtimes

def narrow_bias(full_params):
    """Networks with under half the original's parameters measure 10 % slower than their layers say."""
    return lambda m: 1.1 if sum(p.numel() for p in m.parameters()) < full_params / 2 else 1.0


def test_validate_measures_ratios_in_alternating_blocks_not_run_by_run(sim_devices, store, monkeypatch):
    """A runtime that reads models 8 % slower when interleaved run by run with a
    larger one, and where narrow networks run 10 % slower than their layers:
    every ratio is what blocks of each model alone read (bias included, no
    interleaving penalty), each sub-network's blocks alternate with the full network's."""
    from simruntime import SimRuntime

    from hwprune import zoo
    from hwprune.graph.space import PruningSpace
    from hwprune.graph.subnets import build
    from hwprune.latency.validate import rescore, validate
    model, x = zoo.create("resnet20")
    bias = narrow_bias(sum(p.numel() for p in model.parameters()))
    sim_devices.add("sim-cache", bound="flops", step=8, interleave=0.08, bias=bias)
    monkeypatch.setattr(SimRuntime, "sessions", [])
    monkeypatch.setattr(SimRuntime, "blocks", [])
    res = validate(model, (x,), "sim-cache", 4, models=["step-quadratic", "flops"], calibration=1, store=store)
    assert not SimRuntime.sessions   # nothing is measured run by run
    blocks = SimRuntime.blocks
    assert all(m is model for m in blocks[:2]) and len(blocks) == 2 + 2 * 3 * len(res.rows)
    assert all((blocks[k] is model) != (blocks[k + 1] is model) for k in range(2, len(blocks), 2))
    rt, space = SimRuntime("flops", 8), PruningSpace(model, (x,))
    full = rt.module_ms(model, (x,))
    assert res.reference_ms == pytest.approx(full, rel=1e-9)
    biased = 0
    for row in res.rows:
        net = build(space, {int(g): tuple(k) for g, k in row.widths.items()})
        truth = rt.module_ms(net, (x,)) * bias(net) / full
        assert row.ratio == pytest.approx(truth, rel=1e-9) and row.ratio_lo <= row.ratio <= row.ratio_hi
        assert row.measured_ms == pytest.approx(row.ratio * res.reference_ms, rel=1e-9)
        assert row.sure and row.rounds == 3 and row.drift_rel == 0.0
        interleaved = [t.median_ms for t in SimRuntime("flops", 8, interleave=0.08).measure_modules_interleaved(
            [net, model], (x,))]
        if truth < 1:   # run by run, the smaller of the two reads 8 % slow and the bias is not seen
            assert interleaved[0] / interleaved[1] == pytest.approx(1.08 * truth / bias(net), rel=1e-9)
        biased += bias(net) > 1
    assert biased and res.drift_rel == 0.0 and res.warnings == () and res.unsure == 0
    d = json.loads(json.dumps(res.to_dict()))
    assert d["warnings"] == [] and d["ratio_cap"]["max_rounds"] == 6 and d["tolerance"] == 0.04
    assert {"ratio_lo", "ratio_hi", "sure", "rounds", "drift_rel"} <= set(d["rows"][0])
    again = rescore(d, model, (x,), store)   # nothing measured; the intervals kept
    assert [(r.ratio_lo, r.ratio_hi, r.sure) for r in again.rows] == [(r.ratio_lo, r.ratio_hi, r.sure)
                                                                        for r in res.rows]


def test_validate_warns_when_the_host_drifts_more_than_the_tolerance(sim_devices, tmp_path, capsys):
    """The host slows by 3 % per whole-model measurement: the full network's
    blocks spread more than 4 % while a ratio is measured, --json and the text say so."""
    sim_devices.add("sim-drift", bound="flops", step=8, drift=3.0)
    sim_devices.add("sim-still", bound="flops", step=8)
    argv = ["validate", "--model", "resnet20", "--samples", "2", "--calibration", "0", "--models", "flops",
            "--store", str(tmp_path / "s.sqlite")]
    assert main(argv + ["--device", "sim-drift", "--json", "--out", str(tmp_path / "a")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["drift_rel"] > data["tolerance"] == 0.04
    assert max(r["drift_rel"] for r in data["rows"]) == data["drift_rel"]
    [warning] = data["warnings"]
    assert "drifted" in warning and f"up to {100 * data['drift_rel']:.0f} %" in warning
    assert all(r["ratio_lo"] <= r["ratio"] <= r["ratio_hi"] for r in data["rows"])
    assert main(argv + ["--device", "sim-drift", "--out", str(tmp_path / "b")]) == 0
    assert f"warning: {warning}" in capsys.readouterr().out
    assert main(argv + ["--device", "sim-still", "--json", "--out", str(tmp_path / "c")]) == 0
    still = json.loads(capsys.readouterr().out)
    assert still["warnings"] == [] and still["drift_rel"] == 0.0 and still["unsure"] == 0


# ---------------------------------------------------------------- real runs

@pytest.mark.slow
def test_validate_end_to_end_on_ort_cpu(capsys, tmp_path, shared_store):
    out = tmp_path / "v"
    code = main(["validate", "--device", "ort-cpu-1t", "--model", "resnet20", "--samples", "6",
                 "--calibration", "2", "--json", "--out", str(out), "--store", str(shared_store.path)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["scores"]) >= {"step-quadratic", "lookup", "flops", "forest"}
    assert [r["role"] for r in data["rows"]].count("validation") == 6
    assert data["whole_model_measurements"] == 1 + 3 + 2   # full, uniform thirds, random
    # a full table of every grid pair is at least what the quadratic measured (on a 16-channel grid,
    # resnet20's narrow families are measured at every pair)
    assert data["full_grid_measurements"] >= data["layer_measurements"] > 0
    step = data["scores"]["step-quadratic"]
    assert step["count"] == 6 and step["rmspe_pct"] < 25   # a ratio of latencies measured in this run
    assert (out / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "validation.json").read_text())["samples"] == 6


@pytest.mark.slow
def test_validate_takes_a_model_file(capsys, tmp_path, shared_store):
    """A model outside the zoo, from a file (a pickled module, so --trust-pickle)."""
    model, x = archs.create("concat", size=16)
    path = tmp_path / "concat.pt"
    torch.save(model, path)
    out = tmp_path / "v"
    code = main(["validate", "--device", "ort-cpu-1t", "--model", str(path), "--trust-pickle",
                 "--input-shape", "1,3,16,16", "--samples", "3",
                 "--calibration", "1", "--models", "step-quadratic", "flops", "--json", "--out", str(out),
                 "--store", str(shared_store.path)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["scores"]) == {"step-quadratic", "flops"} and data["model"] == str(path)
    assert all(r["measured_ms"] > 0 for r in data["rows"])


def test_validate_draws_and_fits_on_the_grid_measured_here(sim_devices, store):
    """The descriptor says 8 channels, the device is flat in blocks of 16: by
    default validate measures the grid as the engine does and every
    sub-network's widths are multiples of 16; a grid given overrides it."""
    from hwprune import zoo
    from hwprune.latency.grid import Grid
    from hwprune.latency.validate import validate
    model, x = zoo.create("resnet20")
    sim_devices.add("sim-grid", bound="flops", step=16)
    kw = dict(models=["step-quadratic"], calibration=0, store=store)
    res = validate(model, (x,), "sim-grid", 4, **kw)
    assert all(w % 16 == 0 or w == 8 for r in res.rows for k in r.widths.values() for w in k)  # 8: the minimum
    grid = Grid("sim-grid", 8, 8, "user", "test")
    widths = [w for r in validate(model, (x,), "sim-grid", 4, grid=grid, **kw).rows for k in r.widths.values()
              for w in k]
    assert any(w % 16 and w > 8 for w in widths)


def test_validate_cli_takes_a_grid(sim_devices, store, capsys, tmp_path):
    sim_devices.add("sim-grid", bound="flops", step=16)
    args = ["validate", "--device", "sim-grid", "--model", "resnet20", "--samples", "3", "--calibration", "0",
            "--models", "step-quadratic", "--json", "--out", str(tmp_path / "v"), "--store", str(store.path)]
    assert main([*args, "--grid", "8"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert any(w % 16 and w > 8 for r in rows for k in r["widths"].values() for w in k)
    with pytest.raises(SystemExit) as e:
        main([*args, "--grid", "0"])
    assert e.value.code == 2 and "not a positive number of channels" in capsys.readouterr().err
