"""The demo's embedded data set: scikit-learn's handwritten digits as CIFAR-sized images.

``load_digits`` ships inside scikit-learn (1,797 grayscale 8x8 images, pixel
values 0..16, 10 classes), so the demo needs no download. Images are scaled to
[0, 1], normalised with the training split's mean and standard deviation,
upsampled bilinearly to ``size x size`` and repeated over 3 channels, which is
the input the CIFAR-style zoo models expect. The train/test split is fixed
(stratified, 80/20, ``random_state=0``); ``seed`` only orders training batches.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

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
