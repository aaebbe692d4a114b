"""Data-driven importance through channel gates: ``taylor`` and ``ccp``.

A channel of a group is removed by zeroing it at every layer that reads it:
the *consumers* (conv/linear members of the group that take its channels as
inputs; a feature flattened into a Linear counts all its features). Put a
gate ``m_r`` (1 = kept) on channel r at each consumer's input; removing the
channel is ``m_r = 0``. One backward pass of the summed cross-entropy gives,
for every sample n, ``a[n, r] = dL_n / dm_r``: the sum over the consumers and
positions of ``input x dL/dinput``. The model runs in eval mode (BatchNorm
uses its running statistics), so samples do not interact and these are the
per-sample gradients. Parameters get no gradients; the model is unchanged.

``taylor`` (Molchanov et al., CVPR 2019, first order): per minibatch b the
first-order estimate of the loss change of removing channel r is
``-mean_{n in b} a[n, r]``; its square is averaged over the minibatches, as in
the paper (the gate form is the exact derivative of zeroing the feature map,
where the paper sums ``w * dL/dw`` over a channel's parameters). Scores are
divided by their network-wide mean so groups compare.

``ccp`` (Peng et al., ICML 2019): the loss change of removing a set R of
channels of one group, to second order in the gate vector,
``dL(R) = sum_{i in R} s_i + sum_{i != j in R} s_ij`` with ``s_i = -g_i +
F_ii / 2``, ``s_ij = F_ij / 2``, where ``g = mean_n a[n]`` is the gradient and
the Hessian is approximated by the empirical Fisher ``F = mean_n a[n] a[n]^T``
(outer products of per-sample gradients: no second backward pass). The paper
solves the 0-1 quadratic program for one fixed width by a continuous
relaxation; the selector here needs one nested order for every width it may
pick, so the program is solved by greedy backward elimination instead: remove
the channel whose marginal increase ``s_k + 2 sum_{j in R} s_kj`` is smallest,
repeat. This uses the pairwise coupling to order the channels inside the group
(a channel redundant with one already removed becomes costly to remove). A
channel's score is its marginal increase (running maximum along the
elimination, so that the order is exact), so the scores removed by a cut add
up to the predicted loss change; scores are divided by their network-wide
mean. A group no consumer reads (none in the zoo) falls back to ``l1``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hwprune.graph.space import PruningSpace, model_device
from hwprune.importance.active import group_items
from hwprune.importance.magnitude import magnitude_scores
from hwprune.importance.scores import network_mean, ordered_scores


def consumers(space: PruningSpace) -> dict[str, list[tuple[int, np.ndarray, np.ndarray]]]:
    """Layer name -> [(gid, its input indices, their root indices)] over the groups it reads."""
    out: dict[str, list] = {}
    for gid, mod, name, role, idxs, roots in group_items(space):
        if role != "in" or not isinstance(mod, (nn.Conv2d, nn.Linear)) or name is None:
            continue
        width = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features
        if max(idxs) >= width:
            continue
        out.setdefault(name, []).append((gid, np.asarray(idxs), np.asarray(roots)))
    return out


def gate_gradients(space: PruningSpace, batches):
    """Yield, per batch, ``{gid: a}`` with ``a`` float64 ``[batch, group size]``
    (see the module docstring), and the set of groups some consumer reads."""
    model = space.model
    cons = consumers(space)
    modules = {name: model.get_submodule(name) for name in cons}
    dev = model_device(model)
    gates: dict[str, torch.Tensor] = {}

    def pre_hook(name):
        def hook(mod, inputs):
            x = inputs[0]
            dim = 1 if isinstance(mod, nn.Conv2d) else x.dim() - 1
            shape = [x.shape[0]] + [1] * (x.dim() - 1)
            shape[dim] = x.shape[dim]
            gate = torch.ones(shape, dtype=x.dtype, device=x.device, requires_grad=True)
            gates[name] = gate
            return (x * gate,) + tuple(inputs[1:])
        return hook

    flags = [(p, p.requires_grad) for p in model.parameters()]
    hooks = [m.register_forward_pre_hook(pre_hook(n)) for n, m in modules.items()]
    covered = {gid for items in cons.values() for gid, _, _ in items}
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for x, y in batches:
            gates.clear()
            x, y = x.to(dev), y.to(dev)
            with torch.enable_grad():
                loss = F.cross_entropy(model(x), y.long(), reduction="sum")
                loss.backward()
            out = {g.gid: np.zeros((len(x), g.size)) for g in space.groups if g.gid in covered}
            for name, items in cons.items():
                gate = gates.get(name)
                if gate is None or gate.grad is None:
                    continue
                grad = gate.grad.detach().reshape(len(x), -1).double().cpu().numpy()
                for gid, idxs, roots in items:
                    np.add.at(out[gid], (slice(None), roots), grad[:, idxs])
            yield out
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


def _fill(space: PruningSpace, scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Network-normalised scores; groups without consumers get their l1 scores."""
    normed = network_mean(scores)
    missing = [g for g in space.groups if g.gid not in normed]
    if missing:
        l1 = magnitude_scores(space, 1)
        for g in missing:
            normed[g.gid] = l1[g.gid]
    return normed


def taylor_scores(space: PruningSpace, batches) -> tuple[dict[int, np.ndarray], str]:
    total: dict[int, np.ndarray] = {}
    count = 0
    for a in gate_gradients(space, batches):
        for gid, v in a.items():
            total[gid] = total.get(gid, 0.0) + v.mean(axis=0) ** 2
        count += 1
    return _fill(space, {gid: t / max(count, 1) for gid, t in total.items()}), "network"


def eliminate(s: np.ndarray, pair: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Greedy backward elimination of ``sum_{R} s_i + sum_{i != j in R} pair_ij``:
    the removal order and each removal's marginal increase."""
    n = len(s)
    marginal = np.array(s, dtype=float)
    removed = np.zeros(n, dtype=bool)
    order, steps = [], []
    for _ in range(n):
        cand = np.where(removed, np.inf, marginal)
        k = int(np.argmin(cand))
        order.append(k)
        steps.append(float(marginal[k]))
        removed[k] = True
        marginal += 2.0 * pair[:, k]
    return order, np.array(steps)


def ccp_scores(space: PruningSpace, batches) -> tuple[dict[int, np.ndarray], str]:
    grad: dict[int, np.ndarray] = {}
    fisher: dict[int, np.ndarray] = {}
    n = 0
    for a in gate_gradients(space, batches):
        for gid, v in a.items():
            grad[gid] = grad.get(gid, 0.0) + v.sum(axis=0)
            fisher[gid] = fisher.get(gid, 0.0) + v.T @ v
        n += len(next(iter(a.values()))) if a else 0
    scores = {}
    for gid in grad:
        g, fi = grad[gid] / max(n, 1), fisher[gid] / max(n, 1)
        s = -g + 0.5 * np.diag(fi)
        pair = 0.5 * fi.copy()
        np.fill_diagonal(pair, 0.0)
        order, steps = eliminate(s, pair)
        scores[gid] = ordered_scores(order, steps, most_important_first=False)
    return _fill(space, scores), "network"
