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

import contextlib
import ctypes
import os
import sys
import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from hwprune.select.core import Selection, greedy_limits
from hwprune.select.qcqp.interval import full_grid_bound


class _Model:
    """Accumulates linear terms over x (per node) and y (per node pair)."""

    def __init__(self, problem):
        self.p, self.space, self.opts = problem, problem.space, problem.options
        self.size: dict[tuple, int] = {("g", gid): len(o) for gid, o in self.opts.items()}
        self.pairs: list[tuple] = []
        self.links: list[tuple[tuple, np.ndarray, list, int]] = []  # aggregate node, widths, terms, fixed
        self._grids: dict[int, tuple] = {}

    # ---- nodes and grids ---------------------------------------------------
    def _contrib(self, terms, gid) -> np.ndarray:
        opts = self.opts[gid]
        return np.array([sum(t.mult * o[t.seg] for t in terms if t.gid == gid) for o in opts], dtype=np.int64)

    def _side(self, terms, fixed: int):
        gids = list(dict.fromkeys(t.gid for t in terms))
        if not gids:
            return None, np.int64(fixed)
        if len(gids) == 1:
            return ("g", gids[0]), fixed + self._contrib(terms, gids[0])
        key = ("z", (fixed,) + tuple(sorted((t.gid, t.seg, t.mult) for t in terms)))
        if key not in self.size:
            sums = {fixed}
            for gid in gids:
                sums = {s + int(c) for s in sums for c in set(self._contrib(terms, gid).tolist())}
            widths = np.array(sorted(sums), dtype=np.int64)
            self.size[key] = len(widths)
            self.links.append((key, widths, [(gid, self._contrib(terms, gid)) for gid in gids], fixed))
        return key, next(w for k, w, _, _ in self.links if k == key)

    def grid(self, i: int):
        """(nodes, n_in, n_out) of layer i: widths as arrays over the nodes' states."""
        if i in self._grids:
            return self._grids[i]
        layer = self.space.layers[i]
        in_g = {t.gid for t in layer.in_terms}
        dep = sorted(in_g | {t.gid for t in layer.out_terms})
        if len(dep) <= 2:
            nodes = tuple(("g", g) for g in dep)
            n_in, n_out = np.int64(layer.fixed_in), np.int64(layer.fixed_out)
            for axis, gid in enumerate(dep):
                shape = [1] * len(dep)
                shape[axis] = -1
                n_in = n_in + self._contrib(layer.in_terms, gid).reshape(shape)
                n_out = n_out + self._contrib(layer.out_terms, gid).reshape(shape)
        else:
            u, w_in = self._side(layer.in_terms, layer.fixed_in)
            v, w_out = self._side(layer.out_terms, layer.fixed_out)
            if u == v or u is None or v is None:
                nodes, n_in, n_out = (u or v,), w_in, w_out
            elif u < v:
                nodes, n_in, n_out = (u, v), w_in[:, None], w_out[None, :]
            else:
                nodes, n_in, n_out = (v, u), w_in[None, :], w_out[:, None]
        self._grids[i] = (nodes, *np.broadcast_arrays(n_in, n_out))
        return self._grids[i]

    # ---- terms ---------------------------------------------------------------
    def add(self, acc: dict, nodes: tuple, table: np.ndarray) -> float:
        """Add ``table`` over ``nodes`` to ``acc``; returns its constant part."""
        if not nodes:
            return float(table)
        if len(nodes) == 1:
            acc[nodes[0]] = acc.get(nodes[0], 0.0) + table
            return 0.0
        if nodes not in self.pairs:
            self.pairs.append(nodes)
        acc[nodes] = acc.get(nodes, 0.0) + table
        return 0.0

    def resource_rows(self, r) -> list[tuple[dict, float, float]]:
        """Rows ``(terms, lb, ub)`` bounding resource ``r``, divided by its limit."""
        layers = range(len(self.space.layers))
        if r.per_layer:
            rows = []
            for i in layers:
                nodes, n_in, n_out = self.grid(i)
                t = r.layer_grid(i, n_in, n_out)
                if t.max() <= r.limit:
                    continue
                acc: dict = {}
                const = self.add(acc, nodes, t / r.limit)
                rows.append((acc, -np.inf, 1.0 - const))
            return rows
        acc, const = {}, r.const
        for i in layers:
            nodes, n_in, n_out = self.grid(i)
            const += self.add(acc, nodes, r.layer_grid(i, n_in, n_out))
        for gid, opts in self.opts.items():
            costs = np.array([r.group_cost(gid, o) for o in opts])
            if costs.any():
                self.add(acc, (("g", gid),), costs)
        return [({k: v / r.limit for k, v in acc.items()}, -np.inf, (r.limit - const) / r.limit)]

    def objective_terms(self) -> dict:
        obj = self.p.objective
        acc: dict = {}
        for gid, u in obj.single.items():
            self.add(acc, (("g", gid),), u / obj.full)
        for (a, b), t in obj.pair.items():
            self.add(acc, (("g", a), ("g", b)), t / obj.full)
        return acc

    # ---- assembly --------------------------------------------------------------
    def assemble(self, obj: dict, rows: list):
        start, n = {}, 0
        for node, m in self.size.items():
            start[node] = n
            n += m
        ordinal = [node for node, m in self.size.items() if m > 2]
        for node in ordinal:  # the option index, an integer to branch on (see solve)
            start[("i", node)] = n
            n += 1
        n_int = n
        for pair in self.pairs:
            start[pair] = n
            n += self.size[pair[0]] * self.size[pair[1]]
        r_idx, c_idx, vals, lb, ub = [], [], [], [], []

        def put(terms: dict, lo: float, hi: float):
            row = len(lb)
            for key, arr in terms.items():
                arr = np.asarray(arr, dtype=float).ravel()
                nz = np.flatnonzero(arr)
                r_idx.append(np.full(nz.size, row))
                c_idx.append(start[key] + nz)
                vals.append(arr[nz])
            lb.append(lo)
            ub.append(hi)

        for node, m in self.size.items():  # one-hot
            put({node: np.ones(m)}, 1.0, 1.0)
        for node in ordinal:
            put({node: np.arange(self.size[node], dtype=float), ("i", node): np.array([-1.0])}, 0.0, 0.0)
        for key, widths, parts, fixed in self.links:
            put({key: widths.astype(float), **{("g", g): -c.astype(float) for g, c in parts}}, fixed, fixed)
        for u, v in self.pairs:  # marginals
            mu, mv = self.size[u], self.size[v]
            base = start[(u, v)]
            for k in range(mu):
                r_idx.append(np.full(mv + 1, len(lb)))
                c_idx.append(np.concatenate([base + k * mv + np.arange(mv), [start[u] + k]]))
                vals.append(np.concatenate([np.ones(mv), [-1.0]]))
                lb.append(0.0)
                ub.append(0.0)
            for k in range(mv):
                r_idx.append(np.full(mu + 1, len(lb)))
                c_idx.append(np.concatenate([base + np.arange(mu) * mv + k, [start[v] + k]]))
                vals.append(np.concatenate([np.ones(mu), [-1.0]]))
                lb.append(0.0)
                ub.append(0.0)
        for terms, lo, hi in rows:
            put(terms, lo, hi)
        c = np.zeros(n)
        for key, arr in obj.items():
            arr = np.asarray(arr, dtype=float).ravel()
            c[start[key]:start[key] + arr.size] -= arr
        A = coo_matrix((np.concatenate(vals), (np.concatenate(r_idx), np.concatenate(c_idx))),
                       shape=(len(lb), n)).tocsr()
        integrality = np.zeros(n)
        integrality[:n_int] = 1
        upper = np.ones(n)
        for node in ordinal:
            upper[start[("i", node)]] = self.size[node] - 1
        return c, A, np.array(lb), np.array(ub), integrality, upper, start


