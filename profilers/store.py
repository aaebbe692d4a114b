"""Embedded SQLite measurement store, keyed by device fingerprint and layer spec.

WAL mode and one transaction per measurement: a killed profiling run loses at
most the measurement in flight, and a rerun re-measures nothing stored.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    device TEXT NOT NULL, spec TEXT NOT NULL,
    median_ms REAL NOT NULL, iqr_ms REAL NOT NULL, runs INTEGER NOT NULL,
    ci_rel REAL NOT NULL, stable INTEGER NOT NULL, measured_at REAL NOT NULL,
    PRIMARY KEY (device, spec))
"""


class MeasurementStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
            self._db.execute("SELECT device, spec, median_ms FROM measurements LIMIT 1").fetchall()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"measurement store {self.path} is unreadable ({exc}); "
                             f"pass another --store or move the file away") from None

    def get(self, device: str, spec_key: str) -> Timing | None:
        row = self._db.execute(
            "SELECT median_ms, iqr_ms, runs, ci_rel, stable FROM measurements "
            "WHERE device=? AND spec=?", (device, spec_key)).fetchone()
        if row is None:
            return None
        return Timing(median_ms=row[0], iqr_ms=row[1], runs=row[2], ci_rel=row[3], stable=bool(row[4]))

    def put(self, device: str, spec_key: str, t: Timing) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO measurements VALUES (?,?,?,?,?,?,?,?)",
                (device, spec_key, t.median_ms, t.iqr_ms, t.runs, t.ci_rel, int(t.stable), time.time()))

    def count(self, device: str | None = None) -> int:
        if device is None:
            return self._db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM measurements WHERE device=?", (device,)).fetchone()[0]

    def close(self) -> None:
        self._db.close()
