"""The budget benchmark's report (nothing measured)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_budget as bench


def row(model, ratio, note=""):
    return {"model": model, "budget_frac": 0.6, "budget_ms": 1.0, "baseline_ms": 2.0, "baseline_min_ms": 1.9,
            "baseline_max_ms": 2.1, "error": None, "predicted_ms": 0.9, "engine_measured_ms": ratio,
            "remeasured_ms": ratio, "remeasured_min_ms": ratio, "remeasured_max_ms": ratio, "ratio": ratio,
            "ratio_abs": ratio, "in_band": bench.BAND[0] <= ratio <= bench.BAND[1], "unchanged": False,
            "rounds": [{"measured_ms": ratio}], "n_rounds": 1, "profile_s": 1.0, "prune_wall_s": 2.0,
            "shapes_measured": 3, "shapes_reused": 0, "params_before": 10, "params_after": 5, "flops_before": 10,
            "flops_after": 5, "note": note}


def test_the_report_gives_the_engines_note_on_rows_out_of_the_band():
    header = {"date": "d", "cpu": "c", "cores": 2, "machine": "m", "python": "3", "versions": {}, "device": "dev",
              "store_rows_at_start": 0}
    rows = [row("a", 0.95, note="kept quiet"), row("b", 0.86, note="the plan uses 86 % of the budget: next 115 %")]
    md = bench.render_md(header, rows, "1/2 in band", 10.0, "store")
    assert "- b at 0.60: the plan uses 86 % of the budget: next 115 %" in md
    assert "kept quiet" not in md  # rows in the band keep their notes to the JSON
    assert "notes on the rows out of the band" not in bench.render_md(header, rows[:1], "1/1", 1.0, "store")


def test_the_co_running_load_ends_when_its_benchmark_is_killed():
    """A benchmark killed without its exit handler (SIGKILL) must not leave its
    memory-streaming load running on the host."""
    import os
    import signal
    import subprocess
    import time
    code = (f"import sys; sys.path.insert(0, {str(Path(bench.__file__).parent)!r}); import bench_common as c\n"
            "with c.CoRunningLoad(True, 60) as load:\n"
            "    print(load.proc.pid, flush=True)\n"
            "    import time; time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        try:  # reap it if it became ours
            os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the streamer outlived its benchmark")


def test_the_report_marks_the_rounds_that_widened_a_plan():
    header = {"date": "d", "cpu": "c", "cores": 2, "machine": "m", "python": "3", "versions": {}, "device": "dev",
              "store_rows_at_start": 0}
    r = row("a", 0.95)
    r["rounds"] = [{"measured_ms": 0.85, "status": "heuristic"}, {"measured_ms": 0.95, "status": "widened"}]
    md = bench.render_md(header, [r], "1/1 in band", 1.0, "store")
    assert "| 0.850, 0.950* |" in md
