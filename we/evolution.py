"""Weight Evolution as printed in the paper (Lin et al., ACM MM 2021, Sec. 3).

A step gathers four pools of units over the whole network (Conv2d filters, Conv2d bias
scalars, BatchNorm2d weight scalars, BatchNorm2d bias scalars), selects the inferior units
globally (Sec. 3.1.1) and locally (Eq. 4), matches them with dominant units of the same layer
or group (Sec. 3.2.1) and crosses them over (Eqs. 5-6). Selection and matching run on all
pools and layers at once (one sort per step); crossover touches only the evolved units on the
CPU, and whole classes of same-shaped units elsewhere, so a step never waits for an accelerator.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

KINDS: tuple[str, ...] = ("conv_weight", "conv_bias", "bn_weight", "bn_bias")
SELECTIONS: tuple[str, ...] = ("global+local", "global", "local")
MATCHINGS: tuple[str, ...] = ("forward", "reverse")
LEVELS: tuple[str, ...] = ("element", "filter")
INTERVAL_UNITS: tuple[str, ...] = ("epoch", "iter")

Alpha = float | str


# ---------------------------------------------------------------------------------------------
# Validation (one-line messages naming the offending key)
# ---------------------------------------------------------------------------------------------

def check_choice(key: str, value: Any, choices: Sequence[str]) -> str:
    """Return `value` if it is one of `choices`, else raise ValueError naming `key`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False) -> float:
    """Return `value` as float if it is a real number in [low, high] (or (low, high])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{key} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{key} must be <= {high}, got {value!r}")
    return float(value)


def check_bool(key: str, value: Any) -> bool:
    """Return `value` if it is a bool, else raise ValueError naming `key`."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def check_positive_int(key: str, value: Any) -> int:
    """Return `value` if it is an int >= 1, else raise ValueError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    return value


def check_milestones(key: str, value: Any) -> tuple[int, ...]:
    """Return `value` as a tuple of strictly increasing non-negative ints."""
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{key} must be a list of increasing epochs, got {value!r}") from None
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in items) or any(
            b <= a for a, b in zip(items, items[1:])):
        raise ValueError(f"{key} must be a list of increasing epochs, got {value!r}")
    return items


def check_alpha(key: str, value: Any) -> Alpha:
    """Return "adaptive" or a float in [0, 1], else raise ValueError naming `key`."""
    if value == "adaptive":
        return "adaptive"
    if isinstance(value, str):
        raise ValueError(f"{key} must be 'adaptive' or a number in [0, 1], got {value!r}")
    return check_number(key, value, 0.0, 1.0)


def check_keys(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise TypeError naming the first key of `given` that is not in `known`."""
    known = list(known)
    for key in given:
        if key not in known:
            raise TypeError(f"unknown {what} hparam {key!r}; known: {sorted(known)}")


# ---------------------------------------------------------------------------------------------
# Selection rate (Eq. 2)
# ---------------------------------------------------------------------------------------------

def training_stage(epoch: int, milestones: Sequence[int]) -> tuple[int, int]:
    """(t - 1, e0): number of milestones passed by `epoch` (0-based) and the last one (0 if none)."""
    passed = [m for m in milestones if epoch >= m]
    return len(passed), (passed[-1] if passed else 0)


def sigmoid(x: float) -> float:
    """Eq. 3."""
    return 1.0 / (1.0 + math.exp(-x))


def selection_rate(epoch: int, r_hat: float = 0.05, beta: float = 2.5, eta: float = 15.0,
                   milestones: Sequence[int] = (60, 120)) -> float:
    """Global selection rate r for a 0-based epoch."""
    t_minus_1, e0 = training_stage(epoch, milestones)
    return (r_hat / beta ** t_minus_1) * sigmoid((epoch - e0) / eta)  # Eq. 2


# ---------------------------------------------------------------------------------------------
# Units and importance (Eq. 1)
# ---------------------------------------------------------------------------------------------

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
    offsets: tuple[int, ...]  # pool index of each layer's first unit
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

    @property
    def layers(self) -> list[Units]:
        """The pool layer by layer."""
        return [Units(*unit) for unit in zip(self.names, self.tensors,
                                              self.importance.split(self.layout.sizes), self.groups)]


