"""The closed loop: profile, fit, select, cut, measure, correct, repeat.

Each pruned candidate is measured interleaved with the original model and
reported as ``(candidate / original) x baseline_ms``, so drift of the machine
cancels; ``baseline_ms`` is the median of every measurement of the original
(three at the start and one per round). The latency model's error is corrected multiplicatively after each
measured round (the correction is the median of ``measured / predicted`` over
the rounds so far, so one noisy round cannot swing it) and the selection is
redone, for at most ``max_rounds`` rounds. The selector aims a
little under the budget (``aim``) so that run-to-run noise of a re-measurement
stays inside it; a round is accepted once its measured latency lies in
``[accept_low, 1.0] x budget``. The answer is the measured plan that meets the
budget with the most latency used; if none meets it, the fastest one measured.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from profilers import MeasurementStore

from . import __version__, devices, importance
from .errors import UserError
from .graph import PruningSpace
from .profiling import Profiler, Progress, RelativeMeter, fit_latency_model
from .select import Evaluator, greedy, group_options
from .surgery import apply_kept, check_widths

log = logging.getLogger("hwprune")


@dataclass(frozen=True)
class Round:
    target_ms: float
    predicted_ms: float
    measured_ms: float
    iqr_ms: float


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module
    baseline_ms: float
    predicted_ms: float
    measured_ms: float
    plan: dict
    budget_ms: float
    device: str
    rounds: tuple[Round, ...] = ()
    unchanged: bool = False
    note: str = ""
    stats: dict = field(default_factory=dict)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def make_plan(space: PruningSpace, kept: dict[int, list[int]], device: str, budget_ms: float) -> dict:
    from .modelio import plan_fingerprint
    return {"format": "hwprune-plan/1", "hwprune_version": __version__, "device": device,
            "fingerprint": plan_fingerprint(space),
            "budget_ms": budget_ms,
            "groups": [{"gid": g.gid, "root": g.root, "size": g.size,
                        "kept": [int(i) for i in kept.get(g.gid, range(g.size))]} for g in space.groups]}


def _uniform(options, frac: float):
    return {gid: opts[int(round(frac * (len(opts) - 1)))] for gid, opts in options.items()}


def calibrate(lat, space: PruningSpace, measure_ms, options, scores, rows: list | None = None) -> float:
    """Fit the latency model's remainder from whole-model measurements of the
    smallest and the half-width sub-networks (plus ``rows`` already measured);
    returns the smallest sub-network's measured ms."""
    rows = list(rows or [])
    ev = Evaluator(space, lat, scores)
    smallest_ms = None
    for frac in (0.0, 0.5):
        choice = _uniform(options, frac)
        m = measure_ms(apply_kept(space, ev.kept(choice)))
        rows.append((space.specs(choice), m))
        smallest_ms = m if smallest_ms is None else smallest_ms
    lat.fit_remainder(rows)
    return smallest_ms


def prune(model: nn.Module, example_inputs, device: str = "ort-cpu-1t", budget_ms: float = 0.0, *,
          importance_name: str = "l1", store: MeasurementStore | None = None, max_rounds: int = 6,
          aim: float = 0.965, accept_low: float = 0.93, progress: Progress | None = None) -> PruneResult:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    try:
        budget_ms = float(budget_ms)
    except (TypeError, ValueError):
        raise UserError(f"budget {budget_ms!r} is not a number; give a positive number of ms") from None
    if not budget_ms > 0 or budget_ms == float("inf"):
        raise UserError(f"budget {budget_ms} ms is not a positive number; give e.g. --budget-ms 2.0")
    dev = devices.get(device)
    t_start = time.perf_counter()
    model = model.eval()
    space = PruningSpace(model, example_inputs)
    prof = Profiler(dev, store)
    meter = RelativeMeter(prof, model, example_inputs, initial=2)
    full_kept = {g.gid: list(range(g.size)) for g in space.groups}

    def unchanged() -> PruneResult:
        base = meter.reference_ms
        note = f"budget {budget_ms:.3f} ms is above the measured baseline {base:.3f} ms; model returned unchanged"
        return PruneResult(model, base, base, base, make_plan(space, full_kept, dev.name, budget_ms),
                           budget_ms, dev.name, unchanged=True, note=note)
    if budget_ms >= 1.1 * meter.reference_ms:  # clearly above; near it, decide after more measurements
        return unchanged()
    options = {g.gid: group_options(g, dev.step_channels, dev.min_channels) for g in space.groups}
    lat = fit_latency_model(prof, space, options, progress)
    scores = importance.compute(importance_name, space)
    smallest_ms = calibrate(lat, space, meter.measure, options, scores,
                            [(space.specs(space.full_choice()), meter.reference_ms)])
    if budget_ms >= meter.reference_ms:
        return unchanged()
    t_profile = time.perf_counter() - t_start
    if budget_ms < smallest_ms:
        raise UserError(f"budget {budget_ms:.3f} ms is below the smallest network the constraints allow "
                        f"({smallest_ms:.3f} ms measured on {dev.name}); raise the budget")
    ev = Evaluator(space, lat, scores)
    rounds, tried = [], []
    start, target_raw = None, budget_ms * aim
    for _ in range(max_rounds):
        sel = greedy(ev, options, target_raw, start=start, swap=start is None)
        pruned = apply_kept(space, sel.kept)
        check_widths(space, pruned, sel.choice)
        ratio, timing = meter.ratio(pruned)
        m = ratio * meter.reference_ms
        rounds.append(Round(target_raw, sel.predicted_ms, m, timing.iqr_ms))
        tried.append((sel, pruned, ratio))
        log.info("round %d: predicted %.3f ms, measured %.3f ms (budget %.3f)", len(rounds),
                 sel.predicted_ms, m, budget_ms)
        at_full = all(sel.choice[gid] == opts[-1] for gid, opts in options.items())
        if m <= budget_ms and (m >= accept_low * budget_ms or at_full):
            break
        # anchor on the measured plan closest to the aim: small moves from a
        # measured network are predicted far better than a network from scratch
        anchor, a_ratio = min(((t[0], t[2]) for t in tried),
                              key=lambda t: abs(t[1] * meter.reference_ms - budget_ms * aim))
        start = anchor.choice
        target_raw = anchor.predicted_ms * (budget_ms * aim) / (a_ratio * meter.reference_ms)
    baseline = meter.reference_ms  # every reference measurement so far
    meeting = [t for t in tried if t[2] * baseline <= budget_ms]
    sel, pruned, ratio = max(meeting, key=lambda t: t[2]) if meeting else min(tried, key=lambda t: t[2])
    m = ratio * baseline
    note = "" if meeting else f"budget not met after {len(rounds)} rounds; returning the fastest network measured"
    pruned_specs = space.specs(sel.choice)
    stats = {"profile_s": t_profile, "total_s": time.perf_counter() - t_start,
             "shapes_measured": prof.measured, "shapes_reused": prof.reused,
             "params_before": count_params(model), "params_after": count_params(pruned),
             "flops_before": sum(s.flops for s in space.specs(space.full_choice())),
             "flops_after": sum(s.flops for s in pruned_specs), "smallest_ms": smallest_ms}
    return PruneResult(pruned.eval(), baseline, sel.predicted_ms, m,
                       make_plan(space, sel.kept, dev.name, budget_ms), budget_ms, dev.name,
                       tuple(rounds), False, note, stats)
