"""What a choice of widths costs and keeps: :class:`Evaluator` (predicted latency, kept
importance, kept channels), :class:`Selection` (a selector's answer) and :class:`Limit` (a bound
the greedy cuts towards)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from hwprune.graph.space import Choice, PruningSpace
from latency_models import NetworkLatencyModel
from profilers.specs import weight_count

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
    channels. Latency = sum of per-layer costs + c0, where a
    layer's cost is its model prediction times ``1 + c3`` plus the remainder's
    per-layer terms, ``c1 x`` its output activation elements ``+ c2 x`` its
    weight elements, so the sum equals ``NetworkLatencyModel.predict``."""

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
            weights = weight_count(spec)
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
        weights = weight_count(spec, n_in, n_out)
        return (1 + c3) * v + c1 * self._elems[i] * n_out + c2 * weights

    def const_ms(self) -> float:
        """Uncorrected constant of the network latency (the remainder's c0)."""
        return self._remainder()[0]

    def latency_ms(self, choice: Choice) -> float:
        widths = self.space.layer_widths
        total = sum(self.layer_ms(i, *widths(layer, choice)) for i, layer in enumerate(self.space.layers))
        return total + self.const_ms()

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

    def load(self, choice: Choice) -> tuple[float, bool]:
        """(load, holds): the load greedy reduces (the value; for a per-layer
        resource the summed excess over the limit) and whether the bound holds."""
        bound = self.limit * (1 + REL_TOL)
        if self.per_layer:
            excess = sum(max(0.0, v - self.limit) for v in self.layer_values(choice))
            return excess, all(v <= bound for v in self.layer_values(choice))
        v = self.value(choice)
        return v, v <= bound