@contextlib.contextmanager
def _quiet_c_stdout():
    """HiGHS prints some diagnostics with C stdio even when ``disp`` is off;
    keep them off this process's stdout (which may carry ``--json`` output)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    saved, null = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    try:
        yield
    finally:
        try:
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass
        os.dup2(saved, fd)
        os.close(saved)
        os.close(null)


def _thin(opts: list, n: int) -> list:
    """At most ``n`` options, evenly spread, the smallest and the largest kept."""
    if len(opts) <= n:
        return list(opts)
    return [opts[i] for i in sorted({int(round(v)) for v in np.linspace(0, len(opts) - 1, n)})]


def run_milp(assembled, time_limit_s: float, mip_rel_gap: float):
    """HiGHS on an assembled model (:meth:`_Model.assemble`), quietly."""
    c, A, lb, ub, integrality, upper, _ = assembled
    with _quiet_c_stdout():
        return milp(c, integrality=integrality, bounds=Bounds(0.0, upper), constraints=LinearConstraint(A, lb, ub),
                    options={"time_limit": max(0.1, float(time_limit_s)), "mip_rel_gap": float(mip_rel_gap),
                             "disp": False})


def _solve_once(problem, time_limit_s: float, mip_rel_gap: float):
    """(choice or None, status, relative MIP gap, proven upper bound on the
    objective as a fraction of the full network's)."""
    model = _Model(problem)
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
        thin = _thin(win, n)
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
    grid = {gid: _thin(o, max_options) for gid, o in full.items()}
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
