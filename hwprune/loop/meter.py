"""How the closed loop measures a plan: one call, one reading per device.

The loop never times anything itself. It hands a pruned network to a
:class:`PlanMeter` and gets back, for every device, a :class:`Reading`: the
candidate's latency as a ratio to the original network's, with its 95 %
interval. Milliseconds are that ratio times the meter's current
``reference_ms`` (the original's latency as measured so far), read when a
decision needs them. Networks measured to fit a latency model
(:meth:`BlockMeter.measure`) are the exception: their ratios all scale by one
value, ``scale_ms``, fixed when first read, so that the rows of one fit keep
the ratios they were measured at (scaled by the running median, a network
measured a minute later would carry the host's drift in between).

:class:`BlockMeters` measures as a user sees a deployed network: fresh
sessions, each model alone for a block of runs, blocks of the candidate and
the original alternating (order swapped each round) until the ratio's 95 %
interval is within +-2 % or a cap (:data:`PLAN`: 20 rounds or 30 s per plan)
is hit (:func:`profilers.blocks.ratio_in_blocks`). Interleaving the two run by
run instead reads pruned networks 4-20 % slower relative to the original (each
run finds the caches holding the other model). ``reference_ms`` is the median
of every block median of the original so far; their spread over the run
(:meth:`BlockMeter.spread`) is the host's drift while the engine measured.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
from torch import nn

from hwprune.latency.grid import Grid
from profilers.blocks import BLOCK_PROTOCOL, block_runner, ratio_in_blocks

log = logging.getLogger("hwprune")


@dataclass(frozen=True)
class Reading:
    """One device's measurement of a plan: ``ratio`` = candidate / original
    latency and its 95 % interval ``[ratio_lo, ratio_hi]`` (both ``ratio``
    when not given); ``sure``: the interval met the meter's target before its
    cap; ``iqr_ms``: the spread of the candidate's block medians; ``rounds``
    and ``seconds``: what measuring it took."""
    ratio: float
    iqr_ms: float
    ratio_lo: float | None = None
    ratio_hi: float | None = None
    sure: bool = True
    rounds: int = 1
    seconds: float = 0.0

    def __post_init__(self):
        if self.ratio_lo is None:
            object.__setattr__(self, "ratio_lo", self.ratio)
        if self.ratio_hi is None:
            object.__setattr__(self, "ratio_hi", self.ratio)

    @property
    def half_width_rel(self) -> float:
        """The interval's relative half-width (``+-x``)."""
        return math.sqrt(self.ratio_hi / self.ratio_lo) - 1.0 if self.ratio_lo > 0 else math.inf


def pool(readings: list[Reading]) -> Reading:
    """Readings of one plan taken at different times, as one: the ratios
    averaged on the log scale, each weighted by the inverse square of its
    interval's half-width, and the interval narrowed accordingly (two
    readings of +-3 % pool to about +-2.1 %); an exact reading (no interval)
    stands alone. Sure only if every reading was; rounds and seconds add up."""
    exact = [r for r in readings if r.ratio_hi <= r.ratio_lo]
    if exact or len(readings) == 1:
        return (exact or readings)[0]
    logs = [(math.log(r.ratio), (math.log(r.ratio_hi) - math.log(r.ratio_lo)) / 2.0) for r in readings]
    weights = [1.0 / h ** 2 for _, h in logs]
    mean = sum(w * m for w, (m, _) in zip(weights, logs)) / sum(weights)
    half = 1.0 / math.sqrt(sum(weights))
    return Reading(math.exp(mean), max(r.iqr_ms for r in readings), math.exp(mean - half), math.exp(mean + half),
                   all(r.sure for r in readings), sum(r.rounds for r in readings),
                   sum(r.seconds for r in readings))


@dataclass(frozen=True)
class Certainty:
    """When a ratio is known well enough: its 95 % interval within
    ``+-target_rel``, after at least ``min_rounds`` rounds; or a cap of
    ``max_rounds`` rounds or ``max_s`` seconds (then not sure)."""
    target_rel: float = 0.02
    min_rounds: int = 3
    max_rounds: int = 20
    max_s: float = 30.0

    def to_json(self) -> dict:
        return asdict(self)


PLAN = Certainty()                                                          # every plan the loop decides on
CALIBRATION = Certainty(target_rel=0.03, min_rounds=2, max_rounds=6, max_s=10.0)  # networks fitted, not certified


class PlanMeter(Protocol):
    """Measures a pruned network on every device of the loop."""

    def reference_ms(self, device: str) -> float:
        """The original network's latency on ``device`` (ms), as measured so far."""

    def measure(self, model) -> dict[str, Reading]:
        """One reading per device of ``model`` against the original."""


