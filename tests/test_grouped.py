"""Grouped convs (ResNeXt, RegNet): pruned within their groups or by whole groups."""
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.graph.grouped import conv_kept
from hwprune.graph.grouped_modes import choose_modes
from hwprune.graph.plans import apply_plan
from hwprune.graph.space import PruningSpace, dep_role, group_options, root_handler
from hwprune.graph.surgery import apply_kept, check_widths
from hwprune.importance import criteria as importance
from hwprune.importance.magnitude import member_magnitude_scores
from hwprune.loop.engine import make_plan
from hwprune.select.evaluator import Evaluator
from hwprune.select.problem import Constraints, ParamsBudget, Problem
from hwprune.select.selectors import select
from hwprune.zoo_free import cbr
from latency_models import NetworkLatencyModel


class Block(nn.Module):
    """A ResNeXt-style bottleneck: 1x1, grouped 3x3 (G groups), 1x1, residual."""

    def __init__(self, c=16, w=32, groups=4):
        super().__init__()
        self.stem = cbr(3, c)
        self.a = cbr(c, w, 1)
        self.b = cbr(w, w, 3, 1, groups)
        self.c = nn.Sequential(nn.Conv2d(w, c, 1, bias=False), nn.BatchNorm2d(c))
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.c(self.b(self.a(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _block():
    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    return model, torch.randn(2, 3, 32, 32)


def _half(space, step):
    """Every group at the option nearest half its width."""
    return {g.gid: min(group_options(g, step, step), key=lambda o: abs(sum(o) - g.size / 2)) for g in space.groups}


def _zeroed(space, kept):
    """The unpruned model with every dropped channel's producing weights (conv
    filters, BatchNorm scale and shift) zeroed, so it contributes nothing."""
    ref = copy.deepcopy(space.model)
    _, follow = conv_kept(space, kept)
    drops = [(g.root, sorted(set(range(g.size)) - set(kept[g.gid]))) for g in space.groups] + follow
    name_of = {m: n for n, m in space.model.named_modules()}
    with torch.no_grad():
        for root, drop in drops:
            if not drop:
                continue
            r = space.model.get_submodule(root)
            for it in space.dg.get_pruning_group(r, root_handler(r), idxs=drop).items:
                target = ref.get_submodule(name_of[it.dep.target.module]) if it.dep.target.module in name_of else None
                producer = isinstance(target, nn.BatchNorm2d) or (
                    isinstance(target, (nn.Conv2d, nn.Linear)) and dep_role(it.dep) == "out")
                if producer:
                    idx = [int(i) for i in it.idxs]
                    target.weight[idx] = 0
                    if target.bias is not None:
                        target.bias[idx] = 0
    return ref


@pytest.mark.parametrize("mode,groups,width", [("within", 4, 16), ("whole", 2, 16)])
def test_grouped_conv_prunes_exactly_in_both_modes(mode, groups, width):
    model, x = _block()
    space = PruningSpace(model, (x,), grouped_modes=mode)
    assert [r.mode for r in space.grouped] == [mode]
    choice = _half(space, 4)
    kept = Evaluator(space, None, importance.compute("l1", space)).kept(choice)
    pruned = apply_kept(space, kept)
    check_widths(space, pruned, choice)  # widths and groups as the space predicts
    conv = pruned.b[0]
    spec = next(s for l, s in zip(space.layers, space.specs(choice)) if l.name == "b.0")
    assert (conv.groups, conv.in_channels, conv.out_channels) == (groups, width, width) == \
        (spec.groups, spec.in_channels, spec.out_channels)
    with torch.no_grad():
        got, want, full = pruned(x), _zeroed(space, kept)(x), model(x)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, full, atol=1e-3)
    # the plan (through JSON) rebuilds the same model from the original
    plan = json.loads(json.dumps(make_plan(space, kept, "ort-cpu-1t", None)))
    assert plan["grouped_modes"] == {"b.0": mode}
    again = apply_plan(model, plan, (x,))
    with torch.no_grad():
        assert torch.equal(again(x), got)


def test_within_mode_keeps_the_same_count_in_every_group():
    model, x = _block()
    space = PruningSpace(model, (x,))
    split = [g for g in space.groups if g.uniform]
    assert len(split) == 2 and all(len(g.segments) == 4 for g in split)
    for g in split:
        assert all(len(set(o)) == 1 for o in group_options(g, 8, 8))


def test_whole_mode_scores_a_conv_group_as_the_sum_of_its_channels():
    model, x = _block()
    space = PruningSpace(model, (x,), grouped_modes="whole")
    g = next(g for g in space.groups if g.block > 1)
    raw = member_magnitude_scores(space, 1)[g.gid]
    got = importance.compute("l1", space)[g.gid]
    blocks = [list(g.seg_index[0][i:i + g.block]) for i in range(0, g.size, g.block)]
    for b in blocks:
        assert got[b] * g.block == pytest.approx(np.full(g.block, raw[b].sum()), rel=1e-6)
    # keeping the top channels keeps whole conv groups
    kept = Evaluator(space, None, importance.compute("l1", space)).kept({**space.full_choice(), g.gid: (16,)})
    assert sorted(kept[g.gid]) == sorted(i for b in sorted(blocks, key=lambda b: -raw[b].sum())[:2] for i in b)


def test_the_latency_model_decides_the_mode():
    model, x = _block()
    space = PruningSpace(model, (x,))
    fewer_groups = choose_modes(space, lambda s: 1.0 * s.groups + 1e-3 * (s.in_channels + s.out_channels))
    narrower = choose_modes(space, lambda s: 1.0 * s.in_channels / s.groups + 1e-3 * s.groups)
    assert fewer_groups["b.0"].mode == "whole" and fewer_groups["b.0"].whole_ms < fewer_groups["b.0"].within_ms
    assert narrower["b.0"].mode == "within" and narrower["b.0"].within_ms < narrower["b.0"].whole_ms
    assert "whole groups" in fewer_groups["b.0"].reason
    rebuilt = PruningSpace(model, (x,), grouped_modes={n: c.mode for n, c in fewer_groups.items()})
    assert [r.mode for r in rebuilt.grouped] == ["whole"]


def test_a_grouped_conv_on_a_fixed_side_stays_within():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(16, 8, 1),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 3)).eval()
    x = torch.randn(1, 4, 8, 8)
    space = PruningSpace(model, (x,), grouped_modes="whole")
    (r,) = space.grouped
    assert r.mode == "within" and not r.whole_ok and "not prunable" in r.note
    assert choose_modes(space, lambda s: 1.0 * s.groups)["0"].mode == "within"
    choice = {g.gid: group_options(g, 4, 4)[0] for g in space.groups}
    pruned = apply_kept(space, Evaluator(space, None, importance.compute("l1", space)).kept(choice))
    check_widths(space, pruned, choice)
    assert pruned[0].groups == 2 and pruned[0].in_channels == 4 and pruned(x).shape == (1, 3)


