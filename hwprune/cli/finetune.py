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
in memory as teacher.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

STATE_FILE = "finetune-state.pt"


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


def progress_bar():
    from hwprune.cli.common import progress_bar as bar
    return bar()


def _default_teacher(model_path: Path) -> str | None:
    folder = model_path if model_path.is_dir() else model_path.parent
    try:
        src = json.loads((folder / "result.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError):
        return None
    return src if isinstance(src, str) else None


def _plan_of(path: str) -> dict | None:
    import torch
    p = Path(path)
    p = p / "model.pt" if p.is_dir() else p
    try:
        obj = torch.load(io.BytesIO(p.read_bytes()), map_location="cpu", weights_only=True)
    except Exception:
        return None
    return obj.get("plan") if isinstance(obj, dict) else None


def run(args, student, teacher, example_input, zoo_name, num_classes, plan, out: Path) -> dict:
    """Fine-tune ``student`` as ``args`` say, write the outputs into ``out``;
    returns the figures (JSON-serialisable). Only rank 0 writes."""
    import torch

    from hwprune.datasets import load_loaders, num_outputs
    from hwprune.errors import UserError
    from hwprune.export.parity import check_parity
    from hwprune.graph.plans import checkpoint
    from hwprune.train.finetune import FinetuneConfig, finetune, init_distributed
    from hwprune.train.loop import evaluate
    from profilers.atomic import atomic_write_bytes, atomic_write_text
    from profilers.onnx_export import to_onnx_bytes
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    rank, size, dev = init_distributed(args.train_device)
    classes = num_classes or num_outputs(student, example_input)
    train_loader, val_loader = load_loaders(args.data, example_input, classes, args.batch_size, args.seed)
    cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, kd=not args.no_kd, seed=args.seed)
    start_acc = evaluate(student, val_loader)
    teacher_acc = evaluate(teacher, val_loader) if teacher is not None and cfg.kd else None
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_FILE
    try:
        res = finetune(student, train_loader, val_loader, cfg, teacher=teacher if cfg.kd else None,
                       checkpoint=state, restart=args.restart, progress=progress_bar() if rank == 0 else None,
                       device=dev)
    except KeyboardInterrupt:
        if rank == 0:
            print(f"fine-tuning interrupted; its progress is in {state}: run hwprune finetune --model "
                  f"{out}/model.pt --data {args.data} --epochs {args.epochs} (same options) to resume",
                  file=sys.stderr)
        raise
    student = student.cpu().eval()
    data = {"out": str(out), "data": args.data, "epochs": cfg.epochs, "kd": cfg.kd, "lr": cfg.lr,
            "batch_size": args.batch_size, "world_size": size, "resumed_from_epoch": res.resumed_from,
            "accuracy_start": start_acc, "accuracy": res.val_accuracy, "teacher_accuracy": teacher_acc,
            "history": res.history, "state": str(state), "time_s": res.time_s}
    if rank == 0:
        onnx_bytes = to_onnx_bytes(student, (example_input,))
        data["onnx_max_abs_diff"] = check_parity(student, (example_input,), onnx_bytes).max_abs_diff
        buf = io.BytesIO()
        torch.save(checkpoint(student, zoo_name, num_classes, plan), buf)
        atomic_write_bytes(out / "model.pt", buf.getvalue())
        atomic_write_bytes(out / "model.onnx", onnx_bytes)
        atomic_write_text(out / "finetune.json", json.dumps(data, indent=2, default=float) + "\n")
    return data


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
    plan = _plan_of(args.model) if model_path.exists() else None
    data = run(args, lm.model, teacher, lm.example_input, lm.zoo_name, lm.num_classes, plan, out)
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


def after_prune(args, lm, res) -> dict | None:
    """``prune --finetune-epochs N``: fine-tune ``res.model`` into ``args.out``
    with the original ``lm.model`` as teacher. None without ``--finetune-epochs``."""
    from hwprune.errors import UserError
    if not args.finetune_epochs:
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("prune in one process, then fine-tune under torchrun: torchrun ... -m hwprune "
                        "finetune --model OUT/model.pt --data D --epochs N")
    if res.unchanged:
        return None
    args.epochs = args.finetune_epochs
    return run(args, res.model, lm.model, lm.example_input, lm.zoo_name, lm.num_classes, res.plan,
               Path(args.out))


def data_for_importance(args, lm):
    """Training batches for a data-driven --importance (None without --data)."""
    from hwprune.datasets import load_loaders, num_outputs
    from hwprune.errors import UserError
    from hwprune.importance.criteria import CRITERIA
    if args.data is None:
        if CRITERIA.metadata(args.importance)["needs_data"]:
            raise UserError(f"--importance {args.importance} needs data: add --data digits, --data FILE.npz "
                            f"(x [N,C,H,W] float, y [N] labels) or --data module:function")
        if args.finetune_epochs:
            raise UserError("--finetune-epochs needs --data (digits, a .npz file or module:function)")
        return None
    classes = lm.num_classes or num_outputs(lm.model, lm.example_input)
    return load_loaders(args.data, lm.example_input, classes, args.batch_size, args.seed)[0]
