"""Profile the layer shapes a pruning space can take, and fit its latency model.

Sample design, per layer family (same op, kernel, stride, input size): the
widths the family's layers can take on the device grid; up to 6 input x 6
output widths spread geometrically over that range (the ends included; every
grid pair for the narrow families of CIFAR networks), or up to 12 points on
the diagonal for depthwise convs. Every sample is looked up in the
measurement store first, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import inspect
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import torch

import profilers
from hwprune.devices import Device
from hwprune.errors import UserError
from hwprune.graph.grouped_modes import choose_modes, mode_specs, whole_specs
from hwprune.graph.space import PruningSpace, device_options
from latency_models import NetworkLatencyModel
from profilers import LayerSpec, Measurement, MeasurementStore, Timing, fingerprint_key, measurement_key
from profilers.anchor import REFERENCE, measure_anchored
from profilers.blocks import BLOCK_PROTOCOL

log = logging.getLogger("hwprune")
Progress = Callable[..., Iterable]


def _spread(values: Iterable[int], k: int) -> list[int]:
    """Up to ``k`` of the values, ends included, spaced geometrically in width:
    narrow widths (where pruned networks live) are sampled densely."""
    vals = sorted(set(values))
    if len(vals) <= k:
        return vals
    lo, hi = max(vals[0], 1), vals[-1]
    picks = {vals[0], vals[-1]}
    for t in np.geomspace(lo, hi, k)[1:-1]:
        picks.add(min(vals, key=lambda v: abs(np.log(max(v, 1) / t))))
    for i in np.linspace(0, len(vals) - 1, k):  # fill up where geometric picks coincide
        if len(picks) >= k:
            break
        picks.add(vals[int(round(i))])
    return sorted(picks)


def family_widths(space: PruningSpace, options: dict[int, list[tuple[int, ...]]]
                  ) -> dict[str, tuple[LayerSpec, set[int], set[int]]]:
    """Per layer family: a spec of it and the input and output widths its
    layers can take on the grid (the cells of a full lookup table)."""
    full = space.full_choice()
    fam_in: dict[str, set[int]] = defaultdict(set)
    fam_out: dict[str, set[int]] = defaultdict(set)
    base: dict[str, LayerSpec] = {}
    for layer in space.layers:
        if layer.group_in:  # a whole-group conv: one family per group count (whole_specs)
            continue
        fam = layer.spec.family()
        base.setdefault(fam, layer.spec)
        in_g = sorted({t.gid for t in layer.in_terms})
        out_g = sorted({t.gid for t in layer.out_terms})
        for frac in np.linspace(0.0, 1.0, 9):
            ch = dict(full)
            for gid in set(in_g) | set(out_g):
                opts = options[gid]
                ch[gid] = opts[int(round(frac * (len(opts) - 1)))]
            n_in, n_out = space.layer_widths(layer, ch)
            fam_in[fam].add(n_in)
            fam_out[fam].add(n_out)
        for gid in in_g:
            for opt in options[gid]:
                fam_in[fam].add(space.layer_widths(layer, {**full, gid: opt})[0])
        for gid in out_g:
            for opt in options[gid]:
                fam_out[fam].add(space.layer_widths(layer, {**full, gid: opt})[1])
    return {fam: (b, fam_in[fam], fam_out[fam]) for fam, b in base.items()}


def sample_specs(space: PruningSpace, options: dict[int, list[tuple[int, ...]]]) -> list[LayerSpec]:
    specs = []
    for fam, (b, ins, outs) in family_widths(space, options).items():
        if b.depthwise:
            for n in _spread(outs, 12):
                specs.append(replace(b, in_channels=n, out_channels=n, groups=n))
        else:
            for n_in in _spread(ins, 6):
                for n_out in _spread(outs, 6):
                    specs.append(replace(b, in_channels=n_in, out_channels=n_out))
    return specs + whole_specs(space, options)


def misaligned_specs(space: PruningSpace, options: dict[int, list[tuple[int, ...]]], align: int | None,
                     free: bool = False) -> list[LayerSpec]:
    """Samples off the device's alignment (``align``): for each conv family that
    can take a misaligned input width (one of its own widths is, or ``free``:
    any width may be asked for), inputs half an alignment below a spread of its
    widths and outputs across its range, so the latency model sees the plain
    kernels the runtime falls back to there (:func:`latency_models.quadratic.misaligned`)."""
    if not align or align <= 1:
        return []
    specs = []
    for _, (b, ins, outs) in family_widths(space, options).items():
        if b.kind != "conv" or (b.groups > 1 and not b.depthwise):  # grouped convs keep their widths
            continue
        own = [n for n in ins | {b.in_channels} if n % align and n > align]
        if not (own or free):
            continue
        top = max(ins | {b.in_channels})
        cands = sorted({n - align // 2 if n % align == 0 else n for n in ins if n > align} | set(own)
                       | {align + 1} if top > align + 1 else set(own))
        if b.depthwise:
            specs += [replace(b, in_channels=n, out_channels=n, groups=n) for n in _spread(cands, 6)]
        else:
            specs += [replace(b, in_channels=a, out_channels=o) for a in _spread(cands, 4) for o in _spread(outs, 4)]
    return specs


def default_layer_protocol(runtime) -> profilers.Protocol:
    """The protocol ``runtime.measure_spec`` uses when given none."""
    p = inspect.signature(runtime.measure_spec).parameters.get("protocol")
    return p.default if p is not None and isinstance(p.default, profilers.Protocol) else profilers.LAYER_PROTOCOL


# sessions per layer shape: two (forward, then backward in each chunk, a third where they disagree) halve a
# shape's own session-to-session noise, which no drift correction removes, at twice the profiling time;
# HWPRUNE_PROFILE_SESSIONS=1 measures each shape once (faster, noisier)
PASSES = 2


def profile_sessions() -> int:
    """Sessions per layer shape: ``$HWPRUNE_PROFILE_SESSIONS`` (1 or 2), else :data:`PASSES`."""
    raw = os.environ.get("HWPRUNE_PROFILE_SESSIONS", "").strip()
    if not raw:
        return PASSES
    if raw not in ("1", "2"):
        raise UserError(f"HWPRUNE_PROFILE_SESSIONS={raw!r}: give 1 or 2 sessions per layer shape")
    return int(raw)


FOOTING_READINGS = 3  # sessions of the reference layer read for the host's footing now


class Profiler:
    """A device's runtime plus its store: measures layer specs and whole models."""

    def __init__(self, device: Device, store: MeasurementStore | None = None,
                 layer_protocol: profilers.Protocol | None = None, passes: int | None = None):
        """``layer_protocol``: how layer shapes are measured (default the runtime's);
        ``passes``: sessions per shape (:func:`profilers.anchor.measure_anchored`;
        default ``$HWPRUNE_PROFILE_SESSIONS`` or :data:`PASSES`)."""
        self.device, self.passes = device, passes if passes is not None else profile_sessions()
        self.layer_kw = {} if layer_protocol is None else {"protocol": layer_protocol}
        self.runtime = device.open()
        self.store = store if store is not None else MeasurementStore()
        host = {"device": device.name, **self.runtime.fingerprint()}
        self.fp = fingerprint_key(host)  # facts about the device on this host (its channel step)
        self.rows_key = measurement_key(host, layer_protocol or default_layer_protocol(self.runtime))
        self.measured = 0
        self.reused = 0

    def measure_specs(self, specs: list[LayerSpec], progress: Progress | None = None) -> list[Measurement]:
        out, todo = [], []
        for s in dict.fromkeys(specs):
            t = self.store.get(self.rows_key, s.key())
            if t is None:
                todo.append(s)
            else:
                self.reused += 1
                out.append(Measurement(self.device.name, s, t))
        if not todo:
            return out
        bar = (lambda items: progress(items, desc=f"profiling {self.device.name}", unit="shape")) if progress else None

        def done(s: LayerSpec, t: Timing) -> None:
            self.store.put(self.rows_key, s.key(), t)
            self.measured += 1
            out.append(Measurement(self.device.name, s, t))
        measure = lambda s: self.runtime.measure_spec(s, **self.layer_kw)
        anchor = self.store.get_meta(self.rows_key, "anchor_ms")
        if anchor is None:  # the first reading on this host and runtime: kept before anything is stored
            anchor = measure(REFERENCE).median_ms
            self.store.put_meta(self.rows_key, "anchor_ms", anchor)
        measure_anchored(measure, todo, anchor, progress=bar, done=done, passes=self.passes)
        return out

    def footing(self, readings: int = FOOTING_READINGS) -> float:
        """How fast the host runs now against the moment the layer profile is
        scaled to (:mod:`profilers.anchor`): the reference layer's median over
        ``readings`` fresh sessions now, over its anchor reading; 1.0 where no
        anchor is stored. Layer costs from the profile times this are on the
        footing of whole networks measured now."""
        anchor = self.store.get_meta(self.rows_key, "anchor_ms")
        if not anchor:
            return 1.0
        now = [self.runtime.measure_spec(REFERENCE, **self.layer_kw).median_ms for _ in range(readings)]
        return float(np.median(now) / anchor)

    def measure_module(self, model: torch.nn.Module, example_inputs, attempts: int = 3,
                       protocol: profilers.Protocol | None = None) -> Timing:
        """Whole-model latency; an unstable measurement (the machine was busy) is
        repeated, and the attempt with the tightest interval is kept."""
        best = None
        kw = {} if protocol is None else {"protocol": protocol}
        for _ in range(attempts):
            t = self.runtime.measure_module(model, example_inputs, **kw)
            if best is None or t.ci_rel < best.ci_rel:
                best = t
            if t.stable:
                break
        if not best.stable:
            log.warning("unstable measurement (median %.3f ms, IQR %.3f ms): is the machine busy?",
                        best.median_ms, best.iqr_ms)
        return best


