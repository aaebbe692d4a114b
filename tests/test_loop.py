"""The closed loop, branch by branch, deterministically.

The controller is driven by a fake selector (one group; a plan is a width,
its predicted latency 0.1 ms per channel) and a fake meter that measures
``predicted x bias`` against a fixed reference, so every decision can be
checked exactly. End to end, :func:`hwprune.prune` runs on the simulated
runtime of ``simruntime.py``, whose whole-model measurements carry a known bias.
"""
import archs
import pytest

import hwprune
from hwprune import zoo
from hwprune.loop.between import rescue
from hwprune.loop.controller import ACCEPT_LOW, AIM, MAX_NUDGES, NUDGE_STEP, Budgets, Controller
from hwprune.loop.engine import Round, count_params  # Round stays importable from the engine
from hwprune.loop.meter import Reading
from hwprune.select.evaluator import Selection
from hwprune.select.problem import Constraints

MS_PER_CHANNEL = 0.1
REFERENCE_MS = 10.0


# ---------------------------------------------------------------- fakes

class FakeSelector:
    """The widest of ``widths`` (up to ``max_width``, standing for a FLOPs
    bound) whose predicted latency meets every target (the narrowest when none
    does, as the engine's selector returns the smallest plan); records each
    call's targets and start."""

    def __init__(self, widths, devices=("d",), max_width=None):
        self.widths, self.devices, self.calls = sorted(widths), devices, []
        self.max_width = max_width or self.widths[-1]

    def __call__(self, targets_ms, start):
        self.calls.append((dict(targets_ms), start))
        fits = [w for w in self.widths if w <= self.max_width
                and all(w * MS_PER_CHANNEL <= t for t in targets_ms.values())]
        w = max(fits, default=self.widths[0])
        return Selection({0: (w,)}, {0: list(range(w))}, w * MS_PER_CHANNEL, float(w), bool(fits),
                         selector="fake", status="heuristic",
                         usage={f"latency_ms[{d}]": w * MS_PER_CHANNEL for d in self.devices})

    def targets(self, i, device="d"):
        return self.calls[i][0][device]


class FakeMeter:
    """Measures width w on device d at ``w x 0.1 ms x bias(d, w)``, as a ratio to a fixed reference;
    ``interval(d, w)``: the reading's relative half-width and whether it is sure (default: exact)."""

    def __init__(self, bias=lambda d, w: 1.0, devices=("d",), interval=None):
        self.bias, self.devices, self.measured, self.interval = bias, devices, [], interval

    def reference_ms(self, device):
        return REFERENCE_MS

    def measure(self, width):
        self.measured.append(width)
        out = {}
        for d in self.devices:
            r = width * MS_PER_CHANNEL * self.bias(d, width) / REFERENCE_MS
            half, sure = self.interval(d, width) if self.interval else (0.0, True)
            out[d] = Reading(r, 0.0) if not self.interval else Reading(r, 0.0, r / (1 + half), r * (1 + half), sure,
                                                                       rounds=20, seconds=30.0)
        return out


def table(**factors):
    """A bias by width: ``table(w48=1.2)`` measures width 48 at 1.2x its prediction, others at 1.0x."""
    return lambda d, w: factors.get(f"w{w}", 1.0)


def controller(widths, budgets, bias=lambda d, w: 1.0, primary="d", max_rounds=6, max_width=None, interval=None):
    devices = tuple(dict.fromkeys([primary, *budgets]))
    sel, meter = FakeSelector(widths, devices, max_width), FakeMeter(bias, devices, interval)
    loop = Controller(sel, lambda s: s.choice[0][0], meter, Budgets(dict(budgets), primary),
                      {0: (max(widths),)}, max_rounds=max_rounds)
    return loop, sel, meter


FINE = range(1, 65)             # widths 1..64: predicted 0.1 .. 6.4 ms
COARSE = (16, 32, 48, 64)


# ---------------------------------------------------------------- accept

def test_today_numbers():
    assert (AIM, ACCEPT_LOW, NUDGE_STEP, MAX_NUDGES) == (0.965, 0.93, 0.02, 4)


