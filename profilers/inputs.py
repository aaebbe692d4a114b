"""A model's example inputs as the tuple a forward call unpacks: one tensor
becomes a 1-tuple, a sequence of tensors a tuple. torch is imported inside, so
a board that only measures ONNX does not need it."""
from __future__ import annotations


def as_inputs(example_inputs) -> tuple:
    """``(x,)`` for one tensor ``x``, ``tuple(example_inputs)`` otherwise."""
    import torch
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def forward_with_hooks(model, example_inputs, handles) -> None:
    """One forward pass of ``model`` on ``example_inputs`` without gradients, the
    hooks behind ``handles`` (what ``register_forward_hook`` returns) removed after it."""
    import torch
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
