"""Selectors (greedy, knapsack, qcqp) under combined constraints, on synthetic
latency models: nothing here measures latency."""
import itertools
import zlib

import archs
import numpy as np
import pytest
import torch
from torch import nn

from hwprune import zoo
from hwprune.errors import UserError
from hwprune.graph.space import PruningSpace, group_options
from hwprune.graph.surgery import apply_kept
from hwprune.importance.active import weight_importance
from hwprune.select.evaluator import Evaluator
from hwprune.select.problem import Constraints, FlopsBudget, MemoryBudget, ParamsBudget, Problem, floor_options
from hwprune.select.selectors import SELECTORS, select
from latency_models import NetworkLatencyModel


class FlopsModel(NetworkLatencyModel):
    """Latency proportional to FLOPs."""

    def __init__(self):
        super().__init__()
        self.families_, self.remainder_ = {}, (0.0, 0.0)

    def layer_ms(self, spec):
        return spec.flops / 1e6


class TableModel(NetworkLatencyModel):
    """A deterministic random table per (family, widths): not monotone in the widths."""

    def __init__(self, seed=0):
        super().__init__()
        self.families_, self.remainder_, self.seed = {}, (0.02, 1e-7), seed

    def layer_ms(self, spec):
        h = zlib.crc32(f"{self.seed}/{spec.family()}/{spec.in_channels}/{spec.out_channels}".encode())
        return spec.flops / 1e6 * (0.7 + 0.6 * (h % 1000) / 1000) + 0.01


def cbr(cin, cout, k=3, s=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(cbr(3, 16), cbr(16, 16), cbr(16, 24, s=2))
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.f(x), 1), 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.block = nn.Sequential(cbr(16, 8), nn.Conv2d(8, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.down = cbr(16, 24, s=2)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.down(x), 1), 1))


