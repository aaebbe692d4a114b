"""The closed loop's entry point: profile, fit, select, cut, measure, correct, repeat.

:func:`prune` checks the inputs, builds the pruning space, the grid options
and the channel scores, profiles and calibrates every device, then hands the
loop to :class:`hwprune.loop.controller.Controller` (every decision of the
loop is a method there) and assembles its :class:`PruneResult`.

Each device is pruned on the channel grid measured on this host
(:func:`hwprune.latency.grid.resolve_grid`: the step is measured once per host
and stored; ``grid=`` overrides it).

Each pruned candidate is measured as a user sees it, in fresh sessions,
alternating blocks of runs with the original until the 95 % interval of
their ratio is within +-2 % or a cap (:mod:`hwprune.loop.meter`), and
reported as ``(candidate / original) x baseline_ms``, so drift of the machine
cancels; ``baseline_ms`` is the median of every block median of the original
on that device (two at the start, at least one per round of every ratio).
A plan is accepted only when the upper end of that interval is under the
budget (certified); when no plan is, the result says so, with the interval.
The networks the latency model is calibrated on, and where the budget is
near them the networks it predicts fastest, are measured; a budget below the
fastest of them is refused (:mod:`hwprune.loop.fastest`).
The latency model's error is corrected after each measured round and the
selection redone, for at most ``max_rounds`` rounds (+1 reading of a plan left in doubt), from the measured plan
closest to the aim with the target divided by its measured / predicted ratio;
the selector aims a little under the budget (``aim``) and a round is accepted
once its measured latency lies in ``[accept_low, 1.0] x budget`` (the decisions:
:mod:`hwprune.loop.controller`; the answer: the plan meeting the budget with the most latency used).

Several devices: every device with a latency budget (and the primary device,
``device``) is profiled, fitted and calibrated; each plan is measured on every
one of them and each device's target is corrected from its own measurements.
"Latency used" is then the largest measured / budget ratio over the devices,
and a plan the selector returns twice (another constraint binds) nudges the
targets a few times, then stops the loop. FLOPs, parameter and memory bounds
are exact and checked before anything is measured.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial

from torch import nn

from hwprune import devices
from hwprune.devices import Device
from hwprune.errors import BelowSmallestError, UserError
from hwprune.graph.blocks import blocks_hint, live_specs, removed_paths, resolve_granularity, with_blocks
from hwprune.graph.space import Choice, PruningSpace, device_options
from hwprune.graph.surgery import apply_kept, check_widths
from hwprune.importance import criteria as importance
from hwprune.importance.blocks import with_block_scores
from hwprune.latency.grid import Grid, resolve_grid, with_grid
from hwprune.latency.profiling import Profiler, Progress, fit_latency_model, measure_grouped_modes
from hwprune.loop.between import between_plan, rescue
from hwprune.loop.controller import ACCEPT_LOW, AIM, Budgets, Controller, Outcome, Round
from hwprune.loop.fastest import UNIFORM, Calibration, calibrate_networks, fit_warnings, measure_fastest
from hwprune.loop.meter import PLAN, BlockMeter, BlockMeters, Certainty, host_stats
from hwprune.loop.widen import wider_plans
from hwprune.select.evaluator import Evaluator, Selection
from hwprune.select.problem import Constraints, Problem, floor_options
from hwprune.select.selectors import SELECTORS, select
from hwprune.version import __version__
from latency_models import NetworkLatencyModel
from profilers import MeasurementStore
from profilers.inputs import as_inputs

log = logging.getLogger("hwprune")

FASTEST_MARGIN = 1.25  # a budget under this x the fastest network measured so far: measure the predicted-fastest

__all__ = ["PruneResult", "Round", "calibrate", "count_params", "make_plan", "prune"]


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module
    baseline_ms: float
    predicted_ms: float
    measured_ms: float
    plan: dict
    budget_ms: float | None
    device: str
    rounds: tuple[Round, ...] = ()
    unchanged: bool = False
    note: str = ""
    stats: dict = field(default_factory=dict)
    devices: dict = field(default_factory=dict)    # device -> budget, baseline, predicted, measured ms
    selection: dict = field(default_factory=dict)  # selector, status, mip_gap, solve_s, objective, usage, note
    frozen: tuple = ()  # FrozenGroup: channel groups kept whole (a construct the graph cannot prune safely)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def make_plan(space: PruningSpace, kept: dict[int, list[int]], device: str, budget_ms: float | None,
              extra: dict | None = None, removed: list[str] | tuple = ()) -> dict:
    """The plan of ``kept`` channels per group and the blocks at the module
    paths ``removed`` (recorded only when there are some)."""
    from hwprune.graph.plans import plan_fingerprint, plan_input_shapes
    blocks = {"removed_blocks": list(removed)} if removed else {}
    return {"format": "hwprune-plan/1", "hwprune_version": __version__, "device": device,
            "fingerprint": plan_fingerprint(space), **plan_input_shapes(space.example_inputs),
            "budget_ms": budget_ms, **(extra or {}),
            **({"grouped_modes": {r.name: r.mode for r in space.grouped}} if space.grouped else {}),
            "groups": [{"gid": g.gid, "root": g.root, "size": g.size,
                        "kept": [int(i) for i in kept.get(g.gid, range(g.size))]} for g in space.groups],
            **blocks}


def calibrate(lat, space: PruningSpace, measure_ms, options, scores, rows: list | None = None,
              fractions=UNIFORM) -> float:
    """Fit the latency model's remainder from whole-model measurements of the
    sub-networks at ``fractions`` of every group's width grid (default the
    smallest, quarter- and half-width ones; plus ``rows`` already measured);
    returns the first (smallest) sub-network's measured ms
    (:func:`hwprune.loop.fastest.calibrate_networks`, for callers that only need that)."""
    cal = calibrate_networks(lat, space, measure_ms, options, scores, list(rows or []), fractions)
    return cal.smallest.measured_ms


# ---------------------------------------------------------------- inputs

def _budgets(device: str | None, budget_ms, constraints: Constraints) -> tuple[str, dict[str, float]]:
    """The primary device and every latency budget (device -> ms)."""
    budgets = dict(constraints.latency_ms)
    if budget_ms is not None:
        try:
            budget_ms = float(budget_ms)
        except (TypeError, ValueError):
            raise UserError(f"budget {budget_ms!r} is not a number; give a positive number of ms") from None
        if not budget_ms > 0 or budget_ms == float("inf"):
            raise UserError(f"budget {budget_ms} ms is not a positive number; give e.g. --budget-ms 2.0")
        name = device or "ort-cpu-1t"
        if budgets.get(name, budget_ms) != budget_ms:
            raise UserError(f"two latency budgets for {name} ({budget_ms} and {budgets[name]} ms); give one")
        budgets = {name: budget_ms, **{d: ms for d, ms in budgets.items() if d != name}}
    if not budgets and all(v is None for v in (constraints.max_flops, constraints.max_params,
                                               constraints.max_memory_mib)):
        raise UserError("no budget given: give a latency budget (--budget-ms) or a FLOPs, parameter or "
                        "memory bound (--max-flops, --max-params, --max-memory-mib)")
    return device or next(iter(budgets), "ort-cpu-1t"), budgets


def _check_inputs(device: str | None, budget_ms, budget_fraction: float | None, selector: str,
                  constraints: Constraints, max_rounds: int) -> Budgets:
    """Every latency budget, or a one-line :class:`UserError` on bad input."""
    SELECTORS.check(selector)  # an unknown name fails before anything is measured
    if not max_rounds >= 1:
        raise UserError(f"max_rounds {max_rounds} is below 1; give at least one round")
    if budget_fraction is not None:
        if budget_ms is not None:
            raise UserError("give a budget in ms or as a fraction of the baseline, not both")
        if not 0.0 < budget_fraction < float("inf"):
            raise UserError(f"budget fraction {budget_fraction} is not positive; give e.g. 50%")
        budget_ms = 1.0  # placeholder until the baseline is measured
    primary, budgets = _budgets(device, budget_ms, constraints)
    return Budgets(budgets, primary, budget_fraction)


def _grid_options(space: PruningSpace, device: Device, cons: Constraints) -> dict:
    """Each group's widths on the primary device's channel grid, above the constraints' floors."""
    return floor_options(space, device_options(space, device), device.step_channels, cons)


