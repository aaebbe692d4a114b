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
keep both widths (their group structure is not pruned).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch_pruning as tp
from torch import nn

from profilers import LayerSpec
from profilers.inputs import as_inputs

LAYER_TYPES = (nn.Conv2d, nn.Linear)


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


@dataclass(frozen=True)
class Layer:
    name: str
    spec: LayerSpec  # at full width
    fixed_in: int
    fixed_out: int
    in_terms: tuple[Term, ...]
    out_terms: tuple[Term, ...]


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
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
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

    def __init__(self, model: nn.Module, example_inputs):
        self.example_inputs = as_inputs(example_inputs)
        model.eval()
        try:
            shapes = layer_input_shapes(model, self.example_inputs)
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=self.example_inputs)
        except Exception as exc:  # tracing arbitrary user code fails in many ways
            raise GraphError(f"cannot trace the model ({type(exc).__name__}: {exc})") from None
        name_of = {m: n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES) and n in shapes}
        self.output_layers = tuple(sorted(name_of[m] for m in _output_layers(dg, name_of)))
        ignored = [m for m in name_of if name_of[m] in self.output_layers]
        groups: list[ChannelGroup] = []
        terms: dict[tuple[str, str], list[Term]] = {}
        for g in dg.get_all_groups(ignored_layers=ignored, root_module_types=LAYER_TYPES):
            built = self._build_group(dg, g, name_of, len(groups))
            if built is None:
                continue
            group, member_terms = built
            groups.append(group)
            for key, ts in member_terms.items():
                terms.setdefault(key, []).extend(ts)
        self.groups = tuple(groups)
        self.model, self.dg, self._name_of = model, dg, name_of
        layers = []
        for mod, name in name_of.items():
            spec = layer_spec(mod, shapes[name])
            ins, outs = tuple(terms.get((name, "in"), ())), tuple(terms.get((name, "out"), ()))
            if _is_depthwise(mod):
                ins = outs
            sizes = {g.gid: g.segments for g in groups}
            used_in = sum(t.mult * sizes[t.gid][t.seg].size for t in ins)
            used_out = sum(t.mult * sizes[t.gid][t.seg].size for t in outs)
            layers.append(Layer(name, spec, spec.in_channels - used_in, spec.out_channels - used_out, ins, outs))
        self.layers = tuple(layers)

    @staticmethod
    def _build_group(dg, g, name_of, gid):
        root_dep = g[0].dep
        root_mod, root_fn = root_dep.target.module, root_dep.handler
        size = len(g[0].idxs)
        members = [(name_of[d.target.module], dep_role(d), d) for d, _ in g
                   if d.target.module in name_of and dep_role(d) is not None]
        if size < 2 or any(_is_grouped(dg.model.get_submodule(n)) for n, _, _ in members):
            return None
        if root_mod not in name_of:
            return None
        # simple case: every member covers every index with the same multiplicity
        counts = {(n, r): len(i) for (d, i) in g for (n, r, dd) in members if dd is d}
        simple = all(c % size == 0 for c in counts.values()) and all(
            sorted(set(int(x) for x in i)) == list(range(len(set(int(x) for x in i))))
            for (d, i) in g if d.target.module in name_of)
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

    # ---- widths -> shapes -------------------------------------------------
    def full_choice(self) -> dict[int, tuple[int, ...]]:
        return {g.gid: tuple(s.size for s in g.segments) for g in self.groups}

    def layer_widths(self, layer: Layer, choice: dict[int, tuple[int, ...]]) -> tuple[int, int]:
        n_in = layer.fixed_in + sum(t.mult * choice[t.gid][t.seg] for t in layer.in_terms)
        n_out = layer.fixed_out + sum(t.mult * choice[t.gid][t.seg] for t in layer.out_terms)
        return n_in, n_out

    def layer_spec(self, layer: Layer, choice: dict[int, tuple[int, ...]]) -> LayerSpec:
        n_in, n_out = self.layer_widths(layer, choice)
        groups = n_in if layer.spec.depthwise else layer.spec.groups
        return replace(layer.spec, in_channels=n_in, out_channels=n_out, groups=groups)

    def specs(self, choice: dict[int, tuple[int, ...]]) -> list[LayerSpec]:
        return [self.layer_spec(layer, choice) for layer in self.layers]

    def layers_of_group(self, gid: int) -> list[int]:
        return [i for i, l in enumerate(self.layers)
                if any(t.gid == gid for t in l.in_terms + l.out_terms)]


Choice = dict[int, tuple[int, ...]]


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
