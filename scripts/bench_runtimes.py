"""Runtimes benchmark: budgets met and latency predicted on ExecuTorch and OpenVINO.

For every device in ``--devices`` (default: ``executorch-xnnpack-1t`` and
``openvino-cpu-1t``; the 2-thread variants on request):

1. the grid: the channel step and alignment measured on this host
   (:func:`hwprune.latency.grid.resolve_grid`, into the run's store, so the
   engine prunes on it), where it came from and the seconds it took;
2. ``--part prune``: every model in ``--models`` pruned to each fraction in
   ``--budgets`` of the baseline the engine measures, then re-measured
   independently against the original as a user measures after deployment:
   fresh runtime sessions, pruned and original in alternating blocks until the
   ratio's 95 % interval is within +-2 % or 60 s (``bench_budget.bench_network``,
   one call per row, so each row is written as soon as it is measured), judged
   by ``(pruned / original) / fraction`` in [0.90, 1.03];
3. ``--part validate``: the engine's latency model (``step-quadratic`` on the
   measured grid) scored on ``--samples`` random sub-networks of
   ``--validate-model``, each measured against the full network in fresh
   sessions, alternating blocks (drift-free, :func:`hwprune.latency.validate.validate`):
   shares within +-5 % and +-10 % and RMSPE (every registered latency model's
   scores are kept in the JSON).

Writes ``bench_runtimes.json`` and ``bench_runtimes.md`` into ``--out``,
atomically, after every row. ``--append`` keeps an earlier run's results; a
row measured again is kept beside the earlier one (marked as a rerun). Bad
input: one ``error:`` line, exit 2; the band results do not change the exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import bench_budget
import bench_common as common
import bench_models

common.use_repo_packages()

BAND = bench_budget.BAND
DEFAULT_DEVICES = ["executorch-xnnpack-1t", "openvino-cpu-1t"]
DEFAULT_MODELS = ["resnet20", "mobilenetv2", "torchvision:resnet18@128"]
DEFAULT_BUDGETS = [0.5, 0.7]
ENGINE_MODEL = "step-quadratic"  # the layer model the engine selects with (fit_latency_model)
PARTS = ("prune", "validate", "all")


class Parser(argparse.ArgumentParser):
    """Bad arguments: one ``error:`` line and exit 2 (no usage block)."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    from hwprune import devices, zoo
    from hwprune.errors import UserError
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", nargs="+", default=DEFAULT_DEVICES,
                   help=f"devices (default: {' '.join(DEFAULT_DEVICES)}; also executorch-xnnpack-2t, openvino-cpu-2t)")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="NAME[@SIZE]",
                   help=f"zoo names or torchvision:NAME@SIZE (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--budgets", nargs="+", type=float, default=DEFAULT_BUDGETS,
                   help=f"fractions of the baseline (default: {' '.join(map(str, DEFAULT_BUDGETS))})")
    p.add_argument("--samples", type=int, default=30, help="validation sub-networks per device (default 30)")
    p.add_argument("--calibration", type=int, default=16,
                   help="random calibration sub-networks of validate (default 16, as `hwprune validate`)")
    p.add_argument("--validate-model", default="resnet20", help="network validated on (default resnet20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation sub-networks (default 0)")
    p.add_argument("--part", choices=PARTS, default="all", help="prune, validate or all (default)")
    p.add_argument("--store", default=None, help="measurement store (default: a fresh temp file)")
    p.add_argument("--out", default=str(common.REPO_ROOT / "scripts" / "results"),
                   help="output folder (default: scripts/results/)")
    p.add_argument("--append", action="store_true",
                   help="keep the results already in the output JSON; a row measured again is kept as a rerun")
    args = p.parse_args(argv)
    args.granularity, args.relative, args.load = "channel", True, False  # what bench_network reads
    if any(not 0.0 < b < 1.0 for b in args.budgets):
        p.error(f"budget fractions must lie in (0, 1); got {' '.join(map(str, args.budgets))}")
    if args.samples < 1 or args.calibration < 0:
        p.error("--samples must be >= 1 and --calibration >= 0")
    try:
        args.devices = [devices.get(d).name for d in args.devices]
    except UserError as exc:
        p.error(str(exc))
    args.specs = []
    for m in args.models + [args.validate_model]:
        try:
            name, size = bench_models.parse_spec(m)
        except ValueError as exc:
            p.error(str(exc))
        if ":" not in name and name not in zoo.list_models():
            p.error(f"unknown model {name!r}; give a zoo name ({' '.join(zoo.list_models())}) or "
                    f"torchvision:NAME@SIZE")
        args.specs.append((name, size))
    args.validate_spec = args.specs.pop()
    return args


