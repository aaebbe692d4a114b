"""Channel importance: one interface for every criterion.

``compute(name, space, data=None)`` turns a model (``space.model``) and its
channel groups (``space.groups``) into per-channel scores: a
:class:`ChannelScores` mapping each group id to an array over the group's
root indices. The criteria are registered in :data:`CRITERIA` (a
:class:`profilers.registry.Registry`); those that need data (their metadata
``needs_data``) take ``data``, an iterable of ``(inputs, labels)`` batches (a
DataLoader); at most ``max_batches`` of them are read. Every selector reads
the same scores: greedy and knapsack keep the top-k channels of each segment
and add up their scores; qcqp keeps the same top-k and maximises the
importance of *active* weights, whose per-layer tables :func:`weight_tables`
derives from the scores.

Criteria (how each formula was made concrete):

``l1``, ``l2``
    Magnitude with p=1 / p=2 over every conv/linear layer coupled to a
    channel (its producing filters and the consumers' input slices): each
    layer's slice norms divided by that layer's mean, then summed over the
    layers. A channel of average magnitude scores the number of layers it
    touches, so pruning it is priced in the weights it removes.
``bn-scale``
    Network slimming (Liu et al. 2017): ``|gamma|`` of the BatchNorm layers in
    the group, averaged over them; divided by the network's mean, so one
    global ranking compares layers as slimming's single threshold does. A
    group without BatchNorm falls back to its ``l1`` scores (scaled to mean 1).
``taylor``, ``ccp``
    Data-driven, through channel gates (:mod:`hwprune.importance.data`).
``dcp``
    Auxiliary classifiers and greedy reconstruction (:mod:`hwprune.importance.dcp`).
``cpmc``
    Multi-criteria with weight dependency (Yan et al. 2020), made concrete as
    follows. For channel k of a group: the weight criterion ``w_k`` is the sum
    over every conv/linear member of the group of ``||slice_k||_1 / ||W||_F``,
    the producing filters (output slice) *and* the consumers' input slices
    (the weight dependency: removing the feature map removes both); the
    computation criterion ``c_k`` is the FLOPs and the parameter criterion
    ``p_k`` the conv/linear weights the network loses when that one channel is
    removed (computed from the layer shapes, so it includes the next layers'
    inputs). Each criterion is divided by its mean over every channel of the
    network (global normalisation), and they are combined as
    ``s_k = w_k * (c_k * p_k) ** (-1/4)``: a channel with small weights that
    costs much goes first, and cost weighs half as much as the weights. The
    scores are divided by their network-wide mean and ranked globally.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from hwprune.errors import UnknownNameError
from hwprune.graph.grouped import block_scores
from hwprune.graph.space import PruningSpace
from hwprune.importance.active import channel_maps, group_items, layer_importances
from hwprune.importance.data import ccp_scores, taylor_scores
from hwprune.importance.dcp import dcp_scores
from hwprune.importance.magnitude import magnitude_scores, member_magnitude_scores
from hwprune.importance.scores import ChannelScores, network_mean
from profilers.registry import Registry
from profilers.specs import weight_count

Batches = Iterable


CRITERIA = Registry("importance", sort=False, error=UnknownNameError)  # registration order: the CLI's
"""Every criterion: ``fn(space)`` or, with the metadata ``needs_data=True``,
``fn(space, batches)``, returning ``(gid -> scores, scale)``; ``help`` describes it."""


# ---- magnitude criteria -------------------------------------------------------


def _l1(space):
    return member_magnitude_scores(space, 1), "members"


def _l2(space):
    return member_magnitude_scores(space, 2), "members"


def _bn_scale(space):
    sums = {g.gid: np.zeros(g.size) for g in space.groups}
    counts = {g.gid: np.zeros(g.size) for g in space.groups}
    for gid, mod, _, _, idxs, roots in group_items(space):
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.weight is not None:
            gamma = mod.weight.detach().abs().double().cpu().numpy()
            np.add.at(sums[gid], roots, gamma[idxs])
            np.add.at(counts[gid], roots, 1.0)
    fallback = None
    raw = {}
    for g in space.groups:
        if counts[g.gid].min() > 0:
            raw[g.gid] = sums[g.gid] / counts[g.gid]
    normed = network_mean(raw)
    for g in space.groups:
        if g.gid not in normed:
            fallback = fallback or magnitude_scores(space, 1)
            normed[g.gid] = fallback[g.gid]
    return normed, "network"


# ---- CPMC ---------------------------------------------------------------------

def removal_costs(space: PruningSpace) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """FLOPs and conv/linear weights lost per channel, for every group (per segment)."""
    full = space.full_choice()

    def totals(choice):
        flops = weights = 0.0
        for s in space.specs(choice):
            flops += s.flops
            weights += weight_count(s)
        return flops, weights

    f0, w0 = totals(full)
    flops, params = {}, {}
    for g in space.groups:
        fl, pa = np.zeros(g.size), np.zeros(g.size)
        for si, idx in enumerate(g.seg_index):
            ks = list(full[g.gid])
            ks[si] -= 1
            f1, w1 = totals({**full, g.gid: tuple(ks)})
            fl[list(idx)], pa[list(idx)] = f0 - f1, w0 - w1
        flops[g.gid], params[g.gid] = fl, pa
    return flops, params


def _cpmc(space):
    weight = {g.gid: np.zeros(g.size) for g in space.groups}
    with torch.no_grad():
        for gid, mod, _, role, idxs, roots in group_items(space):
            if not isinstance(mod, (nn.Conv2d, nn.Linear)) or role is None:
                continue
            w = mod.weight.detach().double()
            fro = float(torch.linalg.vector_norm(w))
            if fro == 0:
                continue
            a = w.abs().reshape(w.shape[0], w.shape[1], -1).sum(dim=2)  # [out, in]
            if role == "out":
                per = a.sum(dim=1)[idxs]
            else:
                if w.shape[1] <= max(idxs):  # a depthwise conv: its input slice is its filter
                    continue
                per = a.sum(dim=0)[idxs]
            np.add.at(weight[gid], roots, per.cpu().numpy() / fro)
    flops, params = removal_costs(space)
    w_n, c_n, p_n = network_mean(weight), network_mean(flops), network_mean(params)
    tiny = 1e-12
    raw = {gid: w_n[gid] * np.maximum(c_n[gid] * p_n[gid], tiny) ** -0.25 for gid in w_n}
    return network_mean(raw), "network"


def _taylor(space, batches):
    return taylor_scores(space, batches)


def _ccp(space, batches):
    return ccp_scores(space, batches)


def _dcp(space, batches):
    return dcp_scores(space, batches)


CRITERIA.register("l1", _l1, needs_data=False,
                  help="L1 norm of every coupled weight slice (Torch-Pruning group magnitude)")
CRITERIA.register("l2", _l2, needs_data=False, help="L2 norm of every coupled weight slice")
CRITERIA.register("bn-scale", _bn_scale, needs_data=False,
                  help="|BatchNorm gamma| (network slimming), ranked network-wide")
CRITERIA.register("taylor", _taylor, needs_data=True,
                  help="first-order Taylor estimate of the loss change when a channel is removed "
                  "(Molchanov et al. 2019), needs data")
CRITERIA.register("cpmc", _cpmc, needs_data=False,
                  help="weights of the filter and of its consumers, FLOPs and parameters, normalised "
                  "network-wide (CPMC)")
CRITERIA.register("ccp", _ccp, needs_data=True,
                  help="second-order loss change of removing channels together, Hessian from gradients "
                  "(CCP), needs data")
CRITERIA.register("dcp", _dcp, needs_data=True,
                  help="auxiliary classifiers, reconstruction + cross-entropy, greedy by gradient (DCP), "
                  "needs data")
DEFAULT_BATCHES = 8


def _take(data, max_batches: int) -> list:
    out = []
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            from hwprune.errors import UserError
            raise UserError("importance data must yield (inputs, labels) batches")
        out.append((batch[0], batch[1]))
        if len(out) >= max_batches:
            break
    return out


def compute(name: str, space: PruningSpace, data: Batches | None = None,
            max_batches: int = DEFAULT_BATCHES) -> ChannelScores:
    """Per-channel scores of criterion ``name`` (see the module docstring)."""
    fn = CRITERIA.get(name)
    if CRITERIA.metadata(name)["needs_data"]:
        if data is None:
            from hwprune.errors import UserError
            raise UserError(f"importance {name!r} needs data: pass --data digits, a .npz file with x and y, "
                            f"or module:function (Python: prune(..., data=train_loader))")
        batches = _take(data, int(max_batches))
        if not batches:
            from hwprune.errors import UserError
            raise UserError(f"importance {name!r} got no batches from its data")
        was_training = space.model.training
        space.model.eval()
        try:
            scores, scale = fn(space, batches)
        finally:
            space.model.train(was_training)
    else:
        scores, scale = fn(space)
    for g in space.groups:
        s = np.asarray(scores[g.gid], dtype=float)
        if s.shape != (g.size,) or not np.all(np.isfinite(s)):
            raise RuntimeError(f"importance {name} gave invalid scores for group {g.root}")
    scores = block_scores(space, scores)  # a conv group pruned whole scores the sum of its channels
    return ChannelScores({g.gid: np.asarray(scores[g.gid], dtype=float) for g in space.groups}, name, scale)


def weight_tables(space: PruningSpace, scores: dict) -> dict[str, np.ndarray | None]:
    """Per-layer active-weight importance ``I_l[j, i]`` for the qcqp objective.

    ``l1`` (and plain score dicts): the paper's table, the L1 norm of the kernel
    slice over the layer's Frobenius norm (:func:`hwprune.importance.active.weight_importance`).
    Any other criterion re-weights that table by the geometric mean of the
    criterion's scores of the two channels the weight connects,
    ``I_l[j, i] * sqrt(r_out[j] * r_in[i])`` (a channel in no group scores 1;
    a depthwise conv's weight connects channel j to itself: ``r_out[j]``), so
    the objective still counts only active weights but ranks them by the
    criterion."""
    base = layer_importances(space)
    if getattr(scores, "criterion", "l1") == "l1":
        return base
    maps = channel_maps(space)

    def side(key):
        gids, roots = maps[key]
        r = np.ones(len(gids))
        for i, (g, root) in enumerate(zip(gids, roots)):
            if g >= 0:
                r[i] = max(float(scores[int(g)][int(root)]), 0.0)
        return r

    out = {}
    for layer in space.layers:
        imp = base[layer.name]
        if imp is None or (layer.spec.groups > 1 and not layer.spec.depthwise):
            out[layer.name] = imp
            continue
        r_out = side((layer.name, "out"))
        if layer.spec.depthwise:
            out[layer.name] = imp * r_out[:, None]
        else:
            out[layer.name] = imp * np.sqrt(np.outer(r_out, side((layer.name, "in"))))
    return out
