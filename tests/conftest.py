import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
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