def test_milliseconds_and_a_budget_fraction_follow_the_current_reference():
    """A reading is a ratio: its ms (and a budget given as a share of the
    original) move with the reference; a round reports the ms at its time."""
    meter = FakeMeter()
    budgets = Budgets({"d": 1.0}, "d", fraction=0.5)  # 1.0: the placeholder
    assert budgets.now(meter) == {"d": pytest.approx(5.0)}
    loop = Controller(FakeSelector(FINE), lambda s: s.choice[0][0], meter, budgets, {0: (64,)})
    out = loop.run()
    assert out.best.model == 48 and out.rounds[0].target_ms == pytest.approx(5.0 * AIM)
    meter.reference_ms = lambda device: 11.0
    assert budgets.now(meter) == {"d": pytest.approx(5.5)}
    assert loop.measured_ms(out.best, "d") == pytest.approx(4.8 * 1.1)
    assert out.rounds[0].measured_ms == pytest.approx(4.8)


def test_accepts_the_first_round_within_the_band():
    loop, sel, meter = controller(FINE, {"d": 5.0})
    out = loop.run()
    assert sel.calls == [({"d": pytest.approx(5.0 * AIM)}, None)]
    assert meter.measured == [48] and out.best.model == 48 and out.note == ""
    r = out.rounds[0]
    assert isinstance(r, Round) and r.target_ms == pytest.approx(4.825) and r.predicted_ms == pytest.approx(4.8)
    assert r.measured_ms == pytest.approx(4.8) and r.status == "heuristic" and r.devices == {}
    assert loop.used(out.best) == pytest.approx(0.96) and loop.anchor is None


def test_accepts_a_plan_under_the_band_at_full_width():
    loop, sel, _ = controller(FINE, {"d": 10.0})
    out = loop.run()
    assert len(out.rounds) == 1 and out.best.model == 64 and loop.used(out.best) == pytest.approx(0.64)
    assert len(sel.calls) == 1 and loop.nudges == 0 and loop.anchor is None


def test_without_a_latency_budget_one_round_is_measured():
    """Only a FLOPs bound (here: at most 32 channels): the plan is measured and reported, nothing to correct."""
    loop, sel, _ = controller(FINE, {}, max_width=32)
    out = loop.run()
    assert sel.calls == [({}, None)] and len(out.rounds) == 1 and out.rounds[0].target_ms is None
    assert out.best.model == 32 and out.note == "" and loop.used(out.best) == 0.0


# ---------------------------------------------------------------- re-aim

def test_re_aims_from_the_measured_plan_by_its_measured_over_predicted_ratio():
    """The runtime measures 1.2x the prediction everywhere: the second target
    is the first plan's predicted x budget x aim / its measured, and lands."""
    loop, sel, meter = controller(FINE, {"d": 5.0}, bias=lambda d, w: 1.2)
    out = loop.run()
    first, second = out.rounds
    assert first.measured_ms == pytest.approx(5.76)
    assert sel.targets(1) == pytest.approx(first.predicted_ms * 5.0 * AIM / first.measured_ms)
    assert second.target_ms == pytest.approx(sel.targets(1))
    assert sel.calls[1][1] == {0: (48,)}  # the selector starts from the anchor
    assert loop.anchor is out.trials[0] and meter.measured == [48, 40]
    assert out.best.model == 40 and loop.used(out.best) == pytest.approx(0.96) and out.note == ""


def test_re_aims_from_the_nearest_measured_plan_then_between_the_bracketing_plans():
    """Round 1 (width 48) measures 1.05 x budget, round 2 (44) 0.616: the
    nearest to the aim is round 1, so the targets are re-aimed from it again
    and the selector repeats width 44. The nudge down (round 1 is over the
    budget) would leave the bracket the two measured plans make around the
    aim (predicted 4.4 under it, 4.8 over it), so the target is the secant
    through them instead: width 47, which lands in the band."""
    loop, sel, meter = controller(FINE, {"d": 5.0}, bias=table(w48=1.09375, w44=0.7), max_rounds=3)
    out = loop.run()
    from_first = 4.8 * (5.0 * AIM) / 5.25
    assert [sel.targets(i) for i in range(3)] == pytest.approx([5.0 * AIM, from_first, from_first])
    assert sel.calls[2][1] == {0: (48,)} and loop.anchor is out.trials[0]
    secant = 4.4 + (5.0 * AIM - 3.08) * (4.8 - 4.4) / (5.25 - 3.08)
    assert sel.targets(3) == pytest.approx(secant)
    assert meter.measured == [48, 44, 47]  # the third selection (44 again) was not measured
    assert out.best.model == 47 and loop.used(out.best) == pytest.approx(0.94) and out.note == ""


