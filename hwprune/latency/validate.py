"""``hwprune validate``: how well each latency model predicts measured latency.

1. The model's layer shapes are profiled on the device (the same samples the
   engine fits on: :func:`hwprune.latency.profiling.sample_specs`), reusing the store;
   shapes measured now are timed with the same clock as the networks.
2. Calibration: the smallest, one-third and two-thirds uniform sub-networks,
   the full network and ``calibration`` random sub-networks (their own seed)
   are measured end to end; every model's remainder is fitted on them
   (:meth:`NetworkLatencyModel.fit_remainder`).
3. Validation: ``samples`` other random sub-networks
   (:func:`hwprune.graph.subnets.random_choices`, seed ``seed``) are measured end to
   end and predicted by every model; none of them was used to fit anything.

Measuring: every sub-network runs interleaved with the full network (run by
run) and is reported as ``ratio x reference``, the reference being the median
of every full-network median of the run (:class:`RelativeMeter`), so the
host's drift cancels. Other processes on the machine distort even interleaved
ratios: a long run is cut by a time slice far more often than a short one.
So on runtimes that compute on the calling thread only (ONNX Runtime and
PyTorch CPU at one thread) each run is timed by the thread's CPU time
(``clock="auto"``; the same as wall-clock on an idle machine, see
:mod:`profilers.protocol`), and a measurement whose reference median lies
more than ``tolerance`` from the pooled one is repeated (up to ``attempts``
times), keeping the attempt whose reference was closest. Scores:
:func:`latency_models.metrics.accuracy`.
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import latency_models
from hwprune import devices
from hwprune.errors import UserError
from hwprune.graph.space import PruningSpace, device_options, uniform_choice
from hwprune.graph.subnets import build, random_choices
from hwprune.latency.profiling import (
    Profiler,
    Progress,
    RelativeMeter,
    family_widths,
    layer_protocol,
    model_protocol,
    sample_specs,
)
from latency_models import NetworkLatencyModel, full_grid_size, weight_elements
from latency_models.metrics import Accuracy, accuracy
from profilers import Measurement, MeasurementStore, Timing
from profilers.atomic import atomic_write_bytes, atomic_write_text
from profilers.inputs import as_inputs

log = logging.getLogger("hwprune")
UNIFORM = (0.0, 1 / 3, 2 / 3)


@dataclass(frozen=True)
class SubnetRow:
    """One measured sub-network; ``measured_ms`` = ``ratio`` x the final reference."""
    role: str              # "calibration" or "validation"
    widths: dict
    ratio: float
    measured_ms: float
    iqr_ms: float
    attempts: int
    flops: int
    weights: int
    predicted_ms: dict = field(default_factory=dict)   # model name -> ms


@dataclass(frozen=True)
class ValidationResult:
    device: str
    model: str
    samples: int
    seed: int
    reference_ms: float
    reference_spread_pct: float           # IQR of the reference medians over their median
    scores: dict[str, Accuracy]
    layer_measurements: int               # layer shapes every model was fitted on
    whole_model_measurements: int         # calibration sub-networks (full network included)
    full_grid_measurements: int           # a full lookup table of every grid width pair
    shapes_measured: int                  # measured now (the rest came from the store)
    rows: tuple[SubnetRow, ...]
    elapsed_s: float
    clock: str = "wall"                   # how each run was timed: wall-clock or the thread's CPU time

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("device", "model", "samples", "seed", "reference_ms",
                                           "reference_spread_pct", "layer_measurements",
                                           "whole_model_measurements", "full_grid_measurements",
                                           "shapes_measured", "elapsed_s", "clock")}
        d["scores"] = {k: v.to_dict() for k, v in self.scores.items()}
        d["rows"] = [r.__dict__ for r in self.rows]
        return d


def measure_ratio(meter: RelativeMeter, model: torch.nn.Module, tolerance: float = 0.06,
                  attempts: int = 3) -> tuple[float, Timing, int]:
    """``model`` / reference latency measured interleaved, repeated while the
    reference's median strays more than ``tolerance`` from the pooled one."""
    best = None
    for attempt in range(1, attempts + 1):
        pooled = meter.reference_ms
        ratio, timing = meter.ratio(model)
        stray = abs(meter.reference_medians[-1] / pooled - 1.0)
        if best is None or stray < best[0]:
            best = (stray, ratio, timing)
        if stray <= tolerance:
            break
    return best[1], best[2], attempt


