"""The measurement store survives interruption and concurrent writers, device
profiles round-trip through their text format, and the channel-step detector
finds the step of synthetic latency curves."""
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from profilers import LayerSpec, MeasurementStore, Timing, fingerprint_key
from profilers.profile_io import export_profile, import_profile, load_profile, read_header
from profilers.steps import detect_step, fit_step

REPO = Path(__file__).resolve().parent.parent
WIDTHS = list(range(4, 65, 4))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --- channel step detector -------------------------------------------------

class FakeRuntime:
    """Latency = curve(out_channels) x (1 + relative Gaussian noise)."""

    def __init__(self, curve, noise_rel, seed=0):
        self.curve, self.noise_rel = curve, noise_rel
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def measure_spec(self, spec):
        self.calls += 1
        ms = self.curve(spec.out_channels) * (1 + self.rng.normal(0, self.noise_rel))
        return Timing(median_ms=ms, iqr_ms=0.01, runs=30, ci_rel=0.01, stable=True)


def stepped(step):
    return lambda n: 0.15 + 0.8 * math.ceil(n / step) * step / 64


def linear(n):
    return 0.05 + 0.015 * n


@pytest.mark.parametrize("step", [8, 16, 32])
@pytest.mark.parametrize("noise", [0.02, 0.05])
def test_detector_finds_synthetic_steps(step, noise):
    for seed in range(5):
        rt = FakeRuntime(stepped(step), noise, seed)
        res = detect_step(rt, passes=3)
        assert res.step_channels == step, (seed, res.fit_rms_rel, res.noise_rel)
        assert res.widths == tuple(WIDTHS) and rt.calls == 3 * len(WIDTHS)
        assert len(res.medians_ms) == len(WIDTHS)


@pytest.mark.parametrize("noise", [0.02, 0.05])
def test_detector_gives_the_finest_step_on_a_linear_curve(noise):
    for seed in range(5):
        assert detect_step(FakeRuntime(linear, noise, seed), passes=3).step_channels == 4


def misaligned(align):
    """Linear in width, but widths off a multiple of ``align`` run 50 % slower
    (fp16 tensor-core kernels on a GPU)."""
    return lambda n: linear(n) * (1.0 if n % align == 0 else 1.5)


@pytest.mark.parametrize("align", [8, 16])
def test_detector_finds_the_alignment_and_grid(align):
    for seed in range(3):
        res = detect_step(FakeRuntime(misaligned(align), 0.02, seed), passes=3)
        assert res.align_channels == align and res.grid_channels == max(res.step_channels, align)
        assert res.to_json()["grid_channels"] == res.grid_channels
    # a curve without a penalty has no alignment beyond the probe; a stepped one keeps its step as grid
    assert detect_step(FakeRuntime(linear, 0.02, 0), passes=3).align_channels == 4
    res = detect_step(FakeRuntime(stepped(16), 0.02, 0), passes=3)
    assert res.align_channels == 4 and res.grid_channels == 16


def test_step_rule_on_exact_data_and_bad_input():
    exact = [[stepped(16)(n) for n in WIDTHS]]
    assert fit_step(WIDTHS, exact, 4).step_channels == 16      # one pass: tolerance only
    assert fit_step(WIDTHS, [[linear(n) for n in WIDTHS]], 4).step_channels == 4
    with pytest.raises(ValueError):
        fit_step(WIDTHS, [[0.0] * len(WIDTHS)], 4)
    with pytest.raises(ValueError):
        detect_step(FakeRuntime(linear, 0.0), max_out=4, probe=4)


# --- store: meta table, concurrent writers ---------------------------------

def test_meta_round_trip_and_existing_api(tmp_path):
    s = MeasurementStore(tmp_path / "s.sqlite")
    assert s.get_meta("dev", "step") is None and s.get_meta("dev", "step", 7) == 7
    s.put_meta("dev", "step", {"step_channels": 16})
    s.put("dev", "k", Timing(1.0, 0.1, 30, 0.01, True))
    s.close()
    s = MeasurementStore(tmp_path / "s.sqlite")
    assert s.get_meta("dev", "step") == {"step_channels": 16}
    assert s.count("dev") == 1 and s.devices() == ["dev"]
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


_WRITER = """
import sys
from profilers import MeasurementStore, Timing
s = MeasurementStore(sys.argv[1])
who, n = sys.argv[2], int(sys.argv[3])
for i in range(n):
    s.put(who, f"spec-{i}", Timing(1.0 + i, 0.1, 30, 0.01, True))
    if i % 50 == 0:
        s.put_meta(who, "progress", {"i": i})
s.put_meta(who, "done", True)
"""


