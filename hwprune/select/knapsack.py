"""HALP's latency knapsack (Shen et al., NeurIPS 2022; METHODS.md section 5).

Items are channel blocks kept in importance order: a group's grid options are
its prefixes of blocks (one device step each), so choosing option k keeps the
k-th prefix and a multiple-choice knapsack over groups is HALP's 0/1 knapsack
with the in-order constraint. A block's value is the summed score of its
channels; its cost is the latency-model difference it makes, counted on every
layer the group touches: the producers' output width and the consumers'
(next layers') input width, with the other groups held at a reference plan.
Around the reference the network's latency is taken as separable,
``T(ref) + sum_g [T(ref with g at k) - T(ref)]`` and solved by dynamic
programming; as in HALP's iterative pruning the target descends from the
reference's latency to the limit in ``steps`` steps, each relinearised around
the previous answer, then ``settle`` more steps at the limit. In every step
the capacity is scaled down (bisection, 8 tries) until the true network meets
the step's target, since the separable model misses the interaction of two
groups on one layer.

Discretisation: each group's costs are shifted by their minimum, then divided
by ``room / bins`` (``room``: capacity left above the sum of minima) and
rounded *up* to integers, so a plan that fits the integer capacity ``bins``
also fits the separable model; items heavier than the capacity are dropped.
With several constraints one DP runs on a surrogate: the sum of each
resource's cost divided by its limit (weights start at 1 and double for a
constraint the full-capacity plan breaks). A per-layer bound (memory) removes
the options that break it even with every other group at its smallest. The
best plan of the steps at the limits that meets every constraint is kept; if
none does, greedy cuts the last plan until they hold.

A removable residual block (:mod:`hwprune.graph.blocks`) is one more item
with two options: kept (its score, the cost of its layers at the
reference's widths) or removed (nothing); a group's cost counts only the
layers still present in the reference.
"""
from __future__ import annotations

import time

import numpy as np

from hwprune.graph.blocks import KEPT, dead_groups, dead_layers, is_block_key
from hwprune.graph.space import Choice
from hwprune.select.evaluator import Selection
from hwprune.select.greedy import greedy_limits


def _mck(values: list[np.ndarray], costs: list[np.ndarray], cap: float, bins: int) -> list[int] | None:
    """Multiple-choice knapsack by DP: one option per group, maximise the
    summed value with summed cost <= cap; None when nothing fits."""
    base = sum(float(c.min()) for c in costs)
    room = cap - base
    if room < -1e-12:
        return None
    unit = room / bins if room > 1e-12 else 1.0
    weights = []
    for c in costs:
        d = c - c.min()
        w = np.ceil(d / unit - 1e-9) if room > 1e-12 else np.where(d > 1e-12, bins + 1, 0)
        weights.append(np.maximum(w, 0).astype(np.int64))
    best = np.zeros(bins + 1)  # best value with total weight <= b
    take = np.zeros((len(values), bins + 1), dtype=np.int32)
    for gi, (v, w) in enumerate(zip(values, weights)):
        new = np.full(bins + 1, -np.inf)
        arg = np.zeros(bins + 1, dtype=np.int32)
        for k in range(len(v)):
            if w[k] > bins:
                continue
            cand = np.full(bins + 1, -np.inf)
            cand[w[k]:] = best[:bins + 1 - w[k]] + v[k]
            upd = cand > new
            new[upd] = cand[upd]
            arg[upd] = k
        best, take[gi] = new, arg
    if not np.isfinite(best[bins]):
        return None
    out, b = [0] * len(values), bins
    for gi in range(len(values) - 1, -1, -1):
        k = int(take[gi, b])
        out[gi] = k
        b -= int(weights[gi][k])
    return out


def _separable(problem, r, gid: int, ref: Choice, layers: list[int]) -> np.ndarray:
    """Cost of resource ``r`` on the layers touching ``gid`` for each option,
    the other groups held at ``ref``."""
    space = problem.space
    out = []
    for opt in problem.options[gid]:
        ch = {**ref, gid: opt}
        dead = dead_layers(space, ch)
        saved = r.saving(ch) - r.saving({**ch, gid: KEPT}) if is_block_key(gid) else 0.0
        out.append(sum(r.layer_cost(i, *space.layer_widths(space.layers[i], ch)) for i in layers if i not in dead)
                   + (0.0 if is_block_key(gid) or gid in dead_groups(space, ch) else r.group_cost(gid, opt)) - saved)
    return np.array(out)