def test_a_linear_re_aim_past_a_plan_that_overshot_is_kept_inside_the_bracket():
    """Width 40 measures 0.8 x budget, so the linear re-aim asks for 0.965/0.8
    of its prediction (width 48); 48 overshoots (1.2x), and re-aiming from 40
    again would ask for 48 again: the target is the secant through 40 and 48."""
    loop, sel, meter = controller(FINE, {"d": 5.0}, bias=table(w48=1.25), max_rounds=3)
    loop.run()
    assert meter.measured[:2] == [48, 40] or meter.measured[:1] == [48]
    lo, hi = loop.bracket("d")
    assert lo is not None and hi is not None and lo.predicted_ms("d") < hi.predicted_ms("d")
    t = loop.within_bracket({"d": hi.predicted_ms("d") + 1.0})["d"]
    assert lo.predicted_ms("d") < t < hi.predicted_ms("d")


# ---------------------------------------------------------------- nudge

def test_nudges_a_repeated_plan_2_percent_more_each_time_and_stops_after_4():
    """Width 32 uses 0.8 of the budget and the next grid point (48) is far:
    re-aiming repeats 32, so the targets move up x1.02, x1.04, x1.06, x1.08,
    then the loop stops with the plan it has."""
    loop, sel, meter = controller(COARSE, {"d": 4.0})
    out = loop.run()
    targets = [sel.targets(i) for i in range(len(sel.calls))]
    assert len(targets) == 2 + MAX_NUDGES and targets[1] == pytest.approx(targets[0])
    steps = [b / a for a, b in zip(targets[1:], targets[2:])]
    assert steps == pytest.approx([1.02, 1.04, 1.06, 1.08])
    assert meter.measured == [32] and loop.nudges == MAX_NUDGES + 1
    assert out.best.model == 32 and out.certified
    assert out.note == "the plan uses 80 % of the budget; the selector offered no slower plan under it in 1 round"


def test_a_nudge_that_finds_a_new_plan_measures_it():
    loop, sel, meter = controller((16, 32, 41, 64), {"d": 4.0}, bias=table(w41=0.95))
    out = loop.run()
    assert meter.measured == [32, 41] and loop.nudges == 3
    assert out.rounds[1].target_ms == pytest.approx(4.0 * AIM * 1.02 * 1.04 * 1.06)
    assert out.best.model == 41 and loop.used(out.best) == pytest.approx(4.1 * 0.95 / 4.0)


def test_nudges_down_when_even_the_smallest_plan_is_over_the_budget():
    loop, sel, meter = controller(COARSE, {"d": 1.0})
    out = loop.run()
    targets = [sel.targets(i) for i in range(len(sel.calls))]
    assert [b / a for a, b in zip(targets[1:], targets[2:])] == pytest.approx([1 / 1.02, 1 / 1.04, 1 / 1.06,
                                                                               1 / 1.08])
    assert meter.measured == [16] and out.best.model == 16
    assert out.note == "budget not met after 1 rounds; returning the fastest network measured"


def test_without_an_anchor_the_nudge_reads_the_last_measured_plan():
    loop, sel, _ = controller(FINE, {"d": 5.0})
    loop.run()
    loop.nudges = 0
    assert loop.nudge({"d": 4.0}) is None and loop.nudges == 1  # the last plan (0.96) is in the band


# ---------------------------------------------------------------- several devices

def test_several_devices_the_worst_device_decides():
    """On its own, device a would accept width 48 (0.96); b measures 1.2x and
    takes 1.152 of its budget, so both are re-aimed, each from its own ratio."""
    bias = lambda d, w: 1.2 if d == "b" else 1.0
    loop, sel, _ = controller(FINE, {"a": 5.0, "b": 5.0}, bias=bias, primary="a")
    out = loop.run()
    first, second = out.trials
    assert loop.used(first) == pytest.approx(1.152) and len(out.rounds) == 2
    assert sel.calls[1][0] == pytest.approx({"a": 4.825, "b": 4.8 * 4.825 / 5.76})
    assert set(out.rounds[0].devices) == {"a", "b"}
    assert out.rounds[0].devices["b"]["measured_ms"] == pytest.approx(5.76)
    assert out.rounds[1].target_ms == pytest.approx(4.825)  # the primary device's own
    assert out.best.model == 40 and loop.used(second) == pytest.approx(0.96)


