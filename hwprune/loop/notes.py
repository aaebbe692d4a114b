"""The closed loop's notes: why its plan uses less of the budget than it
aims for, or why it is not certified. Each reads a
:class:`hwprune.loop.controller.Controller` (``loop``) and one of its trials."""
from __future__ import annotations


def under_note(loop, best) -> str:
    """Why ``loop``'s certified ``best`` uses less than ``accept_low`` of the budget
    (empty where it does not, or it is the full network): the next plan
    measured with more latency used, and how much it used; none was
    measured between (the latency jumps there, e.g. where widths leave the
    device's alignment, or every plan between keeps less importance); and
    where the loop widened plans one grid step, how that went
    (:meth:`hwprune.loop.widen.Widening.clause`), and how many plans it
    measured between (:func:`hwprune.loop.between.bisect`)."""
    if not loop.budgets_ms() or loop.at_full(best.selection):
        return ""
    u = loop.used(best)
    if u >= loop.accept_low_now():
        return ""
    text = f"the plan uses {100 * u:.0f} % of the budget"
    slower = [t for t in loop.current() if loop.used(t) > u]
    widened = loop.widening.clause() if loop.widening else ""
    if loop.bisected:
        widened += (f"; {loop.bisected} plan{'s' if loop.bisected > 1 else ''} between it and a plan over the "
                    f"budget measured")
    if not slower:
        n = len(loop.rounds)
        return (text + f"; the selector offered no slower plan under it in {n} round{'s' if n > 1 else ''}"
                + widened)
    nxt = min(slower, key=loop.used)
    times = len(loop.trials_of(nxt))
    pooled = f", {times} readings pooled" if times > 1 else ""
    return (text + f": the next plan measured used {100 * loop.used(nxt):.0f} % (its interval up to "
            f"{100 * loop.used_hi(nxt):.0f} %{pooled}) and the selector found none between (the latency jumps there, "
            f"or the plans between keep less importance){widened}")


def uncertified_note(loop, trial) -> str:
    """Why ``trial`` (its point estimate under every budget) is not
    certified: the device whose interval reaches highest over its budget,
    the interval, and whether the meter hit its cap (a noisy host)."""
    budgets = loop.budgets_ms()
    d = max(budgets, key=lambda k: trial.readings[k].ratio_hi * loop.meter.reference_ms(k) / budgets[k])
    r, ref = trial.readings[d], loop.meter.reference_ms(d)
    where = f" on {d}" if len(budgets) > 1 else ""
    text = (f"budget not certified{where}: the measured latency's 95 % interval is {r.ratio_lo * ref:.3f}-"
            f"{r.ratio_hi * ref:.3f} ms (+-{100 * r.half_width_rel:.1f} %) against the budget {budgets[d]:.3f} ms")
    if not r.sure:
        return text + (f"; the host is too noisy to certify the budget (the interval did not narrow to the "
                       f"target in {r.rounds} rounds, {r.seconds:.0f} s)")
    return text + f"; no plan measured in {len(loop.rounds)} rounds was certified under it"