CLOCKS = ("auto", "thread", "wall")
# runtimes that, at one thread, compute on the calling thread only (checked per runtime with
# per-thread CPU times: ExecuTorch with a 1-thread XNNPACK pool, OpenVINO with INFERENCE_NUM_THREADS 1)
CALLING_THREAD_RUNTIMES = ("ort-cpu", "torch-cpu", "executorch-xnnpack", "openvino-cpu")


def device_clock(device: Device, clock: str = "auto") -> str:
    """How runs are timed on ``device``: ``"thread"`` (the calling thread's CPU
    time, immune to other processes taking the core; see
    :mod:`profilers.protocol`) or ``"wall"``. ``auto``: the thread clock where
    the runtime computes on the calling thread only (ONNX Runtime, PyTorch,
    ExecuTorch or OpenVINO on the CPU at one thread), else wall-clock."""
    if clock not in CLOCKS:
        raise UserError(f"clock {clock!r} is not one of {', '.join(CLOCKS)}")
    one_thread = device.runtime in CALLING_THREAD_RUNTIMES and int(dict(device.options).get("threads", 1)) == 1
    if clock == "thread" and not one_thread:
        raise UserError(f"the thread clock only times runtimes that compute on the calling thread "
                        f"(ort-cpu-1t, torch-cpu-1t, executorch-xnnpack-1t, openvino-cpu-1t), not {device.name}; "
                        f"use --clock wall")
    return "thread" if clock == "thread" or (clock == "auto" and one_thread) else "wall"


