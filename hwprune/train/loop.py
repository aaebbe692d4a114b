"""Short supervised training and knowledge-distillation fine-tuning.

SGD (momentum 0.9, Nesterov, weight decay 5e-4) with a cosine learning-rate
schedule stepped once per batch over all ``epochs * len(loader)`` steps.

With a ``teacher`` the loss is Hinton's distillation loss::

    (1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher || p_student)

where ``p = softmax(logits / T)``; the teacher runs in eval mode without
gradients. The thread count torch is configured with is left as it is.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
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
    steps = epochs * len(train_loader)
    if steps == 0:
        return model.eval()
    torch.manual_seed(int(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))
    if teacher is not None:
        teacher.eval()
    desc = "fine-tuning" if teacher is not None else "training"
    epoch_iter: Iterable = range(epochs)
    if progress is not None:
        epoch_iter = progress(epoch_iter, desc=desc, unit="epoch")
    for epoch in epoch_iter:
        model.train()
        total, count = 0.0, 0
        for x, y in train_loader:
            logits = model(x)
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
            total += float(loss.detach()) * len(y)
            count += len(y)
        if not math.isfinite(total):
            raise FloatingPointError(f"{desc} diverged at epoch {epoch + 1} (loss is not finite); "
                                     f"lower the learning rate")
        log.info("%s epoch %d/%d: loss %.4f", desc, epoch + 1, epochs, total / max(count, 1))
    return model.eval()


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
