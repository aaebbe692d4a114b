"""Fine-tuning a pruned network: distillation, checkpoints, resume, DDP.

The training loop of :func:`hwprune.train.loop.fit` runs in one process or under ``torchrun`` with
DistributedDataParallel (``init_distributed`` reads torchrun's environment;
gloo on CPU, NCCL on GPUs):

- loss: cross-entropy, or with a ``teacher`` (the unpruned model, on by
  default in the CLI) Hinton's distillation loss of :func:`hwprune.train.loop.kd_loss`;
- SGD (momentum 0.9, Nesterov, weight decay 5e-4), learning rate on a cosine
  schedule stepped once per batch over ``epochs x batches per epoch``;
- batches: the loader's dataset re-sampled by a ``DistributedSampler`` (one
  replica in a single process) seeded with ``seed``, so epoch e visits the
  same order whether or not the run was interrupted before it; under DDP each
  process sees its shard, and the batch size is per process;
- after every epoch: validation accuracy (each process evaluates the whole
  validation set, so no result needs gathering), a line in the history, and
  the checkpoint written atomically by rank 0: a model checkpoint of
  :func:`hwprune.graph.plans.checkpoint` (zoo name, classes, plan, weights)
  with the training state added (epoch, configuration, architecture, history,
  optimiser, schedule, RNG state);
- resume: a checkpoint of the same configuration and architecture is read
  back (``torch.load(weights_only=True)``) and training continues at the
  next epoch; the result equals an uninterrupted run. A checkpoint of another
  configuration is refused unless ``restart``.

Progress bars (``progress``, as :mod:`hwprune.cli.main` makes them: tqdm on
stderr) show the running loss and accuracy of the epoch; only rank 0 draws.
"""
from __future__ import annotations

import io
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from hwprune.errors import UserError
from hwprune.graph import plans
from hwprune.train.loop import Progress, evaluate, fit
from profilers.atomic import atomic_write_bytes

