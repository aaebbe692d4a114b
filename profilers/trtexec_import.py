"""Read the per-layer profile ``trtexec --exportProfile=prof.json`` writes.

The file is a JSON list: first ``{"count": N}`` (profiled iterations), then one
object per engine layer with ``name``, ``timeMs`` (summed over the N
iterations), ``averageMs``, ``percentage`` of the total and, in newer
TensorRT versions, ``medianMs``. Layer names are TensorRT's (fused layers are
joined with ``" + "``, e.g. ``"/conv1/Conv + /relu/Relu"``; reformat layers
appear as their own entries), so this gives per-layer times of an engine built
elsewhere, for example on a board reachable only by its own tools.

trtexec does not escape the names it writes, so a layer name with a quote or
backslash makes the file invalid JSON; that and every other malformed file
raises :class:`ValueError` naming the file.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrtLayerTime:
    """One layer of a trtexec profile; times are per iteration."""

    name: str
    average_ms: float
    median_ms: float | None  # absent in profiles from older TensorRT versions
    percentage: float

    @property
    def latency_ms(self) -> float:
        """The median when the profile has it, else the average."""
        return self.median_ms if self.median_ms is not None else self.average_ms


@dataclass(frozen=True)
class TrtProfile:
    iterations: int
    layers: tuple[TrtLayerTime, ...]

    @property
    def total_average_ms(self) -> float:
        return sum(layer.average_ms for layer in self.layers)


def _number(entry: dict, key: str, where: str, required: bool = True) -> float | None:
    if key not in entry:
        if required:
            raise ValueError(f"{where}: missing {key!r}")
        return None
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{where}: {key!r} is {v!r}, not a non-negative number")
    return float(v)


def parse_profile(data, source: str = "<data>") -> TrtProfile:
    """Check and convert an already-decoded profile (``source`` names it in errors)."""
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source}: a trtexec profile is a non-empty JSON list, got {type(data).__name__}")
    head = data[0]
    if not isinstance(head, dict) or "count" not in head:
        raise ValueError(f"{source}: the first element must be {{\"count\": N}}, got {head!r:.80}")
    count = head["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{source}: 'count' is {count!r}, not a non-negative integer")
    layers = []
    for i, entry in enumerate(data[1:], start=1):
        where = f"{source}: element {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is {type(entry).__name__}, not an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: missing layer 'name'")
        avg = _number(entry, "averageMs", where, required=False)
        if avg is None:  # derive it the way trtexec does
            total = _number(entry, "timeMs", where)
            if count == 0:
                raise ValueError(f"{where}: no 'averageMs' and count is 0")
            avg = total / count
        layers.append(TrtLayerTime(name=name, average_ms=avg,
                                   median_ms=_number(entry, "medianMs", where, required=False),
                                   percentage=_number(entry, "percentage", where, required=False) or 0.0))
    if not layers:
        raise ValueError(f"{source}: the profile has no layers")
    return TrtProfile(iterations=count, layers=tuple(layers))


def read_profile(path) -> TrtProfile:
    """Read and check a ``trtexec --exportProfile`` file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read trtexec profile {p}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"trtexec profile {p} is not valid JSON (line {exc.lineno}, column "
                         f"{exc.colno}: {exc.msg}); trtexec writes layer names unescaped, so a name "
                         f"with a quote or backslash breaks the file") from None
    return parse_profile(data, str(p))


def import_profile(path, device_name: str) -> list[tuple[str, float]]:
    """``(layer name, ms per iteration)`` for every layer of the profile, in
    engine order; the median where the file has it, else the average.
    ``device_name`` is the device the profile was taken on (logged with it)."""
    if not isinstance(device_name, str) or not device_name:
        raise ValueError("device_name must name the device the profile was measured on")
    prof = read_profile(path)
    log.info("imported %d layers (%d iterations, %.4f ms total) from %s for device %s",
             len(prof.layers), prof.iterations, prof.total_average_ms, path, device_name)
    return [(layer.name, layer.latency_ms) for layer in prof.layers]
