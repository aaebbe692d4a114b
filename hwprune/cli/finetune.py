"""``hwprune finetune``, and fine-tuning at the end of ``hwprune prune``.

``hwprune finetune --model DIR/model.pt --data D --epochs N`` fine-tunes a
pruned checkpoint with distillation from the unpruned model (``--teacher``,
by default the model named in ``DIR/result.json``; ``--no-kd`` turns it off)
and writes into ``--out`` (default: the model's folder) ``model.pt``,
``model.onnx`` (checked against PyTorch) and ``finetune.json``; its progress
is kept in ``finetune-state.pt`` after every epoch, so running the same
command again resumes an interrupted run. Under ``torchrun`` it trains with
DistributedDataParallel (one process per GPU, or gloo processes on a CPU);
rank 0 writes the files.

``hwprune prune ... --data D --finetune-epochs N`` does the same into its
``--out`` folder once the pruned model is written, with the original model
in memory as teacher. The job is :func:`hwprune.train.job.finetune_model`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STATE_FILE = "finetune-state.pt"   # hwprune.train.job.STATE_FILE, named here without importing torch


def add_training_arguments(sp: argparse.ArgumentParser) -> None:
    """Options shared by ``finetune`` and ``prune``'s fine-tuning."""
    sp.add_argument("--no-kd", action="store_true", help="plain cross-entropy instead of distillation from "
                    "the unpruned model")
    sp.add_argument("--lr", type=float, default=0.01, help="peak learning rate of the cosine schedule "
                    "(default 0.01)")
    sp.add_argument("--batch-size", type=int, default=64, help="batch size per process (default 64)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the batch order (default 0)")
    sp.add_argument("--train-device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where to train: auto (a GPU when there is one), cpu or cuda")
    sp.add_argument("--restart", action="store_true", help=f"ignore a saved {STATE_FILE} and start over")


def add_parser(sub, common) -> None:
    sp = sub.add_parser("finetune", help="fine-tune a pruned model with distillation (resumable; "
                        "runs under torchrun)")
    common(sp)
    sp.add_argument("--data", required=True, metavar="D", help="digits, a .npz file with x [N,C,H,W] "
                    "float and y [N] integer labels (x_val/y_val optional), or module:function returning "
                    "(train_loader, val_loader)")
    sp.add_argument("--epochs", type=int, required=True, help="fine-tuning epochs")
    sp.add_argument("--teacher", help="the unpruned model (zoo name or file; default: the model named in "
                    "result.json next to --model)")
    sp.add_argument("--out", help="output folder (default: the folder of --model)")
    add_training_arguments(sp)
    sp.set_defaults(func=cmd_finetune)


def job_of(args, epochs: int):
    """The fine-tuning options on the command line as a :class:`hwprune.train.job.FinetuneJob`."""
    from hwprune.train.job import FinetuneJob
    return FinetuneJob(data=args.data, epochs=epochs, lr=args.lr, kd=not args.no_kd, batch_size=args.batch_size,
                       seed=args.seed, train_device=args.train_device, restart=args.restart)


def _default_teacher(model_path: Path) -> str | None:
    folder = model_path if model_path.is_dir() else model_path.parent
    try:
        src = json.loads((folder / "result.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError):
        return None
    return src if isinstance(src, str) else None


def run(job, student, teacher, lm, plan, out: Path) -> dict:
    """:func:`hwprune.train.job.finetune_model` with a progress bar; an
    interrupted run prints how to resume it."""
    from hwprune.cli.common import progress_bar
    from hwprune.train.finetune import world
    from hwprune.train.job import finetune_model
    try:
        return finetune_model(student, teacher, lm.example_input, job, out, zoo_name=lm.model_source,
                              num_classes=lm.num_classes, plan=plan, progress=progress_bar())
    except KeyboardInterrupt:
        if world()[0] == 0:
            print(f"fine-tuning interrupted; its progress is in {out / STATE_FILE}: run hwprune finetune --model "
                  f"{out}/model.pt --data {job.data} --epochs {job.epochs} (same options) to resume",
                  file=sys.stderr)
        raise


def text_of(d: dict) -> str:
    pct = (lambda v: "-" if v is None else f"{100 * v:.2f} %")
    resumed = f", resumed after epoch {d['resumed_from_epoch']}" if d["resumed_from_epoch"] else ""
    return (f"fine-tuned {d['epochs']} epochs ({'distillation' if d['kd'] else 'cross-entropy'}, "
            f"{d['world_size']} process(es){resumed}): validation accuracy {pct(d['accuracy_start'])} -> "
            f"{pct(d['accuracy'])} (teacher {pct(d['teacher_accuracy'])})\n"
            f"wrote {d['out']}/model.pt, model.onnx, finetune.json")


def cmd_finetune(args) -> int:
    from hwprune.cli.common import emit
    from hwprune.errors import UserError
    from hwprune.graph.plans import load_model
    from hwprune.train.finetune import world
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    lm = load_model(args.model, args.input_shape, args.trust_pickle)
    model_path = Path(args.model)
    if args.out:
        out = Path(args.out)
    elif model_path.exists():
        out = model_path if model_path.is_dir() else model_path.parent
    else:
        raise UserError(f"--model {args.model} is not a file; name an output folder with --out")
    teacher = None
    if not args.no_kd:
        src = args.teacher or (_default_teacher(model_path) if model_path.exists() else None)
        if src is None:
            raise UserError("distillation needs the unpruned model: pass --teacher MODEL (zoo name or file), "
                            "or --no-kd")
        teacher = load_model(src, args.input_shape, args.trust_pickle).model
    data = run(job_of(args, args.epochs), lm.model, teacher, lm, lm.plan, out)
    try:
        if world()[0] == 0:
            emit(args, data, text_of(data))
    finally:
        _shutdown()
    return 0


def _shutdown() -> None:
    """Leave the process group together: destroying it is collective, and a
    rank that tears it down while rank 0 still exports can abort the job."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