def resolve_grids(devs: dict[str, Device], store: MeasurementStore | None, grid=None,
                  progress: Progress | None = None) -> dict[str, Grid]:
    """Each device's grid on this host (measured on first use, then stored).
    ``grid``: None, a number of channels for every device, or a mapping
    device -> number or :class:`Grid` (devices it does not name are resolved)."""
    out = {}
    for d, dev in devs.items():
        g = grid.get(d) if isinstance(grid, dict) else grid
        if g is not None and not isinstance(g, Grid):
            try:
                g = int(g)
            except (TypeError, ValueError):
                raise UserError(f"grid {g!r} is not a number of channels; give e.g. --grid 16") from None
        out[d] = g if isinstance(g, Grid) else resolve_grid(dev, store, override=g, progress=progress)
        log.info("%s: pruning on a grid of %d channels (%s%s)", d, out[d].step_channels, out[d].detail,
                 f", measured in {out[d].measured_s:.1f} s" if out[d].measured_s else "")
    return out


# ---------------------------------------------------------------- the devices

def _calibrated(prof: Profiler, meter: BlockMeter, space: PruningSpace, options, scores,
                progress: Progress | None) -> tuple[NetworkLatencyModel, list, Calibration]:
    """The device's latency model (layers profiled, remainder fitted on whole
    networks), the whole-network rows it was fitted on and the networks measured."""
    lat = fit_latency_model(prof, space, options, progress)
    rows = [(space.specs(space.full_choice()), meter.scale_ms)]
    return lat, rows, calibrate_networks(lat, space, meter.measure, options, scores, rows)


