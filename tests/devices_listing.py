"""``hwprune devices --json`` in a fresh interpreter, and which modules it imported."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def devices_listing(store: Path, watched) -> tuple[list[dict], int, list[str]]:
    """The devices listed, the exit code, and the imported modules ``watched(name)`` picks."""
    code = ("import json, sys\nfrom hwprune.cli.main import main\n"
            f"rc = main(['devices', '--json', '--store', {str(store)!r}])\n"
            "print(json.dumps({'rc': rc, 'modules': sorted(sys.modules)}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *listing, last = proc.stdout.strip().splitlines()
    result = json.loads(last)
    return json.loads("\n".join(listing))["devices"], result["rc"], [m for m in result["modules"] if watched(m)]
