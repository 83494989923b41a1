"""Units and their importance (Eq. 1): the four pools of a network.

A pool gathers one kind of unit (Conv2d filters, Conv2d bias scalars, BatchNorm weight
scalars, BatchNorm bias scalars; we.core.layers says which tensors) over the whole network, with its layout (layer, local group
and crossover class of every unit), the sort by (segment, importance) that selection and
matching share, and the per-kind counts of evolved units.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from we.core.layers import Source, model_sources, write_back


@dataclass(frozen=True)
class Units:
    """One layer's units of one kind: `tensor` has one unit per row (dim 0)."""

    name: str
    tensor: Tensor
    importance: Tensor  # a view into the pool's importance
    groups: int  # local-selection groups: contiguous blocks of tensor.shape[0] // groups units


@dataclass(frozen=True)
class Layout:
    """Where every unit of a pool sits: its layer, its local group and its crossover class.

    It depends only on the layers' shapes and groups, so it is built once per model and device.
    Groups are contiguous in the pool and a sort by (group, importance) keeps each group at the
    same positions, so `group_start` and `group_size` serve the pool order and the sorted order.
    """

    sizes: tuple[int, ...]  # units per layer
    layer_sizes: Tensor  # (L,) units per layer, on the device
    layer: Tensor  # (P,) layer of each unit
    layer_start: Tensor  # (P,) pool index of the first unit of that layer
    layer_size: Tensor  # (P,) units in that layer
    group: Tensor  # (P,) local group of each unit, numbered over the whole pool
    group_start: Tensor  # (P,) pool index of the first unit of that group
    group_size: Tensor  # (P,) units in that group
    group_end: Tensor  # (P,) pool index of the last unit of that group
    divisor: Tensor  # (P,) weight.shape[1] of each conv filter (Eq. 1), 1 for scalars
    classes: tuple[tuple[int, ...], ...]  # layers whose units share one shape, in module order
    class_units: tuple[Tensor, ...]  # pool index of each unit of a class, in stacking order
    class_row: Tensor  # (P,) row of each unit in its class stack


@dataclass(frozen=True)
class Pool:
    """One kind's units over the whole network, layers in module order."""

    names: list[str]
    tensors: list[Tensor]  # one per layer, detached (in-place writes reach the parameters)
    groups: list[int]
    importance: Tensor  # (P,) every unit's importance, layers concatenated
    layout: Layout
    sources: tuple[Source, ...] = ()  # where each layer's tensor comes from (write_pools)

    @property
    def layers(self) -> list[Units]:
        """The pool layer by layer."""
        return [Units(*unit) for unit in zip(self.names, self.tensors,
                                              self.importance.split(self.layout.sizes), self.groups)]


def filter_importance(weight: Tensor, average: bool = True) -> Tensor:
    """Importance of each output filter: sum(|w|) / weight.shape[1] (Eq. 1), or sum(|w|)."""
    l1 = weight.detach().abs().flatten(1).sum(1)
    return l1 / weight.shape[1] if average else l1


_LAYOUTS: OrderedDict[tuple[Any, ...], Layout] = OrderedDict()
LAYOUT_CACHE_SIZE = 64  # layouts kept, least recently used dropped first: a step's own layouts stay


