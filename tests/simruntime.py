"""A simulated device runtime with deterministic latencies, for fast tests.

Latency = sum of per-layer costs + 10 us; a layer's cost rises in blocks of
``step`` output channels and is proportional to its FLOPs (``bound="flops"``)
or to the activations it reads and writes (``bound="memory"``).

``bias`` makes whole-model measurements differ from the layer profile in a
known way: a measured network takes ``bias x`` its simulated latency (layer
shapes are measured without it), so the latency model, fitted to the layers,
predicts X where the runtime measures X x bias. It is a number, or the name of
a function ``model -> factor`` in :data:`BIASES` (device descriptors hold
only plain values); the ``sim_devices`` fixture of conftest.py fills both.

A host's speed, on whole-model measurements only (layer shapes and the step
sweep stay exact): ``noise`` multiplies them alternately by ``1 + noise`` and
``1 - noise`` (so a ratio of two measured in alternating blocks is right on
average but its interval is wide), and ``drift`` slows the host by that share
per 100 whole-model measurements.

``op_ms``: what a runtime that pays per operator adds: that many ms per
conv/linear layer of a whole-model measurement (not in the layer profile,
where it would be part of each layer's cost), so only the latency model's
remainder can learn it.

``interleave``: models measured run by run in one session
(``measure_modules_interleaved``) each find the caches holding the others, so
every one but the slowest of the session measures ``1 + interleave`` x slower;
a model measured alone (a block) is unaffected.
"""
import json
import math
from dataclasses import replace

import torch

from hwprune.graph.space import LAYER_TYPES, layer_input_shapes, layer_spec
from profilers import LayerSpec, Timing

BIASES: dict = {}  # name -> function of the measured model -> latency factor

DESCRIPTOR = """name = "{name}"
runtime = "{runtime}"
description = "simulated"
[options]
{options}
[grid]
step_channels = 8
min_channels = 8
"""


class SimRuntime:
    def __init__(self, bound: str = "flops", step: int = 8, bias: float | str = 1.0, noise: float = 0.0,
                 drift: float = 0.0, interleave: float = 0.0, op_ms: float = 0.0):
        self.bound, self.step, self.bias = bound, int(step), bias
        self.op_ms = float(op_ms)
        self.noise, self.drift, self.calls = float(noise), float(drift), 0
        self.interleave = float(interleave)

    def fingerprint(self) -> dict:
        return {"runtime": "sim", "bound": self.bound, "step": self.step,
                **({"bias": self.bias} if self.bias != 1.0 else {}), **({"op_ms": self.op_ms} if self.op_ms else {})}

    def spec_ms(self, spec: LayerSpec) -> float:
        out = math.ceil(spec.out_channels / self.step) * self.step
        if self.bound == "flops":
            return 0.002 + replace(spec, out_channels=out, groups=out if spec.depthwise else spec.groups).flops / 2e8
        oh, ow = spec.out_hw
        return 0.002 + (spec.in_channels * spec.height * spec.width + out * oh * ow) / 5e5

    def module_ms(self, model, example_inputs) -> float:
        """The simulated latency of the whole model (without the bias)."""
        example_inputs = tuple(example_inputs) if not isinstance(example_inputs, torch.Tensor) else (example_inputs,)
        shapes = layer_input_shapes(model, example_inputs)
        mods = dict(model.named_modules())
        return 0.01 + sum(self.spec_ms(layer_spec(mods[n], s)) + self.op_ms for n, s in shapes.items()
                          if isinstance(mods[n], LAYER_TYPES))

    def bias_of(self, model) -> float:
        return float(BIASES[self.bias](model) if isinstance(self.bias, str) else self.bias)

    def measured_ms(self, model, example_inputs) -> float:
        """What a whole-model measurement returns: the simulated latency times
        the bias, and the host's noise and drift."""
        self.calls += 1
        host = (1.0 + self.noise * (-1) ** self.calls) * (1.0 + self.drift * self.calls / 100.0)
        return self.module_ms(model, example_inputs) * self.bias_of(model) * host * SimRuntime.speed

    @staticmethod
    def _timing(ms: float) -> Timing:
        return Timing(ms, 0.0, 40, 0.0, True)

    speed = 1.0  # the host's slowness: every measurement, layer or whole model, times this (tests change it)

    def measure_spec(self, spec, protocol=None):
        return self._timing(self.spec_ms(spec) * SimRuntime.speed)

    def measure_module(self, model, example_inputs, protocol=None):
        SimRuntime.blocks.append(model)
        return self._timing(self.measured_ms(model, example_inputs))

    sessions: list = []  # models per interleaved measurement, in order
    blocks: list = []    # the model of every whole-model measurement (a block), in order

    def measure_modules_interleaved(self, models, example_inputs, protocol=None):
        SimRuntime.sessions.append(list(models))
        ms = [self.measured_ms(m, example_inputs) for m in models]
        return [self._timing(v if v == max(ms) else v * (1.0 + self.interleave)) for v in ms]


class SimDevices:
    """A devices folder of simulated devices; see the ``sim_devices`` fixture."""

    def __init__(self, folder, monkeypatch):
        self.folder, self._monkeypatch = folder, monkeypatch

    def add(self, name: str, runtime: str = "sim", bias=1.0, **options) -> None:
        """Write the descriptor of device ``name``; ``options`` go to the runtime
        (``bound``, ``step``); ``bias``: a number or a function of the model."""
        if callable(bias):
            self._monkeypatch.setitem(BIASES, name, bias)
            bias = name
        if bias != 1.0:
            options["bias"] = bias
        lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
        (self.folder / f"{name}.toml").write_text(DESCRIPTOR.format(name=name, runtime=runtime, options=lines))
