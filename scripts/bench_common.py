"""Shared helpers for the benchmark scripts: import path, machine header,
atomic result files, markdown tables."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def use_repo_packages() -> None:
    """Make the repository's packages importable when the script runs uninstalled."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def _cpu_model() -> str:
    use_repo_packages()
    from profilers.ort_cpu import cpu_isa, cpu_model
    return f"{cpu_model()} ({cpu_isa()})"


def machine_header() -> dict:
    """Date and the machine a benchmark ran on, for the top of its report."""
    versions = {}
    for mod in ("torch", "onnxruntime", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": _cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "versions": versions}


def header_lines(h: dict) -> list[str]:
    v = h["versions"]
    return [f"- date: {h['date']}",
            f"- machine: {h['cpu']}, {h['cores']} cores ({h['machine']})",
            f"- python {h['python']}, torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}, "
            f"numpy {v.get('numpy')}"] + \
        ([] if h.get("co_running_load") is None else
         ["- co-running load: " + ("another process streaming a 256 MB array through memory all along"
                                   if h["co_running_load"] else "none (quiet host)")])


def commit_id() -> str:
    """The checkout's short commit, marked when tracked files have uncommitted changes."""
    import subprocess
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=REPO_ROOT, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=REPO_ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" (with uncommitted changes)" if dirty else "")


def add_run_args(p) -> None:
    """The options every pruning benchmark takes: device, granularity, store, output folder."""
    p.add_argument("--device", default="ort-cpu-1t", help="device name (default: ort-cpu-1t)")
    p.add_argument("--granularity", choices=["channel", "block", "both"], default="channel",
                   help="what the engine may remove: channels (default), residual blocks, or both")
    p.add_argument("--store", default=None,
                   help="measurement store path (default: a fresh temp file, so profiling starts empty)")
    p.add_argument("--out", default=str(REPO_ROOT / "scripts" / "results"),
                   help="output folder (default: scripts/results/)")


@contextmanager
def bench_store(path: str | None) -> Iterator:
    """The measurement store at ``path``, or (None) a fresh one in a temp
    folder removed afterwards, so profiling starts empty; closed on exit."""
    use_repo_packages()
    from profilers import MeasurementStore
    with tempfile.TemporaryDirectory(prefix="hwprune-bench-") as tmp:
        store = MeasurementStore(path or str(Path(tmp) / "store.sqlite"))
        try:
            yield store
        finally:
            store.close()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename."""
    use_repo_packages()
    from profilers.profile_io import write_text_atomic
    write_text_atomic(path, text)


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def md_table(columns: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


STREAMER = """
import os, sys, time
import numpy as np
a = np.ones(32 * 1024 * 1024)  # 256 MB, far beyond any cache: every pass streams it from memory
end = time.monotonic() + float(sys.argv[1])
parent = int(sys.argv[2]) if len(sys.argv) > 2 else None
while time.monotonic() < end and (parent is None or os.getppid() == parent):
    a += 1.0
"""  # python -c STREAMER SECONDS [PARENT_PID]: ends after SECONDS, or as soon as its parent is gone


class CoRunningLoad:
    """A process streaming a 256 MB array through memory for at most ``seconds``
    (ended on exit, and on its own when this process dies unannounced), as
    another tenant of a shared cloud host contends for the caches and memory
    bandwidth; ``enabled=False`` does nothing."""

    def __init__(self, enabled: bool, seconds: float = 7200.0):
        self.enabled, self.seconds, self.proc = enabled, float(seconds), None

    def __enter__(self):
        if self.enabled:
            import subprocess
            self.proc = subprocess.Popen([sys.executable, "-c", STREAMER, str(self.seconds), str(os.getpid())])
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        return False


def near_edge(est, frac: float, band: tuple[float, float]) -> bool:
    """Whether the 95 % interval of ``est`` (a ratio to the original, with
    ``ratio_lo`` / ``ratio_hi``), divided by the budget fraction ``frac``,
    contains an edge of ``band``: one reading cannot say which side it is on."""
    lo, hi = est.ratio_lo / frac, est.ratio_hi / frac
    return any(lo <= edge <= hi for edge in band)


def pooled(readings) -> object:
    """Independent readings of one ratio (each with ``ratio``, ``ratio_lo``,
    ``ratio_hi``, ``sure``, ``rounds``, ``seconds``) as one, inverse-variance
    weighted on the log scale as the engine pools a plan measured again
    (:func:`hwprune.loop.meter.pool`)."""
    use_repo_packages()
    from hwprune.loop.meter import Reading, pool
    return pool([Reading(r.ratio, 0.0, r.ratio_lo, r.ratio_hi, r.sure, r.rounds, r.seconds) for r in readings])
