"""hwprune works installed from a wheel, not only from its source tree: the
built-in device descriptors and profiles ship inside the package."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what a wheel is built from; the build runs on a copy of them, so it leaves nothing (build/, *.egg-info)
# beside the sources
SOURCES = ("pyproject.toml", "README.md", "hwprune", "profilers", "latency_models", "devices")


def source_copy(dest: Path) -> Path:
    """The packaging inputs of the source tree, copied to ``dest`` (no build leftovers, no caches)."""
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    dest.mkdir(parents=True)
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=junk)
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    before = sorted(p.name for p in ROOT.iterdir())
    src = source_copy(tmp / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No module named" in build.stderr and "setuptools" in build.stderr:
        pytest.skip("setuptools is not installed, so no wheel can be built here")
    assert build.returncode == 0, build.stderr[-2000:]
    assert sorted(p.name for p in ROOT.iterdir()) == before, "building the wheel wrote into the source tree"
    wheel = next((tmp / "dist").glob("hwprune-*.whl"))
    target = tmp / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return target


def _run(site: Path, cwd: Path, *argv, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(site), "HWPRUNE_STORE": str(cwd / "store.sqlite"),
           "XDG_CONFIG_HOME": str(cwd / "config")}
    env.pop("HWPRUNE_DEVICES_DIR", None)
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_wheel_ships_the_devices_and_runs_from_outside_the_source_tree(site, tmp_path):
    where = _run(site, tmp_path, "-c", "import hwprune, hwprune.devices as d; "
                 "print(hwprune.__file__); print(d.builtin_dir())")
    assert where.returncode == 0, where.stderr
    pkg, builtin = where.stdout.split()
    assert Path(pkg).is_relative_to(site) and Path(builtin).is_relative_to(site)
    assert (Path(builtin) / "ort-cpu-1t.toml").is_file() and list((Path(builtin) / "profiles").glob("*.jsonl"))
    out = _run(site, tmp_path, "-m", "hwprune", "devices", "--json")
    assert out.returncode == 0, out.stderr
    names = {d["name"]: d for d in json.loads(out.stdout)["devices"]}
    assert names["ort-cpu-1t"]["available"] and Path(names["ort-cpu-1t"]["descriptor"]).is_relative_to(site)


def test_a_small_prune_from_the_installed_wheel(site, tmp_path):
    out = _run(site, tmp_path, "-m", "hwprune", "prune", "--model", "resnet20", "--device", "ort-cpu-1t",
               "--budget-ms", "75%", "--out", str(tmp_path / "pruned"), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["measured_ms"] < res["baseline_ms"]
    assert {"model.onnx", "model.pt", "plan.json"} <= {p.name for p in (tmp_path / "pruned").iterdir()}