def test_a_primary_device_without_budget_is_measured_and_reported_but_does_not_decide():
    bias = lambda d, w: 3.0 if d == "p" else 1.0
    loop, sel, _ = controller(FINE, {"b": 5.0}, bias=bias, primary="p")
    out = loop.run()
    assert len(out.rounds) == 1 and out.rounds[0].target_ms is None
    assert out.rounds[0].measured_ms == pytest.approx(14.4)
    assert out.rounds[0].devices["b"]["target_ms"] == pytest.approx(4.825)


# ---------------------------------------------------------------- give up

def test_gives_up_after_max_rounds_returning_the_fastest_measured_plan():
    """Every plan measures 5.5 ms against a 5 ms budget, but width 48 measures
    5.1: it stays the anchor, and each new plan comes from nudging its targets
    down (1/1.02, 1/1.04, ...). After 4 rounds the loop gives up with width 48."""
    loop, sel, meter = controller(FINE, {"d": 5.0}, bias=lambda d, w: (5.1 if w == 48 else 5.5) / (0.1 * w),
                                  max_rounds=4)
    out = loop.run()
    assert meter.measured == [48, 45, 44, 43] and len(out.rounds) == 4 and loop.nudges == 2
    assert all(loop.used(t) > 1.0 for t in out.trials) and loop.anchor is out.trials[0]
    assert out.best.model == 48
    assert out.note == "budget not met after 4 rounds; returning the fastest network measured"


def test_after_max_rounds_the_plan_meeting_the_budget_with_most_latency_used_wins():
    """Measured: 48 at 0.9 of the budget, 51 at 0.8, then (nudged up from 48) 52 at 1.05."""
    loop, _, meter = controller(FINE, {"d": 5.0}, bias=table(w48=4.5 / 4.8, w51=4.0 / 5.1, w52=5.25 / 5.2),
                                max_rounds=3)
    out = loop.run()
    assert meter.measured == [48, 51, 52] and loop.nudges == 1
    assert out.best.model == 48 and out.certified
    assert out.note.startswith("the plan uses 90 % of the budget: the next plan measured used 105 % (its interval "
                               "up to 105 %) and the selector found none between")


# ---------------------------------------------------------------- certified: the interval decides

def test_a_reading_without_an_interval_is_exact():
    r = Reading(0.5, 0.1)
    assert (r.ratio_lo, r.ratio_hi, r.sure, r.half_width_rel) == (0.5, 0.5, True, 0.0)


def test_accepts_only_when_the_upper_end_of_the_interval_is_under_the_budget():
    """Width 48 measures 0.96 of the budget, +-5 %: its upper end (1.008) is
    over, so it is not accepted though its point estimate is in the band; the
    selector repeats 48, the nudge goes down, and width 47 (0.94, +-1 %, upper
    end 0.949) is accepted."""
    loop, sel, meter = controller(FINE, {"d": 5.0}, interval=lambda d, w: (0.05 if w == 48 else 0.01, True))
    out = loop.run()
    assert meter.measured == [48, 47] and loop.nudges == 1
    assert sel.targets(2) == pytest.approx(5.0 * AIM / (1 + NUDGE_STEP))
    assert loop.used(out.trials[0]) == pytest.approx(0.96) and loop.used_hi(out.trials[0]) == pytest.approx(1.008)
    assert out.best.model == 47 and out.certified and out.note == ""
    assert loop.used_hi(out.best) == pytest.approx(0.94 * 1.01)
    r = out.rounds[0]
    assert r.measured_lo_ms == pytest.approx(4.8 / 1.05) and r.measured_hi_ms == pytest.approx(4.8 * 1.05)


@pytest.mark.parametrize("hi_rel,accepted", [(0.0416, True), (0.0417, False)])
def test_the_acceptance_threshold_is_the_budget_itself(hi_rel, accepted):
    """0.96 x (1 + 0.0416) = 0.99994 is under the budget; 0.96 x 1.0417 = 1.00003 is not. The plan not
    accepted is the only one, in doubt, after the one round allowed: it gets one more reading beyond
    ``max_rounds``, and pooled (+-2.9 %) it is certified."""
    loop, _, meter = controller(FINE, {"d": 5.0}, max_rounds=1, interval=lambda d, w: (hi_rel, True))
    out = loop.run()
    assert loop.accepts(out.trials[0]) is accepted and out.certified
    assert meter.measured == ([48] if accepted else [48, 48])
    assert out.rounds[-1].status == ("heuristic" if accepted else "re-measured")