def _check_reachable(budgets: Budgets, cals: dict[str, Calibration], meter: BlockMeters, hint: str = "") -> None:
    """Refuse a budget below the fastest network measured on its device (``hint``: what else may reach it)."""
    for d, b in budgets.now(meter).items():
        fast, small, base = (c := cals[d].scaled(meter.since_scale(d))).fastest, c.smallest, meter.reference_ms(d)
        if b < fast.measured_ms:
            also = ("" if fast is small else f"; the smallest network the constraints allow measured "
                    f"{small.measured_ms:.3f} ms")
            asked = (f"{100 * budgets.fraction:.0f} % of the original ({b:.3f} ms)"
                     if budgets.fraction is not None and d == budgets.primary else f"{b:.3f} ms")
            raise BelowSmallestError(
                f"budget {asked} is below the fastest network measured on {d}: {fast.name}, "
                f"{fast.measured_ms:.3f} ms ({100 * fast.measured_ms / base:.0f} % of the original's {base:.3f} ms)"
                f"{also}; raise the budget to at least {fast.measured_ms:.3f} ms{hint}", d, small.measured_ms,
                fastest_ms=fast.measured_ms, fastest=fast.name, baseline_ms=base, budget_ms=b)


@dataclass(frozen=True)
class SelectorRun:
    """The selector the loop calls: ``name`` on ``problem`` under the round's
    latency targets, seeded with ``start`` (a measured plan) after the first round."""
    name: str
    problem: Problem
    time_limit_s: float

    def __call__(self, targets_ms: dict[str, float], start: Choice | None) -> Selection:
        return select(self.name, self.problem.with_latency(targets_ms), start=start, swap=start is None,
                      infeasible="smallest", time_limit_s=self.time_limit_s)


