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

Off the grid is a different kernel: with ``align_channels`` (the device's
measured alignment, e.g. 4 on ONNX Runtime's CPU provider, whose blocked
NCHWc convolutions need input channels in multiples of 4), a layer whose input
width is not a multiple of it (:func:`misaligned`) runs the runtime's plain
kernels, measured 1.3x (dense 3x3) to 2.6x (depthwise) the time of the next
aligned width on an AVX-512 host, and not in blocks. Each family's quadratic
is fitted on its aligned samples (when it has at least :data:`MIN_ALIGNED` of
them); its misaligned samples get a quadratic of their own on the widths as
they are (from :data:`MIN_MISALIGNED` samples on), or else a factor (median
measured / aligned quadratic); a misaligned width of a family with neither
takes the median factor of the families that have one (1 when none has).
"""
from __future__ import annotations

import numpy as np

from .base import LayerModel, NotFittedError, family_groups, register

FORMS = ("M6", "M5")
MIN_ALIGNED = 4  # aligned samples a family needs before misaligned ones stop shaping its quadratic
MIN_MISALIGNED = 6  # misaligned samples a family needs for a quadratic of their own


def misaligned(spec, n_in, align: int | None, block: int | None = None, n_out=None) -> np.ndarray:
    """Input widths ``n_in`` of ``spec``'s family that are off the alignment
    (the layer's input channels; a depthwise layer's channels). Linear layers,
    and widths at most one alignment (an image's 3 channels), are never off it.
    With ``block`` (the runtime's channel block, the device step): a conv that
    is not grouped with fewer input channels than a block is never off it
    either, and a grouped conv (not depthwise) is off it unless its input and
    output channels per group (``n_out``, default ``n_in``; the spec's groups)
    are multiples of the block. ONNX Runtime's optimised graphs show it (1.32,
    AVX-512, block 16): a conv reading 3, 11 or 14 channels runs the blocked
    kernels reading its plain input as it is, while a depthwise conv of 14
    channels, a conv reading 66, or a 4-group conv of 96 channels (24 per
    group) run the plain ones; 4 groups of 16 or 32 run blocked."""
    n = np.asarray(n_in, dtype=np.int64)
    if not align or align <= 1 or spec.kind != "conv":
        return np.zeros(n.shape, dtype=bool)
    off = (n % int(align) != 0) & (n > int(align)) & ~reads_plain_input(spec, n, block)
    if block and block > 1 and spec.groups > 1 and not spec.depthwise:
        out = n if n_out is None else np.asarray(n_out, dtype=np.int64)
        g = int(spec.groups)
        off = off | ((n // g) % int(block) != 0) | ((out // g) % int(block) != 0)
    return off


def reads_plain_input(spec, n_in, block: int | None) -> np.ndarray:
    """Where ``spec``'s conv (not grouped) has fewer input channels than a
    ``block``: a blocked kernel reads such an input in the plain layout, so
    nothing is reordered in front of it."""
    n = np.asarray(n_in, dtype=np.int64)
    if not block or block <= 1 or spec.kind != "conv" or spec.groups != 1:
        return np.zeros(n.shape, dtype=bool)
    return n < int(block)


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

    def __init__(self, form: str = "M6", step_channels: int | None = None, align_channels: int | None = None):
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.form = form
        self.step_channels = step_channels
        self.align_channels = align_channels

    def _fit(self, measurements) -> None:
        self.families_, self.misaligned_, self.off_families_ = {}, {}, {}
        for fam, ms in family_groups(measurements).items():
            n_in = round_up([m.spec.in_channels for m in ms], self.step_channels,
                            max(m.spec.in_channels for m in ms))
            n_out = round_up([m.spec.out_channels for m in ms], self.step_channels,
                             max(m.spec.out_channels for m in ms))
            y = np.array([m.timing.median_ms for m in ms])
            off = misaligned(ms[0].spec, [m.spec.in_channels for m in ms], self.align_channels, self.step_channels,
                             [m.spec.out_channels for m in ms])
            on = ~off if (~off).sum() >= MIN_ALIGNED else np.ones_like(off)
            q = self.families_[fam] = QuadraticLayerModel(self.form).fit(n_in[on], n_out[on], y[on])
            if off.any():
                self.misaligned_[fam] = float(np.median(y[off] / q.predict(n_in[off], n_out[off])))
            raw_in = np.array([m.spec.in_channels for m in ms])[off]
            if off.sum() >= MIN_MISALIGNED and len(set(raw_in.tolist())) >= 2:
                raw_out = np.array([m.spec.out_channels for m in ms])[off]
                self.off_families_[fam] = QuadraticLayerModel(self.form).fit(raw_in, raw_out, y[off])
        self.misaligned_default_ = float(np.median(list(self.misaligned_.values()))) if self.misaligned_ else 1.0

    def covers(self, spec) -> bool:
        self._check()
        return spec.family() in self.families_

    def predict_widths(self, spec, n_in, n_out) -> np.ndarray:
        self._check()
        q = self.families_.get(spec.family())
        if q is None:
            raise KeyError(f"no measurements for layer family {spec.family()}")
        n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64))
        off = misaligned(spec, n_in, self.align_channels, self.step_channels, n_out)
        n_in_raw, n_out_raw = n_in, n_out
        if self.step_channels:
            n_in = round_up(n_in, self.step_channels, q.max_in_)
            n_out = round_up(n_out, self.step_channels, q.max_out_)
        v = np.asarray(q.predict(n_in, n_out), dtype=float)
        if off.any():
            own = getattr(self, "off_families_", {}).get(spec.family())
            if own is not None:
                raw_in, raw_out = np.broadcast_arrays(np.asarray(n_in_raw, dtype=np.int64),
                                                      np.asarray(n_out_raw, dtype=np.int64))
                return np.where(off, own.predict(raw_in, raw_out), v)
            factors = getattr(self, "misaligned_", {})
            v = np.where(off, v * factors.get(spec.family(), getattr(self, "misaligned_default_", 1.0)), v)
        return v

    def _predict(self, specs) -> np.ndarray:
        return np.array([float(self.predict_widths(s, s.in_channels, s.out_channels)) for s in specs])

    def _state(self) -> dict:
        return {"families": {k: v.to_dict() for k, v in self.families_.items()},
                "misaligned": dict(getattr(self, "misaligned_", {})),
                "off_families": {k: v.to_dict() for k, v in getattr(self, "off_families_", {}).items()},
                "misaligned_default": getattr(self, "misaligned_default_", 1.0)}

    def _load_state(self, state: dict) -> None:
        self.families_ = {k: QuadraticLayerModel.from_dict(v) for k, v in state["families"].items()}
        self.misaligned_ = {k: float(v) for k, v in state.get("misaligned", {}).items()}
        self.off_families_ = {k: QuadraticLayerModel.from_dict(v) for k, v in state.get("off_families", {}).items()}
        self.misaligned_default_ = float(state.get("misaligned_default", 1.0))


register("quadratic-m6", QuadraticModel, "per-family t = a + b n_in + c n_out + d n_in n_out (Jeong et al. M6)",
         form="M6")
register("quadratic-m5", QuadraticModel, "per-family t = a + b n_in + d n_in n_out (M5: no n_out-only term)",
         form="M5")
register("step-quadratic", QuadraticModel, "M6 on widths rounded up to the device step (what selection uses)",
         form="M6", step_channels=8)
