"""Latency models of devices that cannot run here, from their profile files.

A device profile (``devices/profiles/*.jsonl``, see :mod:`profilers.profile_io`)
measured elsewhere (an H200 GPU profile read on a CPU machine, a board) is
enough to predict a network's latency there: the layer lines fit the
per-family quadratics of :class:`latency_models.NetworkLatencyModel`, and
whole-network lines, if the file has any, fit its remainder: those of the
same architecture (the same layer sequence at other widths) where there are
at least two, else all of them.

Lines the reader understands, after the header:

* a **layer measurement**: an object with a ``"spec"`` object (and no
  ``"type"``, or ``"type": "layer"``), validated exactly as
  :func:`profilers.profile_io.load_profile` does;
* a **whole-network measurement**: ``{"type": "network", "specs": [LayerSpec
  objects of every conv/linear layer at the widths measured], "median_ms": ...}``
  with optional ``"model"`` (a name, for the report), ``"iqr_ms"`` and anything
  else; a spec may also be given as its key string (``LayerSpec.key()``). It
  feeds the remainder fit (``c0 + c1 x activations + c2 x weights``).

Every other line (another ``"type"``, an object without ``"spec"``, a JSON
value that is not an object) is **ignored** and counted by type in
:attr:`ProfileData.ignored`, so a file written by a later version with new line
types still reads. A line of a known type that is malformed is an error, as is
a file whose header ``count`` matches neither its layer lines nor all its lines
(a truncated file).

Without whole-network lines the remainder cannot be fitted: predictions are the
sum of the isolated layer latencies, and :func:`offline_model` says so in its
note (on a GPU, isolated layers each pay a launch and a synchronisation that a
whole network does not, so such a sum overestimates).
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hwprune.errors import UserError
from latency_models import NetworkLatencyModel
from profilers import LayerSpec, Measurement
from profilers.profile_io import parse_row, profile_files, read_header, read_lines

log = logging.getLogger("hwprune")


@dataclass(frozen=True)
class NetworkRow:
    """A whole network measured on the device."""
    specs: tuple[LayerSpec, ...]
    median_ms: float
    model: str = ""


@dataclass(frozen=True)
class ProfileData:
    path: str
    header: dict
    layers: tuple[Measurement, ...]
    networks: tuple[NetworkRow, ...] = ()
    ignored: dict = field(default_factory=dict)  # line type -> lines skipped

    @property
    def device(self) -> str:
        return self.header["device"]

    @property
    def step_channels(self) -> int | None:
        return self.header.get("step_channels")


def _bad(path: Path, line_no: int, why: str) -> UserError:
    return UserError(f"profile {path} line {line_no}: {why}")


def _network_row(path: Path, line_no: int, row: dict) -> NetworkRow:
    specs = row.get("specs")
    ms = row.get("median_ms")
    if not isinstance(specs, list) or not specs or not all(isinstance(s, (dict, str)) for s in specs):
        raise _bad(path, line_no, "a network line needs 'specs', a non-empty list of layer spec objects")
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 < ms < math.inf:
        raise _bad(path, line_no, "a network line needs 'median_ms' > 0")
    try:
        parsed = tuple(LayerSpec.from_key(s if isinstance(s, str) else json.dumps(s)) for s in specs)
    except (TypeError, KeyError, ValueError) as exc:
        raise _bad(path, line_no, f"a network spec is not a layer spec ({exc})") from None
    return NetworkRow(parsed, float(ms), str(row.get("model", "")))


def read_profile(path: str | Path) -> ProfileData:
    """Read a profile file (module docstring); bad files raise :class:`UserError`."""
    path = Path(path)
    try:
        header, lines = read_lines(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    layers, networks, ignored = [], [], Counter()
    body = [(i, text) for i, text in enumerate(lines[1:], start=2) if text.strip()]
    for i, text in body:
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _bad(path, i, f"not JSON ({exc.msg})") from None
        kind = row.get("type", "layer" if "spec" in row else None) if isinstance(row, dict) else None
        if kind == "layer":
            try:
                key, timing = parse_row(path, i, text)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            layers.append(Measurement(header["device"], LayerSpec.from_key(key), timing))
        elif kind == "network":
            networks.append(_network_row(path, i, row))
        else:
            ignored[str(kind) if kind is not None else "unknown"] += 1
    count = header.get("count")
    if isinstance(count, int) and count not in (len(layers), len(body)):
        raise _bad(path, len(lines), f"header says {count} measurements, file has {len(layers)} layer lines "
                                     f"(truncated?)")
    if ignored:
        log.info("profile %s: ignored %s", path, ", ".join(f"{n} '{k}' lines" for k, n in ignored.items()))
    return ProfileData(str(path), header, tuple(layers), tuple(networks), dict(ignored))


def find_profile(device: str, folders: str | Path | Sequence[str | Path]) -> Path | None:
    """The newest profile file in ``folders`` (one folder or several) whose header
    names ``device`` (unreadable files are skipped)."""
    best = None
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    for p in (p for folder in folders for p in profile_files(folder)):
        try:
            h = read_header(p)
        except ValueError:
            continue
        if h["device"] == device and (best is None or str(h.get("date", "")) > best[0]):
            best = (str(h.get("date", "")), p)
    return best[1] if best else None


def _architecture(specs: Sequence[LayerSpec]) -> tuple:
    """The layer sequence without widths: networks that differ only in widths
    share it (and the ops between their layers, which the remainder covers)."""
    return tuple(s.family() for s in specs)


@dataclass(frozen=True)
class OfflineModel:
    model: NetworkLatencyModel
    note: str               # how the remainder was obtained
    networks_used: int


def offline_model(profile: ProfileData, specs: Sequence[LayerSpec],
                  step_channels: int | None = None) -> OfflineModel:
    """A fitted latency model for the network whose full-width layers are
    ``specs``, from ``profile`` alone: the same layer model a measured device
    gets (:func:`hwprune.latency.profiling.fit_latency_model`), at ``step_channels``
    (the device grid's). Raises :class:`UserError` when the profile lacks a
    layer family the network has."""
    if not profile.layers:
        raise UserError(f"profile {profile.path} has no layer measurements")
    lat = NetworkLatencyModel(step_channels=step_channels).fit(list(profile.layers))
    missing = {s.family() for s in lat.missing(specs)}
    if missing:
        example = json.loads(next(iter(sorted(missing))))
        raise UserError(f"profile {profile.path} has no measurements for {len(missing)} of the model's layer "
                        f"families (e.g. {example['kind']} {example['kernel'][0]}x{example['kernel'][1]} stride "
                        f"{example['stride'][0]} on {example['height']}x{example['width']}); profile the model "
                        f"on {profile.device} with 'hwprune profile --export'")
    usable = [n for n in profile.networks if not lat.missing(n.specs)]
    same = [n for n in usable if _architecture(n.specs) == _architecture(specs)]
    chosen = same if len(same) >= 2 else usable
    if chosen:
        lat.fit_remainder([(list(n.specs), n.median_ms) for n in chosen])
        names = sorted({n.model for n in chosen if n.model})
        note = (f"remainder fitted to {len(chosen)} whole-network measurements in the profile"
                + (" of this architecture" if all(n in same for n in chosen) else
                   f" ({len([n for n in chosen if n in same])} of this architecture)")
                + (f" ({', '.join(names)})" if names else ""))
    else:
        note = ("remainder not fitted: the profile has no whole-network measurements, so predictions are "
                "the sum of isolated layer latencies")
    return OfflineModel(lat, note, len(chosen))


__all__ = ["NetworkRow", "ProfileData", "OfflineModel", "read_profile", "find_profile", "offline_model"]
