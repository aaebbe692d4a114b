"""Widening a measured plan one grid step at a time, by measurement.

Where the latency jumps (a width leaving the device's alignment or block
turns a layer's kernel plain and adds layout conversions), the selector can
offer nothing between a plan well under the budget and one over it: the
latency model prices every plan between on the far side of the aim. The
measurements are local, though: a plan one grid step wider than a measured
one changes one group, and its latency is estimated best from that plan's
measurement scaled by the model's ratio of the two (:func:`estimate_used`).

:func:`widen` runs this on a :class:`hwprune.loop.controller.Controller`
once its selector stops offering new plans: from the certified plan with the
most latency used, while it uses less than the acceptance share, it measures
the step :func:`pick` chooses among :func:`wider_plans`, and repeats from the
best certified plan. A step estimated over ``1 + WIDEN_SLACK`` of the budget is
not measured; the loop's note then says how far the cheapest step was
estimated (:class:`Widening`).
"""
from __future__ import annotations

from dataclasses import dataclass

from hwprune.graph.blocks import dead_groups
from hwprune.graph.space import Choice
from hwprune.select.evaluator import Selection

WIDEN_SLACK = 0.15  # a step estimated up to this share over the budget is still measured (single steps across a
#                     latency jump were estimated up to 20 % off on ONNX Runtime)


@dataclass(frozen=True)
class Step:
    """A plan one grid step wider than a measured one and its latency used
    estimated from that measurement (the largest over the devices)."""
    selection: Selection
    estimate: float


@dataclass(frozen=True)
class Widening:
    """How widening went: ``measured`` steps it measured; ``cheapest``: where
    it stopped for want of a step within reach, the smallest estimate of the
    steps left (None otherwise)."""
    measured: int
    cheapest: float | None = None

    def clause(self) -> str:
        """The note's clause (empty where nothing was widened or left out)."""
        done = (f"{self.measured} plan{'s' if self.measured != 1 else ''} one grid step wider measured"
                if self.measured else "")
        if self.cheapest is None:
            return f"; {done}" if done else ""
        rest = (f"every {'other ' if done else ''}plan one grid step wider is estimated at "
                f"{100 * self.cheapest:.0f} % of the budget or more (measured only up to "
                f"{100 * (1 + WIDEN_SLACK):.0f} %)")
        return f"; {done}, {rest}" if done else f"; {rest}"


def wider_plans(problem, choice: Choice, selector: str) -> list[Selection]:
    """Every plan that is ``choice`` with one group (or block) one option
    wider and meets ``problem``'s exact bounds (FLOPs, parameters, memory),
    as selections by ``selector``; a group living only inside a removed block
    is left alone (widening it would measure the same network again)."""
    out, dead = [], dead_groups(problem.space, choice)
    for key, opts in problem.options.items():
        cur = tuple(choice[key])
        up = opts.index(cur) + 1 if cur in opts else len(opts)
        if key in dead or up >= len(opts):
            continue
        wider = {**choice, key: opts[up]}
        if problem.feasible(wider):
            out.append(problem.selection(wider, selector, status="widened",
                                         note=f"one grid step wider than a measured plan (group {key})"))
    return out


def estimate_used(base_used: dict[str, float], base_predicted: dict[str, float], selection: Selection) -> float:
    """``selection``'s latency used: on each device the base plan's measured
    share of the budget times the model's predicted ratio of the two plans;
    the largest over the devices."""
    return max(u * selection.usage[f"latency_ms[{d}]"] / base_predicted[d] for d, u in base_used.items())


def pick(steps: list[Step], aim: float) -> Step | None:
    """The step to measure: the one estimated closest under ``aim`` (more
    importance breaking ties); where none is under it, the cheapest one
    estimated at most ``1 + WIDEN_SLACK``; None where there is none."""
    under = [s for s in steps if s.estimate <= aim]
    if under:
        return max(under, key=lambda s: (s.estimate, s.selection.importance))
    near = [s for s in steps if s.estimate <= 1.0 + WIDEN_SLACK]
    return min(near, key=lambda s: (s.estimate, -s.selection.importance), default=None)


def widen(loop) -> bool:
    """On ``loop`` (a :class:`hwprune.loop.controller.Controller`): while rounds
    are left and its certified plan with the most latency used uses less than
    the acceptance share (not at full width), measure the plan one grid step
    wider that :func:`pick` chooses, estimated from that plan's measurement;
    stop when one is accepted (True) or none is left within reach
    (``loop.widening`` says which)."""
    budgets = loop.budgets_ms()
    if loop.wider is None or not budgets:
        return False
    measured = 0
    while len(loop.trials) < loop.max_rounds:
        base = loop.best_certified()
        if base is None or loop.at_full(base.selection) or loop.used(base) >= loop.accept_low_now():
            return False
        used = {d: loop.measured_ms(base, d) / b for d, b in budgets.items()}
        predicted = {d: base.predicted_ms(d) for d in budgets}
        steps = [Step(s, estimate_used(used, predicted, s)) for s in loop.wider(base.selection.choice)
                 if not loop.already_measured(s)]
        step = pick(steps, loop.aim_now())
        if step is None:
            loop.widening = Widening(measured, min((s.estimate for s in steps), default=None))
            return False
        measured += 1
        loop.widening = Widening(measured)
        if loop.accepts(loop.measure(step.selection, {d: b * step.estimate for d, b in budgets.items()})):
            return True
    return False