def cut(space: PruningSpace, selection: Selection) -> nn.Module:
    """The network with only ``selection``'s channels and blocks, its widths checked."""
    pruned = apply_kept(space, selection.kept, removed_paths(space, selection.choice))
    check_widths(space, pruned, selection.choice)
    return pruned


# ---------------------------------------------------------------- results

def _unchanged(model: nn.Module, space: PruningSpace, meter: BlockMeters, budgets: dict[str, float],
               primary: str, extra: dict, stats: dict) -> PruneResult:
    base = meter.reference_ms(primary)
    note = ("every budget is above the measured baseline" if len(budgets) > 1 else
            f"budget {budgets.get(primary, 0):.3f} ms is above the measured baseline {base:.3f} ms"
            if budgets else "the full network meets every bound") + "; model returned unchanged"
    full_kept = {g.gid: list(range(g.size)) for g in space.groups}
    return PruneResult(model, base, base, base, make_plan(space, full_kept, primary, budgets.get(primary), extra),
                       budgets.get(primary), primary, unchanged=True, note=note, stats=stats,
                       devices={d: {"budget_ms": budgets.get(d), "baseline_ms": meter.reference_ms(d)}
                                for d in meter.meters}, frozen=space.frozen)


def _under_budget(problem: Problem, cal: Calibration, budget_ms: float | None) -> list[Selection]:
    """The calibration networks measured under ``budget_ms`` that meet every
    other bound, as selections, slowest first."""
    if budget_ms is None:
        return []
    nets = sorted((n for n in cal.networks if n.measured_ms <= budget_ms), key=lambda n: -n.measured_ms)
    return [problem.selection(n.choice, "calibration network", status="measured", note=n.name)
            for n in nets if problem.feasible(n.choice)]


def _above_baseline(budgets: dict[str, float], meter: BlockMeters, margin: float) -> bool:
    return all(b >= margin * meter.reference_ms(d) for d, b in budgets.items())


def _interval(loop: Controller, trial) -> dict:
    return {d: {"ratio": r.ratio, "lo": r.ratio_lo, "hi": r.ratio_hi, "half_width_rel": r.half_width_rel,
                "sure": r.sure, "rounds": r.rounds, "seconds": round(r.seconds, 3),
                "measured_lo_ms": r.ratio_lo * loop.meter.reference_ms(d),
                "measured_hi_ms": r.ratio_hi * loop.meter.reference_ms(d)} for d, r in trial.readings.items()}


def _result(model: nn.Module, space: PruningSpace, loop: Controller, outcome: Outcome, profs: dict,
            cals: dict[str, Calibration], extra: dict, t_start: float, profile_s: float, host: dict) -> PruneResult:
    """The result of the closed loop: its best trial, every device's numbers, stats, the selection."""
    best, sel, primary = outcome.best, outcome.best.selection, loop.budgets.primary
    budgets, cals = loop.budgets_ms(), {d: c.scaled(loop.meter.since_scale(d)) for d, c in cals.items()}
    per_device = {d: {"budget_ms": budgets.get(d), "baseline_ms": loop.meter.reference_ms(d),
                      "smallest_ms": cals[d].smallest.measured_ms, "fastest_ms": cals[d].fastest.measured_ms,
                      "predicted_ms": best.predicted_ms(d), "measured_ms": loop.measured_ms(best, d)} for d in profs}
    stats = {"profile_s": profile_s, "total_s": time.perf_counter() - t_start,
             "shapes_measured": sum(p.measured for p in profs.values()),
             "shapes_reused": sum(p.reused for p in profs.values()),
             "params_before": count_params(model), "params_after": count_params(best.model),
             "flops_before": sum(s.flops for s in space.specs(space.full_choice())),
             "flops_after": sum(s.flops for s in live_specs(space, sel.choice)),
             "granularity": extra.get("granularity", "channel"), "blocks": len(space.blocks),
             "removed_blocks": removed_paths(space, sel.choice),
             "smallest_ms": cals[primary].smallest.measured_ms, "fastest_ms": cals[primary].fastest.measured_ms,
             "fastest": {d: c.to_json(loop.meter.reference_ms(d)) for d, c in cals.items()},
             "certified": outcome.certified, "ratio_interval": _interval(loop, best),
             "budget_used": loop.used(best) if budgets else None,
             **host, "warnings": [*host["warnings"], *fit_warnings(cals)]}
    if outcome.note:
        (log.info if outcome.certified else log.warning)("%s", outcome.note)
    selection = {"selector": sel.selector, "status": sel.status, "mip_gap": sel.mip_gap, "solve_s": sel.solve_s,
                 "objective": sel.objective, "importance": sel.importance, "usage": sel.usage, "note": sel.note}
    return PruneResult(model=best.model.eval(), baseline_ms=loop.meter.reference_ms(primary),
                       predicted_ms=sel.predicted_ms, measured_ms=loop.measured_ms(best, primary),
                       plan=make_plan(space, sel.kept, primary, budgets.get(primary), extra,
                                      removed_paths(space, sel.choice)),
                       budget_ms=budgets.get(primary), device=primary, rounds=outcome.rounds, note=outcome.note,
                       stats=stats, devices=per_device, selection=selection, frozen=space.frozen)


