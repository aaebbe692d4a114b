"""Widening a measured plan one grid step: the plans offered on a real pruning space."""
import archs
import numpy as np

from hwprune.graph.space import PruningSpace, group_options
from hwprune.loop.widen import WIDEN_SLACK, Step, Widening, pick, wider_plans
from hwprune.select.problem import Constraints, Problem, floor_options


def problem(name, **bounds):
    model, x = archs.create(name, size=16)
    space = PruningSpace(model, x)
    scores = {g.gid: np.random.default_rng(g.gid).random(g.size) + 0.5 for g in space.groups}
    cons = Constraints(**bounds)
    options = floor_options(space, {g.gid: group_options(g, 8, 8) for g in space.groups}, 8, cons)
    return Problem(space, options, scores, cons)


def test_each_wider_plan_moves_one_group_one_option_up():
    p = problem("concat_residual")
    base = {gid: opts[len(opts) // 2] for gid, opts in p.options.items()}
    plans = wider_plans(p, base, "greedy")
    movable = [gid for gid, opts in p.options.items() if opts.index(base[gid]) + 1 < len(opts)]
    assert len(plans) == len(movable) > 1
    for sel in plans:
        changed = [gid for gid in base if sel.choice[gid] != base[gid]]
        assert len(changed) == 1
        opts = p.options[changed[0]]
        assert opts.index(sel.choice[changed[0]]) == opts.index(base[changed[0]]) + 1
        assert sel.importance > p.ev.importance(base) and sel.status == "widened" and sel.selector == "greedy"
    assert wider_plans(p, p.largest(), "greedy") == []


def test_a_wider_plan_breaking_an_exact_bound_is_not_offered():
    free = problem("grouped")
    base = free.smallest()
    flops = [free.usage(s.choice)["flops"] for s in wider_plans(free, base, "greedy")]
    bound = (min(flops) + max(flops)) / 2
    bounded = problem("grouped", max_flops=bound)
    kept = [bounded.usage(s.choice)["flops"] for s in wider_plans(bounded, base, "greedy")]
    assert 0 < len(kept) < len(flops) and max(kept) <= bound


def test_pick_prefers_the_step_closest_under_the_aim_then_the_cheapest_within_reach():
    def step(est, imp=1.0):
        return Step(type("S", (), {"importance": imp})(), est)
    a, b, c = step(0.90), step(0.95), step(0.95, imp=2.0)
    assert pick([a, b, c], 0.965) is c
    near, far = step(1.0 + WIDEN_SLACK), step(1.2)
    assert pick([far, near], 0.965) is near and pick([far], 0.965) is None and pick([], 0.965) is None


def test_the_note_says_what_widening_did():
    assert Widening(0).clause() == ""
    assert Widening(2).clause() == "; 2 plans one grid step wider measured"
    assert Widening(0, 1.5).clause() == ("; every plan one grid step wider is estimated at 150 % of the budget or "
                                          "more (measured only up to 115 %)")


def test_a_group_inside_a_removed_block_is_not_widened():
    from hwprune import zoo
    from hwprune.graph.blocks import KEPT, REMOVED, attach_blocks, block_options, dead_groups
    model, x = zoo.create("resnet20")
    space = attach_blocks(PruningSpace(model, x), "both")
    options = {g.gid: group_options(g, 8, 8) for g in space.groups}
    p = Problem(space, {**options, **block_options(space)}, {g.gid: np.ones(g.size) for g in space.groups})
    block = space.blocks[0]
    base = {**{gid: opts[0] for gid, opts in options.items()}, **{b.key: KEPT for b in space.blocks},
            block.key: REMOVED}
    dead = dead_groups(space, base)
    assert dead
    changed = {next(k for k in base if s.choice[k] != base[k]) for s in wider_plans(p, base, "greedy")}
    assert block.key in changed and not changed & dead and len(changed) > 1
