"""What a plan must satisfy, and the resources it is measured in.

:class:`Constraints` collects the user's bounds, any combination at once:
latency on one or more devices, FLOPs, parameters, peak activation memory,
per-group floors and ceilings. :class:`Problem` binds them to one pruning
space: options on the grid, channel scores, one latency :class:`Evaluator`
per device, and the active-weight objective, which every selector reads.

Resources, each a function of the group widths (and of the residual blocks
kept, :mod:`hwprune.graph.blocks`: a removed block's layers cost nothing):

- ``latency_ms[DEVICE]``: the device's latency model (sum of per-layer
  predictions plus the fitted remainder), the same numbers greedy uses.
- ``flops``: sum over conv/linear layers of ``LayerSpec.flops``
  (2 x multiply-accumulates); elementwise ops, pools and BatchNorm are not counted.
- ``params``: every parameter of the model: conv/linear weights and biases
  at their widths, plus per-channel parameters of other modules in a group
  (BatchNorm's weight and bias), plus the rest unchanged. Equals
  ``sum(p.numel() for p in pruned.parameters())``, residual blocks removed
  included (their layers, the groups that live only inside them, their other
  modules' per-channel parameters at the widths kept, and their fixed ones go).
- ``memory_mib``: peak activation memory, defined as the largest
  ``input + output`` activation of a single conv/linear layer, fp32, in MiB
  (2^20 bytes), at batch size of the example input. The live set across
  residual branches is not modelled (it would be one such linear bound per
  point of the execution order).

Floors: a group keeps at least ``max(one device step, ceil(min_ratio x width))``
channels (the smallest grid width at or above that). ``max_ratio``: a group
keeps at most ``max_ratio x width`` channels (the largest grid width at or
below it; a group whose grid has nothing between its floor and that ceiling
keeps its floor).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hwprune.errors import UserError
from hwprune.graph.blocks import dead_groups, dead_layers, removed_blocks
from hwprune.graph.grouped_modes import layer_weights
from hwprune.graph.space import Choice, PruningSpace
from hwprune.importance.active import ActiveImportance, block_params, channel_maps, extra_params_per_channel
from hwprune.importance.criteria import weight_tables
from hwprune.select.evaluator import Evaluator, Limit, Selection
from latency_models.memory import layer_activation_bytes


def _finite_positive(v) -> bool:
    try:
        return float(v) > 0 and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Constraints:
    """Bounds a plan must meet. ``latency_ms``: (device, budget ms) pairs."""
    latency_ms: tuple[tuple[str, float], ...] = ()
    max_flops: float | None = None
    max_params: float | None = None
    max_memory_mib: float | None = None
    min_ratio: float = 0.1
    max_ratio: float | None = None

    def __post_init__(self):
        seen = set()
        for dev, ms in self.latency_ms:
            if not _finite_positive(ms):
                raise UserError(f"latency budget {ms!r} on {dev} is not a positive number of ms")
            if dev in seen:
                raise UserError(f"two latency budgets for device {dev}; give one per device")
            seen.add(dev)
        for name in ("max_flops", "max_params", "max_memory_mib"):
            v = getattr(self, name)
            if v is not None and not _finite_positive(v):
                raise UserError(f"{name} {v!r} is not a positive number")
        if not 0.0 <= self.min_ratio < 1.0:
            raise UserError(f"min_ratio {self.min_ratio!r} must lie in [0, 1)")
        if self.max_ratio is not None:
            if not 0.0 < self.max_ratio <= 1.0:
                raise UserError(f"max_ratio {self.max_ratio!r} must lie in (0, 1]")
            if self.max_ratio < self.min_ratio:
                raise UserError(f"max_ratio {self.max_ratio} is below min_ratio {self.min_ratio}; "
                                f"no width satisfies both")

    def with_latency(self, budgets: dict[str, float]) -> Constraints:
        return replace(self, latency_ms=tuple((d, float(ms)) for d, ms in budgets.items()))

    def to_json(self) -> dict:
        return {"latency_ms": dict(self.latency_ms), "max_flops": self.max_flops,
                "max_params": self.max_params, "max_memory_mib": self.max_memory_mib,
                "min_ratio": self.min_ratio, "max_ratio": self.max_ratio}


def floor_options(space: PruningSpace, options: dict[int, list[tuple[int, ...]]], step: int,
                  constraints: Constraints) -> dict[int, list[tuple[int, ...]]]:
    """The options within each group's floor and ceiling (module docstring)."""
    out = {}
    for g in space.groups:
        opts = options[g.gid]
        floor = max(min(step, g.size), math.ceil(constraints.min_ratio * g.size - 1e-9))
        keep = [o for o in opts if sum(o) >= floor] or [opts[-1]]
        if constraints.max_ratio is not None:
            keep = [o for o in keep if sum(o) <= constraints.max_ratio * g.size + 1e-9] or keep[:1]
        out[g.gid] = keep
    return out


