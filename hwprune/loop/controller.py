"""The closed loop's controller: select a plan, measure it, decide, repeat.

Each round asks the selector for a plan under per-device latency targets,
cuts it and measures it on every device (one call on a
:class:`hwprune.loop.meter.PlanMeter`), then takes one of these decisions,
each a method of :class:`Controller`:

- :meth:`Controller.accepts`: stop at this plan, its latency used lies in
  ``[accept_low, 1.0]`` (or at most 1.0 at full width, which cannot grow)
  and so does the upper end of its 95 % interval (:meth:`Controller.used_hi`:
  the plan is certified to meet the budget); "latency used"
  (:meth:`Controller.used`) is the largest measured / budget over the devices
  with a budget, so the worst device decides.
- :meth:`Controller.nearest_to_aim` and :meth:`Controller.re_aim`: otherwise
  anchor on the measured plan closest to ``aim x budget`` and scale each
  device's target by that plan's predicted / measured ratio, starting the
  selector from it (small moves from a measured network are predicted far
  better than a network from scratch).
- :meth:`Controller.nudge`: the selector returned a plan already measured
  (the corrected target moved less than one grid step, or another bound holds
  the plan): move every target further in the direction the measurement asks
  for (down when the interval reaches over the budget), by 2 % more at each
  nudge, at most 4 nudges in the whole loop.
- once the selector offers nothing new and the best certified plan uses
  less than ``accept_low``, the rounds left go first to plans whose point
  estimate used more but whose interval reached over the budget: each is
  measured again and its readings pooled (:meth:`Controller.remeasure`,
  :func:`hwprune.loop.confirm.confirm`), which certifies a plan a noisy
  reading left in doubt; then to plans one grid step wider than the best
  certified one (:func:`hwprune.loop.widen.widen`), where the latency model
  cannot see between a plan under the budget and one over it; then to
  re-measuring again; then to plans between the best plan under the budget
  and the fastest over it, every group part of the way between their widths
  (:func:`hwprune.loop.between.bisect`).
- :func:`hwprune.loop.between.rescue`: where no measured plan met the budgets
  (the latency model mispredicts every plan the selector offers), networks
  measured under the budget while calibrating are measured as plans, and
  plans between the slowest of them under the budget and the fastest plan
  over it.
- :func:`hwprune.loop.confirm.settle`: when the rounds ran out with the
  answer under ``accept_low`` (or uncertified) and a plan using more in doubt,
  that plan gets one more reading, pooled, beyond ``max_rounds``.
- :meth:`Controller.outcome`: after ``max_rounds`` measured rounds (or a stop),
  the certified plan (interval under every budget) with the most latency
  used (with a note where it uses less than ``accept_low``: the next plan
  measured and how much it used); if none is certified, the plan whose point estimate meets every
  budget with the most latency used, not ``certified``, with a note giving its
  interval (and, when the meter hit its cap, that the host is too noisy to
  certify the budget); if none meets them, the fastest one measured.

On a host too noisy for the meter to narrow its interval to the target
(a reading hit its cap at ``+-h``), the aim and ``accept_low`` drop to
``CERTIFY / (1 + h)`` and as far below it (:meth:`Controller.aim_now`):
aimed at 0.965 of the budget, a plan measured to +-4 % could never certify.

Milliseconds are always a reading's ratio times the meter's *current*
reference (the original's median so far), and a budget given as a fraction
of the original follows it, so every comparison uses the latest reference.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from hwprune.graph.space import Choice
from hwprune.loop.between import bisect
from hwprune.loop.confirm import confirm, settle
from hwprune.loop.meter import PlanMeter, Reading, pool
from hwprune.loop.notes import uncertified_note, under_note
from hwprune.loop.widen import Widening, widen
from hwprune.select.evaluator import Selection

log = logging.getLogger("hwprune")

AIM = 0.965          # the selector aims this far under the budget, so a re-measurement's noise stays inside
ACCEPT_LOW = 0.93    # a plan using at least this share of the budget (and at most all of it) is accepted
NUDGE_STEP = 0.02    # the k-th nudge scales the targets by 1 + k x NUDGE_STEP (or its inverse)
MAX_NUDGES = 4       # nudges allowed in one loop
CERTIFY = 0.995      # on a noisy host the aim is at most this over (1 + the interval's half-width)
ACCEPT_FLOOR = 0.90  # ... and the acceptance share drops with it, to no less than this


@dataclass(frozen=True)
class Round:
    """One measured plan, as reported; the first four fields are the primary
    device's (``target_ms`` None where it has no budget), ``devices`` every
    device's (only when there are several)."""
    target_ms: float | None
    predicted_ms: float
    measured_ms: float
    iqr_ms: float
    devices: dict = field(default_factory=dict)
    status: str = ""
    solve_s: float = 0.0
    measured_lo_ms: float | None = None  # the 95 % interval of measured_ms
    measured_hi_ms: float | None = None
    sure: bool = True                    # the interval met the meter's target before its cap


