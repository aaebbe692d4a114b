"""Selector benchmark: greedy, knapsack (HALP) and qcqp (Jeong et al., HiGHS)
on the same problem.

For each zoo model: profile its layer shapes on the device (the committed
device profile is imported into the store first, so only missing shapes are
measured), fit one latency model, calibrate its remainder on whole-model
measurements (full, half-width and smallest networks), measure the baseline.
Then for each budget fraction every selector chooses widths for
``target = fraction x measured baseline`` on that one model: there is no closed
loop, the plan is the selector's answer. Each plan is cut and measured against
the baseline as the engine and a user measure it
(``hwprune.loop.meter.BlockMeter``: fresh sessions, alternating blocks, until
the ratio's 95 % interval is within +-2 % or 20 rounds / 30 s; ms = ratio x the
baseline's median block, with the interval). Reported per plan: active-weight
importance kept (fraction of the full network's; the objective qcqp maximises), kept
channel scores, predicted and measured ms, FLOPs, parameters, solve time,
solver status and gap.

Writes ``bench_selectors.json`` and ``bench_selectors.md`` into ``--out``
(after every model, atomically). Bad arguments exit 2.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bench_common as common

common.use_repo_packages()

DEFAULT_MODELS = ["resnet56", "resnet50"]
DEFAULT_BUDGETS = [0.3, 0.5, 0.7]


def parse_args(argv=None) -> argparse.Namespace:
    from hwprune import zoo
    from hwprune.select.selectors import SELECTORS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                   help=f"zoo model names (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--budgets", nargs="+", type=float, default=DEFAULT_BUDGETS,
                   help=f"fractions of the measured baseline (default: {' '.join(map(str, DEFAULT_BUDGETS))})")
    p.add_argument("--selectors", nargs="+", default=SELECTORS.list(), choices=SELECTORS.list())
    p.add_argument("--device", default="ort-cpu-1t", help="device name (default: ort-cpu-1t)")
    p.add_argument("--time-limit-s", type=float, default=60.0, help="qcqp time limit per solve (default 60)")
    p.add_argument("--store", default=None, help="measurement store (default: a fresh temp file)")
    p.add_argument("--out", default=str(common.REPO_ROOT / "scripts" / "results"),
                   help="output folder (default: scripts/results/)")
    args = p.parse_args(argv)
    if any(not 0.0 < b < 1.0 for b in args.budgets):
        p.error(f"budget fractions must lie in (0, 1); got {args.budgets}")
    unknown = [m for m in args.models if m not in zoo.list_models()]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {' '.join(zoo.list_models())}")
    if not args.time_limit_s > 0:
        p.error("--time-limit-s must be positive")
    return args


def bench_model(name: str, args, store, dev, log) -> tuple[dict, list[dict]]:
    from hwprune import zoo
    from hwprune.errors import UserError
    from hwprune.graph.space import PruningSpace, device_options
    from hwprune.graph.surgery import apply_kept
    from hwprune.importance import criteria as importance
    from hwprune.latency.profiling import Profiler, fit_latency_model
    from hwprune.loop.engine import calibrate
    from hwprune.loop.meter import BlockMeter
    from hwprune.select.evaluator import Evaluator
    from hwprune.select.problem import Constraints, Problem, floor_options
    from hwprune.select.selectors import select

    t0 = time.perf_counter()
    model, x = zoo.create(name)
    space = PruningSpace(model, (x,))
    prof = Profiler(dev, store)
    options = floor_options(space, device_options(space, dev), dev.step_channels, Constraints())
    lat = fit_latency_model(prof, space, options)
    scores = importance.compute("l1", space)
    meter = BlockMeter(prof.runtime, model, (x,), initial=3)
    full = space.full_choice()
    smallest_ms = calibrate(lat, space, meter.measure, options, scores, [(space.specs(full), meter.reference_ms)])
    baseline = meter.reference_ms
    problem = Problem(space, options, scores, Constraints(), {dev.name: Evaluator(space, lat, scores)})
    info = {"model": name, "baseline_ms": baseline, "smallest_measured_ms": smallest_ms,
            "predicted_full_ms": problem.ev.latency_ms(full), "groups": len(space.groups),
            "layers": len(space.layers), "options": sum(len(o) for o in options.values()),
            "largest_group_options": max(len(o) for o in options.values()),
            "shapes_measured": prof.measured, "shapes_reused": prof.reused,
            "flops_full": problem.usage(full)["flops"], "params_full": problem.usage(full)["params"],
            "setup_s": time.perf_counter() - t0}
    log(f"[{name}] baseline {baseline:.3f} ms, smallest network {smallest_ms:.3f} ms, "
        f"{prof.measured} shapes measured / {prof.reused} reused, setup {info['setup_s']:.0f} s")
    rows = []
    for frac in args.budgets:
        budget = frac * baseline
        prob = problem.with_latency({dev.name: budget})
        for selector in args.selectors:
            row = {"model": name, "budget_frac": frac, "budget_ms": budget, "selector": selector}
            try:
                sel = select(selector, prob, time_limit_s=args.time_limit_s)
            except UserError as exc:
                row.update(status="infeasible", error=str(exc))
                log(f"[{name}] {frac:.2f} {selector}: {exc}")
                rows.append(row)
                continue
            pruned = apply_kept(space, sel.kept)
            reading = meter.reading(pruned)
            measured = reading.ratio * meter.reference_ms
            row.update(objective=sel.objective, importance=sel.importance / problem.ev.importance(full),
                       predicted_ms=sel.predicted_ms, measured_ms=measured, measured_iqr_ms=reading.iqr_ms,
                       ratio=reading.ratio, ratio_lo=reading.ratio_lo, ratio_hi=reading.ratio_hi,
                       sure=reading.sure, rounds=reading.rounds, measured_over_budget=measured / budget,
                       flops=sel.usage["flops"],
                       params=sel.usage["params"], solve_s=sel.solve_s, status=sel.status, mip_gap=sel.mip_gap,
                       note=sel.note, feasible=sel.feasible,
                       widths={str(g): list(k) for g, k in sel.choice.items()})
            log(f"[{name}] {frac:.2f} {selector}: objective {sel.objective:.4f}, predicted {sel.predicted_ms:.3f} "
                f"ms, measured {measured:.3f} ms ({measured / budget:.3f} x budget, "
                f"+-{100 * reading.half_width_rel:.1f} %{'' if reading.sure else ', not sure'}), {sel.solve_s:.2f} s, "
                f"{sel.status}" + ("" if sel.mip_gap is None else f" (gap {100 * sel.mip_gap:.3f} %)"))
            rows.append(row)
    info["baseline_ms_final"] = meter.reference_ms
    info["baseline_spread"] = meter.spread()   # the host's drift over the model's plans
    return info, rows


def _f(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)


def render_md(header: dict, models: list[dict], rows: list[dict]) -> str:
    cols = ["model", "budget", "selector", "active-weight importance kept", "channel scores kept",
            "predicted ms", "measured ms", "measured / budget", "MFLOPs", "solve s", "status"]
    body = []
    for r in rows:
        budget = f"{100 * r['budget_frac']:.0f} % = {r['budget_ms']:.3f} ms"
        if r.get("error"):
            body.append([r["model"], budget, r["selector"], "-", "-", "-", "-", "-", "-", "-",
                         "infeasible: " + r["error"].replace("|", "/")])
            continue
        status = r["status"] + ("" if r.get("mip_gap") is None else f" (gap {100 * r['mip_gap']:.3f} %)")
        status += " *" if r.get("note") else ""
        body.append([r["model"], budget, r["selector"], _f(r["objective"], ".4f"), _f(r["importance"], ".4f"),
                     _f(r["predicted_ms"]), _f(r["measured_ms"]) + ("" if r.get("sure", True) else " ~"),
                     _f(r["measured_over_budget"]),
                     _f(r["flops"] / 1e6, ".1f"), _f(r["solve_s"], ".2f"), status])
    lines = ["# Selector benchmark: greedy, knapsack (HALP), qcqp (Jeong et al., HiGHS)", ""]
    lines += common.header_lines(header)
    lines += [f"- device: {header['device']}; qcqp time limit {header['time_limit_s']:g} s per solve, "
              f"relative MIP gap 0.1 %",
              "- **one fitted latency model per model, no closed loop**: each selector plans for "
              "target = budget on the same calibrated model; each plan is measured against the baseline "
              "in fresh sessions, alternating blocks, until the ratio's 95 % interval is within +-2 % or "
              "20 rounds / 30 s (ms = ratio x the baseline's median block; `~`: the cap was hit first)",
              "- active-weight importance: sum over layers of the L1 of kept kernel slices W[j, i] "
              "(both channels kept) over the layer's Frobenius norm, as a fraction of the full "
              "network's (what qcqp maximises); channel scores: kept L1 group scores (what greedy and "
              "knapsack maximise), as a fraction of the full network's",
              "- `*`: qcqp searched wide groups coarse to fine (at most 12 widths per group, then "
              "finer windows around the answer), then bounded the optimum of the full grid (a Lagrangian "
              "bound, `hwprune/qcqp_dual.py`, then interval relaxations if the gap stayed open, "
              "`hwprune/qcqp_bound.py`): status and gap are that certificate's, on the full grid", ""]
    for m in models:
        lines.append(f"- {m['model']}: baseline {m['baseline_ms']:.3f} ms measured, smallest network "
                     f"{m['smallest_measured_ms']:.3f} ms measured, {m['groups']} groups, {m['options']} "
                     f"grid widths (largest group {m['largest_group_options']}), {m['flops_full'] / 1e6:.1f} "
                     f"MFLOPs; setup (profile, fit, calibrate) {m['setup_s']:.0f} s")
    lines += ["", common.md_table(cols, body), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from hwprune import devices
    from profilers import MeasurementStore
    from profilers.profile_io import import_profile

    def log(msg: str) -> None:
        print(msg, flush=True)

    tmpdir = None
    if args.store is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="hwprune-bench-")
        store_path = str(Path(tmpdir.name) / "store.sqlite")
    else:
        store_path = args.store
    try:
        dev = devices.get(args.device)
        store = MeasurementStore(store_path)
        committed = devices.builtin_dir() / "profiles" / f"{dev.name}.jsonl"
        if committed.exists():
            log(f"imported {import_profile(committed, store)} measurements from {committed}")
        header = {**common.machine_header(), "device": dev.name, "store": store_path,
                  "time_limit_s": args.time_limit_s, "budgets": args.budgets, "selectors": args.selectors}
        out = Path(args.out)
        models, rows = [], []
        for name in args.models:
            info, model_rows = bench_model(name, args, store, dev, log)
            models.append(info)
            rows.extend(model_rows)
            common.write_json(out / "bench_selectors.json", {"header": header, "models": models, "rows": rows})
            common.write_atomic(out / "bench_selectors.md", render_md(header, models, rows))
        log(f"wrote {out / 'bench_selectors.json'} and {out / 'bench_selectors.md'}")
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
