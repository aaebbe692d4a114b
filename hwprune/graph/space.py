"""Coupled channel groups of any traceable CNN, and each layer's widths in them.

Built on Torch-Pruning's DependencyGraph. A :class:`ChannelGroup` is one index
space of channels that must be kept or removed together (across residual adds,
concats, depthwise convs, BN and the flatten before a Linear). Its indices are
partitioned into *segments*: indices covered by the same set of layers (one
segment, except where a concat meets a residual add). Every conv/linear layer's
input and output width is ``fixed + sum(mult * kept_in_segment)`` over the
segments it touches, so a choice of kept counts per segment gives every layer's
shape without building the model.

Layers whose output reaches the model's output without crossing another
conv/linear (the classifier) keep their outputs. Non-depthwise grouped convs
are pruned within their groups or by whole groups (:mod:`hwprune.graph.grouped`).

Constructs the graph cannot map are frozen, not pruned: groups that reach a
reshape mixing channels with another dimension (a channel shuffle;
:mod:`hwprune.graph.trace`), and groups whose trial cut to half width fails
or gives other widths than predicted (a slice or split to sizes stored in a
module; :mod:`hwprune.graph.guard`). ``space.frozen`` records each one (the
group's root layer, the construct's module path and type, why) and a
:class:`FrozenChannelsWarning` names it.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace

import torch
import torch_pruning as tp
from torch import nn

from hwprune.graph import guard
from hwprune.graph.grouped import options as grouped_options
from hwprune.graph.grouped import regroup
from hwprune.graph.guard import Cutter, Failure, FrozenChannelsWarning, FrozenGroup, owner, unsafe_groups
from hwprune.graph.readers import layer_readers
from hwprune.graph.trace import build_graph
from profilers import LayerSpec
from profilers.inputs import as_inputs, forward_with_hooks

LAYER_TYPES = (nn.Conv2d, nn.Linear)
log = logging.getLogger("hwprune")


@dataclass(frozen=True)
class Term:
    gid: int
    seg: int
    mult: int


@dataclass(frozen=True)
class Segment:
    size: int
    layers: tuple[str, ...]  # layers whose channels this segment's indices are


@dataclass(frozen=True)
class ChannelGroup:
    gid: int
    root: str
    size: int
    segments: tuple[Segment, ...]
    seg_index: tuple[tuple[int, ...], ...]  # root indices of each segment
    uniform: bool = False  # every segment keeps the same count (a grouped conv's groups, within mode)
    block: int = 1  # kept counts are multiples of this (a grouped conv's whole groups)


@dataclass(frozen=True)
class Layer:
    name: str
    spec: LayerSpec  # at full width
    fixed_in: int
    fixed_out: int
    in_terms: tuple[Term, ...]
    out_terms: tuple[Term, ...]
    group_in: int = 0  # whole-group mode: input channels per conv group (groups = n_in // group_in)


class GraphError(ValueError):
    """The model cannot be traced or analysed."""


def _is_grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def layer_input_shapes(model: nn.Module, example_inputs) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES):
            def hook(mod, inp, out, name=name):
                shapes.setdefault(name, tuple(inp[0].shape))
            hooks.append(m.register_forward_hook(hook))
    forward_with_hooks(model, example_inputs, hooks)
    return shapes


def layer_spec(m: nn.Module, shape: tuple[int, ...]) -> LayerSpec:
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str):
            raise GraphError(f"conv padding={m.padding!r} is not supported; use explicit padding")
        return LayerSpec("conv", m.in_channels, m.out_channels, _pair(m.kernel_size), _pair(m.stride),
                         _pair(m.padding), _pair(m.dilation), m.groups, shape[2], shape[3], shape[0])
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return LayerSpec("linear", m.in_features, m.out_features, batch=rows)


def _output_layers(dg, layers: dict[nn.Module, str]) -> list[nn.Module]:
    """Layers whose outputs reach a model output without crossing another layer."""
    found = []
    for mod in layers:
        node = dg.module2node.get(mod)
        if node is None:
            continue
        stack, seen = list(node.outputs), set()
        if not stack:
            found.append(mod)
            continue
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.module in layers:
                continue
            if not n.outputs:
                found.append(mod)
                break
            stack.extend(n.outputs)
    return found


def dep_role(dep) -> str | None:
    """``"out"`` or ``"in"``: which channels of its layer a torch_pruning
    dependency prunes (None for the other handlers)."""
    name = dep.handler.__name__
    if name.endswith("out_channels"):
        return "out"
    if name.endswith("in_channels"):
        return "in"
    return None


class PruningSpace:
    """Groups and layers of one model; see the module docstring."""

    blocks: tuple = ()  # removable residual blocks, once searched (hwprune.graph.blocks.attach_blocks)

    def __init__(self, model: nn.Module, example_inputs, grouped_modes=None, verify: bool = True):
        self.example_inputs = as_inputs(example_inputs)
        model.eval()
        try:
            shapes = layer_input_shapes(model, self.example_inputs)
            dg = build_graph(model, self.example_inputs)
        except Exception as exc:  # tracing arbitrary user code fails in many ways
            raise GraphError(f"cannot trace the model ({type(exc).__name__}: {exc})") from None
        name_of = {m: n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES) and n in shapes}
        self.output_layers = tuple(sorted(name_of[m] for m in _output_layers(dg, name_of)))
        ignored = [m for m in name_of if name_of[m] in self.output_layers]
        built: list[tuple[ChannelGroup, dict]] = []
        frozen: list[FrozenGroup] = []
        for g in dg.get_all_groups(ignored_layers=ignored, root_module_types=LAYER_TYPES):
            one = self._build_group(dg, g, name_of, len(built))
            if one is None:
                continue
            opaque = [dg.opaque[d.target.module] for d, _ in g if d.target.module in dg.opaque]
            if opaque:
                frozen.append(guard.opaque_frozen(one[0].root, one[0].size, opaque[0]))
                continue
            built.append(one)
        frozen += guard.runaway_frozen(dg, name_of)
        self.model, self.dg, self._name_of = model, dg, name_of
        if verify and built:
            bad = self._verify(built, shapes)
            frozen += [FrozenGroup(built[gid][0].root, built[gid][0].size, f.path, f.module_type, f.reason)
                       for gid, f in sorted(bad.items())]
            built = [b for b in built if b[0].gid not in bad]
        groups, terms = _renumber(built)
        self.groups, self.frozen = tuple(groups), tuple(frozen)
        for f in self.frozen:
            warnings.warn(f.message(), FrozenChannelsWarning, stacklevel=2)
        self.layers = tuple(_layers(name_of, shapes, groups, terms))
        try:
            self.groups, self.layers, self.grouped = regroup(dg, self.groups, self.layers, grouped_modes,
                                                             dep_role, root_handler)
        except ValueError as exc:
            raise GraphError(str(exc)) from None
        where = layer_readers(dg, name_of)  # what reads each layer, for the latency model's layout changes
        self.layers = tuple(replace(layer, spec=replace(layer.spec, readers=where[layer.name][0],
                                                        concat_input=where[layer.name][1]))
                            if layer.name in where else layer for layer in self.layers)

    def _verify(self, built: list[tuple[ChannelGroup, dict]], shapes) -> dict:
        """Cut every group to half width (bisecting on failure); the groups that fail."""
        groups = [g for g, _ in built]
        # every other channel of each segment: a prefix kept would hide a slice ``x[:, :k]``
        half = {g.gid: tuple((s.size + 1) // 2 for s in g.segments) for g in groups}
        drops = {}
        for g in groups:
            idxs = sorted(i for seg in g.seg_index for i in seg[1::2])
            drops[g.gid] = (g.root, root_handler(self.model.get_submodule(g.root)), idxs)

        def predict(gids: set[int]) -> dict[str, tuple[int, int]]:
            sub = [built[i] for i in sorted(gids)]
            gs, ts = _renumber(sub)
            choice = {new.gid: half[old.gid] for (old, _), new in zip(sub, gs)}
            out = {}
            for layer in _layers(self._name_of, shapes, gs, ts):
                if layer.in_terms or layer.out_terms:
                    n_in = layer.fixed_in + sum(t.mult * choice[t.gid][t.seg] for t in layer.in_terms)
                    n_out = layer.fixed_out + sum(t.mult * choice[t.gid][t.seg] for t in layer.out_terms)
                    out[layer.name] = (n_in, n_out)
            return out
        bad = {}
        full = {layer.name: (layer.spec.in_channels, layer.spec.out_channels)
                for layer in _layers(self._name_of, shapes, [], {})}
        for g in groups:  # the graph's own count of a group's channels must fit its layers
            for name, (n_in, n_out) in predict({g.gid}).items():
                if not (0 < n_in <= full[name][0] and 0 < n_out <= full[name][1]):
                    path, kind = owner(self.model, name)
                    bad[g.gid] = Failure(path, kind, f"holds {name} (widths {full[name]}) whose channels the graph "
                                         f"counts inconsistently: half of the group would leave it {(n_in, n_out)}")
                    break
        one = tuple(t[:1] if isinstance(t, torch.Tensor) and t.dim() > 1 else t for t in self.example_inputs)
        try:
            cut = Cutter(self.model, one, drops, predict)
        except Exception:
            cut = Cutter(self.model, self.example_inputs, drops, predict)
        # grouped convs have their own surgery (:mod:`hwprune.graph.grouped`), not Torch-Pruning's
        grouped = {g.gid for g, terms in built
                   if any(_is_grouped(self.model.get_submodule(n)) for n, _ in terms)}
        bad.update(unsafe_groups(cut, [g.gid for g in groups if g.gid not in bad and g.gid not in grouped]))
        log.debug("verified %d channel groups in %d cuts, %d unsafe", len(groups), cut.cuts, len(bad))
        return bad

    @staticmethod
    def _build_group(dg, g, name_of, gid):
        root_dep = g[0].dep
        root_mod, root_fn = root_dep.target.module, root_dep.handler
        size = len(g[0].idxs)
        members = [(name_of[d.target.module], dep_role(d), d) for d, _ in g
                   if d.target.module in name_of and dep_role(d) is not None]
        grouped = any(_is_grouped(dg.model.get_submodule(n)) for n, _, _ in members)
        if size < 2:
            return None
        if root_mod not in name_of:
            return None
        # simple case: every member covers every index with the same multiplicity
        counts = {(n, r): len(i) for (d, i) in g for (n, r, dd) in members if dd is d}
        simple = all(c % size == 0 for c in counts.values()) and all(
            sorted(set(int(x) for x in i)) == list(range(len(set(int(x) for x in i))))
            for (d, i) in g if d.target.module in name_of)
        if grouped and not (simple and all(c == size for (n, _), c in counts.items()
                                           if _is_grouped(dg.model.get_submodule(n)))):
            return None
        if simple:
            seg = Segment(size, tuple(sorted({n for (n, _) in counts})))
            terms = {key: [Term(gid, 0, c // size)] for key, c in counts.items()}
            return ChannelGroup(gid, name_of[root_mod], size, (seg,), (tuple(range(size)),)), terms
        # general case: probe each root index to see which members it reaches
        if size > 4096:
            return None
        signature: list[tuple] = []
        for r in range(size):
            probe = dg.get_pruning_group(root_mod, root_fn, idxs=[r])
            sig = {}
            for d, i in probe:
                if d.target.module in name_of and dep_role(d) is not None:
                    key = (name_of[d.target.module], dep_role(d))
                    sig[key] = sig.get(key, 0) + len(i)
            signature.append(tuple(sorted(sig.items())))
        order = sorted(set(signature), key=signature.index)
        seg_index = tuple(tuple(r for r in range(size) if signature[r] == s) for s in order)
        segments, terms = [], {}
        for si, sig in enumerate(order):
            segments.append(Segment(len(seg_index[si]), tuple(sorted({k[0] for k, _ in sig}))))
            for key, mult in sig:
                terms.setdefault(key, []).append(Term(gid, si, mult))
        return ChannelGroup(gid, name_of[root_mod], size, tuple(segments), seg_index), terms

    def frozen_json(self) -> list[dict]:
        return [f.to_json() for f in self.frozen]

    # ---- widths -> shapes -------------------------------------------------
    def full_choice(self) -> dict[int, tuple[int, ...]]:
        return {g.gid: tuple(s.size for s in g.segments) for g in self.groups}

    def layer_widths(self, layer: Layer, choice: dict[int, tuple[int, ...]]) -> tuple[int, int]:
        n_in = layer.fixed_in + sum(t.mult * choice[t.gid][t.seg] for t in layer.in_terms)
        n_out = layer.fixed_out + sum(t.mult * choice[t.gid][t.seg] for t in layer.out_terms)
        return n_in, n_out

    def layer_spec(self, layer: Layer, choice: dict[int, tuple[int, ...]]) -> LayerSpec:
        n_in, n_out = self.layer_widths(layer, choice)
        groups = n_in if layer.spec.depthwise else n_in // layer.group_in if layer.group_in else layer.spec.groups
        return replace(layer.spec, in_channels=n_in, out_channels=n_out, groups=groups)

    def specs(self, choice: dict[int, tuple[int, ...]]) -> list[LayerSpec]:
        return [self.layer_spec(layer, choice) for layer in self.layers]

    def layers_of_group(self, gid: int) -> list[int]:
        return [i for i, l in enumerate(self.layers)
                if any(t.gid == gid for t in l.in_terms + l.out_terms)]


Choice = dict[int, tuple[int, ...]]


def _renumber(built: list[tuple[ChannelGroup, dict]]) -> tuple[list[ChannelGroup], dict]:
    """Groups numbered 0.. in order, and every layer's terms (by (name, role)) with those numbers."""
    groups, terms = [], {}
    for new, (g, member_terms) in enumerate(built):
        groups.append(replace(g, gid=new))
        for key, ts in member_terms.items():
            terms.setdefault(key, []).extend(replace(t, gid=new) for t in ts)
    return groups, terms


