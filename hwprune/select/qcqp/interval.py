"""A certificate for qcqp's answer: an upper bound on the optimum of the full grid.

:func:`full_grid_bound` tries the Lagrangian bound of :mod:`hwprune.select.qcqp.dual`
first (a second or two on ResNet-50) and, if the gap stays open, the interval
relaxations below, and keeps the better bound.

Partition every group's grid options into contiguous blocks. The relaxation
picks one block per group, with every objective table at its maximum over
the block (per pair of blocks for a pair table) and every resource table at
its minimum. Any plan of the full grid falls in one block per group that
scores at least as much as the plan and uses at most as much of every
resource, so the relaxation's optimum, and the dual bound HiGHS proves for
it, bound the full grid's optimum from above. The certified gap of a plan is
``(bound - plan) / bound``.

Tightening. For multipliers ``lam_r >= 0`` on the resource rows
``a_r x <= b_r``, every feasible plan has ``f(x) <= f(x) - sum_r lam_r (a_r x
- b_r)``, so the relaxation may score blocks by their maximum of ``f -
sum_r lam_r a_r`` (plus the constant ``sum_r lam_r b_r``) and stay a bound;
that maximum is never above ``max f - sum_r lam_r min a_r``, and with the
shadow prices of the resources (from the LP relaxation of the first blocked
problem) it is close to the plan's own value wherever importance and
latency trade at that price, which is where the optimum lies.

Refinement splits the blocks the relaxed answer picks, until the gap is
within the tolerance or the time is up. A relaxed answer that picks only
single options is a plan of the full grid with the same resource values, so
it is feasible, and it replaces the plan in hand when it scores more; without
prices it is optimal, with them the slack it leaves is priced in the bound,
so the prices are dropped if that alone keeps the gap open. No monotonicity
of the tables is assumed: the block extremes are taken over every option
pair.

Not available when a layer's width is a sum over several groups (a concat of
groups feeding one layer): those widths are tied by an equality that blocks
do not preserve; :func:`certify` then returns None.
"""
from __future__ import annotations

import time

import numpy as np

from hwprune.select.qcqp.dual import Bound, bound_of, lagrangian_bound, priced, tables_of
from hwprune.select.qcqp.dual import node_keys as _nodes
from hwprune.select.qcqp.model import run_milp


def _reduce(arr, key, size: dict, starts: dict, fn) -> np.ndarray:
    nodes = _nodes(key)
    out = np.broadcast_to(np.asarray(arr, dtype=float), tuple(size[n] for n in nodes))
    for axis, node in enumerate(nodes):
        out = fn.reduceat(out, starts[node], axis=axis)
    return out


def _initial(m: int, keep: int, n: int) -> np.ndarray:
    """About ``n`` contiguous blocks over ``m`` options, option ``keep`` alone in one."""
    cuts = {int(round(v)) for v in np.linspace(0, m, max(2, n) + 1)[:-1]} | {keep, keep + 1}
    return np.array(sorted(c for c in cuts if c < m), dtype=np.int64)


def _split(starts: np.ndarray, m: int, block: int, parts: int = 8) -> np.ndarray:
    lo = int(starts[block])
    hi = int(starts[block + 1]) if block + 1 < len(starts) else m
    cuts = {int(round(v)) for v in np.linspace(lo, hi, min(parts, hi - lo) + 1)[:-1]}
    return np.array(sorted(set(starts.tolist()) | cuts), dtype=np.int64)


def _prices(c, A, lb, ub, up, n_rows: int, time_limit_s: float) -> np.ndarray:
    """Shadow prices (objective per unit, >= 0) of the last ``n_rows`` rows,
    the resource rows ``<= ub``, in the LP relaxation; zeros without one."""
    from scipy.optimize import linprog
    eq = lb == ub  # every other row is an equality (one-hot, marginals, links)
    if n_rows == 0 or int((~eq).sum()) != n_rows:
        return np.zeros(n_rows)
    res = linprog(c, A_ub=A[~eq], b_ub=ub[~eq], A_eq=A[eq], b_eq=ub[eq],
                  bounds=np.column_stack([np.zeros_like(up), up]), method="highs",
                  options={"time_limit": max(0.1, time_limit_s)})
    if res.status != 0 or getattr(res, "ineqlin", None) is None:
        return np.zeros(n_rows)
    return np.maximum(0.0, -np.asarray(res.ineqlin.marginals, dtype=float))


