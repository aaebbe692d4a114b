"""The runtimes benchmark's arguments, reruns and report (nothing measured)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_runtimes as bench


@pytest.mark.parametrize("argv, needle", [
    (["--devices", "no-such-device"], "unknown device 'no-such-device'"),
    (["--budgets", "0.5", "1.2"], "budget fractions must lie in (0, 1)"),
    (["--models", "nonet"], "unknown model 'nonet'"),
    (["--validate-model", "nonet"], "unknown model 'nonet'"),
    (["--models", "torchvision:resnet18@big"], "is not a whole number"),
    (["--samples", "0"], "--samples must be >= 1"),
])
def test_bad_input_is_one_error_line_and_exit_2(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and needle in err and err.count("\n") == 1


def test_defaults_are_the_1_thread_devices_and_a_torchvision_model():
    args = bench.parse_args([])
    assert args.devices == ["executorch-xnnpack-1t", "openvino-cpu-1t"] and args.samples == 30
    assert ("torchvision:resnet18", 128) in args.specs and args.validate_spec == ("resnet20", None)
    assert args.budgets == [0.5, 0.7] and args.relative and args.granularity == "channel"


def row(frac=0.5, model="resnet20@32", device="openvino-cpu-1t", ratio=0.96, **kw):
    return {"device": device, "model": model, "budget_frac": frac, "baseline_ms": 1.0, "error": None,
            "engine_rel": 0.97 * frac, "ratio": ratio, "remeasured_ratio_interval": [0.94 * frac, 0.98 * frac],
            "in_band": 0.90 <= ratio <= 1.03, "params_before": 200, "params_after": 50, "flops_before": 1000,
            "flops_after": 400, "prune_wall_s": 12.0, **kw}


def test_a_row_measured_again_is_kept_beside_the_first_as_a_rerun():
    rows = []
    bench.add_row(rows, row(ratio=1.05))
    bench.add_row(rows, row(frac=0.7))
    bench.add_row(rows, row(device="executorch-xnnpack-1t"))
    again = bench.add_row(rows, row(ratio=0.97))
    assert [r["attempt"] for r in rows] == [1, 1, 1, 2] and again is rows[-1]
    # a fallback row is matched by the fraction asked for, not the one used
    bench.add_row(rows, row(frac=0.8, requested_frac=0.5))
    assert rows[-1]["attempt"] == 3


def test_report_gives_grid_ratios_shares_kept_and_validation():
    score = {"rmspe_pct": 4.2, "max_error_pct": 9.0, "mean_error_pct": -1.0, "within_5_pct": 80.0,
             "within_10_pct": 96.7}
    validation = {"model": "resnet20@32", "samples": 30, "reference_ms": 0.5, "whole_model_measurements": 20,
                  "layer_measurements": 100, "unsure": 1, "elapsed_s": 300.0, "warnings": ["drifted"],
                  "scores": {"step-quadratic": score, "lookup": {**score, "rmspe_pct": 3.0}}}
    first = row(ratio=1.05, attempt=1)
    data = {"header": {"date": "2026-12-01T18:00:00+00:00", "cpu": "AMD EPYC (avx512f)", "cores": 2,
                       "machine": "x86_64", "python": "3.11", "versions": {}},
            "sittings": [{"date": "2026-12-01T18:00", "part": "all", "devices": ["openvino-cpu-1t"], "seconds": 600}],
            "devices": {"openvino-cpu-1t": {
                "descriptor_step": 16, "prune_s": 480.0, "validation": validation,
                "grid": {"step_channels": 16, "source": "measured", "detail": "measured on this host now: step 16, "
                         "alignment 4", "reliable": True, "measured_s": 4.2},
                "rows": [first, row(ratio=0.97, attempt=2),
                         {"device": "openvino-cpu-1t", "model": "x@32", "budget_frac": 0.7, "error": "too small",
                          "prune_wall_s": 3.0}]}}}
    md = bench.render_md(data)
    assert "## openvino-cpu-1t" in md and "**16 channels**" in md and "took 4.2 s" in md
    assert "starting point was 16" in md
    assert "| resnet20@32 | 0.50 | 1.000 | 0.970 | 1.050 (0.940-0.980) | **NO** | 25 % | 40 % | 12 |" in md
    assert "| resnet20@32 | 0.50 (rerun 1) |" in md and "error: too small" in md
    assert "80 % within +-5 %, 97 % within +-10 %, RMSPE 4.2 %" in md and "best of all models: lookup" in md
    assert "warning: drifted" in md and "**1/3 rows in [0.90, 1.03]**" in md
