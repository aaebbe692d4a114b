"""Architectures outside the zoo, to prove the engine is not zoo-specific: the free-width
zoo architectures (hwprune.zoo_free) at the grid-friendly widths these tests use, and a concat
whose output meets a residual add."""
from functools import partial

import torch
from torch import nn

from hwprune.zoo_free import ConcatNet, GroupedNet, InvResNet, cbr


class ConcatResidualNet(nn.Module):
    """A concat whose output meets a residual add: one group, several segments."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = cbr(3, 32)
        self.a, self.b = nn.Conv2d(32, 16, 1), nn.Conv2d(32, 48, 3, padding=1)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.pw = nn.Conv2d(64, 64, 1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = y + self.pw(torch.relu(self.dw(y)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


ARCHS = {"concat": partial(ConcatNet, c=64), "invres": partial(InvResNet, c=32, expand=4),
         "grouped": partial(GroupedNet, c=64), "concat_residual": ConcatResidualNet}


def create(name, size=32, seed=0):
    torch.manual_seed(seed)
    return ARCHS[name]().eval(), torch.randn(1, 3, size, size)
