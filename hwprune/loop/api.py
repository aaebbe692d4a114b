"""Public functions besides :func:`hwprune.prune`."""
from __future__ import annotations

import json
import logging

import torch

from hwprune import devices
from hwprune.errors import UserError
from hwprune.graph.space import PruningSpace, group_options
from hwprune.importance import criteria as importance
from hwprune.latency.profiling import Profiler, Progress, fit_latency_model, layer_protocol, model_protocol
from hwprune.latency.profiling import measure_latency as _measure
from hwprune.loop.engine import calibrate
from hwprune.select.evaluator import Evaluator
from latency_models import NetworkLatencyModel
from profilers import LayerSpec, Measurement, MeasurementStore
from profilers.inputs import as_inputs

log = logging.getLogger("hwprune")


def stored_measurements(device: str, store: MeasurementStore | None = None) -> list[Measurement]:
    """The largest set of measurements of ``device`` from one host: stored under
    one fingerprint in the store, or in one committed profile file."""
    from profilers.profile_io import load_profile, profile_files, read_header
    store = store if store is not None else MeasurementStore()
    sources: list[list[tuple[str, object]]] = []
    for key in store.devices():
        try:
            if json.loads(key).get("device") == device:
                sources.append(store.items(key))
        except ValueError:
            continue
    for path in (p for folder in devices.profile_dirs() for p in profile_files(folder)):
        try:
            if read_header(path).get("device") == device:
                sources.append(load_profile(path)[1])
        except ValueError as exc:
            log.warning("skipping profile %s: %s", path, exc)
    best = max(sources, key=len, default=[])
    return [Measurement(device, LayerSpec.from_key(k), t) for k, t in best]


def predict_stored(model: torch.nn.Module, example_inputs, device: str, store=None,
                   why: str = "") -> float:
    """Predicted latency (ms) from stored measurements only: the sum of the
    layer predictions (no whole-model measurement, so no remainder). A layer
    family with no stored measurement is an error naming those layer shapes."""
    example_inputs = as_inputs(example_inputs)
    space = PruningSpace(model.eval(), example_inputs)
    specs = space.specs(space.full_choice())
    ms = stored_measurements(device, store)
    dev = devices.get(device)
    lat = NetworkLatencyModel(step_channels=dev.step_channels).fit(ms) if ms else None
    missing = list(dict.fromkeys(specs if lat is None else lat.missing(specs)))
    if missing:
        shown = "; ".join(s.describe() for s in missing[:6])
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise UserError(f"{device} cannot be measured here{f' ({why})' if why else ''} and has no stored "
                        f"measurements of {len(missing)} layer shape(s) of this model: {shown}{more}; profile "
                        f"them on the device (hwprune profile --device {device} --model M --export FILE) "
                        f"and put FILE in {devices.user_dir() / 'profiles'}")
    return lat.predict(specs)


def predict_latency(model: torch.nn.Module, example_inputs, device: str = "ort-cpu-1t", *,
                    store=None, progress: Progress | None = None, profile: bool | None = None) -> float:
    """Predicted latency (ms) of ``model`` on ``device``; any traceable model.

    Where the device's runtime runs here (``profile`` None or True), layer
    shapes missing from the store are profiled on demand, and the prediction
    is the sum of the per-layer step-aware quadratics plus a remainder fitted
    on whole-model measurements of *other* networks: the model's smallest,
    quarter- and half-width sub-networks (on single-thread CPU runtimes timed
    by the thread's CPU time, which other processes' load does not inflate;
    see :func:`hwprune.latency.profiling.device_clock`). Otherwise (``profile=False``, or
    the runtime cannot run here) it is the sum of the layer predictions from
    stored measurements (the store, or a profile file in
    ``devices/profiles/``), and missing layer shapes are an error naming them.
    """
    example_inputs = as_inputs(example_inputs)
    dev = devices.get(device)
    if profile is False:
        return predict_stored(model, example_inputs, device, store, "profile=False")
    try:
        prof = Profiler(dev, store, layer_protocol=layer_protocol(dev))
    except UserError as exc:
        if profile:
            raise
        return predict_stored(model, example_inputs, device, store, str(exc).split(";")[0])
    space = PruningSpace(model.eval(), example_inputs)
    options = {g.gid: group_options(g, dev.step_channels, dev.min_channels) for g in space.groups}
    lat = fit_latency_model(prof, space, options, progress)
    scores = importance.compute("l1", space)
    protocol = model_protocol(dev)
    calibrate(lat, space, lambda m: prof.measure_module(m, example_inputs, protocol=protocol).median_ms, options,
              scores)
    return Evaluator(space, lat, scores).latency_ms(space.full_choice())


def measure_latency(model: torch.nn.Module, example_inputs, device: str = "ort-cpu-1t") -> float:
    """Measured median latency (ms) of the whole model on ``device``; runs on
    single-thread CPU runtimes are timed by the thread's CPU time, as
    :func:`predict_latency` calibrates (equal to wall-clock on an idle
    machine, not inflated by other processes' load)."""
    dev = devices.get(device)
    return _measure(model.eval(), as_inputs(example_inputs), dev, model_protocol(dev))
