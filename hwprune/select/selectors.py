"""Budgeted width selection on the device's channel grid.

A group's options are kept counts per segment on the device grid: multiples of
the device step, the full width, and below one step the device's minimum,
since latency is flat between grid points and widths off the grid buy nothing.
Inside a segment the top-k channels by importance are kept.

Three selectors, registered in :data:`SELECTORS` (a
:class:`profilers.registry.Registry`), share one interface, :func:`select`
(``problem`` is a :class:`hwprune.select.problem.Problem`: the space, the
options, the channel scores, one :class:`Evaluator` per device and every
constraint):

- ``greedy``: start from the full network, repeatedly take the one-level width
  cut with the least importance lost per unit of constraint excess removed
  (each violated constraint's saving divided by its limit, summed) until every
  constraint holds, then spend any slack by re-growing the groups with the most
  importance per unit of normalised cost that still fit. When a cut satisfies
  every constraint, the cut losing least importance is taken (not the best
  ratio), and a final local search swaps one level between two groups while
  that gains importance within the constraints (:mod:`hwprune.select.greedy`).
  Greedy moves one level at a time, so it stalls where every next level
  crosses a latency cliff (a width off the device's alignment costs more than
  a whole step): when its plan leaves more than ``1 - STALL`` of every
  bound unused, the knapsack is asked too, seeded with greedy's plan, and the
  plan keeping more importance is returned (its ``note`` says so).
- ``knapsack``: HALP's multiple-choice knapsack by dynamic programming
  (:mod:`hwprune.select.knapsack`).
- ``qcqp``: the exact discrete QCQP of Jeong et al. as a MILP solved by HiGHS
  (:mod:`hwprune.select.qcqp.milp`).

greedy and knapsack maximise the kept channel scores; qcqp maximises the
importance of active weights. Every :class:`Selection` reports both, so plans
of different selectors compare on the same objective.
"""
from __future__ import annotations

import time
from dataclasses import replace

from hwprune.errors import UnknownNameError, UserError
from hwprune.graph.space import Choice
from hwprune.select.evaluator import Selection
from hwprune.select.greedy import greedy_limits
from hwprune.select.knapsack import knapsack
from hwprune.select.qcqp.milp import solve
from profilers.registry import Registry

STALL = 0.95  # greedy using less than this share of every bound may have stalled at a latency cliff

SELECTORS = Registry("selector", error=UnknownNameError)
"""Every selector: ``fn(problem, *, start, swap, smallest, time_limit_s, mip_rel_gap,
max_options)`` returning a :class:`Selection` (``smallest``: the least choice,
known to meet every constraint)."""


@SELECTORS.register("greedy", objective="channel scores", help="greedy width cuts, then regrowth and swaps")
def _greedy(problem, *, start, swap, smallest, **_) -> Selection:
    t0 = time.perf_counter()
    choice, ok = greedy_limits(problem.ev, problem.options, problem.resources, start, swap)
    if not ok:  # stuck where no single cut helps (a table that is not monotone): grow from the floor
        choice, ok = greedy_limits(problem.ev, problem.options, problem.resources, smallest, swap)
    chosen = problem.selection(choice, "greedy", status="heuristic", solve_s=time.perf_counter() - t0)
    load = max_load(problem, choice)
    if not (ok and load < STALL):
        return chosen
    other = knapsack(problem, start=choice)
    if not (other.feasible and other.importance > chosen.importance * (1 + 1e-9)):
        return replace(chosen, solve_s=time.perf_counter() - t0)
    return replace(other, selector="greedy", solve_s=time.perf_counter() - t0,
                   note=f"greedy stalled using {100 * load:.0f} % of its tightest bound; "
                        f"the knapsack's plan keeps more importance")


def max_load(problem, choice: Choice) -> float:
    """The largest share of its bound any summed resource uses (per-layer bounds left out)."""
    return max((r.load(choice)[0] / r.limit for r in problem.resources if not r.per_layer), default=1.0)


@SELECTORS.register("knapsack", objective="channel scores", help="HALP's multiple-choice knapsack")
def _knapsack(problem, *, start, **_) -> Selection:
    return knapsack(problem, start=start)


@SELECTORS.register("qcqp", objective="active-weight importance",
                    help="exact MILP of Jeong et al. solved by HiGHS")
def _qcqp(problem, *, time_limit_s, mip_rel_gap, max_options, **_) -> Selection:
    return solve(problem, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap, max_options=max_options)


def select(name: str, problem, *, start: Choice | None = None, swap: bool = True,
           infeasible: str = "raise", time_limit_s: float = 60.0, mip_rel_gap: float = 1e-3,
           max_options: int = 12) -> Selection:
    """Choose widths with selector ``name`` (one of :data:`SELECTORS`) under
    every constraint of ``problem``.

    The smallest network the options allow is the least of every resource; if
    it breaks a constraint, no plan can meet it: ``infeasible="raise"`` raises
    :class:`UserError` naming each such constraint and the smallest value that
    can be met, ``"smallest"`` returns that network with ``feasible=False``.
    ``start`` (a choice) seeds greedy and knapsack; qcqp solves from scratch,
    within ``time_limit_s``, to a relative MIP gap ``mip_rel_gap`` (0.1 %),
    searching groups of more than ``max_options`` widths coarse to fine
    (:func:`hwprune.select.qcqp.milp.solve`). An unknown ``name`` raises
    :class:`hwprune.errors.UnknownNameError` (a :class:`UserError`) listing
    the selectors."""
    fn = SELECTORS.get(name)
    t0 = time.perf_counter()
    smallest = problem.smallest()
    bad = problem.violated(smallest)
    if bad:
        if infeasible == "raise":
            raise UserError(problem.infeasible_message(bad))
        return problem.selection(smallest, name, status="infeasible", solve_s=time.perf_counter() - t0)
    return fn(problem, start=start, swap=swap, smallest=smallest, time_limit_s=time_limit_s,
              mip_rel_gap=mip_rel_gap, max_options=max_options)
