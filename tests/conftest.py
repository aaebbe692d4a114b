import os
import sys
import types
from pathlib import Path

# the suite profiles each layer shape in one session (the default is two, for precision; tests of the
# two-session measurement call it directly): half the profiling time on CI's two cores
os.environ.setdefault("HWPRUNE_PROFILE_SESSIONS", "1")

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# The torchvision wheels these test machines can install are CUDA builds whose compiled ops do not
# load against the CPU torch the tests pin; the model definitions are pure Python and need none of
# them. Skipping the ops' registration module lets `torchvision.models` (and timm) import here. A
# user's matching torch and torchvision need nothing of the sort.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
torch.set_num_threads(1)


@pytest.fixture
def store(tmp_path):
    from profilers import MeasurementStore
    s = MeasurementStore(tmp_path / "store.sqlite")
    yield s
    s.close()


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory):
    """One store per test session, so tests of one model profile it once."""
    from profilers import MeasurementStore
    path = tmp_path_factory.mktemp("store") / "store.sqlite"
    os.environ["HWPRUNE_STORE"] = str(path)
    return MeasurementStore(path)


@pytest.fixture
def sim_devices(tmp_path, monkeypatch):
    """A devices folder (HWPRUNE_DEVICES_DIR) for simulated devices, with the
    runtimes they name registered: ``sim`` (tests/simruntime.py) and ``absent``
    (one that cannot run here). This is the one place that registers runtimes
    for tests. Add devices with ``sim_devices.add(name, bound=..., step=..., bias=...)``."""
    from simruntime import SimDevices

    import profilers
    folder = tmp_path / "devices"
    (folder / "profiles").mkdir(parents=True)
    monkeypatch.setenv("HWPRUNE_DEVICES_DIR", str(folder))
    with profilers.RUNTIMES.registered("sim", "simruntime:SimRuntime"), \
            profilers.RUNTIMES.registered("absent", "hwprune_no_such_runtime_module:Runtime"):
        yield SimDevices(folder, monkeypatch)
