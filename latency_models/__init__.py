"""Fit measurements to latency predictors, and say how well they predict.

Layer models (one estimator API, :mod:`latency_models.base`), by registered
name: ``lookup``, ``quadratic-m6``, ``quadratic-m5``, ``step-quadratic``,
``flops``, ``params``, ``forest``, ``gbrt``. A :class:`NetworkLatencyModel`
sums any of them over a network's layers and adds a fitted remainder.
:mod:`latency_models.memory` computes peak activation memory from shapes;
:mod:`latency_models.metrics` scores predictions against measurements.
"""
from . import quadratic, lookup, linear, forest  # noqa: F401,I001  (registers the models in this order)
from .base import MODELS, LayerModel, NotFittedError, create, describe, list_models, model_from_dict, register
from .forest import ForestModel
from .linear import FlopsLinearModel, ParamsLinearModel
from .lookup import LookupTableModel, full_grid_size
from .layout import reorder_saved_elements
from .network import NetworkLatencyModel, activation_elements, weight_elements
from .quadratic import QuadraticLayerModel, QuadraticModel

__all__ = ["MODELS", "LayerModel", "NotFittedError", "create", "describe", "list_models", "model_from_dict", "register",
           "ForestModel", "FlopsLinearModel", "ParamsLinearModel", "LookupTableModel", "full_grid_size",
           "NetworkLatencyModel", "QuadraticLayerModel", "QuadraticModel", "activation_elements",
           "reorder_saved_elements", "weight_elements"]
