"""Runtimes beyond ONNX Runtime: PyTorch CPU, PyTorch CUDA, TensorRT, and the
trtexec profile reader. GPU and TensorRT tests run only where those exist; the
errors a user gets where they do not are tested everywhere."""
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import profilers
from profilers import LayerSpec, Protocol, RuntimeUnavailable, Timing, create_runtime
from profilers.torch_cpu import TorchCpuRuntime
from profilers.torch_layers import layer_input, layer_module
from profilers.trtexec_import import import_profile, read_profile

DATA = Path(__file__).parent / "data"
DEVICES = Path(__file__).resolve().parent.parent / "devices"
FAST = Protocol(warmup_runs=3, warmup_s=0.01, min_runs=10, max_runs=60, max_s=0.3, target_rel=0.05)
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here")

CONV = LayerSpec("conv", 16, 32, kernel=(3, 3), padding=(1, 1), height=16, width=16)
DW = LayerSpec("conv", 32, 32, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=32, height=16, width=16)
DILATED = LayerSpec("conv", 8, 8, kernel=(3, 3), padding=(2, 2), dilation=(2, 2), height=12, width=10)
LINEAR = LayerSpec("linear", 64, 10, batch=4)


def small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


# -- layer modules -----------------------------------------------------------------------

@pytest.mark.parametrize("spec", [CONV, DW, DILATED, LINEAR])
def test_layer_module_matches_spec_shape(spec):
    x = layer_input(spec)
    with torch.no_grad():
        y = layer_module(spec)(x)
    if spec.kind == "conv":
        assert tuple(y.shape) == (spec.batch, spec.out_channels, *spec.out_hw)
        assert (y >= 0).all()  # the ReLU is part of the layer
    else:
        assert tuple(y.shape) == (spec.batch, spec.out_channels)


def test_layer_module_rejects_bad_specs():
    with pytest.raises(ValueError):
        layer_module(LayerSpec("pool", 4, 4))
    with pytest.raises(ValueError):
        layer_module(LayerSpec("conv", 6, 8, groups=4))


# -- torch-cpu ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [CONV, DW, LINEAR], ids=["conv", "depthwise", "linear"])
def test_torch_cpu_measures_specs(spec):
    t = TorchCpuRuntime(threads=1).measure_spec(spec, FAST)
    assert isinstance(t, Timing) and t.median_ms > 0 and t.runs >= FAST.min_runs


def test_torch_cpu_module_and_caller_model_untouched():
    model, x = small_net(), torch.randn(1, 3, 16, 16)
    weight = model[0].weight
    t = create_runtime("torch-cpu", threads=1).measure_module(model, x, FAST)
    assert t.median_ms > 0
    assert model[0].weight is weight and weight.is_contiguous()  # measured a copy
    assert not model.training


def test_torch_cpu_wider_conv_costs_more():
    x = torch.randn(1, 64, 56, 56)
    narrow, wide = (layer_module(LayerSpec("conv", 64, n, kernel=(3, 3), padding=(1, 1), height=56,
                                           width=56)) for n in (16, 64))
    t16, t64 = TorchCpuRuntime(threads=1).measure_modules_interleaved([narrow, wide], x, FAST)
    assert t64.median_ms > 1.3 * t16.median_ms, (t16, t64)


def test_torch_cpu_interleaved_one_timing_per_model():
    models = [small_net() for _ in range(3)]
    out = TorchCpuRuntime().measure_modules_interleaved(models, torch.randn(1, 3, 8, 8), FAST)
    assert len(out) == 3 and all(isinstance(t, Timing) and t.median_ms > 0 for t in out)


class ThreadSpy(nn.Module):
    """Reports the conditions its forward pass runs under (the callback
    survives the runtime's deep copy of the module)."""

    def __init__(self, record):
        super().__init__()
        self.record = record

    def forward(self, x):
        self.record((torch.get_num_threads(), torch.is_inference_mode_enabled(),
                     x.is_contiguous(memory_format=torch.channels_last)))
        return x + 1


