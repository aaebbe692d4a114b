"""Free-width part of the latency-model benchmark (``bench_latency_models.py --free-widths``).

Users' models have widths such as 37 or 105, and a latency model must be right
for any width, not only the device grid's. For each architecture (default the
zoo's free-width ``concatnet``, ``invresnet`` and ``groupednet`` at 64x64),
on one device:

1. the device's grid (step and alignment) is the one measured on this host
   (:func:`hwprune.latency.grid.resolve_grid`);
2. the latency model is fitted as ``predict_latency`` fits it for a given
   network, with free-width samples and every sub-network's own layer shapes
   measured and answered as measured
   (:func:`hwprune.latency.profiling.fit_latency_model` with ``free_widths``,
   ``also`` and ``use_table``), and calibrated on the full network, three
   uniform and two split grid sub-networks (:func:`hwprune.loop.engine.calibrate`) and
   ``CALIBRATION`` random free-width ones (other seed), whose mixes of
   aligned and misaligned widths show what layout reorders cost, each
   measured against the full network in alternating blocks as in 3.;
3. ``--samples`` random sub-networks with free widths (every group at least
   ``MIN_SHARE`` of its width) are predicted as a ratio to the full network's
   prediction, and measured as a user measures them: the pruned and the full
   network in fresh sessions, in alternating blocks, until the 95 % interval
   of the ratio is within +-2 % (:func:`profilers.blocks.ratio_in_blocks`), so
   the host's drift cancels;
4. the error of a sub-network is predicted ratio / measured ratio - 1.

Each architecture's record keeps the whole networks its remainder was
fitted on (``calibration``: widths and measured ms, the full network first),
so :func:`rescore_model` can score a changed latency model on the same
measurements (``--free-widths --rescore JSON --store STORE``).

The target (issue "Any host"): >= 95 % of sub-networks within +-10 % and
>= 80 % within +-5 %.
"""
from __future__ import annotations

import math
import time

import numpy as np

DEFAULT_MODELS = ["concatnet", "invresnet", "groupednet"]
CALIBRATION = 8  # random free-width networks measured whole for the remainder, besides the engine's four
MIN_SHARE = 0.1
TARGET = {"within_10_pct": 95.0, "within_5_pct": 80.0}


def free_options(space) -> dict:
    from hwprune.graph.space import group_options
    return {g.gid: [o for o in group_options(g, 1, 1) if sum(o) >= MIN_SHARE * g.size] for g in space.groups}


def summary(errors) -> dict:
    a = np.abs(np.asarray(errors, dtype=float))
    if not a.size:
        return {"count": 0}
    return {"count": int(a.size), "within_5_pct": float(100 * np.mean(a <= 0.05)),
            "within_10_pct": float(100 * np.mean(a <= 0.10)), "median_abs_error_pct": float(100 * np.median(a)),
            "rmspe_pct": float(100 * math.sqrt(np.mean(a ** 2))), "max_abs_error_pct": float(100 * a.max())}


def choice_json(choice) -> dict:
    return {str(g): list(w) for g, w in choice.items()}


def choice_from_json(d: dict) -> dict:
    return {int(g): tuple(w) for g, w in d.items()}


def setup(name: str, device: str, store):
    """The architecture, its space and the device on this host's grid."""
    from hwprune import devices, zoo
    from hwprune.graph.space import PruningSpace
    from hwprune.latency.grid import resolve_grid, with_grid
    base = devices.get(device)
    grid = resolve_grid(base, store)
    model, x = zoo.create(name)
    return model, x, PruningSpace(model, (x,)), with_grid(base, grid), grid


def fitted(space, dev, store, choices, calibration_rows, footing: float | None = None):
    """The latency model as ``predict_latency`` fits it (free-width samples,
    every network's own layer shapes measured and answered as measured; only
    shapes missing from ``store`` are measured), its remainder fitted on
    ``calibration_rows`` (``[(choice, ms), ...]``, the full network first);
    ``footing``: the host's footing when they were measured, instead of now's
    (:meth:`hwprune.latency.profiling.Profiler.footing`)."""
    from hwprune.graph.blocks import live_specs
    from hwprune.graph.space import device_options
    from hwprune.latency.profiling import Profiler, fit_latency_model, layer_protocol
    prof = Profiler(dev, store, layer_protocol=layer_protocol(dev))
    lat = fit_latency_model(prof, space, device_options(space, dev), free_widths=True, use_table=True,
                            also=[s for c in choices for s in space.specs(c)], footing=footing)
    lat.fit_remainder([(live_specs(space, c), ms) for c, ms in calibration_rows], reference=0)
    return lat, prof


def predicted_ratios(space, lat, choices) -> list[float]:
    from hwprune.importance import criteria
    from hwprune.select.evaluator import Evaluator
    ev = Evaluator(space, lat, criteria.compute("l1", space))
    full_ms = ev.latency_ms(space.full_choice())
    return [ev.latency_ms(c) / full_ms for c in choices]


