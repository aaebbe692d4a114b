"""Architectures outside the zoo, to prove the engine is not zoo-specific."""
import torch
from torch import nn


def cbr(cin, cout, k=3, s=1, g=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ConcatNet(nn.Module):
    """Inception-style branches joined by concat (no residual)."""

    def __init__(self, c=64, classes=10):
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

    def __init__(self, c=32, expand=4, blocks=3, classes=10):
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
    """ResNeXt-style blocks with grouped 3x3 convs."""

    def __init__(self, c=64, groups=4, classes=10):
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


ARCHS = {"concat": ConcatNet, "invres": InvResNet, "grouped": GroupedNet, "concat_residual": ConcatResidualNet}


def create(name, size=32, seed=0):
    torch.manual_seed(seed)
    return ARCHS[name]().eval(), torch.randn(1, 3, size, size)
