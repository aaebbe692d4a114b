"""The one writer of a pruned model's folder (prune, fine-tuning, demo) and the one .npz reader."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hwprune import UserError, zoo
from hwprune.export.data import load_data
from hwprune.export.pruned import export_pruned, write_pruned
from hwprune.graph.plans import load_model, plan_fingerprint
from hwprune.graph.space import PruningSpace
from hwprune.graph.surgery import apply_kept
from hwprune.train.job import FinetuneJob, finetune_model


def _pruned():
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    kept = {g.gid: list(range(0, g.size, 2)) for g in space.groups}
    from hwprune.loop.engine import make_plan
    plan = {**make_plan(space, kept, "ort-cpu-1t", 1.0), "fingerprint": plan_fingerprint(space)}
    return apply_kept(space, kept), x, plan


def _outputs_match(folder, name, pruned, x):
    loaded = load_model(str(folder / name))
    with torch.no_grad():
        return torch.equal(loaded.model(x), pruned(x))


def test_the_folder_rebuilds_the_model_and_replaces_only_its_files_or_the_whole_folder(tmp_path):
    pruned, x, plan = _pruned()
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("kept")
    export = export_pruned(pruned, x, plan=plan, zoo_name="resnet20", num_classes=10)
    assert export.parity.max_rel_diff <= 1e-4
    paths = write_pruned(out, export, {"result.json": json.dumps({"a": 1})})
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt", "plan.json", "report.md",
                                                     "result.json"]
    assert paths["model.pt"] == out / "model.pt"
    assert json.loads((out / "plan.json").read_text()) == plan
    assert _outputs_match(out, "model.pt", pruned, x)
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input0": x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, pruned(x).numpy(), rtol=1e-4, atol=1e-4)
    # without the plan file, into a fresh folder that replaces the old one whole
    write_pruned(out, export_pruned(pruned, x, plan=plan, zoo_name="resnet20", num_classes=10, plan_file=False),
                 replace_folder=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt"]
    with pytest.raises(UserError, match="not a folder"):
        write_pruned(out / "model.pt", export, replace_folder=True)


def test_finetuning_writes_through_the_same_writer_and_its_state_loads_as_the_model(tmp_path):
    pruned, x, plan = _pruned()
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.normal(size=(40, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 40))
    out = tmp_path / "out"
    out.mkdir()
    (out / "plan.json").write_text("{}")   # the prune run's plan stays as it is
    job = FinetuneJob(data=str(data), epochs=1, kd=False, batch_size=16, train_device="cpu")
    res = finetune_model(pruned, None, x, job, out, zoo_name="resnet20", num_classes=10, plan=plan)
    assert sorted(p.name for p in out.iterdir()) == ["finetune-state.pt", "finetune.json", "model.onnx",
                                                     "model.pt", "plan.json"]
    assert (out / "plan.json").read_text() == "{}"
    assert json.loads((out / "finetune.json").read_text())["onnx_max_abs_diff"] == res["onnx_max_abs_diff"]
    for name in ("model.pt", "finetune-state.pt"):   # one checkpoint format
        assert _outputs_match(out, name, pruned, x), name


def test_export_data_refuses_negative_labels_as_fine_tuning_does(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 8, 8), np.float32), y=np.array([0, -1]))
    with pytest.raises(UserError, match="y in d.npz: label -1 is negative"):
        load_data(str(tmp_path / "d.npz"), torch.zeros(1, 3, 8, 8))
    with pytest.raises(UserError, match="y in d.npz: label -1 is negative"):
        from hwprune.datasets import load_loaders
        load_loaders(str(tmp_path / "d.npz"), torch.zeros(1, 3, 8, 8))
