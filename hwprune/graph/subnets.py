"""Random sub-networks of a pruning space, for validating latency models.

A sub-network is a width per group on the device grid. Drawing each group's
width independently and uniformly concentrates whole-network latency around
the middle (a sum of many independent draws), so each sample first draws a
global scale ``s`` uniformly in ``[0, 1]`` and then places every group's
width index at ``s`` of its range plus a jitter of up to ``jitter`` of that
range: the samples cover the smallest to the full network, and each is
irregular in its widths as a selector's plans are.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch import nn

from hwprune.graph.space import Choice, PruningSpace
from hwprune.graph.surgery import apply_kept


def random_choices(options: dict[int, list[tuple[int, ...]]], n: int, seed: int = 0,
                   jitter: float = 0.35) -> list[Choice]:
    """``n`` width choices over ``options`` (group -> widths, ascending)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.uniform(0.0, 1.0)
        choice = {}
        for gid, opts in options.items():
            last = len(opts) - 1
            pos = s + rng.uniform(-jitter, jitter)
            choice[gid] = opts[int(round(min(1.0, max(0.0, pos)) * last))]
        out.append(choice)
    return out


def first_channels(space: PruningSpace, choice: Choice) -> dict[int, list[int]]:
    """Kept indices for ``choice``: the first channels of every segment (which
    channels survive does not change latency)."""
    kept = {}
    for g in space.groups:
        ks = choice[g.gid]
        kept[g.gid] = sorted(i for idx, k in zip(g.seg_index, ks) for i in idx[:k])
    return kept


def build(space: PruningSpace, choice: Choice) -> nn.Module:
    """The physically pruned module with the widths of ``choice``."""
    return apply_kept(space, first_channels(space, choice))


def iter_subnets(space: PruningSpace, options, n: int, seed: int = 0) -> Iterator[tuple[Choice, nn.Module]]:
    for choice in random_choices(options, n, seed):
        yield choice, build(space, choice)


__all__ = ["random_choices", "first_channels", "build", "iter_subnets"]
