"""ExecuTorch with the XNNPACK delegate, fp32: the runtime PyTorch's on-device
stack deploys CNNs with (Android, iOS); on x86 XNNPACK runs the same graph
partitioning and fusions with AVX kernels.

A module is lowered (``torch.export`` -> XNNPACK partitioner -> ``.pte``
program bytes) and run with ``executorch.runtime.Runtime``. Lowering takes
about a second, so the program of a whole model is cached per module object
(latency does not depend on weight values; a module whose parameters or input
shapes change is lowered again). Each measurement loads the program afresh.

Threads: XNNPACK runs on ExecuTorch's process-wide threadpool (by default one
thread per core). Its size is set to the runtime's ``threads`` before programs
are loaded (an XNNPACK runtime keeps the pool it was created with, so the pool
is never resized while loaded programs run). PyTorch's own intra-op threads
are pinned to one while measuring: the Python binding converts inputs and
outputs with torch, and OpenMP workers woken by that spin on the other cores
(a 64->64 3x3 conv pair at 56x56 measured 9.4 ms with them, 2.4 ms without).
With one thread, all work runs on the calling thread (checked by per-thread
CPU time), so the thread clock applies.

``executorch`` is imported when first needed, so constructing the runtime (as
``hwprune devices`` does) imports nothing heavy.
"""
from __future__ import annotations

import copy
import importlib
import importlib.metadata
import platform
import warnings
import weakref
from contextlib import contextmanager

import torch

from .inputs import as_inputs
from .onnx_export import quiet_output
from .ort_cpu import cpu_isa, cpu_model
from .protocol import LAYER_PROTOCOL, MODEL_PROTOCOL, Protocol, measure, measure_interleaved
from .pte import is_pte, pte_problem
from .specs import LayerSpec, Timing
from .torch_cpu import pinned_threads
from .torch_layers import layer_input, layer_module

LAYER_CACHE = 128             # lowered layer programs kept per runtime


def lower(model: torch.nn.Module, example_inputs) -> bytes:
    """``model`` (a copy, fp32 on the CPU) exported, lowered to XNNPACK, as ``.pte`` bytes."""
    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    inputs = tuple(t.detach().to("cpu", torch.float32) if t.is_floating_point() else t.detach().cpu()
                   for t in as_inputs(example_inputs))
    with warnings.catch_warnings(), quiet_output():
        warnings.simplefilter("ignore")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        program = torch.export.export(m, inputs)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        return bytes(lowered.to_executorch().buffer)


def threadpool():
    """ExecuTorch's binding module that owns the process-wide threadpool."""
    with warnings.catch_warnings(), quiet_output():
        warnings.simplefilter("ignore")
        return importlib.import_module("executorch.extension.pybindings.portable_lib")


def set_threads(threads: int) -> None:
    """Size the XNNPACK threadpool (only between loads: see the module docstring)."""
    pool = threadpool()
    with quiet_output():  # the pool's first use initialises cpuinfo, which logs to stderr
        if pool._threadpool_get_thread_count() != threads:   # the binding's only (experimental) API for it
            pool._unsafe_reset_threadpool(threads)


class LoadedProgram:
    """A ``.pte`` loaded by ``executorch.runtime`` (its header checked first,
    then the program verified for internal consistency); calling it runs
    ``forward`` once."""

    def __init__(self, data: bytes, inputs):
        problem = pte_problem(data)
        if problem:
            raise ValueError(f"not an ExecuTorch program: {problem}")
        with quiet_output():
            from executorch.runtime import Runtime, Verification
            self.program = Runtime.get().load_program(bytes(data), verification=Verification.InternalConsistency)
            self.method = self.program.load_method("forward")
            self.inputs = [t.contiguous() if isinstance(t, torch.Tensor) else t for t in inputs]
            self.outputs = self()  # the first run initialises XNNPACK (which logs to stderr)

    def __call__(self):
        return self.method.execute(self.inputs)


class ExecuTorchRuntime:
    """Measures torch modules lowered to ExecuTorch's XNNPACK delegate, fp32."""

    kind = "executorch-xnnpack"

    def __init__(self, threads: int = 1):
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.threads = int(threads)
        self.version = importlib.metadata.version("executorch")  # PackageNotFoundError if absent
        self.programs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.layer_programs: dict = {}   # spec key -> .pte, so repeated sweeps of a shape lower it once

    def fingerprint(self) -> dict:
        return {"runtime": "executorch-xnnpack", "version": self.version, "torch": torch.__version__,
                "threads": self.threads, "dtype": "fp32", "cpu": cpu_model(), "isa": cpu_isa(),
                "machine": platform.machine()}

    def program_of(self, model: torch.nn.Module, example_inputs) -> bytes:
        """The lowered program of ``model`` (cached; see the module docstring)."""
        inputs = as_inputs(example_inputs)
        sig = (tuple((tuple(t.shape), str(t.dtype)) for t in inputs),
               tuple((n, tuple(p.shape), p.data_ptr()) for n, p in model.state_dict(keep_vars=True).items()))
        hit = self.programs.get(model)
        if hit is not None and hit[0] == sig:
            return hit[1]
        data = lower(model, inputs)
        self.programs[model] = (sig, data)
        return data

    @contextmanager
    def pinned(self):
        set_threads(self.threads)
        with pinned_threads(1), torch.inference_mode():
            yield

    def measure_pte(self, data: bytes, inputs, protocol: Protocol = MODEL_PROTOCOL) -> Timing:
        """One ``.pte`` program measured on ``inputs`` (a tuple of tensors)."""
        return self.measure_pte_interleaved([(data, inputs)], protocol)[0]

    def measure_pte_interleaved(self, programs: list[tuple[bytes, tuple]],
                                protocol: Protocol = MODEL_PROTOCOL) -> list[Timing]:
        with self.pinned():
            runs = [LoadedProgram(d, as_inputs(x)) for d, x in programs]
            if len(runs) == 1:
                return [measure(runs[0], protocol)]
            return measure_interleaved(runs, protocol)

    def measure_module(self, model, example_inputs, protocol: Protocol = MODEL_PROTOCOL) -> Timing:
        return self.measure_pte(self.program_of(model, example_inputs), as_inputs(example_inputs), protocol)

    def measure_modules_interleaved(self, models, example_inputs,
                                    protocol: Protocol = MODEL_PROTOCOL) -> list[Timing]:
        inputs = as_inputs(example_inputs)
        return self.measure_pte_interleaved([(self.program_of(m, inputs), inputs) for m in models], protocol)

    def measure_spec(self, spec: LayerSpec, protocol: Protocol = LAYER_PROTOCOL) -> Timing:
        return self.measure_pte(self.layer_program(spec), (layer_input(spec),), protocol)

    def layer_program(self, spec: LayerSpec) -> bytes:
        """The lowered program of the layer ``spec`` (cached: sweeps measure a shape several times)."""
        data = self.layer_programs.get(spec.key())
        if data is None:
            if len(self.layer_programs) >= LAYER_CACHE:
                self.layer_programs.pop(next(iter(self.layer_programs)))
            data = self.layer_programs[spec.key()] = lower(layer_module(spec), (layer_input(spec),))
        return data

    def run(self, data: bytes, inputs) -> list:
        """The outputs of one run of a ``.pte`` program (for parity checks)."""
        with self.pinned():
            return list(LoadedProgram(data, as_inputs(inputs)).outputs)


__all__ = ["ExecuTorchRuntime", "LoadedProgram", "is_pte", "lower", "set_threads"]
