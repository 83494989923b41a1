"""Matching of inferior units with dominant units of the same local group (Sec. 3.2.1)."""

from __future__ import annotations

import torch
from torch import Tensor

from we.core.units import Layout


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
