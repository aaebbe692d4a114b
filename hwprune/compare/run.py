"""Compare devices: where the milliseconds go on each, and how the best pruned
network differs from one device to another (``hwprune compare``).

For one model and several devices, :func:`run_compare` returns (JSON-ready):

* ``devices``: per device, how it takes part (``measured`` here, or
  ``predicted`` from its profile file when its runtime cannot run here or
  ``predicted_only`` asks so), its whole-network latency at full width
  (measured: the median of every block of the original, each alternating
  with another network's; predicted: the latency model's), the grid
  it is pruned on (for a measured device the step measured on this host,
  :func:`hwprune.latency.grid.resolve_grid`; ``grid`` overrides it) and the
  measured channel step, and how the latency model's remainder was fitted;
* ``layers``: per layer and device, the latency at full width (the isolated
  layer as measured, or the latency model where the shape was not measured),
  the cost per channel (that latency / the layer's prunable width) and the
  share of the whole network's latency; ``other_ms``: network minus the sum of
  layers (adds, pools, overheads; negative where isolated layers overcount);
* ``curves``: latency vs width of the costliest layers (distinct shapes), one
  line per device (measured in two sweeps, ascending then descending, mean per
  width; the layer's own step detected by :func:`profilers.steps.fit_step`);
* ``plans``: at the same relative budget (``budget_frac`` x that device's
  full-width latency), each device's plan: :func:`hwprune.loop.engine.prune` on a
  measured device (closed loop, ``budget_fraction``: the fraction of the
  baseline the engine measures, alternating with its candidates; raised to
  1.1 x the smallest network the floors allow where the fraction is below
  it, and said so), the selector alone on a predicted device; widths per
  group side by side;
* ``cross``: plan for device i on device j: measured where j runs here (per
  column j, each plan measured against the original in fresh sessions,
  alternating blocks, to a +-2 % interval, ``repeats`` times; ms = median (plan / original) x j's baseline), predicted
  otherwise, and always the prediction next to it;
* ``pareto``: per device, predicted whole-model latency vs kept importance of
  the selector's plans at several budgets.

Everything a device's column says is labelled ``measured`` or ``predicted``.
"""
from __future__ import annotations

import datetime as _dt
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hwprune import devices as devices_mod
from hwprune.compare.measure import cross_matrix, curves, layer_rows
from hwprune.errors import BelowSmallestError, UserError
from hwprune.graph.space import PruningSpace, device_options
from hwprune.graph.surgery import apply_kept
from hwprune.importance import criteria as importance
from hwprune.latency.grid import Grid, descriptor_grid, resolve_grid, with_grid
from hwprune.latency.offline import find_profile, offline_model, read_profile
from hwprune.latency.profiling import Profiler, Progress, fit_latency_model
from hwprune.loop.engine import calibrate, count_params, prune
from hwprune.loop.meter import PLAN, BlockMeter, Certainty
from hwprune.select.evaluator import Evaluator
from hwprune.select.problem import Constraints, Problem, floor_options
from hwprune.select.selectors import SELECTORS, select
from latency_models import NetworkLatencyModel
from profilers import MeasurementStore
from profilers.inputs import as_inputs

log = logging.getLogger("hwprune")
MEASURED, PREDICTED = "measured", "predicted"
FORMAT = "hwprune-compare/1"
SMALLEST_MARGIN = 1.1  # a budget under this x the smallest network is raised to it


@dataclass
class Side:
    """One device of the comparison."""
    name: str
    device: devices_mod.Device
    mode: str                         # MEASURED or PREDICTED
    reason: str = ""                  # why predicted
    profile: str | None = None
    lat: NetworkLatencyModel | None = None
    remainder: str = ""
    options: dict | None = None
    ev: Evaluator | None = None
    profiler: Profiler | None = None
    meter: BlockMeter | None = None
    predicted_full_ms: float = 0.0
    smallest_ms: float | None = None  # measured: the smallest network the floors allow
    device_step: int | None = None
    step_source: str = ""
    grid: Grid | None = None          # the grid it is pruned on, and where it came from

    @property
    def baseline_ms(self) -> float:
        return self.meter.reference_ms if self.meter is not None else self.predicted_full_ms


@dataclass(frozen=True)
class Comparison:
    """``data``: every number, JSON-serialisable (module docstring);
    ``models``: the pruned module made for each device."""
    data: dict
    models: dict


def parse_fraction(text) -> float:
    """``50%``, ``50 %`` or ``0.5`` -> 0.5; must lie strictly between 0 and 1."""
    s = str(text).strip()
    try:
        v = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise UserError(f"budget {text!r} is not a fraction: give e.g. 50% or 0.5") from None
    if not 0.0 < v < 1.0:
        raise UserError(f"budget {text!r} must lie strictly between 0 and 100 % of each device's latency")
    return v


