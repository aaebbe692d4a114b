"""Peak activation memory (bytes), computed from shapes.

Two measures:

- :func:`layer_activation_bytes`: a conv/linear layer's input plus output
  (the bound the selector uses, one layer at a time; no graph needed).
- :func:`peak_activation_bytes`: the peak of the live set over a network's
  execution order. ``ops`` are the operations in the order they run, each
  with the shapes of the tensors it creates and the earlier operations whose
  tensors it reads (:class:`OpShape`, e.g. from
  :func:`hwprune.latency.memory.trace_ops`). A tensor is live from the operation that
  creates it to the last operation that reads it (both included); the
  network's outputs stay live to the end. The network's input and its
  weights are not activations and are not counted. While an operation runs,
  its inputs and outputs are live together, so the peak of a chain of layers
  is the largest input + output of one layer, and a residual branch adds the
  tensor it skips over.

This is the memory of a runtime that frees every tensor after its last use
(a graph runtime's memory planner does; PyTorch eager frees when the last
Python reference goes, which can be later). Scratch buffers an operation
frees before it returns (im2col columns, reordered weights) are not
activations and are not modelled.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from profilers import LayerSpec


@dataclass(frozen=True)
class OpShape:
    """One operation: ``outputs`` the shapes of the tensors it creates (none
    for a view or an in-place op), ``reads`` the indices of earlier operations
    whose tensors it reads or aliases."""

    name: str
    outputs: tuple[tuple[int, ...], ...] = ()
    reads: tuple[int, ...] = ()
    dtype_bytes: int = 4
    is_output: bool = False   # its tensors are the network's outputs (live to the end)

    @property
    def output_bytes(self) -> int:
        total = 0
        for shape in self.outputs:
            n = 1
            for d in shape:
                n *= int(d)
            total += n
        return total * self.dtype_bytes


def layer_activation_bytes(spec: LayerSpec, dtype_bytes: int = 4, in_channels=None, out_channels=None):
    """Input plus output activation of one conv/linear layer; ``in_channels`` /
    ``out_channels`` (ints or numpy arrays) replace the spec's widths, so a
    selector can price every width of a layer at once."""
    n_in = spec.in_channels if in_channels is None else in_channels
    n_out = spec.out_channels if out_channels is None else out_channels
    oh, ow = spec.out_hw
    return dtype_bytes * spec.batch * (n_in * spec.height * spec.width + n_out * oh * ow)


def live_until(ops: Sequence[OpShape]) -> list[int]:
    """For each operation, the index of the last operation its tensors are live in."""
    last = [i for i in range(len(ops))]
    for j, op in enumerate(ops):
        for i in op.reads:
            if not 0 <= i < j:
                raise ValueError(f"operation {j} ({op.name}) reads operation {i}, which does not run before it")
            last[i] = max(last[i], j)
    end = len(ops) - 1
    return [end if op.is_output else t for op, t in zip(ops, last)]


def activation_timeline(ops: Sequence[OpShape]) -> list[int]:
    """Live activation bytes while each operation runs."""
    until = live_until(ops)
    delta = [0] * (len(ops) + 1)
    for i, op in enumerate(ops):
        b = op.output_bytes
        delta[i] += b
        delta[until[i] + 1] -= b
    out, cur = [], 0
    for i in range(len(ops)):
        cur += delta[i]
        out.append(cur)
    return out


def peak_activation_bytes(ops: Sequence[OpShape]) -> int:
    """The largest live set of activations over the execution order."""
    return max(activation_timeline(ops), default=0)
