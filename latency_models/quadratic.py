"""Per-layer quadratic latency model (METHODS.md section 1).

``t = a + b*n_in + c*n_out + d*n_in*n_out`` ("M6") or without the ``c*n_out``
term ("M5"), fitted by least squares on measured (n_in, n_out, ms) samples of
one layer family. Estimator conventions follow scikit-learn: the constructor
stores arguments, ``fit`` returns self, learned state ends in ``_``.
"""
from __future__ import annotations

import numpy as np

FORMS = ("M6", "M5")


class NotFittedError(RuntimeError):
    pass


class QuadraticLayerModel:
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

    def fit(self, n_in, n_out, latency_ms) -> "QuadraticLayerModel":
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
    def from_dict(cls, d: dict) -> "QuadraticLayerModel":
        m = cls(form=d.get("form", "M6"))
        if "coef" in d:
            m.coef_ = np.asarray(d["coef"], dtype=float)
            m.n_samples_ = int(d["n_samples"])
            m.floor_ms_ = float(d.get("floor_ms", -np.inf))
            m.max_in_ = float(d["max_in"])
            m.max_out_ = float(d["max_out"])
        return m
