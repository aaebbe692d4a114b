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

Measuring, as a user measures a network: every sub-network against the full
network in fresh sessions, each model alone for a block of runs, the blocks
alternating (order swapped each round), until the ratio's 95 % interval is
within +-2 % or the cap of :data:`RATIO_CAP` (at least 3 rounds, at most 6
rounds or 10 s per ratio, so a run of 40 networks at 32 px takes a few
minutes; :func:`profilers.blocks.ratio_in_blocks`). Interleaving two models run
by run instead reads pruned networks 4-9 % slower relative to the full one
than separate sessions do. A sub-network's ms is ``ratio x reference``, the
reference being the median of every full-network block of the run; each row
keeps its ratio's interval, whether it was ``sure`` and the host's drift while
it was measured (the full network's block medians, max / min - 1); the result
warns when that drift exceeded ``tolerance``. Other processes on the machine
distort even alternating ratios: a long run is cut by a time slice far more
often than a short one. So on runtimes that compute on the calling thread only
(ONNX Runtime and PyTorch CPU at one thread) each run is timed by the thread's
CPU time (``clock="auto"``; the same as wall-clock on an idle machine, see
:mod:`profilers.protocol`). Scores: :func:`latency_models.metrics.accuracy`.
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
from hwprune.latency.grid import Grid, resolve_grid, with_grid
from hwprune.latency.profiling import (
    Profiler,
    Progress,
    block_protocol,
    family_widths,
    layer_protocol,
    sample_specs,
)
from latency_models import NetworkLatencyModel, full_grid_size, weight_elements
from latency_models.metrics import Accuracy, accuracy
from profilers import Measurement, MeasurementStore
from profilers.atomic import atomic_write_bytes, atomic_write_text
from profilers.blocks import RatioEstimate, block_runner, ratio_in_blocks
from profilers.inputs import as_inputs

log = logging.getLogger("hwprune")
UNIFORM = (0.0, 1 / 3, 2 / 3)
# each ratio: to +-2 % after at least 3 rounds, at most 6 rounds or 10 s (a run measures 20-40 networks)
RATIO_CAP = {"target_rel": 0.02, "min_rounds": 3, "max_rounds": 6, "max_s": 10.0}


@dataclass(frozen=True)
class SubnetRow:
    """One measured sub-network; ``measured_ms`` = ``ratio`` x the final
    reference; ``[ratio_lo, ratio_hi]``: the ratio's 95 % interval, ``sure``
    when it met the target within the cap; ``drift_rel``: the full network's
    block medians while this ratio was measured, max / min - 1 (None: a result
    measured before these were kept)."""
    role: str              # "calibration" or "validation"
    widths: dict
    ratio: float
    measured_ms: float
    iqr_ms: float          # the spread of the sub-network's block medians
    rounds: int            # rounds of alternating blocks
    flops: int
    weights: int
    predicted_ms: dict = field(default_factory=dict)   # model name -> ms
    ratio_lo: float | None = None
    ratio_hi: float | None = None
    sure: bool | None = None
    drift_rel: float | None = None


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
    drift_rel: float | None = None        # the largest of the rows' drift_rel
    tolerance: float = 0.04               # the drift the result warns beyond
    warnings: tuple[str, ...] = ()
    ratio_cap: dict = field(default_factory=lambda: dict(RATIO_CAP))

    @property
    def unsure(self) -> int:
        """Rows whose ratio's interval did not meet the target within the cap."""
        return sum(r.sure is False for r in self.rows)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("device", "model", "samples", "seed", "reference_ms",
                                           "reference_spread_pct", "layer_measurements",
                                           "whole_model_measurements", "full_grid_measurements",
                                           "shapes_measured", "elapsed_s", "clock", "drift_rel", "tolerance",
                                           "unsure")}
        d["warnings"], d["ratio_cap"] = list(self.warnings), dict(self.ratio_cap)
        d["scores"] = {k: v.to_dict() for k, v in self.scores.items()}
        d["rows"] = [r.__dict__ for r in self.rows]
        return d


class FullNetworkBlocks:
    """The full network in fresh-session blocks on ``runtime`` over the whole
    run (``initial`` blocks at the start, then one per round of every ratio),
    and each sub-network's ratio to it in alternating blocks."""

    def __init__(self, runtime, full: torch.nn.Module, example_inputs, protocol, initial: int = 2):
        self.runtime, self.example_inputs, self.protocol = runtime, example_inputs, protocol
        self._full = block_runner(runtime, full, example_inputs, protocol)
        self.reference_medians: list[float] = []
        for _ in range(initial):
            self.reference_block()

    def reference_block(self) -> float:
        self.reference_medians.append(self._full())
        return self.reference_medians[-1]

    @property
    def reference_ms(self) -> float:
        return float(np.median(self.reference_medians))

    def ratio(self, model: torch.nn.Module) -> tuple[RatioEstimate, float]:
        """``model`` / full network, until :data:`RATIO_CAP`; and the spread
        (IQR over median) of ``model``'s block medians."""
        run, medians = block_runner(self.runtime, model, self.example_inputs, self.protocol), []

        def candidate() -> float:
            medians.append(run())
            return medians[-1]
        est = ratio_in_blocks(self.reference_block, candidate, **RATIO_CAP)
        q1, q3 = np.percentile(medians, [25, 75])
        return est, float((q3 - q1) / np.median(medians))


