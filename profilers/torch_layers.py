"""Build a one-layer torch module for a :class:`LayerSpec` (weights random).

The PyTorch counterpart of :mod:`profilers.onnx_layers`: a conv is Conv2d +
ReLU (what a conv + BN + ReLU block becomes once BN is folded), a linear layer
is a plain Linear, so both runtimes measure the same computation.
"""
from __future__ import annotations

import torch
from torch import nn

from .specs import LayerSpec


def layer_module(spec: LayerSpec, seed: int = 0) -> nn.Module:
    """The module for ``spec``, in eval mode, fp32, on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    if spec.kind == "conv":
        if spec.in_channels % spec.groups or spec.out_channels % spec.groups:
            raise ValueError(f"groups={spec.groups} does not divide the channels of {spec}")
        conv = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel, stride=spec.stride,
                         padding=spec.padding, dilation=spec.dilation, groups=spec.groups, bias=True)
        _randomise(conv, gen)
        module: nn.Module = nn.Sequential(conv, nn.ReLU(inplace=True))
    elif spec.kind == "linear":
        module = nn.Linear(spec.in_channels, spec.out_channels, bias=True)
        _randomise(module, gen)
    else:
        raise ValueError(f"unknown layer kind {spec.kind!r}")
    return module.eval()


def layer_input(spec: LayerSpec, seed: int = 0) -> torch.Tensor:
    """A random fp32 input of the shape ``spec`` takes (NCHW for a conv)."""
    gen = torch.Generator().manual_seed(seed + 1)
    if spec.kind == "conv":
        shape: tuple[int, ...] = (spec.batch, spec.in_channels, spec.height, spec.width)
    elif spec.kind == "linear":
        shape = (spec.batch, spec.in_channels)
    else:
        raise ValueError(f"unknown layer kind {spec.kind!r}")
    return torch.randn(shape, generator=gen)


def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
