"""DenseNet-40 for CIFAR (Huang et al. 2017): growth rate k=12, three dense blocks of 12 layers.

No bottleneck and no compression (the original "DenseNet (L=40, k=12)"): a 3x3 conv 3->16 stem,
each dense layer is BN-ReLU-Conv3x3(c -> 12), a transition is BN-ReLU-Conv1x1(c -> c) + 2x2
average pooling, and the head is BN-ReLU, global average pool, Linear(448, classes). Convs have no
bias. Counts: 1,019,722 (CIFAR-10) / 1,060,132 (CIFAR-100). Not in the authors' script; init is
the shared :func:`models.cifar_resnet.init_cifar`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register_model
from models.cifar_resnet import init_cifar


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` new channels, concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 (same width) followed by 2x2 average pooling."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet (basic layers) for 32x32 inputs; depth = 3 * layers_per_block + 4."""

    def __init__(self, depth: int = 40, growth: int = 12, init_channels: int = 16,
                 num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3n+4, got {depth}")
        n = (depth - 4) // 3
        c = init_channels
        self.conv1 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        for b in range(3):
            for _ in range(n):
                stages.append(DenseLayer(c, growth))
                c += growth
            if b < 2:
                stages.append(Transition(c))
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        init_cifar(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.features(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("cifar", display="DenseNet-40", images_per_s=3_500)
def densenet40(num_classes: int = 10) -> DenseNet:
    """DenseNet-40, k=12, 16 initial channels, no bottleneck/compression."""
    return DenseNet(40, 12, 16, num_classes)
