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

The anchor removes drift over seconds to minutes, not a shape's own noise:
each measurement opens a fresh session, and sessions of one shape differ,
most by 1-3 % and some by 10-40 % (two passes over 48 invresnet shapes on
ONNX Runtime: 10th-90th percentile of their ratio 0.95-1.10), however long
each is timed (300 runs instead of 30 did not narrow it). With ``passes=2``
every chunk is measured forward and then backward between the same two
reference readings; a shape whose two sessions differ by more than
:data:`AGREE` gets a third, and its time is the median of three sessions
(else the geometric mean of the two).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from .specs import LayerSpec, Timing

# a mid-sized conv: long enough to time well, short enough to repeat often
REFERENCE = LayerSpec("conv", 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, 28, 28)
EVERY = 8  # shapes between two readings of the reference
AGREE = 0.05  # two sessions of a shape further apart than this (relative) call for a third


def scaled(t: Timing, factor: float) -> Timing:
    """``t`` with its times multiplied by ``factor``."""
    return replace(t, median_ms=t.median_ms * factor, iqr_ms=t.iqr_ms * factor)


def combined(timings: Sequence[Timing]) -> Timing:
    """One timing from sessions of the same shape: the median of their medians
    (of two, the geometric mean), the mean of their IQRs, every run counted,
    stable if all were."""
    if len(timings) == 1:
        return timings[0]
    logs = sorted(math.log(t.median_ms) for t in timings)
    mid = len(logs) // 2
    gm = math.exp(logs[mid] if len(logs) % 2 else (logs[mid - 1] + logs[mid]) / 2)
    return replace(timings[0], median_ms=gm, iqr_ms=sum(t.iqr_ms for t in timings) / len(timings),
                   runs=sum(t.runs for t in timings), ci_rel=max(t.ci_rel for t in timings),
                   stable=all(t.stable for t in timings))


def measure_anchored(measure: Callable[[LayerSpec], Timing], specs: Sequence[LayerSpec],
                     anchor_ms: float | None, every: int = EVERY,
                     progress: Callable[[Iterable], Iterable] | None = None,
                     done: Callable[[LayerSpec, Timing], None] | None = None,
                     passes: int = 1) -> tuple[list[Timing], float]:
    """Measure ``specs`` with ``measure``, drift-corrected against the reference
    (module docstring). ``anchor_ms``: the reference's anchor reading (None:
    this call's first reading becomes it). ``passes``: 1, or 2 (each chunk
    forward, then backward, then a third session of each shape whose two
    differ by more than ``AGREE``). ``done(spec, timing)`` is called
    with each corrected timing as soon as its chunk is bracketed (so an
    interrupted run keeps what it finished). Returns the corrected timings, in
    the order of ``specs``, and the anchor."""
    specs = list(specs)
    if not specs:
        return [], anchor_ms
    if passes not in (1, 2):
        raise ValueError(f"passes must be 1 or 2, not {passes}")
    before = measure(REFERENCE).median_ms
    anchor = float(anchor_ms) if anchor_ms else before
    it = iter(progress(specs) if progress else specs)
    out: list[Timing] = []
    chunk: list[tuple[LayerSpec, Timing]] = []
    for i, spec in enumerate(it):
        chunk.append((spec, measure(spec)))
        if len(chunk) == every or i == len(specs) - 1:
            n = len(chunk)
            back = [measure(s) for s, _ in reversed(chunk)][::-1] if passes == 2 else []
            split = [k for k in range(len(back))
                     if abs(math.log(back[k].median_ms / chunk[k][1].median_ms)) > math.log1p(AGREE)]
            third = {k: (2 * n + 1 + j, measure(chunk[k][0])) for j, k in enumerate(split)}  # (position, timing)
            after = measure(REFERENCE).median_ms
            slots = passes * n + len(third) + 1
            at = lambda pos: anchor / math.exp((1 - pos / slots) * math.log(before) + pos / slots * math.log(after))
            for k, (s, t) in enumerate(chunk):  # positions between the two readings: k + 1, 2n - k, then thirds
                sessions = [scaled(t, at(k + 1))] + ([scaled(back[k], at(2 * n - k))] if back else [])
                if k in third:
                    sessions.append(scaled(third[k][1], at(third[k][0])))
                out.append(combined(sessions))
                if done is not None:
                    done(s, out[-1])
            chunk, before = [], after
    return out, anchor


__all__ = ["REFERENCE", "EVERY", "combined", "measure_anchored", "scaled"]
