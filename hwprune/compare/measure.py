"""The measured parts of a device comparison: per-layer costs, latency-vs-width
curves of the costliest layers, and the cross matrix (see :mod:`hwprune.compare.run`)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from profilers import LayerSpec
from profilers.steps import fit_step

MEASURED = "measured"


def prunable_dim(layer) -> str | None:
    """The width pruning changes: ``dw`` (a depthwise conv's channels), ``out``,
    ``in`` (a classifier, whose outputs are kept), or None (nothing prunable)."""
    if layer.spec.depthwise and layer.out_terms:
        return "dw"
    if layer.out_terms:
        return "out"
    if layer.in_terms:
        return "in"
    return None


def at_width(spec: LayerSpec, dim: str, n: int) -> LayerSpec:
    if dim == "dw":
        return replace(spec, in_channels=n, out_channels=n, groups=n)
    if dim == "out":
        return replace(spec, out_channels=n)
    return replace(spec, in_channels=n)


def layer_rows(space, sides) -> tuple[list[dict], dict[str, float]]:
    """Per layer at full width and per device: ms (the isolated layer as
    measured, else the latency model), cost per channel of its prunable width,
    share of the whole network's latency. Also network - sum of layers per device."""
    rows = []
    for layer in space.layers:
        spec, dim = layer.spec, prunable_dim(layer)
        width = {"dw": spec.out_channels, "out": spec.out_channels, "in": spec.in_channels}.get(dim)
        per = {}
        for side in sides:
            table = side.lat.table_.get(spec.family(), {})
            measured = table.get((spec.in_channels, spec.out_channels))
            ms = float(measured * side.lat.footing if measured is not None else side.lat.layer_ms(spec))
            per[side.name] = {"ms": ms, "source": "measured layer" if measured is not None else "latency model",
                              "us_per_channel": 1e3 * ms / width if width else None,
                              "share": ms / side.baseline_ms}
        rows.append({"name": layer.name, "shape": spec.describe(), "dim": dim, "width": width, "devices": per})
    other = {s.name: s.baseline_ms - sum(r["devices"][s.name]["ms"] for r in rows) for s in sides}
    return rows, other


def curve_widths(n: int, points: int = 16) -> list[int]:
    """About ``points`` widths up to ``n`` in steps that are multiples of 4."""
    step = 4 * max(1, math.ceil(n / (4 * points)))
    widths = list(range(step, n + 1, step))
    return widths if widths and widths[-1] == n else widths + [n]


def costliest(space, rows: list[dict], k: int) -> list[dict]:
    """The ``k`` costliest distinct layer shapes with a prunable width of at
    least 8 (cost: the largest share of the network over the devices)."""
    by_shape: dict[tuple, dict] = {}
    for layer, row in zip(space.layers, rows):
        if row["dim"] is None or (row["width"] or 0) < 8:
            continue
        key = (layer.spec.key(), row["dim"])
        share = max(d["share"] for d in row["devices"].values())
        entry = by_shape.setdefault(key, {"layer": row["name"], "shape": row["shape"], "dim": row["dim"],
                                          "spec": layer.spec, "count": 0, "share": share})
        entry["count"] += 1
    return sorted(by_shape.values(), key=lambda e: -e["share"])[:k]


def curves(space, sides, rows: list[dict], k: int, progress=None, passes: int = 2) -> list[dict]:
    """Latency vs width of the ``k`` costliest layer shapes. Measured devices:
    ``passes`` sweeps (ascending, then descending, so drift hits every width
    alike), mean per width, and the layer's step from :func:`fit_step`;
    predicted devices: the latency model. ``model_ms``: the model on every device."""
    picks = costliest(space, rows, k)
    for p in picks:
        p["widths"] = curve_widths(p["spec"].out_channels if p["dim"] != "in" else p["spec"].in_channels)
    measured = [s for s in sides if s.mode == MEASURED]
    order = [(pi, s, r, i) for pi, p in enumerate(picks) for s in measured for r in range(passes)
             for i in (range(len(p["widths"])) if r % 2 == 0 else reversed(range(len(p["widths"]))))]
    samples = {(pi, s.name): np.zeros((passes, len(p["widths"]))) for pi, p in enumerate(picks) for s in measured}
    it = progress(order, desc="layer curves", unit="shape") if (progress and order) else order
    for pi, side, r, i in it:
        spec = at_width(picks[pi]["spec"], picks[pi]["dim"], picks[pi]["widths"][i])
        samples[(pi, side.name)][r, i] = side.profiler.runtime.measure_spec(spec).median_ms
    out = []
    for pi, p in enumerate(picks):
        specs = [at_width(p["spec"], p["dim"], n) for n in p["widths"]]
        per = {}
        for side in sides:
            model_ms = [float(side.lat.layer_ms(s)) for s in specs]
            if side.mode == MEASURED:
                arr = samples[(pi, side.name)]
                fit = fit_step(p["widths"], arr, probe=p["widths"][0]) if len(p["widths"]) >= 3 else None
                per[side.name] = {"source": MEASURED, "ms": [float(v) for v in arr.mean(axis=0)],
                                  "model_ms": model_ms, "step": fit.step_channels if fit else None,
                                  "noise_rel": fit.noise_rel if fit else None}
            else:
                per[side.name] = {"source": "predicted", "ms": model_ms, "model_ms": model_ms, "step": None,
                                  "noise_rel": None}
        out.append({"layer": p["layer"], "shape": p["shape"], "dim": p["dim"], "count": p["count"],
                    "widths": p["widths"], "devices": per})
    return out


def cross_matrix(sides, plans, repeats: int = 3, progress=None) -> dict:
    """Plan for device i (rows) on device j (columns); see :mod:`hwprune.compare.run`.
    A measured column: each plan measured against the original alone, as the
    engine and a user measure (fresh sessions, alternating blocks, until the
    ratio's interval is within +-2 %: a session of several models evicts the
    larger ones from cache and biases their ratios), ``repeats`` times; per
    repeat the plan's median over the
    original's; ms = median of those ratios x the device's baseline
    (``ratio_lo``/``_hi``: their range over repeats); ``vs_own`` = plan i /
    the plan made for j, per repeat, median (``vs_own_lo``/``_hi``: the range
    over repeats)."""
    rows = [p["device"] for p in plans]
    cols = [s.name for s in sides]
    pred = [[float(s.ev.latency_ms(p["choice"])) for s in sides] for p in plans]
    cells = [[None] * len(cols) for _ in rows]
    work = [(j, r, i) for j, s in enumerate(sides) if s.mode == MEASURED for r in range(repeats)
            for i in range(len(plans))]
    ratios: dict[int, np.ndarray] = {j: np.zeros((repeats, len(plans))) for j, _, _ in work}
    it = progress(work, desc="cross matrix", unit="pair") if (progress and work) else work
    for j, r, i in it:  # the side's meter: the original and the plan in fresh sessions, alternating blocks
        ratios[j][r, i] = sides[j].meter.reading(plans[i]["module"]).ratio
    for j, side in enumerate(sides):
        own = rows.index(side.name)
        for i in range(len(rows)):
            if side.mode == MEASURED:
                reps = ratios[j]
                vs = reps[:, i] / reps[:, own]
                ratio = float(np.median(reps[:, i]))
                cells[i][j] = {"source": MEASURED, "ms": ratio * side.baseline_ms, "ratio_to_original": ratio,
                               "ratio_lo": float(reps[:, i].min()), "ratio_hi": float(reps[:, i].max()),
                               "predicted_ms": pred[i][j], "vs_own": float(np.median(vs)),
                               "vs_own_lo": float(vs.min()), "vs_own_hi": float(vs.max()), "repeats": len(reps)}
            else:
                cells[i][j] = {"source": "predicted", "ms": pred[i][j],
                               "ratio_to_original": pred[i][j] / side.predicted_full_ms,
                               "predicted_ms": pred[i][j], "vs_own": pred[i][j] / pred[own][j]}
    return {"rows": rows, "cols": cols, "cells": cells,
            "baseline_ms": {s.name: s.baseline_ms for s in sides}}
