import numpy as np
import pytest

from hwprune import zoo
from hwprune.graph.space import PruningSpace, group_options, width_grid
from hwprune.select.evaluator import Evaluator
from hwprune.select.problem import Problem
from hwprune.select.selectors import select
from latency_models import NetworkLatencyModel
from profilers import LayerSpec


def test_width_grid_follows_the_device_step():
    assert width_grid(64, 16, 8) == [8, 16, 32, 48, 64]
    assert width_grid(24, 16, 8) == [8, 16, 24]
    assert width_grid(3, 16, 8) == [3]


class FlopsModel(NetworkLatencyModel):
    """Latency proportional to FLOPs: a synthetic, deterministic device."""

    def __init__(self):
        super().__init__()
        self.families_ = {}
        self.remainder_ = (0.0, 0.0)

    def layer_ms(self, spec: LayerSpec) -> float:
        return spec.flops / 1e6


def greedy(ev, options, target_ms):
    """The greedy selector under one latency target on device "d"."""
    problem = Problem(ev.space, options, ev.scores, evaluators={"d": ev}).with_latency({"d": target_ms})
    return select("greedy", problem, infeasible="smallest")


@pytest.fixture(scope="module")
def setup():
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, x)
    rng = np.random.default_rng(0)
    scores = {g.gid: rng.random(g.size) + 0.5 for g in space.groups}
    options = {g.gid: group_options(g, 16, 8) for g in space.groups}
    return space, scores, options


def test_greedy_meets_the_target_and_uses_the_slack(setup):
    space, scores, options = setup
    ev = Evaluator(space, FlopsModel(), scores)
    full = ev.latency_ms(space.full_choice())
    for frac in (0.3, 0.5, 0.8):
        sel = greedy(ev, options, frac * full)
        assert sel.feasible and sel.predicted_ms <= frac * full
        assert sel.predicted_ms >= 0.85 * frac * full  # budget not wasted
        for gid, ks in sel.choice.items():
            assert all(k >= 1 for k in ks)
            assert ks in options[gid]
            assert len(sel.kept[gid]) == sum(ks)


def test_more_budget_never_keeps_less_importance(setup):
    space, scores, options = setup
    ev = Evaluator(space, FlopsModel(), scores)
    full = ev.latency_ms(space.full_choice())
    imps = [greedy(ev, options, f * full).importance for f in (0.3, 0.5, 0.7, 0.9)]
    assert imps == sorted(imps)


def test_kept_channels_are_the_most_important(setup):
    space, scores, options = setup
    ev = Evaluator(space, FlopsModel(), scores)
    sel = greedy(ev, options, 0.5 * ev.latency_ms(space.full_choice()))
    for g in space.groups:
        kept = set(sel.kept[g.gid])
        dropped = [i for i in range(g.size) if i not in kept]
        if dropped:
            assert min(scores[g.gid][list(kept)]) >= max(scores[g.gid][dropped])


def test_unreachable_target_is_reported_infeasible(setup):
    space, scores, options = setup
    sel = greedy(Evaluator(space, FlopsModel(), scores), options, 1e-6)
    assert not sel.feasible
    assert all(ks == options[gid][0] for gid, ks in sel.choice.items())


def test_a_full_width_off_the_alignment_also_offers_the_aligned_width_below_it():
    """21 channels on a grid of 16 with alignment 4: 16 and 21, and 20, whose
    blocked kernels can run at half the time of 21's plain ones."""
    assert width_grid(21, 16, 8, align=4) == [8, 16, 20, 21]
    assert width_grid(32, 16, 8, align=4) == [8, 16, 32]
    assert width_grid(21, 16, 8) == [8, 16, 21]
