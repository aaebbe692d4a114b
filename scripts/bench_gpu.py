"""GPU benchmark: profile the zoo on a GPU, measure its channel step, validate
the latency model on random sub-networks, and prune resnet50 to GPU budgets.

Phases (``--phases``, in the order given; each item's result is written into
``bench_gpu.json`` when done, so a run stopped by ``--deadline-s`` keeps it and
a rerun with the same ``--store`` re-measures nothing stored):

1. ``env``: the GPU, driver, CUDA, cuDNN and torch versions.
2. ``steps``: each device's channel step at each batch (``profilers.steps``).
3. ``profile``: every layer shape the engine samples for each model, device
   and batch (what ``hwprune profile`` measures), plus whole-network
   measurements of uniform sub-networks at 0/25/50/75/100 % width (the rows
   the latency model's remainder is fitted from).
4. ``validate``: ``--samples`` random sub-networks per (model, device, batch)
   in ``--validate``, measured against the full network as ``hwprune validate``
   does (fresh sessions, alternating blocks, +-2 % or 6 rounds / 10 s) and
   predicted; share within +-5 %/+-10 %, RMSPE, largest error; their layer
   shapes are kept in the JSON so other latency models can be scored offline.
5. ``prune``: ``--prune-model`` at ``--prune-batch`` pruned with ``--selector``
   to each of ``--budgets`` (fractions of its measured latency) on each
   device, then pruned / baseline re-measured in alternating blocks to a
   +-2 % interval; ``(pruned / baseline) / fraction`` should lie in [0.90, 1.03].
6. ``rescore`` (no GPU needed): every registered latency model, fitted on the
   stored layer measurements (the store, else the committed ``*-h200.jsonl``
   profiles) and whole-network rows, scored on the stored sub-networks.

Writes ``bench_gpu.json`` and ``bench_gpu.md`` into ``--out``; ``--store`` keeps
every layer measurement for exporting device profiles.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench_common as common

common.use_repo_packages()

BAND = (0.90, 1.03)
FRACS = (0.0, 0.25, 0.5, 0.75, 1.0)
ALL_PHASES = ("env", "steps", "profile", "validate", "prune", "rescore")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", nargs="+", default=list(ALL_PHASES), choices=ALL_PHASES)
    p.add_argument("--devices", nargs="+", default=["torch-cuda-fp16", "torch-cuda-fp32"])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "vgg16", "mobilenetv2",
                                                   "resnet18", "resnet50"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--validate", nargs="*", default=["resnet50:64", "resnet50:1", "mobilenetv2:64",
                                                     "resnet56:64", "vgg16:64"],
                   help="MODEL:BATCH pairs to validate on every device")
    p.add_argument("--samples", type=int, default=30, help="random sub-networks per validation")
    p.add_argument("--prune-model", default="resnet50")
    p.add_argument("--prune-batch", type=int, default=64)
    p.add_argument("--prune-devices", nargs="*", default=["torch-cuda-fp16"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.7])
    p.add_argument("--selector", default="qcqp")
    p.add_argument("--time-limit-s", type=float, default=20.0, help="selector time limit per solve")
    p.add_argument("--step-max", type=int, default=256, help="widest output of the step sweep")
    p.add_argument("--step-probe", type=int, default=4)
    p.add_argument("--deadline-s", type=float, default=540.0, help="stop starting new items after this")
    p.add_argument("--store", required=True, help="measurement store (kept between runs)")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


class Run:
    def __init__(self, args):
        self.args = args
        self.t0 = time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "bench_gpu.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data.setdefault("machine", common.machine_header())
        from profilers import MeasurementStore
        self.store = MeasurementStore(args.store)

    def left_s(self) -> float:
        return self.args.deadline_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        common.write_json(self.path, self.data)

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)


def example(name: str, batch: int):
    import torch

    from hwprune import zoo
    model, x = zoo.create(name)
    return model.eval(), torch.randn(batch, *x.shape[1:])


def step_of(run: Run, device: str, batch: int) -> int:
    """The device's grid (its descriptor): what the engine selects on."""
    from hwprune import devices
    return devices.get(device).step_channels


def space_and_options(run: Run, name: str, device: str, batch: int):
    from hwprune import devices
    from hwprune.graph.space import PruningSpace, group_options
    model, x = example(name, batch)
    space = PruningSpace(model, x)
    step = step_of(run, device, batch)
    floor = max(step, devices.get(device).min_channels)
    options = {g.gid: group_options(g, step, floor) for g in space.groups}
    return model, x, space, options, step


