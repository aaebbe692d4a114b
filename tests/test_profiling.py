
import numpy as np
import pytest

from profilers import LayerSpec, MeasurementStore, Protocol, StoreError, Timing, create_runtime, measure
from profilers.protocol import median_ci_rel


def test_median_interval_shrinks_with_more_runs():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1, 0.05, 30), rng.normal(1, 0.05, 3000)
    assert median_ci_rel(large) < median_ci_rel(small)
    assert median_ci_rel(np.ones(3)) == float("inf")


def test_protocol_reports_median_and_spread():
    calls = []
    t = measure(lambda: calls.append(1), Protocol(warmup_runs=3, warmup_s=0, min_runs=20, max_s=0.2))
    assert t.runs >= 20 and len(calls) >= t.runs + 3
    assert t.median_ms >= 0 and t.iqr_ms >= 0


def test_store_round_trip_and_resume(tmp_path):
    path = tmp_path / "s.sqlite"
    s = MeasurementStore(path)
    t = Timing(1.5, 0.1, 40, 0.01, True)
    s.put("dev", "k1", t)
    s.close()
    s2 = MeasurementStore(path)  # a new process would see the same
    assert s2.get("dev", "k1") == t and s2.get("dev", "k2") is None and s2.count("dev") == 1


def test_corrupt_store_is_an_error_and_left_as_is(tmp_path):
    path = tmp_path / "bad.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="unreadable"):
        MeasurementStore(path)
    assert path.read_bytes() == before


def test_layer_spec_key_round_trip_and_family():
    s = LayerSpec("conv", 32, 64, (3, 3), (2, 2), (1, 1), (1, 1), 1, 16, 16)
    assert LayerSpec.from_key(s.key()) == s
    assert s.out_hw == (8, 8)
    assert s.flops == 2 * 64 * 8 * 8 * 32 * 9
    from dataclasses import replace
    assert replace(s, in_channels=8, out_channels=8).family() == s.family()
    dw = LayerSpec("conv", 32, 32, (3, 3), groups=32, height=8, width=8)
    assert dw.depthwise and replace(dw, in_channels=16, out_channels=16, groups=16).family() == dw.family()


def test_ort_conv_time_grows_with_channels():
    """Ratio measured in one run: 64 output channels cost more than 16."""
    rt = create_runtime("ort-cpu", threads=1)
    base = LayerSpec("conv", 64, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, 56, 56)
    from dataclasses import replace
    small = rt.measure_spec(base).median_ms
    big = rt.measure_spec(replace(base, out_channels=64)).median_ms
    assert big > 1.4 * small
