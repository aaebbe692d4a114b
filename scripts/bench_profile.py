"""Profiling benchmark: how long does profiling a model's layer shapes take
from an empty store, how long does a second run on the same store take, and
what channel step does each device here show?

1. Profile every layer shape ``hwprune profile`` measures for ``--model`` on
   ``--device`` (the sampled widths of every layer family plus the full-width
   layers), starting from an empty store; time it (target: under 3 minutes).
2. Run the same profiling again on the same store (a new store object, as a
   second process would open it); time it (target: under 5 s, nothing
   re-measured).
3. Detect the channel step (``profilers.steps.detect_step``) of every device
   in ``--step-devices`` that can run here; devices that cannot are listed
   with the reason. The steps are stored in the store, as ``hwprune profile``
   would store them.

Writes ``bench_profile.json`` and ``bench_profile.md`` into ``--out``. Exit
code 0 whatever the targets show; bad arguments exit 2.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import bench_common as common

common.use_repo_packages()

TARGET_EMPTY_S = 180.0
TARGET_SECOND_S = 5.0
DEFAULT_STEP_DEVICES = ["ort-cpu-1t", "ort-cpu-2t", "torch-cpu-1t"]


def parse_args(argv=None) -> argparse.Namespace:
    from hwprune import zoo
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56", help="zoo model name (default: resnet56)")
    p.add_argument("--device", default="ort-cpu-1t", help="device to profile (default: ort-cpu-1t)")
    p.add_argument("--step-devices", nargs="*", default=DEFAULT_STEP_DEVICES,
                   help=f"devices whose channel step to detect (default: {' '.join(DEFAULT_STEP_DEVICES)})")
    p.add_argument("--passes", type=int, default=3, help="sweeps per step detection (default: 3)")
    p.add_argument("--store", default=None,
                   help="measurement store path; it must hold no measurements of --device yet "
                        "(default: a fresh temp file)")
    p.add_argument("--out", default=str(common.REPO_ROOT / "scripts" / "results"),
                   help="output folder (default: scripts/results/)")
    args = p.parse_args(argv)
    if args.model not in zoo.list_models():
        p.error(f"unknown model {args.model!r}; known: {' '.join(zoo.list_models())}")
    if args.passes < 1:
        p.error("--passes must be >= 1")
    return args


def profile_once(dev, model_name: str, store_path: Path) -> dict:
    """One profiling run as ``hwprune profile`` does it, baseline excluded."""
    from hwprune import zoo
    from hwprune.graph.space import PruningSpace, device_options
    from hwprune.latency.profiling import Profiler, fit_latency_model
    from profilers import MeasurementStore
    t0 = time.perf_counter()
    store = MeasurementStore(store_path)
    prof = Profiler(dev, store)
    model, x = zoo.create(model_name)
    space = PruningSpace(model, (x,))
    options = device_options(space, dev)
    lat = fit_latency_model(prof, space, options)
    elapsed = time.perf_counter() - t0
    out = {"seconds": elapsed, "measured": prof.measured, "reused": prof.reused,
           "layers": len(space.layers), "families": len(lat.families_), "stored": store.count(prof.rows_key)}
    store.close()
    return out


def detect_steps(names: list[str], store_path: Path, passes: int) -> list[dict]:
    from hwprune import devices
    from hwprune.errors import UserError
    from profilers import MeasurementStore, fingerprint_key
    from profilers.steps import detect_step
    store = MeasurementStore(store_path)
    rows = []
    for name in names:
        try:
            dev = devices.get(name)
            rt = dev.open()
        except UserError as exc:
            rows.append({"device": name, "available": False, "note": str(exc)})
            continue
        t0 = time.perf_counter()
        res = detect_step(rt, passes=passes)
        secs = time.perf_counter() - t0
        store.put_meta(fingerprint_key({"device": name, **rt.fingerprint()}), "step",
                       {**res.to_json(), "detected_at": datetime.datetime.now().astimezone()
                        .isoformat(timespec="seconds")})
        rows.append({"device": name, "available": True, "grid_step_channels": dev.step_channels,
                     "seconds": secs, **res.to_json()})
    store.close()
    return rows


def markdown(header: dict, runs: list[dict], steps: list[dict]) -> str:
    lines = ["# Profiling benchmark", ""] + common.header_lines(header)
    lines += [f"- model {header['model']} on {header['device']}; store {header['store']}", "",
              "## Profiling time", ""]
    body = [[r["run"], f"{r['seconds']:.1f}", r["measured"], r["reused"], f"{r['target_s']:.0f}",
             "yes" if r["seconds"] <= r["target_s"] else "no"] for r in runs]
    lines += [common.md_table(["run", "seconds", "measured", "reused", "target s", "met"], body), "",
              "## Channel step per device", ""]
    body = []
    for s in steps:
        if not s["available"]:
            body.append([s["device"], "-", "-", "-", "-", f"not available here: {s['note']}"])
            continue
        sweep = " ".join(f"{n}:{m:.3f}" for n, m in zip(s["widths"], s["medians_ms"]))
        step = f"{s['step_channels']}" + ("" if s["reliable"] else " (noisy: busy machine?)")
        body.append([s["device"], step, s["grid_step_channels"], f"{100 * s['noise_rel']:.1f} %",
                     f"{s['seconds']:.1f}", f"width:ms {sweep}"])
    lines += [common.md_table(["device", "measured step", "descriptor grid", "noise", "seconds",
                               "3x3 conv 64->n, 56x56"], body), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from hwprune import devices
    from hwprune.errors import UserError
    from profilers import MeasurementStore, StoreError, fingerprint_key, host_key_of
    try:
        dev = devices.get(args.device)
        rt = dev.open()
        tmp = None
        if args.store:
            store_path = Path(args.store)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="bench_profile_")
            store_path = Path(tmp.name) / "store.sqlite"
        s = MeasurementStore(store_path)
        host = fingerprint_key({"device": dev.name, **rt.fingerprint()})
        held = sum(s.count(k) for k in s.devices() if host_key_of(k) == host)
        s.close()
    except (UserError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if held:
        print(f"error: store {store_path} already holds {held} measurements of {dev.name}; "
              f"name a new --store", file=sys.stderr)
        return 2
    header = {**common.machine_header(), "model": args.model, "device": dev.name,
              "store": str(store_path) if args.store else "fresh temp file"}
    runs = []
    for run, target in (("from empty store", TARGET_EMPTY_S), ("second run, same store", TARGET_SECOND_S)):
        r = profile_once(dev, args.model, store_path)
        runs.append({"run": run, "target_s": target, **r})
        print(f"{run}: {r['seconds']:.1f} s, measured {r['measured']}, reused {r['reused']}", file=sys.stderr)
    steps = detect_steps(args.step_devices, store_path, args.passes)
    for s in steps:
        print(f"{s['device']}: step {s.get('step_channels', '-')}", file=sys.stderr)
    out = Path(args.out)
    common.write_json(out / "bench_profile.json", {"header": header, "runs": runs, "steps": steps})
    common.write_atomic(out / "bench_profile.md", markdown(header, runs, steps))
    print(f"wrote {out / 'bench_profile.json'} and {out / 'bench_profile.md'}", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
