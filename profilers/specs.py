"""Layer specifications and measurement records passed between packages.

A :class:`LayerSpec` names one compute layer at concrete channel widths; it is
what a profiler measures and what a latency model predicts. Everything here is
a frozen dataclass with units in field names.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

# what reads a layer's output, for :attr:`LayerSpec.readers`: a conv that is not grouped, a depthwise conv, a
# grouped conv ("grouped:<groups>"), a concat, a pooling op, a residual add whose layout another of its inputs
# answers for (no layout of its own), or anything that reads the plain layout (a linear layer, a reshape, the
# network's output, an op not listed)
READERS = ("conv", "dw", "grouped", "concat", "pool", "add", "plain")


@dataclass(frozen=True)
class LayerSpec:
    """One conv or linear layer at concrete widths (followed by its activation).

    ``kind`` is ``"conv"`` or ``"linear"``. For a depthwise conv ``groups`` equals
    ``in_channels``. ``height``/``width`` are the *input* spatial size; for a
    linear layer ``batch`` counts every leading row (batch x tokens).

    Where the layer sits in a network (not part of its key, its family or its
    equality: a layer measured alone is the same layer): ``readers``, what reads
    its output (:data:`READERS`; empty where unknown), and ``concat_input``,
    whether its input is a concat of other layers' outputs. A latency model uses
    them for the layout changes between layers
    (:func:`latency_models.layout.reorder_saved_elements`).
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
    readers: tuple[str, ...] = field(default=(), compare=False)
    concat_input: bool = field(default=False, compare=False)

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    def key(self) -> str:
        """Stable text key, used by the measurement store."""
        return json.dumps(self._fields(), sort_keys=True, separators=(",", ":"))

    def _fields(self) -> dict:
        d = asdict(self)
        d.pop("readers")
        d.pop("concat_input")
        return d

    def family(self) -> str:
        """Key of this spec with the channel counts removed: layers of one family
        differ only in width, so one latency model covers them."""
        d = self._fields()
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
        return 2 * self.batch * oh * ow * weight_count(self)

    def describe(self) -> str:
        """The shape in a few words: ``conv 3x3/1 64->64 at 32x32``."""
        if self.kind == "linear":
            return f"linear {self.in_channels}->{self.out_channels}" + (f" x{self.batch}" if self.batch != 1 else "")
        k, st = f"{self.kernel[0]}x{self.kernel[1]}", self.stride[0]
        if self.depthwise:
            return f"depthwise conv {k}/{st} {self.out_channels} at {self.height}x{self.width}"
        g = f" groups {self.groups}" if self.groups > 1 else ""
        return f"conv {k}/{st} {self.in_channels}->{self.out_channels}{g} at {self.height}x{self.width}"

    @classmethod
    def from_key(cls, key: str) -> LayerSpec:
        d = json.loads(key)
        for f in ("kernel", "stride", "padding", "dilation"):
            d[f] = tuple(d[f])
        return cls(**d)


def weight_count(spec: LayerSpec, n_in=None, n_out=None):
    """Weights of a conv or linear layer (bias not counted) at widths ``n_in``
    and ``n_out`` (default: the spec's; numbers or numpy arrays). A depthwise
    conv keeps one input channel per output channel at any width."""
    n_in = spec.in_channels if n_in is None else n_in
    n_out = spec.out_channels if n_out is None else n_out
    per_out = 1 if spec.depthwise else n_in // spec.groups
    return n_out * per_out * spec.kernel[0] * spec.kernel[1]


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
