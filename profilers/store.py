"""Embedded SQLite measurement store, keyed by device fingerprint and layer spec.

WAL mode and one transaction per measurement: a killed profiling run loses at
most the measurement in flight, and a rerun re-measures nothing stored. Several
processes may write to one store at once (SQLite serialises the writers; each
waits up to ``timeout_s`` for the others).

Besides measurements the store keeps per-device facts in a ``meta`` table
(device fingerprint key, name, JSON value), e.g. the detected channel step.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from .specs import Timing

ENV_VAR = "HWPRUNE_STORE"


class StoreError(RuntimeError):
    """The store file cannot be opened or is not a measurement store."""


def default_store_path() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "hwprune" / "measurements.sqlite"


def fingerprint_key(fingerprint: dict) -> str:
    return json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))


def measurement_key(fingerprint: dict, protocol) -> str:
    """The key of measurements taken on ``fingerprint`` (device and host) with
    ``protocol`` (a :class:`profilers.protocol.Protocol`: its clock, warm-up and
    stopping rule), so rows timed one way never answer for rows timed another.
    Rows stored under a key without ``timing`` (older stores) are never read
    again; they stay in the file, harmless."""
    return fingerprint_key({**fingerprint, "timing": asdict(protocol)})


def host_key_of(key: str) -> str:
    """The device-and-host part of a measurement key (``timing`` removed)."""
    fp = json.loads(key)
    fp.pop("timing", None)
    return fingerprint_key(fp)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    device TEXT NOT NULL, spec TEXT NOT NULL,
    median_ms REAL NOT NULL, iqr_ms REAL NOT NULL, runs INTEGER NOT NULL,
    ci_rel REAL NOT NULL, stable INTEGER NOT NULL, measured_at REAL NOT NULL,
    PRIMARY KEY (device, spec));
CREATE TABLE IF NOT EXISTS meta (
    device TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (device, name));
"""


class MeasurementStore:
    def __init__(self, path: str | Path | None = None, timeout_s: float = 30.0):
        self.path = Path(path) if path is not None else default_store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s)
            self._open(timeout_s)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"measurement store {self.path} is unreadable ({exc}); "
                             f"pass another --store or move the file away") from None

    def _open(self, timeout_s: float) -> None:
        # Switching to WAL needs a moment of exclusive access; another process
        # opening the same new file may hold it, so retry until the timeout.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._db.execute("SELECT device, spec, median_ms FROM measurements LIMIT 1").fetchall()
        self._db.execute("SELECT device, name, value FROM meta LIMIT 1").fetchall()

    def get(self, device: str, spec_key: str) -> Timing | None:
        row = self._db.execute(
            "SELECT median_ms, iqr_ms, runs, ci_rel, stable FROM measurements "
            "WHERE device=? AND spec=?", (device, spec_key)).fetchone()
        if row is None:
            return None
        return Timing(median_ms=row[0], iqr_ms=row[1], runs=row[2], ci_rel=row[3], stable=bool(row[4]))

    def put(self, device: str, spec_key: str, t: Timing) -> None:
        self.put_many(device, [(spec_key, t)])

    def put_many(self, device: str, items: Iterable[tuple[str, Timing]]) -> int:
        """Store several measurements in one transaction (all or none)."""
        now = time.time()
        rows = [(device, k, t.median_ms, t.iqr_ms, t.runs, t.ci_rel, int(t.stable), now) for k, t in items]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO measurements VALUES (?,?,?,?,?,?,?,?)", rows)
        return len(rows)

    def items(self, device: str) -> list[tuple[str, Timing]]:
        """Every measurement of a device, sorted by spec key."""
        rows = self._db.execute(
            "SELECT spec, median_ms, iqr_ms, runs, ci_rel, stable FROM measurements "
            "WHERE device=? ORDER BY spec", (device,)).fetchall()
        return [(r[0], Timing(median_ms=r[1], iqr_ms=r[2], runs=r[3], ci_rel=r[4], stable=bool(r[5])))
                for r in rows]

    def devices(self) -> list[str]:
        """Fingerprint keys that have measurements or meta entries."""
        rows = self._db.execute("SELECT device FROM measurements UNION SELECT device FROM meta").fetchall()
        return sorted(r[0] for r in rows)

    def count(self, device: str | None = None) -> int:
        if device is None:
            return self._db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM measurements WHERE device=?", (device,)).fetchone()[0]

    def put_meta(self, device: str, name: str, value) -> None:
        """Store a JSON-serialisable value under (device, name), replacing any."""
        text = json.dumps(value, sort_keys=True)
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?,?,?)", (device, name, text))

    def get_meta(self, device: str, name: str, default=None):
        row = self._db.execute("SELECT value FROM meta WHERE device=? AND name=?", (device, name)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except ValueError:
            raise StoreError(f"measurement store {self.path}: meta entry {name!r} is not JSON; "
                             f"move the file away or profile into another --store") from None

    def close(self) -> None:
        self._db.close()
