"""How well predictions match measurements.

Errors are relative: ``(predicted - measured) / measured``. A report gives
the root mean square of them (RMSPE, in %), the largest absolute one, the
mean (a bias: negative means the model under-predicts), and the share of
predictions within +-5 % and +-10 % (nn-Meter reports the latter).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Accuracy:
    count: int
    rmspe_pct: float
    max_error_pct: float    # largest |error|
    mean_error_pct: float   # signed: < 0 under-predicts
    within_5_pct: float     # share of predictions within +-5 %, in %
    within_10_pct: float

    def to_dict(self) -> dict:
        return asdict(self)


def relative_errors(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> np.ndarray:
    p = np.asarray(predicted_ms, dtype=float)
    m = np.asarray(measured_ms, dtype=float)
    if p.shape != m.shape:
        raise ValueError(f"{p.size} predictions for {m.size} measurements")
    if np.any(m <= 0) or not np.all(np.isfinite(m)):
        raise ValueError("measured latencies must be positive and finite")
    return (p - m) / m


def accuracy(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> Accuracy:
    e = relative_errors(predicted_ms, measured_ms)
    if e.size == 0:
        raise ValueError("no predictions to score")
    a = np.abs(e)
    return Accuracy(count=int(e.size), rmspe_pct=float(100 * np.sqrt(np.mean(e ** 2))),
                    max_error_pct=float(100 * a.max()), mean_error_pct=float(100 * e.mean()),
                    within_5_pct=float(100 * np.mean(a <= 0.05 + 1e-9)),
                    within_10_pct=float(100 * np.mean(a <= 0.10 + 1e-9)))
