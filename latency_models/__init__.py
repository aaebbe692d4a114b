"""Fit measurements to latency predictors."""
from .network import NetworkLatencyModel, activation_elements, weight_elements
from .quadratic import NotFittedError, QuadraticLayerModel

__all__ = ["NetworkLatencyModel", "QuadraticLayerModel", "NotFittedError", "activation_elements", "weight_elements"]