def test_torch_cpu_pins_threads_then_restores_them():
    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    seen = set()
    TorchCpuRuntime(threads=want).measure_module(ThreadSpy(lambda item: seen.add(item)),
                                                 torch.randn(1, 2, 4, 4), FAST)
    assert seen == {(want, True, True)}
    assert torch.get_num_threads() == before


def test_torch_cpu_fingerprint_and_options():
    fp = TorchCpuRuntime(threads=1, channels_last=False).fingerprint()
    assert fp["runtime"] == "torch-cpu" and fp["threads"] == 1 and fp["dtype"] == "fp32"
    assert fp["version"] == torch.__version__ and fp["memory_format"] == "contiguous" and fp["cpu"]
    with pytest.raises(ValueError):
        TorchCpuRuntime(threads=0)


def test_device_descriptors_load():
    from hwprune import devices
    want = {"torch-cpu-1t": "torch-cpu", "torch-cuda-fp16": "torch-cuda",
            "torch-cuda-fp32": "torch-cuda", "tensorrt-fp16": "tensorrt"}
    for name, runtime in want.items():
        d = devices.load(DEVICES / f"{name}.toml")
        assert d.name == name and d.runtime == runtime and runtime in profilers.list_runtimes()
        assert d.step_channels >= 1 and d.min_channels >= 1
    assert isinstance(devices.load(DEVICES / "torch-cpu-1t.toml").open(), TorchCpuRuntime)


# -- torch-cuda --------------------------------------------------------------------------

def test_torch_cuda_without_gpu_is_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeUnavailable, match="torch-cuda needs an NVIDIA GPU"):
        create_runtime("torch-cuda", dtype="fp16")


def test_torch_cuda_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="dtype"):
        create_runtime("torch-cuda", dtype="int8")


def test_event_samples_use_protocol_statistics():
    from profilers.torch_cuda import timing_from_samples
    t = timing_from_samples([1.0, 2.0, 3.0, 4.0, 100.0] * 8, FAST)
    assert t.median_ms == 3.0 and t.runs == 40 and t.iqr_ms == 2.0 and not t.stable


@needs_cuda
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_torch_cuda_measures_specs_and_modules(dtype):
    rt = create_runtime("torch-cuda", dtype=dtype)
    for spec in (CONV, DW, LINEAR):
        assert rt.measure_spec(spec, FAST).median_ms > 0
    assert rt.measure_module(small_net(), torch.randn(1, 3, 16, 16), FAST).median_ms > 0
    fp = rt.fingerprint()
    assert fp["runtime"] == "torch-cuda" and fp["dtype"] == dtype and fp["gpu"]


@needs_cuda
def test_torch_cuda_graphs_and_interleaving():
    rt = create_runtime("torch-cuda", dtype="fp16", cuda_graphs=True)
    narrow, wide = (layer_module(LayerSpec("conv", 64, n, kernel=(3, 3), padding=(1, 1), height=56,
                                           width=56)) for n in (16, 1024))
    t16, t1024 = rt.measure_modules_interleaved([narrow, wide], torch.randn(1, 64, 56, 56), FAST)
    assert 0 < t16.median_ms < t1024.median_ms
    assert rt.measure_module(small_net(), torch.randn(1, 3, 16, 16), FAST).median_ms > 0


@needs_cuda
def test_torch_cuda_graph_replay_survives_freed_memory():
    """The graph reads the module's weights and inputs: the replay must keep them
    alive after ``prepare`` returns, or reused memory makes replays fault."""
    import gc
    rt = create_runtime("torch-cuda", dtype="fp32", cuda_graphs=True)
    net, x = small_net(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = net(x)
    replay = rt.prepare(net, x)
    gc.collect()
    torch.cuda.empty_cache()
    clobber = torch.full((64, 1 << 20), float("nan"), device="cuda")  # takes any freed block
    replay()
    torch.cuda.synchronize()
    got = replay.keep_alive[1].float().cpu()
    del clobber
    assert torch.allclose(got, want, rtol=1e-2, atol=1e-2)


# -- tensorrt ----------------------------------------------------------------------------

def test_tensorrt_missing_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeUnavailable, match="needs the package 'tensorrt'"):
        create_runtime("tensorrt")


