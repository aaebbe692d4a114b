"""The ``hwprune`` command line. Bad input: one ``error:`` line, exit code 2."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXIT_USAGE = 2


def _progress():
    from tqdm import tqdm

    def bar(iterable, desc="", unit="it", total=None):
        return tqdm(iterable, desc=desc, unit=unit, total=total, file=sys.stderr, leave=False,
                    dynamic_ncols=True, disable=None)
    return bar


def _store(args):
    from profilers import MeasurementStore
    return MeasurementStore(args.store) if args.store else MeasurementStore()


def _shape(text):
    try:
        dims = tuple(int(v) for v in text.split(","))
        if not dims or min(dims) <= 0:
            raise ValueError
        return dims
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} is not N,C,H,W positive integers") from None


def _positive(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return v


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=float) if args.json else text)


def cmd_devices(args) -> int:
    from . import devices
    from profilers import fingerprint_key
    store = _store(args)
    rows, out = [], []
    for name, d in devices.all_devices().items():
        try:
            rt = d.open()
            available, why = True, ""
            n = store.count(fingerprint_key({"device": name, **rt.fingerprint()}))
        except Exception as exc:  # a runtime that cannot run here
            available, why, n = False, str(exc), 0
        out.append({"name": name, "runtime": d.runtime, "available": available, "reason": why,
                    "step_channels": d.step_channels, "stored_measurements": n,
                    "description": d.description, "descriptor": d.path})
        rows.append([name, "yes" if available else "no", d.step_channels, n, d.description])
    from .report import format_table
    _emit(args, {"devices": out, "store": str(store.path)},
          format_table(["device", "available", "step", "stored", "description"], rows)
          + f"\nstore: {store.path}")
    return 0


def cmd_profile(args) -> int:
    from . import devices
    from .graph import PruningSpace
    from .modelio import load_model
    from .profiling import Profiler, fit_latency_model
    from .select import group_options
    lm = load_model(args.model, args.input_shape, args.trust_pickle)
    dev = devices.get(args.device)
    space = PruningSpace(lm.model, (lm.example_input,))
    prof = Profiler(dev, _store(args))
    options = {g.gid: group_options(g, dev.step_channels, dev.min_channels) for g in space.groups}
    lat = fit_latency_model(prof, space, options, _progress())
    baseline = prof.measure_module(lm.model, (lm.example_input,))
    data = {"device": dev.name, "model": lm.source, "groups": len(space.groups), "layers": len(space.layers),
            "families": len(lat.families_), "shapes_measured": prof.measured, "shapes_reused": prof.reused,
            "baseline_ms": baseline.median_ms, "baseline_iqr_ms": baseline.iqr_ms,
            "sum_of_layers_ms": lat.layers_ms(space.specs(space.full_choice())), "store": str(prof.store.path)}
    _emit(args, data, (f"{dev.name}: {lm.source}: {data['layers']} layers, {data['groups']} channel groups, "
                       f"{data['families']} layer families\nmeasured {prof.measured} shapes, reused "
                       f"{prof.reused} from {prof.store.path}\nbaseline {baseline.median_ms:.3f} ms "
                       f"(IQR {baseline.iqr_ms:.3f})"))
    return 0


def cmd_prune(args) -> int:
    import torch
    from .engine import prune
    from .export import atomic_write_bytes, check_parity
    from .modelio import checkpoint, load_model
    from .onnx_io import to_onnx_bytes
    from .outdir import atomic_dir
    from .report import format_table
    lm = load_model(args.model, args.input_shape, args.trust_pickle)
    res = prune(lm.model, (lm.example_input,), device=args.device, budget_ms=args.budget_ms,
                importance_name=args.importance, store=_store(args), progress=_progress())
    data = {"device": res.device, "model": lm.source, "budget_ms": res.budget_ms, "baseline_ms": res.baseline_ms,
            "predicted_ms": res.predicted_ms, "measured_ms": res.measured_ms, "unchanged": res.unchanged,
            "note": res.note, "rounds": [r.__dict__ for r in res.rounds], **res.stats}
    with atomic_dir(Path(args.out), force=True) as tmp:
        onnx_bytes = to_onnx_bytes(res.model, (lm.example_input,))
        parity = check_parity(res.model, (lm.example_input,), onnx_bytes)
        atomic_write_bytes(tmp / "model.onnx", onnx_bytes)
        torch.save(checkpoint(res.model, lm.zoo_name, lm.num_classes, res.plan), tmp / "model.pt")
        (tmp / "plan.json").write_text(json.dumps(res.plan, indent=1))
        data["onnx_max_abs_diff"] = parity.max_abs_diff
        (tmp / "result.json").write_text(json.dumps(data, indent=2, default=float))
    data["out"] = str(args.out)
    rows = [["baseline", f"{res.baseline_ms:.3f}", "", data.get("params_before", ""), data.get("flops_before", "")],
            ["pruned", f"{res.measured_ms:.3f}", f"{res.predicted_ms:.3f}", data.get("params_after", ""),
             data.get("flops_after", "")]]
    text = format_table(["model", "measured ms", "predicted ms", "params", "FLOPs"], rows)
    text += f"\nbudget {res.budget_ms:.3f} ms on {res.device}; {len(res.rounds)} closed-loop rounds"
    if res.note:
        text += f"\nnote: {res.note}"
    _emit(args, data, text + f"\nwrote {args.out}/model.pt, plan.json, model.onnx")
    return 0


def cmd_export(args) -> int:
    from .errors import UserError
    from .export import export_onnx, trtexec_command
    from .modelio import load_model
    lm = load_model(args.model, args.input_shape, args.trust_pickle)
    src = Path(args.model)
    out = Path(args.out) if args.out else (src.parent if src.exists() else Path(".")) / "model.onnx"
    if args.format == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            onnx_path = out.with_suffix(".onnx")
            export_onnx(lm.model, (lm.example_input,), onnx_path, opset=args.opset)
            raise UserError(f"the tensorrt package is not installed (pip install 'hwprune[tensorrt]'); "
                            f"wrote {onnx_path}; build the engine with: "
                            f"{trtexec_command(onnx_path, out.with_suffix('.engine'))}") from None
        raise UserError("TensorRT engine building is not available in this version; use trtexec")
    path = export_onnx(lm.model, (lm.example_input,), out, opset=args.opset, dynamic_batch=args.dynamic_batch)
    _emit(args, {"onnx": str(path)}, f"wrote {path} (checked against PyTorch with ONNX Runtime)")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .report import format_table
    r = run_demo(Path(args.out), device=args.device, store=_store(args), progress=_progress())
    rows = [["baseline", f"{r['baseline_ms']:.3f}", "", r["params_before"], r["flops_before"],
             f"{100 * r['accuracy_before']:.1f} %"],
            ["pruned", f"{r['pruned_ms']:.3f}", f"{r['predicted_ms']:.3f}", r["params_after"], r["flops_after"],
             f"{100 * r['accuracy_after']:.1f} %"]]
    text = format_table(["resnet20", "measured ms", "predicted ms", "params", "FLOPs", "test acc"], rows)
    _emit(args, r, text + f"\nbudget {r['budget_ms']:.3f} ms on {args.device}; report in {args.out}/report.md")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hwprune", description="Hardware-aware, latency-constrained channel "
                                "pruning: make a CNN run in X ms on a device.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress of the engine")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp, model=True):
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        sp.add_argument("--store", help="measurement store (default $HWPRUNE_STORE or ~/.cache/hwprune)")
        if model:
            sp.add_argument("--model", required=True, help="zoo name (resnet20, resnet56, vgg16, mobilenetv2, "
                            "resnet18, resnet50) or a model file")
            sp.add_argument("--input-shape", type=_shape, help="N,C,H,W for files that do not record it")
            sp.add_argument("--trust-pickle", action="store_true",
                            help="allow loading a pickled whole model (runs code from the file)")

    sp = sub.add_parser("demo", help="train resnet20 on digits, prune to 50 %% of its latency, export")
    common(sp, model=False)
    sp.add_argument("--out", default="hwprune-demo", help="output folder (default hwprune-demo)")
    sp.add_argument("--device", default="ort-cpu-1t")
    sp.set_defaults(func=cmd_demo)
    sp = sub.add_parser("profile", help="measure a model's layer shapes on a device")
    common(sp)
    sp.add_argument("--device", required=True)
    sp.set_defaults(func=cmd_profile)
    sp = sub.add_parser("prune", help="prune a model to a latency budget on a device")
    common(sp)
    sp.add_argument("--device", required=True)
    sp.add_argument("--budget-ms", type=_positive, required=True, help="latency budget in milliseconds")
    sp.add_argument("--importance", default="l1", choices=["l1", "l2"])
    sp.add_argument("--out", required=True, help="output folder: model.pt, plan.json, model.onnx")
    sp.set_defaults(func=cmd_prune)
    sp = sub.add_parser("export", help="export a (pruned) model to ONNX or TensorRT")
    common(sp)
    sp.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx")
    sp.add_argument("--out", help="output file (default: model.onnx next to the model)")
    sp.add_argument("--opset", type=int, default=17)
    sp.add_argument("--dynamic-batch", action="store_true")
    sp.set_defaults(func=cmd_export)
    sp = sub.add_parser("devices", help="list devices, whether they run here, and stored measurements")
    common(sp, model=False)
    sp.set_defaults(func=cmd_devices)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from profilers import StoreError
    from .errors import UserError
    from .export import ExportError
    from .graph import GraphError
    try:
        return args.func(args)
    except (UserError, StoreError, GraphError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted; rerun to resume (stored measurements are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
