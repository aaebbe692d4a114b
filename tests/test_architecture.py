"""The layout's rules hold: imports flow downwards by stage with no cycle (import-linter
contracts in pyproject.toml), ruff is clean (including no private name imported from
another module), and no source file passes the size the house allows."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400
BUILT = {"build", "dist"}  # what building a wheel writes into the source tree: copies, not sources


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0 and "No module named ruff" in proc.stderr:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_source_files_stay_small():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted(ROOT.glob("*/**/*.py"))
           if "tests" not in p.parts and p.relative_to(ROOT).parts[0] not in BUILT
           and (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, big
