"""hwprune compare: device sides, the cross matrix, predicted-only devices,
the profile reader, JSON and report files, bad input.

Fast tests use two simulated runtimes with deterministic latencies (one
FLOP-bound, one bound by activation traffic, each flat within blocks of
channels), so the whole pipeline (profiling, closed loop, interleaved
cross matrix) runs in seconds and its numbers can be checked exactly. The
real CPU runtimes are tested in test_compare_runtimes.py.
"""
import json
from dataclasses import replace
from pathlib import Path

import archs
import pytest
from simruntime import SimRuntime

from hwprune import UserError, zoo
from hwprune.cli.main import main
from hwprune.compare.run import run_compare
from hwprune.latency.offline import offline_model, read_profile

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- simulated runtimes

def _profile_lines(device: str, rt: SimRuntime, specs, networks=(), extra=()) -> str:
    rows = [json.dumps({"spec": json.loads(s.key()), "median_ms": rt.spec_ms(s), "iqr_ms": 0.0, "runs": 30,
                        "ci_rel": 0.0, "stable": True}) for s in dict.fromkeys(specs)]
    header = {"format": "hwprune-profile", "version": 1, "device": device, "fingerprint": {"device": device},
              "step_channels": 8, "date": "2026-01-01T00:00:00+00:00", "count": len(rows)}
    nets = [json.dumps({"type": "network", "model": name, "median_ms": ms,
                        "specs": [json.loads(s.key()) for s in sp]}) for name, sp, ms in networks]
    return "\n".join([json.dumps(header)] + rows + nets + list(extra)) + "\n"


@pytest.fixture
def sim(sim_devices):
    """A devices folder with sim-flops and sim-memory (run here) and sim-far
    (its runtime cannot run here; a profile of it is on disk)."""
    sim_devices.add("sim-flops", bound="flops")
    sim_devices.add("sim-memory", bound="memory", step=16)
    sim_devices.add("sim-far", runtime="absent")
    return sim_devices.folder


def _far_profile(folder: Path, model, x, networks: bool = True, also=()) -> Path:
    """A profile of sim-far (memory-bound) covering the layer shapes of
    ``model`` (and of the ``also`` models, (model, input) pairs)."""
    from hwprune.graph.space import PruningSpace, group_options
    from hwprune.latency.profiling import sample_specs
    rt = SimRuntime("memory", 16)
    specs = []
    for m, inp in [(model, x), *also]:
        space = PruningSpace(m, (inp,))
        options = {g.gid: group_options(g, 8, 8) for g in space.groups}
        specs += sample_specs(space, options) + space.specs(space.full_choice())
    space = PruningSpace(model, (x,))
    nets = [("full", space.specs(space.full_choice()), rt.module_ms(model, (x,)))] if networks else []
    path = folder / "profiles" / "sim-far.jsonl"
    path.write_text(_profile_lines("sim-far", rt, specs, nets, ['{"type": "power", "watts": 300}', '[1, 2]']))
    return path


# ---------------------------------------------------------------- the profile reader

def test_profile_reader_ignores_unknown_lines_and_fits_the_remainder(tmp_path):
    model, x = archs.create("concat")
    (tmp_path / "profiles").mkdir()
    path = _far_profile(tmp_path, model, x)
    prof = read_profile(path)
    assert prof.device == "sim-far" and len(prof.networks) == 1
    assert prof.ignored == {"power": 1, "unknown": 1}
    from hwprune.graph.space import PruningSpace
    space = PruningSpace(model, (x,))
    full = space.specs(space.full_choice())
    off = offline_model(prof, full)
    assert "fitted to 1 whole-network" in off.note and "of this architecture" in off.note
    assert off.model.predict(full) == pytest.approx(SimRuntime("memory", 16).module_ms(model, (x,)), rel=1e-3)
    without = offline_model(replace(prof, networks=()), full)
    assert "not fitted" in without.note
    assert without.model.predict(full) == pytest.approx(without.model.layers_ms(full))


