"""TensorRT engines for deployment, built from the exported ONNX.

Builds on :class:`profilers.tensorrt_rt.TensorRTRuntime` (its logger, dtype
table, timing cache and GPU checks) and adds what a deployment engine needs:
an optimisation profile for a dynamic batch, and INT8 calibrated with an
``IInt8EntropyCalibrator2`` fed real inputs (``--data``). Device buffers are
torch CUDA tensors (no pycuda). The engine is run on random and real inputs
and compared with PyTorch, and timed with CUDA events.

``tensorrt`` (and CUDA) are only imported when an engine is built.
"""
from __future__ import annotations

import copy
import importlib
import logging
import time

import numpy as np

from hwprune.errors import UserError
from hwprune.export.data import InputData, batches_of
from hwprune.export.onnx import onnx_bytes_checked
from hwprune.export.parity import (
    DATA_BATCH,
    DYNAMIC_BATCHES,
    ExportError,
    enforce,
    parity_of,
    parity_row,
    random_batches,
)
from profilers.onnx_export import OPSET
from profilers.tensorrt_rt import TensorRTRuntime

log = logging.getLogger("hwprune")

TOL_REL = {"fp32": 1e-2, "fp16": 5e-2}  # TF32 / FP16 kernels; INT8 is reported, not enforced
MISSING = "the tensorrt package is not installed (pip install 'hwprune[tensorrt]')"


def tensorrt_missing() -> str | None:
    """Why TensorRT engines cannot be built here (no package, a broken one, no
    GPU), or None."""
    try:
        importlib.import_module("tensorrt")
    except ImportError as exc:
        if exc.name == "tensorrt":
            return MISSING
        return f"the tensorrt package does not import ({exc}); reinstall it: pip install 'hwprune[tensorrt]'"
    except OSError as exc:
        return f"the tensorrt package does not load ({exc}); reinstall it: pip install 'hwprune[tensorrt]'"
    import torch
    if not torch.cuda.is_available():
        return "TensorRT needs an NVIDIA GPU and torch.cuda.is_available() is False here"
    return None


