"""Removable residual blocks: a second kind of decision next to channel widths.

A *block* is a submodule that maps its input ``x`` to an output of the same
shape that equals ``x`` once every parameter inside it (and every norm's running mean) is zero: it computes
``act(x + branch(x))`` where a zero branch (conv, linear, norm and layer-scale
weights at zero give zero) leaves ``act(x) = x`` on its input (a ReLU after a
ReLU'd input, no activation at all). Replacing it by ``nn.Identity`` leaves the
identity path, so the network still runs at every channel width. Detection is
numerical, on the example input's activations, so it covers any traceable
model (the zoo's ResNets, torchvision's and timm's residual families with
stochastic depth or layer scale, hand-written ones) without knowing its
classes. A block that changes shape (a stage's first block, with a projection
shortcut) or whose shortcut is a layer is not one; of nested candidates (a
stage of identity-shaped blocks) only the innermost are kept; a module called
more than once or with keyword arguments is skipped.

In a :data:`hwprune.graph.space.Choice` a block is the key ``-1 - index``
with the options ``(0,)`` (removed) and ``(1,)`` (kept); a choice without the
key keeps the block. A removed block drops its layers (their latency, FLOPs,
parameters, importance) and frees the channel groups that live only inside
it: their widths then cost nothing and count for nothing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from hwprune.graph.space import LAYER_TYPES, Choice, PruningSpace
from profilers.inputs import forward_with_hooks

REMOVED, KEPT = (0,), (1,)
GRANULARITIES = ("channel", "block", "both")


@dataclass(frozen=True)
class Block:
    """A removable block: its module ``path``, the indices of the space's
    layers inside it, the groups that live only inside it and its key in a choice."""
    path: str
    layers: tuple[int, ...]
    groups: tuple[int, ...]
    key: int


def block_key(index: int) -> int:
    return -1 - index


def is_block_key(key: int) -> bool:
    return key < 0


def _zeroed_is_identity(module: nn.Module, x: torch.Tensor) -> bool:
    m = copy.deepcopy(module).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for name, buf in m.named_buffers():  # a norm without affine weights: its running mean centres zero at zero
            if name.rpartition(".")[2] == "running_mean":
                buf.zero_()
        y = m(x.clone())
    if not isinstance(y, torch.Tensor) or y.shape != x.shape or not torch.isfinite(y).all():
        return False
    scale = float(x.abs().max())
    return scale > 0 and float((y - x).abs().max()) <= 1e-5 * scale


def _candidates(model: nn.Module, layer_names: list[str], example_inputs) -> dict[str, torch.Tensor]:
    """Modules holding a layer, called once with one tensor, returning one of the same shape: name -> input."""
    seen: dict[str, list] = {}
    hooks = []
    for name, m in model.named_modules():
        if not name or isinstance(m, LAYER_TYPES) or not any(n.startswith(name + ".") for n in layer_names):
            continue

        def hook(mod, args, kwargs, out, name=name):
            ok = (not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor)
                  and isinstance(out, torch.Tensor) and out.shape == args[0].shape)
            seen.setdefault(name, []).append(args[0].detach().clone() if ok else None)
        hooks.append(m.register_forward_hook(hook, with_kwargs=True))
    forward_with_hooks(model, example_inputs, hooks)
    return {n: calls[0] for n, calls in seen.items() if len(calls) == 1 and calls[0] is not None}


def find_blocks(space: PruningSpace) -> tuple[Block, ...]:
    """Every removable block of ``space.model`` (module docstring), in model order."""
    model = space.model.eval()
    names = [layer.name for layer in space.layers]
    found = [n for n, x in _candidates(model, names, space.example_inputs).items()
             if _zeroed_is_identity(model.get_submodule(n), x)]
    inner = [n for n in found if not any(o != n and o.startswith(n + ".") for o in found)]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    blocks = []
    for path in sorted(inner, key=order.__getitem__):
        layers = tuple(i for i, n in enumerate(names) if n.startswith(path + "."))
        inside = set(layers)
        groups = tuple(g.gid for g in space.groups if set(space.layers_of_group(g.gid)) <= inside)
        blocks.append(Block(path, layers, groups, block_key(len(blocks))))
    return tuple(blocks)


def attach_blocks(space: PruningSpace, granularity: str = "both") -> PruningSpace:
    """Find ``space``'s blocks and record them on it (``space.blocks``), for
    granularity ``block`` or ``both``; ``channel`` records none."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}")
    space.blocks = find_blocks(space) if granularity != "channel" else ()
    return space


