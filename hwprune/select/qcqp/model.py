"""The QCQP as a linear model: one-hot width per group (x) and the marginal linearisation of each
adjacent pair of widths (y), assembled for HiGHS (:func:`run_milp`).

A removable residual block (:mod:`hwprune.graph.blocks`) is a node with two
options, removed and kept; every term of its layers (latency, FLOPs,
parameters, memory rows, active-weight importance) is multiplied by its
"kept" indicator: a constant becomes a vector over the block, a vector over
one node a table over (node, block), a table over a pair of nodes a table
over (pair, block), linearised by a variable per entry with the marginal
constraints ``sum_b w[k, l, b] = y[k, l]`` and ``sum_kl w[k, l, b] = x_block[b]``,
which with one-hot x force ``w = y x_block`` (exact, like the pairs)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix


class MilpModel:
    """Accumulates linear terms over x (per node) and y (per node pair)."""

    def __init__(self, problem):
        self.p, self.space, self.opts = problem, problem.space, problem.options
        self.size: dict[tuple, int] = {("g", gid): len(o) for gid, o in self.opts.items()}
        self.pairs: list[tuple] = []
        self.triples: list[tuple] = []  # (node, node, block node): a pair's table gated by a block
        self.gate_of = {i: b.key for b in self.space.blocks if b.key in self.opts for i in b.layers}
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
        if len(nodes) == 3:
            if nodes[:2] not in self.pairs:
                self.pairs.append(nodes[:2])
            if nodes not in self.triples:
                self.triples.append(nodes)
        elif nodes not in self.pairs:
            self.pairs.append(nodes)
        acc[nodes] = acc.get(nodes, 0.0) + table
        return 0.0

    def add_gated(self, acc: dict, nodes: tuple, table, key: int | None, on: tuple = (1,)) -> float:
        """:meth:`add` of ``table`` over ``nodes`` times block ``key``'s kept
        indicator (its removed one for ``on=(0,)``; plain :meth:`add` for
        ``key`` None); returns the constant part."""
        if key is None:
            return self.add(acc, nodes, table)
        gate = np.array([float(tuple(o) == on) for o in self.opts[key]])
        table = np.asarray(table, dtype=float)
        self.add(acc, (*nodes, ("g", key)), table[..., None] * gate)
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
                const = self.add_gated(acc, nodes, t / r.limit, self.gate_of.get(i))
                rows.append((acc, -np.inf, 1.0 - const))
            return rows
        acc, const = {}, r.const
        for i in layers:
            nodes, n_in, n_out = self.grid(i)
            const += self.add_gated(acc, nodes, r.layer_grid(i, n_in, n_out), self.gate_of.get(i))
        inside = {g: b.key for b in self.space.blocks if b.key in self.opts for g in b.groups}
        for gid, opts in self.opts.items():
            if gid < 0:
                continue
            costs = np.array([r.group_cost(gid, o) for o in opts])
            if costs.any():
                self.add_gated(acc, (("g", gid),), costs, inside.get(gid))
        for b in self.space.blocks:  # what removing a block saves besides its layers and inner groups
            if b.key not in self.opts:
                continue
            saved, per = r.removed_saving(b.key)
            if saved:
                self.add_gated(acc, (), -saved, b.key, on=(0,))
            for gid, f in per.items():
                if gid not in b.groups:
                    self.add_gated(acc, (("g", gid),), -np.array([f(o) for o in self.opts[gid]]), b.key, on=(0,))
        return [({k: v / r.limit for k, v in acc.items()}, -np.inf, (r.limit - const) / r.limit)]

    def objective_terms(self) -> dict:
        obj = self.p.objective
        acc: dict = {}
        for gid, u in obj.single.items():
            self.add(acc, (("g", gid),), u / obj.full)
        for (a, b), t in obj.pair.items():
            self.add(acc, (("g", a), ("g", b)), t / obj.full)
        for key, terms in obj.blocks.items():
            self.add_gated(acc, (), terms.const / obj.full, key)
            for gid, u in terms.single.items():
                self.add_gated(acc, (("g", gid),), u / obj.full, key)
            for (a, b), t in terms.pair.items():
                self.add_gated(acc, (("g", a), ("g", b)), t / obj.full, key)
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
        for triple in self.triples:
            start[triple] = n
            n += self.size[triple[0]] * self.size[triple[1]] * self.size[triple[2]]
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
        for u, v, b in self.triples:  # marginals of a pair gated by a block
            mu, mv, mb = self.size[u], self.size[v], self.size[b]
            base, pair = start[(u, v, b)], start[(u, v)]
            for kl in range(mu * mv):
                r_idx.append(np.full(mb + 1, len(lb)))
                c_idx.append(np.concatenate([base + kl * mb + np.arange(mb), [pair + kl]]))
                vals.append(np.concatenate([np.ones(mb), [-1.0]]))
                lb.append(0.0)
                ub.append(0.0)
            for m in range(mb):
                r_idx.append(np.full(mu * mv + 1, len(lb)))
                c_idx.append(np.concatenate([base + np.arange(mu * mv) * mb + m, [start[b] + m]]))
                vals.append(np.concatenate([np.ones(mu * mv), [-1.0]]))
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
def quiet_c_stdout():
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


def run_milp(assembled, time_limit_s: float, mip_rel_gap: float):
    """HiGHS on an assembled model (:meth:`MilpModel.assemble`), quietly."""
    c, A, lb, ub, integrality, upper, _ = assembled
    with quiet_c_stdout():
        return milp(c, integrality=integrality, bounds=Bounds(0.0, upper), constraints=LinearConstraint(A, lb, ub),
                    options={"time_limit": max(0.1, float(time_limit_s)), "mip_rel_gap": float(mip_rel_gap),
                             "disp": False})
