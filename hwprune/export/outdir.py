"""Write outputs atomically, so an interrupted run leaves either the old outputs
or the new ones, never a mix.

* :func:`atomic_dir`: everything goes to a temporary sibling folder, which then
  replaces the target in one rename (the old folder is kept until the new one
  is in place).
* :func:`atomic_files`: a main file and its companions (e.g. ``model.onnx`` and
  ``model.onnx.report.json``) are written to temporary names in their folders;
  on success the old companions are removed, the main file is renamed into
  place, then the new companions. At every instant, a companion on disk
  belongs to the main file next to it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from hwprune.errors import UserError
from profilers.atomic import new_file_mode


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


def check_outputs(targets: Sequence[Path], force: bool = False) -> None:
    """Refuse folders, and existing files unless ``force``."""
    for t in map(Path, targets):
        if t.is_dir():
            raise UserError(f"output {t} is a folder; name a file with --out")
        if t.exists() and not force:
            raise UserError(f"output {t} already exists; pass --force to replace it")


@contextmanager
def atomic_files(targets: Sequence[Path], force: bool = False):
    """Yield one temporary path per target (``targets[0]`` is the main file, the
    rest its companions); they replace the targets when the block completes and
    are removed if it raises. Existing targets need ``force``."""
    targets = [Path(t) for t in targets]
    if len(set(targets)) != len(targets):
        raise UserError(f"output names collide: {', '.join(map(str, targets))}; choose another --out")
    check_outputs(targets, force)
    temps = []
    try:
        for t in targets:
            t.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".tmp", dir=t.parent)
            os.close(fd)
            os.chmod(name, new_file_mode())  # mkstemp makes 0600; give a new file's usual mode
            temps.append(Path(name))
        yield list(temps)
        for tmp in temps:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        for t in targets[1:]:  # companions of an older main file go first
            if t.exists():
                t.unlink()
        for tmp, t in zip(temps, targets):
            os.replace(tmp, t)
    finally:
        for tmp in temps:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
