"""OpenVINO's CPU plugin, fp32, with a pinned number of inference threads.

OpenVINO reads ONNX directly: a layer spec or a torch module is exported to
ONNX bytes (:mod:`profilers.onnx_export`), read, and compiled for ``"CPU"``
with ``INFERENCE_NUM_THREADS`` = ``threads``, one stream, the latency hint and
fp32 inference precision (on CPUs with bf16 units OpenVINO would otherwise
infer in bf16: outputs then differ from PyTorch's by ~1e-3). Each
measurement compiles afresh (a fresh session) and times synchronous
``infer`` calls on inputs bound once. With one thread, inference runs on the
calling thread (checked by per-thread CPU time), so the thread clock applies.

``openvino`` is imported when first needed, so constructing the runtime (as
``hwprune devices`` does) imports nothing.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform

import numpy as np

from .onnx_export import OnnxModuleMeasurer
from .onnx_layers import layer_model, random_inputs
from .ort_cpu import cpu_isa, cpu_model
from .protocol import LAYER_PROTOCOL, MODEL_PROTOCOL, Protocol, measure, measure_interleaved
from .specs import LayerSpec, Timing

PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}   # OpenVINO's hint -> the fingerprint's dtype


class OpenVinoCpuRuntime(OnnxModuleMeasurer):
    """Measures ONNX models compiled by OpenVINO for the CPU."""

    kind = "openvino-cpu"

    def __init__(self, threads: int = 1, precision: str = "f32"):
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.threads, self.precision = int(threads), precision
        self.version = importlib.metadata.version("openvino")  # PackageNotFoundError if absent
        self.core = None

    def fingerprint(self) -> dict:
        return {"runtime": "openvino-cpu", "version": self.version, "threads": self.threads,
                "dtype": PRECISIONS[self.precision], "cpu": cpu_model(), "isa": cpu_isa(),
                "machine": platform.machine()}

    def config(self) -> dict:
        return {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": self.precision}

    def compile(self, model: bytes | str | os.PathLike):
        """ONNX bytes, or the path of an ONNX file or an OpenVINO IR ``.xml``
        -> an OpenVINO compiled model on the CPU."""
        if self.core is None:
            import openvino
            self.core = openvino.Core()
        read = self.core.read_model(os.fspath(model)) if isinstance(model, (str, os.PathLike)) \
            else self.core.read_model(bytes(model), b"")
        return self.core.compile_model(read, "CPU", self.config())

    def runner(self, model: bytes | str | os.PathLike, feeds: dict[str, np.ndarray] | None):
        """A callable running one inference of a freshly compiled ``model`` (see
        :meth:`compile`) on ``feeds`` (random ones need ONNX bytes)."""
        import openvino
        req = self.compile(model).create_infer_request()
        feeds = feeds if feeds is not None else random_inputs(model)
        for name, arr in feeds.items():
            req.set_tensor(name, openvino.Tensor(np.ascontiguousarray(arr)))
        return lambda: req.infer(share_outputs=True)

    def run(self, model: bytes | str | os.PathLike, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs of one inference (for parity checks)."""
        out = self.runner(model, feeds)()
        return [np.array(out[i]) for i in range(len(out))]

    def measure_onnx(self, model_bytes: bytes | str | os.PathLike, feeds: dict[str, np.ndarray] | None = None,
                     protocol: Protocol = MODEL_PROTOCOL) -> Timing:
        """ONNX bytes (or an ONNX / IR file, see :meth:`compile`) measured on ``feeds``."""
        return measure(self.runner(model_bytes, feeds), protocol)

    def measure_onnx_interleaved(self, models: list[tuple[bytes, dict]],
                                 protocol: Protocol = MODEL_PROTOCOL) -> list[Timing]:
        """Several ONNX models measured alternately (see ``measure_interleaved``)."""
        return measure_interleaved([self.runner(b, f) for b, f in models], protocol)

    def measure_spec(self, spec: LayerSpec, protocol: Protocol = LAYER_PROTOCOL) -> Timing:
        return self.measure_onnx(layer_model(spec), protocol=protocol)
