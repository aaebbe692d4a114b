"""Proxy baselines: latency linear in a layer's FLOPs or in its parameter count.

``t = overhead_ms + ms_per_gflop * GFLOPs`` (or ``ms_per_mparam * Mparams``),
one line for every layer of every family, fitted by least squares on the
relative error (rows weighted by 1/latency) with both coefficients >= 0.
These are what pruning by FLOPs or parameters implicitly assumes; they are
kept so that a report shows what the proxies get wrong (depthwise convs,
channel counts off the device's step, memory-bound layers).
"""
from __future__ import annotations

import numpy as np

from profilers.specs import weight_count

from .base import LayerModel, register


class _ProxyLinear(LayerModel):
    per_family = False
    unit = 1.0

    def __init__(self):
        pass

    def _x(self, spec) -> float:
        raise NotImplementedError

    def _fit(self, measurements) -> None:
        from scipy.optimize import nnls
        x = np.array([self._x(m.spec) / self.unit for m in measurements])
        y = np.array([m.timing.median_ms for m in measurements])
        w = 1.0 / np.maximum(y, 1e-9)
        (c0, c1), _ = nnls(np.stack([np.ones_like(x), x], axis=1) * w[:, None], y * w)
        self.overhead_ms_, self.slope_ = float(c0), float(c1)

    def _predict(self, specs) -> np.ndarray:
        return np.array([self.overhead_ms_ + self.slope_ * self._x(s) / self.unit for s in specs])

    def _state(self) -> dict:
        return {"overhead_ms": self.overhead_ms_, "slope": self.slope_}

    def _load_state(self, state: dict) -> None:
        self.overhead_ms_, self.slope_ = float(state["overhead_ms"]), float(state["slope"])


class FlopsLinearModel(_ProxyLinear):
    """``t = overhead_ms_ + ms_per_gflop_ * GFLOPs`` (``slope_`` is ms per GFLOP)."""

    name = "flops"
    unit = 1e9

    def _x(self, spec) -> float:
        return float(spec.flops)

    @property
    def ms_per_gflop_(self) -> float:
        return self.slope_


class ParamsLinearModel(_ProxyLinear):
    """``t = overhead_ms_ + slope_ * million weights`` of the layer."""

    name = "params"
    unit = 1e6

    def _x(self, spec) -> float:
        return float(weight_count(spec))


register("flops", FlopsLinearModel, "ms per GFLOP (+ a per-layer overhead), one line for every layer")
register("params", ParamsLinearModel, "ms per million weights (+ a per-layer overhead), one line for every layer")
