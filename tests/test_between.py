"""Measuring between a plan under the budget and one over it: the plans on a
real pruning space, and the loop's bisection on the fake selector and meter of
test_loop (a plan is one width, predicted at 0.1 ms per channel)."""
import pytest
from test_loop import MS_PER_CHANNEL, FakeMeter, table
from test_widen import problem

from hwprune.loop.between import MIDDLE, between_plan, interpolate, position, rescue
from hwprune.loop.controller import Budgets, Controller
from hwprune.select.evaluator import Selection


def test_interpolate_moves_every_group_the_same_share_of_its_options():
    options = {0: [(w,) for w in (8, 16, 24, 32, 40)], 1: [(w,) for w in (4, 8, 12)], 2: [(5,), (9,)]}
    lo, hi = {0: (8,), 1: (12,), 2: (9,)}, {0: (40,), 1: (4,), 2: (9,)}
    assert interpolate(options, lo, hi, 0.0) == lo and interpolate(options, lo, hi, 1.0) == hi
    assert interpolate(options, lo, hi, 0.5) == {0: (24,), 1: (8,), 2: (9,)}  # group 1 moves down, as hi has it
    assert interpolate(options, lo, hi, 0.25) == {0: (16,), 1: (12,), 2: (9,)}  # 1.5 options up: half-way rounds up
    off = {0: (10,), 1: (12,), 2: (9,)}  # a width off the grid: lo's below the middle, hi's from it
    assert interpolate(options, off, hi, 0.4)[0] == (10,) and interpolate(options, off, hi, 0.5)[0] == (40,)


def test_position_follows_the_straight_line_within_the_middle_half():
    assert position(0.8, 1.2, 0.965) == pytest.approx(0.4125)
    assert position(0.95, 1.01, 0.965) == MIDDLE[0]  # the aim sits near lo: still a real step
    assert position(0.2, 1.05, 0.965) == MIDDLE[1]
    assert position(0.8, 0.8, 0.965) == 0.5


def test_a_plan_between_two_real_plans_lies_between_them_in_every_group_and_in_flops():
    p = problem("invres")
    lo, hi = p.smallest(), p.largest()
    sel = between_plan(p, lo, hi, 0.5, "greedy")
    assert sel.status == "between" and sel.selector == "greedy"
    for gid, opts in p.options.items():
        assert opts.index(lo[gid]) <= opts.index(sel.choice[gid]) <= opts.index(hi[gid])
    flops = [p.usage(c)["flops"] for c in (lo, sel.choice, hi)]
    assert flops[0] < flops[1] < flops[2]
    bounded = problem("invres", max_flops=(flops[0] + flops[1]) / 2)
    assert between_plan(bounded, lo, hi, 0.5, "greedy") is None  # breaks an exact bound: not offered


# ---------------------------------------------------------------- the loop

GRID = (10, 11, 12, 13, 14, 15, 16, 32, 36, 40, 44, 48, 64)


def plan(w, status="heuristic"):
    return Selection({0: (w,)}, {0: list(range(w))}, w * MS_PER_CHANNEL, float(w), True, selector="fake",
                     status=status, usage={"latency_ms[d]": w * MS_PER_CHANNEL})


def between(lo, hi, t):
    return plan(interpolate({0: [(w,) for w in GRID]}, lo, hi, t)[0][0], status="between")


def scripted(*widths):
    """A selector that offers ``widths`` in turn, then the last one again (its model sees nothing else)."""
    calls = []

    def select(targets, start):
        calls.append(targets)
        return plan(widths[min(len(calls), len(widths)) - 1])
    return select


def loop_of(select, budget, bias=lambda d, w: 1.0, max_rounds=6):
    meter = FakeMeter(bias)
    loop = Controller(select, lambda s: s.choice[0][0], meter, Budgets({"d": budget}, "d"), {0: (64,)},
                      max_rounds=max_rounds, between=between)
    return loop, meter


def test_the_loop_measures_between_a_plan_under_the_band_and_one_over_the_budget():
    """The selector jumps from 48 (1.2 of the budget) to 32 (0.8) and offers
    nothing else: the line through the two measured plans meets the aim
    0.41 of the way, at 40 on the grid, which uses all of the budget and is
    accepted."""
    loop, meter = loop_of(scripted(48, 32), 4.0)
    out = loop.run()
    assert meter.measured == [48, 32, 40] and out.best.model == 40 and out.note == ""
    assert out.rounds[-1].status == "between" and out.rounds[-1].target_ms == pytest.approx(4.0 * 0.965)


def test_bisection_stops_where_no_new_plan_lies_between_and_says_what_it_measured():
    """48 is over, 32 under the band, and 36-44 measure 1.3x (a latency jump):
    40 and then 36 (where the straight line through the last two meets the aim) are both over; then
    nothing new lies between 32 and 36, and the note counts the two plans."""
    loop, meter = loop_of(scripted(48, 32), 4.0, bias=table(w36=1.3, w40=1.3, w44=1.3))
    out = loop.run()
    assert meter.measured == [48, 32, 40, 36] and out.best.model == 32
    assert out.note.endswith("; 2 plans between it and a plan over the budget measured")


def test_bisection_stays_within_max_rounds():
    loop, meter = loop_of(scripted(48, 32), 4.0, bias=table(w36=1.3, w40=1.3, w44=1.3), max_rounds=3)
    loop.run()
    assert meter.measured == [48, 32, 40]


def test_the_rescue_measures_a_calibration_network_then_between_it_and_the_fastest_plan_over():
    """Every plan offered (16 and wider) measures 1.5x its prediction: the
    loop's rounds all land over the 2 ms budget. The rescue measures the
    calibration network 10 (0.5 of the budget), then plans between it and 16,
    the fastest plan over: 14 (0.7) and 15 (0.75); nothing new lies between
    15 and 16, so 15 is the answer, far closer to the budget than 10."""
    loop, meter = loop_of(scripted(32, 16), 2.0, bias=lambda d, w: 1.5 if w in (16, 32) else 1.0, max_rounds=3)
    loop.run()
    assert not loop.met()
    assert rescue(loop, [plan(10, status="measured")]) is False
    out = loop.outcome()
    assert meter.measured[-3:] == [10, 14, 15] and out.best.model == 15 and out.certified
    assert [r.status for r in out.rounds[-2:]] == ["between", "between"]


def test_the_rescue_stops_at_a_calibration_network_in_the_band():
    loop, meter = loop_of(scripted(32, 16), 2.0, bias=lambda d, w: 1.5 if w in (16, 32) else 1.0, max_rounds=3)
    loop.run()
    assert rescue(loop, [plan(w, status="measured") for w in (16, 19, 15, 10)]) is True  # 16: measured already
    assert meter.measured[-1] == 19 and loop.outcome().best.model == 19
