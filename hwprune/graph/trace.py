"""Torch-Pruning's dependency graph, with the reshapes it cannot map marked opaque.

Torch-Pruning maps channel indices through a reshape only when it is a
flatten (``N,C,H,W -> N,C*H*W``) or its inverse. Other reshapes that mix the
channel dimension with another one (ShuffleNet's channel shuffle:
``view(N, g, C/g, H, W)``, transpose, ``view(N, C, H, W)``) it either maps
as if channel ``i`` stayed channel ``i`` or fails on (a division by zero). Here
each op's input and output shapes, and the module whose forward ran it, are
recorded while the graph is traced; a reshape that is neither keeps its
channel mapping out of Torch-Pruning's index mapping and is returned as
*opaque*: every channel group that reaches one must be frozen.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class OpSite:
    """Where an op ran: the innermost module's path and type, the op, its shapes."""
    path: str
    module_type: str
    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def reshape_keeps_channels(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """Whether Torch-Pruning maps channels through this reshape correctly:
    batch and channels unchanged, a flatten of everything after the batch, or its inverse."""
    if len(in_shape) < 2 or len(out_shape) < 2 or in_shape[0] != out_shape[0]:
        return False
    if in_shape[1] == out_shape[1] and _prod(in_shape[2:]) == _prod(out_shape[2:]):
        return True
    if len(out_shape) == 2 and out_shape[1] == _prod(in_shape[1:]) and len(in_shape) in (2, 4):
        return True
    return len(in_shape) == 2 and in_shape[1] == _prod(out_shape[1:]) and len(out_shape) in (2, 4)


class _Recorder(TorchFunctionMode):
    """Records each op's site by the ``grad_fn`` of its output."""

    def __init__(self, stack: list):
        super().__init__()
        self.stack, self.sites = stack, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if isinstance(o, torch.Tensor) and o.grad_fn is not None and o.grad_fn not in self.sites:
                path, kind = culprit(self.stack)
                self.sites[o.grad_fn] = OpSite(path, kind, getattr(func, "__name__", str(func)),
                                               tuple(first.shape) if first is not None else (), tuple(o.shape))
        return out


def _split_sizes(grad_fn) -> list[int] | None:
    """Sizes of a channel split's outputs, in output order (None: not a split along channels)."""
    dims = getattr(grad_fn, "_saved_self_sym_sizes", None)
    if dims is None or getattr(grad_fn, "_saved_dim", None) != 1:
        return None
    if hasattr(grad_fn, "_saved_split_sizes"):
        return [int(s) for s in grad_fn._saved_split_sizes]
    size, total = int(getattr(grad_fn, "_saved_split_size", 0)), int(dims[1])
    if size < 1:
        return None
    return [min(size, total - start) for start in range(0, total, size)]


# how often Torch-Pruning's search may reach one layer's handler under new
# indices before the group is called a runaway (legitimate groups of densenet,
# hrnet, inception, mixnet reach each once)
RUNAWAY_REPEATS = 64


class RunawayGroupError(RuntimeError):
    """Torch-Pruning's search for a channel group kept reaching the same node
    under new indices (a slice written back into its own tensor, as RexNet's
    ``x[:, 0:c] += shortcut``): it would not end."""

    def __init__(self, node):
        super().__init__(f"channel search does not end at {node}")
        self.node = node


class _CappedGroup(tp.dependency.group.Group):
    """A Group that stops a search reaching one node's handler too often."""

    def __init__(self):
        super().__init__()
        self._reached = Counter()

    def add_dep(self, dep, idxs):
        key = (id(dep.target), dep.handler)
        self._reached[key] += 1
        if self._reached[key] > RUNAWAY_REPEATS:
            raise RunawayGroupError(dep.target)
        super().add_dep(dep, idxs)

    def prune(self, *args, **kwargs):
        """Prune, and mark the graph's index mappings out of date (the layers' widths changed)."""
        dg = getattr(self, "_DG", None)
        if dg is not None:
            dg.mapped = False
        return super().prune(*args, **kwargs)


class _Graph(tp.DependencyGraph):
    """A DependencyGraph whose channel splits are sized from the traced op
    (Torch-Pruning guesses ``chunk``'s sizes from its consumers, wrongly when
    one feeds a concat) and whose opaque reshapes and splits are left out of
    index mapping."""

    sites: dict
    opaque: dict

    def build_dependency(self, model, example_inputs, forward_fn=None, **_):
        self.verbose, self.model = False, model
        self._module2name = {module: name for (name, module) in model.named_modules()}
        self.ignored_params = []
        self._param_to_name, self.unwrapped_parameters = self._detect_unwrapped_parameters(None)
        self.module2node = self._trace(model, example_inputs, forward_fn, output_transform=None)
        self._build_dependency(self.module2node)
        tp.dependency.shape_infer.init_shape_information(self)
        self._mark_opaque()
        tp.dependency.index_mapping.update_index_mapping(self)
        self.mapped = True
        return self

    def get_pruning_group(self, module, pruning_fn, idxs):
        """Torch-Pruning's group; its index mappings are recomputed only after
        one of this graph's groups was pruned (``mapped`` False), not on every
        call as Torch-Pruning does (2-3 ms each on mixnet_s, whose groups are
        probed channel by channel)."""
        graph, mapping = tp.dependency.graph, tp.dependency.index_mapping
        saved, update = graph.Group, mapping.update_index_mapping
        graph.Group = _CappedGroup  # the search builds its group by this name
        if getattr(self, "mapped", False):
            mapping.update_index_mapping = lambda dg: None
        try:
            group = super().get_pruning_group(module, pruning_fn, idxs)
        finally:
            graph.Group, mapping.update_index_mapping = saved, update
        self.mapped = True
        return group

    def get_all_groups(self, ignored_layers=(), root_module_types=(nn.Conv2d, nn.Linear)):
        """Torch-Pruning's groups, one per root layer not yet in a group; a root
        whose search runs away is left out and recorded in ``self.runaway``
        as (root module, :class:`OpSite` or None of the node it kept reaching)."""
        self.runaway = []
        ignored = set(ignored_layers) | set(self.IGNORED_LAYERS_IN_TRACING)
        seen = set()
        for m in list(self.module2node):
            pruner = self.get_pruner_of_module(m)
            if (m in ignored or m in seen or not isinstance(m, tuple(root_module_types)) or pruner is None
                    or pruner.get_out_channels(m) is None):
                continue
            try:
                group = self.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            except RunawayGroupError as exc:
                seen.add(m)
                self.runaway.append((m, self.sites.get(exc.node.grad_fn)))
                continue
            outs = [d.target.module for d, _ in group if self.is_out_channel_pruning_fn(d.handler)]
            seen.update(outs)
            if not any(o in ignored for o in outs):
                yield group

    def _mark_opaque(self):
        self.opaque = {}
        for module, node in self.module2node.items():
            if node.type == tp.ops.OPTYPE.RESHAPE:
                site = self.sites.get(node.grad_fn)  # None: inside an op (linear on N,H,W,C), left as it was
                if site is not None and not reshape_keeps_channels(site.in_shape, site.out_shape):
                    node.type = tp.ops.OPTYPE.ELEMENTWISE  # keep it out of the index mapping
                    self.opaque[module] = site
            elif node.type == tp.ops.OPTYPE.SPLIT and not self._order_split(node):
                node.type = tp.ops.OPTYPE.ELEMENTWISE
                self.opaque[module] = self.sites.get(node.grad_fn)

    @staticmethod
    def _order_split(node) -> bool:
        """Size a channel split from its op and order its outputs as the op's; False
        where its consumers do not map one to one onto its outputs."""
        sizes = _split_sizes(node.grad_fn)
        if sizes is None:
            return getattr(node.grad_fn, "_saved_dim", 1) != 1  # a split along another dim is left alone
        nrs = []
        for out in node.outputs:
            found = [nr for fn, nr in getattr(out.grad_fn, "next_functions", ()) if fn is node.grad_fn]
            if len(found) != 1:
                return False
            nrs.append(found[0])
        if sorted(nrs) != list(range(len(sizes))):
            return False
        node.outputs[:] = [out for _, out in sorted(zip(nrs, node.outputs), key=lambda p: p[0])]
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        node.module.split_sizes, node.module.offsets = sizes, offsets
        return True


def module_stack_hooks(model: nn.Module, stack: list) -> list:
    """Hooks that keep ``stack`` at the (path, type, is a torch.nn module) of the
    modules whose forward is running."""
    hooks = []
    for name, m in model.named_modules():
        def pre(mod, inp, name=name):
            stack.append((name, type(mod).__name__, type(mod).__module__.startswith("torch.nn.")))

        def post(mod, inp, out):
            if stack:
                stack.pop()
        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    return hooks


def build_graph(model: nn.Module, example_inputs: tuple) -> tp.DependencyGraph:
    """Torch-Pruning's DependencyGraph of ``model``; ``graph.opaque`` maps each
    opaque reshape op (a graph module) to its :class:`OpSite` (or None)."""
    stack: list = []
    recorder = _Recorder(stack)

    def forward(m, inputs):
        hooks = module_stack_hooks(m, stack)
        try:
            with recorder:
                return m(*inputs)
        finally:
            for h in hooks:
                h.remove()
    dg = _Graph()
    dg.sites = recorder.sites
    return dg.build_dependency(model, example_inputs=example_inputs, forward_fn=forward)


def culprit(stack: list) -> tuple[str, str]:
    """(path, type) of the innermost running module whose own code runs (not a
    torch.nn layer or container); the model itself is ``<model>``."""
    for path, kind, builtin in reversed(stack):
        if not builtin:
            return path or "<model>", kind
    return (stack[-1][0] or "<model>", stack[-1][1]) if stack else ("<model>", "?")


def describe_site(site: OpSite | None) -> tuple[str, str]:
    """(path, module type) of an op site, for messages."""
    if site is None:
        return "<unknown>", "?"
    return site.path or "<model>", site.module_type