def check_models(names) -> list[str]:
    known = latency_models.list_models()
    names = list(names) if names else known
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(f"unknown latency model(s) {', '.join(bad)}; known: {', '.join(known)}")
    return names


def validate(model: torch.nn.Module, example_inputs, device: str, samples: int, *, models=None,
             calibration: int = 16, seed: int = 0, store: MeasurementStore | None = None,
             source: str = "model", progress: Progress | None = None,
             tolerance: float = 0.06, clock: str = "auto") -> ValidationResult:
    """Measure ``samples`` random sub-networks of ``model`` on ``device`` and
    score every latency model in ``models`` (default: every registered one)."""
    example_inputs = as_inputs(example_inputs)
    if not isinstance(samples, int) or samples < 1:
        raise UserError(f"samples {samples!r} is not a positive integer")
    names = check_models(models)
    t0 = time.perf_counter()
    dev = devices.get(device)
    protocol = model_protocol(dev, clock)
    model = model.eval()
    space = PruningSpace(model, example_inputs)
    if not space.groups:
        raise UserError(f"{source} has no prunable channel groups: it has no sub-networks to validate on")
    options = device_options(space, dev)
    prof = Profiler(dev, store, layer_protocol=layer_protocol(dev, clock))
    full = space.full_choice()
    measurements = prof.measure_specs(sample_specs(space, options) + space.specs(full), progress)
    fams = family_widths(space, options)
    grid = full_grid_size({f: (ins, outs, b.depthwise) for f, (b, ins, outs) in fams.items()})

    meter = RelativeMeter(prof, model, example_inputs, initial=3, protocol=protocol)
    plan = ([("calibration", uniform_choice(options, f)) for f in UNIFORM]
            + [("calibration", c) for c in random_choices(options, calibration, seed=seed + 7919)]
            + [("validation", c) for c in random_choices(options, samples, seed=seed)])
    it = progress(plan, desc=f"measuring sub-networks on {dev.name}", unit="net") if progress else plan
    raw = []   # (role, choice, ratio to the reference, relative IQR, attempts)
    for role, choice in it:
        ratio, timing, attempts = measure_ratio(meter, build(space, choice), tolerance)
        raw.append((role, choice, ratio, timing.iqr_ms / timing.median_ms, attempts))
    ref = meter.reference_ms
    q1, q3 = np.percentile(meter.reference_medians, [25, 75])
    rows, scores = score(space, measurements, raw, ref, names, dev.step_channels)
    return ValidationResult(dev.name, source, samples, seed, ref, float(100 * (q3 - q1) / ref), scores,
                            len(measurements), sum(r.role == "calibration" for r in rows) + 1, grid,
                            prof.measured, tuple(rows), time.perf_counter() - t0,
                            "wall" if protocol is None else protocol.clock)


def score(space: PruningSpace, measurements, raw, reference_ms: float, names, step_channels: int
          ) -> tuple[list[SubnetRow], dict[str, Accuracy]]:
    """Fit every model in ``names`` on the layer ``measurements`` and the
    calibration rows of ``raw`` (role, choice, ratio, relative IQR, attempts;
    the full network at ``reference_ms`` included), predict every row, score
    the validation rows."""
    full = space.full_choice()
    cal = [(space.specs(full), reference_ms)] + [(space.specs(c), r * reference_ms)
                                                 for role, c, r, _, _ in raw if role == "calibration"]
    fitted = {n: NetworkLatencyModel(n, step_channels=step_channels).fit(measurements).fit_remainder(cal)
              for n in names}
    rows = []
    for role, choice, ratio, iqr_rel, attempts in raw:
        specs = space.specs(choice)
        pred = {n: float(m.predict(specs)) for n, m in fitted.items()}
        rows.append(SubnetRow(role, {str(g): list(k) for g, k in choice.items()}, ratio, ratio * reference_ms,
                              iqr_rel * ratio * reference_ms, attempts, sum(sp.flops for sp in specs),
                              weight_elements(specs), pred))
    val = [r for r in rows if r.role == "validation"]
    return rows, {n: accuracy([r.predicted_ms[n] for r in val], [r.measured_ms for r in val]) for n in names}