def filter_importance(weight: Tensor, average: bool = True) -> Tensor:
    """Importance of each output filter: sum(|w|) / weight.shape[1] (Eq. 1), or sum(|w|)."""
    l1 = weight.detach().abs().flatten(1).sum(1)
    return l1 / weight.shape[1] if average else l1


def local_groups(conv: nn.Conv2d) -> int:
    """Local groups of a conv: its groups for 1 < groups < in_channels, else one group."""
    return conv.groups if 1 < conv.groups < conv.in_channels else 1


_LAYOUTS: dict[tuple[Any, ...], Layout] = {}


def pool_layout(tensors: Sequence[Tensor], groups: Sequence[int]) -> Layout:
    """The layout of a pool made of `tensors` (one unit per row) with their local groups (cached)."""
    device, dtype = tensors[0].device, tensors[0].dtype
    key = (device, dtype, tuple(tuple(t.shape) for t in tensors), tuple(groups))
    if key in _LAYOUTS:
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
        sizes=tuple(sizes), layer_sizes=torch.tensor(sizes, device=device), offsets=tuple(offsets),
        layer=repeat(range(len(sizes)), sizes), layer_start=repeat(offsets, sizes), layer_size=repeat(sizes, sizes),
        group=repeat(range(len(per_group)), per_group), group_start=repeat(group_first, per_group),
        group_size=repeat(per_group, per_group),
        group_end=repeat((f + n - 1 for f, n in zip(group_first, per_group)), per_group),
        divisor=repeat((t.shape[1] if t.dim() > 1 else 1 for t in tensors), sizes).to(dtype),
        classes=classes, class_units=tuple(u.to(device) for u in class_units),
        class_row=class_row.to(device))
    if len(_LAYOUTS) >= 64:
        _LAYOUTS.clear()
    _LAYOUTS[key] = layout
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
    """The four pools of a model, layers in module order; Linear layers are never included."""
    found: dict[str, list[tuple[str, Tensor, int]]] = {kind: [] for kind in KINDS}
    for name, module in model.named_modules():
        if conv and isinstance(module, nn.Conv2d):
            groups = local_groups(module)
            found["conv_weight"].append((f"{name}.weight", module.weight.detach(), groups))
            if module.bias is not None:
                found["conv_bias"].append((f"{name}.bias", module.bias.detach(), groups))
        elif bn and isinstance(module, nn.BatchNorm2d) and module.weight is not None:
            found["bn_weight"].append((f"{name}.weight", module.weight.detach(), 1))
            found["bn_bias"].append((f"{name}.bias", module.bias.detach(), 1))
    pools = {}
    for kind, layers in found.items():
        if layers:
            names, tensors, groups = (list(column) for column in zip(*layers))
            layout = pool_layout(tensors, groups)
            pools[kind] = Pool(names, tensors, groups, pool_importance(tensors, layout), layout)
    return pools


# ---------------------------------------------------------------------------------------------
# Selection (Sec. 3.1)
# ---------------------------------------------------------------------------------------------

def select_global(importance: Tensor, rate: float) -> Tensor:
    """W_tbd: mask of the floor(rate * pool size) least important units (ties: first in the pool)."""
    n_tbd = math.floor(rate * importance.numel())  # Sec. 3.1.1, Algorithm 1 line 4
    if n_tbd == 0:
        return torch.zeros_like(importance, dtype=torch.bool)
    kth = importance.kthvalue(n_tbd).values  # the largest importance in W_tbd
    below, tied = importance < kth, importance == kth
    return below | (tied & (tied.long().cumsum(0) <= n_tbd - below.sum()))


def select_local(importance: Tensor, order: Tensor, candidates: Tensor, layout: Layout,
                 gamma: float | None) -> Tensor:
    """Inferior units: candidates with importance / (group max) < gamma; all if gamma is None.

    `order` is `segment_order(importance, layout.group)`: a group's last unit there is its strongest.
    """
    if gamma is None:
        return candidates
    group_max = importance.index_select(0, order.index_select(0, layout.group_end))
    return candidates & (importance / group_max < gamma)  # Eq. 4 (0/0 = nan is never inferior)


# ---------------------------------------------------------------------------------------------
# Matching (Sec. 3.2.1)
# ---------------------------------------------------------------------------------------------

