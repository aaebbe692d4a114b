"""The channel grid a device is pruned on, measured on the host that runs it.

A runtime's conv latency changes in blocks of output channels whose size
depends on the host, not on the device's name: ONNX Runtime's CPU kernels work
in blocks of 8 channels with AVX2 and of 16 with AVX-512. A descriptor's
``[grid] step_channels`` is only the starting point before anything was
measured. :func:`resolve_grid` returns the grid to use and where it came from:

- ``user``: an explicit ``--grid N`` (``override``);
- ``measured``: the step and alignment :func:`profilers.steps.detect_step`
  measured for this host's fingerprint (CPU model and instruction set, runtime
  and version, threads, dtype), kept in the measurement store's ``meta`` table
  under ``step``; measured now (seconds) when none is stored, or when the stored
  one came from a busy machine;
- ``descriptor``: the descriptor's value, where nothing may be measured
  (``measure=False``) or the device cannot run here.

The grid is ``max(step, alignment)`` (:attr:`profilers.steps.StepResult.grid_channels`).
"""
from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, replace

from hwprune.devices import Device
from hwprune.errors import UserError
from profilers import MeasurementStore, fingerprint_key
from profilers.steps import detect_step

log = logging.getLogger("hwprune")

SOURCES = ("user", "measured", "descriptor")


@dataclass(frozen=True)
class Grid:
    """The width grid of one device on this host. ``source``: one of
    :data:`SOURCES`; ``detail``: a line saying where it came from; ``measured_s``:
    seconds spent measuring it in this call (0 when stored or not measured)."""
    device: str
    step_channels: int
    min_channels: int
    source: str
    detail: str
    reliable: bool = True
    measured_s: float = 0.0
    align_channels: int = 0

    def to_json(self) -> dict:
        return {"step_channels": self.step_channels, "min_channels": self.min_channels,
                "align_channels": self.align_channels, "source": self.source,
                "detail": self.detail, "reliable": self.reliable, "measured_s": round(self.measured_s, 3)}


def host_key(device: Device, runtime) -> str:
    """The store key of facts about ``device`` on this host (its runtime's fingerprint)."""
    return fingerprint_key({"device": device.name, **runtime.fingerprint()})


def stored_step(store: MeasurementStore, key: str) -> dict | None:
    step = store.get_meta(key, "step")
    return step if isinstance(step, dict) and step.get("step_channels") else None


def measure_step(runtime, store: MeasurementStore, key: str, progress=None) -> dict:
    """Detect the step on ``runtime`` now and store it under ``key``."""
    res = detect_step(runtime, progress=progress)
    step = {**res.to_json(), "detected_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    store.put_meta(key, "step", step)
    return step


def _grid_of(step: dict) -> int:
    return int(step.get("grid_channels") or max(int(step["step_channels"]), int(step.get("align_channels") or 0)))


def descriptor_grid(device: Device) -> Grid:
    return Grid(device.name, device.step_channels, device.min_channels, "descriptor",
                f"descriptor {device.path or device.name} (nothing measured on this host)",
                align_channels=device.align_channels)


def resolve_grid(device: Device, store: MeasurementStore | None = None, *, override: int | None = None,
                 measure: bool = True, runtime=None, progress=None) -> Grid:
    """The grid to prune ``device`` on here (see the module docstring).
    ``runtime``: the device's open runtime, if the caller has one."""
    if override is not None:
        if int(override) < 1:
            raise UserError(f"--grid {override} is not a positive number of channels")
        n = int(override)
        return Grid(device.name, n, min(device.min_channels, n), "user", f"--grid {n}",
                    align_channels=device.align_channels)
    descriptor = descriptor_grid(device)
    if device.runtime == "remote":
        return descriptor
    if runtime is None:
        try:
            runtime = device.open()
        except UserError:
            return descriptor
    store = store if store is not None else MeasurementStore()
    key = host_key(device, runtime)
    step = stored_step(store, key)
    spent = 0.0
    if (step is None or step.get("reliable") is False) and measure:
        t0 = time.perf_counter()
        step = measure_step(runtime, store, key, progress)
        spent = time.perf_counter() - t0
        log.info("%s: measured the channel step on this host in %.1f s: step %s, alignment %s -> grid %d%s",
                 device.name, spent, step["step_channels"], step.get("align_channels"), _grid_of(step),
                 "" if step.get("reliable", True) else " (noisy: the host was busy)")
    if step is None:
        return descriptor
    n = _grid_of(step)
    when = "now" if spent else f"on {step.get('detected_at', 'an earlier run')}"
    detail = (f"measured on this host {when}: step {step['step_channels']}, alignment "
              f"{step.get('align_channels') or '-'}" + ("" if step.get("reliable", True) else "; noisy"))
    return Grid(device.name, n, min(device.min_channels, n), "measured", detail,
                bool(step.get("reliable", True)), spent, int(step.get("align_channels") or 0))


def with_grid(device: Device, grid: Grid) -> Device:
    """``device`` whose grid is ``grid`` (what the selector, the floors and the
    latency model read)."""
    return replace(device, step_channels=grid.step_channels, min_channels=grid.min_channels,
                   align_channels=grid.align_channels)