@dataclass(frozen=True)
class Budgets:
    """The latency budget (ms) of each device that has one. With
    ``fraction``, the primary device's budget is that share of the original's
    latency as the meter has measured it so far (it follows the host's drift;
    its entry in ``ms`` is then a placeholder that keeps the devices' order)."""
    ms: dict[str, float]
    primary: str
    fraction: float | None = None

    def now(self, meter: PlanMeter) -> dict[str, float]:
        if self.fraction is None:
            return dict(self.ms)
        return {**self.ms, self.primary: self.fraction * meter.reference_ms(self.primary)}


@dataclass(frozen=True)
class Trial:
    """A plan the loop measured: the selection, the network cut to it, the
    latency targets the selector was given, and one reading per device."""
    selection: Selection
    model: Any
    targets_ms: dict[str, float]
    readings: dict[str, Reading]

    def predicted_ms(self, device: str) -> float:
        return self.selection.usage[f"latency_ms[{device}]"]


@dataclass(frozen=True)
class Outcome:
    """The plan the loop settles on (``best``), everything it measured and the
    rounds as reported; ``note`` says when no plan met the budgets."""
    best: Trial
    trials: tuple[Trial, ...]
    rounds: tuple[Round, ...]
    note: str = ""
    certified: bool = True  # best's interval lies under every budget (or there is none)


class Selector(Protocol):
    def __call__(self, targets_ms: dict[str, float], start: Choice | None) -> Selection:
        """A plan under the latency ``targets_ms`` (device -> ms), seeded with ``start`` where given."""


