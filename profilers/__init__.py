"""Measure layer specs and whole models on device runtimes.

Runtimes are registered lazily by name (module path strings), so listing them
never imports an optional runtime package.
"""
from __future__ import annotations

import importlib

from .protocol import LAYER_PROTOCOL, MODEL_PROTOCOL, Protocol, measure, measure_interleaved
from .specs import LayerSpec, Measurement, Timing
from .store import (
    MeasurementStore,
    StoreError,
    default_store_path,
    fingerprint_key,
    host_key_of,
    measurement_key,
)

_RUNTIMES: dict[str, tuple[str, str]] = {
    "ort-cpu": ("profilers.ort_cpu", "OrtCpuRuntime"),
    "torch-cpu": ("profilers.torch_cpu", "TorchCpuRuntime"),
    "torch-cuda": ("profilers.torch_cuda", "TorchCudaRuntime"),
    "tensorrt": ("profilers.tensorrt_rt", "TensorRTRuntime"),
    "remote": ("profilers.remote", "RemoteRuntime"),
}


class RuntimeUnavailable(RuntimeError):
    """A runtime's package is not installed or its hardware is absent."""


def register_runtime(kind: str, module: str, cls: str) -> None:
    _RUNTIMES[kind] = (module, cls)


def list_runtimes() -> list[str]:
    return sorted(_RUNTIMES)


def create_runtime(kind: str, **options):
    if kind not in _RUNTIMES:
        raise KeyError(kind)
    module, cls = _RUNTIMES[kind]
    try:
        return getattr(importlib.import_module(module), cls)(**options)
    except ImportError as exc:
        if exc.name and exc.name.startswith("profilers"):
            raise RuntimeUnavailable(f"runtime {kind!r} is not part of this version") from None
        raise RuntimeUnavailable(f"runtime {kind!r} needs the package {exc.name!r}") from None


__all__ = ["LayerSpec", "Measurement", "Timing", "Protocol", "measure", "measure_interleaved", "LAYER_PROTOCOL",
           "MODEL_PROTOCOL", "MeasurementStore", "StoreError", "default_store_path",
           "fingerprint_key", "measurement_key", "host_key_of", "create_runtime", "list_runtimes", "register_runtime",
           "RuntimeUnavailable"]
