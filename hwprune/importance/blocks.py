"""Importance of a removable residual block (:mod:`hwprune.graph.blocks`), in channel-score units.

greedy and knapsack add up channel scores; a block's score is what they lose
with it besides the channels of the groups that live only inside it. From the
weights: the block's share of the network's active-weight importance (each
layer's ``sum |W| / ||W||_F``, :func:`hwprune.importance.active.weight_importance`,
summed over its layers and divided by the sum over every layer) times the
network's total channel score. From data (``data``: ``(inputs, labels)``
batches; at most ``max_batches`` read): the loss increase with the block
skipped (its output replaced by its input) on those batches, in eval mode;
the blocks' total weight-based score is then shared out in proportion to
those increases (a block whose removal does not raise the loss gets 1 % of
an equal share), so the data decides which blocks matter and the weights how
much blocks weigh against channels. Scores are stored in the channel scores
under each block's key, a one-element array. qcqp does not read them: its
objective drops a removed block's active weights directly.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.nn import functional as F

from hwprune.graph.space import PruningSpace, model_device
from hwprune.importance.active import layer_importances
from hwprune.importance.scores import ChannelScores

DATA_BATCHES = 4


def weight_block_scores(space: PruningSpace, scores: dict) -> dict[int, float]:
    """Each block's share of the active-weight importance times the total channel score."""
    imps = {n: (0.0 if t is None else float(t.sum())) for n, t in layer_importances(space).items()}
    total = sum(imps.values())
    channels = sum(float(np.sum(scores[g.gid])) for g in space.groups)
    if total <= 0:
        return {b.key: 0.0 for b in space.blocks}
    return {b.key: channels * sum(imps[space.layers[i].name] for i in b.layers) / total for b in space.blocks}


def _loss(model, batches) -> float:
    dev = model_device(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x.to(dev))
            total += float(F.cross_entropy(out, y.to(dev), reduction="sum"))
            count += int(y.shape[0])
    return total / max(count, 1)


def skip_losses(space: PruningSpace, batches) -> dict[int, float]:
    """Loss increase (mean cross-entropy) on ``batches`` with each block skipped."""
    model = space.model
    was_training = model.training
    model.eval()
    try:
        base = _loss(model, batches)
        out = {}
        for b in space.blocks:
            handle = model.get_submodule(b.path).register_forward_hook(lambda m, args, o: args[0])
            try:
                out[b.key] = _loss(model, batches) - base
            finally:
                handle.remove()
    finally:
        model.train(was_training)
    return out


def with_block_scores(space: PruningSpace, scores: ChannelScores, data=None,
                      max_batches: int = DATA_BATCHES) -> ChannelScores:
    """``scores`` plus every block's score (module docstring); unchanged without blocks."""
    if not space.blocks:
        return scores
    weights = weight_block_scores(space, scores)
    if data is not None:
        batches = list(itertools.islice(iter(data), int(max_batches)))
        if batches:
            rise = skip_losses(space, batches)
            share = sum(weights.values())
            floor = 0.01 * max(max(rise.values()), 1e-12) / max(len(rise), 1)
            clipped = {k: max(v, floor) for k, v in rise.items()}
            norm = sum(clipped.values())
            weights = {k: share * v / norm for k, v in clipped.items()}
    out = ChannelScores(dict(scores), getattr(scores, "criterion", "l1"), getattr(scores, "scale", "members"))
    out.update({k: np.array([float(v)]) for k, v in weights.items()})
    return out
