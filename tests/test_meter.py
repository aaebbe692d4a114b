"""The loop's meter (hwprune.loop.meter.BlockMeter) on a simulated runtime
whose speed the test sets: networks measured for a fit keep the ratios they
were measured at, however far the original's running median moves between them."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hwprune.loop.fastest import Calibration, Network
from hwprune.loop.meter import BlockMeter, BlockMeters


@dataclass(frozen=True)
class Timing:
    median_ms: float


class Costly(nn.Module):
    def __init__(self, ms: float):
        super().__init__()
        self.ms = ms

    def forward(self, x):
        return x


class Host:
    """A runtime (``measure_module`` only) whose block median is the module's
    ``ms`` times the host's current ``speed``, exactly."""

    def __init__(self):
        self.speed = 1.0

    def measure_module(self, model, example_inputs, protocol=None):
        return Timing(model.ms * self.speed)


def test_networks_measured_for_a_fit_keep_their_ratios_while_the_host_drifts():
    host, x = Host(), torch.zeros(1)
    meter = BlockMeter(host, Costly(2.0), (x,))
    first = meter.measure(Costly(1.0))             # 0.5 of the original at 2.0 ms
    host.speed = 1.5                               # the host slows by half, for good
    for _ in range(12):
        meter.reference_block()
    assert meter.reference_ms == pytest.approx(3.0)  # the running median followed it
    later = meter.measure(Costly(1.0))
    quarter = meter.measure(Costly(0.5))
    # one scale for every row of the fit: the ratios as measured (0.5, 0.5, 0.25), not 1.0 and 1.5 ms
    assert meter.scale_ms == pytest.approx(2.0)
    assert (first, later, quarter) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(0.5))
    meters = BlockMeters({"d": meter})
    assert meters.since_scale("d") == pytest.approx(1.5)
    # read now, the networks' ms follow the current reference
    cal = Calibration((Network("small", {}, quarter), Network("half", {}, later))).scaled(meters.since_scale("d"))
    assert [n.measured_ms for n in cal.networks] == [pytest.approx(0.75), pytest.approx(1.5)]
    assert cal.fastest.name == "small"