def model_protocol(device: Device, clock: str = "auto") -> profilers.Protocol | None:
    """The whole-model protocol on the thread clock, capped at 2.5 s per model
    (hundreds of runs of a few ms each); None (the runtime's own protocol)
    where ``clock`` resolves to wall-clock."""
    if device_clock(device, clock) == "wall":
        return None
    return replace(profilers.MODEL_PROTOCOL, max_s=2.5, clock="thread")


def block_protocol(device: Device, clock: str = "auto") -> profilers.Protocol:
    """One block of a ratio measured in alternating blocks
    (:data:`profilers.blocks.BLOCK_PROTOCOL`), timed by ``clock`` as resolved
    by :func:`device_clock`."""
    return replace(BLOCK_PROTOCOL, clock=device_clock(device, clock))


def layer_protocol(device: Device, clock: str = "auto") -> profilers.Protocol | None:
    """The layer protocol on the thread clock; None where ``clock`` resolves to wall-clock."""
    if device_clock(device, clock) == "wall":
        return None
    return replace(profilers.LAYER_PROTOCOL, clock="thread")


def measure_grouped_modes(profiler: Profiler, space: PruningSpace, progress: Progress | None = None,
                          fractions=(0.25, 0.5, 0.75)) -> dict:
    """Per grouped conv of ``space`` that may lose whole groups, the mode the
    device runs faster (:func:`hwprune.graph.grouped.choose_modes` on the
    conv measured in both modes at ``fractions`` of its width)."""
    if not any(r.whole_ok for r in space.grouped):
        return {}
    specs = []
    for r in space.grouped:
        spec = next(replace(l.spec, groups=r.groups) for l in space.layers if l.name == r.name)
        specs += [s for f in fractions for s in mode_specs(spec, f)]
    ms = {m.spec: m.timing.median_ms for m in profiler.measure_specs(specs, progress)}
    return choose_modes(space, ms.__getitem__, fractions, source="measured")


