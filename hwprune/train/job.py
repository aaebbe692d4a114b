"""Fine-tuning a pruned model into its output folder: the job of ``hwprune
finetune`` and of ``hwprune prune --finetune-epochs``.

:func:`finetune_model` loads ``--data``, fine-tunes the student (with
distillation from the teacher unless ``kd`` is off, see
:func:`hwprune.train.finetune.finetune`), keeping its progress in
``finetune-state.pt`` after every epoch (the same call again resumes an
interrupted run), and writes ``model.pt``, ``model.onnx`` (checked against
PyTorch) and ``finetune.json`` into the folder with
:func:`hwprune.export.pruned.write_pruned`. Under ``torchrun`` only rank 0
writes files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hwprune.datasets import loaders_for
from hwprune.errors import UserError
from hwprune.export.pruned import export_pruned, write_pruned
from hwprune.train.finetune import FinetuneConfig, finetune, init_distributed
from hwprune.train.loop import Progress, evaluate

STATE_FILE = "finetune-state.pt"
REPORT_FILE = "finetune.json"


@dataclass(frozen=True)
class FinetuneJob:
    """What to fine-tune on and how (the options of ``hwprune finetune``)."""
    data: str                  # digits, a .npz file or module:function
    epochs: int
    lr: float = 0.01
    kd: bool = True            # distil from the teacher
    batch_size: int = 64       # per process
    seed: int = 0
    train_device: str = "auto"  # auto, cpu or cuda
    restart: bool = False      # ignore a saved finetune-state.pt


def finetune_model(student: nn.Module, teacher: nn.Module | None, example_input, job: FinetuneJob, out: Path, *,
                   zoo_name: str | None = None, num_classes: int | None = None, plan: dict | None = None,
                   progress: Progress | None = None) -> dict:
    """Fine-tune ``student`` as ``job`` says and write the outputs into the
    folder ``out``; returns the figures (JSON-serialisable, also written to
    ``finetune.json``). ``zoo_name`` is the model's source (a zoo name,
    ``torchvision:NAME`` or ``timm:NAME``) for the checkpoint. ``progress``
    draws on rank 0 only."""
    if job.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {job.batch_size}")
    rank, size, dev = init_distributed(job.train_device)
    train_loader, val_loader = loaders_for(student, job.data, example_input, num_classes, job.batch_size, job.seed)
    cfg = FinetuneConfig(epochs=job.epochs, lr=job.lr, kd=job.kd, seed=job.seed)
    start_acc = evaluate(student, val_loader)
    teacher_acc = evaluate(teacher, val_loader) if teacher is not None and cfg.kd else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_FILE
    res = finetune(student, train_loader, val_loader, cfg, teacher=teacher if cfg.kd else None,
                   checkpoint=state, restart=job.restart, progress=progress, device=dev, zoo_name=zoo_name,
                   num_classes=num_classes, plan=plan)
    student = student.cpu().eval()
    data = {"out": str(out), "data": job.data, "epochs": cfg.epochs, "kd": cfg.kd, "lr": cfg.lr,
            "batch_size": job.batch_size, "world_size": size, "resumed_from_epoch": res.resumed_from,
            "accuracy_start": start_acc, "accuracy": res.val_accuracy, "teacher_accuracy": teacher_acc,
            "history": res.history, "state": str(state), "time_s": res.time_s}
    if rank == 0:
        export = export_pruned(student, example_input, plan=plan, zoo_name=zoo_name, num_classes=num_classes,
                               plan_file=False)
        data["onnx_max_abs_diff"] = export.parity.max_abs_diff
        write_pruned(out, export, {REPORT_FILE: json.dumps(data, indent=2, default=float) + "\n"})
    return data
