"""Block decisions in selection: every resource and the active-weight objective with residual
blocks removed match the pruned network, qcqp equals brute force with block binaries, and every
selector meets its constraints (synthetic latency models: nothing is measured)."""
import numpy as np
import pytest
import torch
from test_selectors import FlopsModel, TableModel, brute_force, cbr, scaled
from torch import nn

from hwprune.graph.blocks import attach_blocks, live_specs, removed_paths, with_blocks
from hwprune.graph.space import PruningSpace, group_options
from hwprune.graph.surgery import apply_kept, check_widths
from hwprune.select.evaluator import Evaluator
from hwprune.select.problem import Constraints, FlopsBudget, MemoryBudget, Problem, floor_options
from hwprune.select.selectors import SELECTORS, select


class OpsModel(FlopsModel):
    """Latency proportional to FLOPs plus a cost per layer (what eager runtimes pay)."""

    def __init__(self):
        super().__init__()
        self.remainder_ = (0.01, 0.0, 0.0, 0.0, 0.0, 0.05)


class Basic(nn.Module):
    def __init__(self, c, mid):
        super().__init__()
        self.a, self.b = cbr(c, mid), nn.Sequential(nn.Conv2d(mid, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.b(self.a(x)))


class Bottle(nn.Module):
    def __init__(self, c, mid):
        super().__init__()
        self.a, self.b = cbr(c, mid, k=1), cbr(mid, mid)
        self.c = nn.Sequential(nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.c(self.b(self.a(x))))


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.b1, self.b2 = cbr(3, 12), Basic(12, 8), Bottle(12, 8)
        self.down, self.fc = cbr(12, 8, s=2), nn.Linear(8, 10)

    def forward(self, x):
        x = self.b2(self.b1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.down(x), 1), 1))


def make(models, granularity="both", constraints=None, step=4):
    torch.manual_seed(0)
    model, x = TwoBlocks().eval(), torch.randn(1, 3, 8, 8)
    space = attach_blocks(PruningSpace(model, x), granularity)
    cons = constraints or Constraints()
    rng = np.random.default_rng(1)
    scores = {g.gid: rng.random(g.size) + 0.5 for g in space.groups}
    scores.update({b.key: np.array([3.0 + i]) for i, b in enumerate(space.blocks)})
    options = floor_options(space, {g.gid: group_options(g, step, step) for g in space.groups}, step, cons)
    evs = {d: Evaluator(space, m, scores) for d, m in models.items()}
    return Problem(space, with_blocks(space, options, granularity), scores, cons, evs), x


def test_blocks_and_their_inner_groups_are_found():
    problem, _ = make({"f": FlopsModel()})
    space = problem.space
    assert [b.path for b in space.blocks] == ["b1", "b2"]
    assert [len(b.groups) for b in space.blocks] == [1, 2]
    assert problem.options[space.blocks[0].key] == [(0,), (1,)]


def test_resources_and_objective_with_blocks_removed_match_the_pruned_network():
    problem, x = make({"ops": OpsModel()})
    space, obj, ev = problem.space, problem.objective, problem.ev
    flops, memory = FlopsBudget(space, None), MemoryBudget(space, None)
    rng = np.random.default_rng(0)
    for t in range(6):
        choice = {k: opts[rng.integers(len(opts))] for k, opts in problem.options.items()}
        choice[space.blocks[t % 2].key] = (0,)
        pruned = apply_kept(space, ev.kept(choice), removed_paths(space, choice))
        check_widths(space, pruned, choice)
        live = PruningSpace(pruned, x)
        active = sum(float(pruned.get_submodule(l.name).weight.detach().double().abs().sum()
                           / torch.linalg.vector_norm(space.model.get_submodule(l.name).weight.detach().double()))
                     for l in live.layers)
        assert obj.value(choice) == pytest.approx(active, rel=1e-9)
        assert flops.value(choice) == sum(l.spec.flops for l in live.layers)
        lat = OpsModel()
        assert ev.latency_ms(choice) == pytest.approx(lat.predict([l.spec for l in live.layers]), rel=1e-9)
        assert memory.value(choice) <= MemoryBudget(space, None).value(space.full_choice())
        assert problem.resources_by_name["params"].value(choice) == sum(p.numel() for p in pruned.parameters())


