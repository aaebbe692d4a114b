"""Per-layer quadratic latency model (METHODS.md section 1).

``t = a + b*n_in + c*n_out + d*n_in*n_out`` ("M6") or without the ``c*n_out``
term ("M5"), fitted by least squares on measured (n_in, n_out, ms) samples of
one layer family (:class:`QuadraticLayerModel`, on arrays of widths).
:class:`QuadraticModel` is the layer model over specs: one quadratic per
family. With ``step_channels`` it is *step-aware*: latency on a CPU is a step
function of the channel count (flat within blocks of the device's step), so a
width is rounded up to the next multiple of the step before the quadratic.
That is what the selector assumes when it only offers widths on the device
grid. Widths below one step (an image's 3 channels) and widths whose next
multiple lies past the widest one measured in their family (a fixed
classifier width) are left as they are.
"""
from __future__ import annotations

import numpy as np

from .base import LayerModel, NotFittedError, family_groups, register

FORMS = ("M6", "M5")


class QuadraticLayerModel:
    """One family's quadratic on arrays of widths."""

    def __init__(self, form: str = "M6"):
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.form = form

    def _design(self, n_in, n_out) -> np.ndarray:
        n_in = np.asarray(n_in, dtype=float)
        n_out = np.asarray(n_out, dtype=float)
        cols = [np.ones_like(n_in), n_in, n_out, n_in * n_out]
        if self.form == "M5":
            cols.pop(2)
        return np.stack(cols, axis=-1)

    def fit(self, n_in, n_out, latency_ms) -> QuadraticLayerModel:
        """Least squares on *relative* error (rows weighted by 1/latency), so
        narrow configurations, where pruned networks live, fit as well as wide
        ones; predictions never go below the fastest sample (latency does not
        fall with width beyond what was measured)."""
        y = np.asarray(latency_ms, dtype=float)
        if y.size == 0:
            raise ValueError("no samples to fit")
        X = self._design(n_in, n_out)
        w = 1.0 / np.maximum(y, 1e-9)
        coef, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
        self.coef_ = coef
        self.floor_ms_ = float(y.min())
        self.n_samples_ = int(y.size)
        self.max_in_ = float(np.max(n_in))
        self.max_out_ = float(np.max(n_out))
        return self

    def predict(self, n_in, n_out) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise NotFittedError("QuadraticLayerModel is not fitted; call fit first")
        return np.maximum(self._design(n_in, n_out) @ self.coef_, getattr(self, "floor_ms_", -np.inf))

    def to_dict(self) -> dict:
        d = {"type": "quadratic", "form": self.form}
        if hasattr(self, "coef_"):
            d.update(coef=[float(c) for c in self.coef_], n_samples=self.n_samples_, floor_ms=self.floor_ms_,
                     max_in=self.max_in_, max_out=self.max_out_)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QuadraticLayerModel:
        m = cls(form=d.get("form", "M6"))
        if "coef" in d:
            m.coef_ = np.asarray(d["coef"], dtype=float)
            m.n_samples_ = int(d["n_samples"])
            m.floor_ms_ = float(d.get("floor_ms", -np.inf))
            m.max_in_ = float(d["max_in"])
            m.max_out_ = float(d["max_out"])
        return m


def round_up(n, step: int | None, widest) -> np.ndarray:
    """``n`` rounded up to a multiple of ``step``; left as it is below one step
    (an image's 3 channels: narrow layers run other kernels) and where the
    multiple lies past ``widest`` (no rounding into widths never measured)."""
    n = np.asarray(n, dtype=np.int64)
    if not step or step <= 1:
        return n
    up = -(-n // step) * step
    return np.where((n > step) & (up <= np.asarray(widest, dtype=np.int64)), up, n)


class QuadraticModel(LayerModel):
    """One :class:`QuadraticLayerModel` per layer family (``form`` M6 or M5);
    ``step_channels``: round widths up to that step first (step-aware)."""

    name = "quadratic-m6"

    def __init__(self, form: str = "M6", step_channels: int | None = None):
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.form = form
        self.step_channels = step_channels

    def _fit(self, measurements) -> None:
        self.families_ = {}
        for fam, ms in family_groups(measurements).items():
            n_in = round_up([m.spec.in_channels for m in ms], self.step_channels,
                            max(m.spec.in_channels for m in ms))
            n_out = round_up([m.spec.out_channels for m in ms], self.step_channels,
                             max(m.spec.out_channels for m in ms))
            self.families_[fam] = QuadraticLayerModel(self.form).fit(n_in, n_out,
                                                                     [m.timing.median_ms for m in ms])

    def covers(self, spec) -> bool:
        self._check()
        return spec.family() in self.families_

    def predict_widths(self, spec, n_in, n_out) -> np.ndarray:
        self._check()
        q = self.families_.get(spec.family())
        if q is None:
            raise KeyError(f"no measurements for layer family {spec.family()}")
        n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64))
        if self.step_channels:
            n_in = round_up(n_in, self.step_channels, q.max_in_)
            n_out = round_up(n_out, self.step_channels, q.max_out_)
        return np.asarray(q.predict(n_in, n_out), dtype=float)

    def _predict(self, specs) -> np.ndarray:
        return np.array([float(self.predict_widths(s, s.in_channels, s.out_channels)) for s in specs])

    def _state(self) -> dict:
        return {"families": {k: v.to_dict() for k, v in self.families_.items()}}

    def _load_state(self, state: dict) -> None:
        self.families_ = {k: QuadraticLayerModel.from_dict(v) for k, v in state["families"].items()}


register("quadratic-m6", QuadraticModel, "per-family t = a + b n_in + c n_out + d n_in n_out (Jeong et al. M6)",
         form="M6")
register("quadratic-m5", QuadraticModel, "per-family t = a + b n_in + d n_in n_out (M5: no n_out-only term)",
         form="M5")
register("step-quadratic", QuadraticModel, "M6 on widths rounded up to the device step (what selection uses)",
         form="M6", step_channels=8)
