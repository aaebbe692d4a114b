import json

import onnx
import pytest
import torch

import archs
from hwprune import UserError, apply_plan, export_onnx, zoo
from hwprune.graph import PruningSpace
from hwprune.modelio import checkpoint, load_model
from hwprune.surgery import apply_kept


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16", "mobilenetv2", "resnet18", "resnet50"])
def test_every_zoo_model_exports_and_matches_pytorch(name, tmp_path):
    model, x = zoo.create(name)
    path = export_onnx(model, x, tmp_path / f"{name}.onnx")
    onnx.checker.check_model(onnx.load(str(path)))
    assert not list(tmp_path.glob("*.data")), "export must be one self-contained file"


def _half(space):
    return {g.gid: list(range(0, g.size, 2)) for g in space.groups}


def test_checkpoint_round_trip_reproduces_outputs_exactly(tmp_path):
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    pruned = apply_kept(space, _half(space))
    from hwprune.engine import make_plan
    plan = make_plan(space, _half(space), "ort-cpu-1t", 1.0)
    torch.save(checkpoint(pruned, "resnet20", 10, plan), tmp_path / "model.pt")
    loaded = load_model(str(tmp_path / "model.pt"))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), pruned(x))
    assert json.loads(json.dumps(plan)) == plan  # JSON-serialisable


def test_plan_for_another_architecture_is_refused():
    m20, x = zoo.create("resnet20")
    space = PruningSpace(m20, x)
    from hwprune.engine import make_plan
    plan = make_plan(space, _half(space), "ort-cpu-1t", 1.0)
    m56, _ = zoo.create("resnet56")
    with pytest.raises(UserError, match="does not fit"):
        apply_plan(m56, plan, (x,))


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


def test_garbage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot read model file"):
        load_model(str(bad))
    with pytest.raises(UserError, match="unknown model"):
        load_model("resnet99")
