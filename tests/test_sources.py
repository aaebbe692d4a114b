"""Models named torchvision:NAME / timm:NAME, plans that know their input, and ONNX export of
adaptive pools the exporter refuses."""
from __future__ import annotations

import builtins
import json

import pytest
import torch
from torch import nn

from hwprune import UserError, apply_plan, sources
from hwprune.export.onnx import onnx_bytes_checked
from hwprune.export.parity import ExportError, check_parity
from hwprune.export.pruned import export_pruned, write_pruned
from hwprune.graph.plans import load_model
from hwprune.graph.space import PruningSpace
from hwprune.graph.surgery import apply_kept
from hwprune.loop.engine import make_plan


def _half(space):
    return {g.gid: list(range(0, g.size, 2)) for g in space.groups}


@pytest.mark.parametrize("spec,classes", [("torchvision:resnet18", 1000), ("timm:convnext_atto", 1000)])
def test_named_models_load_with_random_weights_at_the_given_size(spec, classes):
    lm = load_model(spec, (1, 3, 64, 64))
    assert tuple(lm.example_input.shape) == (1, 3, 64, 64) and lm.num_classes == classes
    assert lm.model_source == spec and lm.source == spec and not lm.model.training
    with torch.no_grad():
        assert lm.model(lm.example_input).shape == (1, classes)
    again = load_model(spec, (1, 3, 64, 64))   # seeded: the same random weights each time
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(), again.model.state_dict().values()))


def test_default_input_sizes_are_the_models_own():
    assert sources.default_input_shape("torchvision:resnet18") == (1, 3, 224, 224)
    assert sources.default_input_shape("torchvision:inception_v3") == (1, 3, 299, 299)
    assert sources.default_input_shape("timm:convnext_atto") == (1, 3, 224, 224)
    assert sources.default_input_shape("timm:inception_v3") == (1, 3, 299, 299)
    lm = load_model("timm:convnext_atto")
    assert tuple(lm.example_input.shape) == (1, 3, 224, 224)


def test_googlenet_and_inception_build_without_aux_heads():
    model = sources.build("torchvision:googlenet")
    assert model.aux_logits is False and model.aux1 is None


@pytest.mark.parametrize("spec,close", [("torchvision:resnet19", "torchvision:resnet18"),
                                        ("timm:convnext_atoo", "timm:convnext_atto")])
def test_unknown_names_list_close_matches_and_how_to_list_them(spec, close):
    with pytest.raises(UserError, match="unknown") as e:
        load_model(spec)
    assert close in str(e.value) and "list_models" in str(e.value)


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_a_missing_package_says_which_extra_to_install(monkeypatch, package):
    real = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == package or name.startswith(package + "."):
            raise ImportError(f"No module named '{package}'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    monkeypatch.setattr(sources.importlib, "import_module", lambda name: refuse(name))
    with pytest.raises(UserError, match=rf"pip install 'hwprune\[{package}\]'"):
        load_model(f"{package}:resnet18")


def test_a_pruned_torchvision_model_reloads_from_its_folder(tmp_path):
    lm = load_model("torchvision:resnet18", (1, 3, 32, 32))
    space = PruningSpace(lm.model, (lm.example_input,))
    pruned = apply_kept(space, _half(space))
    for p in pruned.parameters():   # other weights than a fresh build's
        p.data.add_(0.01)
    plan = make_plan(space, _half(space), "ort-cpu-1t", None)
    assert plan["input_shapes"] == [[1, 3, 32, 32]] and plan["input_dtypes"] == ["float32"]
    export = export_pruned(pruned, lm.example_input, plan=plan, source=lm.model_source, num_classes=lm.num_classes)
    write_pruned(tmp_path / "out", export)
    ckpt = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert ckpt["source"] == "torchvision:resnet18" and ckpt["zoo"] is None
    loaded = load_model(str(tmp_path / "out"))      # no --input-shape: the plan's
    assert tuple(loaded.example_input.shape) == (1, 3, 32, 32) and loaded.model_source == "torchvision:resnet18"
    probe = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(probe), pruned.eval()(probe))


