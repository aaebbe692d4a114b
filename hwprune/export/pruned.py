"""The output folder of a pruned model, as ``hwprune prune``, fine-tuning and
the demo write it: ``model.pt`` (a checkpoint of
:func:`hwprune.graph.plans.checkpoint`: rebuild the named model, apply the
plan's kept channels, load the weights), ``model.onnx`` (checked against
PyTorch with ONNX Runtime), ``plan.json`` (kept channels per group; left out
by fine-tuning, which keeps the plan it was given) and the caller's own files
(``result.json``, ``finetune.json``).

:func:`export_pruned` makes the files in memory; :func:`write_pruned` puts
them into the folder atomically: all of them replace their old versions
together (:func:`hwprune.export.outdir.atomic_files`), or, with
``replace_folder``, the whole folder is replaced
(:func:`hwprune.export.outdir.atomic_dir`), so that nothing of an earlier
run stays next to them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hwprune.export.onnx import onnx_bytes_checked
from hwprune.export.outdir import atomic_dir, atomic_files
from hwprune.export.parity import Parity, check_parity
from hwprune.graph.plans import checkpoint, checkpoint_bytes
from profilers.inputs import as_inputs

MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class PrunedExport:
    """The files of a pruned model (name -> content) and the ONNX parity."""
    files: dict[str, bytes]
    parity: Parity


def export_pruned(model: nn.Module, example_inputs, *, plan: dict | None, zoo_name: str | None = None,
                  num_classes: int | None = None, plan_file: bool = True, more_inputs=(),
                  source: str | None = None) -> PrunedExport:
    """``model.pt``, ``model.onnx`` (its ONNX Runtime output checked against
    PyTorch's on the example inputs and ``more_inputs``; over the tolerance is
    an :class:`hwprune.export.parity.ExportError`) and, with ``plan_file``,
    ``plan.json``. ``source`` (or ``zoo_name``, its older name) is what
    rebuilds the unpruned model: a zoo name, ``torchvision:NAME`` or
    ``timm:NAME``; without one, ``model.pt`` does not load by itself."""
    inputs = as_inputs(example_inputs)
    onnx_bytes = onnx_bytes_checked(model, inputs)
    parity = check_parity(model, inputs, onnx_bytes, more_inputs=more_inputs)
    ckpt = checkpoint(model, source or zoo_name, num_classes, plan)
    files = {MODEL_FILE: checkpoint_bytes(ckpt), ONNX_FILE: onnx_bytes}
    if plan_file:
        files[PLAN_FILE] = (json.dumps(plan, indent=1) + "\n").encode("utf-8")
    return PrunedExport(files, parity)


def write_pruned(out: Path, export: PrunedExport, extra: dict[str, str] | None = None, *,
                 replace_folder: bool = False) -> dict[str, Path]:
    """Write ``export``'s files and the ``extra`` text files (name -> text)
    into the folder ``out`` (see the module docstring); returns name -> path."""
    out = Path(out)
    files = {**export.files, **{name: text.encode("utf-8") for name, text in (extra or {}).items()}}
    if replace_folder:
        with atomic_dir(out, force=True) as tmp:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
    else:
        names = list(files)
        with atomic_files([out / n for n in names], force=True) as temps:
            for tmp, name in zip(temps, names):
                tmp.write_bytes(files[name])
    return {name: out / name for name in files}
