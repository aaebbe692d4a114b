"""Which way to prune each grouped conv, and pricing a conv that loses whole groups.

:func:`choose_modes` compares a latency model's (or the device's measured) ms
of each grouped conv pruned within its groups and by whole groups at a few
fractions of its width, and takes the faster (:mod:`hwprune.graph.grouped`
describes the two modes). A whole-group conv's ``groups`` follows its width
(``Layer.group_in``): :func:`widths_ms`, :func:`layer_weights` and
:func:`whole_specs` price and profile it so.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from profilers import LayerSpec

# ---- the mode decision -----------------------------------------------------------

@dataclass(frozen=True)
class ModeChoice:
    """Why a grouped conv is pruned in ``mode``: predicted ms of the conv summed
    over ``fractions`` of its width in each mode (nan where not possible)."""
    name: str
    mode: str
    within_ms: float
    whole_ms: float
    fractions: tuple[float, ...]
    reason: str


def mode_specs(spec: LayerSpec, frac: float) -> tuple[LayerSpec, LayerSpec]:
    """The conv at about ``frac`` of its width pruned within groups and by whole groups."""
    G = spec.groups
    bin_, bout = spec.in_channels // G, spec.out_channels // G
    k_in, k_out = max(1, round(frac * bin_)), max(1, round(frac * bout))
    g = max(1, round(frac * G))
    within = replace(spec, in_channels=k_in * G, out_channels=k_out * G)
    whole = replace(spec, in_channels=g * bin_, out_channels=g * bout, groups=g)
    return within, whole


def choose_modes(space, layer_ms: Callable[[LayerSpec], float], fractions=(0.25, 0.5, 0.75),
                 source: str = "predicted") -> dict[str, ModeChoice]:
    """Per grouped conv of ``space``, the mode whose pruned conv ``layer_ms``
    (a latency model's ``spec -> ms``) predicts faster, summed over
    ``fractions``; within-group mode on a tie or where whole groups cannot go.
    ``source`` says where ``layer_ms`` comes from (``predicted``, ``measured``)."""
    out = {}
    for r in space.grouped:
        spec = next(l.spec for l in space.layers if l.name == r.name)
        spec = replace(spec, groups=r.groups)
        pairs = [mode_specs(spec, f) for f in fractions]
        within = float(sum(layer_ms(a) for a, _ in pairs))
        if not r.whole_ok:
            out[r.name] = ModeChoice(r.name, "within", within, float("nan"), tuple(fractions),
                                     f"whole groups cannot go ({r.note.split(': ')[-1]})")
            continue
        whole = float(sum(layer_ms(b) for _, b in pairs))
        mode = "whole" if whole < within else "within"
        out[r.name] = ModeChoice(r.name, mode, within, whole, tuple(fractions),
                                 f"{source} {whole:.4g} ms by whole groups vs {within:.4g} ms within groups "
                                 f"at {', '.join(f'{f:g}' for f in fractions)} of its width")
    return out


# ---- pricing a whole-group layer -----------------------------------------------------

def layer_weights(layer, n_in, n_out):
    """Conv/linear weights of ``layer`` at widths (numbers or arrays): a
    whole-group conv keeps ``group_in`` inputs per output channel."""
    if layer.group_in:
        k = layer.spec.kernel
        return np.asarray(n_out) * layer.group_in * k[0] * k[1]
    from profilers.specs import weight_count
    return weight_count(layer.spec, n_in, n_out)


def widths_ms(cost, layer, n_in, n_out) -> np.ndarray:
    """``cost(spec, n_in, n_out)`` (a latency model's vectorised layer cost) for
    ``layer``; a whole-group conv is priced at ``groups = n_in // group_in``,
    one call per group count."""
    if not layer.group_in:
        return cost(layer.spec, n_in, n_out)
    n_in, n_out = np.broadcast_arrays(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64))
    out = np.zeros(n_in.shape, dtype=float)
    g_of = n_in // layer.group_in
    for g in np.unique(g_of):
        m = g_of == g
        out[m] = np.asarray(cost(replace(layer.spec, groups=int(g)), n_in[m], n_out[m]), dtype=float).reshape(-1)
    return out


def whole_specs(space, options: dict) -> list[LayerSpec]:
    """The shapes a whole-group conv takes over its group's options (one layer
    family per group count), for profiling."""
    full = space.full_choice()
    specs = []
    for layer in space.layers:
        if layer.group_in:
            gid = layer.in_terms[0].gid
            specs += [space.layer_spec(layer, {**full, gid: opt}) for opt in options[gid]]
    return specs
