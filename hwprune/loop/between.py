"""Measuring between a plan under the budget and one over it, by width.

The selector reads the latency model; where the model is wrong over a whole
range of plans (a host whose load grows while the loop measures, widths whose
kernels change) every plan it offers can land on the same side of the
budget, or jump from well under it to over it. Between two measured plans,
one under the budget and one over, lies a line of plans that needs no model:
every group at an option part of the way from the first plan's width to the
second's on the grid (:func:`interpolate`). Latency grows along that line,
so measuring on it closes in on the budget the way bisection closes in on a
root, each step placed where the straight line through the two measured
plans meets the aim (kept within the middle half of the gap, so every step
shrinks it).

:func:`bisect` runs this on a :class:`hwprune.loop.controller.Controller`
after its selector, re-measuring and widening are done and its answer still
uses less than the acceptance share; :func:`rescue` first measures the
networks measured under the budget while calibrating (where no plan offered
met the budget) and then bisects between the slowest of them that meets it
and the fastest plan measured over it, in ``RESCUE_ROUNDS`` more rounds.
"""
from __future__ import annotations

import math

from hwprune.graph.space import Choice
from hwprune.select.evaluator import Selection

RESCUE_ROUNDS = 3  # rounds the rescue may measure between the networks under and over the budget
MIDDLE = (0.25, 0.75)  # each step lands in this part of the gap between the two plans


def interpolate(options: dict, lo: Choice, hi: Choice, t: float) -> Choice:
    """The choice ``t`` of the way from ``lo`` (0) to ``hi`` (1): each group at
    the option that far between its two options on the grid (the nearest,
    half-way rounding up the grid); a group whose width is not on the grid takes ``lo``'s width
    below the middle and ``hi``'s from it."""
    out = {}
    for key, opts in options.items():
        a, b = tuple(lo[key]), tuple(hi[key])
        if a == b or a not in opts or b not in opts:
            out[key] = a if a == b or t < 0.5 else b
            continue
        i, j = opts.index(a), opts.index(b)
        out[key] = opts[math.floor(i + t * (j - i) + 0.5)]
    return out


def between_plan(problem, lo: Choice, hi: Choice, t: float, selector: str) -> Selection | None:
    """The plan :func:`interpolate` puts ``t`` of the way from ``lo`` to ``hi``,
    as a selection of ``problem`` by ``selector``; None where it breaks an
    exact bound (FLOPs, parameters, memory)."""
    choice = interpolate(problem.options, lo, hi, t)
    if not problem.feasible(choice):
        return None
    return problem.selection(choice, selector, status="between",
                             note=f"{100 * t:.0f} % of the way from a plan under the budget to one over it")


def ends(loop):
    """The two plans to measure between: the certified plan with the most
    latency used (else the plan whose point estimate meets every budget with
    the most), and the plan measured over a budget with the least; None for
    either that is missing."""
    current = loop.current()
    lo = loop.best_certified() or max((t for t in current if loop.used(t) <= 1.0), key=loop.used, default=None)
    hi = min((t for t in current if loop.used(t) > 1.0), key=loop.used, default=None)
    return lo, hi


def position(u_lo: float, u_hi: float, aim: float) -> float:
    """Where on the line from the plan using ``u_lo`` of the budget to the one
    using ``u_hi`` the aim falls, kept within :data:`MIDDLE`."""
    t = (aim - u_lo) / (u_hi - u_lo) if u_hi > u_lo else 0.5
    return min(MIDDLE[1], max(MIDDLE[0], t))


def bisect(loop, limit: int) -> bool:
    """While ``loop`` has measured fewer than ``limit`` plans and the plan
    under the budget it bisects from uses less than the acceptance share:
    measure the plan between it and the plan over the budget (starting from
    :func:`ends`) at :func:`position` (or half-way, where that plan is
    measured already), and keep it as the new end on its side of the budget
    (latency need not grow with every width, so the ends are the last plans
    measured, not the best ones); stop when one is accepted (True) or there is
    no new plan between."""
    if loop.between is None or not loop.budgets_ms():
        return False
    lo, hi = ends(loop)
    while len(loop.trials) < limit and lo is not None and hi is not None:
        if loop.used(lo) >= loop.accept_low_now():
            return False
        aim = loop.aim_now()
        t = position(loop.used(lo), loop.used(hi), aim)
        plans = (loop.between(lo.selection.choice, hi.selection.choice, s) for s in dict.fromkeys((t, 0.5)))
        plan = next((p for p in plans if p is not None and not loop.already_measured(p)), None)
        if plan is None:
            return False
        loop.bisected += 1
        trial = loop.measure(plan, {d: b * aim for d, b in loop.budgets_ms().items()})
        if loop.accepts(trial):
            return True
        lo, hi = (trial, hi) if loop.used(trial) <= 1.0 else (lo, trial)
    return False


def rescue(loop, candidates) -> bool:
    """After ``loop``'s run found no plan meeting every budget: measure
    ``candidates`` (selections measured under the budget before, e.g. while
    calibrating; slowest first) until one meets them, then :func:`bisect`
    between it and the fastest plan over the budget in up to
    ``RESCUE_ROUNDS`` more rounds. True when a plan is accepted."""
    for selection in candidates:
        if loop.already_measured(selection):
            continue
        trial = loop.measure(selection, loop.first_targets())
        if loop.accepts(trial):
            return True
        if loop.used(trial) <= 1.0:
            break
    return bisect(loop, len(loop.trials) + RESCUE_ROUNDS)


__all__ = ["MIDDLE", "RESCUE_ROUNDS", "between_plan", "bisect", "ends", "interpolate", "position", "rescue"]
