"""ONNX Runtime CPUExecutionProvider with pinned intra-/inter-op threads (with
more than one intra-op thread, idle workers sleep instead of spin-waiting).

Every runtime offers the same methods: ``fingerprint()``, ``measure_spec(spec)``
(one layer), ``measure_module(model, example_inputs)`` and
``measure_modules_interleaved(models, example_inputs)`` (whole torch modules,
run the way this runtime runs them), each returning :class:`Timing`.
"""
from __future__ import annotations

import platform

import numpy as np

from .onnx_export import OnnxModuleMeasurer
from .onnx_layers import layer_model, random_inputs
from .protocol import LAYER_PROTOCOL, MODEL_PROTOCOL, Protocol, measure, measure_interleaved
from .specs import LayerSpec, Timing


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_LEVELS = ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon")  # the widest vector unit first


def cpu_isa() -> str:
    """The widest SIMD instruction set the CPU reports (``avx512f``, ``avx2``,
    ..., ``asimd`` on ARM); ``unknown`` where /proc/cpuinfo is not readable. Conv
    kernels, and so a device's channel step, depend on it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return next((isa for isa in ISA_LEVELS if isa in flags), "other")
    except OSError:
        pass
    return "unknown"


class OrtCpuRuntime(OnnxModuleMeasurer):
    """Measures ONNX models on ONNX Runtime's CPU provider, fp32."""

    kind = "ort-cpu"

    def __init__(self, threads: int = 1):
        import onnxruntime  # noqa: F401  (fail early with ImportError)
        self.threads = int(threads)

    def fingerprint(self) -> dict:
        import onnxruntime
        fp = {"runtime": "onnxruntime-cpu", "version": onnxruntime.__version__,
              "threads": self.threads, "dtype": "fp32", "cpu": cpu_model(),
              "isa": cpu_isa(), "machine": platform.machine()}
        if self.threads > 1:
            fp["intra_op_spinning"] = False
        return fp

    def session(self, model_bytes: bytes):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.threads > 1:
            # Worker threads of an idle session spin-wait by default; with several sessions
            # in one process (interleaved measurements) they take the cores from the one
            # running: resnet56 on 2 threads measured 2.9 ms alone, 6.2 ms interleaved with
            # one other session and 11.9 ms with four. Without spinning they sleep.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])

    def measure_onnx(self, model_bytes: bytes, feeds: dict[str, np.ndarray] | None = None,
                     protocol: Protocol = MODEL_PROTOCOL) -> Timing:
        sess = self.session(model_bytes)
        feeds = feeds if feeds is not None else random_inputs(model_bytes)
        return measure(lambda: sess.run(None, feeds), protocol)

    def measure_onnx_interleaved(self, models: list[tuple[bytes, dict]],
                                 protocol: Protocol = MODEL_PROTOCOL) -> list[Timing]:
        """Several ONNX models measured alternately (see ``measure_interleaved``)."""
        sessions = [(self.session(b), f if f is not None else random_inputs(b)) for b, f in models]
        return measure_interleaved([lambda s=s, f=f: s.run(None, f) for s, f in sessions], protocol)

    def measure_spec(self, spec: LayerSpec, protocol: Protocol = LAYER_PROTOCOL) -> Timing:
        return self.measure_onnx(layer_model(spec), protocol=protocol)
