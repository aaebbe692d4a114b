"""The greedy selector: cut the width with the least importance lost per unit of excess removed,
then spend the slack, then swap levels between groups (see :mod:`hwprune.select.selectors`)."""
from __future__ import annotations

from hwprune.graph.space import Choice
from hwprune.select.evaluator import Evaluator, Limit


def greedy_limits(ev: Evaluator, options: dict[int, list[tuple[int, ...]]], limits: list[Limit],
                  start: Choice | None = None, swap: bool = True, grow: bool = True) -> tuple[Choice, bool]:
    """The greedy of the module docstring over any set of limits; returns the
    choice and whether every limit holds."""
    if start is None:
        level = {gid: len(opts) - 1 for gid, opts in options.items()}
    else:
        level = {gid: options[gid].index(start[gid]) for gid in options}

    def choice_of(lv):
        return {gid: options[gid][i] for gid, i in lv.items()}

    def state(lv):
        ch = choice_of(lv)
        loads = [lim.load(ch) for lim in limits]
        return ch, [m[0] for m in loads], all(m[1] for m in loads)

    cur_ch, cur_load, ok = state(level)
    cur_imp = ev.importance(cur_ch)
    while not ok:
        violated = [k for k, lim in enumerate(limits) if not lim.load(cur_ch)[1]]
        best, landing = None, None
        for gid, i in level.items():
            if i == 0:
                continue
            trial = dict(level)
            trial[gid] = i - 1
            ch, load, t_ok = state(trial)
            saved = sum((cur_load[k] - load[k]) / limits[k].limit for k in violated)
            if saved <= 1e-12:
                continue
            lost = cur_imp - ev.importance(ch)
            if best is None or lost / saved < best[0]:
                best = (lost / saved, gid)
            if t_ok and (landing is None or lost < landing[0]):
                landing = (lost, gid)  # a cut that meets every limit: take the cheapest
        if best is None:
            break
        level[(landing or best)[1]] -= 1
        cur_ch, cur_load, ok = state(level)
        cur_imp = ev.importance(cur_ch)
    feasible = ok
    additive = [k for k, lim in enumerate(limits) if not lim.per_layer]
    while feasible and grow:  # spend the slack
        best = None
        for gid, i in level.items():
            if i + 1 >= len(options[gid]):
                continue
            trial = dict(level)
            trial[gid] = i + 1
            ch, load, t_ok = state(trial)
            if not t_ok:
                continue
            cost = sum(max(0.0, load[k] - cur_load[k]) / limits[k].limit for k in additive)
            ratio = (ev.importance(ch) - cur_imp) / max(cost, 1e-12)
            if best is None or ratio > best[0]:
                best = (ratio, gid)
        if best is None:
            break
        level[best[1]] += 1
        cur_ch, cur_load, ok = state(level)
        cur_imp = ev.importance(cur_ch)
    if feasible and swap:
        level = _swap(ev, options, level, choice_of, state, cur_imp)
    return choice_of(level), feasible


def _swap(ev, options, level, choice_of, state, cur_imp, max_iter: int = 40):
    """Local search: grow one group a level and shrink another while the pair
    gains importance and every limit holds."""
    for _ in range(max_iter):
        best = None
        for up, i in level.items():
            if i + 1 >= len(options[up]):
                continue
            for down, j in level.items():
                if down == up or j == 0:
                    continue
                trial = dict(level)
                trial[up], trial[down] = i + 1, j - 1
                ch, _, ok = state(trial)
                if not ok:
                    continue
                gain = ev.importance(ch) - cur_imp
                if gain > 1e-9 and (best is None or gain > best[0]):
                    best = (gain, trial)
        if best is None:
            break
        level = best[1]
        cur_imp = ev.importance(choice_of(level))
    return level
