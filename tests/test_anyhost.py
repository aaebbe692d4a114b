"""Any host: the grid is the one measured here, every plan is measured until
sure (or said not to be), the fastest network is found by measurement, and the
host's drift is reported (the default budgets' fallback: test_reach.py).
Simulated runtimes (simruntime.py) make every number exact: their devices'
descriptors all say step 8, whatever step they simulate."""
import json
import logging

import pytest
from simruntime import SimRuntime

import hwprune
from hwprune import devices, zoo
from hwprune.cli.main import main
from hwprune.errors import BelowSmallestError
from hwprune.loop.engine import count_params
from hwprune.loop.meter import PLAN, Certainty
from profilers.steps import detect_step


@pytest.fixture
def hosts(sim_devices):
    """sim-16 (flat in blocks of 16) and sim-8 (blocks of 8), FLOP-bound, both described as step 8."""
    sim_devices.add("sim-16", bound="flops", step=16)
    sim_devices.add("sim-8", bound="flops", step=8)
    return sim_devices


def widths(res) -> list[int]:
    return [len(g["kept"]) for g in res.plan["groups"]]


@pytest.mark.parametrize("bound", ["flops", "memory"])
@pytest.mark.parametrize("step", [8, 16])
def test_the_simulated_runtime_is_a_step_device(bound, step):
    res = detect_step(SimRuntime(bound, step))
    assert res.step_channels == step and res.grid_channels == step and res.reliable


# ---------------------------------------------------------------- 1. the grid is the measured one

def test_prune_uses_the_grid_measured_on_this_host_and_says_so(hosts, store, caplog):
    model, x = zoo.create("resnet20")
    with caplog.at_level(logging.INFO, logger="hwprune"):
        first = hwprune.prune(model, x, device="sim-16", budget_fraction=0.6, store=store)
    g = first.stats["grid"]["sim-16"]
    assert (g["step_channels"], g["source"]) == (16, "measured") and g["measured_s"] > 0
    assert g["detail"].startswith("measured on this host now: step 16")
    assert any("measured the channel step on this host" in r.getMessage() for r in caplog.records)
    assert all(w % 16 == 0 for w in widths(first)) and first.stats["params_after"] < first.stats["params_before"]
    again = hwprune.prune(model, x, device="sim-16", budget_fraction=0.6, store=store)
    assert again.stats["grid"]["sim-16"]["source"] == "measured" and again.stats["grid"]["sim-16"]["measured_s"] == 0
    eight = hwprune.prune(model, x, device="sim-8", budget_fraction=0.6, store=store)
    assert eight.stats["grid"]["sim-8"]["step_channels"] == 8
    assert all(w % 8 == 0 for w in widths(eight)) and any(w % 16 for w in widths(eight))


def test_the_grid_override_wins(hosts, store):
    model, x = zoo.create("resnet20")
    res = hwprune.prune(model, x, device="sim-16", budget_fraction=0.6, store=store, grid=8)
    assert res.stats["grid"]["sim-16"] == {"step_channels": 8, "min_channels": 8, "source": "user",
                                           "detail": "--grid 8", "reliable": True, "measured_s": 0.0,
                                           "align_channels": 0}
    assert any(w % 16 for w in widths(res))
    with pytest.raises(hwprune.UserError, match="grid"):
        hwprune.prune(model, x, device="sim-16", budget_fraction=0.6, store=store, grid=0)