def pool_layout(tensors: Sequence[Tensor], groups: Sequence[int]) -> Layout:
    """The layout of a pool made of `tensors` (one unit per row) with their local groups (cached)."""
    device, dtype = tensors[0].device, tensors[0].dtype
    key = (device, dtype, tuple(tuple(t.shape) for t in tensors), tuple(groups))
    if key in _LAYOUTS:
        _LAYOUTS.move_to_end(key)
        return _LAYOUTS[key]

    def repeat(values: Iterable[int], counts: Sequence[int]) -> Tensor:
        return torch.repeat_interleave(torch.tensor(list(values)), torch.tensor(counts)).to(device)

    sizes = [t.shape[0] for t in tensors]
    offsets = [0, *itertools.accumulate(sizes)][:-1]
    per_group = [n // g for n, g in zip(sizes, groups) for _ in range(g)]
    group_first = [0, *itertools.accumulate(per_group)][:-1]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        by_shape.setdefault(tuple(t.shape[1:]), []).append(i)
    classes = tuple(tuple(layers) for layers in by_shape.values())
    class_units = [torch.cat([torch.arange(offsets[i], offsets[i] + sizes[i]) for i in layers])
                   for layers in classes]
    class_row = torch.empty(sum(sizes), dtype=torch.long)
    for units in class_units:
        class_row[units] = torch.arange(units.numel())
    layout = Layout(
        sizes=tuple(sizes), layer_sizes=torch.tensor(sizes, device=device),
        layer=repeat(range(len(sizes)), sizes), layer_start=repeat(offsets, sizes), layer_size=repeat(sizes, sizes),
        group=repeat(range(len(per_group)), per_group), group_start=repeat(group_first, per_group),
        group_size=repeat(per_group, per_group),
        group_end=repeat((f + n - 1 for f, n in zip(group_first, per_group)), per_group),
        divisor=repeat((t.shape[1] if t.dim() > 1 else 1 for t in tensors), sizes).to(dtype),
        classes=classes, class_units=tuple(u.to(device) for u in class_units),
        class_row=class_row.to(device))
    _LAYOUTS[key] = layout
    while len(_LAYOUTS) > LAYOUT_CACHE_SIZE:
        _LAYOUTS.popitem(last=False)
    return layout


def pool_importance(tensors: Sequence[Tensor], layout: Layout) -> Tensor:
    """Every unit's importance: Eq. 1 for conv filters, |v| for scalars, layers concatenated."""
    if tensors[0].dim() == 1:
        return torch.cat(tensors).abs()
    return torch.cat([filter_importance(t, average=False) for t in tensors]).div_(layout.divisor)


_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def segment_order(importance: Tensor, segment: Tensor, descending: bool = False) -> Tensor:
    """Pool indices sorted by (segment, importance ascending or descending, pool index).

    Segments (local groups, layers) are contiguous, so each keeps its positions. Importances are
    >= 0 and the bits of a non-negative float order like the float, so for floats of up to 32
    bits one integer key (segment, bits) takes a single stable sort.
    """
    bits = _BITS.get(importance.dtype)
    if bits is not None:
        key = importance.contiguous().view(bits).long()
        return torch.argsort((segment << 32) | ((0x7FFFFFFF - key) if descending else key), stable=True)
    order = torch.argsort(importance, descending=descending, stable=True)
    return order[torch.argsort(segment[order], stable=True)]


def join_pools(pools: Sequence[Pool]) -> Pool:
    """Several kinds as one pool: their groups stay apart, and units of one shape share a class."""
    if len(pools) == 1:
        return pools[0]
    tensors = [t for pool in pools for t in pool.tensors]
    groups = [g for pool in pools for g in pool.groups]
    return Pool([n for pool in pools for n in pool.names], tensors, groups,
                torch.cat([pool.importance for pool in pools]), pool_layout(tensors, groups))


def gather_units(model: nn.Module, conv: bool = True, bn: bool = True) -> dict[str, Pool]:
    """The four pools of a model, layers in module order (see we.core.layers: which layers and
    tensors, shared and parametrized ones); Linear layers are never included. ValueError naming the
    model's class when it has nothing to evolve."""
    pools = {}
    for kind, sources in model_sources(model, conv=conv, bn=bn).items():
        if sources:
            tensors, groups = [s.tensor for s in sources], [s.groups for s in sources]
            layout = pool_layout(tensors, groups)
            pools[kind] = Pool([s.name for s in sources], tensors, groups, pool_importance(tensors, layout), layout,
                               tuple(sources))
    return pools


def write_pools(pools: Mapping[str, Pool]) -> None:
    """After a step's crossover: make the model's effective tensors equal to the pools' tensors."""
    write_back([source for pool in pools.values() for source in pool.sources])


def kind_counts(pools: Mapping[str, Pool], evolved: Tensor) -> dict[str, Tensor]:
    """Evolved units per kind, `evolved` being the mask over the pools joined in their order."""
    parts = evolved.split([pool.importance.numel() for pool in pools.values()])
    return dict(zip(pools, torch.stack([part.sum() for part in parts])))


def host_counts(counts: Mapping[str, Tensor | int]) -> dict[str, int]:
    """Plain ints from per-kind device counts, with one host synchronisation."""
    tensors = {k: v for k, v in counts.items() if isinstance(v, Tensor)}
    values = dict(zip(tensors, torch.stack(list(tensors.values())).tolist())) if tensors else {}
    return {k: int(values.get(k, v)) for k, v in counts.items()}
