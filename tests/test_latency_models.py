import numpy as np
import pytest

from latency_models import NetworkLatencyModel, NotFittedError, QuadraticLayerModel
from profilers import LayerSpec, Measurement, Timing


def test_quadratic_recovers_a_bilinear_law():
    rng = np.random.default_rng(0)
    n_in, n_out = rng.integers(8, 256, 40), rng.integers(8, 256, 40)
    y = 0.05 + 1e-3 * n_in + 2e-3 * n_out + 3e-5 * n_in * n_out
    m = QuadraticLayerModel("M6").fit(n_in, n_out, y)
    assert np.allclose(m.coef_, [0.05, 1e-3, 2e-3, 3e-5], rtol=1e-6, atol=1e-9)
    assert np.allclose(m.predict([100], [50]), 0.05 + 0.1 + 0.1 + 0.15)


def test_m5_has_no_output_only_term():
    m = QuadraticLayerModel("M5").fit([16, 32, 64, 16], [16, 16, 64, 64], [1.0, 2.0, 3.0, 4.0])
    assert len(m.coef_) == 3


def test_unfitted_and_bad_form_are_errors():
    with pytest.raises(NotFittedError):
        QuadraticLayerModel().predict([1], [1])
    with pytest.raises(ValueError):
        QuadraticLayerModel("M7")


def test_round_trip_through_dict():
    m = QuadraticLayerModel().fit([16, 32, 48, 64], [16, 48, 32, 64], [1.0, 2.5, 2.6, 4.2])
    m2 = QuadraticLayerModel.from_dict(m.to_dict())
    assert np.allclose(m.predict([40], [24]), m2.predict([40], [24]))


def _meas(spec, ms):
    return Measurement("d", spec, Timing(ms, 0.0, 30, 0.01, True))


def test_network_model_sums_families_and_fits_the_remainder():
    base = LayerSpec("conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, 8, 8)
    other = LayerSpec("conv", 16, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1, 8, 8)
    ms = []
    for a in (16, 32, 48):
        for b in (16, 32, 48):
            from dataclasses import replace
            ms.append(_meas(replace(base, in_channels=a, out_channels=b), 0.01 * a * b / 256))
            ms.append(_meas(replace(other, in_channels=a, out_channels=b), 0.002 * a * b / 256))
    net = NetworkLatencyModel().fit(ms)
    assert len(net.families_) == 2
    from dataclasses import replace
    specs_a = [replace(base, in_channels=32, out_channels=32), replace(other, in_channels=32, out_channels=16)]
    specs_b = [replace(base, in_channels=16, out_channels=48), replace(other, in_channels=48, out_channels=48)]
    layers_a = net.layers_ms(specs_a)
    assert layers_a == pytest.approx(0.04 + 0.004, rel=1e-6)
    from latency_models import activation_elements, weight_elements
    truth = lambda specs, layers: layers + 0.1 + 1e-5 * activation_elements(specs) + 2e-6 * weight_elements(specs)
    more = [[replace(base, in_channels=a, out_channels=b), replace(other, in_channels=b, out_channels=a)]
            for a, b in ((48, 16), (16, 16), (48, 32), (32, 48))]
    rows = [(s, truth(s, net.layers_ms(s))) for s in [specs_a, specs_b, *more]]
    net.fit_remainder(rows)  # six rows: every term (one scale: nothing is off an alignment)
    assert net.remainder_ == pytest.approx((0.1, 1e-5, 2e-6, 0.0, 0.0), abs=1e-9)
    assert net.predict(specs_a) == pytest.approx(truth(specs_a, layers_a), rel=1e-9)
    with pytest.raises(KeyError):
        net.layer_ms(replace(base, kernel=(5, 5)))
    assert NetworkLatencyModel.from_dict(net.to_dict()).predict(specs_b) == pytest.approx(net.predict(specs_b))


def test_measured_widths_are_looked_up_and_others_interpolated():
    from dataclasses import replace
    base = LayerSpec("conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, 8, 8)
    truth = {(a, b): 0.1 + 0.001 * a * b for a in (16, 32, 48) for b in (16, 32, 48)}
    noisy = dict(truth)
    noisy[(32, 32)] *= 1.3  # a width the device handles badly: the table keeps it
    net = NetworkLatencyModel(use_table=True).fit([_meas(replace(base, in_channels=a, out_channels=b), ms)
                                                   for (a, b), ms in noisy.items()])
    assert net.layer_ms(replace(base, in_channels=32, out_channels=32)) == noisy[(32, 32)]
    between = net.layer_ms(replace(base, in_channels=40, out_channels=24))
    assert 0.1 + 0.001 * 32 * 16 < between < 0.1 + 0.001 * 48 * 32
    net.use_table = False
    assert net.layer_ms(replace(base, in_channels=32, out_channels=32)) != noisy[(32, 32)]
