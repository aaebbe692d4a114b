"""The one registry mechanism (profilers.registry) and the five registries built on it."""
import importlib.util
import sys
from pathlib import Path

import pytest
from devices_listing import devices_listing

import latency_models
import profilers
from hwprune import zoo
from hwprune.cli.main import main
from hwprune.errors import UnknownNameError, UserError
from hwprune.importance.criteria import CRITERIA
from hwprune.select.selectors import SELECTORS
from profilers.registry import Registry, UnknownName

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the mechanism

def test_register_create_get_and_list_with_wildcards():
    reg = Registry("shape")
    reg.register("box-small", lambda n: ("box", n), sides=4)

    @reg.register("box-large", sides=4)
    def large(n, scale=1):
        return "large", n * scale

    assert reg.register("circle", dict) is dict
    assert large(2) == ("large", 2)                     # the decorator returns what it decorates
    assert reg.list() == ["box-large", "box-small", "circle"] == list(reg)
    assert reg.list("box-*") == ["box-large", "box-small"]
    assert reg.list("*-s?all") == ["box-small"] and reg.list("cube*") == []
    assert reg.create("box-large", 3, scale=2) == ("large", 6)
    assert reg.get("box-large") is large
    assert reg.metadata("box-small") == {"sides": 4} and reg.metadata("circle") == {}
    with pytest.raises(TypeError):
        reg.metadata("box-small")["sides"] = 5         # metadata is read-only
    assert "circle" in reg and "square" not in reg and len(reg) == 3
    assert reg.check("circle") == "circle"


def test_registration_order_is_kept_where_asked_and_a_name_is_replaced():
    reg = Registry("step", sort=False)
    for name in ("zeta", "alpha", "mu"):
        reg.register(name, name.upper)
    assert reg.list() == ["zeta", "alpha", "mu"] and reg.list("*a") == ["zeta", "alpha"]
    reg.register("alpha", str.lower)
    assert reg.get("alpha") is str.lower and reg.list() == ["zeta", "alpha", "mu"]


def test_an_unknown_name_is_a_key_error_listing_the_known_names():
    reg = Registry("colour")
    reg.register("red", 1)
    reg.register("blue", 2)
    for call in (reg.get, reg.create, reg.metadata, reg.check):
        with pytest.raises(UnknownName) as e:
            call("green")
        assert isinstance(e.value, KeyError)
        assert str(e.value) == "unknown colour 'green'; choose one of blue, red"   # not quoted as KeyError's
        assert e.value.name == "green" and e.value.known == ("blue", "red")
    with pytest.raises(UnknownName, match="no colour is registered"):
        Registry("colour").get("red")
    with pytest.raises(UnknownNameError) as e:   # hwprune's registries: a UserError too
        Registry("selector", error=UnknownNameError).get("best")
    assert isinstance(e.value, UserError) and isinstance(e.value, KeyError)


