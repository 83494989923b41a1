"""MobileNetV1 and MobileNetV2 in their common CIFAR forms (32x32 inputs).

V1 (Howard et al. 2017): 3x3 conv 3->32 stride 1, then 13 depth-wise separable blocks
(dw 3x3 + BN + ReLU, pw 1x1 + BN + ReLU) with widths 64, 128x2, 256x2, 512x6, 1024x2 (stride 2 at
the first 128, 256, 512 and 1024), global average pool, Linear(1024, classes).
Counts 3,217,226 / 3,309,476 (CIFAR-10 / -100).

V2 (Sandler et al. 2018): 3x3 conv 3->32 stride 1 (the ImageNet form has stride 2; the second
stage uses stride 1 too), inverted residual blocks (t, c, n, s) = (1,16,1,1) (6,24,2,1)
(6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1), 1x1 conv 320->1280, Linear(1280, classes).
Every stride-1 block is residual; when its width changes the shortcut is a 1x1 conv + BN
projection. ReLU (not ReLU6) as in that CIFAR code. Counts 2,296,922 / 2,412,212.

All convs are bias-free and followed by BN; depth-wise convs have groups == in_channels.
Init (``init``): ``"zoo"`` :func:`models.cifar_resnet.init_cifar`; ``"authors"`` PyTorch's layer
defaults, as the authors' files, which have no init code (WE_cifar/models/mobilenet.py,
mobilenetv2.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register_model
from models.cifar_resnet import check_init, init_cifar


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Bias-free ``k x k`` conv (same padding) followed by BatchNorm."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class DepthwiseSeparable(nn.Module):
    """MobileNetV1 block: depth-wise 3x3 conv-BN-ReLU, point-wise 1x1 conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dw = conv_bn(cin, cin, 3, stride, groups=cin)
        self.pw = conv_bn(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.pw(F.relu(self.dw(x))))


class MobileNetV1(nn.Module):
    """MobileNetV1 for CIFAR."""

    CFG: tuple[tuple[int, int], ...] = (
        (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
        (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 10, init: str = "zoo") -> None:
        super().__init__()
        check_init(init)
        self.stem = conv_bn(3, 32, 3)
        blocks, cin = [], 32
        for cout, stride in self.CFG:
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        if init == "zoo":
            init_cifar(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depth-wise 3x3, linear project 1x1 (+ shortcut if stride 1)."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.stride = stride
        self.expand = conv_bn(cin, mid, 1)
        self.dw = conv_bn(mid, mid, 3, stride, groups=mid)
        self.project = conv_bn(mid, cout, 1)
        self.shortcut: nn.Module = conv_bn(cin, cout, 1) if stride == 1 and cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(F.relu(self.dw(F.relu(self.expand(x)))))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) for CIFAR."""

    CFG: tuple[tuple[int, int, int, int], ...] = (  # expansion t, channels c, repeats n, stride s
        (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, init: str = "zoo") -> None:
        super().__init__()
        check_init(init)
        self.stem = conv_bn(3, 32, 3)
        blocks, cin = [], 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, t, s if i == 0 else 1))
                cin = c
        self.layers = nn.Sequential(*blocks)
        self.head = conv_bn(cin, 1280, 1)
        self.fc = nn.Linear(1280, num_classes)
        if init == "zoo":
            init_cifar(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.head(self.layers(F.relu(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("cifar", display="MobileNetV1", images_per_s=12_000)
def mobilenetv1(num_classes: int = 10, init: str = "zoo") -> MobileNetV1:
    """MobileNetV1, CIFAR form (stem stride 1); ``init`` zoo or authors (PyTorch defaults)."""
    return MobileNetV1(num_classes, init)


@register_model("cifar", display="MobileNetV2", images_per_s=7_000)
def mobilenetv2(num_classes: int = 10, init: str = "zoo") -> MobileNetV2:
    """MobileNetV2, CIFAR form (stem and second stage stride 1, 1x1 projection shortcuts); ``init`` zoo
    or authors (PyTorch defaults)."""
    return MobileNetV2(num_classes, init)
