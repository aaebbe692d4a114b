"""The closed loop: profile, fit, select, cut, measure, correct, repeat.

Each pruned candidate is measured interleaved with the original model and
reported as ``(candidate / original) x baseline_ms``, so drift of the machine
cancels; ``baseline_ms`` is the median of every measurement of the original
(three at the start and one per round). The latency model's error is corrected
after each measured round and the selection is redone, for at most
``max_rounds`` rounds: the selector is re-run from the measured plan closest
to the aim with the latency target scaled by that plan's measured / predicted
ratio (greedy starts from that plan, knapsack relinearises around it, qcqp
re-solves from scratch with the new target). The selector aims a little under
the budget (``aim``) so that run-to-run noise of a re-measurement stays
inside it; a round is accepted once its measured latency lies in
``[accept_low, 1.0] x budget``. The answer is the measured plan that meets the
budget with the most latency used; if none meets it, the fastest one measured.

Several devices: every device with a latency budget (and the primary device,
``device``) is profiled, fitted and calibrated; each plan is measured on every
one of them and each device's target is corrected from its own measurements.
"Latency used" is then the largest measured / budget ratio over the devices,
and the loop also stops when the selector returns a plan already measured
(another constraint binds). FLOPs, parameter and memory bounds are exact and
checked before anything is measured.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from torch import nn

from hwprune import devices
from hwprune.errors import BelowSmallestError, UserError
from hwprune.graph.space import PruningSpace, group_options, uniform_choice
from hwprune.graph.surgery import apply_kept, check_widths
from hwprune.importance import criteria as importance
from hwprune.latency.profiling import Profiler, Progress, RelativeMeter, fit_latency_model
from hwprune.select.evaluator import Evaluator
from hwprune.select.problem import Constraints, Problem, floor_options
from hwprune.select.selectors import SELECTORS, select
from hwprune.version import __version__
from profilers import MeasurementStore
from profilers.inputs import as_inputs

log = logging.getLogger("hwprune")


@dataclass(frozen=True)
class Round:
    """One measured plan; the first four fields are the primary device's
    (``target_ms`` None where it has no budget), ``devices`` every device's."""
    target_ms: float | None
    predicted_ms: float
    measured_ms: float
    iqr_ms: float
    devices: dict = field(default_factory=dict)
    status: str = ""
    solve_s: float = 0.0


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


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def make_plan(space: PruningSpace, kept: dict[int, list[int]], device: str, budget_ms: float | None,
              extra: dict | None = None) -> dict:
    from hwprune.graph.plans import plan_fingerprint
    return {"format": "hwprune-plan/1", "hwprune_version": __version__, "device": device,
            "fingerprint": plan_fingerprint(space), "budget_ms": budget_ms, **(extra or {}),
            "groups": [{"gid": g.gid, "root": g.root, "size": g.size,
                        "kept": [int(i) for i in kept.get(g.gid, range(g.size))]} for g in space.groups]}


def calibrate(lat, space: PruningSpace, measure_ms, options, scores, rows: list | None = None) -> float:
    """Fit the latency model's remainder from whole-model measurements of the
    smallest, quarter- and half-width sub-networks (plus ``rows`` already measured);
    returns the smallest sub-network's measured ms."""
    rows = list(rows or [])
    ev = Evaluator(space, lat, scores)
    smallest_ms = None
    for frac in (0.0, 0.25, 0.5):
        choice = uniform_choice(options, frac)
        m = measure_ms(apply_kept(space, ev.kept(choice)))
        rows.append((space.specs(choice), m))
        smallest_ms = m if smallest_ms is None else smallest_ms
    lat.fit_remainder(rows)
    return smallest_ms


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
                                               constraints.max_memory_mb)):
        raise UserError("no budget given: give a latency budget (--budget-ms) or a FLOPs, parameter or "
                        "memory bound (--max-flops, --max-params, --max-memory-mb)")
    return device or next(iter(budgets), "ort-cpu-1t"), budgets


