"""Write a folder of outputs atomically: everything goes to a temporary sibling
folder, which then replaces the target in one rename (the old folder is kept
until the new one is in place)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


@contextmanager
def atomic_dir(target: Path, force: bool = True):
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"output {target} exists and is not a folder; choose another --out")
    if target.exists() and any(target.iterdir()) and not force:
        raise UserError(f"output folder {target} is not empty; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
