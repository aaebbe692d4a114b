"""Public functions besides :func:`hwprune.prune`."""
from __future__ import annotations

import torch

from . import devices, importance
from .engine import calibrate
from .graph import PruningSpace
from .profiling import Profiler, Progress, fit_latency_model
from .profiling import measure_latency as _measure
from .select import Evaluator, group_options


def _tuple(example_inputs):
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def predict_latency(model: torch.nn.Module, example_inputs, device: str = "ort-cpu-1t", *,
                    store=None, progress: Progress | None = None) -> float:
    """Predicted latency (ms) of ``model`` on ``device``.

    Sum of per-layer quadratic models (layer shapes missing from the store are
    profiled on demand) plus a remainder fitted on whole-model measurements of
    two *other* networks: the model's smallest and half-width sub-networks.
    """
    example_inputs = _tuple(example_inputs)
    dev = devices.get(device)
    space = PruningSpace(model.eval(), example_inputs)
    prof = Profiler(dev, store)
    options = {g.gid: group_options(g, dev.step_channels, dev.min_channels) for g in space.groups}
    lat = fit_latency_model(prof, space, options, progress)
    scores = importance.compute("l1", space)
    calibrate(lat, space, lambda m: prof.measure_module(m, example_inputs).median_ms, options, scores)
    return Evaluator(space, lat, scores).latency_ms(space.full_choice())


def measure_latency(model: torch.nn.Module, example_inputs, device: str = "ort-cpu-1t") -> float:
    """Measured median latency (ms) of the whole model on ``device``."""
    return _measure(model.eval(), _tuple(example_inputs), devices.get(device))