CASES = [({"flops": FlopsModel()}, {"latency_ms[flops]": 0.3}),
         ({"ops": OpsModel()}, {"latency_ms[ops]": 0.25}),
         ({"table": TableModel()}, {"latency_ms[table]": 0.5}),
         ({"ops": OpsModel()}, {"latency_ms[ops]": 0.6, "params": 0.5}),
         ({"flops": FlopsModel()}, {"memory_mib": 0.5, "flops": 0.4})]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_qcqp_with_block_binaries_finds_the_brute_force_optimum(case):
    models, fracs = CASES[case]
    problem = scaled(make(models)[0], **fracs)
    best, _ = brute_force(problem)
    sel = select("qcqp", problem, mip_rel_gap=1e-9)
    assert sel.feasible and not problem.violated(sel.choice)
    assert problem.objective.value(sel.choice) == pytest.approx(best, rel=1e-7, abs=1e-9)
    assert sel.status == "optimal" and sel.mip_gap is not None


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_selector_meets_every_constraint_with_blocks(case):
    models, fracs = CASES[case]
    problem = scaled(make(models)[0], **fracs)
    for s in SELECTORS:
        sel = select(s, problem, mip_rel_gap=1e-9)
        assert sel.feasible and not problem.violated(sel.choice), s
        assert set(sel.kept) == {g.gid for g in problem.space.groups}


def test_a_budget_below_every_channel_only_network_is_met_only_by_removing_blocks():
    problem, _ = make({"ops": OpsModel()})
    channel, _ = make({"ops": OpsModel()}, granularity="channel")
    low = channel.ev.latency_ms(channel.smallest()) * 0.9
    for s in SELECTORS:
        sel = select(s, problem.with_latency({"ops": low}))
        assert sel.feasible and sel.predicted_ms <= low * (1 + 1e-6), s
        assert removed_paths(problem.space, sel.choice), s
    assert not select("greedy", channel.with_latency({"ops": low}), infeasible="smallest").feasible


def test_block_granularity_keeps_every_width():
    problem, _ = make({"ops": OpsModel()}, granularity="block")
    sel = select("qcqp", problem.with_latency({"ops": problem.ev.latency_ms(problem.largest()) * 0.8}))
    assert all(sel.choice[g.gid] == problem.options[g.gid][-1] for g in problem.space.groups)
    assert removed_paths(problem.space, sel.choice)


def test_the_remainder_fits_a_cost_per_layer_only_where_the_numbers_of_layers_differ():
    problem, _ = make({"f": FlopsModel()})
    space, rng = problem.space, np.random.default_rng(3)
    truth = OpsModel()
    rows, same = [], []
    for t in range(6):
        choice = {k: opts[rng.integers(len(opts))] for k, opts in problem.options.items()}
        choice[space.blocks[0].key], choice[space.blocks[1].key] = [((0,), (0,)), ((1,), (0,)), ((1,), (1,))][t % 3]
        specs = live_specs(space, choice)
        rows.append((specs, truth.predict(specs)))
        full = space.specs({k: v for k, v in choice.items() if k >= 0})
        same.append((full, truth.predict(full)))
    fitted = FlopsModel().fit_remainder(rows)
    assert fitted.op_ms() == pytest.approx(0.05, rel=1e-3)
    assert fitted.const_ms() == pytest.approx(0.01, abs=1e-4)
    plain = FlopsModel().fit_remainder(same)
    assert plain.op_ms() == 0.0 and len(plain.remainder_) == 5  # channel-only rows: the old terms


@pytest.mark.parametrize("case", [1, 3])
def test_coarse_to_fine_with_blocks_is_certified_on_the_full_grid(case):
    """Searched on 3 widths per group, then finer windows: the answer keeps its certificate
    (Lagrangian and interval bounds over the gated tables) and equals the exact solve."""
    models, fracs = CASES[case]
    problem = scaled(make(models, step=2)[0], **fracs)
    refined = select("qcqp", problem, mip_rel_gap=1e-9, max_options=3)
    exact = select("qcqp", problem, mip_rel_gap=1e-9)
    assert refined.feasible and "certified" in refined.note and refined.mip_gap is not None
    assert refined.objective == pytest.approx(exact.objective, rel=1e-7) == brute_force(problem)[0] / \
        problem.objective.full


@pytest.mark.parametrize("frac", [0.3, 0.6])
def test_qcqp_with_blocks_on_resnet20_is_optimal_and_never_below_the_heuristics(frac):
    from hwprune import zoo
    model, x = zoo.create("resnet20")
    space = attach_blocks(PruningSpace(model, x))
    rng = np.random.default_rng(0)
    scores = {g.gid: rng.random(g.size) + 0.5 for g in space.groups}
    scores.update({b.key: np.array([20.0]) for b in space.blocks})
    options = with_blocks(space, floor_options(space, {g.gid: group_options(g, 8, 8) for g in space.groups}, 8,
                                               Constraints()))
    ev = Evaluator(space, OpsModel(), scores)
    cons = Constraints(latency_ms=(("t", frac * ev.latency_ms(space.full_choice())),))
    problem = Problem(space, options, scores, cons, {"t": ev})
    sels = {s: select(s, problem, mip_rel_gap=1e-9) for s in SELECTORS}
    assert all(sel.feasible for sel in sels.values())
    assert sels["qcqp"].status == "optimal"
    assert sels["qcqp"].objective >= max(sels["greedy"].objective, sels["knapsack"].objective) - 1e-9
    assert any(sel.choice[b.key] == (0,) for sel in sels.values() for b in space.blocks)