def _torchvision(name):
    import torchvision
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval(), torch.randn(1, 3, 64, 64)


def _half_width(model, x, mode=None):
    space = PruningSpace(model, (x,), grouped_modes=mode)
    choice = _half(space, 8)
    kept = Evaluator(space, None, importance.compute("l1", space)).kept(choice)
    pruned = apply_kept(space, kept)
    check_widths(space, pruned, choice)
    frac = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())
    return space, kept, pruned, frac


@pytest.mark.parametrize("name,mode", [("regnet_x_400mf", None), ("regnet_x_400mf", "whole"),
                                       ("resnext50_32x4d", None)])
def test_torchvision_grouped_convs_are_prunable(name, mode):
    model, x = _torchvision(name)
    space, kept, pruned, frac = _half_width(model, x, mode)
    assert len(space.grouped) >= 16 and all(r.mode == (mode or "within") for r in space.grouped)
    assert frac < 0.4, frac  # was 50-64 % with the grouped convs' groups frozen
    plan = make_plan(space, kept, "ort-cpu-1t", None)
    again = apply_plan(model, plan, (x,))
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))


def test_the_engine_measures_both_modes_on_the_device():
    from hwprune.latency.profiling import measure_grouped_modes
    from profilers.specs import Measurement, Timing

    class Device:  # a profiler whose device runs fewer groups faster
        def __init__(self):
            self.asked = []

        def measure_specs(self, specs, progress=None):
            self.asked += specs
            return [Measurement("stub", s, Timing(0.1 * s.groups, 0.0, 1, 0.0, True)) for s in specs]

    model, x = _block()
    dev = Device()
    modes = measure_grouped_modes(dev, PruningSpace(model, (x,)))
    assert modes["b.0"].mode == "whole" and modes["b.0"].reason.startswith("measured")
    assert {s.groups for s in dev.asked} >= {1, 2, 3, 4}


class GroupsModel(NetworkLatencyModel):
    """Latency from FLOPs plus a cost per conv group (a device that rewards fewer groups)."""

    def __init__(self):
        super().__init__()
        self.families_, self.remainder_ = {}, (0.0, 0.0)

    def layer_ms(self, spec):
        return spec.flops / 1e6 + 0.05 * spec.groups