def load(name: str, size: int | None):
    """(label, model, example input) of a zoo name or torchvision:NAME at ``size`` px."""
    from hwprune.graph.plans import load_model
    lm = load_model(name, None if size is None else (1, 3, size, size))
    px = lm.example_input.shape[-1]
    return f"{name}@{px}", lm.model.eval(), lm.example_input


def kept(row: dict, key: str) -> float | None:
    before, after = row.get(f"{key}_before"), row.get(f"{key}_after")
    return None if not before or after is None else after / before


def add_row(rows: list[dict], row: dict) -> dict:
    """Append ``row``; one of the same device, model and fraction already
    there makes it a rerun (``attempt`` 2, 3, ...), both kept."""
    same = [r for r in rows if (r["device"], r["model"], r.get("requested_frac", r["budget_frac"]))
            == (row["device"], row["model"], row.get("requested_frac", row["budget_frac"]))]
    row["attempt"] = 1 + max((r.get("attempt", 1) for r in same), default=0)
    rows.append(row)
    return row


def _f(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def row_cells(r: dict) -> list[str]:
    frac = _f(r["budget_frac"], ".2f")
    if r.get("requested_frac") is not None:
        frac = f"{r['requested_frac']:.2f} -> {frac} (fallback)"
    if r.get("attempt", 1) > 1:
        frac += f" (rerun {r['attempt'] - 1})"
    if r.get("error"):
        return [r["model"], frac, _f(r.get("baseline_ms")), "-", "-", "error", "-", "-",
                _f(r.get("prune_wall_s"), ".0f"), "error: " + r["error"].replace("|", "/")[:160]]
    lo, hi = r.get("remeasured_ratio_interval") or (None, None)
    ci = "" if lo is None else f" ({lo / r['budget_frac']:.3f}-{hi / r['budget_frac']:.3f})"
    note = "; ".join(x for x in (r.get("budget_note"), r.get("note")) if x)
    return [r["model"], frac, _f(r["baseline_ms"]), _f(r["engine_rel"] / r["budget_frac"]),
            _f(r.get("ratio")) + ci, "yes" if r.get("in_band") else "**NO**",
            _pct(kept(r, "params")), _pct(kept(r, "flops")), _f(r["prune_wall_s"], ".0f"),
            note.replace("|", "/")[:160]]


def grid_line(d: dict) -> str:
    g = d.get("grid")
    if not g:
        return "- grid: not measured in this run"
    return (f"- grid: **{g['step_channels']} channels** (step and alignment: {g['detail']}; source {g['source']}"
            f"{'' if g.get('reliable', True) else ', noisy: the host was busy'}); measuring it took "
            f"{g['measured_s']:.1f} s; the descriptor's starting point was {d['descriptor_step']}"
            + ("" if not d.get("grid_engine") else f"; the engine measured it again while pruning (noisy): "
               f"{d['grid_engine']['step_channels']} channels ({d['grid_engine']['detail']})"))


def validation_lines(v: dict) -> list[str]:
    s = v["scores"][ENGINE_MODEL]
    best = min(v["scores"].items(), key=lambda kv: kv[1]["rmspe_pct"])
    lines = [f"- validate ({v['model']}, {v['samples']} random sub-networks on the grid above, each against the "
             f"full network ({v['reference_ms']:.3f} ms) in fresh sessions, alternating blocks; "
             f"{v['whole_model_measurements']} calibration networks, {v['layer_measurements']} layer shapes; "
             f"{v['unsure']} ratios stopped at the cap; {v['elapsed_s'] / 60:.1f} min): the engine's latency model "
             f"(`{ENGINE_MODEL}`) **{s['within_5_pct']:.0f} % within +-5 %, {s['within_10_pct']:.0f} % within "
             f"+-10 %, RMSPE {s['rmspe_pct']:.1f} %** (max error {s['max_error_pct']:.1f} %, mean "
             f"{s['mean_error_pct']:+.1f} %); best of all models: {best[0]} (RMSPE {best[1]['rmspe_pct']:.1f} %)"]
    lines += [f"  - warning: {w}" for w in v.get("warnings", [])]
    return lines


def render_md(data: dict) -> str:
    h = data["header"]
    lines = ["# Runtimes: budgets met and latency predicted on ExecuTorch and OpenVINO", ""]
    lines += common.header_lines(h)
    if h.get("packages_note"):
        lines.append(f"- {h['packages_note']}")
    lines += ["- re-measured / budget = (pruned / original, fresh runtime sessions in alternating blocks until the "
              "ratio's 95 % interval is within +-2 % or 60 s) / budget fraction, its interval in brackets; engine "
              "= the engine's own last reading of the same ratio; band [{:.2f}, {:.2f}]; params / FLOPs: share "
              "kept".format(*BAND),
              "- sittings: " + "; ".join(f"{s['date']} {s['part']} {' '.join(s['devices'])} ({s['seconds'] / 60:.0f} "
                                         f"min)" for s in data.get("sittings", [])), ""]
    cols = ["model@px", "frac", "baseline ms", "engine", "re-measured / budget (95 % CI)", "in band", "params kept",
            "FLOPs kept", "prune s", "note"]
    for name, d in data["devices"].items():
        lines += [f"## {name}", "", grid_line(d)]
        if d.get("prune_s") is not None:
            lines.append(f"- pruning and re-measuring: {d['prune_s'] / 60:.1f} min")
        if d.get("validation"):
            lines += validation_lines(d["validation"])
        if d.get("rows"):
            lines += ["", common.md_table(cols, [row_cells(r) for r in d["rows"]])]
        lines.append("")
    rows = [r for d in data["devices"].values() for r in d.get("rows", [])]
    if rows:
        ok = sum(bool(r.get("in_band")) for r in rows)
        lines += [f"**{ok}/{len(rows)} rows in [{BAND[0]:.2f}, {BAND[1]:.2f}]**", ""]
    return "\n".join(lines)


def write(out: Path, data: dict) -> None:
    common.write_json(out / "bench_runtimes.json", data)
    common.write_atomic(out / "bench_runtimes.md", render_md(data))


def previous(out: Path) -> dict | None:
    try:
        return json.loads((out / "bench_runtimes.json").read_text())
    except (OSError, ValueError):
        return None


def measure_grid(dev, store, log, measure: bool = True):
    from hwprune.latency.grid import resolve_grid
    g = resolve_grid(dev, store, runtime=dev.open(), measure=measure)
    log(f"[{dev.name}] grid {g.step_channels} ({g.detail}), {g.measured_s:.1f} s")
    return g


def prune_rows(dev, args, store, d: dict, save, log) -> None:
    t0 = time.perf_counter()
    for name, size in args.specs:
        label, model, x = load(name, size)
        for frac in args.budgets:
            one = argparse.Namespace(**{**vars(args), "budgets": [frac], "device": dev.name})
            for row, _ in bench_budget.bench_network(label, model, x, one, store, dev, log):
                row.update({"device": dev.name, "source": name, "input_size": int(x.shape[-1])})
                add_row(d["rows"], row)
                d["prune_s"] = time.perf_counter() - t0
                save()


def validate_device(dev, grid, args, store, d: dict, save, log) -> None:
    from hwprune.latency.validate import validate
    label, model, x = load(*args.validate_spec)
    res = validate(model, (x,), dev.name, args.samples, calibration=args.calibration, seed=args.seed,
                   store=store, source=label, grid=grid)
    d["validation"] = res.to_dict()
    s = res.scores[ENGINE_MODEL]
    log(f"[{dev.name}] validate {label}: {s.within_5_pct:.0f} % within 5 %, {s.within_10_pct:.0f} % within 10 %, "
        f"RMSPE {s.rmspe_pct:.1f} %, {res.elapsed_s / 60:.1f} min")
    save()


def main(argv=None) -> int:
    args = parse_args(argv)
    note = bench_models.import_model_packages() if any(":" in n for n, _ in args.specs + [args.validate_spec]) else None
    from hwprune import devices
    from hwprune.errors import UserError

    def log(msg: str) -> None:
        print(msg, flush=True)

    out = Path(args.out)
    data = previous(out) if args.append else None
    data = data or {"devices": {}, "sittings": []}
    data["header"] = {**common.machine_header(), "packages_note": note, "band": list(BAND)}
    sitting = {"date": data["header"]["date"], "part": args.part, "devices": args.devices, "seconds": 0.0}
    data["sittings"].append(sitting)
    t_start = time.perf_counter()

    def save() -> None:
        sitting["seconds"] = time.perf_counter() - t_start
        write(out, data)

    try:
        with common.bench_store(args.store) as store:
            for name in args.devices:
                dev = devices.get(name)
                d = data["devices"].setdefault(name, {"rows": []})
                d["descriptor_step"] = dev.step_channels
                grid = measure_grid(dev, store, log)
                d["grid"] = grid.to_json()
                save()
                if args.part in ("prune", "all"):
                    prune_rows(dev, args, store, d, save, log)
                    after = measure_grid(dev, store, log, measure=False)  # the engine measures again a noisy one
                    if after.step_channels != grid.step_channels:
                        d["grid_engine"], grid = after.to_json(), after
                        save()
                if args.part in ("validate", "all"):
                    validate_device(dev, grid, args, store, d, save, log)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_md(data))
    print(f"wrote {out / 'bench_runtimes.json'} and .md; {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