def test_a_point_estimate_under_the_budget_with_the_interval_over_it_is_not_certified():
    """Every plan's interval is +-12 % and the meter hit its cap (not sure), one
    round allowed: no plan is certified; the answer is the plan whose point
    estimate meets the budget, said to be uncertified, with its interval."""
    loop, _, meter = controller(FINE, {"d": 5.0}, max_rounds=1, interval=lambda d, w: (0.12, False))
    out = loop.run()
    assert len(out.trials) == 1 and all(loop.used_hi(t) > 1.0 for t in out.trials)
    assert not out.certified and loop.used(out.best) <= 1.0
    assert out.best.model == max(t.model for t in out.trials if loop.used(t) <= 1.0)
    lo, hi = 0.1 * out.best.model / 1.12, 0.1 * out.best.model * 1.12
    assert f"interval is {lo:.3f}-{hi:.3f} ms (+-12.0 %) against the budget 5.000 ms" in out.note
    assert "too noisy to certify the budget" in out.note and "20 rounds, 30 s" in out.note


def test_on_a_noisy_host_the_aim_drops_until_a_plan_certifies():
    """Readings no narrower than +-6 % (the meter's cap): the first plan, aimed
    at 0.965 of the budget, cannot certify; the aim drops to 0.995 / 1.06 and
    the acceptance share with it, and the next plan is certified. At +-12 %
    the acceptance share stops at its floor, 0.90."""
    loop, sel, _ = controller(FINE, {"d": 5.0}, max_rounds=3, interval=lambda d, w: (0.06, False))
    out = loop.run()
    assert loop.aim_now() == pytest.approx(0.995 / 1.06) and loop.noise() == pytest.approx(0.06)
    assert loop.accept_low_now() == pytest.approx(ACCEPT_LOW - (AIM - 0.995 / 1.06))
    assert len(out.trials) == 2 and sel.targets(1) == pytest.approx(5.0 * 0.995 / 1.06)
    assert out.certified and loop.used_hi(out.best) <= 1.0 and loop.used(out.best) >= loop.accept_low_now()
    wide, _, _ = controller(FINE, {"d": 5.0}, max_rounds=3, interval=lambda d, w: (0.12, False))
    wide.run()
    assert wide.aim_now() == pytest.approx(0.995 / 1.12) and wide.accept_low_now() == pytest.approx(0.90)


def test_a_narrow_interval_just_over_the_budget_is_not_called_noise():
    loop, _, _ = controller(FINE, {"d": 5.0}, max_rounds=1, bias=lambda d, w: 0.99 / 0.96,
                            interval=lambda d, w: (0.015, True))
    out = loop.run()
    assert not out.certified and "too noisy" not in out.note
    assert "no plan measured in 1 rounds was certified" in out.note


def test_the_worst_device_interval_decides_acceptance():
    """Device a is exact; b measures the same but +-8 %: b's upper end (1.037) blocks acceptance, and one
    more reading could not lower it under the budget (0.96 x 1.08 ** sqrt(1/2) = 1.013), so none is taken."""
    loop, _, meter = controller(FINE, {"a": 5.0, "b": 5.0}, primary="a", max_rounds=1,
                                interval=lambda d, w: (0.08 if d == "b" else 0.0, True))
    out = loop.run()
    assert loop.used(out.best) == pytest.approx(0.96) and loop.used_hi(out.best) == pytest.approx(0.96 * 1.08)
    assert meter.measured == [48]
    assert not out.certified and "on b" in out.note


# ---------------------------------------------------------------- end to end, simulated runtime

@pytest.fixture
def sim_loop(sim_devices):
    """resnet20 on a simulated runtime whose whole-model measurements are
    1.6x the layer profile at half the parameters and exact at both ends
    (calibrated on narrow networks and the full one, so mid-width plans are
    mispredicted), and on a plain one."""
    model, x = zoo.create("resnet20")
    full = count_params(model)

    def bump(m):
        f = count_params(m) / full
        return 1.0 + 2.4 * f * (1 - f)
    sim_devices.add("sim-bump", bound="flops", bias=bump)
    sim_devices.add("sim-plain", bound="memory", step=16)
    return model, x


