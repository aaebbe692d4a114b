"""Channel importance criteria: registry, formulas, ranking on a trained network,
and every criterion with every selector (no latency is measured here)."""
from __future__ import annotations

import archs
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hwprune.cli.main import build_parser, main
from hwprune.datasets import digits_loaders
from hwprune.errors import UserError
from hwprune.graph.space import PruningSpace, group_options
from hwprune.graph.surgery import apply_kept
from hwprune.importance import criteria as importance
from hwprune.importance.data import consumers, eliminate, gate_gradients
from hwprune.importance.scores import ordered_scores
from hwprune.select.evaluator import Evaluator
from hwprune.select.problem import Constraints, Problem, floor_options
from hwprune.select.selectors import SELECTORS, select
from hwprune.train.loop import evaluate, train

NAMES = ["l1", "l2", "bn-scale", "taylor", "cpmc", "ccp", "dcp"]
DATA_NAMES = ["taylor", "ccp", "dcp"]


def cbr(cin, cout, k=3, s=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Res(nn.Module):
    """A residual stream, a plain conv pair and a strided conv into a Linear."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.block = nn.Sequential(cbr(16, 16), nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.down = cbr(16, 32, s=2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.down(x), 1), 1))


@pytest.fixture(scope="module")
def trained():
    """Res trained on the 8x8 digits (about 96 % test accuracy)."""
    torch.manual_seed(0)
    model = Res()
    tr, te = digits_loaders(batch_size=64, size=8)
    train(model, tr, 4, lr=0.05, seed=0)
    return model, tr, te, PruningSpace(model, (torch.randn(1, 3, 8, 8),))


def test_registry_and_cli_choices():
    assert importance.CRITERIA.list() == NAMES
    assert [n for n in NAMES if importance.CRITERIA.metadata(n)["needs_data"]] == DATA_NAMES
    prune = build_parser()._subparsers._group_actions[0].choices["prune"]
    choices = next(a.choices for a in prune._actions if a.dest == "importance")
    assert list(choices) == NAMES
    with pytest.raises(UserError, match="unknown importance 'fisher'"):
        importance.compute("fisher", PruningSpace(Res().eval(), (torch.randn(1, 3, 8, 8),)))


@pytest.mark.parametrize("name", DATA_NAMES)
def test_data_criteria_without_data_name_the_fix(name):
    space = PruningSpace(Res().eval(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(UserError, match="needs data: pass --data digits"):
        importance.compute(name, space)


def test_cli_data_criterion_without_data_is_one_error_line(capsys):
    rc = main(["prune", "--model", "resnet20", "--device", "ort-cpu-1t", "--budget-ms", "0.5",
               "--importance", "ccp", "--out", "unused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: --importance ccp needs data: add --data digits")


@pytest.mark.parametrize("arch", ["concat", "invres", "grouped", "concat_residual"])
def test_every_criterion_gives_finite_scores_on_varied_graphs(arch):
    model, x = archs.create(arch, size=8)
    with torch.no_grad():  # trained BatchNorms have unequal scales; fresh ones are all 1
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    space = PruningSpace(model, x)
    classes = int(model(x).shape[-1])
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, *x.shape[1:], generator=gen), torch.randint(0, classes, (16,), generator=gen))
               for _ in range(2)]
    for name in NAMES:
        s = importance.compute(name, space, batches)
        assert s.criterion == name and s.scale in ("group", "network", "members")
        for g in space.groups:
            assert s[g.gid].shape == (g.size,) and np.all(np.isfinite(s[g.gid])) and np.all(s[g.gid] >= 0)
        flat = np.concatenate(list(s.values()))
        assert flat.std() > 0, name  # the scores rank something
        if s.scale == "network":
            assert flat.mean() == pytest.approx(1.0)
        elif s.scale == "members":  # the mean is the number of layers the group touches
            assert all(v.mean() >= 1.0 - 1e-9 and v.mean() == pytest.approx(round(v.mean())) for v in s.values())
        else:
            assert all(v.mean() == pytest.approx(1.0) for v in s.values())


@pytest.mark.parametrize("name", NAMES)
def test_dropping_the_least_important_beats_dropping_the_most_important(trained, name):
    model, tr, te, space = trained
    s = importance.compute(name, space, tr)
    low_acc = high_acc = 0.0
    for g in space.groups:
        k = g.size // 4
        order = np.argsort(s[g.gid], kind="stable")
        low_acc += evaluate(apply_kept(space, {g.gid: sorted(order[k:])}), te)       # drop the k least
        high_acc += evaluate(apply_kept(space, {g.gid: sorted(order[:-k])}), te)     # drop the k most
    assert low_acc > high_acc + 0.1 * len(space.groups)


def test_l1_sums_layer_normalised_slices_over_every_layer_a_channel_touches():
    """The residual stream (stem, block's last conv, the block's first conv and
    the downsampling conv read it) weighs per channel as many layers as it
    touches; a channel with larger filters ranks higher inside its group."""
    torch.manual_seed(0)
    model = Res().eval()
    with torch.no_grad():
        model.stem[0].weight[3].mul_(5.0)  # a strong filter in the residual stream
    space = PruningSpace(model, (torch.randn(1, 3, 8, 8),))
    scores = importance.compute("l1", space)
    by_root = {g.root: g.gid for g in space.groups}
    stream = scores[next(g.gid for g in space.groups if g.root not in ("block.0.0", "down.0"))]
    inner = scores[by_root["block.0.0"]]
    # stream: stem, block.2 (out), block.0.0 and down.0 (in) -> 4 layers; inner: block.0.0 (out), block.2 (in)
    assert stream.mean() == pytest.approx(4.0)
    assert inner.mean() == pytest.approx(2.0)
    assert int(np.argmax(stream)) == 3
    for name in ("l1", "l2"):
        s = importance.compute(name, space)
        assert s.scale == "members" and all(np.all(np.isfinite(v)) and np.all(v >= 0) for v in s.values())


@pytest.mark.parametrize("arch", ["grouped", "invres"])
def test_l1_counts_grouped_and_depthwise_layers_once_per_side(arch):
    model, x = archs.create(arch, size=16)
    space = PruningSpace(model.eval(), (x,))
    scores = importance.compute("l1", space)
    for g in space.groups:
        m = scores[g.gid].mean()
        assert m >= 1.0 - 1e-9 and abs(m - round(m)) < 1e-9, (g.root, m)


def test_bn_scale_is_gamma_and_network_normalised():
    model = Res().eval()
    with torch.no_grad():
        model.down[1].weight.copy_(torch.linspace(0.0, 3.1, 32))
    space = PruningSpace(model, (torch.randn(1, 3, 8, 8),))
    s = importance.compute("bn-scale", space)
    gid = next(g.gid for g in space.groups if g.root == "down.0")
    raw = np.linspace(0.0, 3.1, 32)
    assert s[gid][0] == 0.0 and np.argmax(s[gid]) == 31
    total = np.concatenate(list(s.values()))
    # the ratio between channels is gamma's, and the network mean is 1
    assert s[gid][31] / s[gid][16] == pytest.approx(raw[31] / raw[16])
    assert total.mean() == pytest.approx(1.0)


def test_cpmc_formula_counts_consumers_flops_and_params():
    torch.manual_seed(0)
    model = Res().eval()
    space = PruningSpace(model, (torch.randn(1, 3, 8, 8),))
    s = importance.compute("cpmc", space)
    g = next(g for g in space.groups if g.root == "down.0")  # down.0 -> fc
    conv, fc = model.down[0].weight.detach().double(), model.fc.weight.detach().double()
    w = conv.abs().sum(dim=(1, 2, 3)) / conv.norm() + fc.abs().sum(dim=0) / fc.norm()
    # removing one channel of down.0: its 16x9 weights and FLOPs at 4x4, and one fc column
    flops = 2 * 16 * 9 * 16 + 2 * 10
    params = 16 * 9 + 10
    ratio = s[g.gid][3] / s[g.gid][5]
    assert ratio == pytest.approx(float(w[3] / w[5]))  # equal costs inside a group: the weights decide
    # raising the consumer's input slice of channel 3 raises its score (weight dependency)
    with torch.no_grad():
        model.fc.weight[:, 3] *= 4
    s2 = importance.compute("cpmc", PruningSpace(model, (torch.randn(1, 3, 8, 8),)))
    assert s2[g.gid][3] / s2[g.gid][5] > ratio
    # across groups the ratio carries the costs: s = w * (flops * params) ** -1/4, normalisations cancel
    costs_f, costs_p = importance.removal_costs(space)
    assert costs_f[g.gid][0] == flops and costs_p[g.gid][0] == params
    stream = next(o for o in space.groups if "stem.0" in o.segments[0].layers)
    mods = {n: model.get_submodule(n).weight.detach().double() for n in ("stem.0", "block.1", "block.0.0")}
    w_s = sum(mods[n][0].abs().sum() / mods[n].norm() for n in ("stem.0", "block.1"))
    w_s = w_s + mods["block.0.0"][:, 0].abs().sum() / mods["block.0.0"].norm()
    w_s = w_s + conv[:, 0].abs().sum() / conv.norm()
    f_s, p_s = costs_f[stream.gid][0], costs_p[stream.gid][0]
    assert f_s == 2 * 64 * (27 + 144 + 144) + 2 * 16 * 288 and p_s == 27 + 144 + 144 + 288
    want = float(w[5] / w_s) * ((flops * params) / (f_s * p_s)) ** -0.25
    assert s[g.gid][5] / s[stream.gid][0] == pytest.approx(want)


def test_gate_gradients_are_the_derivative_of_zeroing_a_channel():
    torch.manual_seed(0)
    model = Res().double().eval()  # float64, so a finite difference is exact enough to compare
    space = PruningSpace(model, (torch.randn(1, 3, 8, 8, dtype=torch.float64),))
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    (a,) = list(gate_gradients(space, [(x, y)]))
    g = next(g for g in space.groups if g.root == "block.0.0")  # read by block.1 only
    r = 5
    names = [n for n, items in consumers(space).items() if any(i[0] == g.gid for i in items)]
    assert names == ["block.1"]

    def loss_at(scale):
        def hook(mod, inp):
            z = inp[0].clone()
            z[:, r] *= scale
            return (z,)
        h = model.block[1].register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                return float(F.cross_entropy(model(x), y, reduction="none")[1])
        finally:
            h.remove()
    eps = 1e-5
    numeric = (loss_at(1 + eps) - loss_at(1 - eps)) / (2 * eps)
    assert abs(numeric) > 1e-6 and a[g.gid][1, r] == pytest.approx(numeric, rel=1e-5)
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())


def test_ccp_elimination_uses_the_pairwise_coupling():
    s = np.array([1.0, 1.1, 2.0])
    pair = np.zeros((3, 3))
    pair[0, 1] = pair[1, 0] = 5.0  # channels 0 and 1 are redundant only together
    order, steps = eliminate(s, pair)
    assert order == [0, 2, 1] and steps.tolist() == [1.0, 2.0, 11.1]
    # the scores rank the elimination exactly and are the running maximum of the steps
    scores = ordered_scores(order, steps, most_important_first=False)
    assert list(np.argsort(scores)) == order
    assert scores[1] == pytest.approx(11.1, rel=1e-3)
    # without coupling the order follows the first-order term
    assert eliminate(s, np.zeros((3, 3)))[0] == [0, 1, 2]


def test_dcp_ranks_a_dead_channel_last_and_is_deterministic():
    torch.manual_seed(0)
    model = Res().eval()
    with torch.no_grad():
        model.down[0].weight[7] = 0.0       # channel 7 of down's group: no output ...
        model.fc.weight[:, 7] = 0.0         # ... and no consumer weight
    space = PruningSpace(model, (torch.randn(1, 3, 8, 8),))
    tr, _ = digits_loaders(batch_size=32, size=8)
    batches = [b for _, b in zip(range(3), tr)]
    s = importance.compute("dcp", space, batches)
    g = next(g for g in space.groups if g.root == "down.0")
    assert np.argmin(s[g.gid]) == 7
    again = importance.compute("dcp", space, batches)
    assert all(np.array_equal(s[k], again[k]) for k in s)


def _problem(space, scores, flops_frac):
    options = floor_options(space, {g.gid: group_options(g, 4, 4) for g in space.groups}, 4, Constraints())
    ev = Evaluator(space, None, scores)
    full = Problem(space, options, scores, Constraints(), {})
    lo, hi = full.usage(full.smallest())["flops"], full.usage(full.largest())["flops"]
    cons = Constraints(max_flops=lo + flops_frac * (hi - lo))
    return Problem(space, options, scores, cons, {}), ev


@pytest.mark.parametrize("name", NAMES)
def test_every_criterion_works_with_every_selector(trained, name):
    model, tr, te, space = trained
    scores = importance.compute(name, space, tr)
    for selector in SELECTORS:
        problem, ev = _problem(space, scores, 0.5)
        sel = select(selector, problem, time_limit_s=20)
        assert sel.feasible and problem.feasible(sel.choice)
        for g in space.groups:  # each group keeps its top-k channels by this criterion
            k = len(sel.kept[g.gid])
            top = set(np.argsort(-scores[g.gid], kind="stable")[:k].tolist())
            assert set(sel.kept[g.gid]) == top
        pruned = apply_kept(space, sel.kept)
        assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 10)
        assert 0.0 < sel.objective <= 1.0


def test_qcqp_objective_follows_the_criterion():
    torch.manual_seed(0)
    model = Res().eval()
    space = PruningSpace(model, (torch.randn(1, 3, 8, 8),))
    l1 = importance.compute("l1", space)
    bn = importance.compute("bn-scale", space)
    base = importance.weight_tables(space, l1)
    plain = importance.weight_tables(space, dict(l1))  # a plain dict: the paper's table
    tables = importance.weight_tables(space, bn)
    assert all(np.array_equal(base[k], plain[k]) for k in base)
    g = next(g for g in space.groups if g.root == "down.0")
    # fc reads down's channels: its column j is scaled by sqrt(score of j) (the outputs are fixed: 1)
    expect = base["fc"] * np.sqrt(bn[g.gid])[None, :]
    assert np.allclose(tables["fc"], expect)
    # a channel with gamma 0 makes every weight it touches worthless to qcqp
    with torch.no_grad():
        model.down[1].weight[4] = 0.0
    space = PruningSpace(model, (torch.randn(1, 3, 8, 8),))
    t0 = importance.weight_tables(space, importance.compute("bn-scale", space))
    assert np.all(t0["down.0"][4] == 0) and np.all(t0["fc"][:, 4] == 0)
