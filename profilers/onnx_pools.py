"""Adaptive pooling the ONNX exporter refuses, rewritten as equivalent modules.

The TorchScript exporter exports ``adaptive_avg_pool2d`` / ``adaptive_max_pool2d``
only when the output size divides the input size (torchvision's VGG and AlexNet
pool to 7x7 and 6x6: a 2x2 map at small inputs does not). Along each axis,
output bin ``i`` of ``o`` covers input rows ``[floor(i*H/o), ceil((i+1)*H/o))``;
averaging is then a fixed matrix per axis (two MatMuls), the maximum one
ReduceMax per bin. :func:`exportable` returns the model itself, or a copy with
such modules replaced, for the example input's sizes.
"""
from __future__ import annotations

import copy
import math

from .inputs import forward_with_hooks


def bins(size: int, out: int) -> list[tuple[int, int]]:
    """The input range ``[start, end)`` each of ``out`` adaptive-pooling bins covers."""
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def average_matrix(size: int, out: int):
    """``out x size``: row ``i`` averages bin ``i``."""
    import torch
    m = torch.zeros(out, size)
    for i, (s, e) in enumerate(bins(size, out)):
        m[i, s:e] = 1.0 / (e - s)
    return m


def _pool_module(kind: str, in_hw: tuple[int, int], out_hw: tuple[int, int]):
    import torch
    from torch import nn

    class ExportableAdaptiveAvgPool2d(nn.Module):
        """``AdaptiveAvgPool2d`` for one input size: ``A_h @ x @ A_w^T``."""

        def __init__(self):
            super().__init__()
            self.register_buffer("rows", average_matrix(in_hw[0], out_hw[0]), persistent=False)
            self.register_buffer("cols_t", average_matrix(in_hw[1], out_hw[1]).t().contiguous(), persistent=False)

        def forward(self, x):
            return torch.matmul(self.rows.to(x.dtype), torch.matmul(x, self.cols_t.to(x.dtype)))

    class ExportableAdaptiveMaxPool2d(nn.Module):
        """``AdaptiveMaxPool2d`` for one input size: the maximum of each bin."""

        def forward(self, x):
            x = torch.cat([x[..., s:e, :].amax(dim=-2, keepdim=True) for s, e in bins(in_hw[0], out_hw[0])], -2)
            return torch.cat([x[..., s:e].amax(dim=-1, keepdim=True) for s, e in bins(in_hw[1], out_hw[1])], -1)

    return ExportableAdaptiveAvgPool2d() if kind == "avg" else ExportableAdaptiveMaxPool2d()


def _out_hw(output_size, in_hw) -> tuple[int, int]:
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    return tuple(int(in_hw[k]) if sizes[k] is None else int(sizes[k]) for k in range(2))


def exportable(model, example_inputs):
    """``model``, or a copy of it whose ``nn.AdaptiveAvgPool2d`` /
    ``nn.AdaptiveMaxPool2d`` modules that the exporter refuses at these inputs
    (output size not dividing the input size) are exactly equivalent modules."""
    import torch
    from torch import nn
    kinds = {nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveMaxPool2d: "max"}
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return model
    pools = {name: m for name, m in model.named_modules()
             if name and type(m) in kinds and not getattr(m, "return_indices", False)
             and _out_hw(m.output_size, (1, 1)) != (1, 1)}
    if not pools:
        return model
    seen: dict[str, set] = {name: set() for name in pools}

    def hook(name):
        return lambda mod, args: seen[name].add(tuple(args[0].shape[-2:]))

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in pools.items()]
    forward_with_hooks(model, example_inputs, handles)
    swap = {}
    for name, m in pools.items():
        if len(seen[name]) != 1:      # not run, or at several sizes: leave it
            continue
        in_hw = next(iter(seen[name]))
        out_hw = _out_hw(m.output_size, in_hw)
        if all(i % o == 0 for i, o in zip(in_hw, out_hw)):
            continue
        swap[name] = _pool_module(kinds[type(m)], in_hw, out_hw)
    if not swap:
        return model
    model = copy.deepcopy(model)
    for name, new in swap.items():
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model