class Controller:
    """Runs the loop (:meth:`run`) over ``select`` (the selector),
    ``build`` (cuts a selection into a network) and ``meter`` (measures one on
    every device), against ``budgets``. ``full``: the widest choice the
    options allow. ``wider``: the plans one grid step wider than a choice
    (:func:`hwprune.loop.widen.wider_plans`; None: no widening). ``between``:
    the plan part of the way from one choice to another
    (:func:`hwprune.loop.between.between_plan`; None: no bisection). State: the
    measured ``trials``, their ``rounds`` as reported, the current ``anchor``,
    the ``nudges`` spent, how widening ended (``widening``) and the plans
    measured between two others (``bisected``)."""

    def __init__(self, select: Selector, build: Callable[[Selection], Any], meter: PlanMeter, budgets: Budgets,
                 full: Choice, *, max_rounds: int = 6, aim: float = AIM, accept_low: float = ACCEPT_LOW,
                 wider: Callable[[Choice], list[Selection]] | None = None,
                 between: Callable[[Choice, Choice, float], Selection | None] | None = None):
        self.select, self.build, self.meter, self.budgets, self.full = select, build, meter, budgets, full
        self.max_rounds, self.aim, self.accept_low, self.wider = max_rounds, aim, accept_low, wider
        self.between = between
        self.bisected = 0
        self.trials: list[Trial] = []
        self.rounds: list[Round] = []
        self.anchor: Trial | None = None
        self.nudges = 0
        self.widening: Widening | None = None

    # ---------------------------------------------------------------- the loop

    def run(self) -> Outcome:
        targets, start = self.first_targets(), None
        while len(self.trials) < self.max_rounds:
            selection = self.select(targets, start)
            if self.already_measured(selection):
                targets = self.nudge(targets)
                if targets is None:
                    break
                continue
            trial = self.measure(selection, targets)
            if self.accepts(trial):
                return self.outcome()
            self.anchor = self.nearest_to_aim()
            start, targets = self.anchor.selection.choice, self.re_aim(self.anchor)
        if not (confirm(self) or widen(self) or confirm(self)):
            bisect(self, self.max_rounds)
        settle(self)
        return self.outcome()

    # ---------------------------------------------------------------- measurements

    def budgets_ms(self) -> dict[str, float]:
        return self.budgets.now(self.meter)

    def measured_ms(self, trial: Trial, device: str) -> float:
        """``trial``'s latency on ``device``: its ratio to the original times the current reference."""
        return trial.readings[device].ratio * self.meter.reference_ms(device)

    def used(self, trial: Trial) -> float:
        """Latency used: the largest measured / budget over the devices with a budget (0.0 without any)."""
        return max((self.measured_ms(trial, d) / b for d, b in self.budgets_ms().items()), default=0.0)

    def used_hi(self, trial: Trial) -> float:
        """The upper end of the latency used: the 95 % interval's upper end instead of the point estimate."""
        return max((trial.readings[d].ratio_hi * self.meter.reference_ms(d) / b
                    for d, b in self.budgets_ms().items()), default=0.0)

    def measure(self, selection: Selection, targets: dict[str, float]) -> Trial:
        """Cut ``selection``, measure it on every device, record the trial and its round."""
        model = self.build(selection)
        return self.record(Trial(selection, model, dict(targets), self.meter.measure(model)))

    def remeasure(self, trial: Trial) -> Trial:
        """Measure ``trial``'s network again and record it as a new trial whose
        readings pool every reading of that plan so far (:func:`hwprune.loop.meter.pool`;
        status ``re-measured``); the earlier trials stay, so :meth:`noise` still
        sees each reading's own width."""
        latest = self.trials_of(trial)[-1]
        again = self.meter.measure(trial.model)  # pooling is associative: the latest pool and the new reading
        readings = {d: pool([latest.readings[d], r]) for d, r in again.items()}
        return self.record(Trial(replace(trial.selection, status="re-measured"), trial.model, trial.targets_ms,
                                 readings))

    def record(self, trial: Trial) -> Trial:
        """Add ``trial`` and its round (as reported, with its log line)."""
        self.trials.append(trial)
        selection, targets = trial.selection, trial.targets_ms
        per_device = {d: {"target_ms": targets.get(d), "predicted_ms": trial.predicted_ms(d),
                          "measured_ms": self.measured_ms(trial, d), "iqr_ms": r.iqr_ms,
                          "measured_lo_ms": r.ratio_lo * self.meter.reference_ms(d),
                          "measured_hi_ms": r.ratio_hi * self.meter.reference_ms(d), "sure": r.sure}
                      for d, r in trial.readings.items()}
        p = per_device[self.budgets.primary]
        self.rounds.append(Round(p["target_ms"], p["predicted_ms"], p["measured_ms"], p["iqr_ms"],
                                 per_device if len(per_device) > 1 else {}, selection.status, selection.solve_s,
                                 p["measured_lo_ms"], p["measured_hi_ms"], p["sure"]))
        budgets = self.budgets_ms()
        log.info("round %d (%s, %s): %s", len(self.rounds), selection.selector, selection.status, ", ".join(
            f"{d} predicted {v['predicted_ms']:.3f} ms, measured {v['measured_ms']:.3f} ms "
            f"({v['measured_lo_ms']:.3f}-{v['measured_hi_ms']:.3f}{'' if v['sure'] else ', not sure'})"
            + (f" (budget {budgets[d]:.3f})" if d in budgets else "") for d, v in per_device.items()))
        return trial

    # ---------------------------------------------------------------- decisions

    def noise(self) -> float:
        """The relative half-width the meter could not narrow below: the widest
        interval among the readings that hit the meter's cap (0 while every
        reading met its target)."""
        return max((r.half_width_rel for t in self.trials for r in t.readings.values() if not r.sure), default=0.0)

    def aim_now(self) -> float:
        """``aim``, lowered on a host too noisy for it: a plan certifies only
        when its interval's upper end is under the budget, so with readings
        no narrower than ``+-h`` the aim is at most ``CERTIFY / (1 + h)``."""
        return min(self.aim, CERTIFY / (1.0 + self.noise()))

    def accept_low_now(self) -> float:
        """``accept_low``, lowered with the aim (the same distance under it),
        never under ``ACCEPT_FLOOR`` (or ``accept_low`` if that is lower)."""
        return max(min(self.accept_low, ACCEPT_FLOOR), self.accept_low - (self.aim - self.aim_now()))

    def first_targets(self) -> dict[str, float]:
        """Each device's first target: ``aim`` x its budget."""
        return {d: b * self.aim_now() for d, b in self.budgets_ms().items()}

    def at_full(self, selection: Selection) -> bool:
        return all(selection.choice[gid] == width for gid, width in self.full.items())

    def accepts(self, trial: Trial) -> bool:
        """Stop at ``trial``: its latency used lies in ``[accept_low, 1.0]``, or
        it is at most 1.0 at full width, and the upper end of its interval is at
        most 1.0 too; or there is no latency budget to correct towards (one
        round only)."""
        if not self.budgets_ms():
            return True
        u = self.used(trial)
        return self.used_hi(trial) <= 1.0 and (u >= self.accept_low_now() or self.at_full(trial.selection))

    def distance_to_aim(self, trial: Trial) -> float:
        """The largest gap over the devices between measured and aimed latency, as a share of the budget."""
        return max(abs(self.measured_ms(trial, d) - b * self.aim_now()) / b for d, b in self.budgets_ms().items())

    def nearest_to_aim(self) -> Trial:
        """The anchor: the measured plan closest to the aim (the first of equals)."""
        return min(self.trials, key=self.distance_to_aim)

    def re_aim(self, anchor: Trial) -> dict[str, float]:
        """New targets from the anchor: each device's ``aim x budget`` scaled by
        the anchor's predicted / measured latency there, so that the latency
        model, corrected by that ratio, hits the aim; kept between the plans
        that bracket the aim (:meth:`within_bracket`)."""
        return self.within_bracket({d: anchor.predicted_ms(d) * (b * self.aim_now()) / self.measured_ms(anchor, d)
                                    for d, b in self.budgets_ms().items()})

    def bracket(self, device: str) -> tuple[Trial | None, Trial | None]:
        """The measured plans closest to the aim from either side on ``device``:
        the one predicted slowest among those measured under ``aim x budget``,
        and the one predicted fastest among those measured over the budget."""
        b = self.budgets_ms()[device]
        under = [t for t in self.trials if self.measured_ms(t, device) < b * self.aim_now()]
        over = [t for t in self.trials if self.measured_ms(t, device) > b]
        return (max(under, key=lambda t: t.predicted_ms(device), default=None),
                min(over, key=lambda t: t.predicted_ms(device), default=None))

    def within_bracket(self, targets: dict[str, float]) -> dict[str, float]:
        """A target at or past a measured plan that missed on the far side of the
        aim would repeat that miss (the latency model is not linear there):
        where measured plans bracket the aim and the target leaves the open
        interval of their predictions, it becomes the secant between them, the
        prediction where the line through the two measured plans meets the aim."""
        out = dict(targets)
        for d, t in targets.items():
            lo, hi = self.bracket(d)
            if lo is None or hi is None or not lo.predicted_ms(d) < hi.predicted_ms(d):
                continue
            p_lo, p_hi = lo.predicted_ms(d), hi.predicted_ms(d)
            if p_lo < t < p_hi:
                continue
            m_lo, m_hi = self.measured_ms(lo, d), self.measured_ms(hi, d)
            aim_ms = self.budgets_ms()[d] * self.aim_now()
            out[d] = p_lo + (aim_ms - m_lo) * (p_hi - p_lo) / (m_hi - m_lo)
        return out

    def already_measured(self, selection: Selection) -> bool:
        return any(selection.choice == t.selection.choice for t in self.trials)

    def nudge_reference(self) -> Trial:
        """The measured plan whose latency used says which way to nudge: the
        anchor, i.e. the plan the current targets were corrected from. (A repeat
        needs a measured plan, and every measured round that is not accepted
        sets an anchor, so the anchor always exists here; the last measured
        plan stands in should that ever change.)"""
        return self.anchor if self.anchor is not None else self.trials[-1]

    def nudge(self, targets: dict[str, float]) -> dict[str, float] | None:
        """The selector returned a plan already measured: the targets scaled by
        ``1 + k x NUDGE_STEP`` at the k-th nudge (down by its inverse if the
        reference plan's interval reaches over the budget, else up if it used
        less than ``accept_low``). None: stop, after ``MAX_NUDGES`` nudges or
        when the reference plan, interval included, lies in ``[accept_low, 1.0]``."""
        self.nudges += 1
        ref = self.nudge_reference()
        u, hi = (self.used(ref), self.used_hi(ref)) if self.budgets_ms() else (1.0, 1.0)
        if self.nudges > MAX_NUDGES or (self.accept_low_now() <= u and hi <= 1.0):
            return None
        step = 1.0 + NUDGE_STEP * self.nudges
        scale = 1.0 / step if hi > 1.0 else step
        nudged = {d: t * scale for d, t in targets.items()}
        bracketed = self.within_bracket(nudged)
        return nudged if bracketed == targets else bracketed

    def trials_of(self, trial: Trial) -> list[Trial]:
        """Every trial of ``trial``'s plan, oldest first (one per reading: the first, then each pooled one)."""
        return [t for t in self.trials if t.selection.choice == trial.selection.choice]

    def current(self) -> list[Trial]:
        """The latest trial of each plan measured (a re-measured plan's pooled readings replace its earlier ones)."""
        latest = {}
        for t in self.trials:
            latest[tuple(sorted(t.selection.choice.items()))] = t
        return list(latest.values())

    def best_certified(self) -> Trial | None:
        """The certified plan (interval under every budget) with the most latency used; None if none is."""
        return max((t for t in self.current() if self.used_hi(t) <= 1.0), key=self.used, default=None)

    def met(self) -> bool:
        """Whether a measured plan meets every budget (its point estimate)."""
        return any(self.used(t) <= 1.0 for t in self.trials)

    def outcome(self) -> Outcome:
        """The certified plan with the most latency used; else the plan
        meeting every budget (point estimate) with the most latency used, not
        certified, with a note; if none meets them, the fastest measured, with
        a note."""
        trials, rounds = tuple(self.trials), tuple(self.rounds)
        best = self.best_certified()
        if best is not None:
            return Outcome(best, trials, rounds, under_note(self, best))
        meeting = [t for t in self.current() if self.used(t) <= 1.0]
        if meeting:
            best = max(meeting, key=self.used)
            return Outcome(best, trials, rounds, uncertified_note(self, best), certified=False)
        return Outcome(min(self.trials, key=self.used), trials, rounds,
                       f"budget not met after {len(self.rounds)} rounds; returning the fastest network measured",
                       certified=False)
