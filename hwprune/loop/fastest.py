"""The networks the loop calibrates on, and the fastest network the constraints allow, found by measurement.

Fewer channels do not always run faster: widths that fall off a runtime's
kernel blocks, layout conversions and per-operator costs can make a narrow
network slower than a wider one (depthwise sub-networks measured 1.2-1.8x the
*full* network on ONNX Runtime CPU). So the minimum reachable latency is never
taken to be the smallest network's. :func:`calibrate_networks` measures the
smallest, quarter- and half-width networks (uniform positions on every
group's width grid) and two split ones (one half of the network narrow, the
other full) and fits the latency model's remainder to them;
:func:`measure_fastest` then measures the networks the fitted model predicts
fastest (uniform positions at every eighth of the grid, and a descent that
changes one group at a time while the prediction drops), refitting with them.
The fastest of everything measured is the minimum the budget is checked
against (:class:`Calibration`). Where the options hold residual blocks
(:mod:`hwprune.graph.blocks`), the smallest network has every one removed and
one more calibration network has them all removed at full widths.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from hwprune.graph.blocks import KEPT, REMOVED, is_block_key, live_specs, removed_paths
from hwprune.graph.space import Choice, PruningSpace, uniform_choice
from hwprune.graph.surgery import apply_kept
from hwprune.select.evaluator import Evaluator

log = logging.getLogger("hwprune")

FIT_WARN_REL = 0.05  # a latency model missing its calibration networks by more than this (RMS) is flagged
UNIFORM = (0.0, 0.25, 0.5)     # calibration networks: positions on every group's width grid
SPLIT = 0.25                    # split calibration networks: the narrow half's position on its width grids
CANDIDATES = 2                  # predicted-fastest networks measured besides them
DESCENT_SWEEPS = 4


@dataclass(frozen=True)
class Network:
    """A measured network: how it was chosen (``name``), its widths, its measured ms."""
    name: str
    choice: Choice
    measured_ms: float


@dataclass(frozen=True)
class Calibration:
    """Every network measured to calibrate the latency model and find the
    fastest; the first is the smallest network the constraints allow.
    ``fit_error_rel``: how far the latency model misses the whole networks
    it was fitted on (:attr:`latency_models.NetworkLatencyModel.fit_error_rel`)."""
    networks: tuple[Network, ...]
    fit_error_rel: float = 0.0

    def fit_warning(self, device: str) -> str:
        """A warning where the latency model misses the networks it was
        calibrated on by more than ``FIT_WARN_REL`` (empty otherwise)."""
        if self.fit_error_rel <= FIT_WARN_REL:
            return ""
        return (f"the latency model of {device} misses the whole networks it was calibrated on by "
                f"+-{100 * self.fit_error_rel:.0f} % (root mean square): its layer profile and the networks "
                f"measured now disagree (a host busy while it profiled, or costs isolated layers do not show); "
                f"predictions carry that error, measured plans do not")

    @property
    def smallest(self) -> Network:
        return self.networks[0]

    @property
    def fastest(self) -> Network:
        return min(self.networks, key=lambda n: n.measured_ms)

    def scaled(self, factor: float) -> Calibration:
        """Every network's ms times ``factor`` (measured at one scale, read at another)."""
        return replace(self, networks=tuple(replace(n, measured_ms=n.measured_ms * factor) for n in self.networks))

    def to_json(self, baseline_ms: float) -> dict:
        f = self.fastest
        return {"network": f.name, "measured_ms": f.measured_ms, "fraction": f.measured_ms / baseline_ms,
                "smallest_ms": self.smallest.measured_ms, "fit_error_rel": self.fit_error_rel,
                "measured": [{"network": n.name, "measured_ms": n.measured_ms} for n in self.networks]}


def fit_warnings(cals: dict[str, Calibration]) -> list[str]:
    """Each device's :meth:`Calibration.fit_warning` that says something, logged."""
    out = [w for w in (c.fit_warning(d) for d, c in cals.items()) if w]
    for w in out:
        log.warning("%s", w)
    return out


def uniform_name(frac: float) -> str:
    if frac == 0.0:
        return "the smallest network the constraints allow"
    return f"uniform widths ({100 * frac:.1f} % along every group's width grid)"


def _measure(space: PruningSpace, ev: Evaluator, measure_ms: Callable[[nn.Module], float], name: str,
             choice: Choice, rows: list) -> Network:
    ms = measure_ms(apply_kept(space, ev.kept(choice), removed_paths(space, choice)))
    rows.append((live_specs(space, choice), ms))
    return Network(name, choice, ms)


def _uniform(options, frac: float, removed: bool) -> tuple[str, Choice]:
    """Uniform widths at ``frac`` of every grid with every removable block
    removed or kept, and its name (which says so where the options hold blocks)."""
    blocks = [k for k in options if is_block_key(k)]
    choice = {**uniform_choice(options, frac), **{k: REMOVED if removed else KEPT for k in blocks}}
    if not blocks or (frac == 0.0 and removed):
        return uniform_name(frac), choice
    base = "full widths" if frac == 1.0 else uniform_name(frac)
    return base + (", every removable block removed" if removed else ", every block kept"), choice