def rescore(result: dict, model: torch.nn.Module, example_inputs, store: MeasurementStore, models=None
            ) -> ValidationResult:
    """``result`` (a :meth:`ValidationResult.to_dict`) scored again with the
    current latency models: the same measured sub-networks and the layer
    measurements of the run (from ``store``); nothing is measured."""
    example_inputs = as_inputs(example_inputs)
    names = check_models(models or list(result["scores"]))
    t0 = time.perf_counter()
    dev = devices.get(result["device"])
    space = PruningSpace(model.eval(), example_inputs)
    options = device_options(space, dev)
    prof = Profiler(dev, store)
    specs = list(dict.fromkeys(sample_specs(space, options) + space.specs(space.full_choice())))
    timings = [prof.store.get(prof.rows_key, sp.key()) for sp in specs]
    if any(t is None for t in timings):
        raise UserError(f"{sum(t is None for t in timings)} layer shapes of this run are not in {store.path}")
    measurements = [Measurement(dev.name, sp, t) for sp, t in zip(specs, timings)]
    ref = float(result["reference_ms"])
    raw = [(r["role"], {int(g): tuple(k) for g, k in r["widths"].items()}, float(r["ratio"]),
            float(r["iqr_ms"]) / float(r["measured_ms"]), int(r["attempts"])) for r in result["rows"]]
    rows, scores = score(space, measurements, raw, ref, names, dev.step_channels)
    return ValidationResult(dev.name, result["model"], result["samples"], result["seed"], ref,
                            result["reference_spread_pct"], scores, len(measurements),
                            result["whole_model_measurements"], result["full_grid_measurements"],
                            result["shapes_measured"], tuple(rows), result["elapsed_s"] + time.perf_counter() - t0,
                            result.get("clock", "wall"))


def scatter_png(result: ValidationResult, models=None) -> bytes:
    """Predicted vs measured ms of the validation sub-networks, one marker per
    model, with the +-5 % and +-10 % bands."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    val = [r for r in result.rows if r.role == "validation"]
    names = list(models or result.scores)
    meas = np.array([r.measured_ms for r in val])
    fig = Figure(figsize=(6.4, 6.0), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    preds = [np.array([r.predicted_ms[n] for r in val]) for n in names]
    lo = 0.8 * min([meas.min()] + [p.min() for p in preds])
    hi = 1.25 * max([meas.max()] + [p.max() for p in preds])
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, color="black", lw=1)
    for f, style in ((0.05, ":"), (0.10, "--")):
        ax.plot(xs, xs * (1 + f), color="grey", lw=0.8, ls=style)
        ax.plot(xs, xs * (1 - f), color="grey", lw=0.8, ls=style, label=f"+-{100 * f:.0f} %")
    markers = "os^vD<>xP*"
    for i, (name, p) in enumerate(zip(names, preds)):
        s = result.scores[name]
        ax.scatter(meas, p, s=14, marker=markers[i % len(markers)], alpha=0.75,
                   label=f"{name}: RMSPE {s.rmspe_pct:.1f} %, {s.within_10_pct:.0f} % within +-10 %")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import LogLocator, ScalarFormatter
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(ScalarFormatter() if hi / lo < 4 else matplotlib.ticker.NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured ms (interleaved with the full network)")
    ax.set_ylabel("predicted ms")
    ax.set_title(f"{result.model} on {result.device}: {len(val)} random sub-networks", fontsize=10)
    ax.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_validation(result: ValidationResult, out: Path) -> list[str]:
    """``validation.json`` (:meth:`ValidationResult.to_dict`) and ``scatter.png``
    into the folder ``out``, each atomically; returns their paths."""
    files = [out / "validation.json", out / "scatter.png"]
    try:
        atomic_write_text(files[0], json.dumps(result.to_dict(), indent=1, default=float))
        atomic_write_bytes(files[1], scatter_png(result))
    except OSError as exc:
        raise UserError(f"cannot write into {out} ({exc.strerror or exc})") from None
    return [str(f) for f in files]


__all__ = ["validate", "rescore", "score", "scatter_png", "write_validation", "measure_ratio", "ValidationResult",
           "SubnetRow", "check_models"]
