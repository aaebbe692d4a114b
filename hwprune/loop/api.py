"""Public functions besides :func:`hwprune.prune`."""
from __future__ import annotations

import json
import logging

import numpy as np
import torch

from hwprune import devices
from hwprune.errors import UserError
from hwprune.graph.space import PruningSpace, device_options
from hwprune.graph.subnets import build
from hwprune.importance import criteria as importance
from hwprune.latency.grid import resolve_grid, with_grid
from hwprune.latency.profiling import (
    Profiler,
    Progress,
    block_protocol,
    fit_latency_model,
    layer_protocol,
    model_protocol,
)
from hwprune.latency.profiling import measure_latency as _measure
from hwprune.loop.fastest import calibrate_networks, calibration_choices, fit_warnings
from hwprune.loop.meter import BlockMeter
from hwprune.select.evaluator import Evaluator
from latency_models import NetworkLatencyModel
from profilers import LayerSpec, Measurement, MeasurementStore
from profilers.inputs import as_inputs

log = logging.getLogger("hwprune")
# whole networks predict_latency calibrates on (never the model itself): up to three quarters of its
# widths, so the prediction of the full network interpolates the layer scale rather than extrapolating
PREDICT_FRACTIONS = (0.0, 0.25, 0.5, 0.75)


def _host_words(fp: dict) -> str:
    return ", ".join(str(fp[k]) for k in ("cpu", "isa", "gpu", "runtime", "version") if fp.get(k)) or "unknown host"


def stored_source(device: str, store: MeasurementStore | None = None) -> tuple[list[Measurement], str]:
    """The largest set of measurements of ``device`` from one host (stored under
    one fingerprint in the store, or in one committed profile file), and where
    they come from in words (the store or the file, the host, the date)."""
    from profilers.profile_io import load_profile, profile_files, read_header
    store = store if store is not None else MeasurementStore()
    sources: list[tuple[list[tuple[str, object]], str]] = []
    for key in store.devices():
        try:
            fp = json.loads(key)
        except ValueError:
            continue
        if fp.get("device") == device:
            sources.append((store.items(key), f"the measurement store {store.path} ({_host_words(fp)})"))
    for path in (p for folder in devices.profile_dirs() for p in profile_files(folder)):
        try:
            head = read_header(path)
            if head.get("device") == device:
                sources.append((load_profile(path)[1], f"profile {path.name} (measured {head.get('date', '?')} on "
                                                       f"{_host_words(head.get('fingerprint') or {})})"))
        except ValueError as exc:
            log.warning("skipping profile %s: %s", path, exc)
    best, where = max(sources, key=lambda s: len(s[0]), default=([], ""))
    return [Measurement(device, LayerSpec.from_key(k), t) for k, t in best], where


def stored_measurements(device: str, store: MeasurementStore | None = None) -> list[Measurement]:
    """The measurements of :func:`stored_source`."""
    return stored_source(device, store)[0]


def spread_rel(ms: list[Measurement]) -> float:
    """The measurements' typical run-to-run spread: median of IQR / median."""
    rel = [m.timing.iqr_ms / m.timing.median_ms for m in ms if m.timing.median_ms > 0]
    return float(np.median(rel)) if rel else 0.0


def predict_stored(model: torch.nn.Module, example_inputs, device: str, store=None,
                   why: str = "") -> float:
    """Predicted latency (ms) from stored measurements only: the sum of the
    layer predictions (no whole-model measurement, so no remainder). A layer
    family with no stored measurement is an error naming those layer shapes."""
    example_inputs = as_inputs(example_inputs)
    space = PruningSpace(model.eval(), example_inputs)
    specs = space.specs(space.full_choice())
    ms, where = stored_source(device, store)
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
    pred = lat.predict(specs)
    log.warning("%s: %.3f ms predicted from %d layer measurements in %s, not measured now: their runs spread "
                "%.1f %% (median IQR / median), and a host's speed drifts 10-50 %% over minutes, which a "
                "prediction from another time or host cannot see; measure_latency measures it now",
                device, pred, len(ms), where, 100 * spread_rel(ms))
    return pred


def predict_latency(model: torch.nn.Module, example_inputs, device: str = "ort-cpu-1t", *,
                    store=None, progress: Progress | None = None, profile: bool | None = None,
                    grid: int | None = None) -> float:
    """Predicted latency (ms) of ``model`` on ``device``; any traceable model.

    Where the device's runtime runs here (``profile`` None or True), layer
    shapes missing from the store are profiled on demand, and the prediction
    is the sum of the per-layer step-aware quadratics plus a remainder fitted
    on whole-model measurements of *other* networks: the model's smallest,
    quarter-, half- and 3/4-width sub-networks, measured against the last in
    fresh sessions, alternating blocks (on single-thread CPU runtimes timed
    by the thread's CPU time, which other processes' load does not inflate;
    see :func:`hwprune.latency.profiling.device_clock`). Otherwise (``profile=False``, or
    the runtime cannot run here) it is the sum of the layer predictions from
    stored measurements (the store, or a profile file in
    ``devices/profiles/``), and missing layer shapes are an error naming them;
    such a prediction logs a warning with where the measurements come from and
    their spread. Widths are on the grid measured on this host
    (:func:`hwprune.latency.grid.resolve_grid`; ``grid`` overrides it).
    """
    example_inputs = as_inputs(example_inputs)
    dev = devices.get(device)
    if profile is False:
        return predict_stored(model, example_inputs, device, store, "profile=False")
    try:
        dev.open()
    except UserError as exc:
        if profile:
            raise
        return predict_stored(model, example_inputs, device, store, str(exc).split(";")[0])
    dev = with_grid(dev, resolve_grid(dev, store, override=grid, progress=progress))
    prof = Profiler(dev, store, layer_protocol=layer_protocol(dev))
    space = PruningSpace(model.eval(), example_inputs)
    options = device_options(space, dev)
    lat = fit_latency_model(prof, space, options, progress, use_table=True)  # its own shapes as measured
    scores = importance.compute("l1", space)
    # the calibration networks against the widest of them, in alternating blocks: the host's drift between
    # them cancels, and their milliseconds are that network's (the model itself is never measured)
    widest = build(space, calibration_choices(options, PREDICT_FRACTIONS[-1:])[0][1])
    meter = BlockMeter(prof.runtime, widest, example_inputs, protocol=block_protocol(dev))
    fit_warnings({device: calibrate_networks(lat, space, meter.measure, options, scores, [], PREDICT_FRACTIONS)})
    return Evaluator(space, lat, scores).latency_ms(space.full_choice())


def measure_latency(model: torch.nn.Module, example_inputs, device: str = "ort-cpu-1t") -> float:
    """Measured median latency (ms) of the whole model on ``device``; runs on
    single-thread CPU runtimes are timed by the thread's CPU time, as
    :func:`predict_latency` calibrates (equal to wall-clock on an idle
    machine, not inflated by other processes' load)."""
    dev = devices.get(device)
    return _measure(model.eval(), as_inputs(example_inputs), dev, model_protocol(dev))