def _match(order: Tensor, inferior: Tensor, layout: Layout, reverse: bool) -> tuple[Tensor, Tensor]:
    """Pair, in every local group, the c = min(k, n - k) weakest inferior units with its c strongest."""
    start, n = layout.group_start, layout.group_size
    inf_sorted = inferior.index_select(0, order)
    seen = inf_sorted.long().cumsum(0)
    before = seen.index_select(0, start) - inf_sorted.index_select(0, start).long()  # in earlier groups
    k = seen.index_select(0, layout.group_end) - before
    c = torch.minimum(k, n - k)
    rank = seen - before - 1  # rank among the group's inferior units, weakest first
    chosen = inf_sorted & (rank < c)
    partner_pos = (layout.group_end - rank) if reverse else (layout.group_end + 1 - c + rank)
    return unsort_pairs(order, chosen, partner_pos)


def unsort_pairs(order: Tensor, chosen: Tensor, partner_pos: Tensor) -> tuple[Tensor, Tensor]:
    """(partner, evolved) in pool order from pairs found in sorted order: position i of `order`
    evolves where `chosen[i]`, with the unit at sorted position `partner_pos[i]`."""
    partner_sorted = order.index_select(0, partner_pos.clamp(0, order.numel() - 1))
    partner = torch.empty_like(order).scatter_(0, order, torch.where(chosen, partner_sorted, order))
    evolved = torch.zeros_like(chosen).scatter_(0, order, chosen)
    return partner, evolved


