"""Build a one-layer ONNX model for a :class:`LayerSpec` (weights random).

Convs are emitted as Conv + Relu, the pattern ONNX Runtime fuses, which is what
a conv + BN + ReLU block of a real network becomes after BN folding.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_export import OPSET
from .specs import LayerSpec


def input_shape(spec: LayerSpec) -> list[int]:
    if spec.kind == "conv":
        return [spec.batch, spec.in_channels, spec.height, spec.width]
    return [spec.batch, spec.in_channels]


def layer_model(spec: LayerSpec, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape(spec))
    out_shape = ([spec.batch, spec.out_channels, *spec.out_hw] if spec.kind == "conv"
                 else [spec.batch, spec.out_channels])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    if spec.kind == "conv":
        w = rng.standard_normal((spec.out_channels, spec.in_channels // spec.groups,
                                 *spec.kernel), dtype=np.float32)
        b = rng.standard_normal(spec.out_channels, dtype=np.float32)
        nodes = [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=list(spec.kernel),
                             strides=list(spec.stride), dilations=list(spec.dilation),
                             pads=[spec.padding[0], spec.padding[1]] * 2, group=spec.groups),
            helper.make_node("Relu", ["c"], ["y"]),
        ]
    elif spec.kind == "linear":
        w = rng.standard_normal((spec.out_channels, spec.in_channels), dtype=np.float32)
        b = rng.standard_normal(spec.out_channels, dtype=np.float32)
        nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)]
    else:
        raise ValueError(f"unknown layer kind {spec.kind!r}")
    graph = helper.make_graph(nodes, "layer", [x], [y],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def random_inputs(model_bytes: bytes, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 feeds for every graph input of an ONNX model."""
    model = onnx.load_from_string(model_bytes)
    init = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(dims, dtype=np.float32)
    return feeds
