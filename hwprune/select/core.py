"""Budgeted width selection on the device's channel grid.

A group's options are kept counts per segment on the device grid: multiples of
the device step, the full width, and below one step the device's minimum,
since latency is flat between grid points and widths off the grid buy nothing.
Inside a segment the top-k channels by importance are kept.

Three selectors share one interface, :func:`select` (``problem`` is a
:class:`hwprune.select.problem.Problem`: the space, the options, the channel
scores, one :class:`Evaluator` per device and every constraint):

- ``greedy``: start from the full network, repeatedly take the one-level width
  cut with the least importance lost per unit of constraint excess removed
  (each violated constraint's saving divided by its limit, summed) until every
  constraint holds, then spend any slack by re-growing the groups with the most
  importance per unit of normalised cost that still fit. When a cut satisfies
  every constraint, the cut losing least importance is taken (not the best
  ratio), and a final local search swaps one level between two groups while
  that gains importance within the constraints. With one latency target this
  is exactly the single-budget greedy of :func:`greedy`.
- ``knapsack``: HALP's multiple-choice knapsack by dynamic programming
  (:mod:`hwprune.select.knapsack`).
- ``qcqp``: the exact discrete QCQP of Jeong et al. as a MILP solved by HiGHS
  (:mod:`hwprune.select.qcqp.milp`).

greedy and knapsack maximise the kept channel scores; qcqp maximises the
importance of active weights. Every :class:`Selection` reports both, so plans
of different selectors compare on the same objective.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from hwprune.graph.space import ChannelGroup, PruningSpace
from latency_models import NetworkLatencyModel

Choice = dict[int, tuple[int, ...]]
SELECTORS = ("greedy", "knapsack", "qcqp")
REL_TOL = 1e-6  # a constraint holds when value <= limit * (1 + REL_TOL)


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
    """A chosen width per group. ``importance``: kept channel scores;
    ``objective``: kept importance of active weights as a fraction of the full
    network's (nan where not computed); ``status``: ``optimal`` (proven),
    ``gap`` (stopped within the requested relative MIP gap), ``time limit``,
    ``heuristic`` (greedy, knapsack) or ``infeasible``; ``mip_gap``: relative
    gap the solver proved (qcqp only); ``usage``: value of every resource;
    ``note``: how the selector searched, where that qualifies the status."""
    choice: Choice
    kept: dict[int, list[int]]
    predicted_ms: float
    importance: float
    feasible: bool
    selector: str = "greedy"
    objective: float = float("nan")
    status: str = ""
    mip_gap: float | None = None
    solve_s: float = 0.0
    usage: dict = field(default_factory=dict)
    note: str = ""


class Evaluator:
    """Predicted latency and kept importance of a choice, with per-layer caching.

    ``model`` may be None for an evaluator used only for importance and kept
    channels. Latency = (sum of per-layer costs + c0) x correction, where a
    layer's cost is its model prediction times ``1 + c3`` plus the remainder's
    per-layer terms, ``c1 x`` its output activation elements ``+ c2 x`` its
    weight elements, so the sum equals ``NetworkLatencyModel.predict``."""

    def __init__(self, space: PruningSpace, model: NetworkLatencyModel | None,
                 scores: dict[int, np.ndarray], correction: float = 1.0):
        self.space, self.model, self.correction = space, model, correction
        self._cache: dict[tuple[int, int, int], float] = {}
        self.order = {}
        self.prefix = {}
        for g in space.groups:
            s = scores[g.gid]
            self.order[g.gid] = [sorted(idx, key=lambda i: -s[i]) for idx in g.seg_index]
            self.prefix[g.gid] = [np.concatenate([[0.0], np.cumsum(s[o])]) for o in self.order[g.gid]]
        self._elems = []
        for layer in space.layers:
            oh, ow = layer.spec.out_hw
            self._elems.append(layer.spec.batch * oh * ow)

    def _remainder(self) -> tuple[float, float, float, float]:
        return self.model.remainder_coef()

    def layer_ms(self, i: int, n_in: int, n_out: int) -> float:
        """Uncorrected cost of layer ``i`` at widths (n_in, n_out)."""
        key = (i, n_in, n_out)
        v = self._cache.get(key)
        if v is None:
            spec = self.space.layers[i].spec
            groups = n_in if spec.depthwise else spec.groups
            spec = replace(spec, in_channels=n_in, out_channels=n_out, groups=groups)
            _, c1, c2, c3 = self._remainder()
            weights = n_out * (n_in // groups) * spec.kernel[0] * spec.kernel[1]
            v = self._cache[key] = (1 + c3) * self.model.layer_ms(spec) + c1 * self._elems[i] * n_out + c2 * weights
        return v

    def layer_ms_grid(self, i: int, n_in: np.ndarray, n_out: np.ndarray) -> np.ndarray:
        """:meth:`layer_ms` over arrays of widths (vectorised for a plain
        :class:`NetworkLatencyModel`)."""
        n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64))
        model = self.model
        if type(model).layer_ms is not NetworkLatencyModel.layer_ms:
            flat = [self.layer_ms(i, a, b) for a, b in zip(n_in.ravel().tolist(), n_out.ravel().tolist())]
            return np.array(flat, dtype=float).reshape(n_in.shape)
        spec = self.space.layers[i].spec
        v = model.layer_widths_ms(spec, n_in, n_out)
        _, c1, c2, c3 = self._remainder()
        groups = n_in if spec.depthwise else spec.groups
        weights = n_out * (n_in // groups) * spec.kernel[0] * spec.kernel[1]
        return (1 + c3) * v + c1 * self._elems[i] * n_out + c2 * weights

    def const_ms(self) -> float:
        """Uncorrected constant of the network latency (the remainder's c0)."""
        return self._remainder()[0]

    def latency_ms(self, choice: Choice) -> float:
        widths = self.space.layer_widths
        total = sum(self.layer_ms(i, *widths(layer, choice)) for i, layer in enumerate(self.space.layers))
        return (total + self.const_ms()) * self.correction

    def importance(self, choice: Choice) -> float:
        return float(sum(p[k] for gid, ks in choice.items() for p, k in zip(self.prefix[gid], ks)))

    def kept(self, choice: Choice) -> dict[int, list[int]]:
        return {gid: sorted(i for o, k in zip(self.order[gid], ks) for i in o[:k])
                for gid, ks in choice.items()}


class Limit:
    """A resource bound: ``value(choice) <= limit`` for a sum over the network;
    for a ``per_layer`` resource, every layer's value <= limit."""

    per_layer = False
    limit = math.inf

    def value(self, choice: Choice) -> float:
        raise NotImplementedError

    def layer_values(self, choice: Choice) -> list[float]:
        raise NotImplementedError

    def measure(self, choice: Choice) -> tuple[float, bool]:
        """(load, holds): the load greedy reduces (the value; for a per-layer
        resource the summed excess over the limit) and whether the bound holds."""
        bound = self.limit * (1 + REL_TOL)
        if self.per_layer:
            excess = sum(max(0.0, v - self.limit) for v in self.layer_values(choice))
            return excess, all(v <= bound for v in self.layer_values(choice))
        v = self.value(choice)
        return v, v <= bound


class _LatencyLimit(Limit):
    def __init__(self, ev: Evaluator, limit: float):
        self.ev, self.limit = ev, float(limit)

    def value(self, choice: Choice) -> float:
        return self.ev.latency_ms(choice)


def greedy(ev: Evaluator, options: dict[int, list[tuple[int, ...]]], target_ms: float,
           start: Choice | None = None, swap: bool = True) -> Selection:
    """One latency target: cut from ``start`` (default: the full network) until
    the prediction meets ``target_ms``, grow into the slack, then (``swap``)
    the local search."""
    choice, feasible = greedy_limits(ev, options, [_LatencyLimit(ev, target_ms)], start, swap)
    return Selection(choice, ev.kept(choice), ev.latency_ms(choice), ev.importance(choice), feasible,
                     status="heuristic")


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
        loads = [lim.measure(ch) for lim in limits]
        return ch, [m[0] for m in loads], all(m[1] for m in loads)

    cur_ch, cur_load, ok = state(level)
    cur_imp = ev.importance(cur_ch)
    while not ok:
        violated = [k for k, lim in enumerate(limits) if not lim.measure(cur_ch)[1]]
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


def select(name: str, problem, *, start: Choice | None = None, swap: bool = True,
           infeasible: str = "raise", time_limit_s: float = 60.0, mip_rel_gap: float = 1e-3,
           max_options: int = 12) -> Selection:
    """Choose widths with selector ``name`` under every constraint of ``problem``.

    The smallest network the options allow is the least of every resource; if
    it breaks a constraint, no plan can meet it: ``infeasible="raise"`` raises
    :class:`UserError` naming each such constraint and the smallest value that
    can be met, ``"smallest"`` returns that network with ``feasible=False``.
    ``start`` (a choice) seeds greedy and knapsack; qcqp solves from scratch,
    within ``time_limit_s``, to a relative MIP gap ``mip_rel_gap`` (0.1 %),
    searching groups of more than ``max_options`` widths coarse to fine
    (:func:`hwprune.select.qcqp.milp.solve`)."""
    from hwprune.errors import UserError
    if name not in SELECTORS:
        raise UserError(f"unknown selector {name!r}; choose one of {', '.join(SELECTORS)}")
    t0 = time.perf_counter()
    smallest = problem.smallest()
    bad = problem.violated(smallest)
    if bad:
        if infeasible == "raise":
            raise UserError(problem.infeasible_message(bad))
        return problem.selection(smallest, name, status="infeasible", solve_s=time.perf_counter() - t0)
    if name == "greedy":
        choice, ok = greedy_limits(problem.ev, problem.options, problem.resources, start, swap)
        if not ok:  # stuck where no single cut helps (a table that is not monotone): grow from the floor
            choice, ok = greedy_limits(problem.ev, problem.options, problem.resources, smallest, swap)
        return problem.selection(choice, name, status="heuristic", solve_s=time.perf_counter() - t0)
    if name == "knapsack":
        from hwprune.select.knapsack import knapsack
        return knapsack(problem, start=start)
    from hwprune.select.qcqp.milp import solve
    return solve(problem, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap, max_options=max_options)
