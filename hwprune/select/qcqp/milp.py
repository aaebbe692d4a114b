"""The discrete QCQP of Jeong et al. (METHODS.md section 1), solved exactly as a MILP.

Variables. Per group g a one-hot ``x[g, k]`` over its grid options (an option
keeps the top-k channels of every segment by importance: the paper's channel
masks restricted to importance order). For every pair of nodes (u, v) that a
table couples, continuous ``y[u, v][k, k'] in [0, 1]`` with the marginal
constraints ``sum_k' y[k, k'] = x_u[k]`` and ``sum_k y[k, k'] = x_v[k']``;
with one-hot x these force ``y = x_u x_v^T``, so any function of
``(k_u, k_v)`` is linear in y. The linearisation is exact.

Tables. A layer's ``(n_in, n_out)`` depends on the groups its widths are
written in:

- no group: a constant; one group (a depthwise conv, a conv from a residual
  stream into itself): linear in x;
- two groups: a table over their option pairs, linear in y;
- more than two (a consumer of a concat of several groups): each side that
  sums several groups gets an auxiliary one-hot ``w[v]`` over the distinct
  widths that side can take, tied to its groups by
  ``sum_v width_v w[v] = fixed + sum_g sum_k contribution_g(k) x[g, k]``;
  the layer's table is then over (input-side node, output-side node), again
  exact, so no upper-bounding linearisation is needed.

Each layer's latency on each device (the :class:`Evaluator`'s per-layer costs,
the table greedy reads, corrections included), FLOPs and parameters are
written this way; the memory bound is one row per layer. The active-weight
objective is a sum of per-group vectors and per-pair tables
(:mod:`hwprune.importance.active`), so it needs no further variables.

Solver: ``scipy.optimize.milp`` (HiGHS) with a time limit and a relative MIP
gap (default 0.1 %: the importance proxy is far noisier than that); each
resource row is divided by its limit, and each group with more than two
options also gets its option index ``sum_k k x[g, k]`` as an integer variable,
which gives branching an ordered split (small vs large widths). Groups with
more than ``max_options`` grid widths (e.g. the 1024- and 2048-channel groups
of ResNet-50) are searched coarse to fine (see :func:`solve`): the LP of the
full grid has ~200,000 pairwise variables for ResNet-50 and its root alone
takes most of a minute on 2 cores; the answer is then certified on the full
grid by a Lagrangian bound (:mod:`hwprune.select.qcqp.dual`) and, if that leaves the
gap open, interval relaxations (:mod:`hwprune.select.qcqp.interval`). ``Selection.status``:
``optimal`` (gap proven below 1e-6), ``gap`` (stopped at the requested
relative gap), ``time limit`` (best plan found, its proven gap in
``mip_gap``), ``infeasible``; with no plan found in time greedy's plan is
returned with status ``time limit (greedy plan)``. ``solve_s`` counts building
the tables and solving.
"""
from __future__ import annotations

import time

import numpy as np

from hwprune.select.evaluator import Selection
from hwprune.select.greedy import greedy_limits
from hwprune.select.qcqp.interval import full_grid_bound
from hwprune.select.qcqp.model import MilpModel, run_milp


def thin_options(opts: list, n: int) -> list:
    """At most ``n`` options, evenly spread, the smallest and the largest kept."""
    if len(opts) <= n:
        return list(opts)
    return [opts[i] for i in sorted({int(round(v)) for v in np.linspace(0, len(opts) - 1, n)})]


def _solve_once(problem, time_limit_s: float, mip_rel_gap: float):
    """(choice or None, status, relative MIP gap, proven upper bound on the
    objective as a fraction of the full network's)."""
    model = MilpModel(problem)
    obj = model.objective_terms()
    rows = [row for r in problem.resources for row in model.resource_rows(r)]
    assembled = model.assemble(obj, rows)
    start = assembled[-1]
    res = run_milp(assembled, time_limit_s, mip_rel_gap)
    gap = getattr(res, "mip_gap", None)
    gap = None if gap is None or not np.isfinite(gap) else max(0.0, float(gap))
    dual = getattr(res, "mip_dual_bound", None)
    obj = problem.objective
    upper = float("inf") if dual is None or not np.isfinite(dual) or obj.full <= 0 else obj.const / obj.full - dual
    if res.x is None:
        return None, ("infeasible" if res.status == 2 else "time limit"), gap, upper
    choice = {gid: opts[int(np.argmax(res.x[start[("g", gid)]:start[("g", gid)] + len(opts)]))]
              for gid, opts in problem.options.items()}
    status = ("optimal" if gap is None or gap <= 1e-6 else "gap") if res.status == 0 else "time limit"
    return choice, status, gap, upper


