"""Magnitude criteria ``l1`` and ``l2`` (see :mod:`hwprune.importance.criteria`)."""
from __future__ import annotations

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from hwprune.graph.space import PruningSpace, root_handler
from hwprune.importance.active import group_items
from hwprune.importance.scores import per_group_mean


def _magnitude_raw(space: PruningSpace, p: int) -> dict[int, np.ndarray]:
    imp = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=None)
    scores = {}
    with torch.no_grad():
        for g in space.groups:
            root = space.model.get_submodule(g.root)
            group = space.dg.get_pruning_group(root, root_handler(root), idxs=list(range(g.size)))
            scores[g.gid] = np.nan_to_num(imp(group).detach().cpu().double().numpy(), nan=0.0)
    return scores


def magnitude_scores(space: PruningSpace, p: int = 1) -> dict[int, np.ndarray]:
    """Torch-Pruning's group magnitude (mean over the group's members), mean 1
    per group: the fill-in for groups another criterion cannot score."""
    return per_group_mean(_magnitude_raw(space, p))


def _slice_norms(mod: nn.Module, role: str, idxs: list[int], p: int) -> np.ndarray | None:
    """Lp norm of the weights a conv/linear layer holds for each of ``idxs``
    (its output filters, or the input slices that read those channels); None
    for other modules and for a depthwise conv's input side (its filters are
    its output side)."""
    if not isinstance(mod, (nn.Conv2d, nn.Linear)):
        return None
    w = mod.weight.detach().double()
    idx = torch.as_tensor(idxs, dtype=torch.long)
    if role == "out":
        sl = w[idx].flatten(1)
    else:
        groups = getattr(mod, "groups", 1)
        per_in = w.shape[1]
        if groups > 1 and per_in == 1:
            return None
        if groups > 1:  # grouped conv: channel c feeds the filters of its group, at c % per_in
            per_out = w.shape[0] // groups
            sl = torch.stack([w[(c // per_in) * per_out:(c // per_in + 1) * per_out, c % per_in].flatten()
                              for c in idxs])
        else:
            sl = w[:, idx].transpose(0, 1).flatten(1)
    return sl.abs().pow(p).sum(1).pow(1.0 / p).numpy()


def member_magnitude_scores(space: PruningSpace, p: int = 1) -> dict[int, np.ndarray]:
    """``l1``/``l2``: per conv/linear member of a group, the Lp norm of each
    channel's weight slice divided by that member's mean; summed over the
    members. Within a layer the largest slices rank first; across groups a
    channel counts once per layer it feeds or is produced by, so a residual
    stream read by seven convs weighs seven, as much as the weights it takes
    with it (a per-group mean would make it weigh one, and a latency-greedy
    selector would strip it first: it touches the most layers)."""
    out = {g.gid: np.zeros(g.size) for g in space.groups}
    for gid, mod, _, role, idxs, roots in group_items(space):
        norms = _slice_norms(mod, role, idxs, p)  # from detached weights: no autograd
        if norms is None or not norms.size:
            continue
        mean = float(norms.mean())
        if mean > 0:
            np.add.at(out[gid], np.asarray(roots, dtype=int), norms / mean)
    fallback = None
    for g in space.groups:
        if not out[g.gid].any():
            fallback = fallback or magnitude_scores(space, p)
            out[g.gid] = fallback[g.gid]
    return out
