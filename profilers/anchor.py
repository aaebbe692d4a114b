"""Layer profiles measured at different moments, put on one footing.

A shared host's speed drifts by 10-50 % within minutes, and a layer profile
is measured over minutes (and added to on later days). Read as they come,
the layers measured while the host was slow look slower than their
neighbours, and a network predicted from them carries that drift, layer by
layer. :func:`measure_anchored` measures a fixed reference layer
(:data:`REFERENCE`) before the first shape and after every ``every`` shapes,
and scales each shape by ``anchor / reference``: the reference's reading at
the anchor moment over its reading at the shape's moment (interpolated, on
logs, between the readings just before and just after it). The anchor is
the reference's first reading on this host and runtime (kept in the store),
so shapes measured today and next week are on the footing of that first
moment: ratios between them are what the device does, not what the host was
doing.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from .specs import LayerSpec, Timing

# a mid-sized conv: long enough to time well, short enough to repeat often
REFERENCE = LayerSpec("conv", 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, 28, 28)
EVERY = 8  # shapes between two readings of the reference


def scaled(t: Timing, factor: float) -> Timing:
    """``t`` with its times multiplied by ``factor``."""
    return replace(t, median_ms=t.median_ms * factor, iqr_ms=t.iqr_ms * factor)


def measure_anchored(measure: Callable[[LayerSpec], Timing], specs: Sequence[LayerSpec],
                     anchor_ms: float | None, every: int = EVERY,
                     progress: Callable[[Iterable], Iterable] | None = None,
                     done: Callable[[LayerSpec, Timing], None] | None = None) -> tuple[list[Timing], float]:
    """Measure ``specs`` with ``measure``, drift-corrected against the reference
    (module docstring). ``anchor_ms``: the reference's anchor reading (None:
    this call's first reading becomes it). ``done(spec, timing)`` is called
    with each corrected timing as soon as its chunk is bracketed (so an
    interrupted run keeps what it finished). Returns the corrected timings, in
    the order of ``specs``, and the anchor."""
    specs = list(specs)
    if not specs:
        return [], anchor_ms
    before = measure(REFERENCE).median_ms
    anchor = float(anchor_ms) if anchor_ms else before
    it = iter(progress(specs) if progress else specs)
    out: list[Timing] = []
    chunk: list[tuple[LayerSpec, Timing]] = []
    for i, spec in enumerate(it):
        chunk.append((spec, measure(spec)))
        if len(chunk) == every or i == len(specs) - 1:
            after = measure(REFERENCE).median_ms
            for k, (s, t) in enumerate(chunk):
                f = (k + 1) / (len(chunk) + 1)  # where it was measured between the two readings
                out.append(scaled(t, anchor / math.exp((1 - f) * math.log(before) + f * math.log(after))))
                if done is not None:
                    done(s, out[-1])
            chunk, before = [], after
    return out, anchor


__all__ = ["REFERENCE", "EVERY", "measure_anchored", "scaled"]