def _layers(name_of, shapes, groups: list[ChannelGroup], terms: dict) -> list[Layer]:
    sizes = {g.gid: g.segments for g in groups}
    layers = []
    for mod, name in name_of.items():
        spec = layer_spec(mod, shapes[name])
        ins, outs = tuple(terms.get((name, "in"), ())), tuple(terms.get((name, "out"), ()))
        if _is_depthwise(mod):
            ins = outs
        used_in = sum(t.mult * sizes[t.gid][t.seg].size for t in ins)
        used_out = sum(t.mult * sizes[t.gid][t.seg].size for t in outs)
        layers.append(Layer(name, spec, spec.in_channels - used_in, spec.out_channels - used_out, ins, outs))
    return layers


def width_grid(size: int, step: int, min_width: int, align: int = 0) -> list[int]:
    """Widths worth considering for a group of ``size`` channels: multiples of
    the device ``step``, the full width, the device minimum below one step,
    and, where the full width is off the device's alignment (``align``; its
    plain kernels can cost twice the next aligned width's), the largest
    aligned width below it."""
    grid = set(range(step, size + 1, step)) | {size}
    if min_width < step:
        grid.add(min(min_width, size))
    if align > 1 and size % align and size > align:
        grid.add(size // align * align)
    return sorted(w for w in grid if w >= min(min_width, size))


def group_options(g: ChannelGroup, step: int, min_width: int, align: int = 0) -> list[tuple[int, ...]]:
    if g.uniform or g.block > 1:
        return grouped_options(g, step, min_width, align, width_grid)
    if len(g.segments) == 1:
        return [(w,) for w in width_grid(g.size, step, min_width, align)]
    quantum = max(1, min(step, min_width))
    options = set()
    for w in width_grid(g.size, step, min_width, align):
        frac = w / g.size
        ks = []
        for s in g.segments:
            k = int(round(frac * s.size / quantum)) * quantum
            ks.append(int(min(s.size, max(min(quantum, s.size), k))))
        options.add(tuple(ks))
    return sorted(options, key=sum)


def device_options(space, device) -> dict[int, list[tuple[int, ...]]]:
    """Every group's width options on ``device``'s grid (its step, minimum and alignment)."""
    return {g.gid: group_options(g, device.step_channels, device.min_channels, device.align_channels)
            for g in space.groups}


def uniform_choice(options: dict[int, list[tuple[int, ...]]], frac: float) -> Choice:
    """Every group at the option ``frac`` of the way from its smallest (0) to its full width (1)."""
    return {gid: opts[int(round(frac * (len(opts) - 1)))] for gid, opts in options.items()}


def root_handler(module):
    if isinstance(module, torch.nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_conv_out_channels


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
