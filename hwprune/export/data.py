"""Real inputs for export checks and INT8 calibration (``--data``).

``digits`` is the embedded test split of :mod:`hwprune.datasets` at the model's
input size; a ``.npz`` file holds ``x`` (float, ``[N, *input shape without
batch]``) and optionally ``y`` (integer labels, ``[N]``). Every problem with
the file is a :class:`UserError` naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hwprune.datasets import check_digits_shape, checked_xy, digits_loaders, input_shape, npz_arrays
from hwprune.errors import UserError

MAX_SAMPLES = 256  # enough for a parity check and for calibration


@dataclass(frozen=True)
class InputData:
    x: np.ndarray            # float32 [N, ...]
    y: np.ndarray | None     # int64 [N] or None
    source: str


def _digits(shape: tuple[int, ...]) -> InputData:
    check_digits_shape(shape)
    _, test = digits_loaders(batch_size=MAX_SAMPLES, size=int(shape[2]))
    x, y = next(iter(test))
    return InputData(x.numpy().astype(np.float32), y.numpy().astype(np.int64), "digits")


def load_data(spec: str, example_inputs) -> InputData:
    """``digits`` or a ``.npz`` path, checked against the model's (single) input."""
    shape = input_shape(example_inputs)
    if spec == "digits":
        return _digits(shape)
    path = Path(spec)
    x, y = checked_xy(npz_arrays(path, shape, required=("x",)), shape, path.name)
    n = min(len(x), MAX_SAMPLES)
    return InputData(x[:n], None if y is None else y[:n], path.name)


def batches_of(data: InputData, batch: int) -> tuple[list[tuple[torch.Tensor]], list[np.ndarray] | None]:
    """Full batches of ``batch`` samples (the rest dropped), and their labels."""
    n = len(data.x) // batch * batch
    if n == 0:
        raise UserError(f"--data {data.source} has {len(data.x)} samples; the model's batch is {batch}")
    xs = [(torch.from_numpy(data.x[i:i + batch]),) for i in range(0, n, batch)]
    ys = None if data.y is None else [data.y[i:i + batch] for i in range(0, n, batch)]
    return xs, ys
