"""hwprune: hardware-aware, latency-constrained channel pruning for PyTorch CNNs.

    res = hwprune.prune(model, example_inputs, device="ort-cpu-1t", budget_ms=2.0)
    res.model, res.baseline_ms, res.predicted_ms, res.measured_ms, res.plan
"""
from hwprune.errors import UserError
from hwprune.export.onnx import export_onnx
from hwprune.graph.plans import apply_plan
from hwprune.loop.api import measure_latency, predict_latency
from hwprune.loop.engine import PruneResult, prune
from hwprune.version import __version__

__all__ = ["prune", "PruneResult", "predict_latency", "measure_latency", "export_onnx",
           "apply_plan", "UserError", "__version__"]
