"""ExecuTorch (XNNPACK) and OpenVINO: measured like every runtime, outputs equal
to PyTorch's, lazily imported, and a missing package is one error naming the extra."""
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from devices_listing import devices_listing
from torch import nn

from profilers import LayerSpec, Protocol, RuntimeUnavailable, create_runtime, fingerprint_key
from profilers.onnx_export import feeds, to_onnx_bytes

ROOT = Path(__file__).resolve().parent.parent
FAST = Protocol(warmup_runs=3, warmup_s=0.01, min_runs=10, max_runs=60, max_s=0.3, target_rel=0.05)
PACKAGES = {"executorch-xnnpack": "executorch", "openvino-cpu": "openvino"}


def net(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=sorted(PACKAGES))
def runtime(request):
    return create_runtime(request.param, threads=1)


def outputs(rt, model, x):
    if rt.kind == "executorch-xnnpack":
        return rt.run(rt.program_of(model, x), x)[0].numpy()
    return rt.run(to_onnx_bytes(model, x), feeds(x))[0]


def test_outputs_equal_pytorch(runtime):
    m = net()
    with torch.no_grad():
        want = m(X).numpy()
    got = outputs(runtime, m, X)
    assert got.shape == want.shape
    assert abs(got - want).max() <= 1e-5 * abs(want).max()


def test_measures_a_model_and_a_layer_with_sane_numbers(runtime):
    t = runtime.measure_module(net(), X, protocol=FAST)
    assert 0 < t.median_ms < 1000 and t.runs >= FAST.min_runs and t.iqr_ms >= 0
    spec = LayerSpec("conv", 16, 32, kernel=(3, 3), padding=(1, 1), height=16, width=16)
    assert runtime.measure_spec(spec, protocol=FAST).median_ms > 0


def test_a_wider_network_takes_longer(runtime):
    thin, wide = runtime.measure_modules_interleaved([net(8), net(128)], X, protocol=FAST)
    assert wide.median_ms > 1.5 * thin.median_ms


def test_fingerprint_is_keyed_by_runtime_and_version(runtime):
    fp = runtime.fingerprint()
    assert fp["runtime"] == runtime.kind and fp["threads"] == 1 and fp["dtype"] == "fp32"
    assert fp["version"] == importlib.metadata.version(PACKAGES[runtime.kind])
    other = create_runtime(runtime.kind, threads=1)
    other.version = "0.0.0"
    assert fingerprint_key(other.fingerprint()) != fingerprint_key(fp)
    assert fingerprint_key(create_runtime(runtime.kind, threads=2).fingerprint()) != fingerprint_key(fp)


def test_one_thread_computes_on_the_calling_thread(runtime):
    """What the thread clock relies on: with threads=1 the process spends no
    CPU time outside the calling thread while the model runs."""
    m = net(64)
    if runtime.kind == "executorch-xnnpack":
        from profilers.executorch_rt import LoadedProgram
        data = runtime.program_of(m, X)
        with runtime.pinned():
            run = LoadedProgram(data, (X,))
            cpu, own = time.process_time(), time.thread_time()
            for _ in range(40):
                run()
            cpu, own = time.process_time() - cpu, time.thread_time() - own
    else:
        run = runtime.runner(to_onnx_bytes(m, X), feeds(X))
        cpu, own = time.process_time(), time.thread_time()
        for _ in range(40):
            run()
        cpu, own = time.process_time() - cpu, time.thread_time() - own
    assert own > 0.85 * cpu


def test_executorch_caches_the_lowered_program_per_model():
    rt = create_runtime("executorch-xnnpack")
    m = net()
    first = rt.program_of(m, X)
    assert rt.program_of(m, X) is first                 # same module, same shapes: not lowered again
    assert rt.program_of(m, torch.randn(1, 3, 16, 16)) is not first
    assert first[4:6] == b"ET"


def test_executorch_refuses_what_is_not_a_program():
    from profilers.executorch_rt import LoadedProgram, is_pte
    assert not is_pte(b"PK\x03\x04 not a program") and not is_pte(b"")
    with pytest.raises(ValueError, match="not an ExecuTorch program"):
        LoadedProgram(b"\x00" * 64, (X,))


@pytest.mark.parametrize("kind,extra", sorted(PACKAGES.items()))
def test_missing_package_names_the_extra(monkeypatch, kind, extra):
    from hwprune import devices
    from hwprune.errors import UserError
    monkeypatch.setitem(sys.modules, extra, None)
    with pytest.raises(RuntimeUnavailable, match=rf"pip install 'hwprune\[{extra}\]'"):
        create_runtime(kind)
    name = {"executorch": "executorch-xnnpack-1t", "openvino": "openvino-cpu-1t"}[extra]
    with pytest.raises(UserError, match=rf"{name}.*hwprune\[{extra}\]"):
        devices.get(name).open()


def test_missing_package_is_one_error_line_in_the_cli(monkeypatch, capsys, tmp_path):
    from hwprune.cli.main import main
    monkeypatch.setitem(sys.modules, "openvino", None)
    code = main(["prune", "--device", "openvino-cpu-1t", "--model", "resnet20", "--budget-ms", "1",
                 "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "pip install 'hwprune[openvino]'" in lines[0]


def test_devices_lists_them_without_importing_them(tmp_path):
    found, rc, modules = devices_listing(tmp_path / "s.sqlite",
                                         lambda m: m.split(".")[0] in ("executorch", "openvino"))
    assert (rc, modules) == (0, [])
    names = {d["name"]: d for d in found}
    for name in ("executorch-xnnpack-1t", "executorch-xnnpack-2t", "openvino-cpu-1t", "openvino-cpu-2t"):
        assert names[name]["available"], names[name]["reason"]


def test_thread_clock_applies_to_their_one_thread_devices():
    from hwprune import devices
    from hwprune.latency.profiling import device_clock
    assert device_clock(devices.get("executorch-xnnpack-1t")) == "thread"
    assert device_clock(devices.get("openvino-cpu-1t")) == "thread"
    assert device_clock(devices.get("openvino-cpu-2t")) == "wall"
    assert device_clock(devices.get("executorch-xnnpack-2t")) == "wall"


# -- pruning end to end ------------------------------------------------------------------

def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("device,grid", [("openvino-cpu-1t", 16),
                                         # ExecuTorch lowers each layer shape and network (~1 s each): on the
                                         # 16-channel grid (30 layer shapes) this took 106 s, on 32 (9) it is
                                         # the same test at a third of the shapes
                                         pytest.param("executorch-xnnpack-1t", 32, marks=pytest.mark.slow)])
def test_prune_a_tiny_model_on_the_device(device, grid, store):
    import hwprune
    res = hwprune.prune(tiny(), X, device=device, budget_fraction=0.85, grid=grid, store=store)
    assert res.measured_ms <= 1.03 * res.budget_ms and res.baseline_ms > 0 and res.predicted_ms > 0
    with torch.no_grad():
        assert res.model(X).shape == (1, 10)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["openvino-cpu-1t"])  # ExecuTorch: the API run above (lowering every
def test_cli_prunes_resnet20_on_the_device(device, tmp_path, capsys):  # shape of resnet20 takes minutes)
    from hwprune.cli.main import main
    out = tmp_path / "pruned"
    code = main(["prune", "--device", device, "--model", "resnet20", "--budget-ms", "80%", "--json",
                 "--out", str(out), "--store", str(tmp_path / "s.sqlite")])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["device"] == device and data["measured_ms"] <= 1.03 * data["budget_ms"]
    assert (out / "model.pt").exists() and (out / "plan.json").exists()
