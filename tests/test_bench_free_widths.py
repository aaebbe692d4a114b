"""The free-width benchmark records what its latency model was calibrated on,
so a changed latency model can be scored again on the same measurements."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import free_widths as fw


def test_a_free_width_run_is_rescored_from_its_records_without_measuring(sim_devices, store):
    sim_devices.add("sim-fw", bound="flops", step=16, bias=1.2)
    run = fw.run_model("groupednet", "sim-fw", 3, 0, store, lambda msg: None)
    # the full network first, then the random and the engine's calibration networks
    assert len(run["calibration"]) == 1 + fw.CALIBRATION + 3 + 2  # 3 uniform, 2 split
    rows_before = store.count()
    again = fw.rescore_model(run, store)
    assert store.count() == rows_before  # every layer shape came from the store
    for a, b in zip(run["rows"], again["rows"]):
        assert abs(a["predicted_ratio"] - b["predicted_ratio"]) < 1e-9
        assert abs(b["error"] - (b["predicted_ratio"] / b["measured_ratio"] - 1)) < 1e-12
    # the remainder is fitted on the recorded networks: a full network recorded slower moves the ratios
    slower = {**run, "calibration": [{**run["calibration"][0], "measured_ms": 3 * run["calibration"][0]["measured_ms"]},
                                     *run["calibration"][1:]]}
    moved = fw.rescore_model(slower, store)
    assert max(abs(m["predicted_ratio"] - r["predicted_ratio"]) for m, r in zip(moved["rows"], run["rows"])) > 0.01