def _allowed(problem) -> dict[int, list[int]]:
    """Option indices that no per-layer bound rules out on its own."""
    space, smallest = problem.space, problem.smallest()
    per_layer = [r for r in problem.resources if r.per_layer]
    out = {}
    for gid, opts in problem.options.items():
        keep = []
        for k, opt in enumerate(opts):
            ch = {**smallest, gid: opt}
            if all(r.layer_cost(i, *space.layer_widths(space.layers[i], ch)) <= r.limit
                   for r in per_layer for i in space.layers_of_group(gid)):
                keep.append(k)
        out[gid] = keep or [0]
    return out


def knapsack(problem, start: Choice | None = None, bins: int = 4000, steps: int = 4,
             settle: int = 3) -> Selection:
    """HALP's knapsack under every constraint of ``problem`` (module docstring)."""
    t0 = time.perf_counter()
    ev, options, space = problem.ev, problem.options, problem.space
    gids = list(options)
    allowed = _allowed(problem)
    values = [np.array([ev.importance({gid: options[gid][k]}) for k in allowed[gid]]) for gid in gids]
    blocks = {b.key: list(b.layers) for b in space.blocks}
    layers = {gid: blocks[gid] if is_block_key(gid) else space.layers_of_group(gid) for gid in gids}
    additive = [r for r in problem.resources if not r.per_layer]
    weight = {r.name: 1.0 for r in additive}
    ref = dict(start) if start is not None else problem.largest()
    at_start = {r.name: r.value(ref) for r in additive}
    best = None

    def linearise(ref):
        """Per resource: each group's separable costs and the rest of ``T(ref)``."""
        out = {}
        for r in additive:
            rest, seps = r.value(ref), []
            for gid in gids:
                sep = _separable(problem, r, gid, ref, layers[gid])
                rest -= sep[options[gid].index(ref[gid])] if ref[gid] in options[gid] else sep[-1]
                seps.append(sep[allowed[gid]])
            out[r.name] = (seps, rest)
        return out

    def solve_dp(lin, targets, scale):
        costs = [np.zeros(len(allowed[gid])) for gid in gids]
        cap = 0.0
        for r in additive:
            w = weight[r.name] / r.limit
            seps, rest = lin[r.name]
            for gi in range(len(gids)):
                costs[gi] += w * seps[gi]
            cap += w * (scale * targets[r.name] - rest)
        ks = _mck(values, costs, cap, bins) if additive else [len(a) - 1 for a in allowed.values()]
        if ks is None:
            return {gid: options[gid][allowed[gid][0]] for gid in gids}
        return {gid: options[gid][allowed[gid][k]] for gid, k in zip(gids, ks)}

    for step in range(1, steps + settle + 1):
        frac = min(1.0, step / steps)  # HALP prunes in steps: the targets descend to the limits
        targets = {r.name: r.limit if at_start[r.name] <= r.limit else
                   at_start[r.name] + frac * (r.limit - at_start[r.name]) for r in additive}
        lo, hi, choice, lin = 0.0, 1.0, None, linearise(ref)
        for attempt in range(8):  # the largest capacity scale whose plan truly meets the targets
            scale = 1.0 if attempt == 0 else 0.5 * (lo + hi)
            trial = solve_dp(lin, targets, scale)
            over = [r for r in additive if r.value(trial) > targets[r.name] * (1 + 1e-6)]
            if not over:
                choice, lo = trial, scale
                if attempt == 0:
                    break
            else:
                hi = scale
                if attempt == 0:
                    for r in over:
                        weight[r.name] *= 2.0
        if choice is None:
            choice = trial
        ref = choice
        if frac == 1.0 and not problem.violated(choice):
            if best is None or ev.importance(choice) > ev.importance(best):
                best = choice
    status = "heuristic"
    if best is None:
        best, _ = greedy_limits(ev, options, problem.resources, start=ref, swap=False, grow=False)
        status = "heuristic (greedy repair)"
    return problem.selection(best, "knapsack", status=status, solve_s=time.perf_counter() - t0)
