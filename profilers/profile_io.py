"""Device profiles as diffable text files (``devices/profiles/*.jsonl``).

Line 1 is a header object::

    {"format": "hwprune-profile", "version": 1, "device": "ort-cpu-1t",
     "fingerprint": {...runtime and host...}, "step_channels": 16,
     "date": "2025-01-01T12:00:00+00:00", "count": 412}

then one object per measurement, sorted by spec key::

    {"spec": {...LayerSpec fields...}, "median_ms": 0.123, "iqr_ms": 0.004,
     "runs": 60, "ci_rel": 0.011, "stable": true}

Numbers are rounded to 5 significant digits so that re-exporting an unchanged
store gives an identical file (the date line aside). Files are written to a
temporary name and renamed; importing validates the whole file before it
writes anything to the store.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

from .atomic import atomic_write_text
from .specs import LayerSpec, Timing
from .store import MeasurementStore, fingerprint_key, host_key_of

FORMAT = "hwprune-profile"
VERSION = 1
SUFFIX = ".jsonl"
_TIMING_FIELDS = ("median_ms", "iqr_ms", "runs", "ci_rel", "stable")


def _round(x: float) -> float:
    return float(f"{x:.5g}")


def _line(spec_key: str, t: Timing) -> str:
    return json.dumps({"spec": json.loads(spec_key), "median_ms": _round(t.median_ms),
                       "iqr_ms": _round(t.iqr_ms), "runs": int(t.runs), "ci_rel": _round(t.ci_rel),
                       "stable": bool(t.stable)}, sort_keys=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, fsync, rename."""
    atomic_write_text(path, text)


def export_profile(store: MeasurementStore, device_key: str, path: str | Path,
                   date: str | None = None) -> int:
    """Write every measurement of ``device_key`` (a fingerprint key whose
    ``"device"`` field names the device, see :func:`measurement_key`) to
    ``path``; returns the row count. The step is the host's (``timing`` aside)."""
    fp = json.loads(device_key)
    step = store.get_meta(host_key_of(device_key), "step")
    items = store.items(device_key)
    measured = isinstance(step, dict) and step.get("reliable", True)
    header = {"format": FORMAT, "version": VERSION, "device": fp.get("device"), "fingerprint": fp,
              "step_channels": step.get("step_channels") if measured else None,
              **({"grid_channels": step["grid_channels"]} if measured and step.get("grid_channels") else {}),
              "date": date or _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "count": len(items)}
    lines = [json.dumps(header, sort_keys=True)] + [_line(k, t) for k, t in sorted(items, key=lambda kt: kt[0])]
    write_text_atomic(Path(path), "\n".join(lines) + "\n")
    return len(items)


def _bad(path: Path, line_no: int, why: str) -> ValueError:
    return ValueError(f"profile {path} line {line_no}: {why}")


def check_header(path: Path, header) -> dict:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _bad(path, 1, f"not a {FORMAT} header")
    if header.get("version") != VERSION:
        raise _bad(path, 1, f"unsupported version {header.get('version')!r} (this version reads {VERSION})")
    if not isinstance(header.get("fingerprint"), dict) or not isinstance(header.get("device"), str):
        raise _bad(path, 1, "header lacks device or fingerprint")
    step = header.get("step_channels")
    if step is not None and (not isinstance(step, int) or step <= 0):
        raise _bad(path, 1, f"step_channels {step!r} is not a positive integer")
    return header


def read_header(path: str | Path) -> dict:
    """The header of a profile file (only its first line is read)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        return check_header(path, json.loads(first))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"profile {path} cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise _bad(path, 1, f"not JSON ({exc.msg})") from None


def _valid_spec(s: LayerSpec) -> bool:
    def pos_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v > 0
    pairs = (s.kernel, s.stride, s.padding, s.dilation)
    return (isinstance(s.kind, str) and all(len(p) == 2 for p in pairs)
            and all(pos_int(v) for v in (s.in_channels, s.out_channels, s.groups, s.height, s.width, s.batch,
                                          *s.kernel, *s.stride, *s.dilation))
            and all(isinstance(v, int) and v >= 0 for v in s.padding))


def parse_row(path: Path, line_no: int, text: str) -> tuple[str, Timing]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(path, line_no, f"not JSON ({exc.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("spec"), dict):
        raise _bad(path, line_no, "expected an object with a 'spec' object")
    missing = [f for f in _TIMING_FIELDS if f not in row]
    if missing:
        raise _bad(path, line_no, f"missing {', '.join(missing)}")
    try:
        spec = LayerSpec.from_key(json.dumps(row["spec"]))
    except (TypeError, KeyError, ValueError) as exc:
        raise _bad(path, line_no, f"spec is not a layer spec ({exc})") from None
    if not _valid_spec(spec):
        raise _bad(path, line_no, "spec fields have the wrong types or sizes")
    nums = [row["median_ms"], row["iqr_ms"], row["ci_rel"]]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in nums) \
            or not 0 < row["median_ms"] < math.inf or not row["iqr_ms"] < math.inf \
            or not isinstance(row["runs"], int) or row["runs"] <= 0 \
            or not isinstance(row["stable"], bool):
        raise _bad(path, line_no, "timing fields out of range (median_ms > 0, iqr_ms, ci_rel >= 0, "
                                  "runs a positive integer, stable true/false)")
    return spec.key(), Timing(median_ms=float(row["median_ms"]), iqr_ms=float(row["iqr_ms"]), runs=row["runs"],
                       ci_rel=float(row["ci_rel"]), stable=row["stable"])


def _other_type(line: str) -> bool:
    """A line of another type than a layer measurement (``{"type": "network",
    ...}``: a whole network measured on the device, read by
    :mod:`hwprune.latency.offline`); the header's count is of layer lines."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and row.get("type", "layer") != "layer"


def read_lines(path: str | Path) -> tuple[dict, list[str]]:
    """A profile file's checked header and all its lines (the header's
    included); an unreadable, empty or headerless file raises ValueError."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"profile {path} cannot be read ({exc})") from None
    if not lines:
        raise _bad(path, 1, "empty file")
    try:
        return check_header(path, json.loads(lines[0])), lines
    except json.JSONDecodeError as exc:
        raise _bad(path, 1, f"not JSON ({exc.msg})") from None


def load_profile(path: str | Path) -> tuple[dict, list[tuple[str, Timing]]]:
    """Parse and validate a whole profile file: ``(header, [(spec key, Timing)])``;
    lines of other types than layer measurements are skipped."""
    path = Path(path)
    header, lines = read_lines(path)
    rows = [parse_row(path, i, line) for i, line in enumerate(lines[1:], start=2)
            if line.strip() and not _other_type(line)]
    if isinstance(header.get("count"), int) and header["count"] != len(rows):
        raise _bad(path, len(lines), f"header says {header['count']} measurements, file has {len(rows)} "
                                     f"(truncated?)")
    return header, rows


def import_profile(path: str | Path, store: MeasurementStore) -> int:
    """Load a profile into ``store`` under its header's fingerprint (one
    transaction; nothing is written if the file is invalid); returns the count.
    The header's step is stored as the device's step unless one is stored."""
    header, rows = load_profile(path)
    key = fingerprint_key(header["fingerprint"])
    n = store.put_many(key, rows)
    host = host_key_of(key)
    if header.get("step_channels") and store.get_meta(host, "step") is None:
        store.put_meta(host, "step", {"step_channels": header["step_channels"], "source": str(path)})
    return n


def profile_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


__all__ = ["export_profile", "import_profile", "load_profile", "read_header", "read_lines", "profile_files",
           "write_text_atomic"]
