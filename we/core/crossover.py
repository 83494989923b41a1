"""Crossover of an inferior unit with its dominant partner (Sec. 3.2.2, Eqs. 5-6).

Element level (WE): in every slice the weakest gene takes a blend with the partner's strongest
gene; filter level: the whole unit is blended. On the CPU only the evolved rows are crossed
over; elsewhere whole classes of same-shaped units, so a step never waits for an accelerator.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from we.core.checks import Alpha
from we.core.hparams import PAPER_STEP_DEFAULTS as D
from we.core.units import Pool


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
    """`tensor` as (units, slices, genes): a conv filter has one slice per input channel, a scalar unit
    (a bias, a BatchNorm weight) one slice of one gene."""
    return tensor.reshape(tensor.shape[0], tensor.shape[1] if tensor.dim() > 1 else 1, -1)


def crossover(inf: Tensor, dom: Tensor, alpha: Alpha = D["alpha"], level: str = D["level"]) -> Tensor:
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


def paper_step_rule(alpha: Alpha, level: str) -> Rule:
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
    stack = torch.cat([unit_slices(t) for t in tensors])
    dom = stack.index_select(0, layout.class_row.index_select(0, partner.index_select(0, units)))
    keep = ~evolved.index_select(0, units).view(-1, 1, 1)
    new = torch.where(keep, stack, cross(stack, dom))
    torch._foreach_copy_(tensors, [p.view(t.shape) for p, t in zip(new.split(sizes), tensors)])


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