def _status(gap: float, mip_rel_gap: float) -> str:
    return "optimal" if gap <= 1e-6 else ("gap" if gap <= mip_rel_gap * (1 + 1e-9) else "time limit")


def _windows(full: dict, grid: dict, choice: dict, n: int) -> tuple[dict, bool]:
    """Per group, the grid widths between the neighbours of its chosen width,
    thinned to ``n`` (the chosen width kept); and whether none was thinned."""
    out, fine = {}, True
    for gid, opts in full.items():
        cur = grid[gid]
        j = cur.index(choice[gid])
        win = opts[opts.index(cur[max(j - 1, 0)]):opts.index(cur[min(j + 1, len(cur) - 1)]) + 1]
        thin = thin_options(win, n)
        fine = fine and len(thin) == len(win)
        out[gid] = thin if choice[gid] in thin else sorted(set(thin) | {choice[gid]}, key=opts.index)
    return out, fine


SEARCH_SHARE = 0.6  # of the time limit, for the coarse-to-fine levels (the rest certifies)


def solve(problem, time_limit_s: float = 60.0, mip_rel_gap: float = 1e-3,
          max_options: int = 12) -> Selection:
    """Maximise kept active-weight importance under every constraint of ``problem``.

    Groups with at most ``max_options`` grid widths (all of them on the CIFAR
    ResNets) are solved exactly on the device grid. Wider groups are first
    searched on ``max_options`` (at least 3) evenly spread widths; then, level by level, on
    the grid widths between the answer's neighbours (again at most
    ``max_options`` of them) until the windows are at the device's step. Each
    level contains the previous answer, so the objective never drops. The
    answer is then certified on the full grid (:func:`hwprune.select.qcqp.interval.full_grid_bound`:
    a Lagrangian bound, then interval relaxations if needed): ``status`` and
    ``mip_gap`` are the certificate's, and ``note`` gives the bound; the time
    limit covers all levels and the certificate; the levels get at most
    ``SEARCH_SHARE`` of it, so a hard coarse level cannot leave the
    certificate without time. An exact solve that reaches its time limit (it
    is given nine tenths of it) is bounded the same way, and keeps the better
    of the two bounds."""
    t0 = time.perf_counter()
    left = lambda: time_limit_s - (time.perf_counter() - t0)
    search_left = lambda: SEARCH_SHARE * time_limit_s - (time.perf_counter() - t0)
    max_options = max(3, int(max_options))
    full = problem.options
    grid = {gid: thin_options(o, max_options) for gid, o in full.items()}
    thinned = any(len(grid[gid]) < len(o) for gid, o in full.items())
    prob = problem.with_options(grid) if thinned else problem
    # the exact solve keeps a tenth of the time for a bound, should it stop at the limit
    choice, status, gap, upper = _solve_once(prob, search_left() if thinned else 0.9 * time_limit_s, mip_rel_gap)
    note, levels = "", 1
    while choice is not None and thinned:
        before = grid
        grid, fine = _windows(full, grid, choice, max_options)
        if search_left() < 1.0 or grid == before:
            break
        nxt = problem.with_options(grid)
        better, *_ = _solve_once(nxt, search_left(), mip_rel_gap)
        prob, levels = nxt, levels + 1
        if better is not None and nxt.objective.value(better) >= nxt.objective.value(choice):
            choice = better
        if fine:
            break
    if choice is not None and (thinned or status == "time limit"):
        # the coarse search's bound is not one on the full grid
        choice, cert_gap, cert_note = full_grid_bound(problem, choice, float("inf") if thinned else upper, left(),
                                               mip_rel_gap, max_options if thinned else 0)
        prob = problem
        if thinned:
            note = (f"searched {max_options} widths per wide group, then {levels - 1} finer window(s) around "
                    f"the answer; ")
            status, gap = ("time limit", None) if cert_gap is None else (_status(cert_gap, mip_rel_gap), cert_gap)
            note += ("status and gap are the coarse search's (no bound on the full grid)" if cert_gap is None
                     else "full grid certified: " + cert_note)
        elif cert_gap is not None and (gap is None or cert_gap < gap):
            status, gap = _status(cert_gap, mip_rel_gap), cert_gap
            note = "certified: " + cert_note if cert_note else ""
    if choice is None:
        if status == "infeasible":
            return problem.selection(problem.smallest(), "qcqp", status="infeasible",
                                     solve_s=time.perf_counter() - t0)
        choice, _ = greedy_limits(problem.ev, problem.options, problem.resources)
        prob, status = problem, "time limit (greedy plan)"
    return prob.selection(choice, "qcqp", status=status, mip_gap=gap, note=note,
                          solve_s=time.perf_counter() - t0)
