"""Device descriptors (``devices/*.toml``) and opening their runtimes.

The folder is found from ``$HWPRUNE_DEVICES_DIR`` or next to the package.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomllib

import profilers
from hwprune.errors import UserError


@dataclass(frozen=True)
class Device:
    name: str
    runtime: str
    description: str
    options: tuple[tuple[str, object], ...]
    step_channels: int
    min_channels: int
    path: str

    def open(self):
        try:
            return profilers.create_runtime(self.runtime, **dict(self.options))
        except profilers.RuntimeUnavailable as exc:
            raise UserError(f"device {self.name!r} cannot run here: {exc}; install it "
                            f"(see README, 'Devices') or pick another device") from None


def devices_dir() -> Path:
    env = os.environ.get("HWPRUNE_DEVICES_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "devices"


def load(path: Path) -> Device:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        grid = data.get("grid", {})
        return Device(name=str(data["name"]), runtime=str(data["runtime"]),
                      description=str(data.get("description", "")),
                      options=tuple(sorted(data.get("options", {}).items())),
                      step_channels=int(grid.get("step_channels", 16)),
                      min_channels=int(grid.get("min_channels", 8)), path=str(path))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"device file {path} is corrupt ({type(exc).__name__}: {exc}); "
                        f"restore it from the repository") from None


def all_devices() -> dict[str, Device]:
    folder = devices_dir()
    if not folder.is_dir():
        raise UserError(f"no device folder at {folder}; set HWPRUNE_DEVICES_DIR")
    out = {}
    for p in sorted(folder.glob("*.toml")):
        d = load(p)
        out[d.name] = d
    return out


def remote(name: str) -> Device:
    """``remote:HOST:PORT``: a board running ``hwprune agent``; the token comes
    from ``$HWPRUNE_AGENT_TOKEN``."""
    _, _, rest = name.partition(":")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"remote device {name!r} is not remote:HOST:PORT (e.g. remote:127.0.0.1:8765)")
    return Device(name=name, runtime="remote", description=f"hwprune agent at {host}:{port}",
                  options=(("host", host), ("port", int(port)),
                           ("token", os.environ.get("HWPRUNE_AGENT_TOKEN", ""))),
                  step_channels=16, min_channels=8, path="")


def get(name: str) -> Device:
    if name.startswith("remote:"):
        return remote(name)
    devs = all_devices()
    if name not in devs:
        raise UserError(f"unknown device {name!r}; known devices: {', '.join(sorted(devs))}")
    return devs[name]


def machine_description() -> str:
    """The host in one line: CPU model, cores, OS, Python, torch and onnxruntime versions."""
    import platform

    import onnxruntime as ort
    import torch

    from profilers.ort_cpu import cpu_model
    return (f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