def test_remainder_prefers_networks_of_the_same_architecture(tmp_path):
    """Two measured widths of this architecture fit its remainder; another
    network's measurement (with another overhead) is left out."""
    from hwprune.graph.space import PruningSpace
    from hwprune.graph.subnets import build
    (tmp_path / "profiles").mkdir()
    model, x = archs.create("concat")
    other, ox = archs.create("invres")
    path = _far_profile(tmp_path, model, x, networks=False, also=[(other, ox)])
    space, ospace = PruningSpace(model, (x,)), PruningSpace(other, (ox,))
    half = {g.gid: tuple(max(1, k // 2) for k in ks) for g, ks in zip(space.groups, space.full_choice().values())}
    rt = SimRuntime("memory", 16)
    nets = [("full", space.specs(space.full_choice()), rt.module_ms(model, (x,)) + 0.5),
            ("half", space.specs(half), rt.module_ms(build(space, half), (x,)) + 0.5),
            ("other", ospace.specs(ospace.full_choice()), 5.0)]
    lines = path.read_text().splitlines()
    extra = _profile_lines("sim-far", rt, [], nets).splitlines()[1:]
    path.write_text("\n".join(lines + extra) + "\n")
    prof = read_profile(path)
    assert len(prof.networks) == 3 and not offline_model(prof, ospace.specs(ospace.full_choice())).model.missing(
        nets[2][1])  # the other network is usable, but not chosen
    off = offline_model(prof, space.specs(space.full_choice()))
    assert "fitted to 2 whole-network measurements in the profile of this architecture (full, half)" in off.note
    assert off.model.predict(space.specs(half)) == pytest.approx(nets[1][2], rel=0.02)


@pytest.mark.parametrize("damage,needle", [
    (lambda lines: lines[:-5] + lines[-3:], "truncated"),
    (lambda lines: lines + ['{"type": "network", "specs": [], "median_ms": 1.0}'], "non-empty list"),
    (lambda lines: lines + ['{"type": "layer", "median_ms": 1.0}'], "spec"),
    (lambda lines: lines + ["{not json"], "not JSON"),
])
def test_profile_reader_rejects_damaged_files(tmp_path, damage, needle):
    (tmp_path / "profiles").mkdir()
    model, x = archs.create("concat")
    path = _far_profile(tmp_path, model, x, networks=False)
    path.write_text("\n".join(damage(path.read_text().splitlines()[:-2])) + "\n")
    with pytest.raises(UserError, match=needle):
        read_profile(path)


def test_profile_missing_the_models_layers_is_a_user_error(tmp_path):
    (tmp_path / "profiles").mkdir()
    path = _far_profile(tmp_path, *archs.create("concat"))
    model, x = zoo.create("resnet20")
    from hwprune.graph.space import PruningSpace
    space = PruningSpace(model, (x,))
    with pytest.raises(UserError, match="no measurements for .* layer families"):
        offline_model(read_profile(path), space.specs(space.full_choice()))


# ---------------------------------------------------------------- the comparison

@pytest.fixture
def compared(sim, tmp_path):
    from profilers import MeasurementStore
    model, x = zoo.create("resnet20")
    _far_profile(sim, model, x)
    res = run_compare(model, x, ["sim-flops", "sim-memory", "sim-far"], budget_frac=0.7, model_name="resnet20",
                      store=MeasurementStore(tmp_path / "s.sqlite"), curve_layers=2, pareto_points=4, repeats=3)
    return res, model, x


def test_cross_matrix_measures_each_plan_alone_alternating_with_the_original(sim, tmp_path, monkeypatch):
    """As a user measures: every plan in blocks of its own (a fresh session each),
    alternating with blocks of the original, never run by run with another model."""
    from profilers import MeasurementStore
    model, x = zoo.create("resnet20")
    monkeypatch.setattr(SimRuntime, "sessions", [])
    monkeypatch.setattr(SimRuntime, "blocks", [])
    res = run_compare(model, x, ["sim-flops", "sim-memory"], budget_frac=0.7, store=MeasurementStore(
        tmp_path / "s.sqlite"), curve_layers=0, pareto_points=2, repeats=2)
    plans = [res.models[d] for d in ("sim-flops", "sim-memory")]
    assert not SimRuntime.sessions  # nothing is interleaved run by run
    blocks = SimRuntime.blocks
    at = [k for k, m in enumerate(blocks) if any(m is p for p in plans)]
    # 2 columns x 2 repeats x 2 plans, each at least the minimum of 3 rounds
    assert len(at) >= 2 * 2 * 2 * 3
    assert all(blocks[k - 1] is model or blocks[k + 1] is model for k in at)


def test_cross_matrix_shape_labels_and_values(compared):
    res, model, x = compared
    d, cr = res.data, res.data["cross"]
    names = ["sim-flops", "sim-memory", "sim-far"]
    assert cr["rows"] == names and cr["cols"] == names
    assert [[c["source"] for c in row] for row in cr["cells"]] == [["measured", "measured", "predicted"]] * 3
    assert {s["name"]: s["mode"] for s in d["devices"]} == {"sim-flops": "measured", "sim-memory": "measured",
                                                            "sim-far": "predicted"}
    for i in range(3):
        assert cr["cells"][i][i]["vs_own"] == pytest.approx(1.0)
    # measured cells are each plan's own latency on that device (rows not mixed up by the rotated order)
    for j, name in enumerate(names[:2]):
        rt = SimRuntime(*(("flops", 8) if name == "sim-flops" else ("memory", 16)))
        base = rt.module_ms(model, (x,))
        for i, row in enumerate(names):
            assert cr["cells"][i][j]["ms"] == pytest.approx(rt.module_ms(res.models[row], (x,)), rel=1e-9)
            assert cr["cells"][i][j]["ratio_to_original"] == pytest.approx(cr["cells"][i][j]["ms"] / base)
    # each device's own plan meets its budget there; the devices disagree on what to keep
    for p in d["plans"][:2]:
        assert p["measured_ms"] <= p["budget_ms"] * 1.0001
    assert len({tuple(g["widths"][n] for g in d["groups"]) for n in names}) >= 2


def test_predicted_device_is_labelled_everywhere(compared):
    d = compared[0].data
    far = next(s for s in d["devices"] if s["name"] == "sim-far")
    assert "cannot run here" in far["reason"] and far["profile"].endswith("sim-far.jsonl")
    assert "fitted to 1 whole-network" in far["remainder"]
    plan = next(p for p in d["plans"] if p["device"] == "sim-far")
    assert plan["measured_ms"] is None and "predicted only" in plan["how"]
    assert all(c["devices"]["sim-far"]["source"] == "predicted" for c in d["curves"])
    assert any("is predicted at" in f and f.startswith("On sim-far, the network pruned for sim-flops")
               for f in d["findings"])
    assert all("measures" in f for f in d["findings"] if not f.startswith("On sim-far"))


def test_layers_curves_and_pareto(compared):
    d = compared[0].data
    flops = next(s for s in d["devices"] if s["name"] == "sim-flops")
    shares = [r["devices"]["sim-flops"]["share"] for r in d["layers"]]
    assert sum(shares) + flops["other_ms"] / flops["baseline_ms"] == pytest.approx(1.0)
    assert flops["other_ms"] == pytest.approx(0.01, abs=1e-6)  # the simulated per-network overhead
    assert len(d["curves"]) == 2
    from profilers.steps import candidate_steps
    for c in d["curves"]:  # each layer's own step: the runtime's block, where the sweep can tell
        cands = candidate_steps(c["widths"], c["widths"][0])
        for name, block in (("sim-flops", 8), ("sim-memory", 16)):
            assert c["devices"][name]["step"] == max(s for s in cands if s <= block), (c["shape"], name)
    for name, pts in d["pareto"].items():
        pts = sorted(pts, key=lambda p: p["predicted_ms"])
        assert pts[-1]["importance"] == pytest.approx(1.0) and pts[0]["importance"] < 1.0


def test_cli_writes_the_report_and_json(sim, tmp_path, capsys):
    model, x = zoo.create("resnet20")
    _far_profile(sim, model, x)
    out = tmp_path / "cmp"
    code = main(["compare", "--model", "resnet20", "--devices", "sim-flops", "sim-far", "--budget", "40%",
                 "--out", str(out), "--store", str(tmp_path / "s.sqlite"), "--curve-layers", "1",
                 "--pareto-points", "3", "--repeats", "1", "--json"])
    stdout = capsys.readouterr().out
    assert code == 0
    data = json.loads(stdout)
    assert data["budget_frac"] == pytest.approx(0.4) and data["cross"]["cols"] == ["sim-flops", "sim-far"]
    saved = json.loads((out / "compare.json").read_text())
    assert saved["cross"] == data["cross"] and saved["plans"] == data["plans"]
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 5 and "src='http" not in page
    md = (out / "report.md").read_text()
    assert "sim-far" in md and "predicted" in md and "(cross.png)" in md
    assert all((out / f).stat().st_size > 1000 for f in ("cross.png", "curves.png", "pareto.png"))


def test_prune_with_qcqp_prints_the_solve_status_and_time(sim, tmp_path, capsys):
    out = tmp_path / "p"
    code = main(["prune", "--model", "resnet20", "--device", "sim-flops", "--budget-ms", "50%", "--selector",
                 "qcqp", "--out", str(out), "--store", str(tmp_path / "s.sqlite"), "--json"])
    data = json.loads(capsys.readouterr().out)
    solve = data["solve"]
    assert code == 0 and solve["status"] in ("optimal", "gap") and solve["mip_gap"] <= 1e-3
    assert solve["solve_s"] > 0 and 0 < solve["objective"] <= 1 and data["measured_ms"] <= 1.0001 * data["budget_ms"]
    assert json.loads((out / "result.json").read_text())["solve"] == solve


def _one_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("devices,extra,needle", [
    (["sim-flops"], [], "at least two devices"),
    (["sim-flops", "sim-flops"], [], "named twice"),
    (["sim-flops", "nope"], [], "unknown device 'nope'"),
    (["sim-flops", "sim-memory"], ["--budget", "150%"], "strictly between"),
    (["sim-flops", "sim-memory"], ["--budget", "half"], "not a fraction"),
    (["sim-flops", "sim-memory"], ["--predicted", "sim-far"], "not one of --devices"),
    (["sim-flops", "sim-far"], [], "hwprune profile --device sim-far"),
    (["sim-flops", "sim-memory"], ["--predicted", "sim-memory"], "no profile of sim-memory"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(sim, tmp_path, capsys, devices, extra, needle):
    out = tmp_path / "cmp"
    line = _one_error(capsys, ["compare", "--model", "resnet20", "--devices", *devices, "--out", str(out),
                               "--store", str(tmp_path / "s.sqlite"), *extra])
    assert needle in line
    assert not out.exists() and not list(tmp_path.glob(".cmp*"))


def test_profile_of_another_model_and_output_file_are_errors(sim, tmp_path, capsys):
    _far_profile(sim, *archs.create("concat"))
    args = ["compare", "--model", "resnet20", "--devices", "sim-flops", "sim-far", "--store",
            str(tmp_path / "s.sqlite")]
    assert "layer families" in _one_error(capsys, args + ["--out", str(tmp_path / "o")])
    (tmp_path / "file").write_text("x")
    assert "not a folder" in _one_error(capsys, args + ["--out", str(tmp_path / "file")])
    assert (tmp_path / "file").read_text() == "x"


def test_budget_below_the_smallest_network_is_raised_and_said(sim, tmp_path):
    from profilers import MeasurementStore
    model, x = zoo.create("resnet20")
    res = run_compare(model, x, ["sim-flops", "sim-memory"], budget_frac=0.3, store=MeasurementStore(
        tmp_path / "s.sqlite"), curve_layers=0, pareto_points=2, repeats=1)
    plans = {p["device"]: p for p in res.data["plans"]}
    assert plans["sim-flops"]["note"] == "" and plans["sim-flops"]["budget_ms"] == pytest.approx(
        0.3 * plans["sim-flops"]["baseline_ms"])
    mem = plans["sim-memory"]
    assert "below the smallest network" in mem["note"] and mem["budget_ms"] > 0.3 * mem["baseline_ms"]
    assert mem["measured_ms"] <= mem["budget_ms"] * 1.0001


def test_findings_do_not_rank_plans_the_repeats_cannot_tell_apart():
    from hwprune.compare.run import findings
    cell = lambda ms, vs, lo, hi: {"source": "measured", "ms": ms, "ratio_to_original": ms / 4.0, "vs_own": vs,
                                   "vs_own_lo": lo, "vs_own_hi": hi}
    data = {"budget_frac": 0.5, "cross": {"rows": ["a", "b"], "cols": ["a", "b"], "cells": [
        [cell(2.0, 1.0, 1.0, 1.0), cell(2.2, 0.99, 0.97, 1.03)],
        [cell(1.7, 0.85, 0.84, 0.86), cell(2.22, 1.0, 1.0, 1.0)]]},
        "plans": [{"device": "a", "note": "", "importance": 1.0}, {"device": "b", "note": "", "importance": 0.9}]}
    text = findings(data)
    assert any("network pruned for b measures 1.700 ms, 0.85x" in f and "faster than it" in f for f in text)
    assert any("network pruned for a measures 2.200 ms, 0.99x" in f and "not told apart from it" in f
               for f in text)
