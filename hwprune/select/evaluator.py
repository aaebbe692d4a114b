"""What a choice of widths costs and keeps: :class:`Evaluator` (predicted latency, kept
importance, kept channels), :class:`Selection` (a selector's answer) and :class:`Limit` (a bound
the greedy cuts towards)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hwprune.graph.blocks import KEPT, dead_groups, dead_layers
from hwprune.graph.grouped_modes import widths_ms
from hwprune.graph.space import Choice, PruningSpace
from latency_models import NetworkLatencyModel

REL_TOL = 1e-6  # a constraint holds when value <= limit * (1 + REL_TOL)


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
    channels. Latency = sum of per-layer costs + c0, a layer's cost being
    :meth:`NetworkLatencyModel.layer_cost_widths_ms` at its widths, so the sum
    equals ``NetworkLatencyModel.predict``."""

    def __init__(self, space: PruningSpace, model: NetworkLatencyModel | None,
                 scores: dict[int, np.ndarray]):
        self.space, self.model, self.scores = space, model, scores
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

    def layer_ms(self, i: int, n_in: int, n_out: int) -> float:
        """Cost of layer ``i`` at widths (n_in, n_out) inside the network
        (:meth:`NetworkLatencyModel.layer_cost_widths_ms`)."""
        key = (i, n_in, n_out)
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = float(self.layer_ms_grid(i, np.array(n_in), np.array(n_out)))
        return v

    def layer_ms_grid(self, i: int, n_in: np.ndarray, n_out: np.ndarray) -> np.ndarray:
        """:meth:`layer_ms` over arrays of widths (vectorised)."""
        return widths_ms(self.model.layer_cost_widths_ms, self.space.layers[i], n_in, n_out)

    def const_ms(self) -> float:
        """The constant of the network latency (the remainder's c0)."""
        return self.model.const_ms()

    def latency_ms(self, choice: Choice) -> float:
        """Predicted latency; the layers of removed blocks cost nothing."""
        widths, dead = self.space.layer_widths, dead_layers(self.space, choice)
        total = sum(self.layer_ms(i, *widths(layer, choice)) for i, layer in enumerate(self.space.layers)
                    if i not in dead)
        return total + self.const_ms()

    def importance(self, choice: Choice) -> float:
        """Kept channel scores of the groups still in the network, plus each
        kept block's own score (``scores[block key]``, where given)."""
        dead = dead_groups(self.space, choice)
        total = sum(p[k] for gid, ks in choice.items() if gid >= 0 and gid not in dead
                    for p, k in zip(self.prefix[gid], ks))
        total += sum(float(self.scores[b.key][0]) for b in self.space.blocks
                     if b.key in self.scores and tuple(choice.get(b.key, KEPT)) == KEPT)
        return float(total)

    def kept(self, choice: Choice) -> dict[int, list[int]]:
        """Kept root indices per group (block keys left out: :func:`removed_paths`)."""
        return {gid: sorted(i for o, k in zip(self.order[gid], ks) for i in o[:k])
                for gid, ks in choice.items() if gid >= 0}


class Limit:
    """A resource bound: ``value(choice) <= limit`` for a sum over the network;
    for a ``per_layer`` resource, every layer's value <= limit."""

    per_layer = False
    limit = math.inf

    def value(self, choice: Choice) -> float:
        raise NotImplementedError

    def layer_values(self, choice: Choice) -> list[float]:
        raise NotImplementedError

    def load(self, choice: Choice) -> tuple[float, bool]:
        """(load, holds): the load greedy reduces (the value; for a per-layer
        resource the summed excess over the limit) and whether the bound holds."""
        bound = self.limit * (1 + REL_TOL)
        if self.per_layer:
            excess = sum(max(0.0, v - self.limit) for v in self.layer_values(choice))
            return excess, all(v <= bound for v in self.layer_values(choice))
        v = self.value(choice)
        return v, v <= bound