class Resource(Limit):
    """``value = const + sum_l layer_cost(l, n_in, n_out) + sum_g group_cost(g, option)``
    (``per_layer``: the largest layer cost). ``layer_cost`` and ``group_cost``
    are what the knapsack and the QCQP tabulate."""
    name = ""
    const = 0.0

    def __init__(self, space: PruningSpace, limit: float | None):
        self.space = space
        self.limit = math.inf if limit is None else float(limit)
        self._cache: dict[tuple[int, int, int], float] = {}

    def _layer(self, i: int, n_in: int, n_out: int) -> float:
        raise NotImplementedError

    def layer_cost(self, i: int, n_in: int, n_out: int) -> float:
        key = (i, n_in, n_out)
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = float(self._layer(i, n_in, n_out))
        return v

    def layer_grid(self, i: int, n_in: np.ndarray, n_out: np.ndarray) -> np.ndarray:
        """:meth:`layer_cost` over arrays of widths."""
        n_in, n_out = np.broadcast_arrays(np.asarray(n_in), np.asarray(n_out))
        memo: dict[tuple[int, int], float] = {}
        flat = np.empty(n_in.size)
        for k, key in enumerate(zip(n_in.ravel().tolist(), n_out.ravel().tolist())):
            v = memo.get(key)
            if v is None:
                v = memo[key] = self.layer_cost(i, *key)
            flat[k] = v
        return flat.reshape(n_in.shape)

    def group_cost(self, gid: int, option: tuple[int, ...]) -> float:
        return 0.0

    def removed_saving(self, key: int) -> tuple[float, dict]:
        """What removing block ``key`` saves besides its layers and the groups
        that live inside it: a constant, and per other group a function of its option."""
        return 0.0, {}

    def saving(self, choice: Choice) -> float:
        """:meth:`removed_saving` of every block ``choice`` removes, at its widths."""
        total = 0.0
        for b in removed_blocks(self.space, choice):
            const, per = self.removed_saving(b.key)
            total += const + sum(f(choice[gid]) for gid, f in per.items() if gid not in b.groups)
        return total

    def layer_values(self, choice: Choice) -> list[float]:
        """Each layer's cost (0 for the layers of removed blocks)."""
        widths, dead = self.space.layer_widths, dead_layers(self.space, choice)
        return [0.0 if i in dead else self.layer_cost(i, *widths(layer, choice))
                for i, layer in enumerate(self.space.layers)]

    def value(self, choice: Choice) -> float:
        if self.per_layer:
            return max(self.layer_values(choice), default=0.0)
        dead = dead_groups(self.space, choice)
        return (self.const + sum(self.layer_values(choice)) - self.saving(choice)
                + sum(self.group_cost(gid, ks) for gid, ks in choice.items() if gid >= 0 and gid not in dead))

    def label(self) -> str:
        raise NotImplementedError

    def fmt(self, v: float) -> str:
        raise NotImplementedError

    def with_limit(self, limit: float | None) -> Resource:
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.limit = math.inf if limit is None else float(limit)
        return other


