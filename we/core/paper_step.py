"""One Weight Evolution step as printed in the paper (Lin et al., ACM MM 2021, Sec. 3).

A step gathers four pools of units over the whole network (Conv2d filters, Conv2d bias
scalars, BatchNorm2d weight scalars, BatchNorm2d bias scalars), selects the inferior units
globally (Sec. 3.1.1) and locally (Eq. 4), matches them with dominant units of the same layer
or group (Sec. 3.2.1) and crosses them over (Eqs. 5-6). Selection and matching run on all
pools and layers at once (one sort per step); crossover touches only the evolved units on the
CPU, and whole classes of same-shaped units elsewhere, so a step never waits for an accelerator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from we.core.checks import KINDS, Alpha, check_number
from we.core.crossover import cross_pool, paper_step_rule
from we.core.hparams import PAPER_STEP_DEFAULTS as D, check_hparam
from we.core.matching import match_forward, match_reverse
from we.core.selection import select_global, select_local
from we.core.units import gather_units, host_counts, join_pools, kind_counts, segment_order, write_pools


def evolve(model: nn.Module, rate: float, *, gamma: float = D["gamma"], matching: str = D["matching"],
           conv: bool = D["conv"], bn: bool = D["bn"], selection: str = D["selection"],
           alpha: Alpha = D["alpha"], level: str = D["level"], sync: bool = True) -> dict[str, int]:
    """One weight-evolution step in place; returns the number of evolved units per kind.
    ValueError naming the model's class when it has no layer to evolve (see we.core.layers).

    sync=False returns the counts as device tensors instead of ints, so the step never waits
    for the device (the caller reads them when it synchronises anyway).

    selection: "global+local" (WE), "global" (WE-G: W_tbd is inferior, no gamma test) or
    "local" (WE-L: gamma test on every unit, no global pool). alpha: "adaptive" (Eq. 6) or a
    fixed float in [0, 1]. level: "element" (WE) or "filter" (filter-level-GL). Each is checked by
    its row of we.core.hparams.HPARAMS.
    """
    rate = check_number("rate", rate, 0.0, 1.0)
    gamma, matching, conv, bn, selection, alpha, level = (check_hparam(k, v) for k, v in (
        ("gamma", gamma), ("matching", matching), ("conv", conv), ("bn", bn), ("selection", selection),
        ("alpha", alpha), ("level", level)))
    match = match_forward if matching == "forward" else match_reverse

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
        cross_pool(joint, partner, evolved, paper_step_rule(alpha, level))
        write_pools(pools)
        counts.update(kind_counts(pools, evolved))
    return host_counts(counts) if sync else counts