def fit_latency_model(profiler: Profiler, space: PruningSpace, options,
                      progress: Progress | None = None, layer_model="step-quadratic",
                      free_widths: bool = False, also=(), use_table: bool = False,
                      footing: float | None = None) -> NetworkLatencyModel:
    """Measure (or reuse) the sampled layer shapes and fit a network model whose
    layers are ``layer_model`` (a registered name), at the device's step and
    alignment. The model's own widths are always measured, and so are ``also``
    (the shapes of networks to be predicted); so are widths off the alignment
    where the model has some, or everywhere with ``free_widths`` (predictions
    for any width, not only the grid's). ``use_table``: a measured shape is
    answered as measured (for predicting given networks; a selector wants the
    smooth model, see :class:`NetworkLatencyModel`). The layers are put on the
    host's footing of now (:meth:`Profiler.footing`), where the whole networks
    the remainder is fitted on are measured next: a profile measured while the
    host ran 1.8x slower than it runs now (or faster) would otherwise leave the
    remainder to absorb that, which its bounded layer scale cannot. ``footing``:
    the factor recorded when the networks were measured, instead of reading it."""
    dev = profiler.device
    specs = (sample_specs(space, options) + space.specs(space.full_choice()) + list(also)
             + misaligned_specs(space, options, dev.align_channels, free=free_widths))
    ms = profiler.measure_specs(specs, progress)
    lat = NetworkLatencyModel(layer_model, step_channels=dev.step_channels, use_table=use_table,
                              align_channels=dev.align_channels or None).fit(ms)
    # whole networks are measured next: the layers on their footing
    lat.footing_ = profiler.footing() if footing is None else footing
    return lat


def measure_latency(model: torch.nn.Module, example_inputs, device: Device,
                    protocol: profilers.Protocol | None = None) -> float:
    """Median latency in ms of the whole model on the device (fresh
    measurement; ``protocol``: default the runtime's)."""
    kw = {} if protocol is None else {"protocol": protocol}
    return device.open().measure_module(model, example_inputs, **kw).median_ms


__all__ = ["Profiler", "fit_latency_model", "model_protocol", "block_protocol", "layer_protocol", "device_clock",
           "sample_specs", "family_widths", "measure_latency", "profilers"]


def profile_model(model: torch.nn.Module, example_inputs, device: Device, store: MeasurementStore | None = None,
                  source: str = "model", export=None, progress: Progress | None = None) -> tuple[dict, dict]:
    """The job of ``hwprune profile``: measure the model's layer shapes on
    ``device`` (reusing stored ones), fit its latency model, detect the
    device's channel step where none is stored (or the stored one was
    measured on a busy machine), measure the whole model, and with ``export``
    write the device's stored measurements to that file. Returns (figures,
    JSON-serialisable; the step record)."""
    from hwprune.latency.grid import measure_step, stored_step
    from profilers.profile_io import export_profile
    space = PruningSpace(model, example_inputs)
    prof = Profiler(device, store)
    options = device_options(space, device)
    lat = fit_latency_model(prof, space, options, progress)
    step = stored_step(prof.store, prof.fp)
    step_new = step is None or step.get("reliable") is False   # none yet, or measured on a busy machine
    if step_new:
        step = measure_step(prof.runtime, prof.store, prof.fp, progress)
    baseline = prof.measure_module(model, example_inputs)
    data = {"device": device.name, "model": source, "groups": len(space.groups), "layers": len(space.layers),
            "families": len(lat.families_), "shapes_measured": prof.measured, "shapes_reused": prof.reused,
            "step_channels": step.get("step_channels"), "align_channels": step.get("align_channels"),
            "step_detected_now": step_new,
            "step_reliable": step.get("reliable", True),
            "grid_step_channels": device.step_channels,
            "baseline_ms": baseline.median_ms, "baseline_iqr_ms": baseline.iqr_ms,
            "sum_of_layers_ms": lat.layers_ms(space.specs(space.full_choice())), "store": str(prof.store.path)}
    if export:
        try:
            n = export_profile(prof.store, prof.rows_key, export)
        except OSError as exc:
            raise UserError(f"cannot write the profile {export} ({exc.strerror or exc})") from None
        data["exported"], data["exported_measurements"] = str(export), n
    return data, step
