"""How the closed loop measures a plan: one call, one reading per device.

The loop never times anything itself. It hands a pruned network to a
:class:`PlanMeter` and gets back, for every device, a :class:`Reading`: the
candidate's latency as a ratio to the original network's, measured
interleaved with it so that the host's drift cancels. Milliseconds are that
ratio times the meter's current ``reference_ms`` (the median of every
measurement of the original so far), read when a decision needs them.

This is the one seam of the loop's measurements: a meter that repeats the
pair until the ratio's confidence interval is narrow enough returns the same
:class:`Reading` with that interval filled in, and nothing else in the loop
changes but the rule that reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import nn

from hwprune.latency.profiling import RelativeMeter


@dataclass(frozen=True)
class Reading:
    """One device's measurement of a plan: ``ratio`` = candidate / original
    latency (medians measured interleaved); ``iqr_ms``: the candidate's spread.
    (A confidence interval of the ratio would be two more fields here,
    ``ratio_lo`` and ``ratio_hi``.)"""
    ratio: float
    iqr_ms: float


class PlanMeter(Protocol):
    """Measures a pruned network on every device of the loop."""

    def reference_ms(self, device: str) -> float:
        """The original network's latency on ``device`` (ms), as measured so far."""

    def measure(self, model) -> dict[str, Reading]:
        """One reading per device of ``model`` against the original."""


class RelativeMeters:
    """A :class:`PlanMeter` over one :class:`RelativeMeter` per device: each
    plan is measured once per device, paired with the original."""

    def __init__(self, meters: dict[str, RelativeMeter]):
        self.meters = meters

    def reference_ms(self, device: str) -> float:
        return self.meters[device].reference_ms

    def measure(self, model: nn.Module) -> dict[str, Reading]:
        readings = {}
        for device, meter in self.meters.items():
            ratio, timing = meter.ratio(model)
            readings[device] = Reading(ratio, timing.iqr_ms)
        return readings
