"""Network latency = sum of per-layer predictions + a fitted remainder.

Layers are grouped into families (same op, kernel, stride, input size: only the
channel counts differ); one quadratic model per family. The remainder covers
what is not a conv or linear layer (adds, pools, concats, session overhead,
and the per-call overhead counted once per isolated layer measurement) and the
cost of streaming weights that do not stay in cache in a whole network; it is
``c0 + c1 * activation_elements + c2 * weight_elements`` (c1, c2 >= 0) fitted
from a few whole-model measurements.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from profilers import LayerSpec, Measurement

from .quadratic import NotFittedError, QuadraticLayerModel


def weight_elements(specs: Iterable[LayerSpec]) -> int:
    """Weights of the layers: a network whose weights outgrow the CPU's caches
    streams them from memory on every run, which an isolated layer, measured
    warm, never does."""
    return sum(s.out_channels * (s.in_channels // s.groups) * s.kernel[0] * s.kernel[1] for s in specs)


def activation_elements(specs: Iterable[LayerSpec]) -> int:
    """Elements written by the layers: a proxy for elementwise work around them."""
    total = 0
    for s in specs:
        oh, ow = s.out_hw
        total += s.batch * s.out_channels * oh * ow
    return total


class NetworkLatencyModel:
    """``use_table``: a measured (family, n_in, n_out) is used as measured (a
    lookup table); the family's quadratic covers widths not measured. Off by
    default: isolated small layers on a CPU measure non-monotonically (kernel
    choices, per-call overhead), and a table that says a narrower layer is
    slower stalls a selector; the least-squares quadratic smooths that out."""

    def __init__(self, form: str = "M6", use_table: bool = False):
        self.form = form
        self.use_table = use_table

    def fit(self, measurements: Sequence[Measurement]) -> "NetworkLatencyModel":
        by_family: dict[str, list[Measurement]] = defaultdict(list)
        for m in measurements:
            by_family[m.spec.family()].append(m)
        self.families_ = {}
        self.table_ = {}
        for fam, ms in by_family.items():
            self.table_[fam] = {(m.spec.in_channels, m.spec.out_channels): m.timing.median_ms for m in ms}
            n_in = [m.spec.in_channels for m in ms]
            n_out = [m.spec.out_channels for m in ms]
            y = [m.timing.median_ms for m in ms]
            self.families_[fam] = QuadraticLayerModel(self.form).fit(n_in, n_out, y)
        self.remainder_ = (0.0, 0.0, 0.0)
        return self

    def _check(self) -> None:
        if not hasattr(self, "families_"):
            raise NotFittedError("NetworkLatencyModel is not fitted; call fit first")

    def missing(self, specs: Iterable[LayerSpec]) -> list[LayerSpec]:
        self._check()
        return [s for s in specs if s.family() not in self.families_]

    def layer_ms(self, spec: LayerSpec) -> float:
        self._check()
        fam = spec.family()
        model = self.families_.get(fam)
        if model is None:
            raise KeyError(f"no measurements for layer family {fam}")
        measured = self.table_.get(fam, {}).get((spec.in_channels, spec.out_channels))
        if measured is not None and self.use_table:
            return measured
        return float(model.predict(spec.in_channels, spec.out_channels))

    def layers_ms(self, specs: Sequence[LayerSpec]) -> float:
        return float(sum(self.layer_ms(s) for s in specs))

    def remainder_ms(self, specs: Sequence[LayerSpec]) -> float:
        c0, c1, c2 = (tuple(self.remainder_) + (0.0, 0.0, 0.0))[:3]
        return c0 + c1 * activation_elements(specs) + c2 * weight_elements(specs)

    def predict(self, specs: Sequence[LayerSpec]) -> float:
        return self.layers_ms(specs) + self.remainder_ms(specs)

    def fit_remainder(self, rows: Sequence[tuple[Sequence[LayerSpec], float]]) -> "NetworkLatencyModel":
        """Fit ``c0 + c1*activations + c2*weights`` (c1, c2 >= 0) to ``measured -
        sum(layers)`` over whole-model measurements ``rows = [(specs, ms), ...]``;
        with fewer rows than terms, the later terms are left at 0."""
        from scipy.optimize import lsq_linear
        self._check()
        resid = np.array([ms - self.layers_ms(specs) for specs, ms in rows])
        feats = np.array([[1.0, activation_elements(specs), weight_elements(specs)] for specs, _ in rows])
        k = min(3, len(rows))
        X = feats[:, :k] / np.maximum(np.abs(feats[:, :k]).max(axis=0), 1.0)  # scaled columns
        lower = [-np.inf] + [0.0] * (k - 1)
        sol = lsq_linear(X, resid, bounds=(lower, [np.inf] * k)).x if len(rows) else np.zeros(1)
        coef = [float(c) for c in sol / np.maximum(np.abs(feats[:, :k]).max(axis=0), 1.0)] if len(rows) else [0.0]
        self.remainder_ = tuple(coef + [0.0] * (3 - len(coef)))
        return self

    def to_dict(self) -> dict:
        self._check()
        return {"type": "network", "form": self.form, "use_table": self.use_table,
                "remainder": list(self.remainder_),
                "families": {k: v.to_dict() for k, v in self.families_.items()},
                "table": {k: [[a, b, ms] for (a, b), ms in t.items()] for k, t in self.table_.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkLatencyModel":
        m = cls(form=d.get("form", "M6"), use_table=d.get("use_table", False))
        m.families_ = {k: QuadraticLayerModel.from_dict(v) for k, v in d["families"].items()}
        m.table_ = {k: {(a, b): ms for a, b, ms in rows} for k, rows in d.get("table", {}).items()}
        m.remainder_ = tuple(d.get("remainder", (0.0, 0.0, 0.0)))
        return m