class LatencyBudget(Resource):
    def __init__(self, ev: Evaluator, device: str, limit: float | None):
        super().__init__(ev.space, limit)
        self.ev, self.device, self.name = ev, device, f"latency_ms[{device}]"

    @property
    def const(self) -> float:
        return self.ev.const_ms()

    def layer_cost(self, i: int, n_in: int, n_out: int) -> float:
        return self.ev.layer_ms(i, n_in, n_out)

    def layer_grid(self, i, n_in, n_out):
        return self.ev.layer_ms_grid(i, n_in, n_out)

    def value(self, choice: Choice) -> float:
        return self.ev.latency_ms(choice)

    def label(self) -> str:
        return f"the latency budget {self.limit:.3f} ms on {self.device}"

    def fmt(self, v: float) -> str:
        return f"{v:.3f} ms (predicted)"


class FlopsBudget(Resource):
    name = "flops"

    def _layer(self, i, n_in, n_out):
        spec = self.space.layers[i].spec
        oh, ow = spec.out_hw
        return 2 * spec.batch * oh * ow * int(layer_weights(self.space.layers[i], n_in, n_out))

    def layer_grid(self, i, n_in, n_out):
        spec = self.space.layers[i].spec  # LayerSpec.flops over arrays
        n_in, n_out = np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64)
        oh, ow = spec.out_hw
        return (2 * spec.batch * oh * ow * layer_weights(self.space.layers[i], n_in, n_out)).astype(float)

    def label(self) -> str:
        return f"max_flops {self.limit:.6g} (--max-flops)"

    def fmt(self, v: float) -> str:
        return f"{v:.6g} FLOPs"


class ParamsBudget(Resource):
    name = "params"

    def __init__(self, space: PruningSpace, limit: float | None, order):
        super().__init__(space, limit)
        self._bias = [getattr(space.model.get_submodule(l.name), "bias", None) is not None
                      for l in space.layers]
        extra = extra_params_per_channel(space)
        # per group and segment: parameters removed with the top-k channels, by k
        self._prefix = {g.gid: [np.concatenate([[0.0], np.cumsum(extra[g.gid][list(o)])]) for o in order[g.gid]]
                        for g in space.groups}
        self._blocks = {key: (const, {gid: [np.concatenate([[0.0], np.cumsum(a[list(o)])]) for o in order[gid]]
                                      for gid, a in per.items()})
                        for key, (const, per) in block_params(space).items()}
        total = sum(p.numel() for p in space.model.parameters())
        self.const = float(total) - self.value(space.full_choice())

    def _layer(self, i, n_in, n_out):
        return layer_weights(self.space.layers[i], n_in, n_out) + (n_out if self._bias[i] else 0)

    def layer_grid(self, i, n_in, n_out):
        return self._layer(i, np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64)).astype(float)

    def group_cost(self, gid, option):
        return float(sum(p[k] for p, k in zip(self._prefix[gid], option)))

    def removed_saving(self, key):
        const, per = self._blocks.get(key, (0.0, {}))
        return const, {gid: (lambda option, pre=pre: float(sum(p[k] for p, k in zip(pre, option))))
                       for gid, pre in per.items()}

    def label(self) -> str:
        return f"max_params {self.limit:.6g} (--max-params)"

    def fmt(self, v: float) -> str:
        return f"{v:.6g} parameters"


MIB = 2 ** 20  # bytes


class MemoryBudget(Resource):
    name = "memory_mib"
    per_layer = True

    def _layer(self, i, n_in, n_out):
        return layer_activation_bytes(self.space.layers[i].spec, 4, n_in, n_out) / MIB

    def layer_grid(self, i, n_in, n_out):
        return self._layer(i, np.asarray(n_in, dtype=float), np.asarray(n_out, dtype=float))

    def label(self) -> str:
        return f"max_memory_mib {self.limit:.6g} MiB (--max-memory-mib)"

    def fmt(self, v: float) -> str:
        return f"{v:.6g} MiB of activations (largest layer input + output, fp32)"