def test_old_checkpoints_with_a_zoo_key_still_load_and_unnamed_ones_say_why(tmp_path):
    from hwprune import zoo
    model, x = zoo.create("resnet20")
    torch.save({"zoo": "resnet20", "num_classes": 10, "plan": None, "state_dict": model.state_dict()},
               tmp_path / "old.pt")
    with torch.no_grad():
        assert torch.equal(load_model(str(tmp_path / "old.pt")).model(x), model(x))
    torch.save({"zoo": None, "num_classes": None, "plan": None, "state_dict": model.state_dict()},
               tmp_path / "anon.pt")
    with pytest.raises(UserError, match="does not record which model"):
        load_model(str(tmp_path / "anon.pt"))


def test_apply_plan_needs_no_example_inputs_when_the_plan_records_them():
    from hwprune import zoo
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, (x,))
    pruned = apply_kept(space, _half(space))
    plan = json.loads(json.dumps(make_plan(space, _half(space), "ort-cpu-1t", None)))
    rebuilt = apply_plan(zoo.create("resnet20")[0], plan)
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))
    del plan["input_shapes"], plan["input_dtypes"]   # an older plan
    with pytest.raises(UserError, match="pass example_inputs"):
        apply_plan(zoo.create("resnet20")[0], plan)
    assert apply_plan(zoo.create("resnet20")[0], plan, (x,)) is not None


def _small_head(model, features: int):
    model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(features, 10))   # keep the test small
    return model.eval()


@pytest.mark.parametrize("name,features", [("alexnet", 256 * 6 * 6), ("vgg11_bn", 512 * 7 * 7)])
def test_torchvision_adaptive_pools_export_at_small_inputs(name, features):
    model = _small_head(sources.build(f"torchvision:{name}"), features)
    x = torch.randn(1, 3, 64, 64)   # a 1x1 (alexnet) or 2x2 (vgg) map pooled to 6x6 / 7x7
    data = onnx_bytes_checked(model, (x,))
    assert check_parity(model, (x,), data, more_inputs=[torch.randn(1, 3, 64, 64)]).max_rel_diff <= 1e-5


@pytest.mark.parametrize("hw", [(2, 2), (3, 3), (3, 5), (14, 14)])
@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d((7, 7)), nn.AdaptiveMaxPool2d((7, 4)),
                                  nn.AdaptiveAvgPool2d((None, 5))])
def test_adaptive_pools_export_exactly_at_any_size(hw, pool, capfd):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), pool, nn.Flatten()).eval()
    x = torch.randn(2, 3, *hw)
    data = onnx_bytes_checked(model, (x,))
    assert check_parity(model, (x,), data).max_abs_diff <= 1e-6
    assert isinstance(model[1], type(pool))   # the caller's model is left alone
    assert capfd.readouterr().out == ""


def test_a_functional_adaptive_pool_is_one_line_naming_the_operator(capfd):
    class Functional(nn.Module):
        def forward(self, x):
            return nn.functional.adaptive_avg_pool2d(x, 7)

    with pytest.raises(ExportError, match="operator adaptive_avg_pool2d .*does not divide") as e:
        onnx_bytes_checked(Functional(), (torch.randn(1, 2, 3, 3),))
    assert "\n" not in str(e.value)
    out, err = capfd.readouterr()
    assert "graph" not in out and "graph" not in err   # no dump of the exporter's graph


def test_prune_a_torchvision_model_by_name_on_the_command_line(capsys, tmp_path, sim_devices):
    from hwprune.cli.main import main
    sim_devices.add("sim-flops", bound="flops")
    out = tmp_path / "out"
    code = main(["prune", "--model", "torchvision:resnet18", "--input-shape", "1,3,64,64", "--device", "sim-flops",
                 "--max-flops", "60M", "--out", str(out), "--json", "--store", str(tmp_path / "s.sqlite")])
    text, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(text)
    assert data["model"] == "torchvision:resnet18" and data["flops_after"] <= 60e6 < data["flops_before"]
    loaded = load_model(str(out))
    assert tuple(loaded.example_input.shape) == (1, 3, 64, 64)
    assert sum(p.numel() for p in loaded.model.parameters()) == data["params_after"]
