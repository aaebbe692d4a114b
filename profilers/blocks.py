"""The latency ratio of two models as a user measures it: fresh sessions, alternating blocks.

A user judges a pruned model by running it alone, in a fresh session, many
times. Interleaving two models run by run (:func:`profilers.protocol.measure_interleaved`)
cancels the host's drift but is not what a user sees: each run finds the
caches holding the other model, which slows a small model relatively more
(pruned networks read 4-9 % slower relative to the original than in separate
sessions). Blocks keep each model alone for a whole block, and alternating the
blocks (order swapped each round: ``ref, cand``, then ``cand, ref``, ...) keeps
drift from favouring either.

:func:`ratio_in_blocks` repeats rounds until the 95 % interval of the ratio is
within ``target_rel`` (+-2 % by default) or a cap in rounds or seconds is hit;
the interval is a t-interval on the rounds' log ratios, so it widens with the
host's noise and the answer says whether it was ``sure``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .protocol import Protocol

# one block: warm-up, then runs until the median is known to 2 % or 0.4 s
BLOCK_PROTOCOL = Protocol(warmup_runs=5, warmup_s=0.1, min_runs=20, max_runs=2000, max_s=0.4, target_rel=0.02)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # Student's t, 97.5 % quantile, 1..30 degrees of freedom


@dataclass(frozen=True)
class RatioEstimate:
    """``candidate / reference`` latency: ``ratio`` (geometric mean over rounds)
    and its 95 % interval ``[ratio_lo, ratio_hi]``; ``sure`` when the interval's
    half-width is within the target. ``reference_ms``/``candidate_ms``: medians
    of the block medians; ``drift_rel``: how far the reference's block medians
    spread (max/min - 1) while this ran, the host's drift."""
    ratio: float
    ratio_lo: float
    ratio_hi: float
    rounds: int
    reference_ms: float
    candidate_ms: float
    drift_rel: float
    sure: bool
    seconds: float

    @property
    def half_width_rel(self) -> float:
        return (self.ratio_hi / self.ratio_lo) ** 0.5 - 1.0

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "ratio_lo": self.ratio_lo, "ratio_hi": self.ratio_hi, "rounds": self.rounds,
                "reference_ms": self.reference_ms, "candidate_ms": self.candidate_ms,
                "drift_rel": self.drift_rel, "sure": self.sure, "seconds": self.seconds}


def t_quantile(dof: int) -> float:
    return T_975[dof - 1] if 1 <= dof <= len(T_975) else 1.96


def interval(log_ratios) -> tuple[float, float, float]:
    """(ratio, low, high) of the 95 % t-interval of the mean log ratio."""
    x = np.asarray(log_ratios, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return math.exp(m), 0.0, math.inf
    half = t_quantile(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def ratio_in_blocks(reference: Callable[[], float], candidate: Callable[[], float], *,
                    target_rel: float = 0.02, min_rounds: int = 3, max_rounds: int = 30,
                    max_s: float = 60.0) -> RatioEstimate:
    """``reference()`` and ``candidate()`` each measure one block (a fresh
    session, warm-up, many runs) and return its median in ms. Rounds alternate
    the order; stop once ``min_rounds`` are done and the interval's half-width
    is within ``target_rel``, or at ``max_rounds`` / ``max_s``."""
    if min_rounds < 2 or max_rounds < min_rounds:
        raise ValueError(f"need 2 <= min_rounds <= max_rounds (got {min_rounds}, {max_rounds})")
    t0 = time.perf_counter()
    refs, cands, logs = [], [], []
    ratio, lo, hi = math.nan, 0.0, math.inf
    while len(logs) < max_rounds:
        if len(logs) % 2 == 0:
            r, c = reference(), candidate()
        else:
            c, r = candidate(), reference()
        if not (r > 0 and c > 0):
            raise ValueError(f"block medians must be positive (reference {r}, candidate {c})")
        refs.append(r)
        cands.append(c)
        logs.append(math.log(c / r))
        ratio, lo, hi = interval(logs)
        done = len(logs) >= min_rounds and (hi / lo) ** 0.5 - 1.0 <= target_rel
        if done or time.perf_counter() - t0 > max_s:
            break
    sure = len(logs) >= 2 and (hi / lo) ** 0.5 - 1.0 <= target_rel
    return RatioEstimate(ratio, lo, hi, len(logs), float(np.median(refs)), float(np.median(cands)),
                         float(max(refs) / min(refs) - 1.0), bool(sure), time.perf_counter() - t0)


def block_runner(runtime, model, example_inputs, protocol: Protocol = BLOCK_PROTOCOL) -> Callable[[], float]:
    """A block of ``model`` on ``runtime``: ONNX runtimes export once and open a
    fresh session per block; others (ExecuTorch, which lowers once per module
    and loads the program afresh per block) measure the module as they run it."""
    if hasattr(runtime, "measure_onnx") and getattr(runtime, "measures_onnx", True):
        from .onnx_export import feeds, to_onnx_bytes
        data, f = to_onnx_bytes(model, example_inputs), feeds(example_inputs)
        return lambda: runtime.measure_onnx(data, f, protocol=protocol).median_ms
    return lambda: runtime.measure_module(model, example_inputs, protocol=protocol).median_ms


__all__ = ["BLOCK_PROTOCOL", "RatioEstimate", "block_runner", "interval", "ratio_in_blocks", "t_quantile"]
