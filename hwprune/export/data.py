"""Real inputs for export checks and INT8 calibration (``--data``).

``digits`` is the embedded test split of :mod:`hwprune.datasets` at the model's
input size; a ``.npz`` file holds ``x`` (float, ``[N, *input shape without
batch]``) and optionally ``y`` (integer labels, ``[N]``). Every problem with
the file is a :class:`UserError` naming it.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hwprune.errors import UserError

MAX_SAMPLES = 256  # enough for a parity check and for calibration


@dataclass(frozen=True)
class InputData:
    x: np.ndarray            # float32 [N, ...]
    y: np.ndarray | None     # int64 [N] or None
    source: str


def _digits(shape: tuple[int, ...]) -> InputData:
    from hwprune.datasets import digits_loaders
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise UserError(f"--data digits gives 3xSxS images; this model takes {list(shape)}; "
                        f"pass a .npz file with x of shape [N, {', '.join(map(str, shape[1:]))}]")
    _, test = digits_loaders(batch_size=MAX_SAMPLES, size=int(shape[2]))
    x, y = next(iter(test))
    return InputData(x.numpy().astype(np.float32), y.numpy().astype(np.int64), "digits")


def _npz(path: Path, shape: tuple[int, ...]) -> InputData:
    if not path.is_file():
        raise UserError(f"--data {path} does not exist; pass 'digits' or a .npz file with x [and y]")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        kind = "it holds object arrays" if "Object arrays" in str(exc) else "it is not a .npz archive"
        raise UserError(f"cannot read --data {path}: {kind}; save it with numpy.savez(path, x=..., y=...)") \
            from None
    except TypeError:  # np.load of a .npy returns an array, which is not a context manager
        raise UserError(f"--data {path} is a single array; save it with numpy.savez(path, x=..., y=...)") \
            from None
    if "x" not in arrays:
        raise UserError(f"--data {path} has no array 'x' (it has: {', '.join(sorted(arrays)) or 'none'}); "
                        f"save inputs as x [N, {', '.join(map(str, shape[1:]))}] and labels as y [N]")
    x, y = arrays["x"], arrays.get("y")
    want = ", ".join(map(str, shape[1:]))
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"x in {path} has dtype {x.dtype}; inputs must be floating point (float32)")
    if x.ndim != len(shape) or tuple(x.shape[1:]) != tuple(shape[1:]) or x.shape[0] < 1:
        raise UserError(f"x in {path} has shape {list(x.shape)}; this model takes [N, {want}] with N >= 1")
    if not np.all(np.isfinite(x)):
        raise UserError(f"x in {path} contains NaN or infinite values")
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"y in {path} has dtype {y.dtype}; labels must be integers (class indices)")
        if y.shape != (x.shape[0],):
            raise UserError(f"y in {path} has shape {list(y.shape)}; it must be [{x.shape[0]}], one label per x")
    n = min(len(x), MAX_SAMPLES)
    return InputData(x[:n].astype(np.float32), None if y is None else y[:n].astype(np.int64), path.name)


def load_data(spec: str, example_inputs) -> InputData:
    """``digits`` or a ``.npz`` path, checked against the model's (single) input."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if len(example_inputs) != 1:
        raise UserError(f"--data needs a model with one input; this one has {len(example_inputs)}")
    shape = tuple(int(d) for d in example_inputs[0].shape)
    if spec == "digits":
        return _digits(shape)
    return _npz(Path(spec), shape)


def batches_of(data: InputData, batch: int) -> tuple[list[tuple[torch.Tensor]], list[np.ndarray] | None]:
    """Full batches of ``batch`` samples (the rest dropped), and their labels."""
    n = len(data.x) // batch * batch
    if n == 0:
        raise UserError(f"--data {data.source} has {len(data.x)} samples; the model's batch is {batch}")
    xs = [(torch.from_numpy(data.x[i:i + batch]),) for i in range(0, n, batch)]
    ys = None if data.y is None else [data.y[i:i + batch] for i in range(0, n, batch)]
    return xs, ys
