"""The ``hwprune`` command line. Bad input: one ``error:`` line, exit code 2."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hwprune.cli.common import EXIT_USAGE, emit, open_store, positive_arg, progress_bar, shape_arg


def cmd_devices(args) -> int:
    from hwprune.latency.inventory import grid_text, inventory, profiles_text
    from hwprune.report import format_table
    store = open_store(args)
    infos, bad_files = inventory(store, measure_grid=args.measure_grid, progress=progress_bar())
    rows = [[i.name, "yes" if i.available else "no", grid_text(i), i.stored_measurements, profiles_text(i),
             i.description] for i in infos]
    from hwprune import devices
    folders = [str(f) for f in devices.profile_dirs()]
    text = format_table(["device", "available", "grid (source)", "stored", "profile files", "description"], rows)
    text += "".join(f"\n{i.name}: grid {i.grid['detail']}"
                    + (f" ({i.grid['measured_s']:.1f} s)" if i.grid.get("measured_s") else "")
                    for i in infos if i.available)
    text += f"\nstore: {store.path}\nprofiles: {', '.join(folders)}"
    text += "".join(f"\nunreadable profile: {b}" for b in bad_files)
    emit(args, {"devices": [i.to_json() for i in infos], "store": str(store.path), "profiles_dirs": folders,
                "unreadable_profiles": bad_files}, text)
    return 0


def cmd_profile(args) -> int:
    from hwprune import devices
    from hwprune.errors import UserError
    from hwprune.graph.plans import load_model
    from hwprune.latency.profiling import profile_model
    if args.export and Path(args.export).is_dir():
        raise UserError(f"--export {args.export} is a folder; name a file (e.g. {args.export}/"
                        f"{args.device}.jsonl)")
    lm = load_model(args.model, args.input_shape, args.trust_pickle)
    dev = devices.get(args.device)
    data, step = profile_model(lm.model, (lm.example_input,), dev, open_store(args), source=lm.source,
                               export=args.export, progress=progress_bar())
    step_new = data["step_detected_now"]
    text = (f"{dev.name}: {lm.source}: {data['layers']} layers, {data['groups']} channel groups, "
            f"{data['families']} layer families\nmeasured {data['shapes_measured']} shapes, reused "
            f"{data['shapes_reused']} from {data['store']}\nchannel step {step.get('step_channels')} "
            + (f", widths off multiples of {step['align_channels']} run slower"
               if (step.get("align_channels") or 0) > (step.get("step_channels") or 0) else "")
            + f" ({'detected now' if step_new else 'stored'}; the device grid uses {dev.step_channels})"
            + ("" if step.get("reliable", True) else f"; noisy ({100 * step.get('noise_rel', 0):.0f} % run to "
               f"run, is the machine busy?), detected again next time")
            + f"\nbaseline {data['baseline_ms']:.3f} ms (IQR {data['baseline_iqr_ms']:.3f})")
    if args.export:
        text += f"\nexported {data['exported_measurements']} measurements of {dev.name} to {args.export}"
    emit(args, data, text)
    return 0


def cmd_prune(args) -> int:
    import os

    from hwprune.cli.finetune import job_of, text_of
    from hwprune.cli.finetune import run as finetune_into
    from hwprune.cli.prune import budget_kwargs, check_data_options, constraints_from_args
    from hwprune.errors import UserError
    from hwprune.export.pruned import export_pruned, write_pruned
    from hwprune.graph.plans import load_model
    from hwprune.loop.engine import prune
    from hwprune.report import format_table
    budget_ms, cons = constraints_from_args(args)
    lm = load_model(args.model, args.input_shape, args.trust_pickle)
    check_data_options(args)
    data_loader = None
    if args.data is not None:
        from hwprune.datasets import loaders_for
        data_loader = loaders_for(lm.model, args.data, lm.example_input, lm.num_classes, args.batch_size,
                                  args.seed)[0]
    res = prune(lm.model, (lm.example_input,), device=args.device, **budget_kwargs(budget_ms), constraints=cons,
                selector=args.selector, time_limit_s=args.time_limit_s, importance_name=args.importance,
                data=data_loader, store=open_store(args), progress=progress_bar(), grid=args.grid,
                granularity=args.granularity)
    data = {"device": res.device, "model": lm.source, "budget_ms": res.budget_ms, "baseline_ms": res.baseline_ms,
            "predicted_ms": res.predicted_ms, "measured_ms": res.measured_ms, "unchanged": res.unchanged,
            "note": res.note, "rounds": [r.__dict__ for r in res.rounds], **res.stats,
            "devices": res.devices, "constraints": res.plan.get("constraints"),
            "selector": args.selector, "importance": args.importance, "solve": {k: res.selection.get(k) for k in
                                                 ("status", "mip_gap", "solve_s", "objective", "note")},
            "frozen": [f.to_json() for f in res.frozen]}
    export = export_pruned(res.model, (lm.example_input,), plan=res.plan, source=lm.model_source,
                           num_classes=lm.num_classes)
    data["onnx_max_abs_diff"] = export.parity.max_abs_diff
    write_pruned(Path(args.out), export, {"result.json": json.dumps(data, indent=2, default=float)},
                 replace_folder=True)
    data["out"] = str(args.out)
    rows = [["baseline", f"{res.baseline_ms:.3f}", "", data.get("params_before", ""), data.get("flops_before", "")],
            ["pruned", f"{res.measured_ms:.3f}", f"{res.predicted_ms:.3f}", data.get("params_after", ""),
             data.get("flops_after", "")]]
    text = format_table(["model", "measured ms", "predicted ms", "params", "FLOPs"], rows)
    for dev, d in res.devices.items():
        if d.get("budget_ms") is not None and "measured_ms" in d:
            text += (f"\n{dev}: budget {d['budget_ms']:.3f} ms, measured {d['measured_ms']:.3f} ms "
                     f"(baseline {d['baseline_ms']:.3f})")
    text += f"\n{len(res.rounds)} closed-loop rounds"
    from hwprune.cli.prune import frozen_text, host_text
    text += host_text(res) + frozen_text(res.frozen)
    solve = data["solve"]
    if solve.get("status"):
        gap = "" if solve.get("mip_gap") is None else f", MIP gap {100 * solve['mip_gap']:.3f} %"
        text += (f"\nselector {args.selector}: {solve['status']}{gap}, {solve['solve_s']:.2f} s; "
                 f"active-weight importance kept {100 * solve['objective']:.1f} %")
    if res.note:
        text += f"\nnote: {res.note}"
    text += f"\nwrote {args.out}/model.pt, plan.json, model.onnx"
    if args.finetune_epochs:   # fine-tune the pruned model into --out, the original as teacher
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("prune in one process, then fine-tune under torchrun: torchrun ... -m hwprune "
                            "finetune --model OUT/model.pt --data D --epochs N")
        if not res.unchanged:
            data["finetune"] = finetune_into(job_of(args, args.finetune_epochs), res.model, lm.model, lm, res.plan,
                                             Path(args.out))
            text += "\n" + text_of(data["finetune"])
    emit(args, data, text)
    return 0


def cmd_export(args) -> int:
    from hwprune.export.artifact import export_model, report_text
    from hwprune.graph.plans import load_model
    src = Path(args.model)
    default = {"tensorrt": "model.engine", "executorch": "model.pte", "openvino": "model.xml"}.get(args.format,
                                                                                                  "model.onnx")
    folder = src if src.is_dir() else src.parent if src.exists() else Path(".")
    out = Path(args.out) if args.out else folder / default
    lm = load_model(args.model, args.input_shape, args.trust_pickle)
    report = export_model(lm.model, (lm.example_input,), out, fmt=args.format, opset=args.opset,
                          dynamic_batch=args.dynamic_batch, fp16=args.fp16, int8=args.int8, data=args.data,
                          force=args.force, max_batch=args.max_batch, source=lm.source)
    emit(args, report, report_text(report))
    return 0


def cmd_demo(args) -> int:
    from hwprune.demo import run_demo
    from hwprune.report import format_table
    r = run_demo(Path(args.out), device=args.device, store=open_store(args), progress=progress_bar())
    rows = [["baseline", f"{r['baseline_ms']:.3f}", "", r["params_before"], r["flops_before"],
             f"{100 * r['accuracy_before']:.1f} %"],
            ["pruned", f"{r['pruned_ms']:.3f}", f"{r['predicted_ms']:.3f}", r["params_after"], r["flops_after"],
             f"{100 * r['accuracy_after']:.1f} %"]]
    text = format_table(["resnet20", "measured ms", "predicted ms", "params", "FLOPs", "test acc"], rows)
    text += f"\n{r['budget_choice']['text']}" + "".join(f"\nwarning: {w}" for w in r.get("warnings", []))
    emit(args, r, text + f"\nbudget {r['budget_ms']:.3f} ms on {args.device}; report in {args.out}/report.md")
    return 0


def cmd_agent(args) -> int:
    import os

    from hwprune.errors import UserError
    from profilers.agent import serve
    env = os.environ.get("HWPRUNE_AGENT_TOKEN")
    source = "--token" if args.token else ("$HWPRUNE_AGENT_TOKEN" if env else None)

    def ready(server):
        host, port = server.server_address[:2]
        shown = "BOARD_ADDRESS" if host in ("0.0.0.0", "::", "") else host
        device = f"remote:{shown}:{port}"
        data = {"host": host, "port": port, "device": device, "token": None if source else server.token,
                "token_source": source or "generated", "threads": server.threads,
                "max_bytes": server.max_bytes}
        token = f"token: {server.token}" if source is None else f"token: the one given by {source}"
        served = ", ".join(server.info()["runtimes"])
        emit(args, data, f"hwprune agent on {host}:{port}: serves {served}, {server.threads} thread(s), "
                          f"uploads up to {args.max_upload_mib:g} MB; Ctrl-C stops it\ndevice: {device}\n{token}\n"
                          f"on the host: HWPRUNE_AGENT_TOKEN=<token> hwprune profile --device {device} "
                          f"--model resnet20")
        sys.stdout.flush()
    try:
        serve(args.host, args.port, args.token or env or None, max(1, int(args.max_upload_mib * 1024 * 1024)),
              args.threads, on_ready=ready)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                        f"pick another --port or --host") from None
    except KeyboardInterrupt:
        print("agent stopped", file=sys.stderr)
    return 0


def _port(text):
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"port {text!r} is not 0-65535")
    return int(text)


def _count(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


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
                            "resnet18, resnet50), torchvision:NAME or timm:NAME (random weights), or a model "
                            "file")
            sp.add_argument("--input-shape", type=shape_arg, help="N,C,H,W (default: the model's own size, or "
                            "what a checkpoint's plan records; needed for files that record none)")
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
    sp.add_argument("--export", metavar="FILE", help="also write the device's stored measurements to FILE "
                    "(one JSON object per line, e.g. devices/profiles/DEVICE.jsonl)")
    sp.set_defaults(func=cmd_profile)
    sp = sub.add_parser("prune", help="prune a model to a latency budget on a device")
    common(sp)
    from hwprune.cli.prune import add_arguments
    add_arguments(sp)
    sp.add_argument("--out", required=True, help="output folder: model.pt, plan.json, model.onnx")
    sp.set_defaults(func=cmd_prune)
    from hwprune.cli.finetune import add_parser as add_finetune_parser
    add_finetune_parser(sub, common)
    from profilers.onnx_export import OPSET
    sp = sub.add_parser("export", help="export a (pruned) model to ONNX, TensorRT, ExecuTorch or OpenVINO")
    common(sp)
    sp.add_argument("--format", choices=["onnx", "tensorrt", "executorch", "openvino"], default="onnx",
                    help="onnx; tensorrt (an engine); executorch (a .pte lowered to XNNPACK); openvino (IR .xml "
                    "and .bin)")
    sp.add_argument("--out", help="output file (default: model.onnx, model.engine, model.pte or model.xml next to "
                    "the model); a report goes to OUT.report.json, a TensorRT export also writes OUT with suffix "
                    ".onnx, an OpenVINO export OUT with suffix .bin")
    sp.add_argument("--force", action="store_true", help="replace existing output files")
    sp.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    sp.add_argument("--dynamic-batch", action="store_true", help="export with a variable batch size")
    sp.add_argument("--max-batch", type=_count, default=32,
                    help="largest batch of a dynamic-batch TensorRT engine (default 32)")
    sp.add_argument("--fp16", action="store_true", help="TensorRT: allow FP16 kernels")
    sp.add_argument("--int8", action="store_true", help="TensorRT: INT8, calibrated on --data")
    sp.add_argument("--data", metavar="D", help="real inputs to check against PyTorch (and calibrate INT8): "
                    "'digits' or a .npz file with x [N,C,H,W] float and optional y [N] labels")
    sp.set_defaults(func=cmd_export)
    sp = sub.add_parser("validate", help="measure random sub-networks and score every latency model on them")
    common(sp)
    from hwprune.cli.validate import add_arguments as add_validate_arguments
    from hwprune.cli.validate import cmd_validate
    add_validate_arguments(sp)
    sp.set_defaults(func=cmd_validate)
    sp = sub.add_parser("devices", help="list devices, whether they run here, the channel grid each is pruned "
                        "on (and where it came from), stored measurements and profiles")
    common(sp, model=False)
    sp.add_argument("--measure-grid", action="store_true", help="measure the channel step of every device that "
                    "runs here and has none stored yet (a few seconds each; prune does it on first use)")
    sp.set_defaults(func=cmd_devices)
    from hwprune.cli.compare import register as register_compare
    register_compare(sub, common)
    sp = sub.add_parser("agent", help="run on a board: measure ONNX models sent by hwprune on another "
                        "machine (device remote:HOST:PORT)")
    sp.add_argument("--json", action="store_true", help="print the address and token as JSON")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this "
                    "machine only; 0.0.0.0 for the network)")
    sp.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 picks a free one)")
    sp.add_argument("--token", help="token clients must send (default $HWPRUNE_AGENT_TOKEN, else a new "
                    "one is generated and printed)")
    sp.add_argument("--threads", type=_count, default=1, help="ONNX Runtime intra-op threads (default 1)")
    sp.add_argument("--max-upload-mib", type=positive_arg, default=256.0, help="largest upload accepted, in MiB "
                    "(default 256)")
    sp.set_defaults(func=cmd_agent)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from hwprune.errors import UserError
    from hwprune.export.parity import ExportError
    from hwprune.graph.space import GraphError
    from profilers import RuntimeUnavailable, StoreError, UnknownName
    try:
        return args.func(args)
    except (UserError, UnknownName, StoreError, GraphError, ExportError, RuntimeUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted; rerun to resume (stored measurements are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
