"""``hwprune compare``: where the milliseconds go on each device, and how the
network pruned for one device fares on the others (see :mod:`hwprune.compare.run`)."""
from __future__ import annotations

import argparse
from pathlib import Path


def _int(low: int):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {low}")
        return int(text)
    return parse


def register(sub, common) -> None:
    sp = sub.add_parser("compare", help="compare devices: per-layer costs, the plan each device gets at one "
                        "relative budget, and each plan measured on every device")
    common(sp)
    sp.add_argument("--devices", nargs="+", required=True, metavar="D",
                    help="two or more devices; one that cannot run here takes part through its profile file "
                         "(devices/profiles/*.jsonl), predicted and labelled so")
    sp.add_argument("--budget", default="50%", help="budget relative to each device's full-network latency: "
                    "50%% or 0.5 (default 50%%)")
    sp.add_argument("--out", required=True, help="output folder: report.md, report.html, compare.json, PNGs "
                    "(replaced atomically)")
    from hwprune.select.selectors import SELECTORS
    sp.add_argument("--selector", choices=SELECTORS.list(), default="greedy")
    sp.add_argument("--predicted", action="append", default=[], metavar="D",
                    help="take part with predictions from D's profile even though D runs here (repeatable)")
    sp.add_argument("--profile", action="append", default=[], metavar="FILE",
                    help="a device profile to predict with (its header names the device); default: the newest "
                         "one in devices/profiles (repeatable)")
    sp.add_argument("--curve-layers", type=_int(0), default=4, help="costliest layer shapes to sweep over "
                    "width (default 4)")
    sp.add_argument("--pareto-points", type=_int(2), default=9, help="budgets on each latency/importance "
                    "curve (default 9)")
    sp.add_argument("--repeats", type=_int(1), default=3, help="measurements of each plan, in a pair "
                    "with the original, per cross-matrix cell (default 3)")
    sp.add_argument("--time-limit-s", type=float, default=60.0, help="qcqp: solver time limit per solve")
    from hwprune.cli.prune import grid_arg
    sp.add_argument("--grid", type=grid_arg, metavar="N", help="prune every device on a grid of N channels "
                    "(default: the channel step measured on this host for measured devices)")
    sp.set_defaults(func=cmd_compare)


def summary(data: dict) -> str:
    from hwprune.report import format_table
    cr = data["cross"]
    rows = [[f"pruned for {r}"] + [f"{c['ms']:.3f}{'' if c['source'] == 'measured' else ' (predicted)'} "
                                   f"{c['vs_own']:.2f}x" for c in row] for r, row in zip(cr["rows"], cr["cells"])]
    devs = [[d["name"], d["mode"], f"{d['baseline_ms']:.3f}", d["grid_step"], d["device_step"] or "-"]
            for d in data["devices"]]
    text = (format_table(["device", "takes part", "full ms", "grid", "step"], devs) + "\n\n"
            + format_table([f"{data['model']} at {100 * data['budget_frac']:.0f} %"] + cr["cols"], rows))
    return text + "".join(f"\n- {f}" for f in data["findings"])


def cmd_compare(args) -> int:
    from hwprune.cli.common import emit, open_store, progress_bar
    from hwprune.compare.report import save_report
    from hwprune.compare.run import parse_fraction, run_compare
    from hwprune.errors import UserError
    from hwprune.graph.plans import load_model
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder; choose another --out")
    frac = parse_fraction(args.budget)
    lm = load_model(args.model, args.input_shape, args.trust_pickle)
    res = run_compare(lm.model, (lm.example_input,), args.devices, budget_frac=frac, model_name=lm.source,
                      selector=args.selector, store=open_store(args), predicted_only=args.predicted,
                      profiles=args.profile, curve_layers=args.curve_layers, pareto_points=args.pareto_points,
                      repeats=args.repeats, time_limit_s=args.time_limit_s, progress=progress_bar(),
                      grid=args.grid)
    files = save_report(out, res.data)
    emit(args, {**res.data, "out": str(out), "files": files},
          summary(res.data) + f"\nwrote {out}/" + ", ".join(files))
    return 0
