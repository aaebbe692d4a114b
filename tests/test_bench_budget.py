"""The budget benchmark's report (nothing measured)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_budget as bench
import budget_cliff as cliff


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


def test_the_report_shows_the_engines_own_reading_and_counts_rows_the_re_measurement_moved():
    """A row the engine read in the band (0.95) and the re-measurement under it
    (0.85) is counted as moved on re-measurement; one the engine read under
    the band too (0.86, 0.86) is not; the table shows both readings."""
    moved, under = {**row("a", 0.85), "engine_ratio": 0.95}, {**row("b", 0.86), "engine_ratio": 0.86}
    summary = bench.summarise_band([row("c", 0.95), moved, under])
    assert summary == "1/3 in [0.90, 1.03]; 1 out of it only on re-measurement (the engine had read them in the band)"
    assert bench.summarise_band([row("c", 0.95), under]) == "1/2 in [0.90, 1.03]"
    header = {"date": "d", "cpu": "c", "cores": 2, "machine": "m", "python": "3", "versions": {}, "device": "dev",
              "store_rows_at_start": 0}
    md = bench.render_md(header, [moved], summary, 1.0, "store")
    head = next(line for line in md.splitlines() if line.startswith("| model"))
    cells = [c.strip() for c in head.split("|")]
    line = next(line for line in md.splitlines() if line.startswith("| a "))
    values = [c.strip() for c in line.split("|")]
    assert values[cells.index("engine ratio")] == "0.950" and values[cells.index("ratio")] == "0.850"


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
    r["rounds"] = [{"measured_ms": 0.85, "status": "heuristic"}, {"measured_ms": 0.95, "status": "widened"},
                   {"measured_ms": 0.96, "status": "re-measured"}, {"measured_ms": 0.97, "status": "between"}]
    r["readings"] = [[0.53, 0.56], [0.56, 0.58]]
    md = bench.render_md(header, [r], "1/1 in band", 1.0, "store")
    assert "| 0.850, 0.950*, 0.960+, 0.970~ |" in md
    assert "| 0.950 (2) |" in md  # the ratio rests on two pooled readings


def test_a_verdict_near_a_band_edge_rests_on_two_pooled_readings():
    from types import SimpleNamespace

    import bench_common as common

    def est(ratio, half):
        return SimpleNamespace(ratio=ratio, ratio_lo=ratio / (1 + half), ratio_hi=ratio * (1 + half), sure=True,
                               rounds=4, seconds=20.0)
    frac = 0.6
    assert common.near_edge(est(0.6 * 0.91, 0.02), frac, bench.BAND)      # 0.892-0.928 contains 0.90
    assert common.near_edge(est(0.6 * 1.02, 0.02), frac, bench.BAND)      # ... contains 1.03
    assert not common.near_edge(est(0.6 * 0.96, 0.02), frac, bench.BAND)  # well inside
    assert not common.near_edge(est(0.6 * 0.80, 0.05), frac, bench.BAND)  # well under
    both = common.pooled([est(0.53, 0.03), est(0.55, 0.03)])
    assert 0.53 < both.ratio < 0.55 and both.half_width_rel < 0.03 and both.rounds == 8


def test_wider_networks_widen_one_group_one_option_each():
    """Each plan one grid step wider than the answer differs from it in one
    group, by that group's next option on the grid the engine used."""
    import torch

    from hwprune import zoo
    from hwprune.graph.space import PruningSpace, group_options
    from hwprune.graph.subnets import first_channels
    model, x = zoo.create("invresnet")
    space = PruningSpace(model, x)
    grid = {"step_channels": 16, "min_channels": 8, "align_channels": 4}
    opts = {g.gid: group_options(g, 16, 8, 4) for g in space.groups}
    choice = {gid: o[1] for gid, o in opts.items()}  # every group at its second option
    plan = {"groups": [{"gid": gid, "kept": kept} for gid, kept in first_channels(space, choice).items()]}
    nets = cliff.wider_networks(model, x, plan, grid)
    assert len(nets) == len(space.groups)
    for (label, net), g in zip(nets, space.groups):
        widths = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
        root = dict(space.model.named_modules())[g.root]
        assert widths[g.root] == sum(opts[g.gid][2]) < root.out_channels, (label, widths)
        others = [h for h in space.groups if h.gid != g.gid and h.root != g.root]
        assert all(widths.get(h.root, sum(choice[h.gid])) == sum(choice[h.gid]) for h in others), label
        assert net(x).shape == (1, 10)


def test_a_row_is_at_a_cliff_only_when_every_wider_plan_is_over_the_budget():
    from profilers.blocks import RatioEstimate
    r = row("a", 0.8)

    def ratios(*used):  # each wider plan's ratio / budget fraction (0.6), as the meter would report it
        it = iter(used)

        def measure(net):
            v = 0.6 * next(it)
            return RatioEstimate(v, 0.98 * v, 1.02 * v, 3, 1.0, v, 0.01, True, 1.0)
        return measure
    cliff.check_cliff(r, [("g0", None), ("g1", None)], ratios(1.08, 1.12), lambda m: None)
    assert r["cliff"] and [round(w["ratio"], 3) for w in r["wider"]] == [1.08, 1.12]
    s = row("b", 0.8)
    cliff.check_cliff(s, [("g0", None), ("g1", None), ("g2", None)], ratios(1.08, 0.97, 1.2), lambda m: None)
    assert not s["cliff"]  # a plan keeping more meets the budget: the engine missed it
    assert [w["plan"] for w in s["wider"]] == ["g0", "g1"]  # ... and the rest are not measured
    t = row("c", 0.8)
    cliff.check_cliff(t, [], ratios(), lambda m: None)
    assert not t["cliff"]  # nothing wider (every group at full width): not a cliff
    summary = bench.summarise_band([row("d", 0.95), r, s, t])
    assert summary.startswith("1/4 in [0.90, 1.03]; of the 3 under it, 1 at a latency cliff")
    header = {"date": "d", "cpu": "c", "cores": 2, "machine": "m", "python": "3", "versions": {}, "device": "dev",
              "store_rows_at_start": 0}
    md = bench.render_md(header, [r, s], summary, 1.0, "store")
    assert "- a at 0.60 (latency cliff: every one over the budget): g0: 1.080 (1.058-1.102); g1: 1.120" in md
    assert "- b at 0.60: g0: 1.080" in md