class Problem:
    """One selection problem: ``space``, grid ``options`` (already floored),
    channel ``scores``, ``constraints`` and ``evaluators`` (device -> Evaluator,
    the first is the primary device: ``Selection.predicted_ms``). Every device
    with a latency budget needs an evaluator; ``resources`` lists the bounds
    in force."""

    def __init__(self, space: PruningSpace, options, scores, constraints: Constraints = Constraints(),
                 evaluators: dict[str, Evaluator] | None = None, _shared: dict | None = None):
        self.space, self.options, self.scores, self.constraints = space, options, scores, constraints
        self.evaluators = dict(evaluators or {})
        self.ev = next(iter(self.evaluators.values()), None) or Evaluator(space, None, scores)
        missing = [d for d, _ in constraints.latency_ms if d not in self.evaluators]
        if missing:
            raise UserError(f"no latency model for device(s) {', '.join(missing)}")
        self._shared = _shared if _shared is not None else {}
        budgets = dict(constraints.latency_ms)
        lat = self._shared.setdefault("latency", {})
        for d, ev in self.evaluators.items():
            if d not in lat:
                lat[d] = LatencyBudget(ev, d, None)
        self.resources_by_name: dict[str, Resource] = {lat[d].name: lat[d].with_limit(budgets.get(d))
                                            for d in self.evaluators}
        for key, cls, limit in (("flops", FlopsBudget, constraints.max_flops),
                                ("params", ParamsBudget, constraints.max_params),
                                ("memory_mib", MemoryBudget, constraints.max_memory_mib)):
            if key not in self._shared:
                self._shared[key] = cls(space, None, self.ev.order) if cls is ParamsBudget else cls(space, None)
            self.resources_by_name[key] = self._shared[key].with_limit(limit)
        self.resources = [r for r in self.resources_by_name.values() if math.isfinite(r.limit)]

    def with_latency(self, budgets: dict[str, float]) -> Problem:
        """The same problem with other latency budgets (caches shared)."""
        return Problem(self.space, self.options, self.scores, self.constraints.with_latency(budgets),
                       self.evaluators, self._shared)

    def with_options(self, options) -> Problem:
        """The same problem on other options (a subset of the grid)."""
        shared = {k: v for k, v in self._shared.items() if k != "objective"}
        return Problem(self.space, options, self.scores, self.constraints, self.evaluators, shared)

    @property
    def objective(self) -> ActiveImportance:
        obj = self._shared.get("objective")
        if obj is None:
            if "maps" not in self._shared:
                self._shared["maps"] = channel_maps(self.space)
                self._shared["imps"] = weight_tables(self.space, self.scores)
            obj = self._shared["objective"] = ActiveImportance(self.space, self.options, self.ev.order,
                                                               self._shared["maps"], self._shared["imps"])
        return obj

    def smallest(self) -> Choice:
        return {gid: opts[0] for gid, opts in self.options.items()}

    def largest(self) -> Choice:
        return {gid: opts[-1] for gid, opts in self.options.items()}

    def violated(self, choice: Choice) -> list[Resource]:
        return [r for r in self.resources if not r.load(choice)[1]]

    def feasible(self, choice: Choice) -> bool:
        return not self.violated(choice)

    def usage(self, choice: Choice) -> dict[str, float]:
        return {name: float(r.value(choice)) for name, r in self.resources_by_name.items()}

    def infeasible_message(self, bad: list[Resource]) -> str:
        smallest = self.smallest()
        parts = [f"{r.label()} cannot be met: the smallest network the floors allow has "
                 f"{r.fmt(r.value(smallest))}; allow at least that" for r in bad]
        c = self.constraints
        return "; ".join(parts) + (f" (floors: at least one device step and --min-ratio {c.min_ratio:g} of "
                                   f"each group; lower --min-ratio to go smaller)")

    def selection(self, choice: Choice, selector: str, **fields) -> Selection:
        ev = self.ev
        pred = ev.latency_ms(choice) if ev.model is not None else float("nan")
        fields.setdefault("feasible", self.feasible(choice))
        return Selection(choice, ev.kept(choice), pred, ev.importance(choice), selector=selector,
                         objective=self.objective.fraction(choice), usage=self.usage(choice), **fields)
