"""Latency-model benchmark: every registered latency model on the same measured
random sub-networks.

For each device and zoo model this runs :func:`hwprune.latency.validate.validate`:
the model's layer shapes are profiled (the committed device profile is
imported into a fresh store first, so only missing shapes are measured), the
remainder of every latency model is fitted on the same calibration networks
(smallest, 1/3, 2/3, full and ``--calibration`` random ones), then
``--samples`` other random sub-networks are measured end to end against the
full network (fresh sessions, alternating blocks: see that function), and
predicted by every model. Reported per model:
RMSPE, max and mean error, the share within +-5 % and +-10 %, and the
measurements it needed (layer shapes and whole networks; for the lookup table
also the size of a full table of every grid width pair, and the ratio of that
to what the step-aware quadratic used).

Writes ``bench_latency_models.json`` and ``bench_latency_models.md`` into
``--out`` (after every network, atomically). ``--rescore FILE`` measures
nothing: it fits and scores the current latency models again on the
sub-networks and layer measurements of an earlier run (its JSON, and its
``--store``, which must then be kept); with ``--free-widths`` it does the
same for a free-width run (its JSON records the whole networks it
calibrated on). Bad arguments exit 2.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bench_common as common

common.use_repo_packages()

DEFAULT_DEVICES = ["ort-cpu-1t", "torch-cpu-1t"]
DEFAULT_MODELS = ["resnet56", "mobilenetv2", "vgg16"]
TARGET = {"model": "step-quadratic", "within_10_pct": 95.0, "within_5_pct": 80.0, "rmspe_pct": 5.0}


def parse_args(argv=None) -> argparse.Namespace:
    from hwprune import zoo
    from latency_models import list_models
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", nargs="+", default=DEFAULT_DEVICES)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="zoo model names")
    p.add_argument("--latency-models", nargs="+", default=list_models(), choices=list_models())
    p.add_argument("--samples", type=int, default=50, help="validation sub-networks per network (default 50)")
    p.add_argument("--calibration", type=int, default=16, help="random calibration sub-networks (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", default=None, help="measurement store (default: a fresh temp file)")
    p.add_argument("--out", default=str(common.REPO_ROOT / "scripts" / "results"),
                   help="output folder (default: scripts/results/)")
    p.add_argument("--rescore", metavar="JSON", help="score the current models on an earlier run's measurements "
                   "(needs that run's --store); with --free-widths, an earlier free-width run's")
    p.add_argument("--free-widths", action="store_true", help="instead: the engine's latency model on random "
                   "sub-networks with free (off-grid) widths of architectures outside the grid (default models "
                   "concatnet invresnet groupednet, --samples 20, first --devices only), measured in fresh "
                   "sessions in alternating blocks (see scripts/free_widths.py)")
    args = p.parse_args(argv)
    if args.rescore and not Path(args.rescore).is_file():
        p.error(f"--rescore {args.rescore}: no such file")
    unknown = [m for m in args.models if m not in zoo.list_models()]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {' '.join(zoo.list_models())}")
    if args.free_widths:
        import free_widths
        args.models = args.models if args.models != DEFAULT_MODELS else free_widths.DEFAULT_MODELS
        args.samples = args.samples if "--samples" in (argv or sys.argv) else 20
    if args.samples < 1 or args.calibration < 0:
        p.error("--samples must be >= 1 and --calibration >= 0")
    return args


def _pct(v) -> str:
    return f"{v:.1f}"


def meets(score: dict) -> bool:
    return (score["within_10_pct"] >= TARGET["within_10_pct"] and score["within_5_pct"] >= TARGET["within_5_pct"]
            and score["rmspe_pct"] <= TARGET["rmspe_pct"])


def render_md(header: dict, runs: list[dict]) -> str:
    lines = ["# Latency models: predicted vs measured on random sub-networks", ""]
    lines += common.header_lines(header)
    if header.get("rescored_at"):
        lines.append(f"- rescored at {header['rescored_at']} with the latency models of that time, on the "
                     f"sub-networks and layer measurements of the run above (nothing measured again)")
    blocks = any(r.get("ratio_lo") is not None for run in runs for r in run["rows"])
    how = ("in fresh sessions, alternating blocks with the full network (ms = ratio x the median full-network "
           "block)" if blocks else "interleaved run by run with the full network (ms = ratio x the median of every "
           "full-network median)")
    lines += [f"- {header['samples']} validation sub-networks per network (seed {header['seed']}), measured end to "
              f"end {how}; "
              f"every model's remainder fitted on the same {header['calibration']} random + smallest, 1/3, 2/3 "
              f"and full networks (never validated on)",
              f"- target for `{TARGET['model']}`: >= {TARGET['within_10_pct']:.0f} % within +-10 %, >= "
              f"{TARGET['within_5_pct']:.0f} % within +-5 %, RMSPE <= {TARGET['rmspe_pct']:.0f} %",
              "- layer measurements: layer shapes the model was fitted on (all models share one profile); "
              "a full lookup table would measure every grid width pair of every layer family",
              "- this host's speed drifts and other processes share its 2 cores: the reference spread is the IQR of "
              "the full network's medians over the run, relative", ""]
    for r in runs:
        lines.append(f"- {r['device']} / {r['model']}: full network {r['reference_ms']:.3f} ms (spread "
                     f"{r['reference_spread_pct']:.1f} %), {r['layer_measurements']} layer shapes "
                     f"({r['shapes_measured']} measured in this run), full lookup table "
                     f"{r['full_grid_measurements']} = {r['full_grid_measurements'] / r['layer_measurements']:.1f}x "
                     f"the step-aware quadratic's; timed by "
                     f"{'thread CPU time' if r.get('clock') == 'thread' else 'wall-clock'}; "
                     f"{r['elapsed_s'] / 60:.1f} min")
    cols = ["device", "network", "latency model", "RMSPE %", "max err %", "mean err %", "within +-5 %",
            "within +-10 %", "layer meas.", "whole nets"]
    body = []
    for r in runs:
        for name, s in r["scores"].items():
            n = str(r["layer_measurements"])
            if name == "lookup":
                n += f" (full: {r['full_grid_measurements']})"
            label = f"**{name}**" if name == TARGET["model"] else name
            body.append([r["device"], r["model"], label, _pct(s["rmspe_pct"]), _pct(s["max_error_pct"]),
                         f"{s['mean_error_pct']:+.1f}", f"{s['within_5_pct']:.0f} %", f"{s['within_10_pct']:.0f} %",
                         n, str(r["whole_model_measurements"])])
    lines += ["", common.md_table(cols, body), ""]
    target = [r for r in runs if TARGET["model"] in r["scores"]]
    if target:
        ok = sum(meets(r["scores"][TARGET["model"]]) for r in target)
        lines += [f"`{TARGET['model']}` meets the target on {ok} of {len(target)} device/network pairs.", ""]
    return "\n".join(lines)


def rescore_file(args, log) -> int:
    import datetime
    import json

    from hwprune import zoo
    from hwprune.latency.validate import rescore
    from profilers import MeasurementStore
    data = json.loads(Path(args.rescore).read_text())
    header = {**data["header"], "rescored_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    store_path = Path(args.store or header["store"])
    if not store_path.is_file():
        print(f"error: the store of that run, {store_path}, is gone; pass --store with a copy of it", file=sys.stderr)
        return 2
    store = MeasurementStore(store_path)
    runs = []
    for run in data["runs"]:
        model, x = zoo.create(run["model"])
        res = rescore(run, model, (x,), store, args.latency_models)
        runs.append(res.to_dict())
        s = res.scores.get(TARGET["model"])
        log(f"[{res.device} {res.model}] " + (f"{TARGET['model']}: RMSPE {s.rmspe_pct:.1f} %, {s.within_5_pct:.0f} "
                                                f"% within 5 %, {s.within_10_pct:.0f} % within 10 %" if s else ""))
    out = Path(args.out)
    common.write_json(out / "bench_latency_models.json", {"header": header, "runs": runs})
    common.write_atomic(out / "bench_latency_models.md", render_md(header, runs))
    log(f"wrote {out / 'bench_latency_models.json'} and {out / 'bench_latency_models.md'}")
    return 0


def run_free_widths(args, log) -> int:
    """``--free-widths``: see scripts/free_widths.py."""
    import free_widths as fw

    from profilers import MeasurementStore
    with tempfile.TemporaryDirectory(prefix="hwprune-bench-") as tmp:
        store = MeasurementStore(args.store or str(Path(tmp) / "store.sqlite"))
        header = {**common.machine_header(), "device": args.devices[0], "models": args.models,
                  "samples": args.samples, "seed": args.seed, "store": args.store}
        runs, out = [], Path(args.out)
        for name in args.models:
            runs.append(fw.run_model(name, args.devices[0], args.samples, args.seed, store, log))
            header["summary"] = fw.summary([r["error"] for run in runs for r in run["rows"]])
            common.write_json(out / "bench_latency_models_free.json", {**header, "runs": runs})
            common.write_atomic(out / "bench_latency_models_free.md",
                                fw.render_md(header, runs, common.header_lines, common.md_table))
        log(fw.render_md(header, runs, common.header_lines, common.md_table))
    return 0


def rescore_free_widths(args, log) -> int:
    """``--free-widths --rescore JSON``: the current latency model on an earlier
    free-width run's measurements (its layer store and recorded whole networks)."""
    import datetime
    import json

    import free_widths as fw

    from profilers import MeasurementStore
    data = json.loads(Path(args.rescore).read_text())
    store_path = Path(args.store or data.get("store", ""))
    if not store_path.is_file():
        print(f"error: the store of that run, {store_path}, is gone; pass --store with a copy of it", file=sys.stderr)
        return 2
    if any("calibration" not in run for run in data["runs"]):
        print(f"error: {args.rescore} has no recorded calibration networks (a run before they were recorded); "
              "run --free-widths again", file=sys.stderr)
        return 2
    store = MeasurementStore(store_path)
    header = {k: v for k, v in data.items() if k != "runs"}
    header["rescored_at"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    runs = [fw.rescore_model(run, store) for run in data["runs"]]
    header["summary"] = fw.summary([r["error"] for run in runs for r in run["rows"]])
    out = Path(args.out)
    common.write_json(out / "bench_latency_models_free.json", {**header, "runs": runs})
    common.write_atomic(out / "bench_latency_models_free.md",
                        fw.render_md(header, runs, common.header_lines, common.md_table))
    log(fw.render_md(header, runs, common.header_lines, common.md_table))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from hwprune import devices, zoo
    from hwprune.latency.validate import validate
    from profilers import MeasurementStore
    from profilers.profile_io import import_profile

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.free_widths:
        return rescore_free_widths(args, log) if args.rescore else run_free_widths(args, log)
    if args.rescore:
        from hwprune.errors import UserError
        try:
            return rescore_file(args, log)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    tmpdir = None
    if args.store is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="hwprune-bench-")
        store_path = str(Path(tmpdir.name) / "store.sqlite")
    else:
        store_path = args.store
    try:
        store = MeasurementStore(store_path)
        for name in args.devices:
            committed = devices.builtin_dir() / "profiles" / f"{devices.get(name).name}.jsonl"
            if committed.exists():
                log(f"imported {import_profile(committed, store)} measurements from {committed}")
        header = {**common.machine_header(), "devices": args.devices, "models": args.models,
                  "samples": args.samples, "calibration": args.calibration, "seed": args.seed,
                  "latency_models": args.latency_models, "store": store_path}
        out = Path(args.out)
        runs = []
        for dev in args.devices:
            for name in args.models:
                t0 = time.perf_counter()
                model, x = zoo.create(name)
                res = validate(model, (x,), dev, args.samples, models=args.latency_models,
                               calibration=args.calibration, seed=args.seed, store=store, source=name)
                runs.append(res.to_dict())
                best = min(res.scores.items(), key=lambda kv: kv[1].rmspe_pct)
                s = res.scores.get(TARGET["model"])
                log(f"[{dev} {name}] {time.perf_counter() - t0:.0f} s; "
                    + (f"{TARGET['model']}: RMSPE {s.rmspe_pct:.1f} %, {s.within_5_pct:.0f} % within 5 %, "
                       f"{s.within_10_pct:.0f} % within 10 %; " if s else "")
                    + f"best {best[0]} (RMSPE {best[1].rmspe_pct:.1f} %)")
                common.write_json(out / "bench_latency_models.json", {"header": header, "runs": runs})
                common.write_atomic(out / "bench_latency_models.md", render_md(header, runs))
        log(f"wrote {out / 'bench_latency_models.json'} and {out / 'bench_latency_models.md'}")
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