def test_prune_on_a_biased_runtime_re_aims_and_meets_the_budget(sim_loop, store):
    model, x = sim_loop
    res = hwprune.prune(model, x, device="sim-bump", budget_fraction=0.55, store=store)
    assert len(res.rounds) >= 2 and res.rounds[0].measured_ms > res.budget_ms  # mispredicted, corrected
    first = res.rounds[0]
    assert res.rounds[1].target_ms == pytest.approx(first.predicted_ms * res.budget_ms * AIM / first.measured_ms)
    assert ACCEPT_LOW * res.budget_ms <= res.measured_ms <= res.budget_ms and res.note == ""
    assert res.measured_ms == pytest.approx(res.rounds[-1].measured_ms)
    assert res.stats["params_after"] < res.stats["params_before"] and not res.unchanged


def test_prune_with_two_devices_meets_both_budgets(sim_loop, store):
    model, x = sim_loop
    plain = hwprune.measure_latency(model, x, device="sim-plain")
    # channel widths only: removing blocks makes the primary device the tighter one here
    res = hwprune.prune(model, x, device="sim-bump", budget_fraction=0.7, store=store, granularity="channel",
                        constraints=Constraints(latency_ms=(("sim-plain", 0.6 * plain),)))
    used = {d: v["measured_ms"] / v["budget_ms"] for d, v in res.devices.items()}
    assert ACCEPT_LOW <= used["sim-plain"] <= 1.0  # the tighter device decides ...
    assert used["sim-bump"] < ACCEPT_LOW  # ... though the primary alone would not have stopped here
    assert all(set(r.devices) == {"sim-bump", "sim-plain"} for r in res.rounds)


def test_prune_unchanged_when_the_budget_is_above_the_baseline(sim_loop, store):
    model, x = sim_loop
    far = hwprune.prune(model, x, device="sim-plain", budget_fraction=2.0, store=store)
    near = hwprune.prune(model, x, device="sim-plain", budget_fraction=1.05, store=store)  # decided after calibration
    for res in (far, near):
        assert res.unchanged and res.model is model and res.rounds == ()
        assert "above the measured baseline" in res.note and res.measured_ms == res.baseline_ms


def test_prune_rejects_fewer_than_one_round(sim_loop, store):
    model, x = sim_loop
    with pytest.raises(hwprune.UserError, match="max_rounds"):
        hwprune.prune(model, x, device="sim-plain", budget_fraction=0.5, store=store, max_rounds=0)


def test_prune_on_a_tiny_model_with_a_constant_bias_is_calibrated(sim_devices, store):
    """A constant bias is absorbed by the calibrated remainder: the plan lands in the band."""
    sim_devices.add("sim-slow", bound="flops", bias=1.3)
    model, x = archs.create("concat")
    res = hwprune.prune(model, x, device="sim-slow", budget_fraction=0.6, store=store)
    assert ACCEPT_LOW * res.budget_ms <= res.measured_ms <= res.budget_ms


def test_when_no_offered_plan_meets_the_budget_the_calibration_networks_are_measured():
    """Every plan the selector offers measures 1.5x its prediction (a latency
    model wrong everywhere it looks): after its rounds the loop measures the
    networks measured under the budget before, slowest first, and settles on
    the first that meets it."""
    loop, sel, meter = controller(COARSE, {"d": 2.0}, bias=lambda d, w: 1.5 if w in COARSE else 1.0, max_rounds=3)
    out = loop.run()
    assert not loop.met() and "budget not met" in out.note
    def selection(w):
        return Selection({0: (w,)}, {0: list(range(w))}, w * MS_PER_CHANNEL, float(w), True, selector="calibration",
                         status="measured", usage={"latency_ms[d]": w * MS_PER_CHANNEL})
    rescue(loop, [selection(w) for w in (16, 19, 15, 10)])  # 16: measured already
    out = loop.outcome()
    assert meter.measured == [16, 19] and loop.met()
    assert out.best.model == 19 and out.certified and out.best.selection.selector == "calibration"


# ---------------------------------------------------------------- widen: one grid step, by measurement