def test_lazy_entries_are_imported_only_when_used(tmp_path, monkeypatch):
    (tmp_path / "registry_lazy_probe.py").write_text("class Thing:\n    def __init__(self, n):\n"
                                                     "        self.n = n\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "registry_lazy_probe", raising=False)
    reg = Registry("thing")
    reg.register("probe", "registry_lazy_probe:Thing", kind="test")
    reg.register("absent", "registry_no_such_module:Thing")
    assert reg.list() == ["absent", "probe"] and "probe" in reg and reg.metadata("probe") == {"kind": "test"}
    assert reg.entry("probe").lazy
    assert "registry_lazy_probe" not in sys.modules
    assert reg.create("probe", 3).n == 3
    assert "registry_lazy_probe" in sys.modules
    with pytest.raises(ImportError):
        reg.get("absent")
    with pytest.raises(ValueError, match="module:attr"):
        reg.register("bad", "not a reference")


def test_registered_swaps_an_entry_for_a_block_and_restores_it():
    reg = Registry("runtime")
    reg.register("cpu", "profilers.torch_cpu:TorchCpuRuntime", requires=("torch",))
    with reg.registered("cpu", dict, requires=()), reg.registered("sim", list) as obj:
        assert obj is list and reg.get("cpu") is dict and reg.list() == ["cpu", "sim"]
    assert reg.list() == ["cpu"] and reg.metadata("cpu") == {"requires": ("torch",)}
    with pytest.raises(RuntimeError), reg.registered("sim", list):
        raise RuntimeError("restored even so")
    assert "sim" not in reg


def test_the_cli_prints_an_unknown_runtime_as_one_error_line(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "devices"
    folder.mkdir()
    (folder / "warp.toml").write_text('name = "warp"\nruntime = "warp-drive"\n')
    monkeypatch.setenv("HWPRUNE_DEVICES_DIR", str(folder))
    code = main(["profile", "--device", "warp", "--model", "resnet20", "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: unknown runtime 'warp-drive'; choose one of ") and "ort-cpu" in err[0]


# ---------------------------------------------------------------- the five registries

def test_every_registry_lists_its_names():
    assert profilers.RUNTIMES.list() == profilers.list_runtimes() == \
        ["executorch-xnnpack", "openvino-cpu", "ort-cpu", "remote", "tensorrt", "torch-cpu", "torch-cuda"]
    assert latency_models.MODELS.list() == latency_models.list_models() == \
        ["quadratic-m6", "quadratic-m5", "step-quadratic", "lookup", "flops", "params", "forest", "gbrt"]
    assert CRITERIA.list() == ["l1", "l2", "bn-scale", "taylor", "cpmc", "ccp", "dcp"]
    assert SELECTORS.list() == ["greedy", "knapsack", "qcqp"]
    assert zoo.ZOO.list() == zoo.list_models() == \
        ["concatnet", "groupednet", "invresnet", "mobilenetv2", "resnet18", "resnet20", "resnet50", "resnet56",
         "vgg16"]
    for reg in (CRITERIA, SELECTORS, zoo.ZOO):   # hwprune's: an unknown name is a UserError
        with pytest.raises(UserError, match=f"unknown {reg.kind} 'nope'; choose one of {reg.list()[0]}"):
            reg.get("nope")


def test_every_entry_resolves_with_its_metadata():
    for kind in profilers.RUNTIMES:   # the classes, not instances: nothing runs, tensorrt is not imported
        assert profilers.RUNTIMES.get(kind).kind == kind
    for name in latency_models.MODELS:
        meta = latency_models.MODELS.metadata(name)
        assert meta["description"] and isinstance(latency_models.create(name), latency_models.LayerModel)
    for name in CRITERIA:
        meta = CRITERIA.metadata(name)
        assert callable(CRITERIA.get(name)) and isinstance(meta["needs_data"], bool) and meta["help"]
    for name in SELECTORS:
        assert callable(SELECTORS.get(name)) and SELECTORS.metadata(name)["objective"]
    for name in zoo.ZOO:
        e = zoo.entry(name)
        assert len(e.input_shape) == 4 and e.num_classes in (10, 1000) and callable(e.build)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here: listing devices opens it to fingerprint the GPU")
def test_hwprune_devices_does_not_import_tensorrt(tmp_path):
    """Listing devices opens each runtime to say whether it runs here; with the
    tensorrt package absent, neither it nor the TensorRT runtime's module (and
    the CUDA code that module imports) is imported."""
    devices, rc, modules = devices_listing(tmp_path / "s.sqlite", lambda m: m.split(".")[0] == "tensorrt"
                                           or m == "profilers.tensorrt_rt")
    assert (rc, modules) == (0, [])
    trt = [d for d in devices if d["runtime"] == "tensorrt"]
    assert trt and all(not d["available"] and "needs the package 'tensorrt'" in d["reason"] for d in trt)