def phase_env(run: Run) -> None:
    from hwprune import devices
    rt = devices.get(run.args.devices[0]).open()
    run.data["env"] = rt.fingerprint()
    try:
        run.data["env"]["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        run.data["env"]["nvidia_smi"] = f"unavailable: {exc}"
    run.log(f"env: {run.data['env']}")
    run.save()


def phase_steps(run: Run) -> None:
    from hwprune import devices
    from profilers import fingerprint_key
    from profilers.steps import detect_step
    steps = run.data.setdefault("steps", {})
    for device in run.args.devices:
        rt = devices.get(device).open()
        fp = fingerprint_key({"device": device, **rt.fingerprint()})
        for batch in run.args.batches:
            key = f"{device}:b{batch}"
            if key in steps or run.left_s() < 0:
                continue
            t = time.perf_counter()
            res = detect_step(rt, max_out=run.args.step_max, probe=run.args.step_probe, passes=3, batch=batch)
            steps[key] = {**res.to_json(), "batch": batch, "seconds": round(time.perf_counter() - t, 1)}
            if batch == max(run.args.batches):  # the device's grid: the saturated regime
                run.store.put_meta(fp, "step", {**res.to_json(), "batch": batch})
            run.log(f"step {key}: {res.step_channels} (noise {res.noise_rel:.3%}, {steps[key]['seconds']} s)")
            run.save()


def uniform(options, frac: float):
    return {gid: opts[int(round(frac * (len(opts) - 1)))] for gid, opts in options.items()}


def phase_profile(run: Run) -> None:
    from hwprune import devices
    from hwprune.graph.subnets import build
    from hwprune.latency.profiling import Profiler, fit_latency_model
    prof_rows = run.data.setdefault("profile", {})
    for batch in run.args.batches:
        for name in run.args.models:
            for device in run.args.devices:
                key = f"{name}:{device}:b{batch}"
                if key in prof_rows or run.left_s() < 0:
                    continue
                t = time.perf_counter()
                model, x, space, options, step = space_and_options(run, name, device, batch)
                prof = Profiler(devices.get(device), run.store)
                fit_latency_model(prof, space, options)
                t_layers = time.perf_counter() - t
                nets = []
                for frac in FRACS:
                    choice = uniform(options, frac)
                    net = model if frac == 1.0 else build(space, choice)
                    timing = prof.measure_module(net, x)
                    nets.append({"frac": frac, "ms": timing.median_ms, "iqr_ms": timing.iqr_ms,
                                 "specs": [s.key() for s in space.specs(choice)]})
                prof_rows[key] = {"model": name, "device": device, "batch": batch, "step": step,
                                  "shapes_measured": prof.measured, "shapes_reused": prof.reused,
                                  "layers_s": round(t_layers, 1),
                                  "seconds": round(time.perf_counter() - t, 1), "networks": nets}
                run.log(f"profile {key}: {prof.measured} measured, {prof.reused} reused in {t_layers:.1f} s; "
                        f"full {nets[-1]['ms']:.3f} ms, smallest {nets[0]['ms']:.3f} ms")
                run.save()


def network_rows(entry: dict):
    from profilers import LayerSpec
    return [([LayerSpec.from_key(k) for k in n["specs"]], n["ms"]) for n in entry["networks"]]


def errors_summary(pred, meas) -> dict:
    import numpy as np
    e = (np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)
    return {"n": int(len(e)), "rmspe": float(np.sqrt(np.mean(e ** 2))), "max_abs_err": float(np.max(np.abs(e))),
            "within_5": float(np.mean(np.abs(e) <= 0.05)), "within_10": float(np.mean(np.abs(e) <= 0.10)),
            "mean_err": float(np.mean(e))}


def phase_validate(run: Run) -> None:
    from hwprune import devices
    from hwprune.graph.subnets import iter_subnets
    from hwprune.latency.profiling import Profiler, block_protocol, fit_latency_model
    from hwprune.latency.validate import FullNetworkBlocks
    val = run.data.setdefault("validate", {})
    for pair in run.args.validate:
        name, _, b = pair.partition(":")
        batch = int(b)
        for device in run.args.devices:
            key = f"{name}:{device}:b{batch}"
            prof_key = key
            if key in val or run.left_s() < 0 or prof_key not in run.data.get("profile", {}):
                continue
            t = time.perf_counter()
            model, x, space, options, step = space_and_options(run, name, device, batch)
            prof = Profiler(devices.get(device), run.store)
            lat = fit_latency_model(prof, space, options).fit_remainder(network_rows(run.data["profile"][prof_key]))
            meter = FullNetworkBlocks(prof.runtime, model, x, block_protocol(prof.device))
            rows = []
            for choice, net in iter_subnets(space, options, run.args.samples, seed=1):
                specs = space.specs(choice)
                est, iqr_rel = meter.ratio(net)
                rows.append({"ratio": est.ratio, "ratio_lo": est.ratio_lo, "ratio_hi": est.ratio_hi,
                             "sure": est.sure, "rounds": est.rounds, "drift_rel": est.drift_rel,
                             "predicted_ms": lat.predict(specs), "iqr_rel": iqr_rel,
                             "specs": [s.key() for s in specs]})
                if run.left_s() < -60:
                    break
            for r in rows:  # the reference's median block over the whole run
                r["measured_ms"] = r["ratio"] * meter.reference_ms
            summary = errors_summary([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
            drift = max(r["drift_rel"] for r in rows)   # the full network's blocks while a ratio was measured
            val[key] = {"model": name, "device": device, "batch": batch, "step": step, "drift_rel": drift,
                        "unsure": sum(not r["sure"] for r in rows), "reference_ms": meter.reference_ms,
                        "summary": summary, "seconds": round(time.perf_counter() - t, 1), "rows": rows}
            run.log(f"validate {key}: within 5 % {summary['within_5']:.0%}, 10 % {summary['within_10']:.0%}, RMSPE "
                    f"{summary['rmspe']:.2%}, max {summary['max_abs_err']:.1%} ({len(rows)} nets, drift {drift:.1%})")
            run.save()


def layer_measurements(run: Run, device: str) -> list:
    """The device's stored layer measurements; from the committed profiles when
    the store has none (scoring on a machine without the GPU)."""
    import json as _json

    from hwprune import devices
    from profilers import LayerSpec, Measurement
    from profilers.profile_io import load_profile, profile_files
    keys = [k for k in run.store.devices() if _json.loads(k).get("device") == device]
    if keys:
        return [Measurement(device, LayerSpec.from_key(k), t) for key in keys for k, t in run.store.items(key)]
    out = []
    for path in profile_files(devices.builtin_dir() / "profiles"):
        header, rows = load_profile(path)
        if header["device"] == device and header["fingerprint"].get("gpu") == run.data.get("env", {}).get("gpu"):
            out += [Measurement(device, LayerSpec.from_key(k), t) for k, t in rows]
    return out


def phase_rescore(run: Run) -> None:
    from latency_models import NetworkLatencyModel, list_models
    from profilers import LayerSpec
    scores = run.data["rescore"] = {}
    for key, v in run.data.get("validate", {}).items():
        ms = layer_measurements(run, v["device"])
        nets = [[LayerSpec.from_key(k) for k in r["specs"]] for r in v["rows"]]
        families = {s.family() for net in nets for s in net}
        ms = [m for m in ms if m.spec.family() in families]
        measured = [r["measured_ms"] for r in v["rows"]]
        rows = network_rows(run.data["profile"][key])
        scores[key] = {}
        for name in list_models():
            lat = NetworkLatencyModel(name, step_channels=v["step"]).fit(ms).fit_remainder(rows)
            scores[key][name] = {**errors_summary([lat.predict(n) for n in nets], measured),
                                 "layer_measurements": len(ms)}
        best = min(scores[key].items(), key=lambda kv: kv[1]["rmspe"])
        run.log(f"rescore {key}: best {best[0]} RMSPE {best[1]['rmspe']:.2%}, within 5 % "
                f"{best[1]['within_5']:.0%}; step-quadratic RMSPE {scores[key]['step-quadratic']['rmspe']:.2%}")
    run.save()


def phase_prune(run: Run) -> None:
    from hwprune import devices
    from hwprune.errors import UserError
    from hwprune.latency.profiling import Profiler
    from hwprune.loop.engine import count_params, prune
    from profilers.blocks import block_runner, ratio_in_blocks
    pr = run.data.setdefault("prune", {})
    name, batch = run.args.prune_model, run.args.prune_batch
    for device in run.args.prune_devices:
        model, x = example(name, batch)
        dev = devices.get(device)
        for frac in run.args.budgets:
            key = f"{name}:{device}:b{batch}:{frac:g}"
            if key in pr or run.left_s() < 0:
                continue
            t = time.perf_counter()
            prof = Profiler(dev, run.store)
            base = statistics.median(prof.measure_module(model, x).median_ms for _ in range(3))
            try:
                res = prune(model, x, device=device, budget_ms=frac * base, selector=run.args.selector,
                            store=run.store, time_limit_s=run.args.time_limit_s)
            except UserError as exc:
                pr[key] = {"model": name, "device": device, "batch": batch, "fraction": frac, "error": str(exc)}
                run.log(f"prune {key}: error: {exc}")
                run.save()
                continue
            rt = dev.open()   # as a user measures: fresh sessions, alternating blocks, to a +-2 % interval
            est = ratio_in_blocks(block_runner(rt, model, x), block_runner(rt, res.model, x))
            ratio, band = est.ratio, est.ratio / frac
            pr[key] = {"model": name, "device": device, "batch": batch, "fraction": frac,
                       "baseline_ms": base, "budget_ms": frac * base, "engine_baseline_ms": res.baseline_ms,
                       "predicted_ms": res.predicted_ms, "measured_ms": res.measured_ms,
                       "remeasured_ratio": ratio, "remeasured": est.to_json(), "band_value": band,
                       "in_band": BAND[0] <= band <= BAND[1], "rounds": len(res.rounds),
                       "round_ms": [[r.predicted_ms, r.measured_ms] for r in res.rounds],
                       "selection": {k: v for k, v in res.selection.items() if k != "usage"},
                       "params_before": count_params(model), "params_after": count_params(res.model),
                       "flops_before": res.stats.get("flops_before"), "flops_after": res.stats.get("flops_after"),
                       "widths": {str(g["gid"]): len(g["kept"]) for g in res.plan["groups"]},
                       "note": res.note, "seconds": round(time.perf_counter() - t, 1)}
            run.log(f"prune {key}: budget {frac * base:.3f} ms, predicted {res.predicted_ms:.3f}, measured "
                    f"{res.measured_ms:.3f}, re-measured ratio {ratio:.3f} -> {band:.3f} x budget, "
                    f"{len(res.rounds)} rounds, {pr[key]['seconds']} s")
            run.save()


def write_markdown(run: Run) -> None:
    d = run.data
    lines = ["# GPU benchmark", ""]
    env = d.get("env", {})
    lines += [f"- date: {d['machine']['date']}",
              f"- GPU: {env.get('gpu')} (capability {env.get('capability')}), driver {env.get('driver')}, "
              f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, torch {env.get('torch')}",
              f"- host CPU: {env.get('cpu')}", ""]
    if d.get("steps"):
        lines += ["## Channel step (3x3 conv 64 -> N, 56x56)", ""]
        lines.append(common.md_table(["device:batch", "step", "noise", "seconds"],
                                     [[k, v["step_channels"], f"{v['noise_rel']:.2%}", v["seconds"]]
                                      for k, v in d["steps"].items()]))
        lines.append("")
    if d.get("profile"):
        lines += ["## Profiling", ""]
        lines.append(common.md_table(
            ["model:device:batch", "step", "shapes measured", "layers s", "full ms", "smallest ms"],
            [[k, v["step"], v["shapes_measured"], v["layers_s"], f"{v['networks'][-1]['ms']:.3f}",
              f"{v['networks'][0]['ms']:.3f}"] for k, v in d["profile"].items()]))
        lines.append("")
    if d.get("validate"):
        lines += ["## Latency model on random sub-networks", ""]
        lines.append(common.md_table(
            ["model:device:batch", "n", "within 5 %", "within 10 %", "RMSPE", "max error", "full ms"],
            [[k, v["summary"]["n"], f"{v['summary']['within_5']:.0%}", f"{v['summary']['within_10']:.0%}",
              f"{v['summary']['rmspe']:.2%}", f"{v['summary']['max_abs_err']:.1%}", f"{v['reference_ms']:.3f}"]
             for k, v in d["validate"].items()]))
        lines.append("")
    if d.get("rescore"):
        names = list(next(iter(d["rescore"].values())))
        lines += ["## Every latency model on the same sub-networks (RMSPE / share within 5 %)", ""]
        lines.append(common.md_table(["model:device:batch"] + names, [
            [k] + [f"{v[n]['rmspe']:.1%} / {v[n]['within_5']:.0%}" for n in names]
            for k, v in d["rescore"].items()]))
        lines.append("")
    if d.get("prune"):
        lines += ["## Pruning to a GPU budget", ""]
        lines.append(common.md_table(
            ["model:device:batch:fraction", "baseline ms", "budget ms", "predicted ms", "measured ms",
             "re-measured / budget", "in band", "rounds", "selector status", "params", "seconds"],
            [[k, f"{v['baseline_ms']:.3f}", f"{v['budget_ms']:.3f}", f"{v['predicted_ms']:.3f}",
              f"{v['measured_ms']:.3f}", f"{v['band_value']:.3f}", "yes" if v["in_band"] else "no",
              v["rounds"], v["selection"].get("status"), f"{v['params_before']:,} -> {v['params_after']:,}",
              v["seconds"]] for k, v in d["prune"].items() if "error" not in v]))
        lines += [f"- {k}: error: {v['error']}" for k, v in d["prune"].items() if "error" in v]
        lines.append("")
    common.write_atomic(run.out / "bench_gpu.md", "\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Run(args)
    phases = {"env": phase_env, "steps": phase_steps, "profile": phase_profile,
              "validate": phase_validate, "prune": phase_prune, "rescore": phase_rescore}
    try:
        for name in args.phases:  # in the order given
            run.log(f"phase {name} ({run.left_s():.0f} s left)")
            phases[name](run)
    finally:
        run.save()
        write_markdown(run)
        run.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
