"""Measuring a plan again where one reading left it in doubt.

A plan whose point estimate meets the budget but whose 95 % interval reaches
over it is not certified; on a noisy host the meter stops at its cap with an
interval of +-3-8 % and such a plan is dropped for a slower-to-find or
narrower one. One more reading, pooled with the first
(:func:`hwprune.loop.meter.pool`), narrows the interval by about a square
root of two, often enough to certify it.

:func:`confirm` runs on a :class:`hwprune.loop.controller.Controller` once
its selector stops offering new plans, before widening: while rounds are
left, the plan in doubt that would be the loop's answer if certified (more
latency used than the best certified plan, at most ``CONFIRM_MAX`` of the
budget) is measured again (:meth:`hwprune.loop.controller.Controller.remeasure`).
"""
from __future__ import annotations

CONFIRM_MAX = 0.98  # a plan estimated above this share of the budget would need an interval under +-2 % to certify


def in_doubt(loop) -> list:
    """``loop``'s plans worth measuring again: of the latest trial of each plan
    (:meth:`hwprune.loop.controller.Controller.current`), those whose point
    estimate lies over the best certified plan's latency used and at most
    ``CONFIRM_MAX``, and whose interval reaches over the budget; the one with
    the lowest upper end first."""
    best = loop.best_certified()
    floor = loop.used(best) if best is not None else 0.0
    return sorted((t for t in loop.current() if floor < loop.used(t) <= CONFIRM_MAX and loop.used_hi(t) > 1.0),
                  key=loop.used_hi)


def confirm(loop) -> bool:
    """While rounds are left and the best certified plan uses less than the
    acceptance share: measure the plan :func:`in_doubt` puts first again
    (pooled with its earlier readings). True when one is accepted."""
    if not loop.budgets_ms():
        return False
    while len(loop.trials) < loop.max_rounds:
        best = loop.best_certified()
        if best is not None and loop.used(best) >= loop.accept_low_now():
            return False
        doubt = in_doubt(loop)
        if not doubt:
            return False
        if loop.accepts(loop.remeasure(doubt[0])):
            return True
    return False
