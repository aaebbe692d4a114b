"""Channel importance: model + space -> per-group score arrays (one per index).

``l1``: Torch-Pruning's group magnitude importance with p=1 (L1 norm of every
coupled weight slice of a channel: the producing filters, BN and the consumers'
input slices), averaged over the group's members, divided by the group's mean
so scores of different groups compare (a channel of average importance = 1).
"""
from __future__ import annotations

import numpy as np
import torch
import torch_pruning as tp

from .graph import PruningSpace

IMPORTANCES = ("l1", "l2")


def root_handler(module):
    if isinstance(module, torch.nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_conv_out_channels


def magnitude_scores(space: PruningSpace, p: int = 1) -> dict[int, np.ndarray]:
    imp = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=None)
    scores = {}
    with torch.no_grad():
        for g in space.groups:
            root = space.model.get_submodule(g.root)
            group = space.dg.get_pruning_group(root, root_handler(root), idxs=list(range(g.size)))
            s = imp(group).detach().cpu().double().numpy()
            s = np.nan_to_num(s, nan=0.0)
            mean = s.mean()
            scores[g.gid] = s / mean if mean > 0 else np.ones_like(s)
    return scores


def compute(name: str, space: PruningSpace) -> dict[int, np.ndarray]:
    if name == "l1":
        return magnitude_scores(space, 1)
    if name == "l2":
        return magnitude_scores(space, 2)
    raise KeyError(name)
