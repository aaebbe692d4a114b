"""What reads each layer's output, and whether a layer reads a concat.

A runtime with a blocked channel layout (ONNX Runtime's NCHWc) converts a
tensor between layouts where its producer and its readers disagree, and what
a reader accepts depends on its kind: a conv reads blocked input on the
alignment, a concat or a pool only on whole blocks, a linear layer or a
reshape only plain. :func:`layer_readers` walks Torch-Pruning's dependency
graph from every conv/linear layer through the ops that keep a layout
(BatchNorm, ReLU-like activations, residual adds) to the first ops that read
it, and names them as :data:`profilers.specs.READERS`; the latency model
prices the conversions from them
(:func:`latency_models.layout.reorder_saved_elements`).
"""
from __future__ import annotations

from torch import nn
from torch_pruning import ops

# ops a blocked layout passes through unchanged (grad_fn names without the trailing version number)
KEEPS_LAYOUT = ("ReluBackward", "AddBackward", "SigmoidBackward", "TanhBackward", "HardtanhBackward",
                "ClampBackward", "CloneBackward", "AliasBackward")
POOLS = ("AvgPool2DBackward", "AdaptiveAvgPool2DBackward", "MaxPool2DWithIndicesBackward",
         "AdaptiveMaxPool2DBackward", "MeanBackward")
KEEPS_LAYOUT_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Identity,
                        nn.Dropout)
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def grad_fn_name(node) -> str:
    return str(getattr(node.module, "_grad_fn", "")).rstrip("0123456789")


def reader_kind(module: nn.Module) -> str:
    """A conv/linear layer as a reader of its input."""
    if not isinstance(module, nn.Conv2d):
        return "plain"
    if module.groups == 1:
        return "conv"
    if module.groups == module.in_channels == module.out_channels:
        return "dw"
    return f"grouped:{module.groups}"


def _step(node, layers: dict) -> str | None:
    """The reader a graph node is, or None where it keeps the layout (walk on)."""
    m = node.module
    if m in layers:
        return reader_kind(m)
    if node.type == ops.OPTYPE.CONCAT:
        return "concat"
    if isinstance(m, POOL_MODULES) or grad_fn_name(node).startswith(POOLS):
        return "pool"
    if node.type == ops.OPTYPE.BN or isinstance(m, KEEPS_LAYOUT_MODULES) or grad_fn_name(node).startswith(KEEPS_LAYOUT):
        return None
    return "plain"


def _is_add(node) -> bool:
    return grad_fn_name(node).startswith("AddBackward") and len(node.inputs) > 1


def _source(node, layers: dict):
    """The conv/linear layer whose output ``node`` reads through ops that keep
    the layout, or None (another add, a concat, the network's input)."""
    seen = set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if node.module in layers:
            return node.module
        if _is_add(node) or _step(node, layers) is not None or len(node.inputs) != 1:
            return None
        node = node.inputs[0]
    return None


def owns(add, module, layers: dict, order: dict) -> bool:
    """Whether ``module`` is the input of residual ``add`` that answers for the
    layout of its sum: of the add's inputs that come straight from a layer, the
    last layer (in ``order``). The other inputs read it as ``add``, which asks
    no layout of its own; counting the sum's readers for each input would
    count one conversion twice."""
    sources = [m for m in (_source(i, layers) for i in add.inputs) if m is not None]
    return bool(sources) and max(sources, key=lambda m: order[m]) is module


def readers_of(node, layers: dict, order: dict | None = None) -> tuple[str, ...]:
    """The readers of ``node``'s output, sorted; ``plain`` where it reaches the
    network's output; ``add`` where it meets a residual add whose layout
    another input answers for (:func:`owns`; ``order``: layer -> position)."""
    order = order if order is not None else {m: i for i, m in enumerate(layers)}
    found, seen, stack = set(), set(), list(node.outputs)
    if not stack:
        found.add("plain")
    while stack:
        nd = stack.pop()
        if id(nd) in seen:
            continue
        seen.add(id(nd))
        if _is_add(nd) and not owns(nd, node.module, layers, order):
            found.add("add")
            continue
        kind = _step(nd, layers)
        if kind is not None:
            found.add(kind)
        elif nd.outputs:
            stack.extend(nd.outputs)
        else:
            found.add("plain")
    return tuple(sorted(found))


def reads_concat(node, layers: dict) -> bool:
    """Whether ``node`` reads a concat (through ops that keep the layout)."""
    seen, stack = set(), list(node.inputs)
    while stack:
        nd = stack.pop()
        if id(nd) in seen or nd.module in layers:
            continue
        seen.add(id(nd))
        if nd.type == ops.OPTYPE.CONCAT:
            return True
        if _step(nd, layers) is None:
            stack.extend(nd.inputs)
    return False


def layer_readers(dg, layers: dict) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Layer name -> (readers of its output, whether it reads a concat), for
    ``layers`` (module -> name) in ``dg`` (a Torch-Pruning DependencyGraph)."""
    out, order = {}, {m: i for i, m in enumerate(layers)}
    for module, name in layers.items():
        node = dg.module2node.get(module)
        if node is not None:
            out[name] = (readers_of(node, layers, order), reads_concat(node, layers))
    return out
