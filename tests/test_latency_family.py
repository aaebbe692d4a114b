"""The latency model family: one conformance test over every registered model,
then what each model promises on synthetic measurements (no timing here)."""
import json
from dataclasses import replace

import numpy as np
import pytest

import latency_models
from latency_models import NetworkLatencyModel, NotFittedError, create, list_models, model_from_dict
from latency_models.lookup import full_grid_size
from latency_models.metrics import accuracy
from profilers import LayerSpec, Measurement, Timing

CONV = LayerSpec("conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, 16, 16)
PW = LayerSpec("conv", 16, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1, 8, 8)
DW = LayerSpec("conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 16, 16, 16)
FC = LayerSpec("linear", 64, 10)
WIDTHS = (8, 16, 32, 48, 64)


def law(s: LayerSpec) -> float:
    """A synthetic device: per-call overhead plus FLOPs at two speeds."""
    return 0.02 + s.flops / (2e9 if s.depthwise else 2e10)


def meas(spec, ms=None):
    return Measurement("synthetic", spec, Timing(law(spec) if ms is None else ms, 0.0, 40, 0.01, True))


def samples():
    out = []
    for base in (CONV, PW):
        out += [meas(replace(base, in_channels=a, out_channels=b)) for a in WIDTHS for b in WIDTHS]
    out += [meas(replace(DW, in_channels=n, out_channels=n, groups=n)) for n in WIDTHS]
    out += [meas(replace(FC, in_channels=n)) for n in WIDTHS]
    return out


def network(w1, w2):
    return [replace(CONV, in_channels=3, out_channels=w1), replace(CONV, in_channels=w1, out_channels=w2),
            replace(DW, in_channels=w2, out_channels=w2, groups=w2), replace(PW, in_channels=w2, out_channels=w1),
            replace(FC, in_channels=w1)]


@pytest.fixture(scope="module")
def fitted_samples():
    ms = samples()
    ms += [meas(replace(CONV, in_channels=3, out_channels=n)) for n in WIDTHS]   # the stem family
    return ms


# ---------------------------------------------------------------- conformance

@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_follows_the_estimator_api(name, fitted_samples):
    model = create(name)
    before = set(vars(model))
    assert model.get_params() == {k: getattr(model, k) for k in model.get_params()}   # constructor stores
    with pytest.raises(NotFittedError):
        model.predict([CONV])
    with pytest.raises(NotFittedError):
        model.to_dict()
    assert model.fit(fitted_samples) is model
    learned = set(vars(model)) - before
    assert learned and all(k.endswith("_") for k in learned), learned
    assert model.n_measurements_ == len(fitted_samples)

    specs = [replace(CONV, in_channels=24, out_channels=40), replace(PW, in_channels=64, out_channels=8),
             replace(DW, in_channels=40, out_channels=40, groups=40), replace(FC, in_channels=40)]
    pred = model.predict(specs)
    assert pred.shape == (4,) and np.all(np.isfinite(pred)) and np.all(pred > 0)
    # every model learns that a wider layer of a family costs more
    assert model.predict_one(replace(CONV, in_channels=64, out_channels=64)) > \
        model.predict_one(replace(CONV, in_channels=8, out_channels=8))
    # vectorised widths agree with single specs (what the selector's tables read)
    grid = model.predict_widths(CONV, np.array([[8], [24]]), np.array([[16, 40]]))
    assert grid.shape == (2, 2)
    assert grid[1, 1] == pytest.approx(model.predict_one(replace(CONV, in_channels=24, out_channels=40)))

    again = model_from_dict(json.loads(json.dumps(model.to_dict())))
    assert type(again) is type(model) and again.get_params() == model.get_params()
    assert np.allclose(again.predict(specs), pred, rtol=1e-9)

    other = replace(CONV, kernel=(5, 5), padding=(2, 2))   # a family never measured
    if model.per_family:
        assert model.missing([other, CONV]) == [other]
        with pytest.raises(KeyError, match="no measurements"):
            model.predict([other])
    else:
        assert model.missing([other]) == [] and model.predict([other])[0] > 0


@pytest.mark.parametrize("name", list_models())
def test_every_model_works_inside_the_network_model(name, fitted_samples):
    net = NetworkLatencyModel(name, step_channels=8).fit(fitted_samples)
    pairs = [(8, 8), (32, 16), (64, 64), (16, 48), (48, 8), (24, 24), (40, 56), (56, 16)]
    rows = [(network(a, b), 0.7 * sum(law(s) for s in network(a, b)) + 0.05) for a, b in pairs]
    net.fit_remainder(rows)  # enough rows for the layer scale: the sums below hold with it
    specs = network(48, 32)
    total = net.predict(specs)
    assert np.isfinite(total) and total > 0
    assert total == pytest.approx(net.const_ms() + sum(net.layer_cost_ms(s) for s in specs), rel=1e-9)
    assert NetworkLatencyModel.from_dict(json.loads(json.dumps(net.to_dict()))).predict(specs) == \
        pytest.approx(total, rel=1e-9)
    assert net.layer_widths_ms(CONV, [8, 24], [16, 40])[1] == \
        pytest.approx(net.layer_ms(replace(CONV, in_channels=24, out_channels=40)))


def test_registry_lists_creates_and_refuses_unknown_names():
    assert {"lookup", "quadratic-m6", "quadratic-m5", "step-quadratic", "flops", "params", "forest"} <= \
        set(list_models())
    assert list_models("quadratic-*") == ["quadratic-m6", "quadratic-m5"]
    assert create("step-quadratic", step_channels=16).step_channels == 16
    assert create("flops", step_channels=16).get_params() == {}   # arguments a model does not take are ignored
    with pytest.raises(KeyError, match="unknown latency model"):
        create("nope")
    assert latency_models.describe("lookup")


# ---------------------------------------------------------------- each model

def test_lookup_answers_measured_widths_and_interpolates_bilinearly():
    def bilinear(a, b):
        return 0.1 + 0.002 * a + 0.001 * b + 3e-5 * a * b
    ms = [meas(replace(CONV, in_channels=a, out_channels=b), bilinear(a, b)) for a in WIDTHS for b in WIDTHS]
    noisy = replace(CONV, in_channels=32, out_channels=32)
    ms = [m if m.spec != noisy else meas(noisy, 2.0) for m in ms]   # a width the device handles badly
    lut = create("lookup").fit(ms)
    assert lut.predict_one(noisy) == 2.0
    assert lut.predict_one(replace(CONV, in_channels=12, out_channels=56)) == pytest.approx(bilinear(12, 56))
    # beyond the widest width: extrapolated linearly from the last two
    assert lut.predict_one(replace(CONV, in_channels=80, out_channels=8)) == pytest.approx(bilinear(80, 8))
    # a cell not measured is filled by the family's quadratic before interpolating
    holed = create("lookup").fit([m for m in ms if m.spec != noisy])
    assert holed.predict_one(noisy) == pytest.approx(bilinear(32, 32), rel=1e-6)


def test_lookup_depthwise_family_interpolates_along_its_one_width():
    ms = [meas(replace(DW, in_channels=n, out_channels=n, groups=n), 0.01 * n) for n in (8, 32, 64)]
    lut = create("lookup").fit(ms)
    assert lut.predict_one(replace(DW, in_channels=16, out_channels=16, groups=16)) == pytest.approx(0.16)


def test_full_lookup_grid_counts_every_width_pair():
    assert full_grid_size({"a": ([8, 16, 24], [8, 16], False), "dw": ([8, 16], [8, 16], True)}) == 3 * 2 + 2


def test_step_aware_quadratic_rounds_widths_up_to_the_device_step():
    ms = [meas(replace(CONV, in_channels=a, out_channels=b)) for a in (3,) for b in (8, 16, 24, 32, 40)]
    ms += [meas(replace(PW, in_channels=a, out_channels=b)) for a in (8, 16, 32, 40) for b in (8, 16, 32, 40)]
    step = create("step-quadratic", step_channels=8).fit(ms)
    plain = create("quadratic-m6").fit(ms)

    def pw(a, b):
        return replace(PW, in_channels=a, out_channels=b)
    assert step.predict_one(pw(12, 17)) == pytest.approx(step.predict_one(pw(16, 24)))
    assert step.predict_one(pw(9, 9)) == pytest.approx(plain.predict_one(pw(16, 16)))
    assert step.predict_one(pw(5, 16)) == pytest.approx(plain.predict_one(pw(5, 16)))   # below one step
    assert plain.predict_one(pw(12, 17)) < plain.predict_one(pw(16, 24))
    assert step.predict_one(pw(16, 24)) == pytest.approx(plain.predict_one(pw(16, 24)))   # on the grid: equal
    # never rounded past the widest measured width; 3 input channels stay 3
    assert step.predict_one(pw(38, 8)) == pytest.approx(plain.predict_one(pw(40, 8)))
    assert step.predict_one(pw(44, 8)) == pytest.approx(plain.predict_one(pw(44, 8)))
    stem = replace(CONV, in_channels=3, out_channels=20)
    assert step.predict_one(stem) == pytest.approx(plain.predict_one(replace(stem, out_channels=24)))


def test_flops_and_params_baselines_recover_their_laws():
    ms = [meas(replace(CONV, in_channels=a, out_channels=b), 0.05 + 0.5 * replace(
        CONV, in_channels=a, out_channels=b).flops / 1e9) for a in WIDTHS for b in WIDTHS]
    f = create("flops").fit(ms)
    assert f.ms_per_gflop_ == pytest.approx(0.5, rel=1e-6) and f.overhead_ms_ == pytest.approx(0.05, rel=1e-6)
    p = create("params").fit(ms)   # within one family, weights are proportional to FLOPs
    s = replace(CONV, in_channels=40, out_channels=24)
    assert p.predict_one(s) == pytest.approx(f.predict_one(s), rel=1e-6)


def test_forest_fits_its_training_points_and_refits_identically():
    ms = samples()
    forest = create("forest").fit(ms)
    pred = forest.predict([m.spec for m in ms])
    truth = np.array([m.timing.median_ms for m in ms])
    assert np.max(np.abs(pred / truth - 1)) < 0.15
    assert np.array_equal(model_from_dict(forest.to_dict()).predict([m.spec for m in ms]), pred)


def test_remainder_rescales_the_isolated_layers_first():
    """Networks that run at 0.6x their isolated layers' sum (plus a constant and
    an activation term): the layer scale is the first term after the constant,
    so two rows already find it; with every term the truth is recovered; the
    scale never goes below MIN_LAYER_SCALE."""
    from latency_models import activation_elements
    from latency_models.network import MIN_LAYER_SCALE
    net = NetworkLatencyModel("quadratic-m6").fit(samples())
    pairs = [(8, 8), (32, 16), (64, 64), (16, 48), (48, 8), (24, 24), (40, 56), (56, 16), (64, 8), (8, 64)]
    scaled = lambda specs: 0.6 * net.layers_ms(specs) + 0.05
    net.fit_remainder([(network(a, b), scaled(network(a, b))) for a, b in pairs[:3]])  # c0, c3
    assert net.remainder_ == pytest.approx((0.05, 0.0, 0.0, -0.4, -0.4), abs=1e-6)  # misaligned: the same scale
    truth = lambda specs: scaled(specs) + 1e-6 * activation_elements(specs)
    rows = [(network(a, b), truth(network(a, b))) for a, b in pairs]
    net.fit_remainder(rows)
    assert net.remainder_[3] == pytest.approx(-0.4, abs=0.02)  # activations and layers are nearly collinear
    for a, b in ((20, 36), (60, 12)):
        assert net.predict(network(a, b)) == pytest.approx(truth(network(a, b)), rel=1e-3)
    net.fit_remainder([(network(a, b), 0.2 * net.layers_ms(network(a, b))) for a, b in pairs])
    assert net.remainder_[3] == pytest.approx(MIN_LAYER_SCALE - 1)  # the layers keep their floor


def test_layout_reorders_inside_a_network_are_modelled():
    """A runtime with a blocked layout (aligned input widths) whose isolated
    layers pay a reorder of their input and output: inside a network a chain
    of blocked layers saves them and a change of layout pays one. Rows mixing
    aligned and misaligned widths recover the price of a reorder element, and
    the selector's per-layer costs add up to the network prediction."""
    from latency_models import reorder_saved_elements
    net = NetworkLatencyModel("quadratic-m6", align_channels=4).fit(samples())
    pairs = [(8, 8), (32, 16), (64, 64), (16, 48), (10, 30), (22, 14), (40, 58), (26, 26)]
    saved = lambda specs: sum(float(reorder_saved_elements(s, s.in_channels, s.out_channels, 4)) for s in specs)

    def truth(specs):
        return 0.1 + 0.8 * net.layers_ms(specs) - 2e-6 * saved(specs)
    assert saved(network(32, 16)) > 0 and saved(network(22, 14)) < saved(network(24, 16))
    net.fit_remainder([(network(a, b), truth(network(a, b))) for a, b in pairs])
    _, _, _, c3, c4 = net.remainder_coef()
    assert c3 == c4 and net.reorder_ms_per_element() == pytest.approx(2e-6, rel=1e-3)
    assert bool(net.misaligned(replace(CONV, in_channels=30)))
    assert not bool(net.misaligned(replace(CONV, in_channels=32)))
    assert not bool(net.misaligned(replace(CONV, in_channels=3)))  # an image's channels run their own kernel
    assert bool(net.misaligned(replace(CONV, in_channels=14)))  # no block given: only the alignment counts
    for a, b in ((18, 36), (60, 12)):
        specs = network(a, b)
        assert net.predict(specs) == pytest.approx(truth(specs), rel=1e-3)
        assert net.const_ms() + sum(net.layer_cost_ms(s) for s in specs) == pytest.approx(net.predict(specs))
    again = NetworkLatencyModel.from_dict(json.loads(json.dumps(net.to_dict())))
    assert again.predict(network(18, 36)) == pytest.approx(net.predict(network(18, 36)))
    plain = NetworkLatencyModel("quadratic-m6").fit(samples())  # no alignment measured: no layouts to reorder
    plain.fit_remainder([(network(a, b), truth(network(a, b))) for a, b in pairs])
    assert plain.reorder_ms_per_element() == 0.0 and float(plain.reorder_saved(CONV, 30, 30)) == 0.0


def test_reorders_saved_by_an_all_blocked_network_are_priced_without_an_activation_term():
    """Every width on the alignment: each layer saves reorders of about twice
    its activations, so reorder and activation elements are collinear. A
    network that runs at its layers minus a price per saved reorder (cheaper
    than its isolated layers by an amount that grows with its activations)
    is fitted with the reorder price, not with an activation price held at 0,
    and predicted across widths."""
    from latency_models import activation_elements, reorder_saved_elements
    from latency_models.network import independent
    net = NetworkLatencyModel("quadratic-m6", align_channels=4).fit(samples())
    pairs = [(8, 8), (16, 16), (32, 16), (64, 64), (16, 48), (48, 32)]
    saved = lambda specs: sum(float(reorder_saved_elements(s, s.in_channels, s.out_channels, 4)) for s in specs)
    truth = lambda specs: 0.05 + 0.9 * net.layers_ms(specs) - 3e-6 * saved(specs)
    nets = [network(a, b) for a, b in pairs]
    assert not independent(np.array([saved(n) for n in nets]), np.array([activation_elements(n) for n in nets]))
    net.fit_remainder([(n, truth(n)) for n in nets], reference=3)
    assert net.reorder_ms_per_element() == pytest.approx(3e-6, rel=1e-2) and net.remainder_coef()[1] == 0.0
    assert net.fit_error_rel < 1e-3
    for a, b in ((24, 40), (56, 8)):
        assert net.predict(network(a, b)) == pytest.approx(truth(network(a, b)), rel=1e-3)


def test_off_alignment_widths_are_predicted_from_their_own_samples():
    """A device whose plain kernels (input width not a multiple of 4, from one
    block of 8 up: narrower inputs are read as they are by the blocked
    kernels) cost 1.6x and do not round to the step: the step-aware quadratic
    keeps the aligned law and learns the misaligned one from misaligned
    samples alone."""
    def device(spec):
        n = spec.in_channels
        if n % 4 and n >= 8:
            return 1.6 * (0.02 + spec.flops / 2e10)
        up = replace(spec, in_channels=-(-n // 8) * 8 if n > 8 else n, out_channels=-(-spec.out_channels // 8) * 8)
        return 0.02 + up.flops / 2e10
    widths_on, widths_off = (8, 16, 24, 32, 48, 64), (6, 13, 22, 30, 45, 61)
    ms = [meas(replace(CONV, in_channels=a, out_channels=b), device(replace(CONV, in_channels=a, out_channels=b)))
          for a in widths_on + widths_off for b in widths_on]
    model = create("step-quadratic", step_channels=8, align_channels=4).fit(ms)
    plain = create("step-quadratic", step_channels=8).fit(ms)
    probe = [replace(CONV, in_channels=a, out_channels=b) for a in (10, 27, 37, 58) for b in (12, 40)]
    err = lambda m: max(abs(float(m.predict([s])[0]) / device(s) - 1) for s in probe)
    assert err(model) < 0.05 < err(plain)
    aligned = [replace(CONV, in_channels=a, out_channels=b) for a in (20, 40) for b in (12, 40)]
    assert max(abs(float(model.predict([s])[0]) / device(s) - 1) for s in aligned) < 0.05
    again = model_from_dict(json.loads(json.dumps(model.to_dict())))
    assert float(again.predict([probe[0]])[0]) == pytest.approx(float(model.predict([probe[0]])[0]))


def test_remainder_is_fitted_on_relative_error():
    """A narrow network's 0.1 ms counts as much as a wide one's 10 ms: with a
    constant that cannot fit both, the relative misses come out balanced."""
    ms = samples()
    net = NetworkLatencyModel("quadratic-m6").fit(ms)
    narrow, wide = network(8, 8), network(64, 64)
    layers_n, layers_w = net.layers_ms(narrow), net.layers_ms(wide)
    net.fit_remainder([(narrow, layers_n * 0.8), (wide, layers_w * 1.2)])   # two rows: the constant only
    assert net.remainder_[1:] == (0.0, 0.0, 0.0, 0.0)
    err_n = net.predict(narrow) / (layers_n * 0.8) - 1
    err_w = net.predict(wide) / (layers_w * 1.2) - 1
    assert abs(err_n) < 0.5 and abs(err_w) < 0.5


def test_accuracy_metrics():
    acc = accuracy([1.0, 2.2, 2.9, 4.0], [1.0, 2.0, 3.0, 5.0])
    e = np.array([0.0, 0.1, -1 / 30, -0.2])
    assert acc.count == 4
    assert acc.rmspe_pct == pytest.approx(100 * np.sqrt(np.mean(e ** 2)))
    assert acc.max_error_pct == pytest.approx(20.0)
    assert acc.mean_error_pct == pytest.approx(100 * e.mean())
    assert acc.within_5_pct == 50.0 and acc.within_10_pct == 75.0
    with pytest.raises(ValueError):
        accuracy([1.0], [0.0])
    with pytest.raises(ValueError):
        accuracy([1.0, 2.0], [1.0])


def test_a_conv_narrower_than_a_block_reads_its_plain_input_blocked():
    """ONNX Runtime's rule (its optimised graphs, AVX-512, block 16): a conv
    that is not grouped with fewer input channels than a block runs the
    blocked kernels on its plain input whatever the width, so it is never off
    the alignment and pays no input reorder; a depthwise conv of 14 channels
    runs the plain kernels; from one block up the alignment decides."""
    from latency_models import reorder_saved_elements
    from latency_models.quadratic import misaligned
    dw = replace(CONV, in_channels=14, out_channels=14, groups=14)
    assert not misaligned(CONV, np.array([3, 11, 14, 16, 20]), 4, 16).any()
    assert misaligned(CONV, np.array([18, 66, 105]), 4, 16).all()
    assert bool(misaligned(dw, 14, 4, 16)) and not bool(misaligned(replace(dw, in_channels=12, groups=12), 12, 4, 16))
    out_el = CONV.batch * CONV.out_hw[0] * CONV.out_hw[1]
    in_el = CONV.batch * CONV.height * CONV.width
    # 14 -> 32: blocked, its plain input read as it is; alone it reorders only its output, as a chain does not
    assert float(reorder_saved_elements(CONV, 14, 32, 4, 16)) == pytest.approx(32 * out_el)
    # 32 -> 32 pays both alone; 32 -> 14 feeds layers that read 14 channels plain: a reorder inside too
    assert float(reorder_saved_elements(CONV, 32, 32, 4, 16)) == pytest.approx(32 * in_el + 32 * out_el)
    assert float(reorder_saved_elements(CONV, 32, 14, 4, 16)) == pytest.approx(32 * in_el)
    # without a block the earlier rule: 14 channels are off the alignment, a plain layer
    assert float(reorder_saved_elements(CONV, 14, 32, 4)) == pytest.approx(-32 * out_el)
    net = NetworkLatencyModel("quadratic-m6", step_channels=16, align_channels=4)
    assert float(net.reorder_saved(CONV, 14, 32)) == pytest.approx(32 * out_el)


def test_the_reference_row_weighs_most_in_the_remainder():
    """Rows the remainder cannot all fit (the first, the original network, runs
    10 % slower than the law the others follow): given as the reference, the
    fit passes within a few tenths of a percent of it."""
    net = NetworkLatencyModel("quadratic-m6").fit(samples())
    pairs = [(64, 64), (8, 8), (32, 16), (16, 48), (48, 8), (24, 24), (40, 56)]
    rows = [(network(a, b), 0.6 * net.layers_ms(network(a, b)) + 0.05) for a, b in pairs]
    rows[0] = (rows[0][0], rows[0][1] * 1.1)
    err = lambda: abs(net.predict(rows[0][0]) / rows[0][1] - 1)
    net.fit_remainder(rows)
    plain = err()
    net.fit_remainder(rows, reference=0)
    assert err() < 0.005 < plain


def test_the_reorder_term_is_fitted_only_where_reorders_say_more_than_activations():
    from latency_models.network import independent
    assert not independent(np.array([2.0, 4.1, 6.0]), np.array([1.0, 2.0, 3.0]))  # all blocked: twice the activations
    assert independent(np.array([2.0, 0.5, 6.0]), np.array([1.0, 2.0, 3.0]))  # layouts mixed in one row
    assert independent(np.array([2.0, 0.0, 6.0]), np.array([1.0, 2.0, 3.0]))  # a network with no blocked layer
    assert not independent(np.zeros(3), np.array([1.0, 2.0, 3.0]))  # nothing blocked anywhere


def test_the_fit_error_says_how_far_the_model_misses_its_own_networks():
    """Networks the remainder's terms can describe are fitted exactly (fit
    error ~0); the same networks read alternately 30 % slow and 20 % fast (a
    layer profile and networks measured at moments the host ran differently)
    cannot be, and the fit error says by how much."""
    net = NetworkLatencyModel("quadratic-m6").fit(samples())
    assert net.fit_error_rel == 0.0  # no whole network yet
    pairs = [(8, 8), (32, 16), (64, 64), (16, 48), (48, 8), (24, 24), (40, 56), (56, 16), (64, 8), (8, 64)]
    exact = [(network(a, b), 0.6 * net.layers_ms(network(a, b)) + 0.05) for a, b in pairs]
    assert net.fit_remainder(exact).fit_error_rel < 1e-3
    scattered = [(specs, ms * (1.3 if i % 2 else 0.8)) for i, (specs, ms) in enumerate(exact)]
    assert net.fit_remainder(scattered).fit_error_rel > 0.1
