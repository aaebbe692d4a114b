"""A learned regressor on layer features, in the spirit of nn-Meter.

nn-Meter predicts a kernel's latency with a random forest on its
configuration (channels, kernel, stride, input size, FLOPs, parameters). Here
one scikit-learn ensemble covers every layer family: features are the log2
of the widths, input and output sizes, FLOPs, weights and input/output
elements, plus the kernel, stride and whether the layer is depthwise or
linear; the target is log(ms), so errors are relative. ``estimator`` is
``"forest"`` (RandomForestRegressor) or ``"gbrt"``
(GradientBoostingRegressor), with a fixed ``random_state``.

Trees do not extrapolate: widths outside the measured range get the latency
of the nearest measured ones. The training set is the learned state
(``to_dict`` stores it; ``from_dict`` refits, which is deterministic).
"""
from __future__ import annotations

import numpy as np

from profilers.specs import weight_count

from .base import LayerModel, register

ESTIMATORS = ("forest", "gbrt")


def layer_features(spec) -> list[float]:
    oh, ow = spec.out_hw
    lg = np.log2
    return [lg(max(spec.in_channels, 1)), lg(max(spec.out_channels, 1)), float(spec.kernel[0]),
            float(spec.kernel[1]), float(spec.stride[0]), lg(spec.height * spec.width), lg(oh * ow),
            float(spec.depthwise), float(spec.kind == "linear"), lg(max(spec.flops, 1)),
            lg(max(weight_count(spec), 1)), lg(spec.batch * spec.in_channels * spec.height * spec.width),
            lg(spec.batch * spec.out_channels * oh * ow), lg(spec.groups)]


class ForestModel(LayerModel):
    name = "forest"
    per_family = False

    def __init__(self, estimator: str = "forest", n_estimators: int = 100, random_state: int = 0):
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.random_state = random_state

    def _make(self):
        if self.estimator == "forest":
            from sklearn.ensemble import RandomForestRegressor
            return RandomForestRegressor(n_estimators=self.n_estimators, random_state=self.random_state,
                                         n_jobs=1)
        from sklearn.ensemble import GradientBoostingRegressor
        return GradientBoostingRegressor(n_estimators=self.n_estimators, max_depth=4, learning_rate=0.05,
                                         subsample=0.8, random_state=self.random_state)

    def _train(self, X: np.ndarray, y_log: np.ndarray) -> None:
        self.X_, self.y_log_ = X, y_log
        self.regressor_ = self._make().fit(X, y_log)

    def _fit(self, measurements) -> None:
        X = np.array([layer_features(m.spec) for m in measurements])
        y = np.log(np.array([max(m.timing.median_ms, 1e-6) for m in measurements]))
        self._train(X, y)

    def _predict(self, specs) -> np.ndarray:
        return np.exp(self.regressor_.predict(np.array([layer_features(s) for s in specs])))

    def _state(self) -> dict:
        return {"X": self.X_.tolist(), "y_log": self.y_log_.tolist()}

    def _load_state(self, state: dict) -> None:
        self._train(np.asarray(state["X"], dtype=float), np.asarray(state["y_log"], dtype=float))


register("forest", ForestModel, "random forest on layer features, log(ms) target (nn-Meter style)",
         estimator="forest")
register("gbrt", ForestModel, "gradient-boosted trees on layer features, log(ms) target", estimator="gbrt")
