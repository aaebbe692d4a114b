"""Network latency = sum of per-layer predictions + a fitted remainder.

The layers are predicted by any registered layer model (``layer_model``: a
name from ``latency_models.list_models()`` or an unfitted instance; default
the step-aware quadratic). The remainder covers what is not a conv or linear
layer (adds, pools, concats, BatchNorm where the runtime does not fuse it,
session overhead), minus the per-call overhead counted once per isolated
layer measurement, plus the cost of streaming weights that do not stay in
cache in a whole network. It is ``c0 + c1 * activation_elements + c2 *
weight_elements + c3 * sum(layer predictions)`` (c1, c2 >= 0, c3 >= -0.5),
fitted from whole-model measurements
(:meth:`NetworkLatencyModel.fit_remainder`). ``c3`` rescales the isolated
layers to their cost inside the network: on ONNX Runtime an isolated small
layer pays for its input's and output's layout reorders and the call, which a
network pays once, so the sum of isolated mobilenetv2 layers is 1.3-4x the
network (measured); it is fitted only from ``SCALE_MIN_ROWS`` networks on.
Every term runs over the layers, so every layer's share of the remainder is
known (``layer_cost_ms``) and the selector's per-layer tables add up to
:meth:`NetworkLatencyModel.predict`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from profilers import LayerSpec, Measurement
from profilers.specs import weight_count

from .base import LayerModel, NotFittedError, create, family_groups, model_from_dict
from .quadratic import QuadraticLayerModel, QuadraticModel

SCALE_MIN_ROWS = 8  # whole-model measurements before the layer scale c3 is fitted
# 1 + c3 >= this: the layers keep at least half their say. Unbounded, the fit
# on ORT resnet56 and torch mobilenetv2 replaced them entirely by activations
# and weights (nearly collinear with them), no more accurate on 50 other
# networks (RMSPE 2.1 vs 2.3 % and 1.9 vs 1.9 %) and blind to the device step.
MIN_LAYER_SCALE = 0.5


def weight_elements(specs: Iterable[LayerSpec]) -> int:
    """Weights of the layers: a network whose weights outgrow the CPU's caches
    streams them from memory on every run, which an isolated layer, measured
    warm, never does."""
    return sum(weight_count(s) for s in specs)


def activation_elements(specs: Iterable[LayerSpec]) -> int:
    """Elements written by the layers: a proxy for elementwise work around them."""
    total = 0
    for s in specs:
        oh, ow = s.out_hw
        total += s.batch * s.out_channels * oh * ow
    return total


def _fresh(model: LayerModel) -> LayerModel:
    return type(model)(**model.get_params())


class NetworkLatencyModel:
    """``layer_model``: registered name or unfitted :class:`LayerModel`;
    ``step_channels``: the device step, passed to the layer model (the
    step-aware quadratic rounds widths up to it).

    ``use_table``: a measured (family, n_in, n_out) is answered as measured;
    the layer model covers widths not measured. Off by default: isolated small
    layers on a CPU measure non-monotonically (kernel choices, per-call
    overhead), and a table that says a narrower layer is slower stalls a
    selector; the least-squares quadratic smooths that out."""

    def __init__(self, layer_model: str | LayerModel = "step-quadratic", use_table: bool = False,
                 step_channels: int | None = None):
        self.layer_model = layer_model
        self.use_table = use_table
        self.step_channels = step_channels

    def _new_layer_model(self) -> LayerModel:
        if isinstance(self.layer_model, LayerModel):
            return _fresh(self.layer_model)
        extra = {} if self.step_channels is None else {"step_channels": self.step_channels}
        return create(self.layer_model, **extra)

    def fit(self, measurements: Sequence[Measurement]) -> NetworkLatencyModel:
        measurements = list(measurements)
        self.layers_ = self._new_layer_model().fit(measurements)
        self.table_ = {fam: {(m.spec.in_channels, m.spec.out_channels): m.timing.median_ms for m in ms}
                       for fam, ms in family_groups(measurements).items()}
        self.remainder_ = (0.0, 0.0, 0.0)
        return self

    # ---- the per-family quadratics of a quadratic layer model -------------
    @property
    def families_(self) -> dict[str, QuadraticLayerModel]:
        """Per-family quadratics (empty for other layer models)."""
        return getattr(self.layers_, "families_", {})

    @families_.setter
    def families_(self, families: dict[str, QuadraticLayerModel]) -> None:
        q = QuadraticModel("M6")
        q.families_, q.n_measurements_ = dict(families), sum(f.n_samples_ for f in families.values()
                                                            if hasattr(f, "n_samples_"))
        self.layers_ = q
        self.__dict__.setdefault("table_", {})

    def _check(self) -> None:
        if not hasattr(self, "layers_"):
            raise NotFittedError("NetworkLatencyModel is not fitted; call fit first")

    @property
    def n_measurements_(self) -> int:
        """Layer measurements the layer model was fitted on."""
        self._check()
        return self.layers_.n_measurements_

    def missing(self, specs: Iterable[LayerSpec]) -> list[LayerSpec]:
        self._check()
        return self.layers_.missing(specs)

    # ---- layers ------------------------------------------------------------
    def layer_ms(self, spec: LayerSpec) -> float:
        self._check()
        if self.use_table:
            measured = self.table_.get(spec.family(), {}).get((spec.in_channels, spec.out_channels))
            if measured is not None:
                return measured
        return float(self.layers_.predict_widths(spec, spec.in_channels, spec.out_channels))

    def layer_widths_ms(self, spec: LayerSpec, n_in, n_out) -> np.ndarray:
        """:meth:`layer_ms` of ``spec``'s family over arrays of widths (broadcast)."""
        self._check()
        n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64))
        v = np.asarray(self.layers_.predict_widths(spec, n_in, n_out), dtype=float).reshape(n_in.shape).copy()
        if self.use_table:
            for (a, b), ms in self.table_.get(spec.family(), {}).items():
                v[(n_in == a) & (n_out == b)] = ms
        return v

    def layers_ms(self, specs: Sequence[LayerSpec]) -> float:
        return float(sum(self.layer_ms(s) for s in specs))

    # ---- remainder -----------------------------------------------------------
    def remainder_coef(self) -> tuple[float, float, float, float]:
        """``(c0, c1, c2, c3)``; terms a model was not fitted with are 0."""
        c = tuple(getattr(self, "remainder_", ())) + (0.0, 0.0, 0.0, 0.0)
        return float(c[0]), float(c[1]), float(c[2]), float(c[3])

    def _remainder_ms(self, specs: Sequence[LayerSpec], layers_ms: float) -> float:
        c0, c1, c2, c3 = self.remainder_coef()
        return c0 + c1 * activation_elements(specs) + c2 * weight_elements(specs) + c3 * layers_ms

    def remainder_ms(self, specs: Sequence[LayerSpec]) -> float:
        specs = list(specs)
        return self._remainder_ms(specs, self.layers_ms(specs) if self.remainder_coef()[3] else 0.0)

    def layer_cost_ms(self, spec: LayerSpec) -> float:
        """The layer's prediction plus its share of the remainder (all but ``c0``)."""
        _, c1, c2, c3 = self.remainder_coef()
        return (1 + c3) * self.layer_ms(spec) + c1 * activation_elements([spec]) + c2 * weight_elements([spec])

    def const_ms(self) -> float:
        """The part of the remainder no layer owns (``c0``)."""
        return self.remainder_coef()[0]

    def predict(self, specs: Sequence[LayerSpec]) -> float:
        specs = list(specs)
        layers = self.layers_ms(specs)
        return layers + self._remainder_ms(specs, layers)

    def fit_remainder(self, rows: Sequence[tuple[Sequence[LayerSpec], float]]) -> NetworkLatencyModel:
        """Fit ``c0 + c1*activations + c2*weights + c3*layers`` (c1, c2 >= 0,
        c3 >= MIN_LAYER_SCALE - 1) to ``measured - sum(layers)`` over whole-model measurements
        ``rows = [(specs, ms), ...]``, by least squares on the relative error
        (each row weighted by 1/ms, so a narrow network's few tenths of a ms
        count as much as a wide one's); with fewer rows than terms, the later
        terms are left at 0, and ``c3`` needs ``SCALE_MIN_ROWS`` rows."""
        from scipy.optimize import lsq_linear
        self._check()
        rows = list(rows)
        if not rows:
            self.remainder_ = (0.0, 0.0, 0.0, 0.0)
            return self
        measured = np.array([ms for _, ms in rows], dtype=float)
        layers = np.array([self.layers_ms(specs) for specs, _ in rows])
        feats = np.array([[1.0, activation_elements(specs), weight_elements(specs), total]
                          for (specs, _), total in zip(rows, layers)])
        k = 4 if len(rows) >= SCALE_MIN_ROWS else min(3, len(rows))
        scale = np.maximum(np.abs(feats[:, :k]).max(axis=0), 1.0)
        w = 1.0 / np.maximum(measured, 1e-9)
        lower = np.array([-np.inf, 0.0, 0.0, MIN_LAYER_SCALE - 1.0])[:k] * np.r_[1.0, scale[1:]]  # scaled units
        sol = lsq_linear(feats[:, :k] / scale * w[:, None], (measured - layers) * w,
                         bounds=(lower, [np.inf] * k)).x
        coef = [float(c) for c in sol / scale]
        self.remainder_ = tuple(coef + [0.0] * (4 - len(coef)))
        return self

    # ---- serialisation -----------------------------------------------------
    def to_dict(self) -> dict:
        self._check()
        return {"type": "network", "use_table": self.use_table, "step_channels": self.step_channels,
                "layer_model": self.layer_model if isinstance(self.layer_model, str) else None,
                "remainder": list(self.remainder_), "layers": self.layers_.to_dict(),
                "table": {k: [[a, b, ms] for (a, b), ms in t.items()] for k, t in self.table_.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> NetworkLatencyModel:
        layers = model_from_dict(d["layers"]) if "layers" in d else None
        m = cls(layer_model=d.get("layer_model") or (_fresh(layers) if layers else "quadratic-m6"),
                use_table=d.get("use_table", False), step_channels=d.get("step_channels"))
        if layers is not None:
            m.layers_ = layers
        else:  # the earlier format: one quadratic per family
            m.families_ = {k: QuadraticLayerModel.from_dict(v) for k, v in d["families"].items()}
        m.table_ = {k: {(a, b): ms for a, b, ms in rows} for k, rows in d.get("table", {}).items()}
        m.remainder_ = tuple(d.get("remainder", (0.0, 0.0, 0.0)))
        return m
