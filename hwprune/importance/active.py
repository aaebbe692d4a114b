"""Importance of active weights (METHODS.md section 1) as tables over the width grid.

A weight ``W_l[j, i]`` of a conv or linear layer is *active* when output
channel j and input channel i of that layer both survive. Its importance
``I_l[j, i]`` is the L1 norm of the kernel slice ``W_l[j, i, :, :]`` divided by
the layer's Frobenius norm ``||W_l||_F`` (linear: ``|W[j, i]|``; depthwise conv:
the slice of channel j, active when j survives; a grouped conv: its weight
spread over a dense table, zero between channels of different groups). A plan's objective is
``sum_l sum_{kept j, kept i} I_l[j, i]``, reported as a fraction of the full
network's.

Inside a group every segment keeps its top-k channels by the group's channel
scores, so a layer's active importance depends only on the kept counts of the
groups its channels belong to; channels in no group (the image input, the
classifier's outputs) are always kept. Per layer the sum splits over
(output part, input part) where a part is "fixed" or one group: fixed x fixed
is a constant, fixed x group and group x the same group a vector over that
group's options, group A x group B a table over (A's option, B's option).
Summed over layers the objective is
``const + sum_g u_g[k_g] + sum_{A<B} T_AB[k_A, k_B]``: linear in one-hot
option variables and in the pairwise variables of the QCQP's linearisation.
A layer whose input concatenates several groups contributes one table per
(input group, output group) pair, so no table needs more than two groups.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hwprune.graph.grouped import dense_weight, followers, is_grouped
from hwprune.graph.space import PruningSpace, dep_role, root_handler


def group_items(space: PruningSpace):
    """Every member of every group at full width:
    ``(gid, module, module name, role, idxs, root_idxs)``; ``idxs`` are the
    module's channel indices, ``root_idxs`` the group's root index of each.
    A group that loses whole groups of a grouped conv also has the members of
    the conv's other side (their channels mapped onto the group's roots)."""
    name_of = {m: n for n, m in space.model.named_modules()}
    for g in space.groups:
        for root_name, size, to_root in [(g.root, g.size, None), *followers(space, g.gid)]:
            root = space.model.get_submodule(root_name)
            grp = space.dg.get_pruning_group(root, root_handler(root), idxs=list(range(size)))
            for item in grp.items:
                mod = item.dep.target.module
                roots = getattr(item, "root_idxs", None)
                if roots is None or len(roots) != len(item.idxs):
                    raise RuntimeError(f"torch_pruning gave no root indices for {name_of.get(mod)}")
                roots = [int(r) if to_root is None else to_root[int(r)] for r in roots]
                yield g.gid, mod, name_of.get(mod), dep_role(item.dep), [int(i) for i in item.idxs], roots


def channel_maps(space: PruningSpace) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(layer name, "in"/"out") -> (gid, root index) of each of its channels; -1 where fixed."""
    sizes = {}
    for layer in space.layers:
        sizes[(layer.name, "in")] = layer.spec.in_channels
        sizes[(layer.name, "out")] = layer.spec.out_channels
    maps = {key: (np.full(n, -1), np.full(n, -1)) for key, n in sizes.items()}
    for gid, _, name, role, idxs, roots in group_items(space):
        key = (name, role)
        if key not in maps:
            continue
        gids, rts = maps[key]
        gids[idxs] = gid
        rts[idxs] = roots
    return maps


def keep_masks(space: PruningSpace, options, order) -> dict[int, np.ndarray]:
    """Per group, (option, root index) -> 1.0 where the option keeps that channel."""
    out = {}
    for g in space.groups:
        rank = np.zeros(g.size, dtype=int)
        seg = np.zeros(g.size, dtype=int)
        for s, idx in enumerate(order[g.gid]):
            rank[list(idx)] = np.arange(len(idx))
            seg[list(idx)] = s
        ks = np.array(options[g.gid], dtype=int).reshape(len(options[g.gid]), -1)
        out[g.gid] = (rank[None, :] < ks[:, seg]).astype(float)
    return out


def weight_importance(module: nn.Module) -> np.ndarray | None:
    """``I[j, i]`` of a conv/linear weight (None for an all-zero weight)."""
    w = (dense_weight(module) if is_grouped(module) else module.weight.detach()).double()
    fro = float(torch.linalg.vector_norm(w))
    if fro == 0:
        return None
    a = w.abs().sum(dim=(2, 3)) if w.dim() == 4 else w.abs()
    return (a / fro).cpu().numpy()


def layer_importances(space: PruningSpace) -> dict[str, np.ndarray | None]:
    return {layer.name: weight_importance(space.model.get_submodule(layer.name)) for layer in space.layers}


class BlockTerms:
    """The objective's terms from the layers of one removable block."""

    def __init__(self):
        self.const = 0.0
        self.single: dict[int, np.ndarray] = {}
        self.pair: dict[tuple[int, int], np.ndarray] = {}


