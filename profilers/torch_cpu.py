"""PyTorch eager on the CPU, fp32, with a pinned number of intra-op threads.

Inputs and weights are in channels_last memory format by default: in NCHW,
eager CPU convs at one thread are bimodal from run to run, channels_last is
stable. Same methods as every runtime (see :mod:`profilers.ort_cpu`).
"""
from __future__ import annotations

import copy
import platform
from collections.abc import Callable
from contextlib import contextmanager

import torch

from .inputs import as_inputs
from .ort_cpu import cpu_isa, cpu_model
from .protocol import LAYER_PROTOCOL, MODEL_PROTOCOL, Protocol, measure, measure_interleaved
from .specs import LayerSpec, Timing
from .torch_layers import layer_input, layer_module


@contextmanager
def pinned_threads(threads: int):
    """Run the block with ``threads`` intra-op threads, then restore the old count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchCpuRuntime:
    """Measures torch modules as PyTorch eager runs them on this CPU."""

    kind = "torch-cpu"

    def __init__(self, threads: int = 1, channels_last: bool = True):
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.threads = int(threads)
        self.channels_last = bool(channels_last)

    def fingerprint(self) -> dict:
        return {"runtime": "torch-cpu", "version": torch.__version__, "threads": self.threads,
                "dtype": "fp32", "memory_format": "channels_last" if self.channels_last else "contiguous",
                "cpu": cpu_model(), "isa": cpu_isa(), "machine": platform.machine()}

    def _convert(self, t):
        if isinstance(t, torch.Tensor):
            t = t.detach().to("cpu", torch.float32) if t.is_floating_point() else t.detach().cpu()
            if self.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
        return t

    def prepare(self, model: torch.nn.Module, example_inputs) -> Callable[[], object]:
        """A callable running one forward pass of a copy of ``model`` (the
        caller's module is left untouched) in this runtime's format."""
        m = copy.deepcopy(model).to("cpu", torch.float32).eval()
        if self.channels_last:
            m = m.to(memory_format=torch.channels_last)
        inputs = tuple(self._convert(t) for t in as_inputs(example_inputs))
        return lambda: m(*inputs)

    def measure_callable(self, run: Callable[[], object], protocol: Protocol) -> Timing:
        with pinned_threads(self.threads), torch.inference_mode():
            return measure(run, protocol)

    def measure_module(self, model, example_inputs, protocol: Protocol = MODEL_PROTOCOL) -> Timing:
        return self.measure_callable(self.prepare(model, example_inputs), protocol)

    def measure_modules_interleaved(self, models, example_inputs,
                                    protocol: Protocol = MODEL_PROTOCOL) -> list[Timing]:
        runs = [self.prepare(m, example_inputs) for m in models]
        with pinned_threads(self.threads), torch.inference_mode():
            return measure_interleaved(runs, protocol)

    def measure_spec(self, spec: LayerSpec, protocol: Protocol = LAYER_PROTOCOL) -> Timing:
        return self.measure_module(layer_module(spec), layer_input(spec), protocol)