def stuck(widths, at, devices=("d",)):
    """A selector that offers only width ``at`` (its latency model sees nothing
    between it and the next plan), and the plans one step wider than a width
    among ``widths``, predicted like FakeSelector's."""
    plan = FakeSelector(widths, devices)
    one = lambda w: plan({d: w * MS_PER_CHANNEL for d in devices}, None)

    def wider(choice):
        w = choice[0][0]
        return [one(v) for v in sorted(widths) if v > w][:1]
    return (lambda targets, start: one(at)), wider


def widening(widths, at, budget, bias=lambda d, w: 1.0, max_rounds=6):
    select, wider = stuck(widths, at)
    meter = FakeMeter(bias)
    loop = Controller(select, lambda s: s.choice[0][0], meter, Budgets({"d": budget}, "d"), {0: (max(widths),)},
                      max_rounds=max_rounds, wider=wider)
    return loop, meter


def test_widens_one_step_at_a_time_until_a_plan_is_in_the_band():
    """32 uses 0.8 of the budget and the selector offers nothing else: 36 is
    estimated at 0.9 (under the aim) and measured there, still under the band;
    40 is estimated at 1.0 (within reach), measured at 0.95 and accepted."""
    loop, meter = widening((16, 32, 36, 40, 64), 32, 4.0, bias=table(w40=0.95))
    out = loop.run()
    assert meter.measured == [32, 36, 40] and out.best.model == 40 and out.note == ""
    assert [r.status for r in out.rounds][1:] == ["heuristic", "heuristic"]  # FakeSelector's plans
    assert out.rounds[1].target_ms == pytest.approx(4.0 * 0.9)  # the step's estimate, as its target


def test_widening_estimates_from_the_measured_plan_not_the_model_alone():
    """32 measures 1.1x its prediction (0.88 of the budget): 36, predicted 3.6
    ms, is estimated at 0.88 x 36 / 32 = 0.99 of the budget, over the aim but
    within reach; measured 1.1x too (0.99), it is accepted."""
    loop, meter = widening((16, 32, 36, 64), 32, 4.0, bias=lambda d, w: 1.1)
    out = loop.run()
    assert meter.measured == [32, 36] and out.best.model == 36
    assert out.rounds[1].target_ms == pytest.approx(4.0 * 0.88 * 36 / 32)


def test_widening_stops_at_a_latency_cliff_and_says_how_far_it_is():
    loop, meter = widening((16, 32, 64), 32, 4.0)
    out = loop.run()
    assert meter.measured == [32] and out.best.model == 32
    assert out.note == ("the plan uses 80 % of the budget; the selector offered no slower plan under it in 1 round; "
                        "every plan one grid step wider is estimated at 160 % of the budget or more (measured only "
                        "up to 115 %)")


def test_a_widened_plan_measured_over_the_budget_is_not_kept():
    loop, meter = widening((16, 32, 34, 64), 32, 4.0, bias=table(w34=1.5))
    out = loop.run()
    assert meter.measured == [32, 34] and out.best.model == 32 and out.certified
    assert out.note.startswith("the plan uses 80 % of the budget: the next plan measured used 127 %")
    assert out.note.endswith("keep less importance); 1 plan one grid step wider measured")


def test_widening_stays_within_max_rounds():
    loop, meter = widening((16, 32, 33, 34, 35, 36, 64), 32, 4.0, max_rounds=3)
    out = loop.run()
    assert meter.measured == [32, 33, 34] and out.best.model == 34
    assert out.note.endswith("; 2 plans one grid step wider measured")


# ---------------------------------------------------------------- measuring a plan in doubt again

def test_pooled_readings_narrow_the_interval_by_a_square_root_of_two():
    from hwprune.loop.meter import pool
    a = Reading(0.96, 0.1, 0.96 / 1.03, 0.96 * 1.03, False, rounds=20, seconds=30.0)
    p = pool([a, a])
    assert p.ratio == pytest.approx(0.96) and p.half_width_rel == pytest.approx(1.03 ** (1 / 2 ** 0.5) - 1)
    assert (p.sure, p.rounds, p.seconds) == (False, 40, 60.0)
    narrow = Reading(0.90, 0.1, 0.90 / 1.01, 0.90 * 1.01)
    q = pool([a, narrow])  # the narrower reading weighs 9x as much on the log scale
    assert 0.90 < q.ratio < 0.91 and q.half_width_rel < narrow.half_width_rel and not q.sure
    assert pool([a, Reading(0.5, 0.1)]).ratio == 0.5  # an exact reading stands alone


