"""Layer specifications and measurement records passed between packages.

A :class:`LayerSpec` names one compute layer at concrete channel widths; it is
what a profiler measures and what a latency model predicts. Everything here is
a frozen dataclass with units in field names.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerSpec:
    """One conv or linear layer at concrete widths (followed by its activation).

    ``kind`` is ``"conv"`` or ``"linear"``. For a depthwise conv ``groups`` equals
    ``in_channels``. ``height``/``width`` are the *input* spatial size; for a
    linear layer ``batch`` counts every leading row (batch x tokens).
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    height: int = 1
    width: int = 1
    batch: int = 1

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    def key(self) -> str:
        """Stable text key, used by the measurement store."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def family(self) -> str:
        """Key of this spec with the channel counts removed: layers of one family
        differ only in width, so one latency model covers them."""
        d = asdict(self)
        d.pop("in_channels")
        d.pop("out_channels")
        d["groups"] = "dw" if self.depthwise else self.groups
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind != "conv":
            return (1, 1)
        size = []
        for i, n in enumerate((self.height, self.width)):
            eff = self.dilation[i] * (self.kernel[i] - 1) + 1
            size.append((n + 2 * self.padding[i] - eff) // self.stride[i] + 1)
        return (size[0], size[1])

    @property
    def flops(self) -> int:
        """Multiply-accumulates x 2 of this layer at its widths."""
        oh, ow = self.out_hw
        per_out = (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        return 2 * self.batch * self.out_channels * oh * ow * per_out

    @classmethod
    def from_key(cls, key: str) -> LayerSpec:
        d = json.loads(key)
        for f in ("kernel", "stride", "padding", "dilation"):
            d[f] = tuple(d[f])
        return cls(**d)


@dataclass(frozen=True)
class Timing:
    """Result of one measurement: median and spread of many timed runs."""

    median_ms: float
    iqr_ms: float
    runs: int
    ci_rel: float  # half-width of the 95 % interval of the median, relative
    stable: bool   # the interval met the protocol's target before the time cap


@dataclass(frozen=True)
class Measurement:
    """A layer spec measured on a device."""

    device: str
    spec: LayerSpec
    timing: Timing
