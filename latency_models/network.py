"""Network latency = sum of per-layer predictions + a fitted remainder.

Layers are grouped into families (same op, kernel, stride, input size: only the
channel counts differ); one quadratic model per family. The remainder covers
what is not a conv or linear layer (adds, pools, concats, session overhead,
and the per-call overhead counted once per isolated layer measurement); it is
``c0 + c1 * activation_elements`` fitted from a few whole-model measurements.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from profilers import LayerSpec, Measurement

from .quadratic import NotFittedError, QuadraticLayerModel


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
        self.remainder_ = (0.0, 0.0)
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
        c0, c1 = self.remainder_
        return c0 + c1 * activation_elements(specs)

    def predict(self, specs: Sequence[LayerSpec]) -> float:
        return self.layers_ms(specs) + self.remainder_ms(specs)

    def fit_remainder(self, rows: Sequence[tuple[Sequence[LayerSpec], float]]) -> "NetworkLatencyModel":
        """Fit ``c0 + c1*elements`` to ``measured - sum(layers)`` over whole-model
        measurements ``rows = [(specs, measured_ms), ...]``. One row fits c0 only."""
        self._check()
        resid = np.array([ms - self.layers_ms(specs) for specs, ms in rows])
        elems = np.array([activation_elements(specs) for specs, _ in rows], dtype=float)
        if len(rows) >= 2 and np.ptp(elems) > 0:
            X = np.stack([np.ones_like(elems), elems], axis=1)
            (c0, c1), *_ = np.linalg.lstsq(X, resid, rcond=None)
            if c1 < 0:  # elementwise work cannot make a network faster
                c0, c1 = float(resid.mean()), 0.0
        else:
            c0, c1 = float(resid.mean()), 0.0
        self.remainder_ = (float(c0), float(c1))
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
        m.remainder_ = tuple(d.get("remainder", (0.0, 0.0)))
        return m
