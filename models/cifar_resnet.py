"""CIFAR ResNets of He et al. (2016), depth 6n+2, with option-A (zero-padding) shortcuts.

Layout: 3x3 conv 3->16 + BN + ReLU, three stages of n basic blocks (16, 32, 64 channels, the
first block of stages 2 and 3 has stride 2), global average pool, Linear(64, classes).
Convs have no bias. A down-sampling shortcut is parameter-free: it takes every second pixel and
zero-pads the channels (option A). Counts (CIFAR-10): ResNet-20 269,722, ResNet-56 853,018,
ResNet-110 1,727,962; each extra block per stage adds 97,216. ``shortcut="B"`` (1x1 conv + BN
projection on the two down-sampling blocks) adds 2,752, e.g. ResNet-20 272,474.

This module also holds :func:`init_cifar`, the initialisation shared by all CIFAR models, and
``INITS``, the ``init`` option of every zoo model that takes one: ``"zoo"`` (:func:`init_cifar`)
or ``"authors"`` (what the authors' model file does: for these ResNets He-normal conv and Linear
weights with PyTorch's default Linear bias, their ``_weights_init``, WE_cifar/models/resnet.py:40-44,100).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register_model


INITS = ("zoo", "authors")


def check_init(init: str) -> None:
    """ValueError unless `init` is one of `INITS`."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def init_cifar(model: nn.Module) -> None:
    """Kaiming-normal (fan_in, ReLU gain) Conv2d and Linear weights, zero biases, BN (1, 0).

    As in the common CIFAR ResNet code, which applies He init to conv and linear layers; used
    for every CIFAR model here so they all start alike.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_he_weights(model: nn.Module) -> None:
    """He-normal (fan_in, ReLU gain) Conv2d and Linear weights only; biases and BN keep PyTorch's
    defaults (the authors' CIFAR ResNet init)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial stride 2 and zero-padding of the new channels."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.lo, self.hi = extra // 2, extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.lo, self.hi))


def _shortcut(cin: int, cout: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(cout - cin)
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity, option-A or option-B shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride, shortcut)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs."""

    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = "A", init: str = "zoo") -> None:
        super().__init__()
        check_init(init)
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, shortcut))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        if init == "zoo":
            init_cifar(self)
        else:
            init_he_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("cifar", display="ResNet-20", images_per_s=25_000)
def resnet20(num_classes: int = 10, shortcut: str = "A", init: str = "zoo") -> CifarResNet:
    """ResNet-20 (n=3); ``shortcut`` "A" (zero-padding, default) or "B" (projection); ``init`` zoo or authors."""
    return CifarResNet(20, num_classes, shortcut, init)


@register_model("cifar", images_per_s=16_000)
def resnet32(num_classes: int = 10, shortcut: str = "A", init: str = "zoo") -> CifarResNet:
    """ResNet-32 (n=5); ``shortcut`` "A" (zero-padding, default) or "B" (projection); ``init`` zoo or authors."""
    return CifarResNet(32, num_classes, shortcut, init)


@register_model("cifar", images_per_s=12_000)
def resnet44(num_classes: int = 10, shortcut: str = "A", init: str = "zoo") -> CifarResNet:
    """ResNet-44 (n=7); ``shortcut`` "A" (zero-padding, default) or "B" (projection); ``init`` zoo or authors."""
    return CifarResNet(44, num_classes, shortcut, init)


@register_model("cifar", display="ResNet-56", images_per_s=9_000)
def resnet56(num_classes: int = 10, shortcut: str = "A", init: str = "zoo") -> CifarResNet:
    """ResNet-56 (n=9); ``shortcut`` "A" (zero-padding, default) or "B" (projection); ``init`` zoo or authors."""
    return CifarResNet(56, num_classes, shortcut, init)


@register_model("cifar", display="ResNet-110", images_per_s=4_500)
def resnet110(num_classes: int = 10, shortcut: str = "A", init: str = "zoo") -> CifarResNet:
    """ResNet-110 (n=18); ``shortcut`` "A" (zero-padding, default) or "B" (projection); ``init`` zoo or authors."""
    return CifarResNet(110, num_classes, shortcut, init)
