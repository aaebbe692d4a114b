"""A default budget that every host can reach.

A fixed share of the original's latency (the demo's 50 %, a benchmark's 30 %)
is below the fastest network some hosts can run: on an AVX-512 host
resnet20's fastest channel-pruned network measured 53 % of the full one, on
AVX2 about a third. :func:`prune_within_reach` asks for the requested share
and, where the engine measures it below the fastest network
(:class:`hwprune.errors.BelowSmallestError`), uses a stated budget midway
between that network and the full one, and says so (:class:`BudgetChoice`).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from hwprune.errors import BelowSmallestError
from hwprune.loop.engine import PruneResult, prune

log = logging.getLogger("hwprune")

TRIES = 3  # the last one asks for the full latency, which always returns the model unchanged


@dataclass(frozen=True)
class BudgetChoice:
    """The budget used (``fraction`` of the original's latency) for the one
    requested, and why: ``fallback`` when the request was below the fastest
    network measured (``fastest``, ``fastest_ms``, ``fastest_fraction``)."""
    requested_fraction: float
    fraction: float
    fallback: bool = False
    reason: str = ""
    fastest: str = ""
    fastest_ms: float | None = None
    fastest_fraction: float | None = None

    @property
    def text(self) -> str:
        if not self.fallback:
            return f"budget {100 * self.fraction:.0f} % of the original's latency, as requested (reachable here)"
        return f"budget {100 * self.fraction:.0f} % of the original's latency: {self.reason}"

    def to_json(self) -> dict:
        return {**asdict(self), "text": self.text}


def midway(fastest_fraction: float) -> float:
    """The fallback share: midway between the fastest network and the full one."""
    return (fastest_fraction + 1.0) / 2.0


def prune_within_reach(model, example_inputs, device: str, fraction: float, **kw) -> tuple[PruneResult, BudgetChoice]:
    """``prune(..., budget_fraction=fraction, **kw)``; where that is below the
    fastest network measured, the same with the :func:`midway` share (at most
    :data:`TRIES` prunes; the last asks for the full latency, which returns
    the model unchanged). Other errors propagate."""
    frac, exc_seen = float(fraction), None
    for attempt in range(TRIES):
        try:
            res = prune(model, example_inputs, device, budget_fraction=frac, **kw)
        except BelowSmallestError as exc:
            if exc.fastest_fraction is None:
                raise
            exc_seen = exc
            frac = midway(exc.fastest_fraction) if attempt < TRIES - 2 else 1.0
            log.info("%s; trying %.0f %% of the original's latency", exc, 100 * frac)
            continue
        if exc_seen is None:
            return res, BudgetChoice(float(fraction), frac)
        f = exc_seen.fastest_fraction
        how = ("midway between it and the full network" if frac < 1.0 else
               "the full network's latency: the model is returned unchanged")
        reason = (f"{100 * fraction:.0f} % is below the fastest network measured on this host "
                  f"({exc_seen.fastest or 'the fastest network'}: {exc_seen.fastest_ms:.3f} ms, {100 * f:.0f} % of "
                  f"the original's {exc_seen.baseline_ms:.3f} ms), so the budget is {how}")
        return res, BudgetChoice(float(fraction), frac, True, reason, exc_seen.fastest, exc_seen.fastest_ms, f)
    raise exc_seen  # unreachable: the last try asks for the full latency


__all__ = ["BudgetChoice", "midway", "prune_within_reach"]
