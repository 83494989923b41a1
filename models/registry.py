"""The zoo's registry: `register_model`, `create`, `list_models`, `model_info` (timm-style)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

__all__ = ["ModelInfo", "check_options", "create", "display_name", "list_models", "model_info", "model_options",
           "register_model"]

Family = Literal["cifar", "imagenet"]
FAMILY_INPUT_SIZE: dict[str, int] = {"cifar": 32, "imagenet": 224}


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a registered model, given where it is registered (`register_model`)."""

    name: str
    family: Family
    input_size: int  # square input side a run takes by default (32 for CIFAR; 224 for ImageNet unless set)
    display: str  # the model's name in the paper's tables (the registry name where the paper has none)
    images_per_s: float | None  # default training throughput (images/s, one GPU, fp32) for the cost planner


_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(family: Family, name: str | None = None, *, display: str | None = None,
                   input_size: int | None = None, images_per_s: float | None = None,
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory ``fn(num_classes=..., **options) -> nn.Module``.

    The registry name defaults to the function name. `display`: the model's name in the paper (default:
    the registry name); `input_size`: the square input side a run of the model takes by default (default:
    the family's, 32 or 224); `images_per_s`: the training throughput the cost planner assumes where no
    bench measured the model (a rough figure for a current data-centre GPU, not a measurement).
    """
    if family not in FAMILY_INPUT_SIZE:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILY_INPUT_SIZE)}")
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1):
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    if images_per_s is not None and (isinstance(images_per_s, bool) or not isinstance(images_per_s, (int, float))
                                     or not 0 < images_per_s < float("inf")):
        raise ValueError(f"images_per_s must be a positive number, got {images_per_s!r}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _FACTORIES:
            raise ValueError(f"model {key!r} is already registered")
        if "num_classes" not in inspect.signature(fn).parameters:
            raise TypeError(f"factory for {key!r} must accept num_classes")
        _FACTORIES[key] = fn
        _INFO[key] = ModelInfo(name=key, family=family, input_size=input_size or FAMILY_INPUT_SIZE[family],
                               display=display or key,
                               images_per_s=None if images_per_s is None else float(images_per_s))
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


def display_name(spec: str) -> str:
    """A model's name in the paper's tables: a registered model's `display`, else the spec as given."""
    return _INFO[spec].display if spec in _INFO else spec


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
