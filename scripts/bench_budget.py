"""Budget benchmark: does a pruned model meet its millisecond budget when
measured independently of the engine?

For each zoo model: measure the dense baseline 5 times (each a full protocol
measurement, fresh session), prune it to ``frac x baseline`` for every budget
fraction (by default as ``prune(budget_fraction=frac)``: the budget is that
share of the baseline the engine measures interleaved with its candidates;
``--absolute`` passes ``frac x`` this script's baseline in ms instead, which
inherits the host's drift between the two measurements; one shared measurement
store, empty at the start unless ``--store``
names an existing one, so the first prune of a model pays the profiling and
later ones reuse it), then re-measure every pruned model against the baseline
as the engine measures and a user sees it (fresh sessions, alternating blocks,
until the ratio's 95 % interval is within +-2 % or 60 s:
:func:`profilers.blocks.ratio_in_blocks`) and check that
``(pruned / baseline) / fraction`` lies in [0.90, 1.03]; the absolute
``re-measured ms / budget ms`` is reported beside it. A row whose interval
contains an edge of the band is measured again once every row has its first
reading, and the two readings are pooled (either edge, so the second reading
can move a row out of the band as well as into it).

A row under the band asks whether the engine left latency unused or no
plan keeping more meets the budget: each plan one grid step wider than its
answer (one channel group one option wider, :func:`wider_networks`) is
re-measured the same way, until one meets the budget; where every one is
over it the row sits at a latency cliff (a width leaving the device's
alignment turns kernels plain and adds layout conversions) and the summary
counts it apart.

Where a fraction is below the fastest network the engine measures on this
host, the budget falls back to midway between that network and the full one
(:func:`hwprune.loop.reach.prune_within_reach`); the row says so and is
judged against the fraction used.

Writes ``bench_budget.json`` and ``bench_budget.md`` (``bench_budget_load.*``
with ``--load``) into ``--out``. The exit
code is 0 whatever the band results are; bad arguments exit 2.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_common as common
from budget_cliff import check_cliff, wider_networks

common.use_repo_packages()

BAND = (0.90, 1.03)
REPEATS = 5
DEFAULT_MODELS = ["resnet20", "resnet56", "vgg16", "mobilenetv2", "concatnet", "invresnet", "groupednet"]
DEFAULT_BUDGETS = [0.4, 0.6, 0.8]


def parse_args(argv=None) -> argparse.Namespace:
    from hwprune import zoo
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                   help=f"zoo model names (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--budgets", nargs="+", type=float, default=DEFAULT_BUDGETS,
                   help="budgets as fractions of the measured baseline latency "
                        f"(default: {' '.join(map(str, DEFAULT_BUDGETS))})")
    p.add_argument("--load", action="store_true", help="run under a co-running load: another process streams a "
                   "256 MB array through memory all along, as a shared cloud host's neighbour does")
    p.add_argument("--absolute", dest="relative", action="store_false",
                   help="give the engine the budget in ms of this script's baseline measurement instead of as a "
                        "fraction of the baseline the engine measures itself (default: fraction)")
    common.add_run_args(p)
    args = p.parse_args(argv)
    bad = [b for b in args.budgets if not 0.0 < b < 1.0]
    if bad:
        p.error(f"budget fractions must lie in (0, 1); got {bad}")
    unknown = [m for m in args.models if m not in zoo.list_models()]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {' '.join(zoo.list_models())}")
    return args


def summarise(values: list[float]) -> dict:
    return {"median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values),
            "runs_ms": values}


def measure_repeated(runtime, model, x) -> list[float]:
    """``REPEATS`` full protocol measurements of ``model``: ONNX runtimes export
    it once, the others (ExecuTorch) measure the module as they run it
    (as :func:`profilers.blocks.block_runner` does)."""
    if hasattr(runtime, "measure_onnx") and getattr(runtime, "measures_onnx", True):
        from profilers.onnx_export import feeds, to_onnx_bytes
        data, feed = to_onnx_bytes(model, x), feeds(x)
        return [runtime.measure_onnx(data, feed).median_ms for _ in range(REPEATS)]
    return [runtime.measure_module(model, x).median_ms for _ in range(REPEATS)]


def bench_model(name: str, args, store, dev, log) -> list[dict]:
    from hwprune import zoo
    model, x = zoo.create(name)
    return [row for row, _ in bench_network(name, model, x, args, store, dev, log)]


def bench_network(name: str, model, x, args, store, dev, log) -> list[tuple[dict, object]]:
    """Rows (and the pruned network, None for an error row) of one model at every
    fraction in ``args.budgets``: baseline, prune, independent re-measurement."""
    from hwprune.errors import UserError
    from hwprune.loop.engine import prune
    from hwprune.loop.reach import prune_within_reach
    from profilers.blocks import block_runner, ratio_in_blocks

    model.eval()
    runtime = dev.open()
    base = summarise(measure_repeated(runtime, model, x))
    log(f"[{name}] baseline {base['median_ms']:.3f} ms (min {base['min_ms']:.3f}, max {base['max_ms']:.3f})")

    rows, pruned = [], []
    for frac in args.budgets:
        budget = frac * base["median_ms"]
        row = {"model": name, "budget_frac": frac, "budget_ms": budget, "baseline_ms": base["median_ms"],
               "baseline_min_ms": base["min_ms"], "baseline_max_ms": base["max_ms"], "error": None}
        t0 = time.perf_counter()
        try:
            if args.relative:
                res, choice = prune_within_reach(model, x, args.device, frac, store=store,
                                                 granularity=args.granularity)
                if choice.fallback:
                    log(f"[{name}] budget {frac:.2f}: {choice.text}")
                    row.update({"requested_frac": frac, "budget_frac": choice.fraction,
                                "budget_ms": choice.fraction * base["median_ms"], "budget_note": choice.reason})
            else:
                res = prune(model, x, device=args.device, budget_ms=budget, store=store,
                            granularity=args.granularity)
        except UserError as exc:
            row["error"] = str(exc)
            row["prune_wall_s"] = time.perf_counter() - t0
            log(f"[{name}] budget {frac:.2f}: error: {exc}")
            rows.append((row, None))
            continue
        st = res.stats
        row.update({
            "prune_wall_s": time.perf_counter() - t0, "engine_baseline_ms": res.baseline_ms,
            "predicted_ms": res.predicted_ms, "engine_measured_ms": res.measured_ms,
            "engine_budget_ms": res.budget_ms, "engine_ratio": res.measured_ms / res.budget_ms,
            "engine_rel": res.measured_ms / res.baseline_ms,
            "unchanged": res.unchanged, "note": res.note,
            "rounds": [{"target_ms": r.target_ms, "predicted_ms": r.predicted_ms,
                        "measured_ms": r.measured_ms, "iqr_ms": r.iqr_ms, "status": r.status} for r in res.rounds],
            "n_rounds": len(res.rounds), "profile_s": st.get("profile_s"), "total_s": st.get("total_s"),
            "shapes_measured": st.get("shapes_measured"), "shapes_reused": st.get("shapes_reused"),
            "params_before": st.get("params_before"), "params_after": st.get("params_after"),
            "flops_before": st.get("flops_before"), "flops_after": st.get("flops_after"),
            "smallest_ms": st.get("smallest_ms"), "fastest_ms": st.get("fastest_ms"),
            "certified": st.get("certified"), "warnings": st.get("warnings", []),
            "granularity": st.get("granularity"), "blocks": st.get("blocks"),
            "removed_blocks": st.get("removed_blocks", []), "grid": (st.get("grid") or {}).get(args.device)})
        log(f"[{name}] budget {row['budget_frac']:.2f} = {row['budget_ms']:.3f} ms: engine measured "
            f"{res.measured_ms:.3f} ms (predicted {res.predicted_ms:.3f}), {len(res.rounds)} rounds, "
            f"{row['prune_wall_s']:.1f} s")
        rows.append((row, res.model))
        pruned.append((row, res))

    # Independent re-measurement as the engine measures and a user sees it:
    # each pruned model against the baseline in fresh sessions, alternating
    # blocks (order swapped each round) until the ratio's 95 % interval is
    # within +-2 % (ratio_in_blocks). Interleaving the two run by run reads
    # pruned networks 4-20 % slower relative to the original.
    def recorder(net, out: list):
        """A block of ``net``, its median also appended to ``out``."""
        run = block_runner(runtime, net, x)

        def block() -> float:
            out.append(run())
            return out[-1]
        return block
    base_blocks = []
    base_block = recorder(model, base_blocks)
    ests = []
    for _, res in pruned:
        blocks = []
        ests.append((ratio_in_blocks(base_block, recorder(res.model, blocks)), blocks))
    # A verdict whose interval contains an edge of the band rests on one more reading, taken after every
    # row's first (minutes apart), pooled with it: either edge, so the second reading can move a row out.
    for i, ((row, res), (est, blocks)) in enumerate(zip(pruned, ests)):
        if common.near_edge(est, row["budget_frac"], BAND):
            again = ratio_in_blocks(base_block, recorder(res.model, blocks))
            ests[i] = (common.pooled([est, again]), blocks)
            row["readings"] = [[r.ratio_lo, r.ratio_hi] for r in (est, again)]
            log(f"[{name}] budget {row['budget_frac']:.2f}: near a band edge, measured again: "
                f"{est.ratio / row['budget_frac']:.3f} then {again.ratio / row['budget_frac']:.3f}")
    base_re = summarise(base_blocks) if base_blocks else base
    log(f"[{name}] baseline re-measured {base_re['median_ms']:.3f} ms "
        f"({base_re['min_ms']:.3f}-{base_re['max_ms']:.3f})")
    for (row, _), (est, t) in zip(pruned, ests):
        s = summarise(t)
        rel = est.ratio
        ratio = rel / row["budget_frac"]
        row.update({"remeasured_ms": s["median_ms"], "remeasured_min_ms": s["min_ms"],
                    "remeasured_max_ms": s["max_ms"], "remeasured_runs_ms": s["runs_ms"],
                    "remeasured_ratio_interval": [est.ratio_lo, est.ratio_hi], "remeasured_sure": est.sure,
                    "baseline_remeasured_ms": base_re["median_ms"], "speedup": 1.0 / rel, "remeasured_rel": rel,
                    "ratio": ratio, "ratio_abs": s["median_ms"] / row["budget_ms"],
                    "in_band": BAND[0] <= ratio <= BAND[1]})
        log(f"[{name}] budget {row['budget_frac']:.2f}: re-measured {s['median_ms']:.3f} ms, "
            f"ratio {ratio:.3f} (absolute {row['ratio_abs']:.3f}) {'in band' if row['in_band'] else 'OUT OF BAND'}")
    # Under the band: is there a plan keeping more that meets the budget? Each plan one grid step wider,
    # re-measured the same way (the network's latency can jump where a width leaves the alignment).
    for row, res in pruned:
        if row["ratio"] < BAND[0] and row.get("grid"):
            check_cliff(row, wider_networks(model, x, res.plan, row["grid"]),
                        lambda net: ratio_in_blocks(base_block, recorder(net, [])), log)
    return rows


def _f(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _mega(v) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}M"


def render_md(header: dict, rows: list[dict], summary: str, total_s: float, store_path: str) -> str:
    cols = ["model", "frac", "budget ms", "baseline ms (min-max)", "predicted ms", "engine ms",
            "re-measured ms (min-max)", "engine ratio", "ratio", "abs ratio", "in band", "rounds",
            "rounds measured/budget", "profile s", "prune s", "shapes meas/reused", "params before->after",
            "FLOPs before->after"]
    body = []
    for r in rows:
        if r.get("error"):
            body.append([r["model"], _f(r["budget_frac"], ".2f"), _f(r["budget_ms"]), _f(r["baseline_ms"]),
                         "error: " + r["error"].replace("|", "/")] + [""] * (len(cols) - 5))
            continue
        mark = {"widened": "*", "re-measured": "+", "between": "~"}
        seq = ", ".join(f"{x['measured_ms'] / r['budget_ms']:.3f}{mark.get(x.get('status'), '')}"
                        for x in r["rounds"]) or "-"
        if r["unchanged"]:
            seq = f"unchanged (engine's baseline {r['engine_baseline_ms']:.3f} ms <= budget)"
        shapes = "-" if r["shapes_measured"] is None else f"{r['shapes_measured']}/{r['shapes_reused']}"
        size = {k: "-" if r[f"{k}_before"] is None else
                f"{_mega(r[f'{k}_before'])}->{_mega(r[f'{k}_after'])}" for k in ("params", "flops")}
        frac = _f(r["budget_frac"], ".2f")
        if r.get("requested_frac") is not None:
            frac = f"{r['requested_frac']:.2f} -> {frac} (fallback)"
        body.append([
            r["model"], frac, _f(r["budget_ms"]),
            f"{_f(r['baseline_ms'])} ({_f(r['baseline_min_ms'])}-{_f(r['baseline_max_ms'])})",
            _f(r["predicted_ms"]), _f(r["engine_measured_ms"]),
            f"{_f(r['remeasured_ms'])} ({_f(r['remeasured_min_ms'])}-{_f(r['remeasured_max_ms'])})",
            _f(r.get("engine_ratio")),
            _f(r["ratio"]) + (f" ({len(r['readings'])})" if r.get("readings") else ""), _f(r["ratio_abs"]),
            "yes" if r["in_band"] else "**NO**", str(r["n_rounds"]), seq,
            _f(r["profile_s"], ".1f"), _f(r["prune_wall_s"], ".1f"),
            shapes, size["params"], size["flops"]])
    lines = ["# Budget benchmark: independent re-measurement of pruned models", ""]
    lines += common.header_lines(header)
    lines += [f"- device: {header['device']}; store: {store_path} (rows measured at start: "
              f"{header['store_rows_at_start']})",
              f"- baseline: median of {REPEATS} protocol measurements; re-measurement: each pruned model "
              f"against the baseline in fresh sessions, alternating blocks, until the ratio's 95 % interval is "
              f"within +-2 % (as the engine measures and a user sees it)",
              "- fallback: a fraction below the fastest network the engine measured here is replaced by the "
              "share midway between that network and the full one (frac column: requested -> used)",
              f"- budget given to the engine as: {header.get('budget_given_as', 'ms')}",
              "- ratio = (re-measured pruned / baseline re-measured with it) / budget fraction: the "
              "budget is a fraction of the baseline, and measuring both together cancels the host's "
              "drift; abs ratio = re-measured ms / budget ms (inherits the drift between the two times); "
              "engine ratio = the engine's own last reading of its answer / its budget: where the two differ, "
              "the ratio itself moved between the engine's reading and the re-measurement",
              f"- band: ratio in [{BAND[0]:.2f}, {BAND[1]:.2f}]; total time {total_s:.0f} s",
              "- rounds measured/budget: each round's measured latency / budget as the engine read it; * a plan "
              "one grid step wider than a measured one (the loop's widening by measurement); + a plan in doubt "
              "measured again, its readings pooled; ~ a plan between one under the budget and one over it",
              "- ratio (2): its first reading's interval contained an edge of the band, so it was measured again "
              "after every row's first reading and the two pooled",
              "", common.md_table(cols, body), "", f"**{summary}**", ""]
    notes = [f"- {r['model']} at {r['budget_frac']:.2f}: {r['note']}" for r in rows
             if not r.get("error") and not r.get("in_band") and r.get("note")]
    if notes:
        lines += ["The engine's notes on the rows out of the band:", "", *notes, ""]
    wider = [f"- {r['model']} at {r['budget_frac']:.2f}"
             f"{' (latency cliff: every one over the budget)' if r.get('cliff') else ''}: "
             + "; ".join(f"{w['plan']}: {w['ratio']:.3f} ({w['ratio_lo']:.3f}-{w['ratio_hi']:.3f})"
                         for w in r["wider"]) for r in rows if r.get("wider")]
    if wider:
        lines += ["Rows under the band: the plans one grid step wider than the engine's answer, re-measured the "
                  "same way until one meets the budget (ratio / budget fraction, 95 % interval):", "", *wider, ""]
    return "\n".join(lines)


def summarise_band(rows: list[dict]) -> str:
    """The summary line: rows in the band, and of those under it, how many sit
    at a latency cliff (every plan one grid step wider re-measured over the budget)."""
    ok = sum(1 for r in rows if r.get("in_band"))
    text = f"{ok}/{len(rows)} in [{BAND[0]:.2f}, {BAND[1]:.2f}]"
    checked = [r for r in rows if "cliff" in r]
    if checked:
        cliffs = sum(1 for r in checked if r["cliff"])
        text += (f"; of the {len(checked)} under it, {cliffs} at a latency cliff (every plan one grid step wider "
                 f"re-measured over the budget)")
    moved = [r for r in rows if not r.get("in_band") and r.get("engine_ratio") is not None
             and BAND[0] <= r["engine_ratio"] <= BAND[1]]
    if moved:
        text += f"; {len(moved)} out of it only on re-measurement (the engine had read them in the band)"
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    with common.CoRunningLoad(args.load):
        return run(args)


def run(args) -> int:
    from hwprune import devices
    from hwprune.errors import UserError
    from profilers import MeasurementStore

    def log(msg: str) -> None:
        print(msg, flush=True)

    t_start = time.perf_counter()
    tmpdir = None
    if args.store is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="hwprune-bench-")
        store_path = str(Path(tmpdir.name) / "store.sqlite")
    else:
        store_path = args.store
    try:
        dev = devices.get(args.device)
        store = MeasurementStore(store_path)
    except Exception as exc:  # UserError or StoreError: bad input
        print(f"error: {exc}", file=sys.stderr)
        return 2
    header = {**common.machine_header(), "co_running_load": args.load, "device": dev.name, "store": store_path,
              "store_rows_at_start": store.count(), "models": args.models, "budgets": args.budgets,
              "budget_given_as": "fraction of the engine's baseline" if args.relative else "ms",
              "band": list(BAND), "repeats": REPEATS}
    log(f"bench_budget: {header['cpu']}, {header['cores']} cores; device {dev.name}; store {store_path}")
    rows = []
    try:
        for name in args.models:
            try:
                rows += bench_model(name, args, store, dev, log)
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
    finally:
        store.close()
        if tmpdir is not None:
            tmpdir.cleanup()
    total_s = time.perf_counter() - t_start
    summary = summarise_band(rows)
    out = Path(args.out)
    md = render_md(header, rows, summary, total_s, store_path if tmpdir is None else "fresh temp file")
    stem = "bench_budget_load" if args.load else "bench_budget"
    common.write_json(out / f"{stem}.json",
                      {"header": header, "total_s": total_s, "summary": summary, "rows": rows})
    common.write_atomic(out / f"{stem}.md", md)
    print()
    print(md)
    for r in rows:
        if not r.get("in_band"):
            why = r["error"] if r.get("error") else f"ratio {r['ratio']:.3f}"
            print(f"OUT OF BAND: {r['model']} @ {r['budget_frac']:.2f}: {why}")
    print(f"wrote {out / stem}.json and .md; total {total_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