def resolve_granularity(space: PruningSpace, granularity: str | None) -> str:
    """Attach ``space``'s blocks for ``granularity`` (None: ``both`` where the
    model has removable blocks, else ``channel``) and return it; a
    :class:`UserError` for an unknown name or ``block`` without blocks."""
    from hwprune.errors import UserError
    if granularity is not None and granularity not in GRANULARITIES:
        raise UserError(f"granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}; "
                        f"give e.g. --granularity both")
    attach_blocks(space, "both" if granularity is None else granularity)
    if granularity == "block" and not space.blocks:
        raise UserError("granularity block: this model has no removable residual block (a submodule whose "
                        "output is its input plus a branch); use --granularity channel")
    return granularity or ("both" if space.blocks else "channel")


def blocks_hint(space: PruningSpace) -> str:
    """For a budget channel pruning cannot reach: how many removable blocks
    the model has and how to let the selection remove them ("" if none)."""
    n = len(space.blocks or find_blocks(space))
    return (f", or let hwprune also remove whole residual blocks (--granularity both, granularity='both': "
            f"this model has {n})") if n else ""


def block_options(space: PruningSpace) -> dict[int, list[tuple[int, ...]]]:
    """Each block's options: removed, kept."""
    return {b.key: [REMOVED, KEPT] for b in space.blocks}


def channel_only(options: dict) -> dict:
    """``options`` without the block keys, or every width fixed at full where
    granularity is ``block``."""
    return {k: v for k, v in options.items() if not is_block_key(k)}


def with_blocks(space: PruningSpace, options: dict, granularity: str = "both") -> dict:
    """Grid ``options`` for ``granularity``: ``channel`` as given; ``block``
    every group at full width plus the blocks; ``both`` the grid plus the blocks."""
    if granularity == "channel":
        return dict(options)
    opts = {k: (v if granularity == "both" else v[-1:]) for k, v in channel_only(options).items()}
    return {**opts, **block_options(space)}


def removed_blocks(space: PruningSpace, choice: Choice) -> list[Block]:
    return [b for b in space.blocks if tuple(choice.get(b.key, KEPT)) == REMOVED]


def dead_layers(space: PruningSpace, choice: Choice) -> frozenset[int]:
    """Indices of the layers inside removed blocks."""
    return frozenset(i for b in removed_blocks(space, choice) for i in b.layers)


def dead_groups(space: PruningSpace, choice: Choice) -> frozenset[int]:
    """Groups that live only inside removed blocks."""
    return frozenset(g for b in removed_blocks(space, choice) for g in b.groups)


def removed_paths(space: PruningSpace, choice: Choice) -> list[str]:
    return [b.path for b in removed_blocks(space, choice)]


def live_specs(space: PruningSpace, choice: Choice) -> list:
    """The layer specs of the network ``choice`` gives, removed blocks' layers left out."""
    dead = dead_layers(space, choice)
    return [s for i, s in enumerate(space.specs(choice)) if i not in dead]


def remove_blocks(model: nn.Module, paths) -> nn.Module:
    """``model`` with the modules at ``paths`` replaced by ``nn.Identity`` (in place)."""
    for path in paths:
        parent, _, leaf = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if isinstance(owner, (nn.Sequential, nn.ModuleList)) and leaf.isdigit():
            owner[int(leaf)] = nn.Identity()
        else:
            setattr(owner, leaf, nn.Identity())
    return model
