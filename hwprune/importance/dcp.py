"""Discrimination-aware channel importance, ``dcp`` (Zhuang et al., NeurIPS 2018).

DCP adds auxiliary classifiers (AvgPool(ReLU(BN(x))) -> FC) at several
depths, fine-tunes with their cross-entropy, and then picks each layer's input
channels greedily: repeatedly add the channel whose weights have the largest
gradient norm of a joint loss (reconstruction MSE of the layer's output plus
the auxiliary cross-entropy), re-optimise the kept weights, stop at the width.

Made concrete here, for every channel group (see
:mod:`hwprune.importance.data` for the group's *consumers*, the layers that
read its channels):

- Gates ``m`` over the group's channels stand for the selection (1 = kept,
  0 = removed); a kept channel's re-optimised weights are its gate (one scale
  per input channel of the consumers, the cheap version of DCP's weight
  re-fit). The network is not changed.
- Reconstruction: each consumer's output is linear in the gates,
  ``Y(m) = Y_full + sum_i (m_i - 1) Z_i`` with ``Z_i`` the part of the output
  that channel i contributes, so the squared error is ``(m-1)^T G (m-1)``
  with ``G = Z Z^T``. ``G`` is estimated on ``samples`` calibration images at
  ``positions`` random output positions each and at most ``max_outputs``
  random output channels, and divided by ``1^T G 1`` (the error when every
  channel of the group is removed); consumers are averaged.
- Auxiliary classifier: one per group, at the group's deepest consumer: its
  input is pooled as AvgPool(ReLU(BN(x))) (BN with the calibration batch's
  statistics; for a Linear consumer, the features of each channel averaged),
  and the FC is a multinomial logistic regression (L2 penalty) fitted on the
  calibration data with the network frozen (instead of fine-tuning the network with the auxiliary losses, which
  would change the model being pruned). Its cross-entropy with gated
  features, divided by its value with every gate closed, is the
  discrimination term; the joint loss is reconstruction + ``lam`` x that.
- Greedy, as DCP: from no channel selected (all gates 0), repeatedly add the
  channel with the largest ``|dJ/dm_i|`` (groups of more than 64 channels add
  ``ceil(size / 64)`` channels per step), re-fit the selected gates to the
  reconstruction by least squares (closed form, the others at 0: DCP
  re-optimises the kept weights; the cross-entropy enters through the
  choice of channel), until every channel is selected. The width comes from the
  budgeted selector, not from DCP's stopping rule: the selection order is
  the ranking, and a channel's score is the decrease of the joint loss when
  it was added (running minimum, so the order is exact), divided by the
  group's mean.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hwprune.graph.grouped import dense_weight, is_grouped
from hwprune.graph.space import PruningSpace, model_device
from hwprune.importance.data import consumers
from hwprune.importance.magnitude import magnitude_scores
from hwprune.importance.scores import ordered_scores, per_group_mean

SAMPLES = 64
POSITIONS = 16
MAX_OUTPUTS = 128
LAM = 1.0
MAX_ELEMENTS = 1 << 24  # cap on one consumer's contribution tensor (float64 elements)


class _Capture:
    """Forward hooks: each consumer's pooled features on every sample, and its
    input patches (conv) or inputs (linear) on the first ``samples``."""

    def __init__(self, modules: dict[str, nn.Module], samples: int, positions: int, seed: int = 0):
        self.modules, self.samples, self.positions = modules, samples, positions
        self.gen = torch.Generator().manual_seed(seed)
        self.pooled: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
        self.patches: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
        self.seen: dict[str, int] = {n: 0 for n in modules}
        self.order: list[str] = []

    def hook(self, name):
        def fn(mod, inputs):
            x = inputs[0].detach()
            if name not in self.order:
                self.order.append(name)
            if isinstance(mod, nn.Conv2d):
                mu = x.mean(dim=(0, 2, 3), keepdim=True)
                sd = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False).add(1e-5).sqrt()
                self.pooled[name].append(torch.relu((x - mu) / sd).mean(dim=(2, 3)).double().cpu())
            else:
                flat = x.reshape(len(x), -1, x.shape[-1]).mean(dim=1)
                mu, sd = flat.mean(dim=0), flat.var(dim=0, unbiased=False).add(1e-5).sqrt()
                self.pooled[name].append(torch.relu((flat - mu) / sd).double().cpu())
            take = self.samples - self.seen[name]
            if take <= 0:
                return None
            x = x[:take]
            self.seen[name] += len(x)
            if isinstance(mod, nn.Conv2d):
                cols = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # [N, C*kk, L]
                n_pos = min(self.positions, cols.shape[-1])
                pick = torch.randperm(cols.shape[-1], generator=self.gen)[:n_pos].to(cols.device)
                cols = cols[:, :, pick].reshape(len(x), mod.in_channels, -1, n_pos)
                self.patches[name].append(cols.double().cpu())
            else:
                self.patches[name].append((x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x).double().cpu())
            return None
        return fn


def _contributions(mod: nn.Module, patches: torch.Tensor, idxs: np.ndarray, roots: np.ndarray, size: int,
                   gen: torch.Generator, max_outputs: int) -> torch.Tensor:
    """``Z`` [size, ...]: each root channel's contribution to (sampled) outputs."""
    w = (dense_weight(mod) if is_grouped(mod) else mod.weight.detach()).double().cpu()
    idx_t, root_t = torch.as_tensor(idxs), torch.as_tensor(roots)
    n_out = w.shape[0]
    if isinstance(mod, nn.Conv2d) and mod.groups > 1 and not is_grouped(mod):  # depthwise: i feeds output i only
        wk = w.reshape(n_out, -1)[idx_t]                                  # [n_idx, kk]
        z = torch.einsum("ik,nikl->inl", wk, patches[:, idx_t]).reshape(len(idx_t), -1)
        # outputs of different channels are orthogonal: stack them on disjoint columns
        zr = torch.zeros(size, len(idx_t) * z.shape[1], dtype=torch.float64)
        for j in range(len(idx_t)):
            zr[root_t[j], j * z.shape[1]:(j + 1) * z.shape[1]] += z[j]
        return zr
    outs = torch.randperm(n_out, generator=gen)[:max_outputs] if n_out > max_outputs else torch.arange(n_out)
    if isinstance(mod, nn.Conv2d):
        wk = w.reshape(n_out, mod.in_channels, -1)[outs][:, idx_t]        # [O', n_idx, kk]
        per = len(outs) * patches.shape[-1] * len(idx_t)
        keep = max(1, min(len(patches), MAX_ELEMENTS // max(per, 1)))
        z = torch.einsum("oik,nikl->inol", wk, patches[:keep, idx_t])
    else:
        wl = w[outs][:, idx_t]                                            # [O', n_idx]
        keep = max(1, min(len(patches), MAX_ELEMENTS // max(len(outs) * len(idx_t), 1)))
        z = torch.einsum("oi,ni->ino", wl, patches[:keep, idx_t])
    z = z.reshape(len(idx_t), -1)
    return torch.zeros(size, z.shape[1], dtype=torch.float64).index_add_(0, root_t, z)


def _fit_head(phi: np.ndarray, y: np.ndarray, classes: int, wd: float = 1e-3,
              iters: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with an L2 penalty ``wd ||W||^2``,
    fitted by Nesterov's accelerated gradient with step ``1 / L`` (the loss is
    convex; ``L`` bounds the curvature of the softmax cross-entropy)."""
    n, d = phi.shape
    x = np.hstack([phi, np.ones((n, 1))])
    lip = 0.5 * float(np.linalg.eigvalsh(x.T @ x / n)[-1]) + 2 * wd
    theta = np.zeros((classes, d + 1))
    prev = theta.copy()
    onehot = np.eye(classes)[y]
    for k in range(iters):
        look = theta + (k / (k + 3)) * (theta - prev)
        z = x @ look.T
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot).T @ x / n
        grad[:, :d] += 2 * wd * look[:, :d]
        prev, theta = theta, look - grad / lip
    return theta[:, :d], theta[:, d]


def _cross_entropy(phi, m, w, b, y) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of the head on gated features, and its gradient in the gates."""
    z = (phi * m) @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    ce = float(-np.log(np.maximum(p[rows, y], 1e-300)).mean())
    p[rows, y] -= 1.0
    return ce, (phi * (p @ w)).mean(axis=0)


def _greedy(gram: np.ndarray, phi: np.ndarray, y: np.ndarray, head, lam: float):
    """DCP's greedy over the gates; returns (selection order, gain per channel).
    Selected gates are re-fitted to the reconstruction by least squares:
    with the others at 0, ``G_SS m_S = (G 1)_S``."""
    size = gram.shape[0]
    w, b = head
    ce0 = _cross_entropy(phi, np.zeros(size), w, b, y)[0] or 1.0
    g1 = gram @ np.ones(size)
    ridge = 1e-9 * max(float(np.trace(gram)), 1e-12)

    def joint(m):
        d = m - 1.0
        ce, ce_grad = _cross_entropy(phi, m, w, b, y)
        return float(d @ gram @ d) + lam * ce / ce0, 2.0 * gram @ d + lam * ce_grad / ce0

    m = np.zeros(size)
    chosen = np.zeros(size, dtype=bool)
    selected: list[int] = []
    gains: list[float] = []
    j_prev, grad = joint(m)
    step = max(1, math.ceil(size / 64))
    while len(selected) < size:
        score = np.where(chosen, -1.0, np.abs(grad))
        picks = [int(i) for i in np.argsort(-score, kind="stable")[:min(step, size - len(selected))]]
        selected += picks
        chosen[picks] = True
        sel = np.array(selected)
        m = np.zeros(size)
        if float(np.abs(gram).sum()) > 0:
            m[sel] = np.linalg.solve(gram[np.ix_(sel, sel)] + ridge * np.eye(len(sel)), g1[sel])
        else:
            m[sel] = 1.0
        j_now, grad = joint(m)
        gains += [(j_prev - j_now) / len(picks)] * len(picks)
        j_prev = j_now
    return selected, np.array(gains)


def dcp_scores(space: PruningSpace, batches, samples: int = SAMPLES, positions: int = POSITIONS,
               max_outputs: int = MAX_OUTPUTS, lam: float = LAM) -> tuple[dict[int, np.ndarray], str]:
    model = space.model
    cons = consumers(space)
    modules = {name: model.get_submodule(name) for name in cons}
    cap = _Capture(modules, samples, positions)
    hooks = [m.register_forward_pre_hook(cap.hook(n)) for n, m in modules.items()]
    dev = model_device(model)
    ys, classes = [], 0
    try:
        with torch.no_grad():
            for x, y in batches:
                out = model(x.to(dev))
                classes = max(classes, out.shape[-1])
                ys.append(y.reshape(-1).long().cpu())
    finally:
        for h in hooks:
            h.remove()
    y_all = torch.cat(ys)
    classes = max(classes, int(y_all.max()) + 1)
    by_group: dict[int, list] = {}
    for name in cap.order:
        for gid, idxs, roots in cons[name]:
            by_group.setdefault(gid, []).append((name, idxs, roots))
    gen = torch.Generator().manual_seed(1)
    scores = {}
    for g in space.groups:
        items = by_group.get(g.gid)
        if not items:
            continue
        gram, n_grams = np.zeros((g.size, g.size)), 0
        for name, idxs, roots in items:
            if not cap.patches[name]:
                continue
            z = _contributions(modules[name], torch.cat(cap.patches[name]), idxs, roots, g.size, gen,
                               max_outputs)
            part = (z @ z.T).numpy()
            total = float(part.sum())
            if total > 0:
                gram, n_grams = gram + part / total, n_grams + 1
        name, idxs, roots = items[-1]  # the deepest consumer carries the auxiliary classifier
        pooled = torch.cat(cap.pooled[name])[:, torch.as_tensor(idxs)]
        counts = torch.zeros(g.size, dtype=torch.float64).index_add_(0, torch.as_tensor(roots),
                                                                     torch.ones(len(idxs), dtype=torch.float64))
        phi = torch.zeros(len(pooled), g.size, dtype=torch.float64).index_add_(1, torch.as_tensor(roots), pooled)
        phi = (phi / counts.clamp(min=1.0)).numpy()
        y = y_all[:len(phi)].numpy()
        head = _fit_head(phi, y, classes)
        order, gains = _greedy(gram / max(n_grams, 1), phi, y, head, lam)
        scores[g.gid] = ordered_scores(order, gains, most_important_first=True)
    normed = per_group_mean(scores)
    l1 = None
    for g in space.groups:
        if g.gid not in normed:
            l1 = l1 or magnitude_scores(space, 1)
            normed[g.gid] = l1[g.gid]
    return normed, "group"
