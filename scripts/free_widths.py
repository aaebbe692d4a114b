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
   uniform grid sub-networks (:func:`hwprune.loop.engine.calibrate`) and
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


def run_model(name: str, device: str, samples: int, seed: int, store, log) -> dict:
    """One architecture: fit, calibrate, then predict and measure the sub-networks."""
    from hwprune import devices, zoo
    from hwprune.graph.space import PruningSpace, device_options
    from hwprune.graph.subnets import build, random_choices
    from hwprune.importance import criteria
    from hwprune.latency.grid import resolve_grid, with_grid
    from hwprune.latency.profiling import Profiler, block_protocol, fit_latency_model, layer_protocol
    from hwprune.loop.engine import calibrate
    from hwprune.loop.meter import BlockMeter, Certainty
    from hwprune.select.evaluator import Evaluator
    FULL = Certainty(target_rel=0.02, min_rounds=3, max_rounds=30, max_s=60.0)  # as profilers.blocks defaults

    t0 = time.perf_counter()
    base = devices.get(device)
    grid = resolve_grid(base, store)
    dev = with_grid(base, grid)
    model, x = zoo.create(name)
    space = PruningSpace(model, (x,))
    prof = Profiler(dev, store, layer_protocol=layer_protocol(dev))
    options = device_options(space, dev)
    choices = random_choices(free_options(space), samples, seed=seed)
    calibration = random_choices(free_options(space), CALIBRATION, seed=seed + 1000)  # another seed
    # as predict_latency(sub-network) does: each network's own layer shapes are measured
    lat = fit_latency_model(prof, space, options, free_widths=True, use_table=True,
                            also=[s for c in choices + calibration for s in space.specs(c)])
    # every network against the full one in fresh sessions, alternating blocks: calibration and validation
    # alike, so the host's drift cancels in the fit as in the judgement
    meter = BlockMeter(prof.runtime, model, (x,), protocol=block_protocol(dev))
    extra = [(space.specs(c), meter.measure(build(space, c))) for c in calibration]
    calibrate(lat, space, meter.measure, options, criteria.compute("l1", space),
              [(space.specs(space.full_choice()), meter.reference_ms), *extra])
    ev = Evaluator(space, lat, criteria.compute("l1", space))
    full_ms = ev.latency_ms(space.full_choice())
    rows = []
    for i, choice in enumerate(choices):
        predicted = ev.latency_ms(choice) / full_ms
        est = meter.reading(build(space, choice), FULL)
        rows.append({"widths": {str(g): list(w) for g, w in choice.items()}, "predicted_ratio": predicted,
                     "measured_ratio": est.ratio, "ratio_lo": est.ratio_lo, "ratio_hi": est.ratio_hi,
                     "rounds": est.rounds, "sure": est.sure, "error": predicted / est.ratio - 1})
        log(f"{name} {i + 1}/{samples}: predicted {predicted:.3f}, measured {est.ratio:.3f} "
            f"[{est.ratio_lo:.3f}, {est.ratio_hi:.3f}] -> {100 * rows[-1]['error']:+.1f} %")
    return {"model": name, "device": device, "grid": grid.to_json(), "input_shape": list(x.shape),
            "full_predicted_ms": full_ms, "seconds": time.perf_counter() - t0,
            "summary": summary([r["error"] for r in rows]), "rows": rows}


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
