"""Score containers and the normalisations every criterion shares."""
from __future__ import annotations

import numpy as np


class ChannelScores(dict):
    """gid -> per-channel scores over the group's root indices. ``criterion``:
    the name it was computed with; ``scale``: ``group`` (mean 1 per group),
    ``network`` (mean 1 over every channel of the network) or ``members``
    (mean = the number of conv/linear layers the group touches)."""

    def __init__(self, scores: dict, criterion: str, scale: str):
        super().__init__(scores)
        self.criterion, self.scale = criterion, scale


def per_group_mean(scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    out = {}
    for gid, s in scores.items():
        s = np.nan_to_num(np.asarray(s, dtype=float), nan=0.0)
        mean = s.mean()
        out[gid] = s / mean if mean > 0 else np.ones_like(s)
    return out


def network_mean(scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    flat = np.concatenate([np.nan_to_num(np.asarray(s, dtype=float), nan=0.0) for s in scores.values()]) \
        if scores else np.zeros(0)
    mean = float(flat.mean()) if flat.size else 0.0
    if not mean > 0:
        return {gid: np.ones(len(s)) for gid, s in scores.items()}
    return {gid: np.nan_to_num(np.asarray(s, dtype=float), nan=0.0) / mean for gid, s in scores.items()}


def ordered_scores(order: list[int], steps: np.ndarray, most_important_first: bool) -> np.ndarray:
    """Scores that rank channels exactly in ``order`` and carry the size of each
    step. ``steps[t]`` belongs to ``order[t]``; with ``most_important_first``
    (a forward selection, steps = gains) the scores are the running minimum of
    the steps, otherwise (a backward elimination, steps = losses) their running
    maximum. Steps are floored at 1e-3 of the largest, and a tiny rank term
    breaks ties so sorting the scores gives back ``order``."""
    steps = np.asarray(steps, dtype=float)
    n = len(order)
    if most_important_first:
        mono = np.minimum.accumulate(steps)
    else:
        mono = np.maximum.accumulate(steps)
    top = float(np.max(np.abs(steps))) if n else 0.0
    floor = 1e-3 * top if top > 0 else 1.0
    mono = np.maximum(mono, floor)
    rank = np.arange(n, dtype=float)
    tie = floor * 1e-3 * ((n - rank) if most_important_first else (rank + 1)) / max(n, 1)
    out = np.zeros(n)
    out[np.asarray(order, dtype=int)] = mono + tie
    return out
