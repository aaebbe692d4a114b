"""Removable residual blocks (hwprune.graph.blocks): found in any traceable model, removed by
surgery, recorded in plans and re-applied; the pruned network runs and exports with parity."""
import json

import pytest
import torch
from torch import nn

from hwprune import apply_plan, export_onnx, zoo
from hwprune.graph import blocks as gb
from hwprune.graph.blocks import attach_blocks, find_blocks, removed_paths, with_blocks
from hwprune.graph.space import PruningSpace, device_options
from hwprune.graph.surgery import apply_kept, check_widths
from hwprune.loop.engine import make_plan


class Plain(nn.Module):
    """A hand-written net: a residual block with layer scale and no activation after the add,
    a same-shape block that is not residual, and one whose shortcut is a conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.res = Res()
        self.plain = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.proj = Proj()
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.proj(self.plain(self.res(self.stem(x))))
        return self.head(x.mean((2, 3)))


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 24, 1)
        self.b = nn.Conv2d(24, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((16, 1, 1), 0.1))

    def forward(self, x):
        return x + self.gamma * self.b(torch.nn.functional.gelu(self.a(x)))


class Proj(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.short = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return torch.relu(self.a(x) + self.short(x))


def _paths(model, x):
    return [b.path for b in find_blocks(PruningSpace(model.eval(), (x,)))]


def test_zoo_resnet_blocks_are_every_block_but_the_first_of_a_stage_that_changes_shape():
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    blocks = find_blocks(space)
    assert [b.path for b in blocks] == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2",
                                        "layer3.1", "layer3.2"]
    b = blocks[0]
    assert {space.layers[i].name for i in b.layers} == {"layer1.0.conv1", "layer1.0.conv2"}
    assert len(b.groups) == 1 and space.groups[b.groups[0]].root == "layer1.0.conv1"  # the inner width
    assert _paths(*zoo.create("vgg16")) == []


def test_hand_written_blocks_need_an_identity_path():
    assert _paths(Plain(), torch.randn(1, 3, 16, 16)) == ["res"]


def test_a_block_whose_norm_has_no_affine_weights_and_trained_statistics_is_found():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Affineless(), nn.Flatten(), nn.Linear(8 * 64, 4))
    model[1].bn.running_mean.fill_(0.7)
    assert _paths(model, torch.randn(1, 3, 8, 8)) == ["1"]


class Affineless(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False)

    def forward(self, x):
        return x + self.bn(self.conv(x))


@pytest.mark.parametrize("name,count", [("resnet18", 5), ("resnet50", 12), ("mobilenet_v2", 10),
                                        ("efficientnet_b0", 9), ("convnext_tiny", 18), ("regnet_x_400mf", 18)])
def test_torchvision_families(name, count):
    import torchvision.models as tvm
    paths = _paths(getattr(tvm, name)(num_classes=10), torch.randn(1, 3, 64, 64))
    assert len(paths) == count
    assert not any(p.endswith(".0") and name.startswith("resnet") and "layer1" not in p for p in paths)


@pytest.mark.parametrize("name,count", [("resnet18d", 5), ("convnext_atto", 12), ("efficientnet_b0", 9)])
def test_timm_families_with_stochastic_depth_and_layer_scale(name, count):
    import timm
    model = timm.create_model(name, num_classes=10, drop_path_rate=0.2)
    assert len(_paths(model, torch.randn(1, 3, 64, 64))) == count


def _all_removed(space):
    opts = with_blocks(space, device_options(space, _Grid()), "both")
    return {k: v[0] if k < 0 else v[len(v) // 2] for k, v in opts.items()}


class _Grid:
    step_channels, min_channels, align_channels = 8, 8, 0


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_removing_every_block_runs_exports_and_reapplies_from_its_plan(name, tmp_path):
    model, x = zoo.create(name)
    space = attach_blocks(PruningSpace(model, x))
    choice = _all_removed(space)
    from hwprune.importance.criteria import compute
    from hwprune.select.evaluator import Evaluator
    ev = Evaluator(space, None, compute("l1", space))
    removed = removed_paths(space, choice)
    assert removed == [b.path for b in space.blocks] and removed
    pruned = apply_kept(space, ev.kept(choice), removed)
    check_widths(space, pruned, choice)
    assert all(isinstance(pruned.get_submodule(p), nn.Identity) for p in removed)
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in pruned.modules())
    assert n_layers == len(space.layers) - len(gb.dead_layers(space, choice)) == len(gb.live_specs(space, choice))
    assert gb.dead_groups(space, choice) == {g for b in space.blocks for g in b.groups}
    export_onnx(pruned, x, tmp_path / "m.onnx")  # checked against PyTorch with ONNX Runtime
    plan = json.loads(json.dumps(make_plan(space, ev.kept(choice), "ort-cpu-1t", 1.0, removed=removed)))
    fresh, _ = zoo.create(name, seed=5)
    rebuilt = apply_plan(fresh, plan)
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))


def test_a_channel_only_plan_is_unchanged_and_a_bad_block_is_refused():
    from hwprune.errors import UserError
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    kept = {g.gid: list(range(g.size)) for g in space.groups}
    plan = make_plan(space, kept, "ort-cpu-1t", 1.0)
    assert "removed_blocks" not in plan
    with pytest.raises(UserError, match="layer2.0"):
        apply_plan(model, {**plan, "removed_blocks": ["layer2.0"]})


@pytest.mark.parametrize("source", ["torchvision:resnet18", "timm:convnext_atto"])
def test_torchvision_and_timm_nets_without_their_blocks_export_and_reapply(source, tmp_path):
    from hwprune.sources import create
    model, _, _ = create(source, 10)
    x = torch.randn(1, 3, 64, 64)
    space = attach_blocks(PruningSpace(model.eval(), (x,)))
    choice = _all_removed(space)
    kept = {g.gid: list(range(sum(choice[g.gid]))) for g in space.groups if len(g.segments) == 1}
    if len(kept) != len(space.groups):
        pytest.skip("a group of several segments")
    removed = removed_paths(space, choice)
    pruned = apply_kept(space, kept, removed)
    check_widths(space, pruned, choice)
    export_onnx(pruned, x, tmp_path / "m.onnx")
    plan = json.loads(json.dumps(make_plan(space, kept, "ort-cpu-1t", 1.0, removed=removed)))
    rebuilt = apply_plan(create(source, 10)[0], plan)
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), pruned(x))
