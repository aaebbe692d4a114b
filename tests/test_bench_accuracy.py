"""The accuracy benchmark's baselines and verdicts (no training, no latency measured)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_accuracy as bench

from hwprune import devices, zoo


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
    assert "LESS accurate" in summary[0] and "hwprune over the budget on some seed" in summary[0]


def test_refused_budgets_are_reported_and_never_the_best():
    rows = [{"seed": s, "fraction": 0.3, "method": m, "error": "budget 0.36 ms is below the smallest network"}
            for s in (0, 1) for m in ("hwprune l1", "hwprune taylor")]
    rows[0] = _row("hwprune l1", 0.3, 0.5, 0.31, meets=False)  # one seed got through
    rows += [dict(_row("Torch-Pruning", 0.3, 0.96, 0.42, meets=False, seed=s), met_in_sweep=False) for s in (0, 1)]
    table, summary = bench.aggregate([], rows, [0.3])
    l1 = table[0]
    assert l1["n"] == 1 and l1["refused"] == 1 and table[1]["n"] == 0 and table[1]["refused"] == 2
    assert summary[0].startswith("30 % of the latency: hwprune refused the budget in 3 of 4 runs")
    assert "its fastest ratio, which does not meet the budget" in summary[0]
    md = bench.render_md({"date": "d", "cpu": "c", "cores": 2, "machine": "m", "python": "3", "versions": {},
                          "commit": "abc", "total_s": 1.0},
                         type("A", (), {"device": "d", "seeds": [0, 1], "train_epochs": 1, "finetune_epochs": 1,
                                        "finetune_lr": 0.01, "selector": "greedy"})(),
                         [{"ms": 1.0, "accuracy": 0.99, "params": 10, "flops": 20}], table, summary)
    assert "| 30 % | hwprune taylor | - | - | - | - | - | refused: below the smallest network | 0/2 |" in md
    assert "| 30 % | Torch-Pruning |" in md and "**no** (fastest ratio) | 2/2 |" in md
