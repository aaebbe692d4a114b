"""Models people bring: torchvision and timm CNNs, every family, pruned to a
latency budget and re-measured independently.

Each model is built by name with random weights (``torchvision:NAME``,
``timm:NAME``, as ``hwprune prune --model`` takes them; nothing is downloaded)
at the input size given after ``@`` (ImageNet models at 160-224 where two
cores allow, smaller where they do not: the table says which). For every
budget fraction the engine prunes to ``frac x`` its own baseline on the
device (``prune(budget_fraction=...)``, falling back to a stated budget where
the fraction is below the fastest network it measures), then each pruned
model is re-measured against the original as a user measures after
deployment: fresh runtime sessions, pruned and original in alternating blocks
until the ratio's 95 % interval is within +-2 % (or a cap), and judged by
``(pruned / original) / fraction`` in [0.90, 1.03]. The table also gives the
engine's own last reading of the ratio beside the independent one (their gap
is what a many-branch network used to lose), rounds, parameters and FLOPs
before and after, ONNX parity of the pruned model and the time taken.

Writes ``bench_models.json`` and ``bench_models.md`` into ``--out``; the exit
code is 0 whatever the band results are; bad arguments exit 2.

Where torchvision's compiled ops do not load against the installed torch
(a CUDA torchvision beside a CPU torch), the model definitions are used
without them and the header says so; a matching torch and torchvision need
nothing of the sort.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bench_budget
import bench_common as common

common.use_repo_packages()

BAND = bench_budget.BAND
DEFAULT_BUDGETS = [0.5, 0.7]
# family -> model@input size: 224 for the light ImageNet models; 128-160 for the
# heavier ones, so that every family is profiled, pruned twice and re-measured
# on two cores within a sitting (about 4-8 minutes a model).
FAMILIES = {
    "alexnet": "torchvision:alexnet@224",
    "vgg": "torchvision:vgg11_bn@128",
    "resnet": "torchvision:resnet18@160",
    "resnext": "torchvision:resnext50_32x4d@128",
    "wide_resnet": "torchvision:wide_resnet50_2@128",
    "mobilenet_v2": "torchvision:mobilenet_v2@224",
    "mobilenet_v3": "torchvision:mobilenet_v3_small@224",
    "mnasnet": "torchvision:mnasnet0_5@224",
    "efficientnet": "torchvision:efficientnet_b0@160",
    "efficientnet_v2": "torchvision:efficientnet_v2_s@128",
    "regnet_x": "torchvision:regnet_x_400mf@160",
    "regnet_y": "torchvision:regnet_y_400mf@160",
    "shufflenet_v2": "torchvision:shufflenet_v2_x0_5@224",
    "squeezenet": "torchvision:squeezenet1_1@224",
    "densenet": "torchvision:densenet121@128",
    "googlenet": "torchvision:googlenet@160",
    "inception_v3": "torchvision:inception_v3@160",
    "convnext": "torchvision:convnext_tiny@128",
    "ghostnet": "timm:ghostnet_100@224",
    "rexnet": "timm:rexnet_100@160",
    "hrnet": "timm:hrnet_w18_small@160",
    "mixnet": "timm:mixnet_s@160",
    "resnest": "timm:resnest14d@160",
    "dla": "timm:dla34@128",
    "cspnet": "timm:cspresnet50@128",
    "convnext_atto": "timm:convnext_atto@160",
}
IMAGENET_SIZE = {"inception_v3": 299}


def import_model_packages() -> str | None:
    """Import torchvision (and timm) for the model definitions; where the
    compiled ops do not load against this torch, retry without them and say so."""
    import subprocess
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    if "torchvision::" not in probe.stderr:
        return None  # not installed, or another failure: the models' own loading names it
    import types
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    return "torchvision's compiled ops do not load against this torch; model definitions used without them"


def parse_spec(spec: str) -> tuple[str, int | None]:
    name, _, size = spec.partition("@")
    if size and not size.isdigit():
        raise ValueError(f"input size in {spec!r} is not a whole number")
    return name, int(size) if size else None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, metavar="SOURCE:NAME[@SIZE]",
                   help="models to prune (default: one per family, see FAMILIES in this script); a family name "
                        "from that list also works")
    p.add_argument("--size", type=int, default=None, help="input size for every model (overrides @SIZE)")
    p.add_argument("--budgets", nargs="+", type=float, default=DEFAULT_BUDGETS,
                   help=f"budgets as fractions of the baseline (default: {' '.join(map(str, DEFAULT_BUDGETS))})")
    common.add_run_args(p)
    p.add_argument("--stem", default="bench_models", help="output file name stem (default: bench_models)")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of other models already in the output JSON (rows of the models run now "
                        "are replaced), so the families can be measured in several sittings")
    args = p.parse_args(argv)
    args.load, args.relative = False, True  # what bench_budget.bench_network reads
    if any(not 0.0 < b < 1.0 for b in args.budgets):
        p.error(f"budget fractions must lie in (0, 1); got {args.budgets}")
    specs = args.models or list(FAMILIES.values())
    args.specs = []
    for s in specs:
        s = FAMILIES.get(s, s)
        try:
            name, size = parse_spec(s)
        except ValueError as exc:
            p.error(str(exc))
        args.specs.append((name, args.size or size))
    return args


def parity(model, x) -> float | str:
    """Max difference of the pruned model's ONNX Runtime output from PyTorch's,
    relative to the output's magnitude, or why the export failed."""
    from hwprune.errors import UserError
    from hwprune.export.onnx import onnx_bytes_checked
    from hwprune.export.parity import check_parity
    try:
        return float(check_parity(model, (x,), onnx_bytes_checked(model, (x,))).max_rel_diff)
    except (UserError, RuntimeError, ValueError) as exc:
        return f"export failed: {str(exc).splitlines()[0][:160]}"