# ---------------------------------------------------------------- prune

def prune(model: nn.Module, example_inputs, device: str | None = None, budget_ms: float | None = None, *,
          selector: str = "greedy", constraints: Constraints | None = None, importance_name: str = "l1",
          data=None, store: MeasurementStore | None = None, max_rounds: int = 6, aim: float = AIM,
          accept_low: float = ACCEPT_LOW, time_limit_s: float = 60.0, progress: Progress | None = None,
          budget_fraction: float | None = None, grid=None, certainty: Certainty | None = None,
          granularity: str | None = None) -> PruneResult:
    """Prune ``model`` so that it meets ``budget_ms`` on ``device`` and every
    bound in ``constraints`` (latency on other devices, FLOPs, parameters,
    memory, floors). ``selector``: greedy, knapsack or qcqp. ``importance_name``:
    a criterion of :mod:`hwprune.importance.criteria`; ``data`` (``(inputs, labels)``
    batches, e.g. a DataLoader) for the criteria that need it.

    ``budget_fraction`` (instead of ``budget_ms``): the budget on ``device`` is
    that share of the original model's latency there, as the engine measures
    it alternating with every candidate; it follows the host's drift, which an
    absolute budget measured earlier cannot.

    ``grid``: the channel grid (a number of channels, or device -> number);
    default the step measured on this host (:func:`resolve_grids`).
    ``certainty``: when a plan's measurement stops (default
    :data:`hwprune.loop.meter.PLAN`: +-2 %, at most 20 rounds or 30 s).
    ``granularity``: ``channel`` (widths only), ``block`` (remove whole
    residual blocks only, :mod:`hwprune.graph.blocks`) or ``both``; default
    ``both`` where the model has removable blocks. The plan lists the blocks
    removed (``removed_blocks``)."""
    example_inputs = as_inputs(example_inputs)
    cons = constraints or Constraints()
    certainty = certainty or PLAN
    budgets = _check_inputs(device, budget_ms, budget_fraction, selector, cons, max_rounds)
    primary = budgets.primary
    t_start = time.perf_counter()
    found = {name: devices.get(name) for name in dict.fromkeys([primary, *budgets.ms])}
    grids = resolve_grids(found, store, grid, progress)
    devs = {d: with_grid(dev, grids[d]) for d, dev in found.items()}
    try:
        model = model.eval()
    except NotImplementedError:  # torch.export's module: its layers are graph operations, not modules
        raise UserError("a torch.export program cannot be pruned (its layers are graph operations, not modules to "
                        "cut); give the model's Python definition: a zoo name, torchvision:NAME, timm:NAME or a "
                        "hwprune checkpoint") from None
    space = PruningSpace(model, example_inputs)
    granularity = resolve_granularity(space, granularity)
    options = with_blocks(space, _grid_options(space, devs[primary], cons), granularity)
    scores = with_block_scores(space, importance.compute(importance_name, space, data), data)
    exact = Problem(space, options, scores, replace(cons, latency_ms=()))
    bad = exact.violated(exact.smallest())
    if bad:
        raise UserError(exact.infeasible_message(bad))

    profs = {d: Profiler(dev, store) for d, dev in devs.items()}
    modes = measure_grouped_modes(profs[primary], space, progress)  # whole groups where the device rewards it
    if any(c.mode == "whole" for c in modes.values()):
        space = PruningSpace(model, example_inputs, grouped_modes={n: c.mode for n, c in modes.items()})
        resolve_granularity(space, granularity)  # the rebuilt space keeps the removable blocks
        options = with_blocks(space, _grid_options(space, devs[primary], cons), granularity)
        scores = with_block_scores(space, importance.compute(importance_name, space, data), data)
        exact = Problem(space, options, scores, replace(cons, latency_ms=()))
    for c in modes.values():
        log.info("grouped conv %s pruned %s: %s", c.name, "by whole groups" if c.mode == "whole" else
                 "within its groups", c.reason)
    meter = BlockMeters({d: BlockMeter(profs[d].runtime, model, example_inputs, initial=2, plan=certainty)
                         for d in devs})
    extra = {"selector": selector, **({"granularity": granularity} if space.blocks else {}),
             **({"grouped_mode_reasons": {n: c.reason for n, c in modes.items()}} if modes else {}),
             "constraints": replace(cons, latency_ms=tuple(budgets.now(meter).items())).to_json(),
             **({"budget_fraction": budget_fraction} if budget_fraction is not None else {})}
    full_ok = exact.feasible(space.full_choice())

    def host() -> dict:
        return host_stats(meter, grids, certainty, budget_fraction is not None)
    if full_ok and _above_baseline(budgets.now(meter), meter, 1.1):  # clearly above; near it, decide later
        return _unchanged(model, space, meter, budgets.now(meter), primary, extra, host())
    fitted = {d: _calibrated(profs[d], meter.meters[d], space, options, scores, progress) for d in devs}
    if full_ok and _above_baseline(budgets.now(meter), meter, 1.0):
        return _unchanged(model, space, meter, budgets.now(meter), primary, extra, host())
    cals = {}
    for d, (lat, rows, cal) in fitted.items():
        b = budgets.now(meter).get(d)
        if b is not None and b < FASTEST_MARGIN * cal.fastest.measured_ms:  # near the minimum: find it
            cal = measure_fastest(lat, space, meter.meters[d].measure, options, scores, rows, cal)
        cals[d] = cal
    evs = {d: Evaluator(space, lat, scores) for d, (lat, _, _) in fitted.items()}
    t_profile = time.perf_counter() - t_start
    _check_reachable(budgets, cals, meter, blocks_hint(space) if granularity == "channel" else "")

    problem = Problem(space, options, scores, replace(cons, latency_ms=()), evs)
    loop = Controller(SelectorRun(selector, problem, time_limit_s), partial(cut, space), meter, budgets,
                      problem.largest(), max_rounds=max_rounds, aim=aim, accept_low=accept_low,
                      wider=partial(wider_plans, problem, selector=selector),
                      between=partial(between_plan, problem, selector=selector))
    outcome = loop.run()
    if not loop.met():  # every plan offered measured over: the calibration networks under the budget, then between
        rescue(loop, _under_budget(problem, cals[primary], budgets.now(meter).get(primary)))
        outcome = loop.outcome()
    return _result(model, space, loop, outcome, profs, cals, extra, t_start, t_profile, host())