def test_cli_prune_json_has_the_grid_the_interval_and_the_host(hosts, tmp_path, capsys):
    args = ["prune", "--model", "resnet20", "--device", "sim-16", "--budget-ms", "60%", "--store",
            str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out")]
    assert main(args + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["grid"]["sim-16"]["step_channels"] == 16 and data["grid"]["sim-16"]["source"] == "measured"
    assert data["certified"] is True and data["warnings"] == []
    iv = data["ratio_interval"]["sim-16"]
    assert iv["lo"] <= iv["ratio"] <= iv["hi"] and iv["measured_hi_ms"] <= data["budget_ms"] and iv["sure"]
    assert data["baseline_spread"]["sim-16"]["spread_rel"] == 0.0 and data["certainty"] == PLAN.to_json()
    assert main(args + ["--grid", "8"]) == 0
    text = capsys.readouterr().out
    assert "grid sim-16: 8 channels (--grid 8)" in text and "certified under the budget" in text
    with pytest.raises(SystemExit) as e:
        main(args + ["--grid", "0"])
    assert e.value.code == 2 and "grid '0' is not a positive number" in capsys.readouterr().err


def test_devices_json_shows_the_grid_measured_by_the_first_prune(hosts, tmp_path, capsys):
    store = ["--store", str(tmp_path / "s.sqlite")]

    def grid():
        assert main(["devices", "--json", *store]) == 0
        return {d["name"]: d["grid"] for d in json.loads(capsys.readouterr().out)["devices"]}["sim-16"]
    assert (grid()["step_channels"], grid()["source"]) == (8, "descriptor")
    assert main(["prune", "--model", "resnet20", "--device", "sim-16", "--budget-ms", "60%", *store, "--out",
                 str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert (grid()["step_channels"], grid()["source"]) == (16, "measured")


def test_compare_prunes_each_device_on_its_measured_grid(hosts, tmp_path):
    from hwprune.compare.run import run_compare
    from profilers import MeasurementStore
    model, x = zoo.create("resnet20")
    kw = dict(budget_frac=0.6, curve_layers=0, pareto_points=2, repeats=1)
    res = run_compare(model, x, ["sim-16", "sim-8"], store=MeasurementStore(tmp_path / "a.sqlite"), **kw)
    devs = {d["name"]: d for d in res.data["devices"]}
    assert {n: (d["grid_step"], d["grid"]["source"]) for n, d in devs.items()} == {
        "sim-16": (16, "measured"), "sim-8": (8, "measured")}
    assert devs["sim-16"]["device_step"] == 16
    for g in res.data["groups"]:
        assert g["widths"]["sim-16"] % 16 == 0 and g["widths"]["sim-8"] % 8 == 0
    assert any(g["widths"]["sim-8"] % 16 for g in res.data["groups"])
    forced = run_compare(model, x, ["sim-16", "sim-8"], store=MeasurementStore(tmp_path / "b.sqlite"), grid=8, **kw)
    assert {d["name"]: (d["grid_step"], d["grid"]["source"]) for d in forced.data["devices"]} == {
        "sim-16": (8, "user"), "sim-8": (8, "user")}


def test_predict_latency_uses_the_measured_grid_and_warns_when_predicting_from_stored_measurements(
        hosts, store, caplog):
    model, x = zoo.create("resnet20")
    assert hwprune.predict_latency(model, x, "sim-16", store=store) > 0
    from hwprune import devices
    from hwprune.latency.grid import resolve_grid
    assert resolve_grid(devices.get("sim-16"), store, measure=False).source == "measured"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hwprune"):
        stored = hwprune.predict_latency(model, x, "sim-16", store=store, profile=False)
    assert isinstance(stored, float) and stored > 0
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "not measured now" in msg and "the measurement store" in msg and "spread 0.0 %" in msg


# ---------------------------------------------------------------- 2. measured until sure

def test_a_still_host_certifies_the_plan_with_an_exact_interval(hosts, store):
    model, x = zoo.create("resnet20")
    res = hwprune.prune(model, x, device="sim-8", budget_fraction=0.6, store=store)
    iv = res.stats["ratio_interval"]["sim-8"]
    assert res.stats["certified"] and res.note == "" and iv["sure"] and iv["rounds"] == PLAN.min_rounds
    assert iv["lo"] == pytest.approx(iv["hi"]) and iv["measured_hi_ms"] <= res.budget_ms
    assert res.rounds[-1].sure and res.rounds[-1].measured_hi_ms == pytest.approx(res.measured_ms)


def test_a_noisy_host_aims_lower_until_a_plan_certifies(sim_devices, store):
    """Whole-model measurements alternately 5 % fast and slow: ratios are right
    on average, but no interval narrows to +-2 % within 4 rounds, so a plan
    aimed at 0.965 of the budget reaches over it; the loop aims lower, by the
    interval it could reach, and certifies a plan under the budget, interval
    included. (A loop with no round left reports the plan uncertified with
    its interval: tests/test_loop.py.)"""
    sim_devices.add("sim-noisy", bound="flops", step=8, noise=0.05)
    model, x = zoo.create("resnet20")
    res = hwprune.prune(model, x, device="sim-noisy", budget_fraction=0.6, store=store,
                        certainty=Certainty(max_rounds=4, max_s=5))
    iv = res.stats["ratio_interval"]["sim-noisy"]
    # the meter still hit its cap: 4 rounds a reading (a plan in doubt may be measured again and its
    # readings pooled, so the answer's interval can sum several)
    assert not iv["sure"] and iv["rounds"] % 4 == 0 and iv["rounds"] >= 4
    assert res.stats["certified"] is True and iv["measured_hi_ms"] <= res.budget_ms * (1 + 1e-9)
    assert 0.8 <= res.stats["budget_used"] <= 1.0
    assert any("drifted" in w for w in res.stats["warnings"])


# ---------------------------------------------------------------- 3. the fastest network, by measurement

@pytest.fixture
def narrow_is_slow(sim_devices):
    """A host where networks with under a tenth of resnet20's parameters run
    twice their simulated latency: the smallest network (4 % of the
    parameters) measures 45 % of the original, the quarter-width one 31 %
    (channel widths only: the tests below prune with granularity channel)."""
    model, x = zoo.create("resnet20")
    full = count_params(model)
    sim_devices.add("sim-narrow", bound="flops", step=8, bias=lambda m: 2.0 if count_params(m) < 0.1 * full else 1.0)
    return model, x


def test_a_budget_between_the_fastest_and_the_smallest_network_is_met(narrow_is_slow, store):
    model, x = narrow_is_slow
    res = hwprune.prune(model, x, device="sim-narrow", budget_fraction=0.38, store=store, granularity="channel")
    fast = res.stats["fastest"]["sim-narrow"]
    assert fast["smallest_ms"] > res.budget_ms > fast["measured_ms"]  # refused before: "below the smallest"
    assert fast["network"].startswith("uniform widths (25.0 %") and fast["fraction"] == pytest.approx(0.31, abs=0.01)
    names = [n["network"] for n in fast["measured"]]  # 3 uniform and 2 split calibration networks, 2 fastest
    assert len(names) == 7 and sum("half of the groups" in n for n in names) == 2, names
    assert res.measured_ms <= res.budget_ms and res.stats["certified"]


def test_a_budget_below_the_fastest_network_names_it(narrow_is_slow, store):
    model, x = narrow_is_slow
    with pytest.raises(BelowSmallestError) as e:
        hwprune.prune(model, x, device="sim-narrow", budget_fraction=0.25, store=store, granularity="channel")
    exc = e.value
    assert exc.fastest.startswith("uniform widths (25.0 %") and exc.fastest_ms < exc.smallest_ms
    assert exc.fastest_fraction == pytest.approx(0.31, abs=0.01)
    msg = str(exc)
    assert f"below the fastest network measured on sim-narrow: {exc.fastest}, {exc.fastest_ms:.3f} ms (31 % of " \
           f"the original's {exc.baseline_ms:.3f} ms)" in msg
    assert f"the smallest network the constraints allow measured {exc.smallest_ms:.3f} ms" in msg


# ---------------------------------------------------------------- 5. drift

def test_a_drifting_host_is_warned_about_and_its_ratio_still_certified(sim_devices, store):
    """The host slows by 0.5 % per whole-model measurement: the original's
    blocks spread over 4 %, a warning says so, and the plan is still
    certified (alternating blocks cancel the drift in the ratio)."""
    sim_devices.add("sim-drift", bound="flops", step=8, drift=0.5)
    sim_devices.add("sim-still", bound="flops", step=8)
    model, x = zoo.create("resnet20")
    res = hwprune.prune(model, x, device="sim-drift", budget_ms=0.28, store=store)
    spread = res.stats["baseline_spread"]["sim-drift"]
    assert spread["spread_rel"] > 2 * PLAN.target_rel and spread["max_ms"] > spread["min_ms"]
    [warning] = res.stats["warnings"]
    assert f"spread {100 * spread['spread_rel']:.0f} %" in warning and "budget in ms" in warning
    assert res.stats["certified"] and res.stats["ratio_interval"]["sim-drift"]["sure"]
    still = hwprune.prune(model, x, device="sim-still", budget_fraction=0.6, store=store)
    assert still.stats["warnings"] == [] and still.stats["baseline_spread"]["sim-still"]["spread_rel"] == 0.0


def test_a_profile_measured_while_the_host_was_slower_is_put_on_the_footing_of_now(sim_devices, store,
                                                                                    monkeypatch):
    """Layers profiled at one speed, whole networks measured at another: the
    layers are rescaled by the reference layer's reading now over its anchor,
    so the remainder fits the same layer scale as on a steady host."""
    from hwprune import devices
    from hwprune.graph.space import PruningSpace, device_options
    from hwprune.graph.subnets import build
    from hwprune.latency.profiling import Profiler, fit_latency_model
    from hwprune.loop.fastest import calibration_choices
    sim_devices.add("sim-foot", bound="flops", step=8, bias=1.3)
    model, x = zoo.create("resnet20")
    space = PruningSpace(model, (x,))
    prof = Profiler(devices.get("sim-foot"), store, passes=1)
    options = device_options(space, prof.device)

    def layer_scale(lat):
        rows = [(space.specs(c), prof.runtime.measure_module(build(space, c), (x,)).median_ms)
                for c in [space.full_choice(), *(c for _, c in calibration_choices(options))]]
        return 1 + lat.fit_remainder(rows, reference=0).remainder_coef()[3]

    monkeypatch.setattr(SimRuntime, "speed", 1.0)
    steady = fit_latency_model(prof, space, options)
    assert steady.footing == pytest.approx(1.0)
    steady_scale = layer_scale(steady)
    monkeypatch.setattr(SimRuntime, "speed", 2.0)  # the host runs twice as slow as when it was profiled
    measured_before = prof.measured
    slow = fit_latency_model(prof, space, options)
    assert prof.measured == measured_before  # nothing profiled again
    assert slow.footing == pytest.approx(2.0)
    spec = space.layers[1].spec
    assert slow.layer_ms(spec) == pytest.approx(2 * steady.layer_ms(spec))
    assert layer_scale(slow) == pytest.approx(steady_scale, rel=0.02)
    slow.footing_ = 1.0  # without the footing the remainder would need twice the layer scale
    assert layer_scale(slow) > 1.5 * steady_scale


def test_a_latency_model_missing_its_calibration_networks_is_flagged():
    from hwprune.loop.fastest import FIT_WARN_REL, Calibration, fit_warnings
    assert Calibration((), FIT_WARN_REL).fit_warning("d") == ""
    wide = Calibration((), 0.12)
    assert "ort-cpu-1t misses the whole networks it was calibrated on by +-12 %" in wide.fit_warning("ort-cpu-1t")
    assert fit_warnings({"a": Calibration((), 0.01), "b": wide}) == [wide.fit_warning("b")]


def test_prune_says_when_its_latency_model_misses_the_networks_it_measured(sim_devices, store):
    """A runtime whose whole networks run 1.6x their layers between 2 and 95 %
    of the parameters and at 1x elsewhere: no remainder fits the calibration
    networks, and the result says so (a plain runtime's model fits exactly)."""
    from hwprune.loop.fastest import FIT_WARN_REL
    model, x = zoo.create("resnet20")
    full = count_params(model)
    sim_devices.add("sim-jump", bound="flops", bias=lambda m: 1.6 if 0.02 < count_params(m) / full < 0.95 else 1.0)
    sim_devices.add("sim-even", bound="flops")
    for dev, flagged in (("sim-jump", True), ("sim-even", False)):
        res = hwprune.prune(model, x, device=dev, budget_fraction=0.6, store=store, granularity="channel")
        assert (res.stats["fastest"][dev]["fit_error_rel"] > FIT_WARN_REL) == flagged
        assert any(w.startswith(f"the latency model of {dev} misses") for w in res.stats["warnings"]) == flagged


def test_the_split_calibration_networks_tell_weights_from_work():
    """Uniform calibration networks scale every layer together; the two split
    ones are narrow in one half of the network (by depth) and full in the
    other, so their shares of the full network's weights and of its work
    differ (vgg16: most weights late, most work early)."""
    from hwprune.graph.space import PruningSpace, device_options
    from hwprune.loop.fastest import SPLIT, calibration_choices, split_choices
    from latency_models import weight_elements
    model, x = zoo.create("vgg16")
    space = PruningSpace(model, (x,))
    options = device_options(space, devices.get("ort-cpu-1t"))
    (_, early), (_, late) = split_choices(space, options)
    narrow = {g: opts[int(round(SPLIT * (len(opts) - 1)))] for g, opts in options.items()}
    for g, opts in options.items():  # narrow in exactly one of the two, full in the other
        assert {early[g], late[g]} == {narrow[g], opts[-1]}
    first = lambda c: [min(space.layers_of_group(g)) for g in options if c[g] != options[g][-1]]
    assert max(first(early)) < min(first(late))
    full = space.specs(space.full_choice())
    share = lambda c, f: f(space.specs(c)) / f(full)
    flops = lambda specs: sum(s.flops for s in specs)
    assert share(early, weight_elements) > share(late, weight_elements)
    assert share(early, flops) < share(late, flops)
    names = [n for n, _ in calibration_choices(options, space=space)]
    assert len(names) == 5 and names[-2:] == [n for n, _ in split_choices(space, options)]