def match_forward(order: Tensor, inferior: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """Forward matching: i-th weakest inferior <-> i-th of the c strongest, ascending.

    `order` is `segment_order(importance, layout.group)`. Returns (partner, evolved): the dominant unit of every
    evolved unit (itself otherwise) and the mask of evolved units, in pool order.
    """
    return _match(order, inferior, layout, reverse=False)


def match_reverse(order: Tensor, inferior: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """Reverse matching (as in filter grafting): i-th weakest inferior <-> i-th strongest."""
    return _match(order, inferior, layout, reverse=True)


# ---------------------------------------------------------------------------------------------
# Crossover (Sec. 3.2.2)
# ---------------------------------------------------------------------------------------------

def mix(inf: Tensor, dom: Tensor, alpha: Alpha, inf_size: Tensor, dom_size: Tensor) -> Tensor:
    """alpha * inf + (1 - alpha) * dom with alpha = |inf| / (|inf| + |dom|) if adaptive (Eq. 5-6).

    `inf_size` and `dom_size` are the magnitudes that define the adaptive alpha (alpha = 1,
    no change, where both are 0).
    """
    if alpha == "adaptive":
        weight = (dom_size / (inf_size + dom_size)).nan_to_num_(0.0)  # 1 - alpha (Eq. 6); 0 / 0 -> 0
    else:
        weight = 1.0 - alpha
    return torch.lerp(inf, dom, weight)  # Eq. 5: inf + (1 - alpha) * (dom - inf)


def unit_slices(tensor: Tensor) -> Tensor:
    """`tensor` as (units, slices, genes): a conv filter has one slice per input channel."""
    return tensor.reshape(tensor.shape[0], tensor.shape[1] if tensor.dim() > 1 else 1, -1)


def crossover(inf: Tensor, dom: Tensor, alpha: Alpha = "adaptive", level: str = "element") -> Tensor:
    """Evolved copies of the inferior units `inf`, unit i crossed with unit i of `dom`.

    Both are (units, slices, genes) (see unit_slices). element: in every slice, the weakest gene
    q of the inferior unit takes alpha * w_q + (1 - alpha) * w_p, p the strongest gene of the
    partner's slice (Eqs. 5-6). filter: the whole unit becomes alpha * inf + (1 - alpha) * dom,
    alpha from L1 norms.
    """
    if level == "filter":
        return mix(inf, dom, alpha, inf.abs().sum((1, 2), keepdim=True), dom.abs().sum((1, 2), keepdim=True))
    if inf.shape[-1] == 1:  # 1x1 convs and scalars: each slice is a single gene (q = p = 0)
        return mix(inf, dom, alpha, inf.abs(), dom.abs())
    q = inf.abs().argmin(-1, keepdim=True)  # inferior gene of every slice
    p = dom.abs().argmax(-1, keepdim=True)  # dominant gene of the partner's slice
    w_q, w_p = inf.gather(-1, q), dom.gather(-1, p)
    return inf.scatter(-1, q, mix(w_q, w_p, alpha, w_q.abs(), w_p.abs()))


def rows_on_host(tensor: Tensor) -> bool:
    """Whether layers like `tensor` cross over only their evolved rows, listed on the host.

    Listing them is free on the CPU and would wait for any other device; there, a class of
    same-shaped layers is crossed over whole instead (same result, more arithmetic, no
    synchronisation). Scalars always go whole: a few small tensors cost less than one gather
    per layer.
    """
    return tensor.device.type == "cpu" and tensor.dim() > 1


Cross = Callable[[Tensor, Tensor], Tensor]  # (inferior units, their partners) -> evolved units
Rule = Callable[[torch.Size], tuple[Cross, bool]]  # a layer's shape -> its crossover, slice by slice?


def paper_rule(alpha: Alpha, level: str) -> Rule:
    """The paper's crossover for every layer: `crossover` at `level`, slice by slice at "element"."""
    cross = functools.partial(crossover, alpha=alpha, level=level)
    return lambda shape: (cross, level == "element")


def cross_pool(pool: Pool, partner: Tensor, evolved: Tensor, rule: Rule) -> None:
    """Write the crossover of every evolved unit into its layer; all reads see one snapshot."""
    host = []
    for layers, units in zip(pool.layout.classes, pool.layout.class_units):
        if rows_on_host(pool.tensors[layers[0]]):
            host += layers
        else:
            cross_class(pool, layers, units, partner, evolved, rule(pool.tensors[layers[0]].shape)[0])
    if host:
        cross_rows(pool, host, partner, evolved, rule)


def cross_class(pool: Pool, layers: Sequence[int], units: Tensor, partner: Tensor, evolved: Tensor,
                cross: Cross) -> None:
    """Crossover of a whole class of same-shaped layers, kept where a unit is not evolved."""
    layout, tensors = pool.layout, [pool.tensors[i] for i in layers]
    sizes = [layout.sizes[i] for i in layers]
    scalars = tensors[0].dim() == 1
    stack = torch.cat(tensors).view(-1, 1, 1) if scalars else torch.cat([unit_slices(t) for t in tensors])
    dom = stack.index_select(0, layout.class_row.index_select(0, partner.index_select(0, units)))
    keep = ~evolved.index_select(0, units).view(-1, 1, 1)
    new = torch.where(keep, stack, cross(stack, dom))
    parts = new.view(-1).split(sizes) if scalars else [p.view(t.shape) for p, t in zip(new.split(sizes), tensors)]
    torch._foreach_copy_(tensors, list(parts))


def cross_rows(pool: Pool, layers: Sequence[int], partner: Tensor, evolved: Tensor, rule: Rule) -> None:
    """Crossover of the evolved rows of `layers` only: their rows and partners' rows are listed
    on the host, gathered, crossed over and written back. A crossover that works slice by slice
    takes layers with the same genes per slice together."""
    layout, tensors = pool.layout, pool.tensors
    rows = evolved.nonzero().squeeze(1)
    start = layout.layer_start.index_select(0, rows)
    own, dominant = rows - start, partner.index_select(0, rows) - start
    # layer i's evolved rows are own[bounds[i]:bounds[i + 1]]
    bounds = [0, *torch.bincount(layout.layer.index_select(0, rows), minlength=len(tensors)).cumsum(0).tolist()]
    batches: dict[tuple[Any, ...], list[int]] = {}
    for i in layers:
        if bounds[i + 1] > bounds[i]:
            shape = tensors[i].shape
            cross, per_slice = rule(shape)
            batches.setdefault((cross, per_slice, math.prod(shape[2:]) if per_slice else tuple(shape[1:])),
                               []).append(i)
    for (cross, per_slice, genes), hit in batches.items():
        span = [(bounds[i], bounds[i + 1]) for i in hit]
        as_units = (lambda t: t.reshape(-1, 1, genes)) if per_slice else unit_slices
        inf = torch.cat([as_units(tensors[i].index_select(0, own[b:e])) for i, (b, e) in zip(hit, span)])
        dom = torch.cat([as_units(tensors[i].index_select(0, dominant[b:e])) for i, (b, e) in zip(hit, span)])
        counts = [(e - b) * (tensors[i].shape[1] if per_slice else 1) for i, (b, e) in zip(hit, span)]
        for i, (b, e), part in zip(hit, span, cross(inf, dom).split(counts)):
            tensors[i].index_copy_(0, own[b:e], part.view(-1, *tensors[i].shape[1:]))


# ---------------------------------------------------------------------------------------------
# One step
# ---------------------------------------------------------------------------------------------

def evolve(model: nn.Module, rate: float, *, gamma: float = 0.05, matching: str = "forward",
           conv: bool = True, bn: bool = True, selection: str = "global+local",
           alpha: Alpha = "adaptive", level: str = "element", sync: bool = True) -> dict[str, int]:
    """One weight-evolution step in place; returns the number of evolved units per kind.

    sync=False returns the counts as device tensors instead of ints, so the step never waits
    for the device (the caller reads them when it synchronises anyway).

    selection: "global+local" (WE), "global" (WE-G: W_tbd is inferior, no gamma test) or
    "local" (WE-L: gamma test on every unit, no global pool). alpha: "adaptive" (Eq. 6) or a
    fixed float in [0, 1]. level: "element" (WE) or "filter" (filter-level-GL).
    """
    rate = check_number("rate", rate, 0.0, 1.0)
    gamma = check_number("gamma", gamma, 0.0)
    check_choice("matching", matching, MATCHINGS)
    match = match_forward if matching == "forward" else match_reverse
    check_bool("conv", conv)
    check_bool("bn", bn)
    check_choice("selection", selection, SELECTIONS)
    alpha = check_alpha("alpha", alpha)
    check_choice("level", level, LEVELS)

    counts: dict[str, Tensor | int] = {kind: 0 for kind in KINDS}
    with torch.no_grad():
        pools = gather_units(model, conv=conv, bn=bn)
        if selection != "local":  # kinds whose W_tbd is empty keep all their units
            pools = {k: p for k, p in pools.items() if math.floor(rate * p.importance.numel()) > 0}
        if not pools:
            return host_counts(counts) if sync else counts
        # The four pools run as one: selection and matching never cross a kind's groups.
        joint = join_pools(list(pools.values()))
        if selection == "local":
            candidates = torch.ones_like(joint.importance, dtype=torch.bool)
        else:
            candidates = torch.cat([select_global(p.importance, rate) for p in pools.values()])
        order = segment_order(joint.importance, joint.layout.group)  # shared by Eq. 4 and matching
        inferior = select_local(joint.importance, order, candidates, joint.layout,
                                None if selection == "global" else gamma)
        partner, evolved = match(order, inferior, joint.layout)
        cross_pool(joint, partner, evolved, paper_rule(alpha, level))
        counts.update(kind_counts(pools, evolved))
    return host_counts(counts) if sync else counts


def kind_counts(pools: Mapping[str, Pool], evolved: Tensor) -> dict[str, Tensor]:
    """Evolved units per kind, `evolved` being the mask over the pools joined in their order."""
    parts = evolved.split([pool.importance.numel() for pool in pools.values()])
    return dict(zip(pools, torch.stack([part.sum() for part in parts])))


def host_counts(counts: Mapping[str, Tensor | int]) -> dict[str, int]:
    """Plain ints from per-kind device counts, with one host synchronisation."""
    tensors = {k: v for k, v in counts.items() if isinstance(v, Tensor)}
    values = dict(zip(tensors, torch.stack(list(tensors.values())).tolist())) if tensors else {}
    return {k: int(values.get(k, v)) for k, v in counts.items()}


# ---------------------------------------------------------------------------------------------
# Training hook
# ---------------------------------------------------------------------------------------------

PAPER_DEFAULTS: dict[str, Any] = {
    "r_hat": 0.05, "beta": 2.5, "eta": 15.0, "gamma": 0.05, "milestones": (60, 120),
    "matching": "forward", "conv": True, "bn": True, "interval": 1, "interval_unit": "epoch",
    "selection": "global+local", "alpha": "adaptive", "level": "element",
}

SCHEDULE_KEYS: tuple[str, ...] = ("interval", "interval_unit")

_PAPER_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "r_hat": lambda k, v: check_number(k, v, 0.0, 1.0),
    "beta": lambda k, v: check_number(k, v, 0.0, low_open=True),
    "eta": lambda k, v: check_number(k, v, 0.0, low_open=True),
    "gamma": lambda k, v: check_number(k, v, 0.0),
    "milestones": check_milestones,
    "matching": lambda k, v: check_choice(k, v, MATCHINGS),
    "conv": check_bool,
    "bn": check_bool,
    "interval": check_positive_int,
    "interval_unit": lambda k, v: check_choice(k, v, INTERVAL_UNITS),
    "selection": lambda k, v: check_choice(k, v, SELECTIONS),
    "alpha": check_alpha,
    "level": lambda k, v: check_choice(k, v, LEVELS),
}


def paper_hparams(given: Mapping[str, Any]) -> dict[str, Any]:
    """Validated paper hparams: defaults updated with `given`."""
    check_keys(given, PAPER_DEFAULTS, "paper")
    merged = {**PAPER_DEFAULTS, **given}
    return {key: _PAPER_CHECKS[key](key, value) for key, value in merged.items()}


class WeightEvolution:
    """Applies weight evolution to `model` every `interval` epochs or iterations.

    variant "paper": the paper's equations (hparams: see PAPER_DEFAULTS).
    variant "official": the authors' public script (see we.official.OFFICIAL_DEFAULTS).
    """

    def __init__(self, model: nn.Module, variant: str = "paper", **hparams: Any) -> None:
        self.model = model
        self._configure(check_choice("variant", variant, ("paper", "official")), hparams)
        self.steps = 0
        self.evolved = {kind: 0 for kind in KINDS}

    def _configure(self, variant: str, hparams: Mapping[str, Any]) -> None:
        self.variant = variant
        if variant == "paper":
            self.hparams = paper_hparams(hparams)
            self.official = None
        else:
            from we.official import OfficialEvolution

            schedule = {k: _PAPER_CHECKS[k](k, hparams.get(k, PAPER_DEFAULTS[k]))
                        for k in SCHEDULE_KEYS}
            self.official = OfficialEvolution(
                self.model, **{k: v for k, v in hparams.items() if k not in SCHEDULE_KEYS})
            self.hparams = {**self.official.hparams, **schedule}

    def rate(self, epoch: int) -> float:
        """Global selection rate of the paper variant at a 0-based epoch (Eq. 2)."""
        h = self.hparams
        return selection_rate(epoch, h["r_hat"], h["beta"], h["eta"], h["milestones"])

    def evolve_now(self, epoch: int, sync: bool = True) -> dict[str, int]:
        """One step regardless of the interval, at the rate of `epoch` (sync: see `evolve`)."""
        if self.official is not None:
            counts = self.official.step(epoch, sync=sync)
        else:
            h = self.hparams
            counts = evolve(self.model, self.rate(epoch), gamma=h["gamma"],
                            matching=h["matching"], conv=h["conv"], bn=h["bn"],
                            selection=h["selection"], alpha=h["alpha"], level=h["level"], sync=sync)
        self.steps += 1
        for kind, n in counts.items():
            self.evolved[kind] += n
        return counts

    def step(self, epoch: int, sync: bool = True) -> dict[str, int] | None:
        """Epoch hook, after epoch `epoch` (0-based); acts when (epoch + 1) % interval == 0."""
        if self.hparams["interval_unit"] != "epoch" or (epoch + 1) % self.hparams["interval"]:
            return None
        return self.evolve_now(epoch, sync)

    def step_iteration(self, iteration: int, epoch: int, sync: bool = True) -> dict[str, int] | None:
        """Iteration hook, after global iteration `iteration` (0-based) during `epoch`."""
        if self.hparams["interval_unit"] != "iter" or (iteration + 1) % self.hparams["interval"]:
            return None
        return self.evolve_now(epoch, sync)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: variant, hparams and counters."""
        hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()}
        state: dict[str, Any] = {"variant": self.variant, "hparams": hparams,
                                 "steps": self.steps, "evolved": {k: int(v) for k, v in self.evolved.items()}}
        if self.official is not None:
            state["official"] = self.official.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict(); its variant and hparams replace the current ones."""
        self._configure(state["variant"], state["hparams"])
        self.steps = int(state["steps"])
        self.evolved = {kind: int(state["evolved"].get(kind, 0)) for kind in KINDS}
        if self.official is not None:
            self.official.load_state_dict(state["official"])
