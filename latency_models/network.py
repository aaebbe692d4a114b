"""Network latency = sum of per-layer predictions + a fitted remainder.

The layers are predicted by any registered layer model (``layer_model``: a
name from ``latency_models.list_models()`` or an unfitted instance; default
the step-aware quadratic). The remainder covers what is not a conv or linear
layer (adds, pools, concats, BatchNorm where the runtime does not fuse it,
session overhead), minus the per-call overhead counted once per isolated
layer measurement, plus the cost of streaming weights that do not stay in
cache in a whole network. It is ``c0 + c3 * sum(layers) - c6 *
sum(reorders saved) + c1 * activation_elements + c2 * weight_elements``
(c1, c2, c6 >= 0, c3 >= MIN_LAYER_SCALE - 1), plus ``c5 * layers`` (c5 >= 0, a
cost per layer present, for the operators around it: what a runtime that pays
per operator, eager PyTorch at batch 1, pays) where the rows' numbers of
layers differ (networks with residual blocks removed), fitted from
whole-model measurements (:meth:`NetworkLatencyModel.fit_remainder`), its
terms taken in the order c0, c3, c6, c5, c1, c2 as the rows allow (one term
fewer than rows, so a fit never interpolates).
``c3`` rescales the isolated layers to their cost inside the network (per-call
overhead, caches). ``c6`` is the price of one element of a layout reorder:
on ONNX Runtime a layer whose input width is on the alignment (``align_channels``,
see :func:`latency_models.quadratic.misaligned`) runs blocked (NCHWc)
kernels, and measured alone it pays for reordering its input and output,
which a chain of such layers inside a network does not, while a network
mixing blocked and plain layers pays a reorder at every change
(:func:`latency_models.layout.reorder_saved_elements`): free-width depthwise networks went from
57 to 93 % of predictions within +-10 % (AVX-512). Where every layer runs
blocked, reorders are a multiple of activations and c6 is fitted instead of
c1 (67 to 80 % of plans within +-10 % on seven networks, with the split
calibration networks of :mod:`hwprune.loop.fastest`). A saved model's
separate scale for misaligned layers (``c4``) still predicts.
Every term runs over the layers, so every layer's share of the remainder is
known (``layer_cost_ms``) and the selector's tables add up to :meth:`predict`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from profilers import LayerSpec, Measurement
from profilers.specs import weight_count

from .base import LayerModel, NotFittedError, create, family_groups, model_from_dict
from .layout import reorder_saved_elements
from .quadratic import QuadraticLayerModel, QuadraticModel, misaligned

# 1 + c3 >= this: the layers keep at least half their say. Unbounded, the fit
# on ORT resnet56 and torch mobilenetv2 replaced them entirely by activations
# and weights (nearly collinear with them), no more accurate on 50 other
# networks (RMSPE 2.1 vs 2.3 % and 1.9 vs 1.9 %) and blind to the device step.
MIN_LAYER_SCALE = 0.35
# the weight of the reference row in the remainder's fit: every prediction is judged as a ratio to that
# network, so its own error enters them all. Refitted offline on 12 networks measured per architecture,
# weight 10 against 1 took free-width sub-networks within +-5 % from 65 to 95 % (groupednet) and from
# 25 to 20-30 % (invresnet; its full network off by 13-16 % either way: the remainder cannot fit it)
REFERENCE_WEIGHT = 10.0
# the reorder term is fitted only where the rows' reorder elements per activation element spread by more
# than this (networks mixing blocked and plain layers), see :func:`independent`
REORDER_SPREAD = 0.1


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


def independent(reorders: np.ndarray, activations: np.ndarray, spread: float = REORDER_SPREAD) -> bool:
    """Whether rows' reorder elements say more than their activation elements:
    in networks whose layers all run blocked (every width on the alignment)
    a layer saves the reorders of its input and output, about twice its
    activations in every network, and a reorder price fitted beside an
    activation price would only trade against it (measured: mobilenetv2's
    greedy plans predicted 25-60 % fast). Their ratio must spread by more than
    ``spread`` (relative); where it does not, the remainder fits the reorder
    price alone (:meth:`NetworkLatencyModel.fit_remainder`)."""
    r = np.abs(reorders) / np.maximum(activations, 1e-12)
    return bool(r.max() > 0 and (r.min() <= 0 or r.max() / r.min() - 1 > spread))


def _fresh(model: LayerModel) -> LayerModel:
    return type(model)(**model.get_params())


class NetworkLatencyModel:
    """``layer_model``: registered name or unfitted :class:`LayerModel`;
    ``step_channels``: the device step, passed to the layer model (the
    step-aware quadratic rounds widths up to it).

    ``footing_`` (set by whoever fits it, default 1): every layer's cost is
    multiplied by it, the host's speed when the whole networks were measured
    over its speed when the layer profile was (its anchor moment).

    ``use_table``: a measured (family, n_in, n_out) is answered as measured;
    the layer model covers widths not measured. Off by default: isolated small
    layers on a CPU measure non-monotonically (kernel choices, per-call
    overhead), and a table that says a narrower layer is slower stalls a
    selector; the least-squares quadratic smooths that out."""

    def __init__(self, layer_model: str | LayerModel = "step-quadratic", use_table: bool = False,
                 step_channels: int | None = None, align_channels: int | None = None):
        self.layer_model = layer_model
        self.use_table = use_table
        self.step_channels = step_channels
        self.align_channels = align_channels

    def _new_layer_model(self) -> LayerModel:
        if isinstance(self.layer_model, LayerModel):
            return _fresh(self.layer_model)
        extra = {k: v for k, v in (("step_channels", self.step_channels), ("align_channels", self.align_channels))
                 if v is not None}
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
    @property
    def footing(self) -> float:
        """The factor from the layer profile's footing to the host's now (``footing_``; 1 where not set)."""
        return float(getattr(self, "footing_", 1.0))

    def layer_ms(self, spec: LayerSpec) -> float:
        self._check()
        if self.use_table:
            measured = self.table_.get(spec.family(), {}).get((spec.in_channels, spec.out_channels))
            if measured is not None:
                return measured * self.footing
        return float(self.layers_.predict_widths(spec, spec.in_channels, spec.out_channels)) * self.footing

    def layer_widths_ms(self, spec: LayerSpec, n_in, n_out) -> np.ndarray:
        """:meth:`layer_ms` of ``spec``'s family over arrays of widths (broadcast)."""
        n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64))
        if type(self).layer_ms is not NetworkLatencyModel.layer_ms:  # a subclass that predicts one spec at a time
            flat = [self.layer_ms(replace(spec, in_channels=a, out_channels=b, groups=a if spec.depthwise else
                                          spec.groups)) for a, b in zip(n_in.ravel().tolist(), n_out.ravel().tolist())]
            return np.array(flat, dtype=float).reshape(n_in.shape)
        self._check()
        v = np.asarray(self.layers_.predict_widths(spec, n_in, n_out), dtype=float).reshape(n_in.shape).copy()
        if self.use_table:
            for (a, b), ms in self.table_.get(spec.family(), {}).items():
                v[(n_in == a) & (n_out == b)] = ms
        return v * self.footing

    def layers_ms(self, specs: Sequence[LayerSpec]) -> float:
        return float(sum(self.layer_ms(s) for s in specs))

    # ---- remainder -----------------------------------------------------------
    def remainder_coef(self) -> tuple[float, float, float, float, float]:
        """``(c0, c1, c2, c3, c4)``; terms a model was not fitted with are 0 (a
        model saved before ``c4`` existed scales every layer by ``c3``)."""
        c = tuple(getattr(self, "remainder_", ()))
        c = c + (0.0,) * (4 - len(c)) if len(c) < 4 else c
        c4 = c[4] if len(c) > 4 else c[3]
        return float(c[0]), float(c[1]), float(c[2]), float(c[3]), float(c4)

    def op_ms(self) -> float:
        """``c5``: the remainder's cost per layer present (0 where not fitted)."""
        c = tuple(getattr(self, "remainder_", ()))
        return float(c[5]) if len(c) > 5 else 0.0

    def reorder_ms_per_element(self) -> float:
        """``c6``: what one element of a layout reorder costs (0 where not fitted)."""
        c = tuple(getattr(self, "remainder_", ()))
        return float(c[6]) if len(c) > 6 else 0.0

    def reorder_saved(self, spec: LayerSpec, n_in, n_out) -> np.ndarray:
        """:func:`reorder_saved_elements` on the device's alignment."""
        return reorder_saved_elements(spec, n_in, n_out, self.align_channels, self.step_channels)

    def misaligned(self, spec: LayerSpec, n_in=None, n_out=None) -> np.ndarray:
        """Whether widths ``n_in`` in, ``n_out`` out (default the spec's) of ``spec`` are off the device's alignment."""
        return misaligned(spec, spec.in_channels if n_in is None else n_in, self.align_channels, self.step_channels,
                          spec.out_channels if n_out is None else n_out)

    def layer_cost_widths_ms(self, spec: LayerSpec, n_in, n_out) -> np.ndarray:
        """A layer's cost inside the network over arrays of widths: its prediction
        times its scale (``1 + c3``, or ``1 + c4`` off the alignment) plus its
        share of the remainder's activation, weight and per-layer terms (all but ``c0``)."""
        n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64))
        _, c1, c2, c3, c4 = self.remainder_coef()
        scale = 1.0 + np.where(self.misaligned(spec, n_in, n_out), c4, c3)
        oh, ow = spec.out_hw
        c6 = self.reorder_ms_per_element()
        saved = self.reorder_saved(spec, n_in, n_out) if c6 else 0.0
        return (scale * self.layer_widths_ms(spec, n_in, n_out) + c1 * spec.batch * oh * ow * n_out
                + c2 * weight_count(spec, n_in, n_out) + self.op_ms() - c6 * saved)

    def layer_cost_ms(self, spec: LayerSpec) -> float:
        """The layer's prediction plus its share of the remainder (all but ``c0``)."""
        return float(self.layer_cost_widths_ms(spec, spec.in_channels, spec.out_channels))

    def const_ms(self) -> float:
        """The part of the remainder no layer owns (``c0``)."""
        return self.remainder_coef()[0]

    def predict(self, specs: Sequence[LayerSpec]) -> float:
        return self.const_ms() + float(sum(self.layer_cost_ms(s) for s in specs))

    def remainder_ms(self, specs: Sequence[LayerSpec]) -> float:
        specs = list(specs)
        return self.predict(specs) - self.layers_ms(specs)

    def fit_remainder(self, rows: Sequence[tuple[Sequence[LayerSpec], float]],
                      reference: int | None = None) -> NetworkLatencyModel:
        """Fit the remainder's terms to ``measured - sum(layers)`` over whole-model
        measurements ``rows = [(specs, ms), ...]`` by least squares on the relative
        error (each row weighted by 1/ms, so a narrow network's few tenths of a ms
        count as much as a wide one's). ``reference``: the index of the row the
        others are judged against (the original network: a budget given as a
        fraction, and every ratio, divide by it), whose error weighs
        :data:`REFERENCE_WEIGHT` times, so the fit passes close to it. Terms
        in order ``c0, c3, c6, c5, c1, c2``, one fewer than rows; ``c6`` only
        where the rows' reorders (relative to their layers) differ, ``c5``
        only where their numbers of layers differ, ``c1`` not where reorders
        are a fixed multiple of activations (:func:`independent`; there c6 is
        the activations' price, negative); c1, c2, c5, c6 >= 0, c3 >=
        MIN_LAYER_SCALE - 1.
        Misaligned layers take the
        aligned ones' scale (``c4 = c3``)."""
        from scipy.optimize import lsq_linear
        self._check()
        rows = list(rows)
        self.fit_error_rel_ = 0.0
        if not rows:
            self.remainder_ = (0.0, 0.0, 0.0, 0.0, 0.0)
            return self
        measured = np.array([ms for _, ms in rows], dtype=float)
        layers = np.array([self.layers_ms(specs) for specs, _ in rows])
        cols = {"c0": np.ones(len(rows)), "c3": layers,
                "c1": np.array([activation_elements(sp) for sp, _ in rows], dtype=float),
                "c2": np.array([weight_elements(sp) for sp, _ in rows], dtype=float),
                "c5": np.array([len(list(sp)) for sp, _ in rows], dtype=float),
                "c6": -np.array([sum(float(self.reorder_saved(s, s.in_channels, s.out_channels)) for s in sp)
                                 for sp, _ in rows])}
        counts_vary = np.ptp(cols["c5"]) > 0
        reorders_vary = np.ptp(cols["c6"] / np.maximum(layers, 1e-12)) > 0
        with_c1 = not reorders_vary or independent(cols["c6"], cols["c1"])
        order = [n for n in ("c0", "c3", "c6", "c5", "c1", "c2")
                 if (n != "c5" or counts_vary) and (n != "c6" or reorders_vary) and (n != "c1" or with_c1)
                 ][:max(1, len(rows) - 1)]
        feats = np.stack([cols[n] for n in order], axis=1)
        scale = np.maximum(np.abs(feats).max(axis=0), 1e-12)
        w = 1.0 / np.maximum(measured, 1e-9)
        if reference is not None:
            w[reference] *= REFERENCE_WEIGHT
        low = {"c0": -np.inf, "c3": MIN_LAYER_SCALE - 1.0, "c1": 0.0, "c2": 0.0, "c5": 0.0, "c6": 0.0}
        lower = np.array([low[n] for n in order]) * np.where(np.isin(order, ["c3"]), scale, 1.0)
        sol = lsq_linear(feats / scale * w[:, None], (measured - layers) * w,
                         bounds=(lower, [np.inf] * len(order))).x
        coef = dict(zip(order, (float(c) for c in sol / scale)))
        self.remainder_ = (coef.get("c0", 0.0), coef.get("c1", 0.0), coef.get("c2", 0.0), coef.get("c3", 0.0),
                           coef.get("c3", 0.0))
        if "c5" in coef or "c6" in coef:
            self.remainder_ += (coef.get("c5", 0.0),) + ((coef["c6"],) if "c6" in coef else ())
        predicted = np.array([self.predict(specs) for specs, _ in rows])
        self.fit_error_rel_ = float(np.sqrt(np.mean((predicted / measured - 1.0) ** 2)))
        return self

    @property
    def fit_error_rel(self) -> float:
        """How far the model misses the whole networks its remainder was last
        fitted on: the root mean square of predicted / measured - 1 over them
        (0 before any were)."""
        return float(getattr(self, "fit_error_rel_", 0.0))

    # ---- serialisation -----------------------------------------------------
    def to_dict(self) -> dict:
        self._check()
        return {"type": "network", "use_table": self.use_table, "step_channels": self.step_channels,
                "align_channels": self.align_channels,
                "layer_model": self.layer_model if isinstance(self.layer_model, str) else None,
                "remainder": list(self.remainder_), "layers": self.layers_.to_dict(), "footing": self.footing,
                "table": {k: [[a, b, ms] for (a, b), ms in t.items()] for k, t in self.table_.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> NetworkLatencyModel:
        layers = model_from_dict(d["layers"]) if "layers" in d else None
        m = cls(layer_model=d.get("layer_model") or (_fresh(layers) if layers else "quadratic-m6"),
                use_table=d.get("use_table", False), step_channels=d.get("step_channels"),
                align_channels=d.get("align_channels"))
        if layers is not None:
            m.layers_ = layers
        else:  # the earlier format: one quadratic per family
            m.families_ = {k: QuadraticLayerModel.from_dict(v) for k, v in d["families"].items()}
        m.table_ = {k: {(a, b): ms for a, b, ms in rows} for k, rows in d.get("table", {}).items()}
        m.remainder_ = tuple(d.get("remainder", (0.0, 0.0, 0.0)))
        m.footing_ = float(d.get("footing", 1.0))
        return m
