"""The demo's embedded data set: scikit-learn's handwritten digits as CIFAR-sized images.

``load_digits`` ships inside scikit-learn (1,797 grayscale 8x8 images, pixel
values 0..16, 10 classes), so the demo needs no download. Images are scaled to
[0, 1], normalised with the training split's mean and standard deviation,
upsampled bilinearly to ``size x size`` and repeated over 3 channels, which is
the input the CIFAR-style zoo models expect. The train/test split is fixed
(stratified, 80/20, ``random_state=0``); ``seed`` only orders training batches.

:func:`load_loaders` reads the ``--data`` option of fine-tuning and of the
data-driven importance criteria: ``digits``, a ``.npz`` file or
``module:function``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from profilers.inputs import as_inputs

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _to_images(pixels: np.ndarray, mean: float, std: float, size: int) -> torch.Tensor:
    x = torch.from_numpy(pixels.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    x = (x - mean) / std
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.repeat(1, 3, 1, 1).contiguous()


def digits_arrays(size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: float32 ``[N, 3, size, size]`` and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if int(size) < 1:
        raise ValueError(f"image size must be positive, got {size}")
    data = load_digits()
    px_tr, px_te, y_tr, y_te = train_test_split(data.data, data.target, test_size=TEST_FRACTION,
                                                random_state=SPLIT_SEED, stratify=data.target)
    scaled = px_tr.astype(np.float64) / 16.0
    mean, std = float(scaled.mean()), float(scaled.std())
    return (_to_images(px_tr, mean, std, int(size)), torch.from_numpy(y_tr.astype(np.int64)),
            _to_images(px_te, mean, std, int(size)), torch.from_numpy(y_te.astype(np.int64)))


def digits_loaders(batch_size: int = 64, seed: int = 0, size: int = 32) -> tuple[DataLoader, DataLoader]:
    """Training loader (shuffled with ``seed``) and test loader (in order) of the digits."""
    x_tr, y_tr, x_te, y_te = digits_arrays(size)
    gen = torch.Generator().manual_seed(int(seed))
    train = DataLoader(TensorDataset(x_tr, y_tr), batch_size=batch_size, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(x_te, y_te), batch_size=max(batch_size, 256), shuffle=False)
    return train, test


# ---- --data: the digits, a .npz file, or module:function ------------------------

VAL_FRACTION = 0.2


def _fail(msg: str):
    from hwprune.errors import UserError
    raise UserError(msg)


def input_shape(example_inputs) -> tuple[int, ...]:
    """The shape of a model's one input; a model with several is a :class:`UserError`."""
    inputs = as_inputs(example_inputs)
    if len(inputs) != 1:
        _fail(f"--data needs a model with one input; this one has {len(inputs)}")
    return tuple(int(d) for d in inputs[0].shape)


def check_digits_shape(shape: tuple[int, ...]) -> None:
    """The digits are 3xSxS images: refuse a model that takes other inputs."""
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        _fail(f"--data digits gives 3xSxS images; this model takes {list(shape)}; pass a .npz file "
              f"with x of shape [N, {', '.join(map(str, shape[1:]))}]")


def _check_labels(y, num_classes: int | None, where: str) -> None:
    if len(y) and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        _fail(f"{where}: label {bad} is out of range; labels must be class indices 0..{num_classes - 1} "
              f"(the model has {num_classes} outputs)" if num_classes is not None else
              f"{where}: label {bad} is negative; labels must be class indices >= 0")


def npz_arrays(path: Path, shape: tuple[int, ...], required=("x", "y")) -> dict[str, np.ndarray]:
    """The arrays of a ``--data`` .npz file for a model whose input has
    ``shape``; a missing file, another kind of file or a missing ``required``
    array is one :class:`UserError` naming it (check them with :func:`checked_xy`)."""
    import zipfile
    path = Path(path)
    if not path.is_file():
        _fail(f"--data {path} does not exist; pass 'digits', a .npz file with x and y, or module:function"
              if "y" in required else f"--data {path} does not exist; pass 'digits' or a .npz file with x [and y]")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError
            arrays = {k: z[k] for k in z.files}
    except TypeError:  # a .npy: np.load gives an array, which is no context manager
        _fail(f"--data {path} is a single array; save it with numpy.savez(path, x=..., y=...)")
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        kind = "it holds object arrays" if "Object arrays" in str(exc) else "it is not a .npz archive"
        _fail(f"cannot read --data {path}: {kind}; save it with numpy.savez(path, x=..., y=...)")
    missing = [k for k in required if k not in arrays]
    if missing:
        _fail(f"--data {path} has no array {' or '.join(repr(k) for k in missing)} (it has: "
              f"{', '.join(sorted(arrays)) or 'none'}); save inputs as x [N, "
              f"{', '.join(map(str, shape[1:]))}] and integer labels as y [N]")
    return arrays


