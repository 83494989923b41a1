"""Model zoo of we-repro: a small timm-style registry.

Usage::

    import models
    net = models.create("resnet56", num_classes=100)
    models.list_models()          # ['densenet40', 'mobilenetv1', ...]
    models.model_info("resnet34") # ModelInfo(name='resnet34', family='imagenet', input_size=224)

Every factory takes ``num_classes`` plus its own documented keyword arguments; ``create`` checks
keyword names against the factory's signature, so a misspelt option fails loudly with a TypeError.
The CIFAR models are written here; the ImageNet ones come from torchvision and timm (never with
pretrained weights). This package does not depend on ``we``.
"""
from models import cifar_resnet, densenet, imagenet, mobilenet, shufflenet  # noqa: F401 (registers the zoo)
from models.registry import ModelInfo, create, list_models, model_info, register_model

__all__ = ["ModelInfo", "create", "list_models", "model_info", "register_model"]