def prune(model: nn.Module, example_inputs, device: str | None = None, budget_ms: float | None = None, *,
          selector: str = "greedy", constraints: Constraints | None = None, importance_name: str = "l1",
          data=None, store: MeasurementStore | None = None, max_rounds: int = 6, aim: float = 0.965,
          accept_low: float = 0.93, time_limit_s: float = 60.0, progress: Progress | None = None,
          budget_fraction: float | None = None) -> PruneResult:
    """Prune ``model`` so that it meets ``budget_ms`` on ``device`` and every
    bound in ``constraints`` (latency on other devices, FLOPs, parameters,
    memory, floors). ``selector``: greedy, knapsack or qcqp. ``importance_name``:
    a criterion of :mod:`hwprune.importance.criteria`; ``data`` (``(inputs, labels)``
    batches, e.g. a DataLoader) for the criteria that need it.

    ``budget_fraction`` (instead of ``budget_ms``): the budget on ``device`` is
    that share of the original model's latency there, as the engine measures
    it interleaved with every candidate; it follows the host's drift, which an
    absolute budget measured earlier cannot."""
    example_inputs = as_inputs(example_inputs)
    if selector not in SELECTORS:
        raise UserError(f"unknown selector {selector!r}; choose one of {', '.join(SELECTORS)}")
    cons = constraints or Constraints()
    if budget_fraction is not None:
        if budget_ms is not None:
            raise UserError("give a budget in ms or as a fraction of the baseline, not both")
        if not 0.0 < budget_fraction < float("inf"):
            raise UserError(f"budget fraction {budget_fraction} is not positive; give e.g. 50%")
        budget_ms = 1.0  # placeholder until the baseline is measured
    primary, budgets = _budgets(device, budget_ms, cons)
    devs = {name: devices.get(name) for name in dict.fromkeys([primary, *budgets])}
    t_start = time.perf_counter()
    model = model.eval()
    space = PruningSpace(model, example_inputs)
    grid = devs[primary]
    options = floor_options(space, {g.gid: group_options(g, grid.step_channels, grid.min_channels)
                                    for g in space.groups}, grid.step_channels, cons)
    scores = importance.compute(importance_name, space, data)
    exact = Problem(space, options, scores, replace(cons, latency_ms=()))
    bad = exact.violated(exact.smallest())
    if bad:
        raise UserError(exact.infeasible_message(bad))
    profs = {d: Profiler(dev, store) for d, dev in devs.items()}
    meters = {d: RelativeMeter(profs[d], model, example_inputs, initial=2) for d in devs}

    def follow_baseline() -> None:
        if budget_fraction is not None:
            budgets[primary] = budget_fraction * meters[primary].reference_ms
    follow_baseline()
    full_kept = {g.gid: list(range(g.size)) for g in space.groups}
    extra = {"selector": selector, "constraints": replace(cons, latency_ms=tuple(budgets.items())).to_json(),
             **({"budget_fraction": budget_fraction} if budget_fraction is not None else {})}

    def unchanged() -> PruneResult:
        base = meters[primary].reference_ms
        note = ("every budget is above the measured baseline" if len(budgets) > 1 else
                f"budget {budgets.get(primary, 0):.3f} ms is above the measured baseline {base:.3f} ms"
                if budgets else "the full network meets every bound") + "; model returned unchanged"
        return PruneResult(model, base, base, base, make_plan(space, full_kept, primary, budgets.get(primary),
                                                               extra), budgets.get(primary), primary,
                           unchanged=True, note=note,
                           devices={d: {"budget_ms": budgets.get(d), "baseline_ms": m.reference_ms}
                                    for d, m in meters.items()})
    full_ok = exact.feasible(space.full_choice())
    if full_ok and all(b >= 1.1 * meters[d].reference_ms for d, b in budgets.items()):
        return unchanged()  # clearly above; near it, decide after more measurements
    evs, smallest_ms = {}, {}
    for d in devs:
        lat = fit_latency_model(profs[d], space, options, progress)
        smallest_ms[d] = calibrate(lat, space, meters[d].measure, options, scores,
                                   [(space.specs(space.full_choice()), meters[d].reference_ms)])
        evs[d] = Evaluator(space, lat, scores)
    follow_baseline()
    if full_ok and all(b >= meters[d].reference_ms for d, b in budgets.items()):
        return unchanged()
    t_profile = time.perf_counter() - t_start
    for d, b in budgets.items():
        if b < smallest_ms[d]:
            raise BelowSmallestError(f"budget {b:.3f} ms is below the smallest network the constraints allow "
                                     f"({smallest_ms[d]:.3f} ms measured on {d}); raise the budget",
                                     d, smallest_ms[d])
    problem = Problem(space, options, scores, replace(cons, latency_ms=()), evs)
    refs = {d: (lambda d=d: meters[d].reference_ms) for d in devs}
    rounds, tried = [], []
    start, targets = None, {d: b * aim for d, b in budgets.items()}

    def used(ratios: dict) -> float:
        return max((ratios[d] * refs[d]() / b for d, b in budgets.items()), default=0.0)

    nudges = 0
    while len(rounds) < max_rounds:
        sel = select(selector, problem.with_latency(targets), start=start, swap=start is None,
                     infeasible="smallest", time_limit_s=time_limit_s)
        if any(sel.choice == t[0].choice for t in tried):
            # a plan already measured: the corrected target moved less than one
            # grid step, or another bound holds the plan. Move the target further
            # in the direction the measurement asks for, a few times at most.
            nudges += 1
            u = used(anchor[2]) if budgets else 1.0
            if nudges > 4 or accept_low <= u <= 1.0:
                break
            scale = (1.0 + 0.02 * nudges) if u < accept_low else 1.0 / (1.0 + 0.02 * nudges)
            targets = {d: t * scale for d, t in targets.items()}
            continue
        pruned = apply_kept(space, sel.kept)
        check_widths(space, pruned, sel.choice)
        ratios, timings, per_dev = {}, {}, {}
        for d in devs:
            ratios[d], timings[d] = meters[d].ratio(pruned)
        follow_baseline()
        for d in devs:
            per_dev[d] = {"target_ms": targets.get(d), "predicted_ms": sel.usage[f"latency_ms[{d}]"],
                          "measured_ms": ratios[d] * refs[d](), "iqr_ms": timings[d].iqr_ms}
        tried.append((sel, pruned, ratios))
        p = per_dev[primary]
        rounds.append(Round(p["target_ms"], p["predicted_ms"], p["measured_ms"], p["iqr_ms"],
                            per_dev if len(devs) > 1 else {}, sel.status, sel.solve_s))
        log.info("round %d (%s, %s): %s", len(rounds), selector, sel.status, ", ".join(
            f"{d} predicted {v['predicted_ms']:.3f} ms, measured {v['measured_ms']:.3f} ms"
            + (f" (budget {budgets[d]:.3f})" if d in budgets else "") for d, v in per_dev.items()))
        if not budgets:
            break
        u = used(ratios)
        at_full = all(sel.choice[gid] == opts[-1] for gid, opts in options.items())
        if u <= 1.0 and (u >= accept_low or at_full):
            break
        # anchor on the measured plan closest to the aim: small moves from a
        # measured network are predicted far better than a network from scratch
        anchor = min(tried, key=lambda t: max(abs(t[2][d] * refs[d]() - b * aim) / b for d, b in budgets.items()))
        start = anchor[0].choice
        targets = {d: anchor[0].usage[f"latency_ms[{d}]"] * (b * aim) / (anchor[2][d] * refs[d]())
                   for d, b in budgets.items()}
    meeting = [t for t in tried if used(t[2]) <= 1.0]
    pick = max if meeting else min
    sel, pruned, ratios = pick(meeting or tried, key=lambda t: used(t[2]))
    note = "" if meeting else f"budget not met after {len(rounds)} rounds; returning the fastest network measured"
    pruned_specs = space.specs(sel.choice)
    per_device = {d: {"budget_ms": budgets.get(d), "baseline_ms": refs[d](), "smallest_ms": smallest_ms[d],
                      "predicted_ms": sel.usage[f"latency_ms[{d}]"], "measured_ms": ratios[d] * refs[d]()}
                  for d in devs}
    stats = {"profile_s": t_profile, "total_s": time.perf_counter() - t_start,
             "shapes_measured": sum(p.measured for p in profs.values()),
             "shapes_reused": sum(p.reused for p in profs.values()),
             "params_before": count_params(model), "params_after": count_params(pruned),
             "flops_before": sum(s.flops for s in space.specs(space.full_choice())),
             "flops_after": sum(s.flops for s in pruned_specs), "smallest_ms": smallest_ms[primary]}
    selection = {"selector": selector, "status": sel.status, "mip_gap": sel.mip_gap, "solve_s": sel.solve_s,
                 "objective": sel.objective, "importance": sel.importance, "usage": sel.usage, "note": sel.note}
    return PruneResult(pruned.eval(), refs[primary](), sel.predicted_ms, ratios[primary] * refs[primary](),
                       make_plan(space, sel.kept, primary, budgets.get(primary), extra), budgets.get(primary),
                       primary, tuple(rounds), False, note, stats, per_device, selection)