def certify(problem, choice: dict, time_limit_s: float, mip_rel_gap: float = 1e-3,
            n_blocks: int = 12, max_rounds: int | None = None, price: bool = True) -> Bound | None:
    """Bound the full grid's optimum of ``problem`` and certify ``choice``
    (see the module docstring); the plan returned is ``choice`` or a better
    one the relaxation found. None without a bound (see above)."""
    t0 = time.perf_counter()
    parts = tables_of(problem)
    if parts is None:
        return None
    model, obj, rows, const = parts
    full = problem.objective
    size = dict(model.size)
    best, best_v = dict(choice), full.fraction(choice)
    starts = {node: _initial(m, problem.options[node[1]].index(choice[node[1]]), n_blocks)
              for node, m in size.items()}
    upper, rounds, scored, shift = float("inf"), 0, obj, 0.0
    while True:
        left = time_limit_s - (time.perf_counter() - t0)
        if left < 0.2:
            break
        model.size = {node: len(s) for node, s in starts.items()}
        r_rows = [({k: _reduce(v, k, size, starts, np.minimum) for k, v in terms.items()}, lo, hi)
                  for terms, lo, hi in rows]
        if rounds == 0 and price:
            plain = {k: _reduce(v, k, size, starts, np.maximum) for k, v in obj.items()}
            c, A, lb, ub, _, up, _ = model.assemble(plain, r_rows)
            lam = _prices(c, A, lb, ub, up, len(rows), left / 4)
            scored, shift = priced(obj, [(terms, hi) for terms, _, hi in rows], lam, size)
            left = time_limit_s - (time.perf_counter() - t0)
        r_obj = {k: _reduce(v, k, size, starts, np.maximum) for k, v in scored.items()}
        assembled = model.assemble(r_obj, r_rows)
        start = assembled[-1]
        res = run_milp(assembled, left, mip_rel_gap)
        rounds += 1
        dual = getattr(res, "mip_dual_bound", None)
        if dual is not None and np.isfinite(dual):
            upper = min(upper, const + shift - float(dual))
        if res.x is None or res.status != 0:
            break
        picks = {node: int(np.argmax(res.x[start[node]:start[node] + len(s)])) for node, s in starts.items()}
        wide = [node for node, k in picks.items()
                if (starts[node][k + 1] if k + 1 < len(starts[node]) else size[node]) - starts[node][k] > 1]
        if not wide:
            cand = {node[1]: problem.options[node[1]][int(starts[node][k])] for node, k in picks.items()}
            if full.fraction(cand) > best_v and problem.feasible(cand):
                best, best_v = cand, full.fraction(cand)
        done = upper <= 0 or (upper - best_v) / upper <= mip_rel_gap or rounds == max_rounds
        if not wide and not done and shift:
            scored, shift = obj, 0.0  # the prices' own gap (slack priced at lam) remains: drop them
            continue
        if done or not wide:
            break
        for node in wide:
            starts[node] = _split(starts[node], size[node], picks[node])
    model.size = size
    return bound_of(best, best_v, upper, rounds)


def full_grid_bound(problem, choice: dict, upper: float, time_limit_s: float, mip_rel_gap: float, n_blocks: int):
    """Bound the full grid's optimum: the Lagrangian bound first (fast, and it
    may improve ``choice``), the interval relaxations if that leaves the gap
    open. ``upper``: a bound already proven (inf if none). Returns
    ``(choice, gap, note)``, ``gap`` None without any bound."""
    t0 = time.perf_counter()
    dual = lagrangian_bound(problem, choice, time_limit_s, mip_rel_gap)
    how = []
    if dual is not None:
        choice = dual.choice
        if dual.upper < upper:
            upper, how = dual.upper, ["a Lagrangian bound"]
    value = problem.objective.fraction(choice)
    if not (upper - value) <= mip_rel_gap * upper and n_blocks:
        cert = certify(problem, choice, time_limit_s - (time.perf_counter() - t0), mip_rel_gap, n_blocks)
        if cert is not None and np.isfinite(cert.upper):
            choice, value = cert.choice, problem.objective.fraction(cert.choice)
            if cert.upper < upper:
                upper = cert.upper
                how.append(f"{cert.rounds} interval relaxation(s)")
    if not np.isfinite(upper) or upper <= 0:
        return choice, None, ""
    gap = max(0.0, (upper - value) / upper)
    note = f"optimum <= {upper:.6f} ({' and '.join(how)}), gap {100 * gap:.3f} %" if how else ""
    return choice, gap, note
