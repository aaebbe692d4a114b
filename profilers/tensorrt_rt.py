"""TensorRT 10 engines built from ONNX, timed with CUDA events.

A layer spec or a torch module is exported to ONNX, parsed by TensorRT's ONNX
parser, built into an engine (FP16 allowed by default; the builder still picks
fp32 kernels where they are faster), deserialised and run with
``execute_async_v3``. Device buffers are torch CUDA tensors, so no pycuda is
needed. One timing cache is shared by every engine a runtime object builds, so
profiling many layer widths does not re-time the same kernels.

``tensorrt`` is imported in the constructor: where it is not installed,
``profilers.create_runtime("tensorrt")`` raises ``RuntimeUnavailable`` naming
the package.
"""
from __future__ import annotations

import copy
import logging

import numpy as np

from .inputs import as_inputs
from .protocol import LAYER_PROTOCOL, MODEL_PROTOCOL, Protocol
from .specs import LayerSpec, Timing
from .torch_cuda import gpu_fingerprint, measure_events, measure_events_interleaved, require_cuda

log = logging.getLogger(__name__)


def python_logger(trt):
    """A TensorRT logger that forwards to this module's ``logging`` logger."""
    levels = {trt.ILogger.INTERNAL_ERROR: logging.ERROR, trt.ILogger.ERROR: logging.ERROR,
              trt.ILogger.WARNING: logging.WARNING, trt.ILogger.INFO: logging.DEBUG}

    class Forward(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            log.log(levels.get(severity, logging.DEBUG), "TensorRT: %s", msg)

    return Forward()


class TensorRTRuntime:
    """Measures ONNX models (from layer specs or torch modules) as TensorRT engines."""

    kind = "tensorrt"

    def __init__(self, fp16: bool = True, workspace_mib: int = 1024, opt_level: int | None = None):
        import tensorrt  # ImportError names the missing package
        self._trt = tensorrt
        self._torch = require_cuda("tensorrt")
        self.fp16 = bool(fp16)
        self.workspace_mib = int(workspace_mib)
        self.opt_level = opt_level
        self._logger = python_logger(tensorrt)
        self._timing_cache = None
        # TensorRT 11 dropped the FP16 builder flag: there, precision comes from
        # the graph, so fp16 networks are exported in half precision and built
        # strongly typed.
        self.strongly_typed = self.fp16 and not hasattr(tensorrt.BuilderFlag, "FP16")

    def fingerprint(self) -> dict:
        return {"runtime": "tensorrt", "version": self._trt.__version__,
                "dtype": "fp16" if self.fp16 else "fp32", "workspace_mib": self.workspace_mib,
                "opt_level": self.opt_level, "strongly_typed": self.strongly_typed,
                **gpu_fingerprint()}

    # -- building -------------------------------------------------------------------------

    def build_engine(self, onnx_bytes: bytes) -> bytes:
        """ONNX bytes (static shapes) -> a serialised TensorRT engine (plan)."""
        trt = self._trt
        builder = trt.Builder(self._logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if self.strongly_typed else 0
        network = builder.create_network(flags)  # explicit batch is the only mode since TensorRT 10
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(f"TensorRT's ONNX parser rejected the model: {errors}")
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if any(d < 0 for d in t.shape):
                raise ValueError(f"input {t.name!r} has a dynamic shape {tuple(t.shape)}; "
                                 f"export with static shapes to build an engine")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mib << 20)
        if self.fp16 and not self.strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
        if self.opt_level is not None:
            config.builder_optimization_level = int(self.opt_level)
        if self._timing_cache is None:
            self._timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(self._timing_cache, False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError("TensorRT could not build an engine for this model "
                               "(its log above says why)")
        return bytes(plan)

    # -- running --------------------------------------------------------------------------

    def _torch_dtype(self, trt_dtype):
        trt, torch = self._trt, self._torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                 trt.int8: torch.int8, trt.bool: torch.bool}
        for name in ("int64", "bfloat16"):
            if hasattr(trt, name):
                table[getattr(trt, name)] = getattr(torch, name)
        if trt_dtype not in table:
            raise TypeError(f"no torch dtype for TensorRT tensor type {trt_dtype}")
        return table[trt_dtype]

    def load(self, plan: bytes, inputs: dict[str, np.ndarray], stream) -> LoadedEngine:
        return LoadedEngine(self, plan, inputs, stream)

    def measure_onnx(self, onnx_bytes: bytes, inputs: dict[str, np.ndarray] | None = None,
                     protocol: Protocol = MODEL_PROTOCOL) -> Timing:
        return self.measure_onnx_interleaved([(onnx_bytes, inputs)], protocol)[0]

    def measure_onnx_interleaved(self, models: list[tuple[bytes, dict | None]],
                                 protocol: Protocol = MODEL_PROTOCOL) -> list[Timing]:
        from .onnx_layers import random_inputs
        stream = self._torch.cuda.Stream()
        engines = [self.load(self.build_engine(b), f if f is not None else random_inputs(b), stream)
                   for b, f in models]
        if len(engines) == 1:
            return [measure_events(engines[0], stream, protocol)]
        return measure_events_interleaved(engines, stream, protocol)

    def onnx_of(self, model, example_inputs) -> bytes:
        """The ONNX this runtime builds for a torch module (half precision when
        the network is strongly typed)."""
        from .onnx_export import to_onnx_bytes
        if not self.strongly_typed:
            return to_onnx_bytes(model, example_inputs)
        torch = self._torch
        half = copy.deepcopy(model).eval().to("cuda", torch.float16)
        inputs = tuple(t.to("cuda", torch.float16) if t.is_floating_point() else t.to("cuda")
                       for t in as_inputs(example_inputs))
        return to_onnx_bytes(half, inputs)

    def measure_spec(self, spec: LayerSpec, protocol: Protocol = LAYER_PROTOCOL) -> Timing:
        if self.strongly_typed:
            from .onnx_export import feeds
            from .torch_layers import layer_input, layer_module
            x = layer_input(spec)
            return self.measure_onnx(self.onnx_of(layer_module(spec), x), feeds(x), protocol)
        from .onnx_layers import layer_model
        return self.measure_onnx(layer_model(spec), protocol=protocol)

    def measure_module(self, model, example_inputs, protocol: Protocol = MODEL_PROTOCOL) -> Timing:
        return self.measure_modules_interleaved([model], example_inputs, protocol)[0]

    def measure_modules_interleaved(self, models, example_inputs,
                                    protocol: Protocol = MODEL_PROTOCOL) -> list[Timing]:
        from .onnx_export import feeds
        f = feeds(example_inputs)
        return self.measure_onnx_interleaved([(self.onnx_of(m, example_inputs), f) for m in models],
                                             protocol)


class LoadedEngine:
    """A deserialised engine with an execution context and bound torch CUDA
    buffers; calling it enqueues one inference on ``stream``."""

    def __init__(self, rt: TensorRTRuntime, plan: bytes, inputs: dict[str, np.ndarray], stream):
        trt, torch = rt._trt, rt._torch
        self.runtime = trt.Runtime(rt._logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialise the engine it built")
        self.context = self.engine.create_execution_context()
        self.stream = stream
        self.buffers = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        for name in (n for n in names if is_input[n]):
            if name not in inputs:
                raise ValueError(f"no input given for engine input {name!r} (given: {sorted(inputs)})")
            dtype = rt._torch_dtype(self.engine.get_tensor_dtype(name))
            buf = torch.from_numpy(np.ascontiguousarray(inputs[name])).to("cuda", dtype).contiguous()
            want = tuple(self.engine.get_tensor_shape(name))
            if tuple(buf.shape) != want:
                raise ValueError(f"input {name!r} has shape {tuple(buf.shape)}, the engine wants {want}")
            self._bind(name, buf)
        for name in (n for n in names if not is_input[n]):
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = rt._torch_dtype(self.engine.get_tensor_dtype(name))
            self._bind(name, torch.empty(shape, dtype=dtype, device="cuda"))
        torch.cuda.synchronize()  # inputs were copied on torch's stream, the engine runs on ``stream``

    def _bind(self, name: str, buf) -> None:
        self.buffers[name] = buf  # keeps the memory alive as long as the engine
        if not self.context.set_tensor_address(name, buf.data_ptr()):
            raise RuntimeError(f"TensorRT refused the buffer for tensor {name!r}")

    def __call__(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