def split_choices(space: PruningSpace, options) -> list[tuple[str, Choice]]:
    """Two networks that are narrow in one half of the network and full in the
    other: the groups whose first layer comes in the first half of the
    network's groups at ``SPLIT`` of their width grids and the others full,
    then the reverse (every block kept). Uniform networks scale every layer's
    work, weights and activations together, so they cannot tell the terms of
    the remainder apart; these can (vgg16's late layers hold most of its weights,
    its early ones most of its work)."""
    gids = sorted((k for k in options if not is_block_key(k)), key=lambda g: min(space.layers_of_group(g), default=0))
    if len(gids) < 2:
        return []
    narrow, early = uniform_choice(options, SPLIT), set(gids[:len(gids) // 2])
    return [(f"{which} half of the groups at {100 * SPLIT:.0f} % of their width grids, the others full",
             {**uniform_choice(options, 1.0), **{g: narrow[g] for g in gids if (g in early) == (which == "early")}})
            for which in ("early", "late")]


def calibration_choices(options, fractions=UNIFORM, space: PruningSpace | None = None) -> list[tuple[str, Choice]]:
    """The calibration networks: uniform positions on the width grids, every
    removable block removed in the first (the smallest network) and kept in
    the others; where the options hold blocks, also the full widths with every
    block removed, so that the rows' numbers of layers differ; with ``space``,
    the :func:`split_choices` (only those not already among them)."""
    out = [_uniform(options, f, f == 0.0) for f in fractions]
    if any(is_block_key(k) for k in options):
        out.append(_uniform(options, 1.0, True))
    seen = [c for _, c in out] + [uniform_choice(options, 1.0)]  # and the full network
    for name, choice in split_choices(space, options) if space is not None else []:
        if choice not in seen:
            seen.append(choice)
            out.append((name, choice))
    return out


def calibrate_networks(lat, space: PruningSpace, measure_ms: Callable[[nn.Module], float], options, scores,
                       rows: list, fractions=UNIFORM) -> Calibration:
    """Measure the networks at ``fractions`` of every group's width grid
    (default :data:`UNIFORM`, the smallest first), add them to ``rows``
    (whole-model measurements, ``(specs, ms)``) and fit ``lat``'s remainder
    to all of ``rows``. Rows given start with the network the others are
    judged against (the original), which the fit weighs most
    (:meth:`latency_models.NetworkLatencyModel.fit_remainder`'s ``reference``)."""
    ev = Evaluator(space, lat, scores)
    reference = 0 if rows else None
    nets = tuple(_measure(space, ev, measure_ms, name, choice, rows)
                 for name, choice in calibration_choices(options, fractions, space))
    lat.fit_remainder(rows, reference=reference)
    return Calibration(nets, lat.fit_error_rel)


def descend(ev: Evaluator, options: dict, start: Choice, sweeps: int = DESCENT_SWEEPS) -> Choice:
    """From ``start``, move one group at a time to its predicted-fastest width
    while the prediction drops (at most ``sweeps`` passes over the groups)."""
    choice = dict(start)
    for _ in range(sweeps):
        moved = False
        for gid, opts in options.items():
            best = min(opts, key=lambda o: (ev.latency_ms({**choice, gid: o}), sum(o)))
            if best != choice[gid] and ev.latency_ms({**choice, gid: best}) < ev.latency_ms(choice):
                choice[gid], moved = best, True
        if not moved:
            break
    return choice


def fastest_candidates(ev: Evaluator, options: dict, measured: list[Choice], k: int = CANDIDATES
                       ) -> list[tuple[str, Choice]]:
    """The ``k`` networks not yet measured that the latency model predicts
    fastest, among uniform positions at every eighth of the width grids (with
    every removable block removed, and kept) and the descent from the smallest
    network."""
    both = (True, False) if any(is_block_key(k) for k in options) else (True,)
    cands = [_uniform(options, i / 8, removed) for i in range(9) for removed in both]
    cands.append(("the predicted-fastest widths (descent from the smallest network)",
                  descend(ev, options, _uniform(options, 0.0, True)[1])))
    seen, out = list(measured), []
    for name, choice in sorted(cands, key=lambda c: ev.latency_ms(c[1])):
        if choice not in seen:
            seen.append(choice)
            out.append((name, choice))
    return out[:k]


def measure_fastest(lat, space: PruningSpace, measure_ms: Callable[[nn.Module], float], options, scores,
                    rows: list, cal: Calibration, k: int = CANDIDATES) -> Calibration:
    """``cal`` plus the ``k`` predicted-fastest networks not measured yet,
    measured (and the remainder refitted with them; ``rows`` start with the
    original, as :func:`calibrate_networks` was given them)."""
    ev = Evaluator(space, lat, scores)
    new = tuple(_measure(space, ev, measure_ms, name, choice, rows)
                for name, choice in fastest_candidates(ev, options, [n.choice for n in cal.networks], k))
    if new:
        lat.fit_remainder(rows, reference=0)
    return Calibration(cal.networks + new, lat.fit_error_rel if new else cal.fit_error_rel)


__all__ = ["FIT_WARN_REL", "Calibration", "Network", "calibrate_networks", "descend", "fastest_candidates",
           "fit_warnings", "measure_fastest", "split_choices"]