def test_a_plan_in_doubt_is_measured_again_and_certified_by_the_pooled_readings():
    """48 uses 0.96 of the budget, +-5 % (the meter's cap): not certified; the
    selector offers only 32 (0.64) besides. Once it offers nothing new, 48 is
    measured again: pooled, +-3.5 %, its upper end 0.994 certifies it."""
    loop, sel, meter = controller(COARSE, {"d": 5.0}, interval=lambda d, w: (0.05 if w == 48 else 0.01, w != 48))
    out = loop.run()
    assert meter.measured == [48, 32, 48]
    assert out.best.model == 48 and out.certified and out.note == "" and out.rounds[-1].status == "re-measured"
    assert loop.used_hi(out.best) == pytest.approx(0.96 * 1.05 ** (1 / 2 ** 0.5))
    assert loop.noise() == pytest.approx(0.05)  # the single readings' width still sets the aim


def test_a_plan_in_doubt_is_measured_again_only_while_one_more_reading_could_certify_it():
    """48 reads 0.96 of the budget at first, then 1.0 (the host drifted), +-5 %
    each time: pooled, 0.98 +-3.5 % (upper end 1.015); a third reading could
    only narrow that to 0.98 x 1.05 ** (1 / sqrt 3) = 1.008, so it is not
    taken and the certified 32 stands, with the note naming both readings."""
    count = [0]

    def drift(d, w):
        if w != 48:
            return 1.0
        count[0] += 1
        return 1.0 if count[0] == 1 else 1.0 / 0.96
    loop, _, meter = controller(COARSE, {"d": 5.0}, bias=drift,
                                interval=lambda d, w: (0.05 if w == 48 else 0.01, w != 48))
    out = loop.run()
    assert meter.measured == [48, 32, 48]
    assert out.best.model == 32 and out.certified
    assert out.note.startswith("the plan uses 64 % of the budget: the next plan measured used 98 % (its interval "
                               "up to 101 %, 2 readings pooled)")


@pytest.mark.parametrize("half,again", [(0.05, True), (0.08, False)])
def test_a_plan_left_in_doubt_by_the_last_round_gets_one_more_reading(half, again):
    """Two rounds allowed: 48 (0.96 of the budget, +-5 %) in doubt, then 32 (0.64) certified; the rounds are
    spent. One more reading of 48, beyond ``max_rounds``, pools to +-3.5 % and certifies it; at +-8 % one
    more could not (0.96 x 1.08 ** sqrt(1/2) = 1.013), so none is taken and 32 stands, with its note."""
    loop, _, meter = controller(COARSE, {"d": 5.0}, max_rounds=2,
                                interval=lambda d, w: (half if w == 48 else 0.01, w != 48))
    out = loop.run()
    assert meter.measured == ([48, 32, 48] if again else [48, 32]) and out.certified
    assert out.best.model == (48 if again else 32) and len(out.rounds) == (3 if again else 2)
    assert (out.note == "") is again and (out.rounds[-1].status == "re-measured") is again


def test_a_plan_too_close_to_the_budget_to_certify_is_not_measured_again():
    """0.99 +-5 %: one more reading could narrow it to 0.99 x 1.05 ** (1 / sqrt 2) = 1.025 at best."""
    loop, _, meter = controller(COARSE, {"d": 5.0}, bias=table(w48=0.99 / 0.96),
                                interval=lambda d, w: (0.05 if w == 48 else 0.01, w != 48))
    loop.run()
    assert meter.measured.count(48) == 1


def test_a_sure_reading_just_under_the_budget_is_certified_by_a_second_one():
    """0.984 +-2 % (the meter's target met, the upper end 1.004 over the budget):
    a second reading pools to +-1.4 %, the upper end 0.998 certifies it."""
    loop, _, meter = controller(COARSE, {"d": 5.0}, bias=table(w48=0.984 / 0.96),
                                interval=lambda d, w: (0.02 if w == 48 else 0.01, True))
    out = loop.run()
    assert meter.measured == [48, 32, 48] and out.best.model == 48 and out.certified