def bench_one(name: str, size: int | None, args, store, dev, log) -> list[dict]:
    from hwprune.graph.plans import load_model
    short = name.split(":")[-1]
    size = size or IMAGENET_SIZE.get(short, 224)
    lm = load_model(name, (1, 3, size, size))
    label = f"{name}@{size}"
    t0 = time.perf_counter()
    pairs = bench_budget.bench_network(label, lm.model, lm.example_input, args, store, dev, log)
    rows = []
    for row, net in pairs:
        row.update({"model": label, "source": name, "input_size": size,
                    "parity": None if net is None else parity(net, lm.example_input)})
        rows.append(row)
    log(f"[{label}] done in {time.perf_counter() - t0:.0f} s")
    return rows


def _f(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _mega(v) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}M"


def render_md(header: dict, rows: list[dict], summary: str, total_s: float) -> str:
    cols = ["model@px", "frac", "baseline ms", "re-measured / budget", "ratio 95 % CI", "engine ratio",
            "in band", "rounds", "params before->after", "FLOPs before->after", "ONNX parity", "time s", "note"]
    body = []
    for r in rows:
        frac = _f(r["budget_frac"], ".2f")
        if r.get("requested_frac") is not None:
            frac = f"{r['requested_frac']:.2f} -> {frac}"
        if r.get("error"):
            body.append([r["model"], frac, _f(r["baseline_ms"]), "-", "-", "-", "error", "-", "-", "-", "-",
                         _f(r.get("prune_wall_s"), ".0f"), "error: " + r["error"].replace("|", "/")])
            continue
        lo, hi = r.get("remeasured_ratio_interval") or (None, None)
        ci = "-" if lo is None else f"{lo / r['budget_frac']:.3f}-{hi / r['budget_frac']:.3f}"
        par = r["parity"]
        par = f"{par:.1e}" if isinstance(par, float) else str(par).replace("|", "/")
        note = "; ".join(x for x in (r.get("budget_note"), r.get("note")) if x) or ""
        body.append([r["model"], frac, _f(r["baseline_ms"]), _f(r.get("ratio")), ci,
                     _f(r["engine_rel"] / r["budget_frac"]),
                     "yes" if r.get("in_band") else "**NO**", str(r["n_rounds"]),
                     f"{_mega(r['params_before'])}->{_mega(r['params_after'])}",
                     f"{_mega(r['flops_before'])}->{_mega(r['flops_after'])}", par,
                     _f(r["prune_wall_s"], ".0f"), note.replace("|", "/")[:160]])
    lines = ["# Models people bring: torchvision and timm CNNs pruned to a budget", ""]
    lines += common.header_lines(header)
    if header.get("packages_note"):
        lines.append(f"- {header['packages_note']}")
    lines += [f"- device: {header['device']}; granularity {header.get('granularity', 'channel')}; random weights, "
              "batch 1, input NxN as in the model column",
              "- re-measured / budget = (pruned / original, fresh sessions in alternating blocks until the 95 % "
              "interval is within +-2 %) / budget fraction; engine ratio = the engine's own last reading, same "
              "units; band [{:.2f}, {:.2f}]".format(*BAND),
              "- ONNX parity: max difference of ONNX Runtime's output from PyTorch's for the pruned model, "
              "relative to the output's magnitude",
              f"- total time {total_s / 60:.0f} min", "", common.md_table(cols, body), "", f"**{summary}**", ""]
    return "\n".join(lines)