class BlockMeter:
    """One device: the original (``reference``) measured in fresh-session
    blocks on ``runtime``, ``initial`` blocks at the start and one per round
    of every ratio after that."""

    def __init__(self, runtime, reference: nn.Module, example_inputs, initial: int = 2,
                 protocol=BLOCK_PROTOCOL, plan: Certainty = PLAN):
        self.runtime, self.example_inputs, self.protocol, self.plan = runtime, example_inputs, protocol, plan
        self._reference = block_runner(runtime, reference, example_inputs, protocol)
        self.reference_medians: list[float] = []
        self.t_start = time.perf_counter()
        self._scale_ms: float | None = None
        for _ in range(initial):
            self.reference_block()

    def reference_block(self) -> float:
        ms = self._reference()
        self.reference_medians.append(ms)
        return ms

    @property
    def reference_ms(self) -> float:
        return float(np.median(self.reference_medians))

    def reading(self, model: nn.Module, certainty: Certainty | None = None) -> Reading:
        """``model`` against the original, in alternating blocks, until ``certainty`` (default ``plan``)."""
        c = certainty or self.plan
        run, medians = block_runner(self.runtime, model, self.example_inputs, self.protocol), []

        def candidate() -> float:
            medians.append(run())
            return medians[-1]
        est = ratio_in_blocks(self.reference_block, candidate, target_rel=c.target_rel, min_rounds=c.min_rounds,
                              max_rounds=c.max_rounds, max_s=c.max_s)
        q1, q3 = np.percentile(medians, [25, 75])
        return Reading(est.ratio, float(q3 - q1), est.ratio_lo, est.ratio_hi, est.sure, est.rounds, est.seconds)

    @property
    def scale_ms(self) -> float:
        """The original's latency every :meth:`measure` scales by: ``reference_ms``
        when first read, then fixed (a fit's rows are ratios at one scale)."""
        if self._scale_ms is None:
            self._scale_ms = self.reference_ms
        return self._scale_ms

    def measure(self, model: nn.Module, certainty: Certainty = CALIBRATION) -> float:
        """``model``'s latency in ms for a fit: its ratio to the original times
        ``scale_ms`` (the original's own row is ``scale_ms``)."""
        return self.reading(model, certainty).ratio * self.scale_ms

    def spread(self) -> dict:
        """The original's block medians over the run: range, and ``spread_rel``
        = 90th / 10th percentile - 1 (robust to one odd block), the host's drift."""
        m = np.asarray(self.reference_medians)
        p10, p90 = np.percentile(m, [10, 90])
        return {"blocks": int(len(m)), "median_ms": float(np.median(m)), "min_ms": float(m.min()),
                "max_ms": float(m.max()), "spread_rel": float(p90 / p10 - 1.0),
                "seconds": round(time.perf_counter() - self.t_start, 3)}


class BlockMeters:
    """A :class:`PlanMeter` over one :class:`BlockMeter` per device."""

    def __init__(self, meters: dict[str, BlockMeter]):
        self.meters = meters

    def reference_ms(self, device: str) -> float:
        return self.meters[device].reference_ms

    def measure(self, model: nn.Module) -> dict[str, Reading]:
        return {device: meter.reading(model) for device, meter in self.meters.items()}

    def since_scale(self, device: str) -> float:
        """``reference_ms`` / ``scale_ms`` on ``device``: what turns ms measured
        for a fit (:meth:`BlockMeter.measure`) into ms at the current reference."""
        m = self.meters[device]
        return m.reference_ms / m.scale_ms


def host_stats(meter: BlockMeters, grids: dict[str, Grid], certainty: Certainty, fraction: bool) -> dict:
    """What the result says about the host: each device's grid, the spread of
    the original's block medians over the run (the host's drift) and a warning
    for each device where it exceeded the width of the interval the answer is
    certified to (2 x ``target_rel``: 4 %; on a quiet host the 10th-90th
    percentile spread of resnet20's block medians measured 2.8 %)."""
    spread = {d: m.spread() for d, m in meter.meters.items()}
    warnings = []
    for d, s in spread.items():
        if s["spread_rel"] > 2 * certainty.target_rel:
            warnings.append(
                f"the host's speed drifted while measuring {d}: the original's block medians spread "
                f"{100 * s['spread_rel']:.0f} % (10th-90th percentile; {s['min_ms']:.3f}-{s['max_ms']:.3f} ms over "
                f"{s['blocks']} blocks, {s['seconds']:.0f} s), wider than the +-{100 * certainty.target_rel:.0f} % "
                f"interval the answer is measured to; ratios measured in alternating blocks cancel it, "
                f"milliseconds carry it"
                + ("" if fraction else ", so a budget in ms measured at another time may not hold here"))
    for w in warnings:
        log.warning("%s", w)
    return {"grid": {d: g.to_json() for d, g in grids.items()}, "baseline_spread": spread, "warnings": warnings,
            "certainty": certainty.to_json()}


__all__ = ["CALIBRATION", "PLAN", "BlockMeter", "BlockMeters", "Certainty", "PlanMeter", "Reading", "host_stats",
           "pool"]
