"""Device comparison benchmark: ``hwprune compare`` for several models on the
devices of this machine, at one relative budget.

For each model, :func:`hwprune.compare.run.run_compare` (per-layer costs, curves of
the costliest layers, each device's plan at ``--budget`` of its own measured
latency, the cross matrix measured in pairs with the original per device column, latency vs
importance curves) writes its report into ``--out/compare_<model>/``
(``report.md``, ``compare.json``, the PNG plots; ``report.html`` with
``--html``). A summary of every model's cross matrix and findings goes to
``--out/bench_compare.md`` and ``bench_compare.json``.

Run it on an otherwise idle machine (the cross matrix compares latencies
measured in one run, but the closed loop's budgets are absolute milliseconds).
Bad arguments exit 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import bench_common as common

common.use_repo_packages()

DEFAULT_MODELS = ["resnet56", "mobilenetv2"]
DEFAULT_DEVICES = ["ort-cpu-1t", "ort-cpu-2t", "torch-cpu-1t"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--devices", nargs="+", default=DEFAULT_DEVICES)
    p.add_argument("--budget", default="50%")
    p.add_argument("--selector", default="greedy", choices=["greedy", "knapsack", "qcqp"])
    p.add_argument("--store", help="measurement store (default: a new one in a temporary folder)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--html", action="store_true", help="also write report.html (the plots embedded)")
    p.add_argument("--out", default=str(common.REPO_ROOT / "scripts" / "results"))
    return p.parse_args(argv)


def cross_lines(model: str, data: dict) -> list[str]:
    cr = data["cross"]
    rows = [[f"pruned for {r}"] + [f"{c['ms']:.3f} ({c['vs_own']:.2f}x)" + ("" if c["source"] == "measured"
                                                                             else " predicted")
                                   for c in row] for r, row in zip(cr["rows"], cr["cells"])]
    base = [["full network"] + [f"{data['cross']['baseline_ms'][c]:.3f}" for c in cr["cols"]]]
    return [f"## {model} at {100 * data['budget_frac']:.0f} %", "",
            common.md_table(["ms on"] + cr["cols"], base + rows), ""] + [f"- {f}" for f in data["findings"]] + [""]


def main(argv=None) -> int:
    args = parse_args(argv)
    import tempfile

    from hwprune import zoo
    from hwprune.compare.report import write_report
    from hwprune.compare.run import parse_fraction, run_compare
    from hwprune.errors import UserError
    from hwprune.export.outdir import atomic_dir
    from profilers import MeasurementStore
    try:
        frac = parse_fraction(args.budget)
        for m in args.models:
            zoo.entry(m)
    except (UserError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tmp = tempfile.TemporaryDirectory()
    store = MeasurementStore(args.store or Path(tmp.name) / "store.sqlite")
    header = common.machine_header()
    summary = {"header": header, "budget_frac": frac, "devices": args.devices, "models": {}}
    lines = ["# Device comparison benchmark", ""] + common.header_lines(header) + [
        f"- devices: {', '.join(args.devices)}; budget {100 * frac:.0f} % of each device's measured latency; "
        f"selector {args.selector}", "",
        "Cells: latency of the row's plan on the column's device, measured in a pair with the original, "
        f"interleaved run by run ({args.repeats} repeats, order alternated); in brackets, relative to the plan "
        "made for that device (per repeat, each over the original).", ""]
    for m in args.models:
        t0 = time.perf_counter()
        model, x = zoo.create(m)
        res = run_compare(model, x, args.devices, budget_frac=frac, model_name=m, selector=args.selector,
                          store=store, repeats=args.repeats)
        with atomic_dir(out / f"compare_{m}", force=True) as folder:
            write_report(folder, res.data)
            if not args.html:
                (folder / "report.html").unlink()
        took = time.perf_counter() - t0
        summary["models"][m] = {"time_s": took, "cross": res.data["cross"], "findings": res.data["findings"],
                                "plans": res.data["plans"], "devices": res.data["devices"]}
        lines += cross_lines(m, res.data) + [f"({took:.0f} s; full report: compare_{m}/report.md)", ""]
        common.write_json(out / "bench_compare.json", summary)
        common.write_atomic(out / "bench_compare.md", "\n".join(lines) + "\n")
        print(f"{m}: {took:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
