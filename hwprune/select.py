"""Budgeted width selection on the device's channel grid.

A group's options are kept counts per segment on the device grid: multiples of
the device step (16 on ORT CPU), the full width, and below one step the
device's minimum (half a step by default), since latency is flat between grid
points and widths off the grid buy nothing. Inside a segment the top-k channels
by importance are kept.

``greedy`` (the spine's selector): start from the full network, repeatedly
take the one-level width cut with the least importance lost per predicted
millisecond saved until the prediction meets the target, then spend any slack
by re-growing the groups with the most importance per millisecond that still
fit. When a cut reaches the target, the cut losing least importance is taken
(not the best ratio), and a final local search swaps one level between two
groups while that gains importance within the target. Objective and constraint use the same latency model the rest of the
engine uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latency_models import NetworkLatencyModel

from .graph import ChannelGroup, PruningSpace

Choice = dict[int, tuple[int, ...]]


def width_grid(size: int, step: int, min_width: int) -> list[int]:
    grid = set(range(step, size + 1, step)) | {size}
    if min_width < step:
        grid.add(min(min_width, size))
    return sorted(w for w in grid if w >= min(min_width, size))


def group_options(g: ChannelGroup, step: int, min_width: int) -> list[tuple[int, ...]]:
    if len(g.segments) == 1:
        return [(w,) for w in width_grid(g.size, step, min_width)]
    quantum = max(1, min(step, min_width))
    options = set()
    for w in width_grid(g.size, step, min_width):
        frac = w / g.size
        ks = []
        for s in g.segments:
            k = int(round(frac * s.size / quantum)) * quantum
            ks.append(int(min(s.size, max(min(quantum, s.size), k))))
        options.add(tuple(ks))
    return sorted(options, key=sum)


@dataclass(frozen=True)
class Selection:
    choice: Choice
    kept: dict[int, list[int]]
    predicted_ms: float
    importance: float
    feasible: bool


class Evaluator:
    """Predicted latency and kept importance of a choice, with per-layer caching."""

    def __init__(self, space: PruningSpace, model: NetworkLatencyModel,
                 scores: dict[int, np.ndarray], correction: float = 1.0):
        self.space, self.model, self.correction = space, model, correction
        self._cache: dict[tuple[int, int, int], float] = {}
        self.order = {}
        self.prefix = {}
        for g in space.groups:
            s = scores[g.gid]
            self.order[g.gid] = [sorted(idx, key=lambda i: -s[i]) for idx in g.seg_index]
            self.prefix[g.gid] = [np.concatenate([[0.0], np.cumsum(s[o])]) for o in self.order[g.gid]]

    def latency_ms(self, choice: Choice) -> float:
        total = 0.0
        specs = self.space.specs(choice)
        for i, spec in enumerate(specs):
            key = (i, spec.in_channels, spec.out_channels)
            v = self._cache.get(key)
            if v is None:
                v = self._cache[key] = self.model.layer_ms(spec)
            total += v
        return (total + self.model.remainder_ms(specs)) * self.correction

    def importance(self, choice: Choice) -> float:
        return float(sum(p[k] for gid, ks in choice.items() for p, k in zip(self.prefix[gid], ks)))

    def kept(self, choice: Choice) -> dict[int, list[int]]:
        return {gid: sorted(i for o, k in zip(self.order[gid], ks) for i in o[:k])
                for gid, ks in choice.items()}


def greedy(ev: Evaluator, options: dict[int, list[tuple[int, ...]]], target_ms: float,
           start: Choice | None = None, swap: bool = True) -> Selection:
    """Cut from ``start`` (default: the full network) until the prediction meets
    ``target_ms``, grow into the slack, then (``swap``) the local search."""
    if start is None:
        level = {gid: len(opts) - 1 for gid, opts in options.items()}
    else:
        level = {gid: options[gid].index(start[gid]) for gid in options}

    def choice_of(lv):
        return {gid: options[gid][i] for gid, i in lv.items()}

    cur = ev.latency_ms(choice_of(level))
    cur_imp = ev.importance(choice_of(level))
    while cur > target_ms:
        best, landing = None, None
        for gid, i in level.items():
            if i == 0:
                continue
            trial = dict(level)
            trial[gid] = i - 1
            t = ev.latency_ms(choice_of(trial))
            saved = cur - t
            if saved <= 1e-9:
                continue
            lost = cur_imp - ev.importance(choice_of(trial))
            if best is None or lost / saved < best[0]:
                best = (lost / saved, gid, t)
            if t <= target_ms and (landing is None or lost < landing[0]):
                landing = (lost, gid, t)  # a cut that reaches the target: take the cheapest
        if best is None:
            break
        step = landing if landing is not None else best
        level[step[1]] -= 1
        cur = step[2]
        cur_imp = ev.importance(choice_of(level))
    feasible = cur <= target_ms
    while feasible:  # spend the slack
        best = None
        for gid, i in level.items():
            if i + 1 >= len(options[gid]):
                continue
            trial = dict(level)
            trial[gid] = i + 1
            t = ev.latency_ms(choice_of(trial))
            if t > target_ms:
                continue
            gain = ev.importance(choice_of(trial)) - cur_imp
            ratio = gain / max(t - cur, 1e-9)
            if best is None or ratio > best[0]:
                best = (ratio, gid, t)
        if best is None:
            break
        level[best[1]] += 1
        cur = best[2]
        cur_imp = ev.importance(choice_of(level))
    if feasible and swap:
        level, cur, cur_imp = _swap(ev, options, level, choice_of, target_ms, cur, cur_imp)
    choice = choice_of(level)
    return Selection(choice, ev.kept(choice), cur, cur_imp, feasible)


def _swap(ev, options, level, choice_of, target_ms, cur, cur_imp, max_iter: int = 40):
    """Local search: grow one group a level and shrink another while the pair
    gains importance and stays within the target."""
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
                t = ev.latency_ms(choice_of(trial))
                if t > target_ms:
                    continue
                gain = ev.importance(choice_of(trial)) - cur_imp
                if gain > 1e-9 and (best is None or gain > best[0]):
                    best = (gain, trial, t)
        if best is None:
            break
        level, cur = best[1], best[2]
        cur_imp = ev.importance(choice_of(level))
    return level, cur, cur_imp
