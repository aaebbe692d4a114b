"""The accuracy benchmark's baselines and verdicts (no training, no latency measured)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_accuracy as bench  # noqa: E402

from hwprune import devices, zoo  # noqa: E402


def test_torch_pruning_baseline_is_uniform_and_on_the_grid():
    model, x = zoo.create("resnet20")
    full_flops, full_params = bench.size_of(model, x)
    pruned = bench.tp_prune(model, x, 0.5, 8)
    flops, params = bench.size_of(pruned, x)
    assert flops < 0.5 * full_flops and params < 0.5 * full_params
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths) and pruned.fc.out_features == 10
    assert pruned(x).shape == (1, 10) and bench.size_of(model, x) == (full_flops, full_params)  # a copy


def test_flops_selection_meets_the_bound_and_grows_with_it():
    model, x = zoo.create("resnet20")
    dev = devices.get("ort-cpu-1t")
    full, _ = bench.size_of(model, x)
    small = bench.flops_selection(model, x, dev, 0.3 * full)
    large = bench.flops_selection(model, x, dev, 0.6 * full)
    assert bench.size_of(small, x)[0] <= 0.3 * full < bench.size_of(large, x)[0] <= 0.6 * full
    assert bench.flops_selection(model, x, dev, 1000.0) is None  # below the smallest network


def _row(method, frac, acc, ratio, meets=True, seed=0):
    return {"seed": seed, "fraction": frac, "method": method, "ratio": ratio, "ms": ratio * 1.2, "meets": meets,
            "accuracy": acc, "params": 1000, "flops": 2000}


def test_verdict_compares_the_best_criterion_with_torch_pruning():
    rows = []
    for seed, (a, b, c) in enumerate([(0.95, 0.97, 0.96), (0.96, 0.98, 0.97)]):
        rows += [_row("hwprune l1", 0.5, a, 0.48, seed=seed), _row("hwprune taylor", 0.5, b, 0.49, seed=seed),
                 _row("Torch-Pruning", 0.5, c, 0.47, seed=seed), _row("hwprune FLOPs bound (l1)", 0.5, 0.99, 0.5,
                                                                       seed=seed)]
    table, summary = bench.aggregate([], rows, [0.5])
    assert [t["method"] for t in table] == ["hwprune l1", "hwprune taylor", "Torch-Pruning",
                                             "hwprune FLOPs bound (l1)"]
    taylor = table[1]
    assert taylor["accuracy_mean"] == pytest.approx(0.975) and taylor["all_meet"]
    # the FLOPs bound is a baseline, never "the best criterion"
    assert len(summary) == 1 and "best hwprune criterion taylor 97.50 +- 0.71 %" in summary[0]
    assert "at least as accurate" in summary[0] and "higher measured latency" in summary[0]
    worse = [dict(r, accuracy=r["accuracy"] - 0.05) if r["method"].startswith("hwprune ") else r for r in rows]
    worse[1]["meets"] = False  # a taylor network over the budget
    _, summary = bench.aggregate([], worse, [0.5])
    assert "LESS accurate" in summary[0] and "NOT within the budget" in summary[0]
