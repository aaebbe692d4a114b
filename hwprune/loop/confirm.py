"""Measuring a plan again where one reading left it in doubt.

A plan whose point estimate meets the budget but whose 95 % interval reaches
over it is not certified; on a noisy host the meter stops at its cap with an
interval of +-3-8 %, and even a reading narrowed to its +-2 % target leaves a
plan at 98-99 % of the budget in doubt. One more reading, pooled with the
earlier ones (:func:`hwprune.loop.meter.pool`), narrows the interval by the
square root of the readings' count (two readings of +-3 % pool to about
+-2.1 %), often enough to certify it.

:func:`confirm` runs on a :class:`hwprune.loop.controller.Controller` once
its selector stops offering new plans, before widening: while rounds are
left, the plan in doubt that would be the loop's answer if certified (more
latency used than the best certified plan) and that one more reading as
wide as its own could certify (:func:`expected_hi`) is measured again
(:meth:`hwprune.loop.controller.Controller.remeasure`).

:func:`settle` runs once the rounds are spent: where the answer would be a
certified plan under the acceptance share (or none certified) while a plan
using more is in doubt and one more reading could certify it, that reading
is taken beyond ``max_rounds``, once. Without it a plan left in doubt by the
last round (98 % of the budget, its interval reaching 100.4 %) would lose to
one measured at 85 %.
"""
from __future__ import annotations

import math


def expected_hi(loop, trial) -> float:
    """The upper end of ``trial``'s latency used (the largest over the devices
    with a budget) after one more reading: with ``k`` readings pooled so far,
    the interval's half-width on the log scale shrinks by ``sqrt(k / (k + 1))``
    around the same point estimate."""
    k = len(loop.trials_of(trial))
    shrink = math.sqrt(k / (k + 1))
    return max(loop.measured_ms(trial, d) / b * (1.0 + trial.readings[d].half_width_rel) ** shrink
               for d, b in loop.budgets_ms().items())


def in_doubt(loop) -> list:
    """``loop``'s plans worth measuring again: of the latest trial of each plan
    (:meth:`hwprune.loop.controller.Controller.current`), those whose point
    estimate lies over the best certified plan's latency used and at most the
    budget, whose interval reaches over the budget, and which one more reading
    could certify (:func:`expected_hi` at most 1); the likeliest first."""
    best = loop.best_certified()
    floor = loop.used(best) if best is not None else 0.0
    doubt = [t for t in loop.current() if floor < loop.used(t) <= 1.0 < loop.used_hi(t)]
    return sorted((t for t in doubt if expected_hi(loop, t) <= 1.0), key=lambda t: expected_hi(loop, t))


def worth_measuring_again(loop):
    """The plan :func:`in_doubt` puts first, where the best certified plan
    uses less than the acceptance share (or none is certified); None where
    there is no latency budget, the best certified plan is good enough, or no
    plan is in doubt."""
    if not loop.budgets_ms():
        return None
    best = loop.best_certified()
    if best is not None and loop.used(best) >= loop.accept_low_now():
        return None
    doubt = in_doubt(loop)
    return doubt[0] if doubt else None


def confirm(loop) -> bool:
    """While rounds are left: measure the plan :func:`worth_measuring_again`
    names again (pooled with its earlier readings). True when one is accepted."""
    while len(loop.trials) < loop.max_rounds:
        trial = worth_measuring_again(loop)
        if trial is None:
            return False
        if loop.accepts(loop.remeasure(trial)):
            return True
    return False


def settle(loop) -> bool:
    """The last word, after the rounds ran out: the plan
    :func:`worth_measuring_again` names, measured once more (pooled), beyond
    ``max_rounds``. True when that reading was taken."""
    trial = worth_measuring_again(loop)
    if trial is None:
        return False
    loop.remeasure(trial)
    return True
