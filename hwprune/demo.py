"""The embedded end-to-end demo: train, prune to a budget, fine-tune, export, report.

ResNet-20 is trained briefly on scikit-learn's digits (see :mod:`hwprune.datasets`),
its latency is measured on the device, it is pruned to ``budget_frac`` of that
latency by the closed loop of :func:`hwprune.loop.engine.prune` (where this host
cannot reach that share, to a stated budget midway between the fastest network
measured and the full one: :func:`hwprune.loop.reach.prune_within_reach`), the pruned network
is fine-tuned with knowledge distillation from the trained original, and both
are evaluated on the held-out split. The pruned network is exported to ONNX and
checked against PyTorch with ONNX Runtime.

Files written to ``out_dir``: ``model.onnx``, ``plan.json`` and ``model.pt``
(together, by :func:`hwprune.export.pruned.write_pruned`: rebuild the zoo model,
apply the plan's kept channels, load the state dict), then ``report.md`` and
``latency.png`` (each atomically).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from hwprune import devices, zoo
from hwprune.datasets import digits_loaders
from hwprune.devices import machine_description
from hwprune.errors import UserError
from hwprune.export.pruned import MODEL_FILE, ONNX_FILE, PLAN_FILE, export_pruned, write_pruned
from hwprune.latency.profiling import Progress, measure_latency
from hwprune.loop.engine import count_params
from hwprune.loop.reach import prune_within_reach
from hwprune.report import write_demo_report
from hwprune.train.loop import evaluate, train
from profilers import MeasurementStore

log = logging.getLogger("hwprune")

MODEL_NAME = "resnet20"
NUM_CLASSES = 10
TRAIN_LR = 0.05
FINETUNE_LR = 0.01


def _check_args(budget_frac: float, epochs: int, finetune_epochs: int) -> None:
    if not 0.0 < float(budget_frac) < 1.0:
        raise UserError(f"budget fraction {budget_frac} must lie strictly between 0 and 1, e.g. 0.5")
    if int(epochs) < 1:
        raise UserError(f"training epochs must be at least 1, got {epochs}")
    if int(finetune_epochs) < 0:
        raise UserError(f"fine-tuning epochs must be 0 or more, got {finetune_epochs}")


def run_demo(out_dir: Path, device: str = "ort-cpu-1t", budget_frac: float = 0.5, epochs: int = 4,
             finetune_epochs: int = 2, store: MeasurementStore | None = None,
             progress: Progress | None = None) -> dict:
    """Run the demo end to end into ``out_dir``; return its figures (JSON-serialisable)."""
    _check_args(budget_frac, epochs, finetune_epochs)
    out_dir = Path(out_dir)
    dev = devices.get(device)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    train_loader, test_loader = digits_loaders(seed=0)
    model, example = zoo.create(MODEL_NAME, num_classes=NUM_CLASSES, seed=0)
    log.info("training %s on digits for %d epochs", MODEL_NAME, epochs)
    t = time.perf_counter()
    train(model, train_loader, epochs, lr=TRAIN_LR, progress=progress, seed=0)
    acc_base = evaluate(model, test_loader)
    timings["train_s"] = time.perf_counter() - t
    log.info("baseline test accuracy %.4f", acc_base)

    t = time.perf_counter()
    first_ms = measure_latency(model, example, dev)
    log.info("baseline %.3f ms on %s; pruning to %.0f %% of it", first_ms, dev.name, 100 * float(budget_frac))
    # channel widths only, as the Quickstart describes the demo (hwprune prune removes blocks too by default)
    res, choice = prune_within_reach(model, example, dev.name, float(budget_frac), store=store, progress=progress,
                                     granularity="channel")
    budget_ms = res.budget_ms
    log.info("%s", choice.text)  # also in the result (the CLI prints it) and the report
    timings["prune_s"] = time.perf_counter() - t
    if res.note:
        log.warning("%s", res.note)

    pruned = res.model
    t = time.perf_counter()
    if finetune_epochs > 0 and not res.unchanged:
        train(pruned, train_loader, finetune_epochs, lr=FINETUNE_LR, teacher=model, progress=progress, seed=0)
    acc_pruned = evaluate(pruned, test_loader)
    timings["finetune_s"] = time.perf_counter() - t
    log.info("pruned test accuracy %.4f", acc_pruned)

    t = time.perf_counter()
    first_test = next(iter(test_loader))[0][:1]
    export = export_pruned(pruned, example, plan=res.plan, zoo_name=MODEL_NAME, num_classes=NUM_CLASSES,
                           more_inputs=[first_test])
    onnx_rel = export.parity.max_rel_diff
    paths = write_pruned(out_dir, export)
    timings["export_s"] = time.perf_counter() - t

    st = res.stats
    params_before = int(st.get("params_before", count_params(model)))
    params_after = int(st.get("params_after", count_params(pruned)))
    rows = {
        "baseline": {"measured_ms": res.baseline_ms, "predicted_ms": None, "params": params_before,
                     "flops": st.get("flops_before"), "accuracy": acc_base},
        "pruned": {"measured_ms": res.measured_ms, "predicted_ms": res.predicted_ms, "params": params_after,
                   "flops": st.get("flops_after"), "accuracy": acc_pruned},
    }
    rounds = [{"target_ms": r.target_ms, "predicted_ms": r.predicted_ms, "measured_ms": r.measured_ms,
               "iqr_ms": r.iqr_ms} for r in res.rounds]
    machine = machine_description()
    md_path, png_path = write_demo_report(out_dir, rows, rounds, dev.name, machine, budget_ms=budget_ms,
                                          notes=[choice.text, *st.get("warnings", [])])

    return {
        "model": MODEL_NAME, "device": dev.name, "machine": machine,
        "budget_frac": choice.fraction, "budget_requested_frac": float(budget_frac), "budget_ms": budget_ms,
        "budget_choice": choice.to_json(), "certified": st.get("certified"), "grid": st.get("grid"),
        "warnings": st.get("warnings", []),
        "baseline_first_ms": first_ms, "baseline_ms": res.baseline_ms,
        "pruned_ms": res.measured_ms, "predicted_ms": res.predicted_ms,
        "speedup": res.baseline_ms / res.measured_ms if res.measured_ms > 0 else None,
        "budget_met": res.measured_ms <= budget_ms, "unchanged": res.unchanged, "note": res.note,
        "params_before": params_before, "params_after": params_after,
        "flops_before": st.get("flops_before"), "flops_after": st.get("flops_after"),
        "accuracy_before": acc_base, "accuracy_after": acc_pruned,
        "epochs": int(epochs), "finetune_epochs": int(finetune_epochs),
        "rounds": rounds, "onnx_max_rel_diff": onnx_rel,
        "shapes_measured": st.get("shapes_measured"), "shapes_reused": st.get("shapes_reused"),
        "paths": {"onnx": str(paths[ONNX_FILE]), "plan": str(paths[PLAN_FILE]), "state_dict": str(paths[MODEL_FILE]),
                  "report": str(md_path), "chart": str(png_path)},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "time_s": time.perf_counter() - t0,
    }