def resolve_sides(names, space: PruningSpace, predicted_only=(), profiles=(),
                  profiles_dir: Path | None = None) -> list[Side]:
    """Check every device and profile before anything is measured; read the
    profiles of the devices that take part as predictions."""
    names = list(names)
    if len(names) < 2:
        raise UserError("compare needs at least two devices (--devices D1 D2 ...)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"device {dup[0]} is named twice in --devices")
    stray = [n for n in predicted_only if n not in names]
    if stray:
        raise UserError(f"--predicted {stray[0]} is not one of --devices ({', '.join(names)})")
    given = {}
    for path in profiles:
        prof = read_profile(path)
        if prof.device not in names:
            raise UserError(f"profile {path} is for device {prof.device}, which is not one of --devices")
        given[prof.device] = prof
    folders = [Path(profiles_dir)] if profiles_dir else devices_mod.profile_dirs()
    full_specs = space.specs(space.full_choice())
    sides = []
    for name in names:
        dev = devices_mod.get(name)
        reason = "--predicted" if name in predicted_only else ""
        if not reason:
            try:
                dev.open()
            except UserError as exc:
                reason = str(exc).split("; install")[0]
        if not reason:
            sides.append(Side(name, dev, MEASURED))
            continue
        prof = given.get(name)
        if prof is None:
            path = find_profile(name, folders)
            if path is None:
                where = " or ".join(str(f) for f in folders)
                raise UserError(f"{reason}, and no profile of {name} is in {where}: measure it where it runs "
                                f"('hwprune profile --device {name} --model M --export FILE') and pass "
                                f"--profile FILE")
            prof = read_profile(path)
        off = offline_model(prof, full_specs, dev.step_channels)
        side = Side(name, dev, PREDICTED, reason, prof.path, off.model, off.note)
        side.device_step, side.step_source = prof.step_channels, "profile header" if prof.step_channels else ""
        sides.append(side)
    return sides


def _options(space: PruningSpace, dev) -> dict:
    return floor_options(space, device_options(space, dev), dev.step_channels, Constraints())


def side_grid(side: Side, store, grid: int | None, progress) -> Grid:
    """The grid a side is pruned on: ``grid`` where given; a measured device's
    step measured on this host (stored after the first time); a predicted
    device's descriptor."""
    if grid is not None or side.mode == MEASURED:
        return resolve_grid(side.device, store, override=grid, progress=progress)
    return descriptor_grid(side.device)


def prepare_side(side: Side, space, example_inputs, scores, store, progress, grid: int | None = None,
                 certainty: Certainty = PLAN) -> None:
    """Latency model (and, where measured, baseline and channel step) of a side, on its grid."""
    side.grid = side_grid(side, store, grid, progress)
    side.device = with_grid(side.device, side.grid)
    if side.grid.source == "measured":
        side.device_step, side.step_source = side.grid.step_channels, side.grid.detail
    side.options = _options(space, side.device)
    if side.mode == MEASURED:
        side.profiler = Profiler(side.device, store)
        side.lat = fit_latency_model(side.profiler, space, side.options, progress)
        side.meter = BlockMeter(side.profiler.runtime, space.model, example_inputs, initial=3, plan=certainty)
        side.smallest_ms = calibrate(side.lat, space, side.meter.measure, side.options, scores,
                                     [(space.specs(space.full_choice()), side.meter.scale_ms)])
        side.remainder = "remainder fitted to whole-model measurements here (full, smallest, quarter, half width)"
    side.ev = Evaluator(space, side.lat, scores)
    side.predicted_full_ms = side.ev.latency_ms(space.full_choice())


def choice_of(space: PruningSpace, kept: dict) -> dict:
    """Kept counts per segment of every group, from kept indices."""
    out = {}
    for g in space.groups:
        k = set(int(i) for i in kept.get(g.gid, kept.get(str(g.gid), range(g.size))))
        out[g.gid] = tuple(sum(1 for i in idx if i in k) for idx in g.seg_index)
    return out


def make_plans(space, example_inputs, sides, scores, frac, selector, store, progress, time_limit_s,
               certainty: Certainty = PLAN) -> list[dict]:
    plans = []
    for side in sides:
        target, raised = frac * side.baseline_ms, ""
        if side.mode == MEASURED:
            budget = {"budget_fraction": frac}  # the engine follows its own measured baseline
            if side.smallest_ms and target < SMALLEST_MARGIN * side.smallest_ms:
                budget = {"budget_ms": SMALLEST_MARGIN * side.smallest_ms}
                raised = (f"{100 * frac:.0f} % is below the smallest network the floors allow "
                          f"({side.smallest_ms:.3f} ms measured); budget raised to {budget['budget_ms']:.3f} ms")
            run = functools.partial(prune, space.model, example_inputs, device=side.name, selector=selector,
                                    store=store, progress=progress, time_limit_s=time_limit_s,
                                    grid={side.name: side.grid}, certainty=certainty)
            try:
                res = run(**budget)
            except BelowSmallestError as exc:  # the engine measured the smallest network slower than we did
                budget = {"budget_ms": SMALLEST_MARGIN ** 2 * (side.smallest_ms or side.baseline_ms)}
                raised = f"{exc}; budget raised to {budget['budget_ms']:.3f} ms"
                res = run(**budget)
            target = res.budget_ms
            kept = {g["gid"]: g["kept"] for g in res.plan["groups"]}
            module, note = res.model, "; ".join(n for n in (raised, res.note) if n)
            info = {"predicted_ms": res.predicted_ms, "measured_ms": res.measured_ms,
                    "engine_baseline_ms": res.baseline_ms, "rounds": len(res.rounds),
                    "how": f"hwprune.prune ({selector}, closed loop on {side.name})"}
        else:
            problem = Problem(space, side.options, scores, Constraints(), {side.name: side.ev})
            sel = select(selector, problem.with_latency({side.name: target}), infeasible="smallest",
                         time_limit_s=time_limit_s)
            kept, module = sel.kept, apply_kept(space, sel.kept)
            note = "" if sel.feasible else "the smallest network the floors allow is above the budget"
            info = {"predicted_ms": sel.predicted_ms, "measured_ms": None, "engine_baseline_ms": None,
                    "rounds": 0, "how": f"{selector} selector on the latency model (predicted only)"}
        choice = choice_of(space, kept)
        specs = space.specs(choice)
        plans.append({"device": side.name, "mode": side.mode, "budget_ms": target,
                      "baseline_ms": side.baseline_ms, **info, "note": note, "choice": choice,
                      "widths": {g.gid: int(sum(choice[g.gid])) for g in space.groups},
                      "flops": int(sum(s.flops for s in specs)), "params": count_params(module),
                      "module": module})
    return plans


def _importance_fracs(problem: Problem, choice) -> tuple[float, float]:
    full = problem.ev.importance(problem.space.full_choice())
    return problem.ev.importance(choice) / full, float(problem.objective.fraction(choice))


def pareto(space, sides, scores, selector, points: int, time_limit_s: float) -> dict:
    """Per device: the selector's plans at ``points`` budgets between 15 % and
    100 % of the predicted full-width latency (predicted ms, kept importance)."""
    out = {}
    for side in sides:
        problem = Problem(space, side.options, scores, Constraints(), {side.name: side.ev})
        rows, seen = [], set()
        for f in np.linspace(0.15, 1.0, points):
            sel = select(selector, problem.with_latency({side.name: f * side.predicted_full_ms}),
                         infeasible="smallest", time_limit_s=time_limit_s)
            key = tuple(sorted(sel.choice.items()))
            if key in seen:
                continue
            seen.add(key)
            imp, act = _importance_fracs(problem, sel.choice)
            rows.append({"budget_frac": float(f), "predicted_ms": float(sel.usage[f"latency_ms[{side.name}]"]),
                         "importance": imp, "active_importance": act, "feasible": bool(sel.feasible)})
        out[side.name] = rows
    return out


def run_compare(model: torch.nn.Module, example_inputs, device_names, *, budget_frac: float = 0.5,
                model_name: str = "", selector: str = "greedy", store: MeasurementStore | None = None,
                predicted_only=(), profiles=(), profiles_dir: Path | None = None, curve_layers: int = 4,
                pareto_points: int = 9, repeats: int = 3, time_limit_s: float = 60.0,
                progress: Progress | None = None, grid: int | None = None, certainty: Certainty = PLAN) -> Comparison:
    """Run the comparison (module docstring). Every device is checked (known,
    runs here or has a profile that covers the model) before anything is
    measured. ``grid``: the channel grid of every device (default: measured
    here for measured devices, the descriptor's for predicted ones). ``certainty``: when a measured
    reading stops, the engine's plans' and the cross matrix's cells' alike (default the engine's)."""
    example_inputs = as_inputs(example_inputs)
    SELECTORS.check(selector)  # an unknown name fails before anything is measured
    frac = parse_fraction(budget_frac)
    if int(repeats) < 1 or int(pareto_points) < 2 or int(curve_layers) < 0:
        raise UserError("repeats must be >= 1, pareto points >= 2 and curve layers >= 0")
    model = model.eval()
    space = PruningSpace(model, example_inputs)
    sides = resolve_sides(device_names, space, predicted_only, profiles, profiles_dir)
    store = store if store is not None else MeasurementStore()
    scores = importance.compute("l1", space)
    for side in sides:
        log.info("preparing %s (%s)", side.name, side.mode)
        prepare_side(side, space, example_inputs, scores, store, progress, grid, certainty)
    layers, other = layer_rows(space, sides)
    for s in sides:  # a prediction's non-layer part is its remainder
        if s.mode != MEASURED:
            other[s.name] = s.lat.remainder_ms(space.specs(space.full_choice()))
    curve_data = curves(space, sides, layers, curve_layers, progress)
    plans = make_plans(space, example_inputs, sides, scores, frac, selector, store, progress, time_limit_s, certainty)
    cross = cross_matrix(sides, plans, repeats, progress)
    front = pareto(space, sides, scores, selector, int(pareto_points), time_limit_s)
    every = {g.gid: sorted({o for s in sides for o in s.options[g.gid]} | {p["choice"][g.gid] for p in plans},
                           key=lambda o: (sum(o), o)) for g in space.groups}
    problem = Problem(space, every, scores)  # importance does not depend on the device
    for p in plans:
        p["importance"], p["active_importance"] = _importance_fracs(problem, p["choice"])
    from hwprune.devices import machine_description
    data = {
        "format": FORMAT, "model": model_name, "budget_frac": frac, "selector": selector,
        "machine": machine_description(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "devices": [{"name": s.name, "mode": s.mode, "reason": s.reason, "runtime": s.device.runtime,
                     "description": s.device.description, "profile": s.profile,
                     "baseline_ms": s.baseline_ms, "predicted_full_ms": s.predicted_full_ms,
                     "sum_of_layers_ms": sum(r["devices"][s.name]["ms"] for r in layers),
                     "other_ms": other[s.name], "grid_step": s.device.step_channels,
                     "grid": s.grid.to_json() if s.grid else None,
                     "device_step": s.device_step, "step_source": s.step_source,
                     "remainder": s.remainder} for s in sides],
        "groups": [{"gid": g.gid, "root": g.root, "size": g.size,
                    "widths": {p["device"]: p["widths"][g.gid] for p in plans}} for g in space.groups],
        "layers": layers, "curves": curve_data,
        "plans": [{k: v for k, v in p.items() if k not in ("module", "choice", "widths")} for p in plans],
        "cross": cross, "pareto": front,
    }
    data["findings"] = findings(data)
    return Comparison(data, {p["device"]: p["module"] for p in plans})


def findings(data: dict) -> list[str]:
    """Sentences stating what the cross matrix shows, from its numbers."""
    out = []
    rows, cols, cells = data["cross"]["rows"], data["cross"]["cols"], data["cross"]["cells"]
    plans = {p["device"]: p for p in data["plans"]}
    for j, col in enumerate(cols):
        own = rows.index(col)
        c = cells[own][j]
        out.append(f"On {col}, the network pruned for it {'measures' if c['source'] == MEASURED else 'is predicted at'}"
                   f" {c['ms']:.3f} ms, {c['ratio_to_original']:.2f}x the full network"
                   f" (budget {data['budget_frac']:.2f}x{'; ' + plans[col]['note'] if plans[col]['note'] else ''}).")
        for i, row in enumerate(rows):
            c = cells[i][j]
            if i == own or c.get("vs_own") is None:
                continue
            kind = "measures" if c["source"] == MEASURED else "is predicted at"
            rel = c["vs_own"]
            word = "slower than" if rel > 1.0 else "faster than" if rel < 1.0 else "as fast as"
            if c.get("vs_own_lo") is not None and c["vs_own_lo"] <= 1.0 <= c["vs_own_hi"]:
                word = "not told apart from"  # the repeats disagree on which is faster
            out.append(f"On {col}, the network pruned for {row} {kind} {c['ms']:.3f} ms, {rel:.2f}x the one "
                       f"pruned for {col} ({cells[own][j]['ms']:.3f} ms): {word} it"
                       + (f" (spread of the repeats {c['vs_own_lo']:.2f}-{c['vs_own_hi']:.2f})"
                          if c.get("vs_own_lo") is not None else "")
                       + f"; it keeps {plans[row]['importance'] / plans[col]['importance']:.2f}x its "
                         f"L1 importance.")
    return out


__all__ = ["Comparison", "run_compare", "parse_fraction", "resolve_sides", "findings", "MEASURED", "PREDICTED"]