log = logging.getLogger("hwprune")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int
    lr: float = 0.01
    kd: bool = True
    kd_alpha: float = 0.5
    kd_T: float = 4.0
    seed: int = 0
    batch_size: int | None = None   # recorded from the loader

    def __post_init__(self):
        if int(self.epochs) < 1:
            raise UserError(f"fine-tuning epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UserError(f"learning rate must be a positive number, got {self.lr}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise UserError(f"kd_alpha must lie in [0, 1], got {self.kd_alpha}")
        if not self.kd_T > 0:
            raise UserError(f"kd_T must be positive, got {self.kd_T}")


@dataclass(frozen=True)
class FinetuneResult:
    epochs: int
    resumed_from: int                 # epochs already done when this run started
    history: list = field(default_factory=list)
    val_accuracy: float | None = None
    checkpoint: str | None = None
    world_size: int = 1
    time_s: float = 0.0


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; returns (rank,
    world size, the device this process trains on)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--train-device cuda: no CUDA device is available here; use --train-device cpu")
    dev = torch.device(f"cuda:{local % max(torch.cuda.device_count(), 1)}") if cuda else torch.device("cpu")
    if size > 1 and not (dist.is_available() and dist.is_initialized()):
        if cuda:
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, size = world()
    return rank, size, dev


def _sampled(loader, seed: int, rank: int, size: int):
    """The loader re-sampled per epoch by a seeded DistributedSampler (see the module docstring)."""
    ds = getattr(loader, "dataset", None)
    if ds is None or not hasattr(ds, "__len__") or isinstance(ds, torch.utils.data.IterableDataset):
        if size > 1:
            raise UserError("distributed fine-tuning needs a map-style dataset (with __len__ and indexing)")
        return loader, None
    sampler = DistributedSampler(ds, num_replicas=size, rank=rank, shuffle=True, seed=int(seed))
    return DataLoader(ds, batch_size=loader.batch_size or 1, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, drop_last=loader.drop_last,
                      pin_memory=loader.pin_memory), sampler


def _architecture(model: nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _config_json(cfg: FinetuneConfig, size: int) -> dict:
    return {**asdict(cfg), "world_size": size}


def load_checkpoint(path: Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read fine-tuning checkpoint {path} ({type(exc).__name__}); delete it or "
                        f"pass --restart") from None
    if not isinstance(state, dict) or state.get("format") != plans.CHECKPOINT_FORMAT or "epoch" not in state:
        raise UserError(f"{path} is not a hwprune fine-tuning checkpoint; delete it or pass --restart")
    return state


def _resume_state(path: Path | None, cfg: dict, arch: list, restart: bool) -> dict | None:
    if path is None or restart:
        return None
    state = load_checkpoint(path)
    if state is None:
        return None
    old = {k: v for k, v in state["config"].items() if k != "world_size"}
    new = {k: v for k, v in cfg.items() if k != "world_size"}
    if old != new:
        diff = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
                         if old.get(k) != new.get(k))
        raise UserError(f"checkpoint {path} was made with other settings ({diff}); pass the same settings "
                        f"to resume, or --restart to start over")
    if state["architecture"] != arch:
        raise UserError(f"checkpoint {path} belongs to another network (its weights have other shapes); "
                        f"pass --restart to start over")
    if state["config"].get("world_size") != cfg["world_size"]:
        log.warning("resuming a run of %s process(es) with %s: batches of the remaining epochs differ",
                    state["config"].get("world_size"), cfg["world_size"])
    return state


def finetune(model: nn.Module, train_loader, val_loader=None, config: FinetuneConfig | None = None, *,
             teacher: nn.Module | None = None, checkpoint: Path | str | None = None, restart: bool = False,
             progress: Progress | None = None, device: torch.device | str | None = None,
             zoo_name: str | None = None, num_classes: int | None = None,
             plan: dict | None = None) -> FinetuneResult:
    """Fine-tune ``model`` in place (see the module docstring); it is left in
    eval mode on ``device``. ``teacher`` is used when ``config.kd``.
    ``zoo_name``, ``num_classes`` and ``plan`` go into the checkpoint, which
    then also loads as the model."""
    t0 = time.perf_counter()
    cfg = config or FinetuneConfig(epochs=1)
    if cfg.kd and teacher is None:
        raise UserError("distillation needs the unpruned model as teacher (or turn it off: --no-kd)")
    rank, size = world()
    device = torch.device(device) if device is not None else torch.device("cpu")
    loader, sampler = _sampled(train_loader, cfg.seed, rank, size)
    if len(loader) == 0:
        raise UserError("the training data yields no batches")
    cfg = FinetuneConfig(**{**asdict(cfg), "batch_size": int(getattr(loader, "batch_size", 0) or 0)})
    cfg_json, arch = _config_json(cfg, size), _architecture(model)
    path = Path(checkpoint) if checkpoint is not None else None
    model.to(device)
    kd_teacher = teacher.to(device).eval() if cfg.kd else None
    state = _resume_state(path, cfg_json, arch, restart)
    history = [] if state is None else list(state["history"])
    if state is not None and rank == 0:
        log.info("resuming fine-tuning from %s after epoch %d of %d", path, int(state["epoch"]), cfg.epochs)

    def save(row: dict, training_state) -> None:
        history.append(row)
        if rank == 0 and path is not None:
            atomic_write_bytes(path, plans.checkpoint_bytes(plans.checkpoint(
                model, zoo_name, num_classes, plan, **training_state(), config=cfg_json, architecture=arch,
                history=history)))

    distributed = dist.is_available() and dist.is_initialized()
    fit(model, loader, cfg.epochs, lr=cfg.lr, teacher=kd_teacher, kd_alpha=cfg.kd_alpha, kd_T=cfg.kd_T,
        seed=cfg.seed, device=device, sampler=sampler, val_loader=val_loader, resume=state,
        distributed=distributed, rank=rank, on_epoch=save, progress=progress, per_batch=True,
        desc="fine-tuning")
    last = history[-1]["val_accuracy"] if history else None
    if last is None and val_loader is not None:
        last = evaluate(model, val_loader)
    start = 0 if state is None else int(state["epoch"])
    return FinetuneResult(cfg.epochs, start, history, last, str(path) if path else None, size,
                          time.perf_counter() - t0)
