"""Prove the channel groups safe by cutting them: groups whose surgery fails are frozen.

Torch-Pruning's dependency graph mishandles some constructs: a slice to a
width stored in a module (``x[:, :self.out_chs]``, GhostNet), split sizes
stored in a module (``torch.split(x, self.splits, 1)``, MixNet), a shortcut
added to a slice of the channels (ReXNet). Pruning a group that reaches one
builds a model that fails, or runs with other widths than planned.

:func:`unsafe_groups` cuts every candidate group to half width at once in a
deep copy (batch 1), runs it, and compares its output shapes and every
layer's widths with the prediction; on a failure it splits the candidates in
halves and recurses (group testing: about ``2 k log(n / k)`` cuts for ``k``
unsafe groups among ``n``, one cut when all are safe). Each unsafe group is
returned with the module that failed (path and type) and why.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hwprune.graph.trace import OpSite, build_graph, culprit, describe_site, module_stack_hooks


@dataclass(frozen=True)
class FrozenGroup:
    """A channel group left at full width: its root layer and channel count, the
    construct that made it unsafe (module path and type) and why."""
    root: str
    channels: int
    path: str
    module_type: str
    reason: str

    def to_json(self) -> dict:
        return {"root": self.root, "channels": self.channels, "path": self.path,
                "module_type": self.module_type, "reason": self.reason}

    def message(self) -> str:
        return (f"{self.channels} channels of {self.root} frozen: {self.path} ({self.module_type}) "
                f"{self.reason}")


def opaque_frozen(root: str, channels: int, site: OpSite | None) -> FrozenGroup:
    """A group frozen because it reaches a reshape that mixes channels (``site``)."""
    path, kind = describe_site(site)
    shapes = f"{site.in_shape} -> {site.out_shape}" if site is not None else ""
    return FrozenGroup(root, channels, path, kind, f"mixes channels with another dimension "
                       f"({site.op if site is not None else 'reshape'} {shapes}, e.g. a channel shuffle)")


def runaway_frozen(dg, name_of: dict) -> list[FrozenGroup]:
    """Groups whose channel search did not end (``dg.runaway``, :class:`hwprune.graph.trace.RunawayGroupError`)."""
    out = []
    for module, site in getattr(dg, "runaway", ()):
        path, kind = describe_site(site)
        out.append(FrozenGroup(name_of.get(module, type(module).__name__), int(getattr(module, "out_channels", 0)
                               or getattr(module, "out_features", 0)), path, kind,
                               "is where the channel search does not end (as where a slice of channels is "
                               "written back into its own tensor: x[:, :c] += y)"))
    return out


class FrozenChannelsWarning(UserWarning):
    """Channels of a construct the graph cannot prune safely are kept."""


@dataclass(frozen=True)
class Failure:
    path: str
    module_type: str
    reason: str


def _shapes(out) -> list:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [s for o in out for s in _shapes(o)]
    return []


def _widths(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Conv2d):
        return m.in_channels, m.out_channels
    return m.in_features, m.out_features


def owner(model: nn.Module, path: str) -> tuple[str, str]:
    """(path, type) of the innermost module at or above ``path`` whose own code
    runs (not a torch.nn layer or container): where a construct feeding that layer lives."""
    parts = path.split(".") if path else []
    for n in range(len(parts), 0, -1):
        m = model.get_submodule(".".join(parts[:n]))
        if not type(m).__module__.startswith("torch.nn."):
            return ".".join(parts[:n]), type(m).__name__
    return "<model>", type(model).__name__


class Cutter:
    """Cuts sets of groups of ``model`` to half width and reports the first failure."""

    def __init__(self, model: nn.Module, inputs: tuple, drops: dict[int, tuple[str, Callable, list[int]]],
                 predict: Callable[[set[int]], dict[str, tuple[int, int]]]):
        self.model, self.inputs, self.drops, self.predict = model, inputs, drops, predict
        self.cuts = 0
        with torch.no_grad():
            self.want = _shapes(model(*inputs))

    def __call__(self, gids: Sequence[int]) -> Failure | None:
        self.cuts += 1
        model = copy.deepcopy(self.model).eval()
        try:
            dg = build_graph(model, self.inputs)
        except Exception as exc:
            return Failure("<model>", type(model).__name__, f"tracing the copy failed: {exc}")
        for gid in gids:
            root, handler, idxs = self.drops[gid]
            mod = model.get_submodule(root)
            try:
                dg.get_pruning_group(mod, handler, idxs=idxs).prune()
            except Exception as exc:
                return Failure(root, type(mod).__name__, f"surgery failed: {type(exc).__name__}: {exc}")
        bad = [(n, m) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and min(_widths(m)) < 1]
        if bad:
            n, m = bad[0]
            path, kind = owner(model, n)
            return Failure(path, kind, f"surgery left {n} ({type(m).__name__}) with widths {_widths(m)}")
        stack: list = []
        hooks = module_stack_hooks(model, stack)
        try:
            with torch.no_grad():
                got = _shapes(model(*self.inputs))
        except Exception as exc:
            path, kind = culprit(stack)
            leaf = f" in {stack[-1][0]} ({stack[-1][1]})" if stack and stack[-1][0] != path else ""
            return Failure(path, kind, f"fails when pruned{leaf}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
        finally:
            for h in hooks:
                h.remove()
        if got != self.want:
            return Failure("<model>", type(model).__name__, f"the pruned model's outputs have shapes {got}, "
                           f"not {self.want}")
        for name, (n_in, n_out) in self.predict(set(gids)).items():
            m = model.get_submodule(name)
            if _widths(m) != (n_in, n_out):
                path, kind = owner(model, name)
                return Failure(path, kind, f"prunes {name} ({type(m).__name__}) to widths {_widths(m)}, not the "
                               f"planned {(n_in, n_out)} (a construct the graph does not see)")
        return None


def unsafe_groups(cut: Callable[[Sequence[int]], Failure | None], gids: Sequence[int]) -> dict[int, Failure]:
    """The groups among ``gids`` whose cut fails (alone, or with the others when
    only together they fail), each with its failure."""
    bad: dict[int, Failure] = {}
    gids = list(gids)
    while gids:
        failure = cut(gids)
        if failure is None:
            return bad
        found = _search(cut, gids, failure)
        bad.update(found)
        gids = [g for g in gids if g not in found]
    return bad


def _search(cut, gids: list[int], failure: Failure) -> dict[int, Failure]:
    """Failing groups within ``gids`` (whose cut together fails with ``failure``)."""
    if len(gids) == 1:
        return {gids[0]: failure}
    half = len(gids) // 2
    found: dict[int, Failure] = {}
    for part in (gids[:half], gids[half:]):
        f = cut(part)
        if f is not None:
            found.update(_search(cut, part, f))
    if found:
        return found
    # each half is safe alone: add the second half's groups to the first one by one
    for i in range(half, len(gids)):
        f = cut(gids[:half] + gids[half:i + 1])
        if f is not None:
            return {gids[i]: f}
    return {gids[-1]: failure}
