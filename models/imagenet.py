"""ImageNet models, taken from torchvision and timm as they are (never with pretrained weights).

``resnet34``: ``torchvision.models.resnet34(weights=None)`` (21,797,672 parameters at 1000
classes). ``mobilenetv2_050``: ``timm.create_model("mobilenetv2_050", pretrained=False)``
(1,968,680 at 1000 classes). Both use their library's own initialisation. The libraries are
imported lazily so that ``import models`` stays cheap.
"""
from __future__ import annotations

from torch import nn

from models.registry import register_model


@register_model("imagenet")
def resnet34(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-34, randomly initialised."""
    from torchvision.models import resnet34 as tv_resnet34

    return tv_resnet34(weights=None, num_classes=num_classes)


@register_model("imagenet")
def mobilenetv2_050(num_classes: int = 1000) -> nn.Module:
    """timm MobileNetV2 with width multiplier 0.5, randomly initialised."""
    import timm

    return timm.create_model("mobilenetv2_050", pretrained=False, num_classes=num_classes)
