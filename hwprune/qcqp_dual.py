"""A Lagrangian bound for qcqp: the budget rows priced, everything else solved exactly.

For multipliers ``lam_r >= 0`` on the summed resource rows ``a_r(x) <= b_r``,

    L(lam) = sum_r lam_r b_r + max_x [ f(x) - sum_r lam_r a_r(x) ]

bounds the optimum of ``max f(x)`` subject to the rows from above (weak
duality). The inner maximum has no budget left: it is a sum of per-group
vectors and per-pair tables over the full grid, which max-sum variable
elimination solves exactly when the groups' interaction graph is thin (a
ResNet's residual streams with their blocks hanging off them: each
elimination makes a table over at most three groups). Resource rows over a
single table (the per-layer memory cap) are not priced: their infeasible
entries are removed from the inner problem instead.

Unlike a linear relaxation of the pair tables, this bound is exact in the
pair structure; what it gives away is only the duality gap of the priced
rows, which is small when many groups trade importance for the same budget.
Every inner maximiser is a full-grid plan: those that meet every constraint
are candidate answers, so the bound also improves the plan in hand.

With one priced row the bound is minimised by bisection on the multiplier
(the row's slack is a subgradient); with several, by projected subgradient
steps. Any multipliers give a valid bound; the search only tightens it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

MAX_TABLE_ENTRIES = 8_000_000


@dataclass(frozen=True)
class Bound:
    """``upper``: proven upper bound on the full grid's objective (fraction of
    the full network's); ``choice``: the best plan in hand (the one given or
    a better one found on the way); ``gap``: ``(upper - value(choice)) /
    upper``; ``rounds``: problems solved (inner maximisations here, interval
    relaxations in :mod:`hwprune.qcqp_bound`)."""
    choice: dict
    upper: float
    gap: float
    rounds: int


def node_keys(key) -> tuple:
    """The nodes of a table key: a node, or a tuple of nodes."""
    return key if isinstance(key[0], tuple) else (key,)


def max_sum(tables: dict, size: dict, max_entries: int = MAX_TABLE_ENTRIES):
    """``max_x sum_k tables[k][x over k's nodes]`` by variable elimination
    (min-size order), and a maximiser ``{node: option index}``; None when an
    intermediate table would exceed ``max_entries``."""
    factors = [(node_keys(k), np.asarray(t, dtype=float)) for k, t in tables.items()]
    todo, trail, const = set(size), [], 0.0
    while todo:
        def cost(v):
            scope = {n for s, _ in factors if v in s for n in s} - {v}
            return int(np.prod([size[n] for n in scope], dtype=float)) * size[v]
        v = min(sorted(todo), key=cost)
        if cost(v) > max_entries:
            return None
        todo.discard(v)
        mine = [f for f in factors if v in f[0]]
        factors = [f for f in factors if v not in f[0]]
        scope = tuple(dict.fromkeys(n for s, _ in mine for n in s))
        total = np.zeros(tuple(size[n] for n in scope))
        for s, t in mine:
            order = sorted(range(len(s)), key=lambda a: scope.index(s[a]))
            shape = [1] * len(scope)
            for a in order:
                shape[scope.index(s[a])] = size[s[a]]
            total = total + np.transpose(t, order).reshape(shape)
        axis = scope.index(v) if scope else None
        if axis is None:
            trail.append((v, (), np.zeros((), dtype=np.int64)))
            continue
        rest = scope[:axis] + scope[axis + 1:]
        trail.append((v, rest, np.argmax(total, axis=axis)))
        reduced = np.max(total, axis=axis)
        if rest:
            factors.append((rest, reduced))
        else:
            const += float(reduced)
    const += sum(float(t) for s, t in factors if not s)
    pick: dict = {}
    for v, rest, arg in reversed(trail):
        pick[v] = int(arg[tuple(pick[n] for n in rest)])
    return const, pick


class _Inner:
    """The inner problem ``f - sum_r lam_r a_r`` over full tables, with the
    single-table rows applied as masks."""

    def __init__(self, obj: dict, rows: list, size: dict):
        full = lambda k, v: np.broadcast_to(np.asarray(v, dtype=float), tuple(size[n] for n in node_keys(k)))
        self.size = size
        self.base = {k: full(k, v).copy() for k, v in obj.items()}
        self.priced: list[tuple[dict, float]] = []
        for terms, lo, hi in rows:
            if np.isfinite(lo):
                raise ValueError("only upper-bounded rows")
            if not terms:
                continue
            if len(terms) == 1:
                (k, v), = terms.items()
                bad = full(k, v) > hi + 1e-12
                self.base[k] = np.where(bad, -np.inf, self.base.get(k, np.zeros(bad.shape)))
            else:
                self.priced.append(({k: full(k, v) for k, v in terms.items()}, float(hi)))

    def solve(self, lam: np.ndarray):
        """(L(lam) without the objective's constant, maximiser, row slacks)."""
        tables = dict(self.base)
        for (terms, hi), lam_r in zip(self.priced, lam):
            if lam_r > 0:
                for k, v in terms.items():
                    tables[k] = tables[k] - lam_r * v if k in tables else -lam_r * v
        out = max_sum(tables, self.size)
        if out is None:
            return None
        value, pick = out
        slack = np.array([hi - sum(float(v[tuple(pick[n] for n in node_keys(k))]) for k, v in terms.items())
                          for terms, hi in self.priced])
        return value + float(lam @ np.array([hi for _, hi in self.priced])), pick, slack


def tables_of(problem):
    """``(model, objective tables, resource rows, objective constant)`` of
    ``problem`` as fractions of the full network's importance (rows divided by
    their limits); None when a layer's width sums several groups (links)."""
    from .qcqp import _Model
    model = _Model(problem)
    obj = model.objective_terms()
    rows = [row for r in problem.resources for row in model.resource_rows(r)]
    if model.links:
        return None
    full = problem.objective
    return model, obj, rows, (full.const / full.full if full.full > 0 else 0.0)


def lagrangian_bound(problem, choice: dict, time_limit_s: float, mip_rel_gap: float = 1e-3,
                     max_evaluations: int = 60) -> Bound | None:
    """Bound the full grid's optimum of ``problem`` by minimising ``L`` (see
    the module docstring) and improve ``choice`` with the feasible inner
    maximisers met on the way. None when the inner problem is not solvable
    exactly (a concat of groups, or an interaction graph too dense)."""
    t0 = time.perf_counter()
    parts = tables_of(problem)
    if parts is None:
        return None
    model, obj, rows, const = parts
    inner = _Inner(obj, rows, dict(model.size))
    objective = problem.objective
    best, best_v = dict(choice), objective.fraction(choice)
    upper, evals = float("inf"), 0

    def evaluate(lam):
        nonlocal best, best_v, upper, evals
        out = inner.solve(lam)
        evals += 1
        if out is None:
            return None
        value, pick, slack = out
        upper = min(upper, const + value)
        plan = {node[1]: problem.options[node[1]][k] for node, k in pick.items()}
        if (slack >= -1e-12).all() and objective.fraction(plan) > best_v and problem.feasible(plan):
            best, best_v = plan, objective.fraction(plan)
        return const + value, slack

    def done():
        return (upper - best_v) <= mip_rel_gap * upper or evals >= max_evaluations or \
            time.perf_counter() - t0 > time_limit_s

    n = len(inner.priced)
    lam = np.zeros(n)
    first = evaluate(lam)
    if first is None:
        return None
    if n == 1 and first[1][0] < 0:
        lo, hi = 0.0, 1.0
        while not done():  # a multiplier at which the row is met
            out = evaluate(np.array([hi]))
            if out is None or out[1][0] >= 0:
                break
            lo, hi = hi, 2 * hi
        while not done() and hi - lo > 1e-9 * max(1.0, hi):
            mid = 0.5 * (lo + hi)
            out = evaluate(np.array([mid]))
            if out is None:
                break
            lo, hi = (mid, hi) if out[1][0] < 0 else (lo, mid)
    elif n > 1:
        value, slack = first
        while not done():
            step = max(value - best_v, 1e-6) / max(float(slack @ slack), 1e-12)
            lam = np.maximum(0.0, lam - step * slack)
            out = evaluate(lam)
            if out is None:
                break
            value, slack = out
    gap = max(0.0, (upper - best_v) / upper) if np.isfinite(upper) and upper > 0 else float("inf")
    return Bound(best, float(upper), float(gap), evals)
