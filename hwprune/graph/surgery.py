"""Physically remove channels: a plan of kept indices per group -> a smaller module."""
from __future__ import annotations

import copy

import torch
from torch import nn

from hwprune.graph.blocks import dead_layers, remove_blocks
from hwprune.graph.grouped import conv_kept, prune_skipping, rebuild_conv
from hwprune.graph.space import PruningSpace, root_handler
from hwprune.graph.trace import build_graph


class SurgeryError(RuntimeError):
    pass


def _one_sample(inputs: tuple) -> tuple:
    """The first sample of each batched tensor: channel dependencies do not
    depend on the batch, and tracing a batch of 64 large images costs seconds."""
    return tuple(t[:1] if isinstance(t, torch.Tensor) and t.dim() > 1 else t for t in inputs)


def apply_kept(space: PruningSpace, kept: dict[int, list[int]], removed=()) -> nn.Module:
    """Return a pruned deep copy of ``space.model`` keeping ``kept[gid]`` root
    indices, the residual blocks at the module paths ``removed`` replaced by
    identities (:mod:`hwprune.graph.blocks`)."""
    model = copy.deepcopy(space.model).eval()
    inputs = _one_sample(space.example_inputs)
    try:
        dg = build_graph(model, inputs)
    except (RuntimeError, ValueError):  # a forward that needs the example's batch (a reshape to it, say)
        model, inputs = copy.deepcopy(space.model).eval(), space.example_inputs
        dg = build_graph(model, inputs)
    try:  # grouped convs: their kept channels, and the side that follows a whole-group choice
        convs, follow = conv_kept(space, kept)
    except ValueError as exc:
        raise SurgeryError(str(exc)) from None
    skip = {model.get_submodule(n) for n in convs}
    drops = []
    for g in space.groups:
        keep = set(int(i) for i in kept.get(g.gid, range(g.size)))
        if not keep:
            raise SurgeryError(f"group {g.gid} ({g.root}) would lose every channel")
        drops.append((g.root, sorted(set(range(g.size)) - keep)))
    for name, drop in drops + follow:
        if drop:
            root = model.get_submodule(name)
            prune_skipping(dg.get_pruning_group(root, root_handler(root), idxs=drop), skip)
    for name, (keep_in, keep_out) in convs.items():
        try:
            rebuild_conv(model.get_submodule(name), space.model.get_submodule(name), keep_in, keep_out)
        except ValueError as exc:
            raise SurgeryError(f"{name}: {exc}") from None
    remove_blocks(model, removed)
    with torch.no_grad():
        model(*inputs)
    return model


def check_widths(space: PruningSpace, model: nn.Module, choice) -> None:
    """Verify each layer of the pruned model has the widths the space predicts
    (the layers of removed blocks are gone)."""
    dead = dead_layers(space, choice)
    for i, (layer, spec) in enumerate(zip(space.layers, space.specs(choice))):
        if i in dead:
            continue
        m = model.get_submodule(layer.name)
        got = (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features)
        if got != (spec.in_channels, spec.out_channels):
            raise SurgeryError(f"layer {layer.name}: pruned widths {got} differ from the planned "
                               f"{(spec.in_channels, spec.out_channels)}")
        if isinstance(m, nn.Conv2d) and m.groups != spec.groups:
            raise SurgeryError(f"layer {layer.name}: pruned groups {m.groups} differ from the planned {spec.groups}")
