"""Removing blocks in the closed loop, on a simulated runtime that pays per operator: a budget
below the smallest channel-only network is reached with granularity both and refused under
granularity channel; the plan re-applies; block importance from weights and from data."""
import json

import pytest
import torch

import hwprune
from hwprune import zoo
from hwprune.errors import BelowSmallestError, UserError
from hwprune.graph.blocks import attach_blocks
from hwprune.graph.space import PruningSpace
from hwprune.importance.blocks import skip_losses, weight_block_scores, with_block_scores
from hwprune.importance.criteria import compute


@pytest.fixture
def per_op(sim_devices):
    """resnet20 where every layer of a whole-model measurement costs 0.02 ms more than its
    profile: the smallest channel-only network measures about 60 % of the original."""
    sim_devices.add("sim-ops", bound="flops", step=8, op_ms=0.02)
    return zoo.create("resnet20")


def test_a_budget_below_every_channel_only_network_is_reached_by_removing_blocks(per_op, store):
    model, x = per_op
    with pytest.raises(BelowSmallestError, match="below the fastest network measured on sim-ops") as e:
        hwprune.prune(model, x, device="sim-ops", budget_fraction=0.4, store=store, granularity="channel")
    assert "remove whole residual blocks (--granularity both, granularity='both': this model has 7)" in str(e.value)
    res = hwprune.prune(model, x, device="sim-ops", budget_fraction=0.4, store=store)
    assert res.stats["granularity"] == "both" and res.stats["blocks"] == 7
    names = [n["network"] for n in res.stats["fastest"]["sim-ops"]["measured"]]
    assert names[0] == "the smallest network the constraints allow" and len(set(names)) == len(names)
    assert "full widths, every removable block removed" in names
    assert res.measured_ms <= res.budget_ms and res.stats["certified"]
    removed = res.plan["removed_blocks"]
    assert removed and removed == res.stats["removed_blocks"]
    assert all(isinstance(res.model.get_submodule(p), torch.nn.Identity) for p in removed)
    rebuilt = hwprune.apply_plan(zoo.create("resnet20", seed=3)[0], json.loads(json.dumps(res.plan)))
    rebuilt.load_state_dict(res.model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), res.model(x))


def test_block_granularity_removes_blocks_and_keeps_every_width(per_op, store):
    model, x = per_op
    res = hwprune.prune(model, x, device="sim-ops", budget_fraction=0.75, store=store, granularity="block",
                        selector="qcqp")
    assert res.plan["removed_blocks"] and res.measured_ms <= res.budget_ms
    assert all(len(g["kept"]) == g["size"] for g in res.plan["groups"])


def test_granularity_is_checked(sim_devices, store):
    sim_devices.add("sim-ops", bound="flops", step=8, op_ms=0.02)
    model, x = zoo.create("vgg16")
    with pytest.raises(UserError, match="no removable residual block"):
        hwprune.prune(model, x, device="sim-ops", budget_fraction=0.5, store=store, granularity="block")
    with pytest.raises(UserError, match="granularity 'blocks' is not one of"):
        hwprune.prune(model, x, device="sim-ops", budget_fraction=0.5, store=store, granularity="blocks")


def test_block_scores_follow_the_weights_and_the_loss_when_skipped():
    model, x = zoo.create("resnet20")
    space = attach_blocks(PruningSpace(model, x))
    scores = compute("l1", space)
    weights = weight_block_scores(space, scores)
    assert all(v > 0 for v in weights.values()) and sum(weights.values()) < sum(s.sum() for s in scores.values())
    assert weights[space.blocks[-1].key] > 2 * weights[space.blocks[0].key]  # 64 channels hold more than 16
    key = space.blocks[3].key
    with torch.no_grad():
        for p in model.get_submodule(space.blocks[3].path).parameters():
            p.mul_(0.01)
    # active-weight importance is relative to each layer's norm: the weights cannot tell, the data can
    assert weight_block_scores(space, scores)[key] == pytest.approx(weights[key])
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    rise = skip_losses(space, batches)
    assert set(rise) == {b.key for b in space.blocks}
    assert abs(rise[key]) < 1e-3 * max(abs(v) for v in rise.values())  # a near-identity block: skipping costs nothing
    data = with_block_scores(space, scores, batches)
    assert data[key][0] < min(data[b.key][0] for b in space.blocks if b.key != key)
    assert sum(data[b.key][0] for b in space.blocks) == pytest.approx(sum(weights.values()))


