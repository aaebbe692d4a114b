"""One estimator API for layer latency models, and the registry of their names.

A layer model predicts the latency (ms) of single layers (:class:`LayerSpec`)
from measurements of single layers (:class:`Measurement`). It follows the
scikit-learn conventions: the constructor only stores its arguments,
:meth:`LayerModel.fit` returns ``self``, learned state ends in ``_``,
:meth:`LayerModel.predict` raises :class:`NotFittedError` before ``fit``, and
``to_dict`` / :func:`model_from_dict` round-trip a fitted model through JSON.

Registered names (:data:`MODELS`, a :class:`profilers.registry.Registry`;
``list_models()``) map to a class and default arguments, so
``create("step-quadratic", step_channels=8)`` builds a fitted-to-be model; a
network model (:class:`latency_models.network.NetworkLatencyModel`) takes any
of them for its layers.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from types import MappingProxyType

import numpy as np

from profilers import LayerSpec, Measurement
from profilers.registry import Registry


class NotFittedError(RuntimeError):
    """``predict`` (or ``to_dict``) was called before ``fit``."""


class LayerModel:
    """Base of every layer latency model. Subclasses implement ``_fit`` (set the
    learned state), ``_predict`` (ms for a list of specs), ``_state`` /
    ``_load_state`` (JSON-friendly learned state) and, if the model only
    covers the layer families it was fitted on, ``covers``."""

    name = ""           # the registry name this class is created under by default
    per_family = True   # predictions need measurements of the spec's family

    def get_params(self) -> dict:
        """Constructor arguments (the scikit-learn ``get_params``)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    # ---- fitting and predicting ------------------------------------------
    def fit(self, measurements: Iterable[Measurement]) -> LayerModel:
        ms = list(measurements)
        if not ms:
            raise ValueError(f"{type(self).__name__}: no measurements to fit")
        self._fit(ms)
        self.n_measurements_ = len(ms)
        return self

    def _check(self) -> None:
        if not hasattr(self, "n_measurements_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit first")

    def covers(self, spec: LayerSpec) -> bool:
        """Whether the model can predict ``spec`` (its family was measured)."""
        self._check()
        return True

    def missing(self, specs: Iterable[LayerSpec]) -> list[LayerSpec]:
        """The specs this model cannot predict (fitted, but not on their family)."""
        self._check()
        return [s for s in specs if not self.covers(s)]

    def predict(self, specs: Sequence[LayerSpec]) -> np.ndarray:
        """Latency in ms of each spec; ``KeyError`` naming the family of a spec
        the model was not fitted on."""
        self._check()
        specs = list(specs)
        for s in specs:
            if not self.covers(s):
                raise KeyError(f"no measurements for layer family {s.family()}")
        if not specs:
            return np.zeros(0)
        return np.asarray(self._predict(specs), dtype=float).reshape(len(specs))

    def predict_one(self, spec: LayerSpec) -> float:
        return float(self.predict([spec])[0])

    def predict_widths(self, spec: LayerSpec, n_in, n_out) -> np.ndarray:
        """Latency (ms) of ``spec``'s family at arrays of widths (broadcast);
        subclasses vectorise this where they can."""
        from dataclasses import replace
        n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64))
        specs = [replace(spec, in_channels=a, out_channels=b, groups=a if spec.depthwise else spec.groups)
                 for a, b in zip(n_in.ravel().tolist(), n_out.ravel().tolist())]
        return self.predict(specs).reshape(n_in.shape)

    def _fit(self, measurements: list[Measurement]) -> None:
        raise NotImplementedError

    def _predict(self, specs: list[LayerSpec]) -> np.ndarray:
        raise NotImplementedError

    # ---- serialisation ---------------------------------------------------
    def _state(self) -> dict:
        raise NotImplementedError

    def _load_state(self, state: dict) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict:
        self._check()
        return {"type": "layer-model", "class": type(self).__name__, "params": self.get_params(),
                "n_measurements": self.n_measurements_, "state": self._state()}

    @classmethod
    def from_dict(cls, d: dict) -> LayerModel:
        m = cls(**d.get("params", {}))
        m._load_state(d["state"])
        m.n_measurements_ = int(d["n_measurements"])
        return m


def family_groups(measurements: Iterable[Measurement]) -> dict[str, list[Measurement]]:
    """Measurements by layer family, in first-seen order."""
    out: dict[str, list[Measurement]] = {}
    for m in measurements:
        out.setdefault(m.spec.family(), []).append(m)
    return out


# ---- registry -------------------------------------------------------------
MODELS = Registry("latency model", sort=False)  # registration order: the documented one


def register(name: str, cls: type, description: str = "", **defaults) -> None:
    """Make ``create(name)`` build ``cls(**defaults)``."""
    MODELS.register(name, cls, description=description, defaults=MappingProxyType(dict(defaults)))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the wildcard ``pattern``, in registration order."""
    return MODELS.list(pattern)


def describe(name: str) -> str:
    return str(MODELS.metadata(name)["description"])


def create(name: str, **kwargs) -> LayerModel:
    """A new, unfitted model of the registered ``name``; ``kwargs`` override its
    defaults (e.g. ``step_channels``). Arguments the class does not take are
    ignored, so one call can configure every model. An unknown name raises
    :class:`profilers.registry.UnknownName` (a ``KeyError``) listing the names."""
    cls = MODELS.get(name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    args = {**MODELS.metadata(name)["defaults"], **{k: v for k, v in kwargs.items() if k in accepted}}
    return MODELS.create(name, **args)


def model_from_dict(d: dict) -> LayerModel:
    """Rebuild a fitted layer model written by ``to_dict``."""
    classes = {cls.__name__: cls for cls in map(MODELS.get, MODELS.list())}
    cls = classes.get(d.get("class", ""))
    if cls is None:
        raise ValueError(f"unknown latency model class {d.get('class')!r}")
    return cls.from_dict(d)
