"""hwprune compare on the real CPU runtimes: the cross matrix measured on ONNX
Runtime and PyTorch, and several ORT sessions kept in one process. Latency
assertions compare ratios measured in the same run only."""
import pytest

from hwprune import zoo
from hwprune.compare.run import run_compare
from profilers import LayerSpec

# ---------------------------------------------------------------- real runtimes

@pytest.mark.slow
def test_real_cpu_runtimes_measure_every_cell(shared_store):
    from hwprune.loop.meter import Certainty
    model, x = zoo.create("resnet20")
    # each plan and cell a reading to +-2 %, at most 8 s: with the engine's default cap (30 s) a noisy
    # moment took this test to 139 s in a suite run; capped, 105-115 s there, about 55 s when calm
    res = run_compare(model, x, ["ort-cpu-1t", "torch-cpu-1t"], budget_frac=0.5, store=shared_store,
                      curve_layers=1, pareto_points=3, repeats=1, certainty=Certainty(max_s=8.0))
    cr = res.data["cross"]
    assert all(c["source"] == "measured" for row in cr["cells"] for c in row)
    plans = {p["device"]: p for p in res.data["plans"]}
    for i, d in enumerate(cr["rows"]):  # each plan, re-measured interleaved with the original on its device
        c = cr["cells"][i][i]
        assert c["ratio_lo"] <= c["ratio_to_original"] <= c["ratio_hi"] and c["vs_own"] == pytest.approx(1.0)
        if d == "ort-cpu-1t":  # its 50 % plan lands near its budget
            # the fraction of the baseline the engine measured (a ratio, free of the host's drift; the
            # side's own baseline, measured minutes apart, has differed from it by 16 % here)
            frac = plans[d]["budget_ms"] / plans[d]["engine_baseline_ms"]
            assert 0.7 * frac <= plans[d]["measured_ms"] / plans[d]["engine_baseline_ms"] <= 1.1 * frac, plans[d]
            # re-measured in the cross matrix, minutes later: a full-suite run measured this sub-ms plan
            # at 0.31 of the original where the engine had it near 0.5, so only gross misses fail here
            assert 0.5 * frac <= c["ratio_to_original"] <= 1.1 * frac, (d, frac, cr)
        else:
            # PyTorch eager at batch 1 spends most of resnet20's time in per-operator overhead: the
            # smallest network the floors allow runs 0.8-0.95 of the full one, as close as this shared
            # host's minute-to-minute drift (one run measured a plan at 0.85 in the engine and at 0.99
            # here); the budget is raised above that network, and the plan is not slower than the
            # original beyond that drift
            assert "below the smallest network" in plans[d]["note"], plans[d]
            assert c["ratio_to_original"] <= 1.1, (d, cr)


# ---------------------------------------------------------------- several ORT sessions in one process

def _resnet56_and_half():
    from hwprune.graph.space import PruningSpace
    from hwprune.graph.subnets import build
    from profilers.onnx_export import feeds, to_onnx_bytes
    model, x = zoo.create("resnet56")
    space = PruningSpace(model, (x,))
    half = {g.gid: tuple(max(8, k // 2) for k in ks) for g, ks in zip(space.groups, space.full_choice().values())}
    return to_onnx_bytes(model, (x,)), to_onnx_bytes(build(space, half), (x,)), feeds((x,))


def test_multithreaded_ort_sessions_do_not_spin_while_idle():
    """The cross matrix keeps a session per network; idle sessions' spinning
    workers would take the cores from the one running."""
    from profilers.onnx_layers import layer_model
    from profilers.ort_cpu import OrtCpuRuntime
    onnx = layer_model(LayerSpec("conv", 8, 8, (3, 3), (1, 1), (1, 1), height=8, width=8))
    key = "session.intra_op.allow_spinning"
    assert OrtCpuRuntime(2).session(onnx).get_session_options().get_session_config_entry(key) == "0"
    assert OrtCpuRuntime(2).fingerprint()["intra_op_spinning"] is False
    assert "intra_op_spinning" not in OrtCpuRuntime(1).fingerprint()  # stored 1-thread profiles still match


@pytest.mark.slow
def test_interleaving_more_two_thread_sessions_keeps_the_ratio():
    """Measured with spinning workers, resnet56's half-width / full ratio on
    2 threads fell from 0.24 with two sessions to 0.15 with five."""
    from profilers.ort_cpu import OrtCpuRuntime
    big, small, fx = _resnet56_and_half()
    rt = OrtCpuRuntime(2)
    two = rt.measure_onnx_interleaved([(big, fx), (small, fx)])
    five = rt.measure_onnx_interleaved([(b, fx) for b in (big, small, small, big, small)])
    r2, r5 = two[1].median_ms / two[0].median_ms, five[1].median_ms / five[0].median_ms
    assert 0.8 <= r5 / r2 <= 1.25, (r2, r5)