@pytest.mark.parametrize("mode", ["within", "whole"])
@pytest.mark.parametrize("selector", ["greedy", "knapsack", "qcqp"])
def test_selectors_price_and_cut_grouped_convs(mode, selector):
    model, x = _block()
    space = PruningSpace(model, (x,), grouped_modes=mode)
    scores = importance.compute("l1", space)
    options = {g.gid: group_options(g, 4, 4) for g in space.groups}
    ev = Evaluator(space, GroupsModel(), scores)
    lat, params = GroupsModel(), ParamsBudget(space, None, ev.order)
    for choice in (space.full_choice(), _half(space, 4)):  # the selectors' sums price the specs' groups
        assert ev.latency_ms(choice) == pytest.approx(lat.predict(space.specs(choice)))
        pruned = apply_kept(space, ev.kept(choice))
        assert params.value(choice) == pytest.approx(sum(p.numel() for p in pruned.parameters()))
    cons = Constraints(latency_ms=(("t", 0.6 * ev.latency_ms(space.full_choice())),))
    sel = select(selector, Problem(space, options, scores, cons, {"t": ev}), mip_rel_gap=1e-6)
    assert sel.feasible
    pruned = apply_kept(space, sel.kept)
    check_widths(space, pruned, sel.choice)
    with torch.no_grad():
        assert torch.allclose(pruned(x), _zeroed(space, sel.kept)(x), atol=1e-5)


@pytest.mark.parametrize("mode", ["within", "whole"])
def test_every_criterion_scores_grouped_convs(mode):
    model, x = _block()
    space = PruningSpace(model, (x,), grouped_modes=mode)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(2)]
    for name in importance.CRITERIA.list():
        s = importance.compute(name, space, batches)
        for g in space.groups:
            assert s[g.gid].shape == (g.size,) and np.all(np.isfinite(s[g.gid])) and np.all(s[g.gid] >= 0), name
            if g.block > 1:  # every channel of a conv group scores alike: the selectors keep whole groups
                blocks = np.asarray(g.seg_index[0]).reshape(-1, g.block)
                assert np.ptp(s[g.gid][blocks], axis=1).max() < 1e-6 * max(1.0, s[g.gid].max()), name


@pytest.mark.slow
def test_resnest_radix_convs_are_pruned_within_their_groups():
    """(its split attention reshapes the radix conv's output, so that side stays whole)"""
    import timm
    torch.manual_seed(0)
    model, x = timm.create_model("resnest14d", pretrained=False).eval(), torch.randn(1, 3, 64, 64)
    space, kept, pruned, frac = _half_width(model, x)
    assert space.grouped and frac < 0.5, frac  # was 58 %
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape


class ConcatIntoGrouped(nn.Module):
    """A grouped conv reading a concat of two convs' outputs (not split by conv groups here)."""

    def __init__(self):
        super().__init__()
        self.p, self.q = cbr(3, 8), cbr(3, 8)
        self.g = cbr(16, 16, 3, 1, 4)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.g(torch.cat([self.p(x), self.q(x)], 1))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_a_grouped_conv_reading_a_concat_keeps_that_side_and_prunes_the_other():
    torch.manual_seed(0)
    model, x = ConcatIntoGrouped().eval(), torch.randn(1, 3, 16, 16)
    space = PruningSpace(model, (x,))
    (r,) = space.grouped
    assert r.in_gid == -1 and r.out_gid >= 0
    assert {g.root for g in space.groups} == {"g.0"}
    choice = _half(space, 4)
    pruned = apply_kept(space, Evaluator(space, None, importance.compute("l1", space)).kept(choice))
    check_widths(space, pruned, choice)
    assert (pruned.g[0].in_channels, pruned.g[0].out_channels, pruned.g[0].groups) == (16, 8, 4)


class TwoGroupCounts(nn.Module):
    """One channel group read by grouped convs of 2 and of 3 groups: no equal split."""

    def __init__(self):
        super().__init__()
        self.a, self.tail = cbr(3, 12), cbr(12, 16)
        self.b2, self.b3 = nn.Conv2d(12, 12, 3, 1, 1, groups=2), nn.Conv2d(12, 12, 3, 1, 1, groups=3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        a = self.a(x)
        y = self.tail(self.b2(a) + self.b3(a))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_a_group_grouped_convs_split_unevenly_keeps_its_widths():
    torch.manual_seed(0)
    model, x = TwoGroupCounts().eval(), torch.randn(1, 3, 16, 16)
    space = PruningSpace(model, (x,))
    assert all(r.in_gid == r.out_gid == -1 for r in space.grouped)
    assert [g.root for g in space.groups] == ["tail.0"]
    b2 = next(l for l in space.layers if l.name == "b2")
    assert (b2.fixed_in, b2.fixed_out, b2.in_terms, b2.out_terms) == (12, 12, (), ())
    choice = _half(space, 4)
    pruned = apply_kept(space, Evaluator(space, None, importance.compute("l1", space)).kept(choice))
    check_widths(space, pruned, choice)
    assert pruned.tail[0].out_channels == 8 and pruned.b3.groups == 3
