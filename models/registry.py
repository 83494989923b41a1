"""The zoo's registry: `register_model`, `create`, `list_models`, `model_info` (timm-style)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

__all__ = ["ModelInfo", "check_options", "create", "list_models", "model_info", "model_options", "register_model"]

Family = Literal["cifar", "imagenet"]
_INPUT_SIZE: dict[str, int] = {"cifar": 32, "imagenet": 224}


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a registered model."""

    name: str
    family: Family
    input_size: int  # default square input side (32 for CIFAR, 224 for ImageNet)


_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(family: Family, name: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory ``fn(num_classes=..., **options) -> nn.Module``.

    The registry name defaults to the function name.
    """
    if family not in _INPUT_SIZE:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(_INPUT_SIZE)}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _FACTORIES:
            raise ValueError(f"model {key!r} is already registered")
        if "num_classes" not in inspect.signature(fn).parameters:
            raise TypeError(f"factory for {key!r} must accept num_classes")
        _FACTORIES[key] = fn
        _INFO[key] = ModelInfo(name=key, family=family, input_size=_INPUT_SIZE[family])
        return fn

    return deco


def list_models(family: Family | None = None) -> list[str]:
    """Sorted names of the registered models, optionally of one family only."""
    return sorted(k for k, v in _INFO.items() if family is None or v.family == family)


def _check_name(name: str) -> None:
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model (ValueError if unknown)."""
    _check_name(name)
    return _INFO[name]


def model_options(name: str) -> list[str]:
    """The keyword options a registered model's factory takes besides num_classes."""
    _check_name(name)
    return [p for p in inspect.signature(_FACTORIES[name]).parameters if p != "num_classes"]


def check_options(name: str, **kw: object) -> None:
    """ValueError if a factory's options do not go together (its ``check_options``), without building it."""
    _check_name(name)
    check = getattr(_FACTORIES[name], "check_options", None)
    if check is not None:
        check(**kw)


def create(name: str, num_classes: int = 10, **kw: object) -> nn.Module:
    """Build a freshly initialised model by registry name.

    Raises ValueError for an unknown name and TypeError for a keyword the factory does not take.
    """
    _check_name(name)
    fn = _FACTORIES[name]
    params = inspect.signature(fn).parameters
    unknown = sorted(k for k in kw if k not in params or k == "num_classes")
    if unknown:
        allowed = [p for p in params if p != "num_classes"]
        raise TypeError(f"{name}: unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                        f"accepted: {', '.join(allowed) if allowed else 'none besides num_classes'}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be a positive int, got {num_classes!r}")
    return fn(num_classes=num_classes, **kw)
