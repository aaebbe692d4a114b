"""PyTorch eager on an NVIDIA GPU, fp16 or fp32, timed with CUDA events.

Each timed run is bracketed by two CUDA events on the stream the work goes to,
so a sample is the GPU-side span of one forward pass (launch gaps included,
host synchronisation excluded). The stopping rule is the shared protocol's;
the statistics are computed from the event times. Optionally the forward pass
is captured once into a CUDA graph and replayed, which removes per-kernel
launch cost the way a deployment using graphs would.

``torch`` is imported inside the functions so that listing runtimes stays
cheap; a machine without a GPU gets :class:`profilers.RuntimeUnavailable`.
"""
from __future__ import annotations

import collections
import copy
import logging
import platform
import re
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from .inputs import as_inputs
from .protocol import MODEL_PROTOCOL, Protocol, measure, measure_interleaved, median_ci_rel
from .specs import LayerSpec, Timing

log = logging.getLogger(__name__)

DTYPES = ("fp16", "fp32")
# One layer on a GPU runs for microseconds and CUDA events time it with little
# scatter: a short warm-up (cuDNN's autotuning happens in the first run) and
# fewer runs reach the same interval of the median as the CPU protocol.
GPU_LAYER_PROTOCOL = Protocol(warmup_runs=5, warmup_s=0.01, min_runs=25, max_s=0.5, target_rel=0.02)


def require_cuda(kind: str):
    """Import torch and check a CUDA device is there; return the torch module."""
    import torch
    if not torch.cuda.is_available():
        from . import RuntimeUnavailable
        raise RuntimeUnavailable(f"{kind} needs an NVIDIA GPU; torch.cuda.is_available() is False here")
    return torch


def nvidia_driver() -> str | None:
    """The kernel driver's version string (Linux), or None."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            first = f.readline()
    except OSError:
        return None
    found = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", first)  # "... Kernel Module for x86_64  580.159.04  ..."
    return found.group(1) if found else (first.strip() or None)


def gpu_fingerprint() -> dict:
    """What identifies the GPU and its software stack."""
    import torch

    from .ort_cpu import cpu_model
    idx = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    return {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "driver": nvidia_driver(),
            "torch": torch.__version__, "cpu": cpu_model(), "machine": platform.machine()}


def timing_from_samples(samples_ms, protocol: Protocol) -> Timing:
    """A :class:`Timing` from per-run times, with the protocol's statistics."""
    arr = np.asarray(samples_ms, dtype=float)
    q1, q3 = np.percentile(arr, [25, 75])
    ci = median_ci_rel(arr)
    return Timing(median_ms=float(np.median(arr)), iqr_ms=float(q3 - q1), runs=len(arr),
                  ci_rel=float(ci), stable=bool(ci <= protocol.target_rel))


class EventTimer:
    """Wraps a run so that each call is bracketed by CUDA events on ``stream``;
    keeps the last ``keep`` pairs (warm-up runs fall off the front)."""

    def __init__(self, run: Callable[[], object], stream, keep: int):
        self.run = run
        self.stream = stream
        self.pairs: collections.deque = collections.deque(maxlen=keep)

    def __call__(self) -> None:
        import torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        self.run()
        end.record(self.stream)
        self.pairs.append((start, end))

    def last_ms(self, n: int) -> list[float]:
        self.stream.synchronize()
        return [s.elapsed_time(e) for s, e in list(self.pairs)[-n:]]


def measure_events(run: Callable[[], object], stream, protocol: Protocol) -> Timing:
    """``run`` timed by CUDA events on ``stream`` under ``protocol``."""
    timer = EventTimer(run, stream, protocol.max_runs)
    wall = measure(timer, protocol, sync=stream.synchronize)
    return timing_from_samples(timer.last_ms(wall.runs), protocol)


