"""Zoo architectures with free widths (37, 21, 105, 52: not multiples of any
device's step or alignment), for testing and benchmarking what the engine does
off the grid: a concat of inception-style branches, depthwise inverted
residuals, and ResNeXt-style grouped convs. Default sizes are the benchmark's
(64x64 inputs)."""
from __future__ import annotations

import torch
from torch import nn


def cbr(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ConcatNet(nn.Module):
    """Inception-style branches joined by concat (no residual)."""

    def __init__(self, c: int = 37, classes: int = 10):
        super().__init__()
        self.stem = cbr(3, c)
        self.b1, self.b3 = cbr(c, c, 1), cbr(c, c, 3)
        self.b5 = nn.Sequential(cbr(c, c // 2, 1), cbr(c // 2, c, 3))
        self.mix = cbr(3 * c, 2 * c, 3, 2)
        self.head = cbr(2 * c, 2 * c, 3)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b3(x), self.b5(x)], 1)
        x = self.head(self.mix(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvResNet(nn.Module):
    """Depthwise inverted residuals (expand 1x1, depthwise 3x3, project 1x1, add)."""

    def __init__(self, c: int = 21, expand: int = 5, blocks: int = 3, classes: int = 10):
        super().__init__()
        self.stem = cbr(3, c)
        self.blocks = nn.ModuleList(
            nn.Sequential(cbr(c, c * expand, 1), cbr(c * expand, c * expand, 3, 1, c * expand),
                          nn.Conv2d(c * expand, c, 1, bias=False), nn.BatchNorm2d(c)) for _ in range(blocks))
        self.fc = nn.Linear(c * 8 * 8, classes)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        x = nn.functional.adaptive_avg_pool2d(x, 8)
        return self.fc(torch.flatten(x, 1))  # flatten of C x 8 x 8 into a Linear


class GroupedNet(nn.Module):
    """ResNeXt-style block with a grouped 3x3 conv."""

    def __init__(self, c: int = 52, groups: int = 4, classes: int = 10):
        super().__init__()
        self.stem = cbr(3, c)
        self.reduce = cbr(c, 2 * c, 1)
        self.grouped = cbr(2 * c, 2 * c, 3, 1, groups)
        self.expand = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.tail = cbr(c, 2 * c, 3, 2)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.tail(x), 1), 1))
