"""A certificate for qcqp's coarse-to-fine search: an upper bound on the optimum of the full grid.

Partition every group's grid options into contiguous blocks. The relaxation
picks one block per group, with every objective table at its maximum over
the block (per pair of blocks for a pair table) and every resource table at
its minimum. Any plan of the full grid falls in one block per group that
scores at least as much as the plan and uses at most as much of every
resource, so the relaxation's optimum, and the dual bound HiGHS proves for
it, bound the full grid's optimum from above. The certified gap of a plan is
``(bound - plan) / bound``.

Refinement splits the blocks the relaxed answer picks, until the gap is
within the tolerance or the time is up. A relaxed answer that picks only
single options is a plan of the full grid with the same objective and
resource values, so it is feasible, and it replaces the plan in hand when it
scores more. No monotonicity of the tables is assumed: the block extremes
are taken over every option pair.

Not available when a layer's width is a sum over several groups (a concat of
groups feeding one layer): those widths are tied by an equality that blocks
do not preserve; :func:`certify` then returns None.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


@dataclass(frozen=True)
class Certificate:
    """``upper``: proven upper bound on the full grid's objective (fraction
    of the full network's); ``gap``: ``(upper - value(choice)) / upper``;
    ``rounds``: relaxations solved; ``blocks``: largest block count of a group
    in the last one."""
    choice: dict
    upper: float
    gap: float
    rounds: int
    blocks: int
    solve_s: float


def _nodes(key) -> tuple:
    return key if isinstance(key[0], tuple) else (key,)


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


def certify(problem, choice: dict, time_limit_s: float, mip_rel_gap: float = 1e-3,
            n_blocks: int = 12, max_rounds: int | None = None) -> Certificate | None:
    """Bound the full grid's optimum of ``problem`` and certify ``choice``
    (see the module docstring); the plan returned is ``choice`` or a better
    one the relaxation found. None without a bound (see above)."""
    from .qcqp import _Model, _quiet_c_stdout
    t0 = time.perf_counter()
    model = _Model(problem)
    obj = model.objective_terms()
    rows = [row for r in problem.resources for row in model.resource_rows(r)]
    if model.links:
        return None
    full = problem.objective
    const = full.const / full.full if full.full > 0 else 0.0
    size = dict(model.size)
    index = {("g", gid): {o: k for k, o in enumerate(opts)} for gid, opts in problem.options.items()}
    best, best_v = dict(choice), full.fraction(choice)
    starts = {node: _initial(m, index[node][choice[node[1]]], n_blocks) for node, m in size.items()}
    upper, rounds = float("inf"), 0
    while True:
        left = time_limit_s - (time.perf_counter() - t0)
        if left < 0.2:
            break
        model.size = {node: len(s) for node, s in starts.items()}
        r_obj = {k: _reduce(v, k, size, starts, np.maximum) for k, v in obj.items()}
        r_rows = [({k: _reduce(v, k, size, starts, np.minimum) for k, v in terms.items()}, lo, hi)
                  for terms, lo, hi in rows]
        c, A, lb, ub, integrality, up, start = model.assemble(r_obj, r_rows)
        with _quiet_c_stdout():
            res = milp(c, integrality=integrality, bounds=Bounds(0.0, up), constraints=LinearConstraint(A, lb, ub),
                       options={"time_limit": left, "mip_rel_gap": float(mip_rel_gap), "disp": False})
        rounds += 1
        dual = getattr(res, "mip_dual_bound", None)
        if dual is not None and np.isfinite(dual):
            upper = min(upper, const - float(dual))
        if res.x is None or res.status != 0:
            break
        picks = {node: int(np.argmax(res.x[start[node]:start[node] + len(s)])) for node, s in starts.items()}
        wide = [node for node, k in picks.items()
                if (starts[node][k + 1] if k + 1 < len(starts[node]) else size[node]) - starts[node][k] > 1]
        if not wide:
            cand = {node[1]: problem.options[node[1]][int(starts[node][k])] for node, k in picks.items()}
            if full.fraction(cand) > best_v and problem.feasible(cand):
                best, best_v = cand, full.fraction(cand)
        if upper <= 0 or (upper - best_v) / upper <= mip_rel_gap or not wide or rounds == max_rounds:
            break
        for node in wide:
            starts[node] = _split(starts[node], size[node], picks[node])
    model.size = size
    gap = max(0.0, (upper - best_v) / upper) if np.isfinite(upper) and upper > 0 else float("inf")
    return Certificate(best, float(upper), float(gap), rounds, max(len(s) for s in starts.values()),
                       time.perf_counter() - t0)
