"""End to end on the real ORT CPU runtime. Assertions compare latencies
measured in the same run (ratios), never absolute times."""
import sys
from pathlib import Path

import archs
import pytest
import torch

import hwprune
from hwprune import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_common


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
    # independent re-measurement as a user sees it (fresh sessions, alternating
    # blocks, so that the host's drift cancels): the pruned/original ratio matches budget/baseline
    from hwprune import devices
    from profilers.blocks import block_runner, ratio_in_blocks
    rt = devices.get("ort-cpu-1t").open()
    est = ratio_in_blocks(block_runner(rt, model, (x,)), block_runner(rt, res.model, (x,)))
    assert 0.85 <= est.ratio / (res.budget_ms / res.baseline_ms) <= 1.08, (est, res.stats["ratio_interval"])


@pytest.mark.slow
@pytest.mark.parametrize("name,frac", [("concat", 0.6), ("invres", 0.6), ("grouped", 0.8)])
def test_architectures_outside_the_zoo_meet_their_budget(name, frac, shared_store):
    """(grouped: its grouped conv loses channels within its groups or whole groups)"""
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


@pytest.mark.slow
def test_a_contended_host_is_certified_or_said_not_to_be(shared_store):
    """resnet20 to 60 % on ort-cpu-1t while another process streams a 256 MB
    array through memory (cache and memory-bandwidth contention, bounded in
    time and killed at the end): the answer is either certified, and an
    independent re-measurement in alternating blocks under the same load
    lands within [0.90, 1.03] of the budget fraction, or it says it is not
    certified and gives its interval. A re-measurement whose interval contains
    an edge of the band is measured again and the two pooled, as the
    benchmarks judge."""
    import subprocess

    from hwprune import devices
    from profilers.blocks import block_runner, ratio_in_blocks
    model, x = zoo.create("resnet20")
    hog = subprocess.Popen([sys.executable, "-c", bench_common.STREAMER, "600"])
    try:
        res = hwprune.prune(model, x, device="ort-cpu-1t", budget_fraction=0.6, store=shared_store)
        iv = res.stats["ratio_interval"]["ort-cpu-1t"]
        assert iv["lo"] <= iv["ratio"] <= iv["hi"] and res.stats["baseline_spread"]["ort-cpu-1t"]["blocks"] > 2
        if res.stats["certified"]:
            assert iv["measured_hi_ms"] <= res.budget_ms
            rt = devices.get("ort-cpu-1t").open()
            judge = lambda: ratio_in_blocks(block_runner(rt, model, (x,)), block_runner(rt, res.model, (x,)))
            est = judge()
            if bench_common.near_edge(est, 0.6, (0.90, 1.03)):  # as the benchmarks judge: a second reading, pooled
                est = bench_common.pooled([est, judge()])
            assert 0.90 <= est.ratio / 0.6 <= 1.03, (est, iv)
        else:
            assert "not certified" in res.note and f"{iv['measured_hi_ms']:.3f} ms" in res.note
    finally:
        hog.kill()
        hog.wait()
