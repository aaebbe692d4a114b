"""Measure layer specs and whole models on device runtimes.

Runtimes are registered in :data:`RUNTIMES` (a :class:`profilers.registry.Registry`)
as lazy ``"module:Class"`` references, so listing them never imports an
optional runtime package; one whose ``requires`` packages are not installed is
reported unavailable without importing its module (no tensorrt, no CUDA code).
"""
from __future__ import annotations

import importlib.util

from .protocol import LAYER_PROTOCOL, MODEL_PROTOCOL, Protocol, measure, measure_interleaved
from .registry import Registry, UnknownName
from .specs import LayerSpec, Measurement, Timing
from .store import (
    MeasurementStore,
    StoreError,
    default_store_path,
    fingerprint_key,
    host_key_of,
    measurement_key,
)

RUNTIMES = Registry("runtime")
RUNTIMES.register("ort-cpu", "profilers.ort_cpu:OrtCpuRuntime", requires=("onnxruntime",))
RUNTIMES.register("torch-cpu", "profilers.torch_cpu:TorchCpuRuntime", requires=("torch",))
RUNTIMES.register("torch-cuda", "profilers.torch_cuda:TorchCudaRuntime", requires=("torch",))
RUNTIMES.register("tensorrt", "profilers.tensorrt_rt:TensorRTRuntime", requires=("tensorrt", "torch"))
RUNTIMES.register("executorch-xnnpack", "profilers.executorch_rt:ExecuTorchRuntime",
                  requires=("executorch", "torch"), extra="executorch")
RUNTIMES.register("openvino-cpu", "profilers.openvino_rt:OpenVinoCpuRuntime", requires=("openvino",), extra="openvino")
RUNTIMES.register("remote", "profilers.remote:RemoteRuntime")


class RuntimeUnavailable(RuntimeError):
    """A runtime's package is not installed or its hardware is absent."""


def register_runtime(kind: str, module: str, cls: str, requires: tuple[str, ...] = ()) -> None:
    """Make ``create_runtime(kind)`` build ``module.cls`` (imported then)."""
    RUNTIMES.register(kind, f"{module}:{cls}", requires=tuple(requires))


def list_runtimes(pattern: str = "*") -> list[str]:
    return RUNTIMES.list(pattern)


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # in sys.modules without a spec (a stand-in): let the import decide
        return True


def missing_package(kind: str, package: str) -> str:
    """Why ``kind`` cannot run: ``package`` is missing (and the extra that installs it)."""
    extra = RUNTIMES.metadata(kind).get("extra")
    how = f" (pip install 'hwprune[{extra}]')" if extra else ""
    return f"runtime {kind!r} needs the package {package!r}{how}"


def create_runtime(kind: str, **options):
    """A runtime of the registered ``kind``; :class:`UnknownName` (a ``KeyError``)
    lists the kinds, :class:`RuntimeUnavailable` names a missing package (and
    the optional extra that installs it, where the entry names one)."""
    missing = [p for p in RUNTIMES.metadata(kind).get("requires", ()) if not _installed(p)]
    if missing:
        raise RuntimeUnavailable(missing_package(kind, missing[0]))
    try:
        return RUNTIMES.create(kind, **options)
    except ImportError as exc:
        if exc.name and exc.name.startswith("profilers"):
            raise RuntimeUnavailable(f"runtime {kind!r} is not part of this version") from None
        raise RuntimeUnavailable(missing_package(kind, exc.name)) from None


__all__ = ["LayerSpec", "Measurement", "Timing", "Protocol", "measure", "measure_interleaved", "LAYER_PROTOCOL",
           "MODEL_PROTOCOL", "MeasurementStore", "StoreError", "default_store_path",
           "fingerprint_key", "measurement_key", "host_key_of", "create_runtime", "list_runtimes",
           "register_runtime", "RuntimeUnavailable", "RUNTIMES", "Registry", "UnknownName"]
