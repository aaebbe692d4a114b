"""What ``hwprune devices`` shows: every known device, whether it runs here, the
one grid each will be pruned on (and where it came from), its stored
measurements and the profile files that describe it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hwprune import devices
from hwprune.latency.grid import descriptor_grid, resolve_grid, stored_step
from hwprune.latency.profiling import Profiler
from profilers import MeasurementStore, fingerprint_key, host_key_of
from profilers.profile_io import profile_files, read_header


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    runtime: str
    description: str
    descriptor: str
    available: bool
    reason: str
    grid: dict                      # Grid.to_json() of the grid that will be used
    descriptor_step_channels: int
    stored_measurements: int
    measured_step: dict | None = None  # the step stored for this host (profilers.steps.StepResult.to_json())
    profiles: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "runtime": self.runtime, "available": self.available, "reason": self.reason,
                "step_channels": self.grid["step_channels"], "grid": self.grid,
                "descriptor_step_channels": self.descriptor_step_channels,
                "measured_step_channels": (self.measured_step or {}).get("step_channels"),
                "measured_step_reliable": None if self.measured_step is None else
                self.measured_step.get("reliable", True),
                "stored_measurements": self.stored_measurements, "profiles": self.profiles,
                "description": self.description, "descriptor": self.descriptor}


def profile_index(folders) -> tuple[dict[str, list[dict]], list[str]]:
    """Profile files in ``folders`` by device name, and lines for unreadable ones."""
    by_device: dict[str, list[dict]] = {}
    bad = []
    for p in (p for folder in folders for p in profile_files(folder)):
        try:
            h = read_header(p)
        except ValueError as exc:
            bad.append(str(exc))
            continue
        by_device.setdefault(h["device"], []).append(
            {"file": str(p), "count": h.get("count"), "step_channels": h.get("step_channels"),
             "date": h.get("date"), "fingerprint": h["fingerprint"]})
    return by_device, bad


def inventory(store: MeasurementStore, measure_grid: bool = False, progress=None
              ) -> tuple[list[DeviceInfo], list[str]]:
    """Every known device (see the module docstring) and the unreadable profile
    files. ``measure_grid``: measure the channel step of every device that runs
    here and has none stored (else the descriptor's grid is shown, to be
    measured on the device's first prune)."""
    files, bad = profile_index(devices.profile_dirs())
    out = []
    for name, d in devices.all_devices().items():
        host, count, reason, runtime = None, 0, "", None
        try:
            prof = Profiler(d, store)
            runtime, host = prof.runtime, prof.fp
            count = sum(store.count(k) for k in store.devices() if host_key_of(k) == host)
        except Exception as exc:  # a runtime that cannot run here says why
            reason = str(exc)
        grid = descriptor_grid(d) if runtime is None else \
            resolve_grid(d, store, measure=measure_grid, runtime=runtime, progress=progress)
        profiles = [{**{k: v for k, v in f.items() if k != "fingerprint"},
                     "matches_this_host": host is not None and _host_of(f["fingerprint"]) == host}
                    for f in files.get(name, [])]
        out.append(DeviceInfo(name, d.runtime, d.description, d.path, runtime is not None, reason,
                              grid.to_json(), d.step_channels, count,
                              stored_step(store, host) if host else None, profiles))
    return out, bad


def _host_of(fingerprint: dict) -> str:
    return host_key_of(fingerprint_key(fingerprint))


def grid_text(info: DeviceInfo) -> str:
    g = info.grid
    where = {"measured": "measured here", "user": "--grid", "descriptor": "descriptor"}[g["source"]]
    return f"{g['step_channels']} ({where}{'' if g.get('reliable', True) else ', noisy'})"


def profiles_text(info: DeviceInfo) -> str:
    return ", ".join(f"{Path(f['file']).name} ({f['count']}, "
                     f"{'this host' if f['matches_this_host'] else 'other host'})" for f in info.profiles) or "-"
