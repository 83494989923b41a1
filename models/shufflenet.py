"""ShuffleNetV1 (Zhang et al. 2018) in the common CIFAR form, groups g=3, blocks [4, 8, 4].

Stem: 3x3 conv 3->24 + BN + ReLU (no down-sampling). Stages of widths 240, 480, 960; the first
unit of each stage has stride 2 and concatenates a 3x3/2 average-pooled copy of its input, so its
residual branch outputs (width - input width) channels; other units add an identity shortcut.
A unit: grouped 1x1 conv -> BN -> ReLU -> channel shuffle -> depth-wise 3x3 conv -> BN ->
grouped 1x1 conv -> BN, bottleneck width = stage width // 4 (also in the first unit, whose
branch is narrower). All 1x1 convs use g groups, the first unit's too (24 = 3 x 8 input channels;
the paper uses 1 group there). Head: global average pool, Linear(960, classes).

As in the authors' script, every conv layer carries a bias (``conv_bias=True``); with it the
counts are 925,618 / 1,012,108 (CIFAR-10 / -100), the script's. The stem size, the groups of the
first unit and the bottleneck width were inferred from that count: of 128 combinations tried
(1x1 or 3x3 stem, 1 or 3 groups there, width // 4 of the stage or of the branch, bias on or off
per conv kind) this one alone matches it.

``init``: ``"zoo"`` :func:`models.cifar_resnet.init_cifar`; ``"authors"`` PyTorch's layer defaults
(non-zero conv biases), as the authors' file, which has no init code (WE_cifar/models/shufflenetv1.py).
``arch``: ``"zoo"`` as above; ``"authors"`` as their file: no ReLU after the depth-wise conv's BN
(its ``DepthwiseConv2d`` is conv + BN, lines 50-60; the ShuffleNet paper's Fig. 2 has none either) and
the stride-2 unit concatenates [pooled input, branch] (``self.fusion(shortcut, shuffled)``, line 153).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register_model
from models.cifar_resnet import check_init, init_cifar

ARCHS = ("zoo", "authors")


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups: (g, c/g) -> (c/g, g)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV1 unit; stride 2 concatenates the pooled input, stride 1 adds it. ``authors``: no
    ReLU after the depth-wise BN, and the pooled input first in the concatenation."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, bias: bool, authors: bool = False) -> None:
        super().__init__()
        mid = cout // 4
        self.stride, self.groups, self.authors = stride, groups, authors
        branch = cout - cin if stride == 2 else cout
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=groups, bias=bias)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=bias)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=bias)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.groups)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out if self.authors else F.relu(out)))
        if self.stride == 2:
            pooled = F.avg_pool2d(x, 3, 2, 1)
            return F.relu(torch.cat([pooled, out] if self.authors else [out, pooled], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 for 32x32 inputs."""

    def __init__(self, groups: int = 3, widths: tuple[int, ...] = (240, 480, 960),
                 blocks: tuple[int, ...] = (4, 8, 4), conv_bias: bool = True, num_classes: int = 10,
                 init: str = "zoo", arch: str = "zoo") -> None:
        super().__init__()
        check_init(init)
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        self.conv1 = nn.Conv2d(3, 24, 3, 1, 1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(24)
        units: list[nn.Module] = []
        cin = 24
        for width, n in zip(widths, blocks):
            for i in range(n):
                units.append(ShuffleUnit(cin, width, 2 if i == 0 else 1, groups, conv_bias, arch == "authors"))
                cin = width
        self.layers = nn.Sequential(*units)
        self.fc = nn.Linear(cin, num_classes)
        if init == "zoo":
            init_cifar(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("cifar", display="ShuffleNetV1", images_per_s=6_000)
def shufflenetv1(num_classes: int = 10, conv_bias: bool = True, init: str = "zoo", arch: str = "zoo") -> ShuffleNetV1:
    """ShuffleNetV1 g=3, blocks [4, 8, 4]; ``conv_bias=False`` drops the conv biases; ``init`` and ``arch``
    zoo or authors (see the module doc)."""
    return ShuffleNetV1(3, (240, 480, 960), (4, 8, 4), conv_bias, num_classes, init, arch)
