"""The layers Weight Evolution evolves (Sec. 3: Conv2d filters and bias, BatchNorm weight and bias)
and the tensors it writes.

BatchNorm is nn.BatchNorm2d or nn.SyncBatchNorm (its parameters are a BatchNorm2d's). A unit's
tensor is the one the forward uses:
- a plain parameter is evolved and written in place;
- a weight parametrized by `torch.nn.utils.parametrizations.weight_norm(dim=0)` (w = g * v / ||v||,
  one norm per filter) is evolved as its effective weight w: importance (Eq. 1) and crossover see w,
  and every filter i whose w changed is written back through the parametrization's own
  right_inverse (v_i = w'_i, g_i = ||w'_i||), so the effective filter becomes exactly the evolved
  one while v and g of unchanged filters stay untouched (the optimiser goes on training v and g);
- any other parametrization (weight_norm over another dim, spectral_norm, orthogonal, custom ones)
  and a weight that is no parameter (the hook-based torch.nn.utils.weight_norm recomputes it before
  every forward) are refused with a ValueError: writing to them would not change the model.
A tensor shared by several layers is one set of units, named after its first layer in module order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm

BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class Source:
    """One layer's tensor of one kind: `tensor` is read and written in place by a step, then
    `write_back` (if any) makes the model's effective tensor equal to it."""

    name: str
    tensor: Tensor
    groups: int  # local-selection groups
    write_back: Callable[[], None] | None = None


def local_groups(conv: nn.Conv2d) -> int:
    """Local groups of a conv: its groups for 1 < groups < in_channels, else one group."""
    return conv.groups if 1 < conv.groups < conv.in_channels else 1


def weight_norm_write(plist: nn.Module, effective: Tensor) -> Callable[[], None]:
    """Writes the rows of `effective` that a step changed into weight_norm's (g, v) (see module doc)."""
    before = effective.clone()

    def write() -> None:
        changed = (effective != before).reshape(effective.shape[0], -1).any(1).nonzero().squeeze(1)
        g, v = plist[0].right_inverse(effective)
        plist.original0.index_copy_(0, changed, g.index_select(0, changed))
        plist.original1.index_copy_(0, changed, v.index_select(0, changed))
        before.copy_(effective)

    return write


def source(module: nn.Module, attr: str, name: str, groups: int) -> tuple[int, Source]:
    """(identity of what the optimiser trains, the Source) of `module.attr`; ValueError if it
    cannot be evolved so that the model changes."""
    if parametrize.is_parametrized(module, attr):
        plist = module.parametrizations[attr]
        if len(plist) == 1 and isinstance(plist[0], _WeightNorm) and plist[0].dim == 0:
            effective = getattr(module, attr).detach().clone()
            return id(plist.original1), Source(name, effective, groups, weight_norm_write(plist, effective))
        kinds = ", ".join(type(p).__name__ for p in plist)
        raise ValueError(f"{name} is parametrized by {kinds}: Weight Evolution writes plain parameters and "
                         "weight_norm(dim=0) only (a write to this weight would not change the model)")
    tensor = getattr(module, attr)
    if not isinstance(tensor, nn.Parameter):
        raise ValueError(f"{name} is not a parameter (the hook-based torch.nn.utils.weight_norm recomputes it "
                         "before every forward): use torch.nn.utils.parametrizations.weight_norm")
    return id(tensor), Source(name, tensor.detach(), groups)


def model_sources(model: nn.Module, conv: bool = True, bn: bool = True) -> dict[str, list[Source]]:
    """Per kind (conv_weight, conv_bias, bn_weight, bn_bias), the tensors to evolve in module order,
    each shared tensor once. ValueError naming the model's class when there is none at all."""
    found: dict[str, list[Source]] = {"conv_weight": [], "conv_bias": [], "bn_weight": [], "bn_bias": []}
    seen: set[int] = set()

    def add(kind: str, module: nn.Module, attr: str, name: str, groups: int) -> None:
        key, src = source(module, attr, f"{name}.{attr}" if name else attr, groups)
        if key not in seen:
            seen.add(key)
            found[kind].append(src)

    for name, module in model.named_modules():
        if conv and isinstance(module, nn.Conv2d):
            groups = local_groups(module)
            add("conv_weight", module, "weight", name, groups)
            if module.bias is not None:
                add("conv_bias", module, "bias", name, groups)
        elif bn and isinstance(module, BATCH_NORMS) and module.weight is not None:
            add("bn_weight", module, "weight", name, 1)
            add("bn_bias", module, "bias", name, 1)
    if not conv and not bn:
        raise ValueError("conv=False and bn=False leave Weight Evolution nothing to evolve; switch one of them on")
    if not any(found.values()):
        what = " or ".join(w for w, on in (("Conv2d", conv), ("BatchNorm2d/SyncBatchNorm", bn)) if on)
        off = "".join(f" ({k}=False)" for k, on in (("conv", conv), ("bn", bn)) if not on)
        raise ValueError(f"{type(model).__name__} has no {what} layer to evolve{off} (Weight Evolution evolves "
                         "Conv2d filters and bias and BatchNorm weight and bias; conv/bn switch them)")
    return found


def write_back(sources: list[Source]) -> None:
    """Make the model's effective tensors equal to the evolved ones (parametrized weights only)."""
    with torch.no_grad():
        for src in sources:
            if src.write_back is not None:
                src.write_back()