class Concat(nn.Module):
    """The mix conv's input concatenates two groups: a layer on three groups."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.b1, self.b2 = cbr(16, 8), cbr(16, 8, k=1)
        self.mix = cbr(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.mix(torch.cat([self.b1(x), self.b2(x)], 1))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny(name):
    torch.manual_seed(0)
    if name == "concat_residual":  # a group of two segments: options are tuples
        model, x = archs.create(name, size=8)
        return model, x, 8
    model = {"chain": Chain, "residual": Residual, "concat": Concat}[name]().eval()
    return model, torch.randn(1, 3, 8, 8), 4


NETS = ["chain", "residual", "concat", "concat_residual"]


def make(name, constraints=None, models=None):
    constraints = constraints or Constraints()
    model, x, step = tiny(name)
    space = PruningSpace(model, x)
    rng = np.random.default_rng(1)
    scores = {g.gid: rng.random(g.size) + 0.5 for g in space.groups}
    options = floor_options(space, {g.gid: group_options(g, step, step) for g in space.groups}, step, constraints)
    evs = {d: Evaluator(space, m, scores) for d, m in (models or {"flops": FlopsModel()}).items()}
    return Problem(space, options, scores, constraints, evs), x


def scaled(problem, **fracs):
    """Bounds at ``frac`` of the way from the smallest to the full network."""
    lo, hi = problem.usage(problem.smallest()), problem.usage(problem.largest())
    val = {k: lo[k] + f * (hi[k] - lo[k]) for k, f in fracs.items()}
    lat = tuple((d, val[f"latency_ms[{d}]"]) for d in problem.evaluators if f"latency_ms[{d}]" in val)
    cons = Constraints(latency_ms=lat, max_flops=val.get("flops"), max_params=val.get("params"),
                       max_memory_mib=val.get("memory_mib"))
    return Problem(problem.space, problem.options, problem.scores, cons, problem.evaluators)


def brute_force(problem):
    gids = list(problem.options)
    best = None
    for combo in itertools.product(*(problem.options[g] for g in gids)):
        choice = dict(zip(gids, combo))
        if problem.feasible(choice):
            v = problem.objective.value(choice)
            if best is None or v > best[0]:
                best = (v, choice)
    return best


CASES = [  # (latency models, constraint fractions)
    ({"flops": FlopsModel()}, {"latency_ms[flops]": 0.4}),
    ({"table": TableModel()}, {"latency_ms[table]": 0.5}),
    ({"flops": FlopsModel()}, {"latency_ms[flops]": 0.7, "params": 0.5}),
    ({"flops": FlopsModel()}, {"memory_mib": 0.5, "params": 0.6}),
    ({"a": TableModel(1), "b": TableModel(2)}, {"latency_ms[a]": 0.6, "latency_ms[b]": 0.45, "flops": 0.8}),
]


@pytest.mark.parametrize("name", NETS)
def test_active_objective_params_flops_memory_match_the_pruned_model(name):
    problem, x = make(name)
    space, obj = problem.space, problem.objective
    flops, params, memory = FlopsBudget(space, None), ParamsBudget(space, None, problem.ev.order), \
        MemoryBudget(space, None)
    rng = np.random.default_rng(0)
    for _ in range(4):
        choice = {gid: opts[rng.integers(len(opts))] for gid, opts in problem.options.items()}
        pruned = apply_kept(space, problem.ev.kept(choice))
        active = 0.0
        acts = []
        hooks = [m.register_forward_hook(lambda m, i, o: acts.append(i[0].numel() + o.numel()))
                 for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            pruned(x)
        for h in hooks:
            h.remove()
        for layer in space.layers:
            w = pruned.get_submodule(layer.name).weight.detach().double()
            full_w = space.model.get_submodule(layer.name).weight.detach().double()
            active += float(w.abs().sum() / torch.linalg.vector_norm(full_w))
        assert obj.value(choice) == pytest.approx(active, rel=1e-9)
        assert params.value(choice) == sum(p.numel() for p in pruned.parameters())
        assert flops.value(choice) == sum(l.spec.flops for l in PruningSpace(pruned, x).layers)
        assert memory.value(choice) == pytest.approx(4 * max(acts) / 2 ** 20, rel=1e-12)  # MiB
    assert obj.fraction(problem.largest()) == pytest.approx(1.0)
    assert sum(float(weight_importance(space.model.get_submodule(l.name)).sum())
               for l in space.layers) == pytest.approx(obj.full)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_qcqp_finds_the_brute_force_optimum(name, case):
    models, fracs = CASES[case]
    problem = scaled(make(name, models=models)[0], **fracs)
    best, _ = brute_force(problem)
    sel = select("qcqp", problem, mip_rel_gap=1e-9)
    assert sel.feasible and not problem.violated(sel.choice)
    assert problem.objective.value(sel.choice) == pytest.approx(best, rel=1e-7, abs=1e-9)
    assert sel.status == "optimal" and sel.mip_gap is not None and sel.solve_s > 0
    assert sel.objective == pytest.approx(best / problem.objective.full, rel=1e-7)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_selector_meets_every_constraint_and_qcqp_is_never_below(name, case):
    models, fracs = CASES[case]
    problem = scaled(make(name, models=models)[0], **fracs)
    sels = {s: select(s, problem, mip_rel_gap=1e-9) for s in SELECTORS}
    for s, sel in sels.items():
        assert sel.feasible and not problem.violated(sel.choice), s
        for r in problem.resources:
            assert r.value(sel.choice) <= r.limit * (1 + 1e-6), (s, r.name)
        for g in problem.space.groups:
            assert sel.choice[g.gid] in problem.options[g.gid]
            assert len(sel.kept[g.gid]) == sum(sel.choice[g.gid])
    for s in ("greedy", "knapsack"):
        assert sels["qcqp"].objective >= sels[s].objective - 1e-9, s


@pytest.mark.parametrize("frac", [0.3, 0.5, 0.8])
def test_qcqp_beats_greedy_and_knapsack_on_resnet20(frac):
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    rng = np.random.default_rng(0)
    scores = {g.gid: rng.random(g.size) + 0.5 for g in space.groups}
    options = floor_options(space, {g.gid: group_options(g, 8, 8) for g in space.groups}, 8, Constraints())
    ev = Evaluator(space, TableModel(), scores)
    cons = Constraints(latency_ms=(("t", frac * ev.latency_ms(space.full_choice())),),
                       max_params=0.8 * sum(p.numel() for p in model.parameters()))
    problem = Problem(space, options, scores, cons, {"t": ev})
    sels = {s: select(s, problem, mip_rel_gap=1e-9) for s in SELECTORS}
    assert all(sel.feasible for sel in sels.values())
    assert sels["qcqp"].status == "optimal"
    assert sels["qcqp"].objective >= max(sels["greedy"].objective, sels["knapsack"].objective) - 1e-9
    assert sels["qcqp"].predicted_ms <= cons.latency_ms[0][1] * (1 + 1e-6)


def test_floors_and_ceilings_bound_every_group():
    model, x, step = tiny("chain")
    space = PruningSpace(model, x)
    raw = {g.gid: group_options(g, step, step) for g in space.groups}
    floored = floor_options(space, raw, step, Constraints(min_ratio=0.5, max_ratio=0.75))
    for g in space.groups:
        assert floored[g.gid], g.gid
        assert all(0.5 * g.size <= sum(o) <= 0.75 * g.size for o in floored[g.gid]), floored[g.gid]
    default = floor_options(space, raw, step, Constraints())
    assert all(sum(o) >= max(step, 0.1 * g.size) for g in space.groups for o in default[g.gid])


@pytest.mark.parametrize("bound,needle", [("max_flops", "max_flops"), ("max_params", "max_params"),
                                          ("max_memory_mib", "max_memory_mib"), ("latency", "latency budget")])
def test_infeasible_constraints_name_the_constraint_and_the_smallest_value(bound, needle):
    problem, _ = make("residual")
    smallest = problem.usage(problem.smallest())
    key = {"max_flops": "flops", "max_params": "params", "max_memory_mib": "memory_mib"}.get(bound)
    if key:
        cons = Constraints(**{bound: 0.5 * smallest[key]})
        value = problem.resources_by_name[key].fmt(smallest[key])
    else:
        cons = Constraints(latency_ms=(("flops", 0.5 * smallest["latency_ms[flops]"]),))
        value = problem.resources_by_name["latency_ms[flops]"].fmt(smallest["latency_ms[flops]"])
    bad = Problem(problem.space, problem.options, problem.scores, cons, problem.evaluators)
    for s in SELECTORS:
        with pytest.raises(UserError, match=needle) as err:
            select(s, bad)
        assert value in str(err.value) and "smallest network" in str(err.value)
    sel = select("qcqp", bad, infeasible="smallest")
    assert not sel.feasible and sel.choice == bad.smallest()


@pytest.mark.parametrize("kwargs", [dict(max_flops=-1), dict(max_params=float("nan")), dict(min_ratio=1.5),
                                    dict(max_ratio=0.0), dict(min_ratio=0.5, max_ratio=0.2),
                                    dict(latency_ms=(("a", 1.0), ("a", 2.0))), dict(latency_ms=(("a", 0),))])
def test_bad_constraints_are_user_errors(kwargs):
    with pytest.raises(UserError):
        Constraints(**kwargs)


def test_unknown_selector_is_a_user_error():
    problem, _ = make("chain")
    with pytest.raises(UserError, match="qcqp"):
        select("annealing", problem)


def test_wide_groups_are_searched_coarse_to_fine():
    """With at most 3 widths per group in the coarse pass, the refined answer is
    feasible, on the grid, and at least as good as the coarse pass alone."""
    from hwprune.select.qcqp.milp import thin_options
    problem = scaled(make("chain", models={"t": TableModel()})[0], **{"latency_ms[t]": 0.5})
    refined = select("qcqp", problem, mip_rel_gap=1e-9, max_options=3)
    coarse = {gid: thin_options(o, 3) for gid, o in problem.options.items()}
    coarse_only = select("qcqp", problem.with_options(coarse), mip_rel_gap=1e-9)
    assert refined.feasible and refined.note and all(refined.choice[g] in problem.options[g] for g in coarse)
    assert refined.objective >= coarse_only.objective - 1e-12
    exact = select("qcqp", problem, mip_rel_gap=1e-9)
    assert refined.objective <= exact.objective + 1e-12
    # certified on the full grid: the status is the certificate's, not the coarse search's
    assert "certified" in refined.note and refined.status == "optimal" and refined.mip_gap <= 1e-6
    assert refined.objective == pytest.approx(exact.objective, rel=1e-7)


def test_cli_budget_forms_are_checked_before_any_measurement(capsys, tmp_path):
    from hwprune.cli.main import main
    out = str(tmp_path / "o")
    assert main(["prune", "--model", "resnet20", "--budget-ms", "2", "--out", out]) == 2
    assert "needs --device" in capsys.readouterr().err
    assert main(["prune", "--model", "resnet20", "--out", out]) == 2
    assert "no budget" in capsys.readouterr().err
    assert main(["prune", "--model", "resnet20", "--budget-ms", "ort-cpu-1t=2", "--max-ratio", "0.1",
                 "--min-ratio", "0.2", "--out", out]) == 2
    assert "max_ratio" in capsys.readouterr().err
    assert main(["prune", "--model", "resnet20", "--device", "ort-cpu-1t", "--budget-ms", "5",
                 "--max-flops", "1k", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_flops" in err[0] and "FLOPs" in err[0]
    assert not (tmp_path / "o").exists()


def test_evaluator_and_its_tables_match_the_network_model():
    """Per-layer costs (remainder terms included) sum to NetworkLatencyModel.predict,
    and the vectorised tables the QCQP reads equal the scalar costs greedy reads."""
    from latency_models import QuadraticLayerModel
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    lat = NetworkLatencyModel()
    lat.families_, lat.table_, lat.remainder_ = {}, {}, (0.2, 1e-6, 3e-7, -0.25)
    for i, layer in enumerate(space.layers):
        q = QuadraticLayerModel()
        q.coef_, q.floor_ms_ = np.array([0.01, 1e-4 * (i % 3), 2e-4, 1e-5]), 0.012
        lat.families_[layer.spec.family()] = q
    scores = {g.gid: np.ones(g.size) for g in space.groups}
    ev = Evaluator(space, lat, scores)
    options = {g.gid: group_options(g, 8, 8) for g in space.groups}
    rng = np.random.default_rng(0)
    for _ in range(5):
        choice = {gid: o[rng.integers(len(o))] for gid, o in options.items()}
        assert ev.latency_ms(choice) == pytest.approx(lat.predict(space.specs(choice)), rel=1e-12)
    n_in, n_out = np.array([[8], [16], [24]]), np.array([[8, 32, 64]])
    for i in range(len(space.layers)):
        grid = ev.layer_ms_grid(i, n_in, n_out)
        assert grid.shape == (3, 3)
        assert grid[1, 2] == pytest.approx(ev.layer_ms(i, 16, 64), rel=1e-12)


@pytest.mark.parametrize("price", [True, False])
@pytest.mark.parametrize("name", ["chain", "residual"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_interval_relaxation_bounds_the_full_grid_and_reaches_its_optimum(name, case, price):
    """From a poor plan (the smallest network), two blocks per group: the first
    relaxation's bound is already >= the brute-force optimum, with or without
    shadow prices; refined to the end, the certificate finds that optimum and
    proves it."""
    from hwprune.select.qcqp.interval import certify
    models, fracs = CASES[case]
    problem = scaled(make(name, models=models)[0], **fracs)
    best, _ = brute_force(problem)
    best /= problem.objective.full
    start = problem.smallest()
    first = certify(problem, start, 30.0, 1e-9, n_blocks=2, max_rounds=1, price=price)
    assert first.rounds == 1 and first.upper >= best - 1e-9
    assert first.gap == pytest.approx((first.upper - problem.objective.fraction(first.choice)) / first.upper)
    cert = certify(problem, start, 30.0, 1e-9, n_blocks=2, price=price)
    assert cert.rounds >= 1 and cert.upper >= best - 1e-9 and not problem.violated(cert.choice)
    assert problem.objective.fraction(cert.choice) == pytest.approx(best, rel=1e-7) and cert.gap <= 1e-6


def test_no_interval_certificate_across_a_concat_of_groups():
    from hwprune.select.qcqp.interval import certify
    problem = scaled(make("concat")[0], **{"latency_ms[flops]": 0.5})
    assert certify(problem, problem.smallest(), 5.0) is None


class CliffModel(NetworkLatencyModel):
    """A blocked runtime's cliffs: widths on an alignment of 4 run padded to
    blocks of 16, widths off it run plain kernels at twice the cost."""

    def __init__(self):
        super().__init__()
        self.families_, self.remainder_ = {}, (0.0, 0.0)

    @staticmethod
    def cost(w):
        return 2 * w if w % 4 else -(-w // 16) * 16

    def layer_ms(self, spec):
        scale = self.cost(spec.in_channels) * self.cost(spec.out_channels) / (spec.in_channels * spec.out_channels)
        return spec.flops / 1e6 * scale


def test_greedy_stalled_at_a_cliff_takes_the_knapsacks_plan():
    from hwprune.select.greedy import greedy_limits
    from hwprune.select.selectors import STALL, max_load
    model, x = zoo.create("invresnet")  # widths 21 and 105: one level up from an aligned plan crosses a cliff
    space = PruningSpace(model, x)
    rng = np.random.default_rng(0)
    scores = {g.gid: rng.random(g.size) + 0.5 for g in space.groups}
    options = floor_options(space, {g.gid: group_options(g, 16, 16, 4) for g in space.groups}, 16, Constraints())
    ev = Evaluator(space, CliffModel(), scores)
    budget = 0.6 * ev.latency_ms(space.full_choice())
    problem = Problem(space, options, scores, Constraints(latency_ms=(("t", budget),)), {"t": ev})
    raw, ok = greedy_limits(problem.ev, problem.options, problem.resources)
    assert ok and max_load(problem, raw) < STALL  # plain greedy leaves the budget unused
    sel = select("greedy", problem)
    assert sel.feasible and sel.predicted_ms <= budget * (1 + 1e-6)
    assert sel.importance > ev.importance(raw) and sel.predicted_ms > ev.latency_ms(raw)
    assert "stalled" in sel.note and sel.selector == "greedy"
    # where greedy does not stall, it answers alone
    easy = Problem(space, options, scores, Constraints(latency_ms=(("t", 0.7 * ev.latency_ms(space.full_choice())),)),
                   {"t": ev})
    assert select("greedy", easy).note == ""
