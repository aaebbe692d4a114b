"""``hwprune validate``: arguments and table (the job and its files in :mod:`hwprune.latency.validate`)."""
from __future__ import annotations

import argparse
from pathlib import Path


def _count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _non_negative(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return int(text)


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--device", required=True, help="device to measure on (see hwprune devices)")
    sp.add_argument("--samples", type=_count, default=20, help="random sub-networks to validate on (default 20)")
    sp.add_argument("--models", nargs="+", metavar="NAME",
                    help="latency models to score (default: every registered one)")
    sp.add_argument("--calibration", type=_non_negative, default=16,
                    help="random sub-networks, besides the smallest, 1/3, 2/3 and full ones, that the "
                    "remainder is fitted on (default 16; from 8 networks in all the remainder also "
                    "rescales the isolated layers; never among the validated ones)")
    sp.add_argument("--seed", type=_non_negative, default=0, help="seed of the random sub-networks (default 0)")
    sp.add_argument("--clock", choices=["auto", "thread", "wall"], default="auto",
                    help="time each run by wall-clock or by the thread's CPU time (auto: CPU time on "
                    "single-thread CPU runtimes, where it is immune to other processes' load)")
    from hwprune.cli.prune import grid_arg
    sp.add_argument("--grid", type=grid_arg, metavar="N", help="draw sub-networks on a grid of N channels "
                    "(default: the one prune uses, the channel step measured on this host)")
    sp.add_argument("--out", default="hwprune-validate",
                    help="folder for validation.json and scatter.png (default hwprune-validate)")


def cmd_validate(args) -> int:
    from hwprune.cli.common import emit, open_store, progress_bar
    from hwprune.errors import UserError
    from hwprune.graph.plans import load_model
    from hwprune.latency.validate import check_models, validate, write_validation
    from hwprune.report import format_table
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder")
    names = check_models(args.models)
    lm = load_model(args.model, args.input_shape, args.trust_pickle)
    store = open_store(args)
    grid = None
    if args.grid is not None:
        from hwprune import devices
        from hwprune.latency.grid import resolve_grid
        grid = resolve_grid(devices.get(args.device), store, override=args.grid)
    res = validate(lm.model, (lm.example_input,), args.device, args.samples, models=names,
                   calibration=args.calibration, seed=args.seed, store=store, source=lm.source,
                   progress=progress_bar(), clock=args.clock, grid=grid)
    data = res.to_dict()
    data["files"] = write_validation(res, out)
    rows = [[n, f"{s.rmspe_pct:.1f}", f"{s.max_error_pct:.1f}", f"{s.mean_error_pct:+.1f}",
             f"{s.within_5_pct:.0f} %", f"{s.within_10_pct:.0f} %"] for n, s in res.scores.items()]
    text = format_table(["model", "RMSPE %", "max err %", "mean err %", "within 5 %", "within 10 %"], rows)
    cap = res.ratio_cap
    text += (f"\n{res.model} on {res.device}: {res.samples} random sub-networks measured end to end, each against "
             f"the full network ({res.reference_ms:.3f} ms, spread {res.reference_spread_pct:.1f} %) in fresh "
             f"sessions, alternating blocks ({'thread CPU time' if res.clock == 'thread' else 'wall-clock'}); "
             + (f"{res.unsure} of {len(res.rows)} ratios stopped at the cap ({cap['max_rounds']} rounds or "
                f"{cap['max_s']:g} s) before their 95 % interval was within +-{100 * cap['target_rel']:.0f} %"
                if res.unsure else f"every ratio's 95 % interval within +-{100 * cap['target_rel']:.0f} %")
             + f"\nfitted on {res.layer_measurements} layer shapes ({res.shapes_measured} measured now; a full "
             f"lookup table needs {res.full_grid_measurements}) and {res.whole_model_measurements} whole networks"
             f"\nwrote {out}/validation.json, {out}/scatter.png")
    text += "".join(f"\nwarning: {w}" for w in res.warnings)
    emit(args, data, text)
    return 0