def checked_xy(arrays: dict, shape: tuple[int, ...], name: str, num_classes: int | None = None,
               xk: str = "x", yk: str = "y") -> tuple[np.ndarray, np.ndarray | None]:
    """``arrays[xk]`` as float32 ``[N, *shape[1:]]`` and ``arrays[yk]`` as int64
    class indices ``[N]`` (None where the file has no ``yk``); anything else is
    one :class:`UserError` naming the array and the file ``name``."""
    x, y = arrays[xk], arrays.get(yk)
    want = ", ".join(map(str, shape[1:]))
    if not np.issubdtype(x.dtype, np.floating):
        _fail(f"{xk} in {name} has dtype {x.dtype}; inputs must be floating point (float32)")
    if x.ndim != len(shape) or tuple(x.shape[1:]) != tuple(shape[1:]) or x.shape[0] < 1:
        _fail(f"{xk} in {name} has shape {list(x.shape)}; this model takes [N, {want}] with N >= 1")
    if y is not None and not np.issubdtype(y.dtype, np.integer):
        _fail(f"{yk} in {name} has dtype {y.dtype}; labels must be integers (class indices)")
    if y is not None and y.shape != (x.shape[0],):
        _fail(f"{yk} in {name} has shape {list(y.shape)}; it must be [{x.shape[0]}], one label per {xk}")
    if not np.all(np.isfinite(x)):
        _fail(f"{xk} in {name} contains NaN or infinite values")
    if y is not None:
        _check_labels(y, num_classes, f"{yk} in {name}")
    return np.ascontiguousarray(x, dtype=np.float32), None if y is None else y.astype(np.int64)


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def npz_datasets(path: Path, shape: tuple[int, ...], num_classes: int | None,
                 seed: int = SPLIT_SEED) -> tuple[TensorDataset, TensorDataset]:
    """``x`` [N, ...] float and ``y`` [N] integer labels; ``x_val``/``y_val`` if
    present, otherwise a fixed random 20 % of the samples (``seed``) is held out."""
    arrays = npz_arrays(path, shape)
    x, y = checked_xy(arrays, shape, path.name, num_classes)
    if ("x_val" in arrays) != ("y_val" in arrays):
        _fail(f"--data {path} has only one of x_val and y_val; give both or neither")
    if "x_val" in arrays:
        return _tensors(x, y), _tensors(*checked_xy(arrays, shape, path.name, num_classes, "x_val", "y_val"))
    if len(x) < 2:
        _fail(f"--data {path} has {len(x)} sample; give at least 2 (or x_val and y_val)")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
    n_val = max(1, int(round(VAL_FRACTION * len(x))))
    val, tr = perm[:n_val].numpy(), perm[n_val:].numpy()
    return _tensors(x[tr], y[tr]), _tensors(x[val], y[val])


def _from_function(spec: str, shape: tuple[int, ...], num_classes: int | None):
    import importlib
    import os
    import sys
    module, _, func = spec.partition(":")
    if not module or not func:
        _fail(f"--data {spec}: write module:function (a function returning train and validation DataLoaders)")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        _fail(f"--data {spec}: cannot import module {module!r} ({type(exc).__name__}: {exc})")
    finally:
        if added:
            sys.path.remove(os.getcwd())
    fn = getattr(mod, func, None)
    if not callable(fn):
        _fail(f"--data {spec}: module {module!r} has no function {func!r}")
    try:
        got = fn()
    except Exception as exc:
        _fail(f"--data {spec}: {func}() raised {type(exc).__name__}: {exc}")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        _fail(f"--data {spec}: {func}() must return (train_loader, val_loader); it returned "
              f"{type(got).__name__}")
    for which, loader in zip(("train", "validation"), got):
        try:
            batch = next(iter(loader))
        except StopIteration:
            _fail(f"--data {spec}: the {which} loader is empty")
        except TypeError:
            _fail(f"--data {spec}: the {which} loader is not iterable")
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            _fail(f"--data {spec}: {which} batches must be (inputs, labels)")
        x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or tuple(x.shape[1:]) != shape[1:]:
            what = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            _fail(f"--data {spec}: {which} inputs are {what}; this model takes float [B, "
                  f"{', '.join(map(str, shape[1:]))}]")
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dim() != 1 or len(y) != len(x):
            _fail(f"--data {spec}: {which} labels must be an integer tensor [B], one per input")
        _check_labels(y, num_classes, f"--data {spec} ({which})")
    return got[0], got[1]


def load_loaders(spec: str, example_input, num_classes: int | None = None, batch_size: int = 64,
                 seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Training (shuffled with ``seed``) and validation loaders for ``--data``:
    ``digits``, a ``.npz`` file (see :func:`npz_datasets`) or ``module:function``
    (its loaders are returned as they are, after checking a first batch of each).
    Every problem is one :class:`UserError` naming it."""
    shape = input_shape(example_input)
    if int(batch_size) < 1:
        _fail(f"batch size must be at least 1, got {batch_size}")
    if spec == "digits":
        check_digits_shape(shape)
        if num_classes is not None and num_classes < 10:
            _fail(f"--data digits has 10 classes; this model has {num_classes} outputs")
        return digits_loaders(batch_size=batch_size, seed=seed, size=shape[2])
    path = Path(spec)
    if path.suffix == ".npz" or path.exists() or ":" not in spec:
        train, val = npz_datasets(path, shape, num_classes)
        gen = torch.Generator().manual_seed(int(seed))
        return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
                DataLoader(val, batch_size=max(batch_size, 256), shuffle=False))
    return _from_function(spec, shape, num_classes)


def loaders_for(model: torch.nn.Module, spec: str, example_input, num_classes: int | None = None,
                batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """:func:`load_loaders` for ``model``: labels must lie below ``num_classes``,
    by default the model's output width."""
    return load_loaders(spec, example_input, num_classes or num_outputs(model, example_input), batch_size, seed)


def num_outputs(model: torch.nn.Module, example_input) -> int | None:
    """The model's number of classes (its output width on the example input)."""
    with torch.no_grad():
        out = model.eval()(*as_inputs(example_input))
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() >= 2 else None
