"""The one training loop, for the demo's training and for fine-tuning.

SGD (momentum 0.9, Nesterov, weight decay 5e-4) with a cosine learning-rate
schedule stepped once per batch over all ``epochs * len(loader)`` steps.

With a ``teacher`` the loss is Hinton's distillation loss::

    (1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher || p_student)

where ``p = softmax(logits / T)``; the teacher runs in eval mode without
gradients. The thread count torch is configured with is left as it is.

:func:`fit` is the loop; :func:`train` runs it plainly (one process, the
loader's own batch order), :func:`hwprune.train.finetune.finetune` with a
seeded sampler, checkpoints, resume and DistributedDataParallel.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

log = logging.getLogger("hwprune")
Progress = Callable[..., Iterable]

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            alpha: float = 0.5, T: float = 4.0) -> torch.Tensor:
    """Cross-entropy on the labels blended with the temperature-scaled distillation term."""
    ce = F.cross_entropy(student_logits, targets)
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.log_softmax(teacher_logits / T, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * (T * T) * kl


def _to_device(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    return state


def fit(model: nn.Module, loader, epochs: int, *, lr: float, teacher: nn.Module | None = None,
        kd_alpha: float = 0.5, kd_T: float = 4.0, seed: int = 0, device: torch.device | None = None,
        sampler=None, val_loader=None, resume: dict | None = None, distributed: bool = False,
        rank: int = 0, on_epoch: Callable[[dict, Callable[[], dict]], None] | None = None,
        progress: Progress | None = None, per_batch: bool = False, desc: str = "training") -> list[dict]:
    """Train ``model`` in place from epoch ``resume["epoch"]`` (0 without
    ``resume``) to ``epochs``; it is left in eval mode. Returns one row per
    epoch run: epoch, loss, train_accuracy, val_accuracy (over ``val_loader``,
    else None), lr and time_s.

    ``device``: where batches go (None: where they are). ``sampler`` (a
    DistributedSampler) is told each epoch. ``distributed``: wrap the model in
    DistributedDataParallel and sum the epoch's figures over the processes.
    After every epoch ``on_epoch(row, training_state)`` gets the row and a
    function returning the training state (``epoch``, ``optimizer``,
    ``scheduler``, ``rng``); ``resume`` is such a state plus the model's
    ``state_dict`` (a fine-tuning checkpoint), and training goes on after its epoch.
    ``progress`` draws on ``rank`` 0 only: over epochs, or with ``per_batch``
    over each epoch's batches with the running loss and accuracy."""
    steps_per_epoch = len(loader)
    total = epochs * steps_per_epoch
    torch.manual_seed(int(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    start = 0
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        opt.load_state_dict(_to_device(resume["optimizer"], device))
        sched.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"])
        start = int(resume["epoch"])
    if teacher is not None:
        teacher.eval()
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    draw = progress if rank == 0 else None
    epoch_iter: Iterable = range(start, epochs)
    if draw is not None and not per_batch:
        epoch_iter = draw(epoch_iter, desc=desc, unit="epoch")
    rows = []
    for epoch in epoch_iter:
        t_ep = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss x samples, correct, samples
        batches = loader
        if draw is not None and per_batch:
            batches = draw(loader, desc=f"{desc} {epoch + 1}/{epochs}", unit="batch", total=steps_per_epoch)
        for x, y in batches:
            if device is not None:
                x, y = x.to(device), y.to(device)
            logits = net(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = kd_loss(logits, t_logits, y, kd_alpha, kd_T)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += torch.tensor([float(loss.detach()) * len(y), float((logits.argmax(1) == y).sum()), len(y)],
                                 dtype=torch.float64)
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{sums[0] / sums[2]:.4f}", acc=f"{sums[1] / sums[2]:.3f}")
        if distributed:  # NCCL reduces device tensors only
            reduced = sums.to(device)
            dist.all_reduce(reduced)
            sums = reduced.cpu()
        if not math.isfinite(float(sums[0])):
            raise FloatingPointError(f"{desc} diverged at epoch {epoch + 1} (loss is not finite); "
                                     f"lower the learning rate")
        val = evaluate(model, val_loader) if val_loader is not None else None
        count = max(float(sums[2]), 1.0)
        row = {"epoch": epoch + 1, "loss": float(sums[0]) / count, "train_accuracy": float(sums[1]) / count,
               "val_accuracy": val, "lr": float(sched.get_last_lr()[0]), "time_s": time.perf_counter() - t_ep}
        rows.append(row)
        if rank == 0:
            log.info("%s epoch %d/%d: loss %.4f, train accuracy %.4f%s", desc, epoch + 1, epochs, row["loss"],
                     row["train_accuracy"], "" if val is None else f", validation accuracy {val:.4f}")
        if on_epoch is not None:
            on_epoch(row, lambda e=epoch + 1: {"epoch": e, "optimizer": opt.state_dict(),
                                               "scheduler": sched.state_dict(), "rng": torch.get_rng_state()})
        if distributed:
            dist.barrier()
    model.eval()
    return rows


def train(model: nn.Module, train_loader, epochs: int, lr: float = 0.05, teacher: nn.Module | None = None,
          kd_alpha: float = 0.5, kd_T: float = 4.0, progress: Progress | None = None,
          seed: int = 0) -> nn.Module:
    """Train ``model`` in place for ``epochs`` epochs and return it in eval mode."""
    epochs = int(epochs)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if not 0.0 <= kd_alpha <= 1.0:
        raise ValueError(f"kd_alpha must lie in [0, 1], got {kd_alpha}")
    if kd_T <= 0:
        raise ValueError(f"kd_T must be positive, got {kd_T}")
    if epochs * len(train_loader) == 0:
        return model.eval()
    fit(model, train_loader, epochs, lr=lr, teacher=teacher, kd_alpha=kd_alpha, kd_T=kd_T, seed=seed,
        progress=progress, desc="fine-tuning" if teacher is not None else "training")
    return model


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (put in eval mode) over ``loader``,
    on the device of the model's parameters."""
    model.eval()
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    correct, count = 0, 0
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        correct += int((model(x).argmax(dim=1) == y).sum())
        count += len(y)
    if count == 0:
        raise ValueError("cannot evaluate on an empty loader")
    return correct / count