def test_two_processes_write_one_store_concurrently(tmp_path):
    path, n = tmp_path / "shared.sqlite", 300
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), who, str(n)], env=_env(),
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with sqlite3.connect(str(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s = MeasurementStore(path)
    assert s.count("a") == n and s.count("b") == n
    assert s.get("b", f"spec-{n - 1}").median_ms == float(n)
    assert s.get_meta("a", "done") is True and s.get_meta("b", "done") is True
    s.close()


# --- profile files -----------------------------------------------------------

def _filled_store(path, n=12):
    s = MeasurementStore(path)
    key = fingerprint_key({"device": "dev-x", "runtime": "fake", "threads": 1})
    base = LayerSpec("conv", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, 32, 32)
    for i in range(n):
        spec = LayerSpec(base.kind, 16, 4 * (i + 1), base.kernel, base.stride, base.padding,
                         base.dilation, 1, 32, 32)
        s.put(key, spec.key(), Timing(0.1 + i / 7, 0.01, 40 + i, 0.012345678, i % 2 == 0))
    s.put_meta(key, "step", {"step_channels": 16})
    return s, key


def test_profile_export_import_round_trip(tmp_path):
    src, key = _filled_store(tmp_path / "a.sqlite")
    f1, f2 = tmp_path / "p1.jsonl", tmp_path / "p2.jsonl"
    assert export_profile(src, key, f1, date="2000-01-01T00:00:00+00:00") == 12
    lines = f1.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["device"] == "dev-x" and header["step_channels"] == 16 and header["count"] == 12
    assert read_header(f1) == header
    keys = [LayerSpec.from_key(json.dumps(json.loads(line)["spec"])).key() for line in lines[1:]]
    assert keys == sorted(keys)                                    # sorted by spec key
    dst = MeasurementStore(tmp_path / "b.sqlite")
    assert import_profile(f1, dst) == 12
    assert dst.get_meta(key, "step")["step_channels"] == 16
    for (k1, t1), (k2, t2) in zip(src.items(key), dst.items(key)):
        assert k1 == k2 and t1.runs == t2.runs and t1.stable == t2.stable
        assert t2.median_ms == pytest.approx(t1.median_ms, rel=1e-4)
    export_profile(dst, key, f2, date="2000-01-01T00:00:00+00:00")
    assert f2.read_bytes() == f1.read_bytes()                      # stable, diffable text
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_profile_skips_whole_network_lines(tmp_path):
    """Whole-network lines (read by hwprune.latency.offline) do not count as layer lines
    and do not break importing the layers."""
    src, key = _filled_store(tmp_path / "a.sqlite")
    f = tmp_path / "p.jsonl"
    export_profile(src, key, f)
    spec = json.loads(f.read_text().splitlines()[1])["spec"]
    with open(f, "a") as out:
        out.write(json.dumps({"type": "network", "specs": [spec], "median_ms": 1.5}) + "\n")
    header, rows = load_profile(f)
    assert header["count"] == len(rows) == 12
    assert import_profile(f, MeasurementStore(tmp_path / "b.sqlite")) == 12


@pytest.mark.parametrize("line_no,bad", [(1, "not json"), (3, '{"spec": {"kind": "conv"}}'),
                                         (4, '{"spec": 3, "median_ms": 1}'), (5, None)])
def test_corrupt_profile_names_file_and_line(tmp_path, line_no, bad):
    src, key = _filled_store(tmp_path / "a.sqlite")
    path = tmp_path / "p.jsonl"
    export_profile(src, key, path)
    lines = path.read_text().splitlines()
    if bad is None:                                                # truncated file
        lines = lines[:line_no]
    else:
        lines[line_no - 1] = bad
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    dst = MeasurementStore(tmp_path / "b.sqlite")
    with pytest.raises(ValueError, match=f"{path.name} line {line_no}"):
        import_profile(path, dst)
    assert path.read_bytes() == before and dst.count() == 0 and dst.get_meta(key, "step") is None


# --- CLI: corrupt store, resume after SIGKILL ------------------------------

def test_corrupt_store_is_one_error_line_and_left_unchanged(tmp_path, capsys):
    from hwprune.cli.main import main
    path = tmp_path / "bad.sqlite"
    path.write_bytes(b"not a database " * 200)
    before = path.read_bytes()
    for argv in (["profile", "--device", "ort-cpu-1t", "--model", "resnet20"], ["devices"]):
        assert main(argv + ["--store", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "unreadable" in err[0]
    assert path.read_bytes() == before


def _rows(path):
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    except sqlite3.Error:
        return 0


def _expected_shapes(model, device):
    from hwprune import devices, zoo
    from hwprune.graph.space import PruningSpace, group_options
    from hwprune.latency.profiling import sample_specs
    net, x = zoo.create(model)
    dev = devices.get(device)
    space = PruningSpace(net, (x,))
    options = {g.gid: group_options(g, dev.step_channels, dev.min_channels) for g in space.groups}
    return len(dict.fromkeys(sample_specs(space, options) + space.specs(space.full_choice())))


def test_profile_resumes_after_sigkill_measuring_only_what_is_missing(tmp_path, capsys):
    from hwprune.cli.main import main
    store = tmp_path / "store.sqlite"
    argv = ["profile", "--device", "ort-cpu-1t", "--model", "resnet20", "--store", str(store)]
    total = _expected_shapes("resnet20", "ort-cpu-1t")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hwprune", *argv], cwd=str(REPO), env=_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while _rows(store) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    before = MeasurementStore(store)                               # recovers the WAL
    stored = before.count()
    before.close()
    assert 0 < stored < total

    export = tmp_path / "profiles" / "ort-cpu-1t.jsonl"
    assert main(argv + ["--json", "--export", str(export)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["shapes_measured"] + data["shapes_reused"] == total
    assert data["shapes_reused"] == stored and data["shapes_measured"] == total - stored
    assert data["step_detected_now"] and data["step_channels"] in (4, 8, 16, 32)
    assert data["exported_measurements"] == total
    header, rows = load_profile(export)
    assert header["device"] == "ort-cpu-1t"
    assert header["step_channels"] == (data["step_channels"] if data["step_reliable"] else None)
    assert len(rows) == total

    assert main(argv + ["--json"]) == 0                            # everything stored now
    again = json.loads(capsys.readouterr().out)
    assert again["shapes_measured"] == 0 and again["shapes_reused"] == total
    assert again["step_detected_now"] == (not data["step_reliable"])   # a noisy step is detected again
    if data["step_reliable"]:
        assert again["step_channels"] == data["step_channels"]
    with sqlite3.connect(str(store)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    assert main(["devices", "--json", "--store", str(store)]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)["devices"]}
    assert listed["ort-cpu-1t"]["stored_measurements"] == total
    assert listed["ort-cpu-1t"]["measured_step_channels"] == again["step_channels"]