def measure_events_interleaved(runs: list[Callable[[], object]], stream,
                               protocol: Protocol) -> list[Timing]:
    """Several runs alternated (see ``measure_interleaved``), timed by CUDA events."""
    timers = [EventTimer(r, stream, protocol.max_runs) for r in runs]
    walls = measure_interleaved(timers, protocol, sync=stream.synchronize)
    return [timing_from_samples(t.last_ms(w.runs), protocol) for t, w in zip(timers, walls)]


@contextmanager
def cudnn_benchmark(enabled: bool):
    import torch
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def capture_graph(run: Callable[[], object], warmup_runs: int = 3) -> Callable[[], object]:
    """Capture ``run`` (static inputs and outputs) into a CUDA graph; return its
    replay. The replay holds on to ``run`` (and through it the module's weights
    and the inputs) and to the outputs: a graph reads and writes those
    addresses, and freed memory handed to another model makes replays fault."""
    import torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(warmup_runs):  # cuDNN autotuning and allocator warm-up, off the graph
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = run()
    torch.cuda.synchronize()

    def replay():
        graph.replay()

    replay.keep_alive = (run, out, graph)
    return replay


class TorchCudaRuntime:
    """Measures torch modules as PyTorch eager (or a CUDA graph of it) runs them on the GPU."""

    kind = "torch-cuda"

    def __init__(self, dtype: str = "fp16", cuda_graphs: bool = False, channels_last: bool = True,
                 cudnn_benchmark: bool = True):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self._torch = require_cuda("torch-cuda")
        self.dtype = dtype
        self.cuda_graphs = bool(cuda_graphs)
        self.channels_last = bool(channels_last)
        self.cudnn_benchmark = bool(cudnn_benchmark)

    def fingerprint(self) -> dict:
        torch = self._torch
        return {"runtime": "torch-cuda", "version": torch.__version__, "dtype": self.dtype,
                "cuda_graphs": self.cuda_graphs, "channels_last": self.channels_last,
                "cudnn_benchmark": self.cudnn_benchmark,
                "tf32": bool(torch.backends.cudnn.allow_tf32) if self.dtype == "fp32" else False,
                "threads": torch.get_num_threads(), **gpu_fingerprint()}

    @property
    def torch_dtype(self):
        return self._torch.float16 if self.dtype == "fp16" else self._torch.float32

    def _convert(self, t):
        torch = self._torch
        if not isinstance(t, torch.Tensor):
            return t
        t = t.detach().to("cuda", self.torch_dtype if t.is_floating_point() else None)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def prepare(self, model, example_inputs) -> Callable[[], object]:
        """A callable running one forward pass of a GPU copy of ``model`` (the
        caller's module stays where it is), graph-captured if configured."""
        torch = self._torch
        m = copy.deepcopy(model).eval().to("cuda", self.torch_dtype)
        if self.channels_last:
            m = m.to(memory_format=torch.channels_last)
        inputs = tuple(self._convert(t) for t in as_inputs(example_inputs))

        def run():
            return m(*inputs)

        if self.cuda_graphs:
            with cudnn_benchmark(self.cudnn_benchmark):
                return capture_graph(run)
        return run

    def measure_module(self, model, example_inputs, protocol: Protocol = MODEL_PROTOCOL) -> Timing:
        return self._measure([self.prepare(model, example_inputs)], protocol)[0]

    def measure_modules_interleaved(self, models, example_inputs,
                                    protocol: Protocol = MODEL_PROTOCOL) -> list[Timing]:
        return self._measure([self.prepare(m, example_inputs) for m in models], protocol)

    def measure_spec(self, spec: LayerSpec, protocol: Protocol = GPU_LAYER_PROTOCOL) -> Timing:
        from .torch_layers import layer_input, layer_module
        return self.measure_module(layer_module(spec), layer_input(spec), protocol)

    def _measure(self, runs: list[Callable[[], object]], protocol: Protocol) -> list[Timing]:
        torch = self._torch
        stream = torch.cuda.current_stream()
        with cudnn_benchmark(self.cudnn_benchmark), torch.inference_mode():
            if len(runs) == 1:
                return [measure_events(runs[0], stream, protocol)]
            return measure_events_interleaved(runs, stream, protocol)
