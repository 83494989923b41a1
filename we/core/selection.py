"""Selection of the inferior units (Sec. 3.1): global W_tbd (Sec. 3.1.1) and the local test (Eq. 4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from we.core.units import Layout


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
