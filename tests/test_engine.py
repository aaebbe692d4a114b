"""End to end on the real ORT CPU runtime. Assertions compare latencies
measured in the same run (ratios), never absolute times."""
import archs
import pytest
import torch

import hwprune
from hwprune import zoo


def _check(res, model, x):
    assert not res.unchanged
    assert res.measured_ms <= 1.03 * res.budget_ms, res.rounds
    assert res.measured_ms >= 0.85 * res.budget_ms, res.rounds  # budget not wasted
    assert res.stats["params_after"] < res.stats["params_before"]
    with torch.no_grad():
        assert res.model(x).shape == model(x).shape
    for g in res.plan["groups"]:
        assert 1 <= len(g["kept"]) <= g["size"]


def test_resnet20_meets_a_60_percent_budget(shared_store):
    model, x = zoo.create("resnet20")
    base = hwprune.measure_latency(model, x)
    res = hwprune.prune(model, x, device="ort-cpu-1t", budget_ms=0.6 * base, store=shared_store)
    _check(res, model, x)
    # independent re-measurement, interleaved with the original so that the
    # host's drift cancels: the pruned/original ratio matches budget/baseline
    from hwprune import devices
    pruned, orig = devices.get("ort-cpu-1t").open().measure_modules_interleaved([res.model, model], (x,))
    assert 0.85 <= (pruned.median_ms / orig.median_ms) / (res.budget_ms / res.baseline_ms) <= 1.08


@pytest.mark.slow
@pytest.mark.parametrize("name,frac", [("concat", 0.6), ("invres", 0.6), ("grouped", 0.8)])
def test_architectures_outside_the_zoo_meet_their_budget(name, frac, shared_store):
    """(the grouped conv keeps its widths, so that net cannot go much below 60 %)"""
    model, x = archs.create(name)
    base = hwprune.measure_latency(model, x)
    res = hwprune.prune(model, x, device="ort-cpu-1t", budget_ms=frac * base, store=shared_store)
    _check(res, model, x)


def test_budget_above_baseline_returns_the_model_unchanged(shared_store):
    model, x = archs.create("concat")
    res = hwprune.prune(model, x, device="ort-cpu-1t", budget_ms=1e6, store=shared_store)
    assert res.unchanged and res.model is model and "unchanged" in res.note


def test_budget_below_the_smallest_network_names_the_minimum(shared_store):
    model, x = zoo.create("resnet20")
    with pytest.raises(hwprune.UserError, match=r"smallest network .*\d+\.\d+ ms"):
        hwprune.prune(model, x, device="ort-cpu-1t", budget_ms=1e-4, store=shared_store)


def test_prediction_is_close_to_measurement(shared_store):
    model, x = archs.create("concat")
    pred = hwprune.predict_latency(model, x, store=shared_store)
    meas = hwprune.measure_latency(model, x)
    assert 0.75 <= pred / meas <= 1.25


def test_bad_budget_and_device_are_user_errors(shared_store):
    model, x = zoo.create("resnet20")
    for bad in (-1, 0, float("nan"), "abc"):
        with pytest.raises(hwprune.UserError, match="budget"):
            hwprune.prune(model, x, budget_ms=bad, store=shared_store)
    with pytest.raises(hwprune.UserError, match="unknown device .*ort-cpu-1t"):
        hwprune.prune(model, x, device="nope", budget_ms=1.0, store=shared_store)


def test_relative_budget_follows_the_measured_baseline(shared_store):
    model, x = archs.create("concat")
    res = hwprune.prune(model, x, device="ort-cpu-1t", budget_fraction=0.6, store=shared_store)
    assert res.budget_ms == pytest.approx(0.6 * res.baseline_ms, rel=1e-9)
    assert res.plan["budget_fraction"] == 0.6
    _check(res, model, x)
    with pytest.raises(hwprune.UserError, match="not both"):
        hwprune.prune(model, x, device="ort-cpu-1t", budget_ms=1.0, budget_fraction=0.5, store=shared_store)
    with pytest.raises(hwprune.UserError, match="fraction"):
        hwprune.prune(model, x, device="ort-cpu-1t", budget_fraction=-0.5, store=shared_store)
