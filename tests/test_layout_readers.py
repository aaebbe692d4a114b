"""What reads each layer's output (hwprune.graph.readers), and the layout
changes the latency model prices from it, against ONNX Runtime's own
optimised graphs (the NCHWc reorders it inserts)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import shape_inference

from hwprune import zoo
from hwprune.graph.space import PruningSpace
from hwprune.graph.subnets import build, random_choices
from latency_models.layout import reorder_saved_elements
from latency_models.quadratic import misaligned, reads_plain_input
from profilers import LayerSpec

ALIGN = 4  # ONNX Runtime's channel alignment for blocked convs on x86 (the profiler measures 4 here)


def space_of(name):
    model, x = zoo.create(name)
    return PruningSpace(model, (x,)), x


def test_readers_follow_the_graph_through_norms_activations_and_adds():
    sp, _ = space_of("concatnet")
    spec = {layer.name: layer.spec for layer in sp.layers}
    assert spec["b1.0"].readers == ("concat",) and spec["b5.0.0"].readers == ("conv",)
    assert spec["mix.0"].concat_input and not spec["head.0"].concat_input
    assert spec["head.0"].readers == ("pool",) and spec["fc"].readers == ("plain",)
    sp, _ = space_of("invresnet")
    spec = {layer.name: layer.spec for layer in sp.layers}
    assert spec["blocks.0.0.0"].readers == ("dw",)
    # the block's last conv answers for the residual sum's layout (its readers: the next block's conv, and the
    # next sum, which that block answers for); the stem, the sum's other input, reads it as "add"
    assert spec["blocks.0.2"].readers == ("add", "conv") and spec["stem.0"].readers == ("add", "conv")
    assert spec["blocks.2.2"].readers == ("pool",)
    sp, _ = space_of("groupednet")
    assert {layer.name: layer.spec for layer in sp.layers}["reduce.0"].readers == ("grouped:4",)


def test_where_a_layer_sits_is_not_part_of_what_is_measured():
    a = LayerSpec("conv", 16, 32, (3, 3), height=8, width=8)
    b = LayerSpec("conv", 16, 32, (3, 3), height=8, width=8, readers=("plain",), concat_input=True)
    assert a == b and hash(a) == hash(b) and a.key() == b.key() and a.family() == b.family()
    assert LayerSpec.from_key(b.key()) == a


def ort_layout(model, x):
    """ONNX Runtime's optimised graph of ``model``: elements its NCHWc reorders
    convert, and its channel block (the padded output width of a blocked conv)."""
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), f, dynamo=False)
    original = shape_inference.infer_shapes(onnx.load_from_string(f.getvalue()))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*original.graph.value_info, *original.graph.input, *original.graph.output]}
    g = optimised(f.getvalue())
    elements = 0
    for n in g.node:
        if n.op_type == "ReorderInput":
            elements += int(np.prod(shapes[n.input[0]]))
        elif n.op_type == "ReorderOutput":
            elements += int(np.prod(shapes[n.output[0]]))
    return elements


def optimised(onnx_bytes: bytes):
    import os
    import tempfile
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath).graph


def ort_block() -> int:
    """ONNX Runtime's channel block here: a blocked conv's one output channel padded to it."""
    f = io.BytesIO()
    torch.onnx.export(torch.nn.Conv2d(16, 1, 1), (torch.randn(1, 16, 4, 4),), f, dynamo=False)
    g = optimised(f.getvalue())
    init = {t.name: list(t.dims) for t in g.initializer}
    return next(init[n.input[1]][0] for n in g.node if n.op_type == "Conv" and "nchwc" in n.domain)


def approximated(space, choice, block, own_kind=False):
    """Reorders the latency model expects in the network: what the isolated layers paid minus what it saves."""
    total = 0.0
    for s in space.specs(choice):
        if s.kind != "conv":
            continue
        if own_kind:
            s = LayerSpec(**{k: getattr(s, k) for k in ("kind", "in_channels", "out_channels", "kernel", "stride",
                                                       "padding", "dilation", "groups", "height", "width", "batch")})
        oh, ow = s.out_hw
        if not misaligned(s, s.in_channels, ALIGN, block, s.out_channels):
            reads = s.in_channels > ALIGN and not reads_plain_input(s, s.in_channels, block)
            total += (s.height * s.width * s.in_channels if reads else 0) + oh * ow * s.out_channels
        total -= float(reorder_saved_elements(s, s.in_channels, s.out_channels, ALIGN, block))
    return total


@pytest.mark.parametrize("name", ["concatnet", "invresnet", "groupednet"])
def test_the_layout_changes_priced_are_those_onnx_runtime_inserts(name):
    space, x = space_of(name)
    from hwprune.graph.space import group_options
    options = {g.gid: [o for o in group_options(g, 1, 1) if sum(o) >= 0.1 * g.size] for g in space.groups}
    choices = [space.full_choice(), *random_choices(options, 9, seed=3)]
    exact = [ort_layout(build(space, c), x) for c in choices]
    block = ort_block()
    assert block in (8, 16)  # AVX2 or AVX-512
    ours = [approximated(space, c, block) for c in choices]
    agree = np.mean([abs(a - e) <= 0.01 * max(e, 1) for a, e in zip(ours, exact)])
    assert agree >= 0.7, (ours, exact)
    if name != "invresnet":  # readers taken to be of the layer's own kind miss the concat's and the grouped conv's
        own = [approximated(space, c, block, own_kind=True) for c in choices]
        assert np.mean([abs(a - e) <= 0.01 * max(e, 1) for a, e in zip(own, exact)]) < agree
