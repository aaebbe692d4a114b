"""A model's example inputs as the tuple a forward call unpacks: one tensor
becomes a 1-tuple, a sequence of tensors a tuple. torch is imported inside, so
a board that only measures ONNX does not need it."""
from __future__ import annotations


def as_inputs(example_inputs) -> tuple:
    """``(x,)`` for one tensor ``x``, ``tuple(example_inputs)`` otherwise."""
    import torch
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
