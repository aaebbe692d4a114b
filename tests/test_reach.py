"""Default budgets every host reaches: where the requested share of the
original's latency is below the fastest network measured, a stated budget
midway between it and the full network (simulated runtimes, simruntime.py)."""
import pytest

from hwprune import zoo


@pytest.fixture
def hosts(sim_devices):
    """sim-16: FLOP-bound, flat in blocks of 16 (its descriptor says 8); resnet20's
    fastest network there measures 53 % of the original."""
    sim_devices.add("sim-16", bound="flops", step=16)
    return sim_devices


def test_prune_within_reach_falls_back_midway_and_says_why(hosts, store):
    """On sim-16 resnet20's fastest channel-pruned network measures 53 % of the original."""
    from hwprune.loop.reach import midway, prune_within_reach
    model, x = zoo.create("resnet20")
    res, choice = prune_within_reach(model, x, "sim-16", 0.5, store=store, granularity="channel")
    assert choice.fallback and choice.requested_fraction == 0.5
    assert choice.fastest_fraction == pytest.approx(0.53, abs=0.01)
    assert choice.fraction == pytest.approx(midway(choice.fastest_fraction)) and choice.fraction > 0.75
    assert res.budget_ms == pytest.approx(choice.fraction * res.baseline_ms) and res.measured_ms <= res.budget_ms
    assert "50 % is below the fastest network measured on this host" in choice.text
    assert "midway between it and the full network" in choice.text
    res, choice = prune_within_reach(model, x, "sim-16", 0.7, store=store, granularity="channel")
    assert not choice.fallback and choice.fraction == 0.7 and "as requested" in choice.text


def test_the_demo_picks_a_stated_budget_where_half_is_out_of_reach(hosts, store, tmp_path, monkeypatch):
    import hwprune.demo as demo
    monkeypatch.setattr(demo, "train", lambda model, *a, **k: model)  # the budget choice is under test, not training
    out = demo.run_demo(tmp_path / "demo", device="sim-16", epochs=1, finetune_epochs=0, store=store)
    choice = out["budget_choice"]
    assert choice["fallback"] and out["budget_requested_frac"] == 0.5 and out["budget_frac"] == choice["fraction"]
    assert out["budget_ms"] == pytest.approx(choice["fraction"] * out["baseline_ms"]) and out["budget_met"]
    assert "below the fastest network" in choice["text"] and out["grid"]["sim-16"]["step_channels"] == 16
    assert choice["text"] in (tmp_path / "demo" / "report.md").read_text()
    assert (tmp_path / "demo" / "model.onnx").stat().st_size > 0
