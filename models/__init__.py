"""Model zoo of we-repro: a small timm-style registry.

Usage::

    import models
    net = models.create("resnet56", num_classes=100)
    models.list_models()          # ['densenet40', 'mobilenetv1', ...]
    models.model_info("resnet34") # ModelInfo(name='resnet34', family='imagenet', input_size=224, ...)
    models.create("timm:resnet18", num_classes=10)     # any timm model, randomly initialised
    models.create("mypkg.nets:build", num_classes=10)  # your own: build(num_classes=...) -> nn.Module

A zoo model's facts are given where it is registered (``register_model``: family, name in the paper,
default input size, default training throughput for the cost planner); a new model is one module
plus its import below. Every factory takes ``num_classes`` plus its own documented keyword
arguments; ``create`` checks keyword names against the factory's signature, so a misspelt option
fails loudly with a TypeError.
The CIFAR models are written here; the ImageNet ones come from torchvision and timm (never with
pretrained weights). This package does not depend on ``we``.
"""
from models import cifar_resnet, densenet, imagenet, mobilenet, shufflenet  # noqa: F401 (registers the zoo)
from models.registry import (ModelInfo, check_options, display_name, list_models, model_info, model_options,
                             register_model)
from models.spec import check_spec, create, is_zoo

__all__ = ["ModelInfo", "check_options", "check_spec", "create", "display_name", "is_zoo", "list_models", "model_info",
           "model_options", "register_model"]
