"""Device descriptors (``*.toml``) and opening their runtimes.

Built-in descriptors and committed profiles ship inside the installed package
``devices`` (package data, read with :mod:`importlib.resources`). A user's own
descriptors and profiles live in ``$XDG_CONFIG_HOME/hwprune/devices`` (default
``~/.config/hwprune/devices``; ``*.toml`` there, profiles in ``profiles/``) and
override built-ins of the same name. ``$HWPRUNE_DEVICES_DIR`` names one folder
that replaces both (for a fleet's own set of devices, or for tests).
"""
from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import tomllib

import profilers
from hwprune.errors import UserError

ENV_VAR = "HWPRUNE_DEVICES_DIR"


@dataclass(frozen=True)
class Device:
    name: str
    runtime: str
    description: str
    options: tuple[tuple[str, object], ...]
    step_channels: int
    min_channels: int
    path: str
    align_channels: int = 0  # widths off this multiple run slower kernels (0: not known)

    def open(self):
        try:
            return profilers.create_runtime(self.runtime, **dict(self.options))
        except profilers.RuntimeUnavailable as exc:
            raise UserError(f"device {self.name!r} cannot run here: {exc}; install it "
                            f"(see README, 'Devices') or pick another device") from None


def builtin_dir() -> Path:
    """The descriptors and profiles shipped with the package."""
    return Path(os.fspath(importlib.resources.files("devices")))


def user_dir() -> Path:
    """Where a user's own descriptors and profiles go (``$HWPRUNE_DEVICES_DIR`` when set)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "hwprune" / "devices"


def search_dirs() -> list[Path]:
    """Descriptor folders in the order read (a later one overrides a name)."""
    return [user_dir()] if os.environ.get(ENV_VAR) else [builtin_dir(), user_dir()]


def profile_dirs() -> list[Path]:
    """Profile folders, the user's first."""
    return [d / "profiles" for d in reversed(search_dirs())]


def load(path: Path) -> Device:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        grid = data.get("grid", {})
        return Device(name=str(data["name"]), runtime=str(data["runtime"]),
                      description=str(data.get("description", "")),
                      options=tuple(sorted(data.get("options", {}).items())),
                      step_channels=int(grid.get("step_channels", 16)),
                      min_channels=int(grid.get("min_channels", 8)), path=str(path),
                      align_channels=int(grid.get("align_channels", 0)))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"device file {path} is corrupt ({type(exc).__name__}: {exc}); "
                        f"restore it from the repository") from None


def all_devices() -> dict[str, Device]:
    env = os.environ.get(ENV_VAR)
    if env and not Path(env).is_dir():
        raise UserError(f"{ENV_VAR}={env} is not a folder; point it at a folder of device .toml files "
                        f"or unset it to use the built-in devices")
    out = {}
    for folder in search_dirs():
        for p in sorted(folder.glob("*.toml")) if folder.is_dir() else ():
            d = load(p)
            out[d.name] = d
    return out


REMOTE_RUNTIMES = ("onnxruntime", "openvino", "executorch")


def remote(name: str) -> Device:
    """``remote:HOST:PORT``: a board running ``hwprune agent``, measuring with its
    ONNX Runtime; ``remote:HOST:PORT/openvino`` or ``/executorch``: with that
    runtime of the board. The token comes from ``$HWPRUNE_AGENT_TOKEN``."""
    _, _, rest = name.partition(":")
    rest, _, runtime = rest.partition("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"remote device {name!r} is not remote:HOST:PORT (e.g. remote:127.0.0.1:8765)")
    if runtime and runtime not in REMOTE_RUNTIMES:
        raise UserError(f"remote device {name!r} names the runtime {runtime!r}; use "
                        f"{', '.join(f'remote:{host}:{port}/{r}' for r in REMOTE_RUNTIMES)}")
    runtime = runtime or REMOTE_RUNTIMES[0]
    return Device(name=name, runtime="remote", description=f"hwprune agent at {host}:{port} ({runtime})",
                  options=(("host", host), ("port", int(port)), ("runtime", runtime),
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

    from profilers.ort_cpu import cpu_isa, cpu_model
    return (f"{cpu_model()} ({cpu_isa()}), {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
