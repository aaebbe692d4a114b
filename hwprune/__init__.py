"""hwprune: hardware-aware, latency-constrained channel pruning for PyTorch CNNs.

    res = hwprune.prune(model, example_inputs, device="ort-cpu-1t", budget_ms=2.0)
    res.model, res.baseline_ms, res.predicted_ms, res.measured_ms, res.plan
"""
__version__ = "0.1.0"

from .api import measure_latency, predict_latency  # noqa: E402
from .engine import PruneResult, prune  # noqa: E402
from .errors import UserError  # noqa: E402
from .export import export_onnx  # noqa: E402
from .modelio import apply_plan  # noqa: E402

__all__ = ["prune", "PruneResult", "predict_latency", "measure_latency", "export_onnx",
           "apply_plan", "UserError", "__version__"]