def test_cli_granularity_lists_the_removed_blocks_and_the_saved_model_reloads(per_op, tmp_path, capsys):
    from hwprune.cli.main import main
    from hwprune.graph.plans import load_model
    args = ["prune", "--model", "resnet20", "--device", "sim-ops", "--budget-ms", "40%", "--store",
            str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out")]
    assert main(args + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["granularity"] == "both" and data["removed_blocks"] and data["measured_ms"] <= data["budget_ms"]
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["removed_blocks"] == data["removed_blocks"]
    loaded = load_model(str(tmp_path / "out" / "model.pt"))
    assert all(isinstance(loaded.model.get_submodule(p), torch.nn.Identity) for p in plan["removed_blocks"])
    assert main(args + ["--granularity", "channel"]) == 2
    assert "below the fastest network measured on sim-ops" in capsys.readouterr().err
    assert main(args) == 0
    assert "granularity both: removed " in capsys.readouterr().out


@pytest.mark.parametrize("selector", ["knapsack", "qcqp"])
def test_every_selector_reaches_it_in_the_loop(per_op, store, selector):
    model, x = per_op
    res = hwprune.prune(model, x, device="sim-ops", budget_fraction=0.25, store=store, selector=selector)
    assert res.measured_ms <= res.budget_ms and res.stats["certified"] and res.plan["removed_blocks"]
    assert res.selection["selector"] == selector
    names = [n["network"] for n in res.stats["fastest"]["sim-ops"]["measured"]]  # near the fastest: measured
    assert len(names) == len(set(names)) == 8  # 4 uniform (one with the blocks removed), 2 split, 2 fastest
    assert any(n.endswith("every removable block removed") for n in names[4:])


def test_with_data_the_block_nearest_the_identity_goes_first(per_op, store):
    """Blocks scored from data: of resnet20's blocks, one scaled to near the identity is removed
    when the budget needs a single block gone (any one would do)."""
    model, x = per_op
    space = attach_blocks(PruningSpace(model, x))
    target = space.blocks[4].path  # layer2.2
    with torch.no_grad():
        for p in model.get_submodule(target).parameters():
            p.mul_(0.01)
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    res = hwprune.prune(model, x, device="sim-ops", budget_fraction=0.95, store=store, granularity="block",
                        data=batches)
    assert res.plan["removed_blocks"] == [target] and res.measured_ms <= res.budget_ms
    # from the weights alone (relative to each layer's norm) a 16-channel block holds the least
    res = hwprune.prune(model, x, device="sim-ops", budget_fraction=0.95, store=store, granularity="block")
    assert len(res.plan["removed_blocks"]) == 1 and res.plan["removed_blocks"][0].startswith("layer1.")


class GroupedBottleneck(torch.nn.Module):
    """A ResNeXt-style residual block: 1x1, grouped 3x3, 1x1, added to its input."""

    def __init__(self, c=16, w=32, groups=4):
        super().__init__()
        from hwprune.zoo_free import cbr
        self.branch = torch.nn.Sequential(cbr(c, w, 1), cbr(w, w, 3, 1, groups), torch.nn.Conv2d(w, c, 1))

    def forward(self, x):
        return x + self.branch(x)


def test_blocks_survive_grouped_convs_pruned_by_whole_groups(sim_devices, store, monkeypatch):
    """Where the device prices a grouped conv by whole groups the space is rebuilt; its blocks stay."""
    from hwprune.graph.grouped_modes import ModeChoice
    from hwprune.loop import engine
    from hwprune.zoo_free import cbr
    sim_devices.add("sim-ops", bound="flops", step=8, op_ms=0.02)
    torch.manual_seed(0)
    model = torch.nn.Sequential(cbr(3, 16), GroupedBottleneck(), GroupedBottleneck(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    x = torch.randn(1, 3, 32, 32)
    whole = lambda prof, space, progress=None: {
        n: ModeChoice(n, "whole", 2.0, 1.0, (0.5,), "measured: whole groups faster") for n in ("1.branch.1.0",
                                                                                            "2.branch.1.0")}
    monkeypatch.setattr(engine, "measure_grouped_modes", whole)
    res = hwprune.prune(model, x, device="sim-ops", budget_fraction=0.5, store=store, granularity="both")
    assert res.stats["granularity"] == "both" and res.stats["blocks"] == 2
    assert res.plan["grouped_modes"] == {"1.branch.1.0": "whole", "2.branch.1.0": "whole"}
    assert res.measured_ms <= res.budget_ms
