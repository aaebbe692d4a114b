"""Model zoo written in the project (no torchvision).

CIFAR-style models (32x32 input, 10 classes): ``resnet20``, ``resnet56``,
``vgg16``, ``mobilenetv2`` (stride-1 stem, as usual for CIFAR).
ImageNet-style (224x224, 1000 classes): ``resnet18``, ``resnet50``.
CIFAR ResNets use 1x1 conv + BN projection shortcuts when the shape changes.
The names are registered in :data:`ZOO` (a :class:`profilers.registry.Registry`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hwprune.errors import UnknownNameError
from hwprune.zoo_free import ConcatNet, GroupedNet, InvResNet
from profilers.registry import Registry


def _cbr(cin, cout, k=3, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != width:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = _cbr(3, 16)
        cin, stages = 16, []
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ImageNetResNet(nn.Module):
    def __init__(self, block, counts, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 64, k=7, stride=2), nn.MaxPool2d(3, 2, 1))
        cin, stages = 64, []
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), counts)):
            blocks = []
            for j in range(count):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class VGG16(nn.Module):
    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(_cbr(cin, v))
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_cbr(cin, hidden, k=1)]
        layers += [_cbr(hidden, hidden, stride=stride, groups=hidden), _cbr(hidden, cout, k=1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    # (expand, channels, repeats, stride); strides of the first stages are 1 for 32x32 inputs
    CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers, cin = [_cbr(3, 32)], 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_cbr(cin, 1280, k=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[int], nn.Module]
    input_shape: tuple[int, int, int, int]
    num_classes: int


ZOO = Registry("zoo model", error=UnknownNameError)
"""Builders ``build(num_classes) -> nn.Module``, with the metadata ``input_shape`` and ``num_classes``."""


def register(name: str, build: Callable[[int], nn.Module], input_shape, num_classes: int) -> None:
    ZOO.register(name, build, input_shape=tuple(input_shape), num_classes=int(num_classes))


register("resnet20", lambda k: CifarResNet(20, k), (1, 3, 32, 32), 10)
register("resnet56", lambda k: CifarResNet(56, k), (1, 3, 32, 32), 10)
register("vgg16", lambda k: VGG16(k), (1, 3, 32, 32), 10)
register("mobilenetv2", lambda k: MobileNetV2(k), (1, 3, 32, 32), 10)
register("resnet18", lambda k: ImageNetResNet(BasicBlock, (2, 2, 2, 2), k), (1, 3, 224, 224), 1000)
register("resnet50", lambda k: ImageNetResNet(Bottleneck, (3, 4, 6, 3), k), (1, 3, 224, 224), 1000)
register("concatnet", lambda k: ConcatNet(classes=k), (1, 3, 64, 64), 10)    # free widths (zoo_free)
register("invresnet", lambda k: InvResNet(classes=k), (1, 3, 64, 64), 10)
register("groupednet", lambda k: GroupedNet(classes=k), (1, 3, 64, 64), 10)


def list_models(pattern: str = "*") -> list[str]:
    return ZOO.list(pattern)


def entry(name: str) -> ZooEntry:
    """The zoo model ``name``; :class:`UnknownNameError` (a ``KeyError``) lists the names."""
    meta = ZOO.metadata(name)
    return ZooEntry(name, ZOO.get(name), meta["input_shape"], meta["num_classes"])


def create(name: str, num_classes: int | None = None, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Build a zoo model (eval mode) and an example input of its size."""
    e = entry(name)
    torch.manual_seed(seed)
    model = e.build(num_classes or e.num_classes).eval()
    return model, torch.randn(*e.input_shape)