class ActiveImportance:
    """The objective as ``const + single + pair`` tables (see the module
    docstring), plus per removable block (:mod:`hwprune.graph.blocks`) in the
    options, the tables of its layers (:class:`BlockTerms` in ``blocks``),
    which count only while the block is kept (its option ``(1,)``)."""

    def __init__(self, space: PruningSpace, options: dict[int, list[tuple[int, ...]]], order, maps=None,
                 imps: dict | None = None):
        self.options = options
        self.index = {gid: {o: k for k, o in enumerate(opts)} for gid, opts in options.items()}
        keep = keep_masks(space, options, order)
        maps = maps if maps is not None else channel_maps(space)
        imps = imps if imps is not None else layer_importances(space)
        self.const, self.total = 0.0, 0.0
        self.single = {gid: np.zeros(len(opts)) for gid, opts in options.items()}
        self.pair: dict[tuple[int, int], np.ndarray] = {}
        # the layers of each removable block, whose terms count only while it is kept
        blocks = [b for b in space.blocks if b.key in options]
        self.blocks = {b.key: BlockTerms() for b in blocks}
        block_of = {i: b.key for b in blocks for i in b.layers}
        for i, layer in enumerate(space.layers):
            imp = imps[layer.name]
            if imp is None:
                continue
            self.total += float(imp.sum())
            into = self.blocks.get(block_of.get(i)) or self
            og, orr = maps[(layer.name, "out")]
            if layer.spec.depthwise:
                self._add(into, og, orr, imp[:, :1], np.array([-1]), np.array([-1]), keep)
            else:  # a grouped conv's table is dense, zero outside its groups
                ig, irr = maps[(layer.name, "in")]
                self._add(into, og, orr, imp, ig, irr, keep)
        self.full = self.total

    @staticmethod
    def _add(into, og, orr, imp, ig, irr, keep) -> None:
        for q in np.unique(og):
            rows = np.flatnonzero(og == q)
            m_out = np.ones((1, rows.size)) if q < 0 else keep[int(q)][:, orr[rows]]
            for p in np.unique(ig):
                cols = np.flatnonzero(ig == p)
                m_in = np.ones((1, cols.size)) if p < 0 else keep[int(p)][:, irr[cols]]
                t = m_out @ imp[np.ix_(rows, cols)] @ m_in.T  # (out options, in options)
                if q < 0 and p < 0:
                    into.const += float(t[0, 0])
                elif q < 0:
                    into.single[int(p)] = into.single.get(int(p), 0.0) + t[0]
                elif p < 0 or p == q:
                    into.single[int(q)] = into.single.get(int(q), 0.0) + (t[:, 0] if p < 0 else np.diag(t))
                else:
                    a, b = int(q), int(p)
                    if a < b:
                        into.pair[(a, b)] = into.pair.get((a, b), 0.0) + t
                    else:
                        into.pair[(b, a)] = into.pair.get((b, a), 0.0) + t.T

    def value(self, choice) -> float:
        """Active-weight importance kept by ``choice`` (absolute); a removed
        block's layers keep nothing."""
        idx = {gid: self.index[gid][choice[gid]] for gid in self.index}
        v = self.const + sum(float(u[idx[gid]]) for gid, u in self.single.items())
        v += sum(float(t[idx[a], idx[b]]) for (a, b), t in self.pair.items())
        for key, terms in self.blocks.items():
            if tuple(choice[key]) == (1,):  # kept
                v += terms.const + sum(float(u[idx[gid]]) for gid, u in terms.single.items())
                v += sum(float(t[idx[a], idx[b]]) for (a, b), t in terms.pair.items())
        return v

    def fraction(self, choice) -> float:
        return self.value(choice) / self.full if self.full > 0 else 1.0


def _extra_items(space: PruningSpace):
    """``(gid, module name, root index, parameters)`` removed with one channel
    outside conv/linear weights (BatchNorm's weight and bias, ...), each
    module's channel counted once: a parameter counts when the pruning removes
    rows of its first dimension."""
    seen = set()
    for gid, mod, name, _, idxs, roots in group_items(space):
        if isinstance(mod, (nn.Conv2d, nn.Linear)) or not isinstance(mod, nn.Module):
            continue
        params = [p for p in mod.parameters(recurse=False) if p.dim() >= 1 and p.shape[0] > 1]
        for i, r in zip(idxs, roots):
            if (id(mod), i) in seen:
                continue
            seen.add((id(mod), i))
            yield gid, name, r, sum(p.numel() // p.shape[0] for p in params if p.shape[0] > i)


def extra_params_per_channel(space: PruningSpace) -> dict[int, np.ndarray]:
    """Per group, parameters removed with each root index outside conv/linear
    weights (BatchNorm's weight and bias, ...): a parameter counts when the
    pruning removes rows of its first dimension."""
    out = {g.gid: np.zeros(g.size) for g in space.groups}
    for gid, _, r, n in _extra_items(space):
        out[gid][r] += n
    return out


def block_params(space: PruningSpace) -> dict[int, tuple[float, dict[int, np.ndarray]]]:
    """Per removable block (``space.blocks``): the parameters inside it that
    no width changes, and per group the parameters of its modules other than
    conv/linear weights removed with each root index (those of
    :func:`extra_params_per_channel` that lie inside the block)."""
    sizes = {g.gid: g.size for g in space.groups}
    per: dict[int, dict[int, np.ndarray]] = {b.key: {} for b in space.blocks}
    for gid, name, r, n in _extra_items(space):
        key = next((b.key for b in space.blocks if name and name.startswith(b.path + ".")), None)
        if key is not None:
            per[key].setdefault(gid, np.zeros(sizes[gid]))[r] += n
    out = {}
    for b in space.blocks:
        total = sum(p.numel() for p in space.model.get_submodule(b.path).parameters())
        layers = sum(p.numel() for i in b.layers
                     for p in space.model.get_submodule(space.layers[i].name).parameters(recurse=False))
        out[b.key] = (float(total - layers - sum(a.sum() for a in per[b.key].values())), per[b.key])
    return out