def _calibrator(trt, torch, batches: list[np.ndarray]):
    """An entropy calibrator that copies each batch into a torch CUDA tensor."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._current = None  # keeps the device buffer alive while TensorRT reads it
            self.samples = 0
            self.cache = None

        def get_batch_size(self):
            return int(batches[0].shape[0]) if batches else 1

        def get_batch(self, names, *_):
            try:
                x = next(self._batches)
            except StopIteration:
                return None
            self._current = torch.from_numpy(np.ascontiguousarray(x)).to("cuda").contiguous()
            torch.cuda.synchronize()
            self.samples += int(x.shape[0])
            return [int(self._current.data_ptr())] * len(names)

        def read_calibration_cache(self):
            return None  # always calibrate on the given data

        def write_calibration_cache(self, cache):
            self.cache = bytes(cache)

    return Calibrator()


class EngineBuilder(TensorRTRuntime):
    """Builds one deployment engine: fp32, ``fp16`` and/or ``int8``; ``shapes``
    (input name -> (min, opt, max)) for a dynamic batch; ``calibration``:
    float32 batches for INT8, shaped like the opt shape."""

    def __init__(self, fp16: bool = False, int8: bool = False, shapes: dict | None = None,
                 calibration: list[np.ndarray] | None = None, workspace_mib: int = 2048):
        super().__init__(fp16=fp16, workspace_mib=workspace_mib)
        if int8 and not hasattr(self._trt.BuilderFlag, "INT8"):
            raise UserError(f"TensorRT {self._trt.__version__} has no calibrated INT8 (it takes explicitly "
                            f"quantized ONNX instead); use TensorRT 10 for --int8")
        self.int8, self.shapes, self.calibration = bool(int8), shapes or {}, calibration or []
        self.calibrated_samples = 0

    @property
    def precision(self) -> str:
        return "+".join(p for p, on in (("int8", self.int8), ("fp16", self.fp16)) if on) or "fp32"

    def build_engine(self, onnx_bytes: bytes) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if self.strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT's ONNX parser rejected the model: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mib << 20)
        if self.fp16 and not self.strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = None
        dynamic = [network.get_input(i) for i in range(network.num_inputs)
                   if any(d < 0 for d in network.get_input(i).shape)]
        if dynamic:
            profile = builder.create_optimization_profile()
            for t in dynamic:
                if t.name not in self.shapes:
                    raise ExportError(f"input {t.name!r} has a dynamic shape {tuple(t.shape)} but no "
                                      f"min/opt/max shapes were given")
                profile.set_shape(t.name, *self.shapes[t.name])
            config.add_optimization_profile(profile)
        calibrator = None
        if self.int8:
            config.set_flag(trt.BuilderFlag.INT8)
            calibrator = _calibrator(trt, self._torch, self.calibration)
            config.int8_calibrator = calibrator
            if profile is not None:
                config.set_calibration_profile(profile)
        if self._timing_cache is None:
            self._timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(self._timing_cache, False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError("TensorRT could not build an engine for this model (run with -v for its log)")
        self.calibrated_samples = calibrator.samples if calibrator is not None else 0
        return bytes(plan)


class EngineRunner:
    """A deserialised engine with torch CUDA tensors as inputs and outputs;
    ``bind`` sets the inputs (any batch the engine accepts), calling it enqueues
    one inference on ``stream``."""

    def __init__(self, rt: EngineBuilder, plan: bytes):
        trt, torch = rt._trt, rt._torch
        self.rt, self.torch = rt, torch
        self.runtime = trt.Runtime(rt._logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ExportError("TensorRT could not deserialise the engine it built")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = torch.cuda.Stream()
        self.buffers = {}

    def _bind(self, name: str, buf) -> None:
        self.buffers[name] = buf  # keeps the memory alive while the engine uses it
        if not self.context.set_tensor_address(name, buf.data_ptr()):
            raise ExportError(f"TensorRT refused the buffer for tensor {name!r}")

    def bind(self, inputs: tuple) -> None:
        given = {f"input{i}": t for i, t in enumerate(inputs)}
        for name in self.inputs:
            if name not in given:
                raise ExportError(f"no input given for engine input {name!r}")
            dtype = self.rt._torch_dtype(self.engine.get_tensor_dtype(name))
            buf = given[name].to("cuda", dtype).contiguous()
            if not self.context.set_input_shape(name, tuple(buf.shape)):
                raise ExportError(f"the engine does not accept input {name!r} of shape {tuple(buf.shape)}")
            self._bind(name, buf)
        out_name = "output" if "output" in self.outputs else self.outputs[0]
        for name in [out_name] + [n for n in self.outputs if n != out_name]:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = self.rt._torch_dtype(self.engine.get_tensor_dtype(name))
            self._bind(name, self.torch.empty(shape, dtype=dtype, device="cuda"))
        self.out_name = out_name
        self.torch.cuda.synchronize()  # inputs were copied on torch's stream

    def __call__(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execute_async_v3 failed")

    def run(self, inputs: tuple) -> np.ndarray:
        self.bind(inputs)
        self()
        self.stream.synchronize()
        return self.buffers[self.out_name].float().cpu().numpy()


def _half_onnx(torch, model, inputs, opset: int, dynamic: bool) -> bytes:
    half = copy.deepcopy(model).eval().to("cuda", torch.float16)
    hin = tuple(t.to("cuda", torch.float16) if t.is_floating_point() else t.to("cuda") for t in inputs)
    return onnx_bytes_checked(half, hin, opset, dynamic)


def build_and_check(model, inputs: tuple, onnx_bytes: bytes, *, fp16: bool = False, int8: bool = False,
                    data: InputData | None = None, shapes: dict | None = None,
                    opset: int = OPSET) -> tuple[bytes, dict, list[dict]]:
    """Build the engine, parity_of it with PyTorch and time it: (plan, report part, parity rows)."""
    from profilers.protocol import MODEL_PROTOCOL
    from profilers.torch_cuda import measure_events
    batch = int(inputs[0].shape[0])
    max_batch = max(s[2][0] for s in shapes.values()) if shapes else batch
    calib = []
    if int8:
        if len(inputs) != 1 or data is None:
            raise UserError("--int8 calibration needs --data and a model with one input")
        calib = [xs[0].numpy() for xs in batches_of(data, batch)[0]]
    b = EngineBuilder(fp16=fp16, int8=int8, shapes=shapes, calibration=calib)
    torch = b._torch
    source = _half_onnx(torch, model, inputs, opset, bool(shapes)) if b.strongly_typed else onnx_bytes
    t0 = time.perf_counter()
    plan = b.build_engine(source)
    build_s = time.perf_counter() - t0
    log.info("TensorRT %s engine built in %.1f s", b.precision, build_s)
    runner = EngineRunner(b, plan)
    tol = None if int8 else TOL_REL["fp16" if fp16 else "fp32"]

    def check(p, what):
        return enforce(p, f"TensorRT output{what}", tol) if tol is not None else p
    rows = [parity_row("tensorrt", "random", check(parity_of(runner.run, model, random_batches(inputs)), ""), tol)]
    if shapes:
        sizes = [s for s in DYNAMIC_BATCHES if s <= max_batch]
        p = parity_of(runner.run, model, random_batches(inputs, sizes, count=1, seed=1))
        rows.append(parity_row("tensorrt", "random, batch " + " and ".join(map(str, sizes)),
                                check(p, " with a dynamic batch"), tol))
    if data is not None:
        xs, ys = batches_of(data, min(DATA_BATCH, max_batch) if shapes else batch)
        rows.append(parity_row("tensorrt", data.source, check(parity_of(runner.run, model, xs, ys),
                                                                 f" on {data.source}"), tol))
    runner.bind(inputs)
    t = measure_events(runner, runner.stream, MODEL_PROTOCOL)
    part = {"version": b._trt.__version__, "precision": b.precision, "strongly_typed": b.strongly_typed,
            "build_s": build_s, "calibration_samples": b.calibrated_samples,
            "dynamic_shapes": {k: [list(s) for s in v] for k, v in (shapes or {}).items()},
            "gpu": torch.cuda.get_device_name(), "latency_ms": t.median_ms, "latency_iqr_ms": t.iqr_ms}
    return plan, part, rows
