"""ImageNet models: torchvision's and timm's as they are (never with pretrained weights), and the
authors' MobileNetV2 form.

``resnet34``: ``torchvision.models.resnet34(weights=None)`` (21,797,672 parameters at 1000
classes), which is also what the authors' ImageNet script builds (``models.__dict__[args.arch]()``
from torchvision, WE_imagenet/we.py:27,316), so it has no ``init`` or ``arch`` option.
``mobilenetv2_050``: ``timm.create_model("mobilenetv2_050", pretrained=False)`` (1,968,680 at 1000
classes) with timm's initialisation; ``arch="authors"`` builds the authors' ``MobileNet2(scale=0.5)``
instead (:class:`MobileNetV2Authors`, WE_imagenet/models/mobilenetv2.py, built at we.py:308), and
``init="authors"`` gives the timm network the authors' initialisation (:func:`init_authors_imagenet`).
The libraries are imported lazily so that ``import models`` stays cheap.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.cifar_resnet import check_init
from models.registry import register_model
from models.shufflenet import ARCHS

# (expansion t, channels c, repeats n, stride s) of Sandler et al. (2018), Table 2
MOBILENETV2_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                   (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """The nearest multiple of `divisor` to `v` (at least `divisor`), raised by one step when rounding
    lost more than 10% (the TensorFlow MobileNet rule both the authors' file and timm use)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def init_authors_imagenet(model: nn.Module) -> None:
    """The authors' MobileNetV2 initialisation (their ``init_params``, mobilenetv2.py:109-121): He-normal
    fan_out conv weights, zero conv biases, BN (1, 0), Linear weights N(0, 0.001^2), zero Linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class LinearBottleneck(nn.Module):
    """Expand 1x1 (also at t = 1), depth-wise 3x3, linear project 1x1; ReLU6; residual when the
    stride is 1 and the width does not change."""

    def __init__(self, cin: int, cout: int, t: int, stride: int) -> None:
        super().__init__()
        mid = cin * t
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(*_conv_bn(cin, mid, 1), nn.ReLU6(inplace=True),
                                  *_conv_bn(mid, mid, 3, stride, groups=mid), nn.ReLU6(inplace=True),
                                  *_conv_bn(mid, cout, 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out + x if self.residual else out


class MobileNetV2Authors(nn.Module):
    """The authors' ImageNet MobileNetV2 (``MobileNet2``): stem 3x3/2 conv to 32 * width, the blocks of
    `MOBILENETV2_CFG` at the widths' multiples of 8, the first block with its (t = 1) expansion conv,
    1x1 conv to 1280 (width <= 1), average pool, Dropout(0.2) (mobilenetv2.py:105), Linear. It
    returns logits; the authors' ``log_softmax`` output changes neither the cross-entropy nor top-k."""

    def __init__(self, width: float = 0.5, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        cin = make_divisible(32 * width)
        layers: list[nn.Module] = [*_conv_bn(3, cin, 3, 2), nn.ReLU6(inplace=True)]
        for t, c, n, s in MOBILENETV2_CFG:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(LinearBottleneck(cin, cout, t, s if i == 0 else 1))
                cin = cout
        last = 1280 if width <= 1 else make_divisible(1280 * width)
        layers += [*_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)
        init_authors_imagenet(self)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.fc(self.dropout(x))


@register_model("imagenet", display="ResNet-34", images_per_s=1_200)
def resnet34(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-34, randomly initialised."""
    from torchvision.models import resnet34 as tv_resnet34

    return tv_resnet34(weights=None, num_classes=num_classes)


def check_mobilenetv2_050(init: str = "zoo", arch: str = "zoo") -> None:
    """ValueError unless `init` and `arch` go together (the authors' network has their init only)."""
    check_init(init)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if arch == "authors" and init != "authors":
        raise ValueError("arch 'authors' comes with the authors' initialisation only: set init 'authors'")


@register_model("imagenet", display="MobileNetV2-0.5", input_size=128, images_per_s=4_000)  # 128x128: Table 4
def mobilenetv2_050(num_classes: int = 1000, init: str = "zoo", arch: str = "zoo") -> nn.Module:
    """MobileNetV2 with width multiplier 0.5, randomly initialised: timm's (``arch`` zoo, with timm's
    init or, ``init`` authors, the authors') or the authors' network (``arch`` authors, their init)."""
    check_mobilenetv2_050(init, arch)
    if arch == "authors":
        return MobileNetV2Authors(0.5, num_classes)
    import timm

    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=num_classes)
    if init == "authors":
        init_authors_imagenet(model)
    return model


mobilenetv2_050.check_options = check_mobilenetv2_050  # checked before anything is built (models.check_options)
