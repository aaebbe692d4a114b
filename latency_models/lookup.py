"""Lookup table of measured layer latencies, interpolated between widths
(HALP, NetAdapt).

Per layer family, the measured (n_in, n_out) -> ms. A width pair that was
measured is answered as measured. Otherwise the answer is interpolated
bilinearly between the neighbouring measured widths, and beyond the widest
(or below the narrowest) measured width extrapolated linearly from the last
two. The measured pairs of a family normally form a grid (every measured
input width with every measured output width); where some cells of that grid
were not measured they are filled, before interpolating, by the family's M6
quadratic fitted to the cells that were. Depthwise families (one width) and
families measured at a single input or output width interpolate in one
dimension.

A *full* table measures every width pair on the device grid: ``full_grid_size``
counts those pairs, the number of measurements a pure lookup table needs.
"""
from __future__ import annotations

import numpy as np

from .base import LayerModel, family_groups, register
from .quadratic import QuadraticLayerModel


def _interp1(x: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Piecewise-linear through (xs, ys), extrapolated linearly at both ends."""
    if len(xs) == 1:
        return np.full(np.shape(x), ys[0], dtype=float)
    i = np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2)
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + t * (ys[i + 1] - ys[i])


class _FamilyTable:
    def __init__(self, ins: np.ndarray, outs: np.ndarray, grid: np.ndarray, diagonal: bool):
        self.ins, self.outs, self.grid, self.diagonal = ins, outs, grid, diagonal

    @classmethod
    def build(cls, n_in, n_out, ms, depthwise: bool) -> _FamilyTable:
        n_in, n_out, ms = (np.asarray(v) for v in (n_in, n_out, ms))
        if depthwise:   # one width: n_in == n_out
            order = np.argsort(n_out)
            return cls(n_out[order].astype(float), n_out[order].astype(float), ms[order].astype(float), True)
        ins, outs = np.unique(n_in).astype(float), np.unique(n_out).astype(float)
        grid = np.full((len(ins), len(outs)), np.nan)
        grid[np.searchsorted(ins, n_in), np.searchsorted(outs, n_out)] = ms
        holes = np.isnan(grid)
        if holes.any():
            q = QuadraticLayerModel("M6").fit(n_in, n_out, ms)
            a, b = np.meshgrid(ins, outs, indexing="ij")
            grid[holes] = q.predict(a[holes], b[holes])
        return cls(ins, outs, grid, False)

    def predict(self, n_in, n_out) -> np.ndarray:
        n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=float), np.asarray(n_out, dtype=float))
        if self.diagonal:
            return _interp1(n_out, self.outs, self.grid)
        # interpolate along n_out inside every measured row, then along n_in
        rows = np.stack([_interp1(n_out.ravel(), self.outs, r) for r in self.grid])  # (len(ins), N)
        flat_in = n_in.ravel()
        if len(self.ins) == 1:
            return rows[0].reshape(n_in.shape)
        i = np.clip(np.searchsorted(self.ins, flat_in) - 1, 0, len(self.ins) - 2)
        t = (flat_in - self.ins[i]) / (self.ins[i + 1] - self.ins[i])
        cols = np.arange(flat_in.size)
        v = rows[i, cols] + t * (rows[i + 1, cols] - rows[i, cols])
        return v.reshape(n_in.shape)

    def to_dict(self) -> dict:
        return {"ins": self.ins.tolist(), "outs": self.outs.tolist(), "grid": np.asarray(self.grid).tolist(),
                "diagonal": self.diagonal}

    @classmethod
    def from_dict(cls, d: dict) -> _FamilyTable:
        return cls(np.asarray(d["ins"], float), np.asarray(d["outs"], float), np.asarray(d["grid"], float),
                   bool(d["diagonal"]))


class LookupTableModel(LayerModel):
    """Measured latencies per family, bilinear between measured widths; the
    smallest prediction is kept positive (a tenth of the fastest measurement)."""

    name = "lookup"

    def __init__(self):
        pass

    def _fit(self, measurements) -> None:
        self.tables_ = {}
        self.floor_ms_ = {}
        for fam, ms in family_groups(measurements).items():
            y = [m.timing.median_ms for m in ms]
            self.tables_[fam] = _FamilyTable.build([m.spec.in_channels for m in ms],
                                                   [m.spec.out_channels for m in ms], y, ms[0].spec.depthwise)
            self.floor_ms_[fam] = 0.1 * min(y)

    def covers(self, spec) -> bool:
        self._check()
        return spec.family() in self.tables_

    def predict_widths(self, spec, n_in, n_out) -> np.ndarray:
        self._check()
        fam = spec.family()
        if fam not in self.tables_:
            raise KeyError(f"no measurements for layer family {fam}")
        return np.maximum(self.tables_[fam].predict(n_in, n_out), self.floor_ms_[fam])

    def _predict(self, specs) -> np.ndarray:
        return np.array([float(self.predict_widths(s, s.in_channels, s.out_channels)) for s in specs])

    def _state(self) -> dict:
        return {"tables": {k: t.to_dict() for k, t in self.tables_.items()}, "floor_ms": self.floor_ms_}

    def _load_state(self, state: dict) -> None:
        self.tables_ = {k: _FamilyTable.from_dict(v) for k, v in state["tables"].items()}
        self.floor_ms_ = {k: float(v) for k, v in state["floor_ms"].items()}


def full_grid_size(family_widths: dict[str, tuple[list[int], list[int], bool]]) -> int:
    """Measurements a full lookup table needs: per family, every input width
    times every output width on the grid (depthwise families: their widths).
    ``family_widths``: family -> (input widths, output widths, depthwise)."""
    total = 0
    for ins, outs, depthwise in family_widths.values():
        total += len(set(outs)) if depthwise else len(set(ins)) * len(set(outs))
    return total


register("lookup", LookupTableModel, "measured widths as measured, bilinear in between (HALP, NetAdapt)")
