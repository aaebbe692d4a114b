"""The block benchmark's tables and verdicts (no training, no latency measured)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_blocks as bench


def _acc_row(gran, frac, acc, ratio, seed, removed=(), used=None):
    return {"seed": seed, "fraction": frac, "granularity": gran, "used_fraction": used or frac, "budget_note": "",
            "ratio": ratio, "in_band": 0.90 <= ratio / (used or frac) <= 1.03, "accuracy": acc, "params": 1000,
            "flops": 2000, "blocks": 0 if gran == "channel" else 27, "removed_blocks": list(removed)}


def test_verdict_names_the_winner_and_says_when_the_seeds_cannot_tell():
    rows = []
    for seed, (c, b) in enumerate([(0.90, 0.95), (0.91, 0.96), (0.92, 0.97)]):
        rows += [_acc_row("channel", 0.5, c, 0.48, seed), _acc_row("both", 0.5, b, 0.47, seed, ["a", "b"]),
                 _acc_row("channel", 0.7, c, 0.68, seed), _acc_row("both", 0.7, c + (0.01 if seed else -0.01),
                                                                   0.69, seed, ["a"])]
    table, summary = bench.accuracy_table(rows, [0.5, 0.7])
    assert [(t["fraction"], t["granularity"]) for t in table] == [(0.5, "channel"), (0.5, "both"),
                                                                  (0.7, "channel"), (0.7, "both")]
    assert table[1]["accuracy_mean"] == pytest.approx(0.96) and table[1]["removed"] == [2, 2, 2]
    assert summary[0].startswith("50 %: channel-only 91.00 +- 1.00 % at 0.480 x, both 96.00 +- 1.00 %")
    assert summary[0].endswith("both wins on every seed: both ahead of channel-only by 5.00 +- 0.00 points "
                               "paired by seed (both higher on 3 of 3 seeds, lower on 0)")
    assert "no clear winner: both ahead of channel-only by 0.33 +- 1.15 points" in summary[1]
    assert "(both higher on 2 of 3 seeds, lower on 1)" in summary[1]
    worse = [dict(r, accuracy=r["accuracy"] - 0.1) if r["granularity"] == "both" else r for r in rows]
    assert "channel-only wins on every seed: channel-only ahead of both by 5.00" in bench.accuracy_table(
        worse, [0.5])[1][0]


def test_a_fallback_and_a_failed_run_are_said():
    rows = [_acc_row("channel", 0.5, 0.9, 0.76, 0, used=0.78), _acc_row("both", 0.5, 0.9, 0.75, 0, used=0.78),
            {"seed": 1, "fraction": 0.5, "granularity": "both", "error": "boom"}]
    table, summary = bench.accuracy_table(rows, [0.5])
    assert summary[0].startswith("50 % (held to 78 %): ") and summary[0].endswith("a tie")
    assert table[1]["n"] == 1 and table[1]["runs"] == 2
    md = bench.render_md({"accuracy": {
        "header": {"date": "d", "cpu": "c", "cores": 2, "machine": "m", "python": "3", "versions": {},
                   "commit": "abc"}, "model": "resnet56", "total_s": 5.0,
        "config": {"device": "ort-cpu-1t", "seeds": [0, 1], "epochs": 4, "finetune_epochs": 2, "finetune_lr": 0.01},
        "originals": [{"accuracy": 0.95, "params": 1e6, "flops": 2e6}], "table": table, "summary": summary}})
    assert "| 50 % -> 78 % | both | 0.750 (0.750-0.750) | yes | 90.00 +- 0.00 |" in md
    assert "original trained 4 epochs" in md and "fine-tuned 2 epochs" in md and "## Reach" not in md


def _reach(device, frac, channel, both):
    base = {"budget_frac": frac, "error": None, "params_before": 8.5e5, "params_after": 4e5, "flops_before": 2.5e8,
            "flops_after": 1e8, "prune_wall_s": 30.0, "blocks": 27}
    return {"device": device, "fraction": frac, "channel": channel, "both": {**base, **both}, "measured_at": "18:00"}


def test_reach_table_sets_channel_only_fastest_beside_the_remeasured_ratio():
    refused = {"reached": False, "error": "below the fastest", "fastest_frac": 0.55, "prune_wall_s": 12.0}
    rows = [_reach("ort-cpu-1t", 0.3, refused, {"remeasured_rel": 0.28, "remeasured_ratio_interval": [0.27, 0.29],
                                                "ratio": 0.933, "in_band": True, "engine_rel": 0.285,
                                                "removed_blocks": ["layer1.3"] * 14}),
            _reach("torch-cpu-1t", 0.5, {"reached": True, "engine_rel": 0.49, "prune_wall_s": 9.0},
                   {"remeasured_rel": 0.53, "remeasured_ratio_interval": [0.52, 0.54], "ratio": 1.06,
                    "in_band": False, "engine_rel": 0.49, "removed_blocks": []}),
            _reach("ort-cpu-1t", 0.25, refused, {"error": "no network"})]
    text = "\n".join(bench.reach_lines(rows))
    assert ("| ort-cpu-1t | 30 % | refused: fastest 0.550 x | 0.280 (0.270-0.290) | 0.933 | yes | 0.285 | 14 of 27 "
            "| 0.85M->0.40M | 250.00M->100.00M | 12, 30 | 18:00 |") in text
    assert "| torch-cpu-1t | 50 % | reached (0.490 x) |" in text and "| 1.060 | **NO** |" in text
    assert "| ort-cpu-1t | 25 % | refused: fastest 0.550 x | error: no network |" in text
    assert text.endswith("**channel-only refused 2 of 3 budgets (below its fastest network); with blocks 1 of 3 "
                         "re-measured in [0.90, 1.03] of the budget**")


def test_bad_options_exit_2():
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--reach", "ort-cpu-1t"])
    assert exc.value.code == 2
    assert bench.parse_args(["--reach", "ort-cpu-1t:0.3"]).reach_pairs == [("ort-cpu-1t", 0.3)]