def run_model(name: str, device: str, samples: int, seed: int, store, log) -> dict:
    """One architecture: fit, calibrate, then predict and measure the sub-networks."""
    from hwprune.graph.blocks import live_specs
    from hwprune.graph.space import device_options
    from hwprune.graph.subnets import build, random_choices
    from hwprune.importance import criteria
    from hwprune.latency.profiling import block_protocol
    from hwprune.loop.fastest import calibrate_networks
    from hwprune.loop.meter import BlockMeter, Certainty
    FULL = Certainty(target_rel=0.02, min_rounds=3, max_rounds=30, max_s=60.0)  # as profilers.blocks defaults

    t0 = time.perf_counter()
    model, x, space, dev, grid = setup(name, device, store)
    choices = random_choices(free_options(space), samples, seed=seed)
    calibration = random_choices(free_options(space), CALIBRATION, seed=seed + 1000)  # another seed
    lat, prof = fitted(space, dev, store, choices + calibration, [])
    # every network against the full one in fresh sessions, alternating blocks: calibration and validation
    # alike, so the host's drift cancels in the fit as in the judgement
    meter = BlockMeter(prof.runtime, model, (x,), protocol=block_protocol(dev))
    refs = [meter.scale_ms]  # the original's running median after each row: how far the host moved meanwhile

    def measure(net) -> float:
        ms = meter.measure(net)
        refs.append(meter.reference_ms)
        return ms
    rows = [(space.full_choice(), meter.scale_ms)] + [(c, measure(build(space, c))) for c in calibration]
    # then the engine's own calibration networks, measured and fitted on (with those) as the engine does;
    # every row is recorded by its choice, so that rescore_model can fit on them again
    cal = calibrate_networks(lat, space, measure, device_options(space, dev), criteria.compute("l1", space),
                             [(live_specs(space, c), ms) for c, ms in rows])
    rows += [(n.choice, n.measured_ms) for n in cal.networks]
    out = []
    for i, (choice, predicted) in enumerate(zip(choices, predicted_ratios(space, lat, choices))):
        est = meter.reading(build(space, choice), FULL)
        out.append({"widths": choice_json(choice), "predicted_ratio": predicted,
                    "measured_ratio": est.ratio, "ratio_lo": est.ratio_lo, "ratio_hi": est.ratio_hi,
                    "rounds": est.rounds, "sure": est.sure, "error": predicted / est.ratio - 1})
        log(f"{name} {i + 1}/{samples}: predicted {predicted:.3f}, measured {est.ratio:.3f} "
            f"[{est.ratio_lo:.3f}, {est.ratio_hi:.3f}] -> {100 * out[-1]['error']:+.1f} %")
    return {"model": name, "device": device, "grid": grid.to_json(), "input_shape": list(x.shape),
            "seconds": time.perf_counter() - t0, "summary": summary([r["error"] for r in out]), "footing": lat.footing,
            "calibration": [{"widths": choice_json(c), "measured_ms": ms, "reference_ms": r}
                            for (c, ms), r in zip(rows, refs)], "rows": out}


def rescore_model(run: dict, store) -> dict:
    """``run`` (one architecture of an earlier run, with its calibration rows)
    scored again by the current latency model on the same measurements: the
    layer shapes from ``store``, the whole networks as recorded. Nothing is
    measured unless the store lacks a shape."""
    _, _, space, dev, grid = setup(run["model"], run["device"], store)
    choices = [choice_from_json(r["widths"]) for r in run["rows"]]
    cal = [(choice_from_json(r["widths"]), r["measured_ms"]) for r in run["calibration"]]
    # tabled as in the run: the sub-networks' shapes and the random calibration networks' (recorded after the full)
    random = [c for c, _ in cal[1:1 + CALIBRATION]]
    lat, _ = fitted(space, dev, store, choices + random, cal, run.get("footing", 1.0))
    rows = [{**r, "predicted_ratio": p, "error": p / r["measured_ratio"] - 1}
            for r, p in zip(run["rows"], predicted_ratios(space, lat, choices))]
    return {**run, "grid": grid.to_json(), "summary": summary([r["error"] for r in rows]), "rows": rows}


def render_md(header: dict, runs: list[dict], header_lines, md_table) -> str:
    lines = ["# Latency models off the grid: free-width sub-networks, drift-free", ""]
    lines += header_lines(header)
    lines += [f"- device {header['device']}; {header['samples']} random sub-networks per architecture "
              f"(seed {header['seed']}), every group at least {int(100 * MIN_SHARE)} % of its width",
              "- error = predicted / measured ratio to the full network - 1; measured in fresh sessions, "
              "alternating blocks, to a 95 % interval of +-2 % (or 30 rounds)",
              f"- target: >= {TARGET['within_10_pct']:.0f} % within +-10 %, >= {TARGET['within_5_pct']:.0f} % "
              f"within +-5 %", ""]
    rows = [[r["model"], f"{r['grid']['step_channels']}/{r['grid']['align_channels']} ({r['grid']['source']})",
             r["summary"]["count"], f"{r['summary']['within_10_pct']:.0f}", f"{r['summary']['within_5_pct']:.0f}",
             f"{r['summary']['median_abs_error_pct']:.1f}", f"{r['summary']['max_abs_error_pct']:.1f}",
             f"{sum(x['sure'] for x in r['rows'])}/{len(r['rows'])}"] for r in runs]
    total = header.get("summary", {})
    if total.get("count"):
        rows.append(["**all**", "", total["count"], f"{total['within_10_pct']:.0f}", f"{total['within_5_pct']:.0f}",
                     f"{total['median_abs_error_pct']:.1f}", f"{total['max_abs_error_pct']:.1f}", ""])
    lines.append(md_table(["model", "grid step/align", "sub-networks", "within 10 %", "within 5 %",
                           "median |error| %", "max |error| %", "ratio certified"], rows))
    return "\n".join(lines) + "\n"
