"""One measurement protocol for every runtime.

Warm up, then time single runs until the 95 % confidence interval of the
median is within ``target_rel`` of it (order-statistic interval) or a time cap
is reached. Report median, IQR, run count and whether the target was met, so
unstable measurements are flagged rather than silently stored.

``clock``: ``"wall"`` times each run with ``time.perf_counter``; ``"thread"``
with the CPU time of the calling thread (``time.thread_time``). For a runtime
that computes on the calling thread only (ONNX Runtime and PyTorch CPU at one
thread) the two agree on an idle machine, but when other processes take the
core, wall-clock runs of a long model are stretched by time slices far more
often than those of a short one, so even interleaved ratios drift (resnet56's
smallest sub-network over the full network: 0.14-0.27 wall-clock, 0.28-0.29
thread time on this 2-core host under load). The time caps stay wall-clock.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .specs import Timing


@dataclass(frozen=True)
class Protocol:
    warmup_runs: int = 10
    warmup_s: float = 0.05
    min_runs: int = 30
    max_runs: int = 2000
    max_s: float = 1.0
    target_rel: float = 0.02
    clock: str = "wall"     # or "thread": CPU time of the calling thread


def run_clock(protocol: Protocol) -> Callable[[], float]:
    if protocol.clock == "thread":
        return time.thread_time
    if protocol.clock != "wall":
        raise ValueError(f"clock must be 'wall' or 'thread', not {protocol.clock!r}")
    return time.perf_counter


LAYER_PROTOCOL = Protocol()
MODEL_PROTOCOL = Protocol(warmup_runs=10, warmup_s=0.3, min_runs=40, max_s=4.0, target_rel=0.01)


def median_ci_rel(samples: np.ndarray) -> float:
    """Relative half-width of the ~95 % interval of the median (order statistics)."""
    n = len(samples)
    if n < 5:
        return math.inf
    s = np.sort(samples)
    half = 1.96 * math.sqrt(n) / 2.0
    lo = max(0, int(math.floor(n / 2.0 - half)))
    hi = min(n - 1, int(math.ceil(n / 2.0 + half)))
    med = float(np.median(s))
    return float((s[hi] - s[lo]) / 2.0 / med) if med > 0 else math.inf


def measure(run: Callable[[], object], protocol: Protocol = LAYER_PROTOCOL,
            sync: Callable[[], None] | None = None) -> Timing:
    """Time ``run`` under ``protocol``; ``sync`` (e.g. CUDA synchronise) is called
    after each run, inside the timed region."""
    clock, tick = time.perf_counter, run_clock(protocol)
    start = clock()
    done = 0
    while done < protocol.warmup_runs or clock() - start < protocol.warmup_s:
        run()
        if sync:
            sync()
        done += 1
    times: list[float] = []
    t0 = clock()
    ci = math.inf
    while len(times) < protocol.max_runs:
        a = tick()
        run()
        if sync:
            sync()
        times.append(tick() - a)
        n = len(times)
        if n >= protocol.min_runs and (n % 10 == 0):
            ci = median_ci_rel(np.asarray(times))
            if ci <= protocol.target_rel or clock() - t0 > protocol.max_s:
                break
    arr = np.asarray(times) * 1e3
    q1, q3 = np.percentile(arr, [25, 75])
    ci = median_ci_rel(arr)
    return Timing(median_ms=float(np.median(arr)), iqr_ms=float(q3 - q1), runs=len(arr),
                  ci_rel=float(ci), stable=bool(ci <= protocol.target_rel))


def measure_interleaved(runs: list[Callable[[], object]], protocol: Protocol = MODEL_PROTOCOL,
                        sync: Callable[[], None] | None = None) -> list[Timing]:
    """Time several callables by alternating single runs of each, so that drift
    of the machine (other load, clock changes) affects all of them alike; stop
    when every median's interval meets the target or at the time cap (which
    scales with the number of callables)."""
    clock, tick = time.perf_counter, run_clock(protocol)
    start = clock()
    while clock() - start < protocol.warmup_s * len(runs):
        for run in runs:
            run()
            if sync:
                sync()
    times: list[list[float]] = [[] for _ in runs]
    t0 = clock()
    cap = protocol.max_s * len(runs)
    while len(times[0]) < protocol.max_runs:
        for run, ts in zip(runs, times):
            a = tick()
            run()
            if sync:
                sync()
            ts.append(tick() - a)
        n = len(times[0])
        if n >= protocol.min_runs and n % 10 == 0:
            worst = max(median_ci_rel(np.asarray(ts)) for ts in times)
            if worst <= protocol.target_rel or clock() - t0 > cap:
                break
    out = []
    for ts in times:
        arr = np.asarray(ts) * 1e3
        q1, q3 = np.percentile(arr, [25, 75])
        ci = median_ci_rel(arr)
        out.append(Timing(float(np.median(arr)), float(q3 - q1), len(arr), float(ci),
                          bool(ci <= protocol.target_rel)))
    return out
