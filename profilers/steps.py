"""A device's channel step: the granularity at which conv latency changes.

On many runtimes a conv's time is flat within blocks of ``s`` output channels
(ONNX Runtime CPU: blocks of 16), so widths between two block edges cost the
same. :func:`detect_step` sweeps a 3x3 conv's output channels on the device and
picks ``s`` from the measurements; :func:`fit_step` is the pure decision rule,
tested on synthetic curves.

The rule, on ``log`` latencies (so noise and errors are relative):

1. Each width is measured in ``passes`` sweeps (alternately ascending and
   descending, so drift of the machine hits every width alike); a width's
   latency is the mean of its passes, and the noise of that mean, ``noise``,
   is estimated from the scatter between passes (pooled over all widths).
2. For a candidate step ``s`` (``probe`` times a power of two, at most half
   the widest width) the model "latency is constant on blocks ``ceil(n / s)``"
   is fitted (block means); its error ``rms(s)`` is the root mean square of the
   width latencies about their block means, per degree of freedom
   (widths - blocks). The finest candidate (``s = probe``, one width per
   block) always fits exactly.
3. ``s`` fits as well as the finest, up to noise and a material tolerance, when
   ``rms(s) <= 1.5 * noise + tol_rel`` (``tol_rel`` = 2 %: differences within a
   block smaller than that do not matter for pruning). The step is the
   largest ``s`` that fits; if none does, the finest.

4. Alignment: some runtimes run a width that is not a multiple of ``a`` slower
   than the next multiple of ``a`` (GPU tensor cores in fp16 want multiples of
   8: on an H200, 68 output channels took 64 % longer than 72). For ``a`` =
   2 ``probe``, 4 ``probe``, ... the widths that are odd multiples of ``a/2``
   are compared with the width ``a/2`` above them; ``a`` is an alignment when
   the median of ``log`` (narrower / wider) exceeds the same allowance as in
   3. The alignment is the largest such ``a`` reached without a gap (else
   ``probe``), and the grid a selector should use is ``max(step, alignment)``.

With one pass the noise cannot be estimated and is taken as 0, so only
``tol_rel`` absorbs it; use ``passes >= 2`` on real devices. A result whose
noise exceeds ``MAX_NOISE_REL`` (5 %, a busy machine) is marked not
``reliable``: the allowance for noise then admits steps the device may not have.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .specs import LayerSpec

TOL_REL = 0.02
NOISE_FACTOR = 1.5
MAX_NOISE_REL = 0.05


@dataclass(frozen=True)
class StepResult:
    """Detected step and the sweep it came from (medians: mean over passes)."""

    step_channels: int
    widths: tuple[int, ...]
    medians_ms: tuple[float, ...]
    noise_rel: float = 0.0                            # noise of one width's latency, relative
    fit_rms_rel: tuple[tuple[int, float], ...] = ()   # (candidate step, rms(s)) per candidate
    align_channels: int = 0                           # widths off this multiple run slower (0: not tested)

    @property
    def grid_channels(self) -> int:
        """The width grid a selector should use: block step and alignment."""
        return max(self.step_channels, self.align_channels)

    @property
    def reliable(self) -> bool:
        return self.noise_rel <= MAX_NOISE_REL

    def to_json(self) -> dict:
        return {"step_channels": self.step_channels, "align_channels": self.align_channels,
                "grid_channels": self.grid_channels, "reliable": self.reliable, "widths": list(self.widths),
                "medians_ms": [round(m, 6) for m in self.medians_ms], "noise_rel": round(self.noise_rel, 6),
                "fit_rms_rel": {str(s): round(e, 6) for s, e in self.fit_rms_rel}}


def candidate_steps(widths: Sequence[int], probe: int) -> list[int]:
    top = max(widths)
    out, s = [], probe
    while s <= top // 2:
        out.append(s)
        s *= 2
    return out or [probe]


def block_rms(widths: Sequence[int], log_ms: np.ndarray, step: int) -> float:
    """Root mean square, per degree of freedom, of ``log_ms`` (one value per
    width) about the means of blocks ``ceil(n / step)``; 0 when each block
    holds one width."""
    blocks = np.array([math.ceil(n / step) for n in widths])
    ss = 0.0
    for b in np.unique(blocks):
        v = log_ms[blocks == b]
        ss += float(np.sum((v - v.mean()) ** 2))
    dof = len(widths) - len(np.unique(blocks))
    return math.sqrt(ss / dof) if dof > 0 else 0.0


def fit_step(widths: Sequence[int], samples_ms: Sequence[Sequence[float]], probe: int | None = None,
             tol_rel: float = TOL_REL) -> StepResult:
    """Pick the step from ``samples_ms[pass][i]`` = latency of ``widths[i]`` in
    one pass (see the module docstring for the rule)."""
    widths = [int(n) for n in widths]
    ms = np.asarray(samples_ms, dtype=float).reshape(-1, len(widths))
    if not (np.all(np.isfinite(ms)) and np.all(ms > 0)):
        raise ValueError("latencies must be positive and finite")
    logs = np.log(ms)
    probe = probe or min(widths)
    per_width = logs.mean(axis=0)
    passes = logs.shape[0]
    if passes > 1:
        within = float(np.sum((logs - per_width) ** 2)) / (len(widths) * (passes - 1))
        noise = math.sqrt(within / passes)
    else:
        noise = 0.0
    fits, best = [], probe
    for s in candidate_steps(widths, probe):
        rms = block_rms(widths, per_width, s)
        fits.append((s, rms))
        if rms <= NOISE_FACTOR * noise + tol_rel:
            best = s
    align = fit_alignment(widths, per_width, probe, NOISE_FACTOR * noise * math.sqrt(2) + tol_rel)
    return StepResult(step_channels=best, widths=tuple(widths),
                      medians_ms=tuple(float(v) for v in np.exp(per_width)), noise_rel=noise,
                      fit_rms_rel=tuple(fits), align_channels=align)


def fit_alignment(widths: Sequence[int], log_ms: np.ndarray, probe: int, allowance: float) -> int:
    """The largest ``a = probe * 2**k`` such that widths at odd multiples of
    ``a/2`` are slower than the width ``a/2`` above them, by a median ``log``
    ratio above ``allowance``, for every candidate up to ``a`` (rule 4)."""
    by_width = dict(zip((int(w) for w in widths), (float(v) for v in log_ms)))
    best, a = probe, 2 * probe
    while a <= max(by_width) // 2:
        half = a // 2
        diffs = [by_width[n] - by_width[n + half] for n in by_width
                 if n % a == half and n + half in by_width]
        if len(diffs) < 3 or float(np.median(diffs)) <= allowance:
            break
        best, a = a, 2 * a
    return best


def sweep_specs(height: int = 56, width: int = 56, n_in: int = 64, max_out: int = 64,
                probe: int = 4, batch: int = 1) -> list[LayerSpec]:
    base = LayerSpec("conv", n_in, probe, (3, 3), (1, 1), (1, 1), (1, 1), 1, height, width, batch)
    return [replace(base, out_channels=n) for n in range(probe, max_out + 1, probe)]


def detect_step(runtime, height: int = 56, width: int = 56, n_in: int = 64, max_out: int = 64,
                probe: int = 4, passes: int = 3,
                progress: Callable[..., Iterable] | None = None, batch: int = 1) -> StepResult:
    """Sweep a 3x3 conv (``n_in`` -> ``probe, 2 probe, .. max_out`` channels on a
    ``batch`` x ``height`` x ``width`` input) with ``runtime.measure_spec`` and
    pick its step."""
    if probe <= 0 or max_out < 2 * probe or passes < 1:
        raise ValueError(f"need probe > 0, max_out >= 2 probe and passes >= 1 "
                         f"(got probe={probe}, max_out={max_out}, passes={passes})")
    specs = sweep_specs(height, width, n_in, max_out, probe, batch)
    order = [(p, i) for p in range(passes)
             for i in (range(len(specs)) if p % 2 == 0 else reversed(range(len(specs))))]
    samples = np.zeros((passes, len(specs)))
    it = progress(order, desc="detecting channel step", unit="shape") if progress else order
    for p, i in it:
        samples[p, i] = runtime.measure_spec(specs[i]).median_ms
    return fit_step([s.out_channels for s in specs], samples, probe)


__all__ = ["StepResult", "detect_step", "fit_step", "fit_alignment", "block_rms", "candidate_steps", "sweep_specs"]