def drift_warning(rows, tolerance: float) -> list[str]:
    """A warning when the host drifted more than ``tolerance`` while a ratio was measured."""
    over = [r for r in rows if r.drift_rel is not None and r.drift_rel > tolerance]
    if not over:
        return []
    worst = max(r.drift_rel for r in over)
    return [f"the host's speed drifted while measuring: the full network's block medians spread up to "
            f"{100 * worst:.0f} % (max / min) while {len(over)} of {len(rows)} ratios were measured, more than "
            f"the tolerance of {100 * tolerance:.0f} %; ratios measured in alternating blocks cancel a steady "
            f"drift, the milliseconds (ratio x the median block) carry it"]


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
             tolerance: float = 0.04, clock: str = "auto", grid: Grid | None = None) -> ValidationResult:
    """Measure ``samples`` random sub-networks of ``model`` on ``device`` and
    score every latency model in ``models`` (default: every registered one).
    ``tolerance``: the host's drift while a ratio is measured (max / min of the
    full network's blocks - 1) beyond which the result warns (default 4 %, the
    width of the +-2 % interval each ratio is measured to). ``grid``: the
    width grid to draw sub-networks on and fit at; default the one the
    engine prunes on here (:func:`hwprune.latency.grid.resolve_grid`: measured
    on this host on first use)."""
    example_inputs = as_inputs(example_inputs)
    if not isinstance(samples, int) or samples < 1:
        raise UserError(f"samples {samples!r} is not a positive integer")
    names = check_models(models)
    t0 = time.perf_counter()
    store = store if store is not None else MeasurementStore()
    base = devices.get(device)
    dev = with_grid(base, grid if grid is not None else resolve_grid(base, store, progress=progress))
    protocol = block_protocol(dev, clock)
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

    meter = FullNetworkBlocks(prof.runtime, model, example_inputs, protocol)
    plan = ([("calibration", uniform_choice(options, f)) for f in UNIFORM]
            + [("calibration", c) for c in random_choices(options, calibration, seed=seed + 7919)]
            + [("validation", c) for c in random_choices(options, samples, seed=seed)])
    it = progress(plan, desc=f"measuring sub-networks on {dev.name}", unit="net") if progress else plan
    raw = []   # (role, choice, ratio to the reference, relative IQR, {rounds, interval, sure, drift})
    for role, choice in it:
        est, iqr_rel = meter.ratio(build(space, choice))
        raw.append((role, choice, est.ratio, iqr_rel, {"rounds": est.rounds, "ratio_lo": est.ratio_lo,
                                                       "ratio_hi": est.ratio_hi, "sure": est.sure,
                                                       "drift_rel": est.drift_rel}))
    ref = meter.reference_ms
    q1, q3 = np.percentile(meter.reference_medians, [25, 75])
    rows, scores = score(space, measurements, raw, ref, names, dev.step_channels)
    warnings = drift_warning(rows, tolerance)
    for w in warnings:
        log.warning("%s", w)
    return ValidationResult(dev.name, source, samples, seed, ref, float(100 * (q3 - q1) / ref), scores,
                            len(measurements), sum(r.role == "calibration" for r in rows) + 1, grid,
                            prof.measured, tuple(rows), time.perf_counter() - t0, protocol.clock,
                            max(r.drift_rel for r in rows), tolerance, tuple(warnings))


def score(space: PruningSpace, measurements, raw, reference_ms: float, names, step_channels: int
          ) -> tuple[list[SubnetRow], dict[str, Accuracy]]:
    """Fit every model in ``names`` on the layer ``measurements`` and the
    calibration rows of ``raw`` (role, choice, ratio, relative IQR, and a dict
    of the row's ``rounds`` and optional ``ratio_lo``, ``ratio_hi``, ``sure``,
    ``drift_rel``; the full network at ``reference_ms`` included), predict
    every row, score the validation rows."""
    full = space.full_choice()
    cal = [(space.specs(full), reference_ms)] + [(space.specs(c), r * reference_ms)
                                                 for role, c, r, _, _ in raw if role == "calibration"]
    fitted = {n: NetworkLatencyModel(n, step_channels=step_channels).fit(measurements).fit_remainder(cal)
              for n in names}
    rows = []
    for role, choice, ratio, iqr_rel, extra in raw:
        specs = space.specs(choice)
        pred = {n: float(m.predict(specs)) for n, m in fitted.items()}
        rows.append(SubnetRow(role, {str(g): list(k) for g, k in choice.items()}, ratio, ratio * reference_ms,
                              iqr_rel * ratio * reference_ms, extra["rounds"], sum(sp.flops for sp in specs),
                              weight_elements(specs), pred, extra.get("ratio_lo"), extra.get("ratio_hi"),
                              extra.get("sure"), extra.get("drift_rel")))
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
            float(r["iqr_ms"]) / float(r["measured_ms"]),
            {"rounds": int(r.get("rounds", r.get("attempts", 1))),   # "attempts": measured run by run
             **{k: r[k] for k in ("ratio_lo", "ratio_hi", "sure", "drift_rel") if r.get(k) is not None}})
           for r in result["rows"]]
    rows, scores = score(space, measurements, raw, ref, names, dev.step_channels)
    return ValidationResult(dev.name, result["model"], result["samples"], result["seed"], ref,
                            result["reference_spread_pct"], scores, len(measurements),
                            result["whole_model_measurements"], result["full_grid_measurements"],
                            result["shapes_measured"], tuple(rows), result["elapsed_s"] + time.perf_counter() - t0,
                            result.get("clock", "wall"), result.get("drift_rel"), result.get("tolerance", 0.04),
                            tuple(result.get("warnings", ())), result.get("ratio_cap") or {})


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
    ax.set_xlabel("measured ms (ratio to the full network in alternating blocks)")
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


__all__ = ["validate", "rescore", "score", "scatter_png", "write_validation", "FullNetworkBlocks", "RATIO_CAP",
           "ValidationResult", "SubnetRow", "check_models", "drift_warning"]