def previous_rows(path: Path, args) -> list[dict]:
    """Rows of an earlier run for models other than this run's (``--append``)."""
    import json
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return []
    now = {n for n, _ in args.specs}
    return [r for r in rows if r.get("source", r.get("model")) not in now]


def main(argv=None) -> int:
    args = parse_args(argv)
    note = import_model_packages()
    from hwprune import devices
    from hwprune.errors import UserError
    from profilers import MeasurementStore

    def log(msg: str) -> None:
        print(msg, flush=True)

    t_start = time.perf_counter()
    tmpdir = tempfile.TemporaryDirectory(prefix="hwprune-bench-") if args.store is None else None
    store_path = str(Path(tmpdir.name) / "store.sqlite") if tmpdir else args.store
    try:
        dev = devices.get(args.device)
        store = MeasurementStore(store_path)
    except Exception as exc:  # UserError or StoreError: bad input
        print(f"error: {exc}", file=sys.stderr)
        return 2
    header = {**common.machine_header(), "device": dev.name, "budgets": args.budgets, "band": list(BAND),
              "granularity": args.granularity,
              "models": [f"{n}@{s}" if s else n for n, s in args.specs], "packages_note": note}
    log(f"bench_models: {header['cpu']}, {header['cores']} cores; device {dev.name}")
    rows, out = [], Path(args.out)
    kept = previous_rows(out / f"{args.stem}.json", args) if args.append else []
    try:
        for name, size in args.specs:
            try:
                rows += bench_one(name, size, args, store, dev, log)
            except UserError as exc:
                log(f"[{name}] error: {exc}")
                rows += [{"model": name, "budget_frac": f, "baseline_ms": None, "error": str(exc)}
                         for f in args.budgets]
            every = kept + rows
            ok = sum(1 for r in every if r.get("in_band"))
            summary = f"{ok}/{len(every)} in [{BAND[0]:.2f}, {BAND[1]:.2f}]"
            total_s = time.perf_counter() - t_start
            # written after every model, so an interrupted run keeps what it measured
            common.write_json(out / f"{args.stem}.json",
                              {"header": header, "total_s": total_s, "summary": summary, "rows": every})
            common.write_atomic(out / f"{args.stem}.md", render_md(header, every, summary, total_s))
    finally:
        store.close()
        if tmpdir is not None:
            tmpdir.cleanup()
    print((out / f"{args.stem}.md").read_text())
    print(f"wrote {out / args.stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