def test_tensorrt_without_gpu_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeUnavailable, match="tensorrt needs an NVIDIA GPU"):
        create_runtime("tensorrt")


def test_tensorrt_device_reports_cannot_run(monkeypatch):
    from hwprune import devices
    from hwprune.errors import UserError
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError, match="tensorrt-fp16"):
        devices.load(DEVICES / "tensorrt-fp16.toml").open()


@needs_cuda
def test_tensorrt_measures_specs_and_modules():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    rt = create_runtime("tensorrt", fp16=True)
    assert rt.measure_spec(CONV, FAST).median_ms > 0
    assert rt.measure_spec(LINEAR, FAST).median_ms > 0
    x = torch.randn(1, 3, 16, 16)
    assert rt.measure_module(small_net(), x, FAST).median_ms > 0
    assert len(rt.measure_modules_interleaved([small_net(), small_net()], x, FAST)) == 2
    fp = rt.fingerprint()
    assert fp["runtime"] == "tensorrt" and fp["dtype"] == "fp16" and fp["version"]


# -- trtexec profiles --------------------------------------------------------------------

def test_trtexec_sample_profile():
    prof = read_profile(DATA / "trtexec_profile.json")
    assert prof.iterations == 2817 and len(prof.layers) == 25
    assert abs(sum(layer.percentage for layer in prof.layers) - 100.0) < 0.01
    assert all(layer.median_ms is not None and layer.median_ms <= layer.average_ms for layer in prof.layers)
    rows = import_profile(DATA / "trtexec_profile.json", "tensorrt-fp16")
    assert len(rows) == 25 and rows[1] == ("/conv1/Conv + /relu/Relu", prof.layers[1].median_ms)
    assert all(isinstance(n, str) and 0 < ms < 1 for n, ms in rows)


def test_trtexec_older_format_without_median(tmp_path):
    f = tmp_path / "old.json"
    f.write_text('[\n  { "count" : 10 }\n, { "name" : "conv", "timeMs" : 2.5, "averageMs" : 0.25, '
                 '"percentage" : 62.5 }\n, { "name" : "fc", "timeMs" : 1.5, "percentage" : 37.5 }\n]\n')
    prof = read_profile(f)
    assert [layer.median_ms for layer in prof.layers] == [None, None]
    assert import_profile(f, "board") == [("conv", 0.25), ("fc", 0.15)]


@pytest.mark.parametrize("text", [
    '[ { "count" : 3 }, { "name" : "a "quoted" layer", "timeMs" : 1 } ]',  # trtexec does not escape
    '[ { "count" : 3 }, { "name" : "conv", "timeMs" : nan } ]',
    json.dumps({"count": 3}),
    json.dumps([]),
    json.dumps([{"name": "conv", "averageMs": 0.1}]),
    json.dumps([{"count": 3}]),
    json.dumps([{"count": 3}, {"name": "conv", "averageMs": -1.0}]),
    json.dumps([{"count": 3}, {"averageMs": 0.1}]),
])
def test_trtexec_malformed_profile_names_the_file(tmp_path, text):
    f = tmp_path / "broken_prof.json"
    f.write_text(text)
    with pytest.raises(ValueError, match="broken_prof.json"):
        import_profile(f, "tensorrt-fp16")


def test_trtexec_missing_file_and_device(tmp_path):
    with pytest.raises(ValueError, match="nothing.json"):
        read_profile(tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="device"):
        import_profile(DATA / "trtexec_profile.json", "")
