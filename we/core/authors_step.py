"""Weight evolution as the authors' public training scripts perform it.

It differs from the paper (we.core.paper_step) in these points:
- selection rates per tensor kind with stage divisors (1, 2.5, 5) instead of beta ** (t - 1);
- a per-kind threshold th = sorted(pool)[int(len(pool) * rate)] instead of a unit count;
- per layer: high = #(scores >= th); when high < N the inferior count is #(scores <= lab * max),
  with a counter per tensor kind (shared by all layers, kept across epochs) that forces a count
  of 1 once it reaches (number of Conv2d modules) / ln_c; the count is capped at N - high;
- pairs: the k-th filter in descending order with the k-th of the inferior tail;
- crossover: kernel-height-1 convs and BN scalars blend whole units with L1 alpha; other convs
  change, slice by slice, every element equal to the weakest one s to 2ls / (l + s) (SIGNED);
- conv biases are never touched.

Flavours: "cifar" (the CIFAR script) and "imagenet" (its ImageNet script: conv pool scores are
not divided by the input channels, the BN-weight pool holds signed values, divisors (1, 2, 4),
eta 8, milestones (30, 60) and rates 0.02; that script reuses its BN rate for the bias pool,
which radio_bias = radio_bn reproduces). In both flavours the per-layer scores are Eq. 1 and
|v|, exactly as in the scripts. Ties in the descending order are broken by index.

Non-finite guard: where l + s == 0 the script would write nan or inf (0/0, x/0); here that slice
is left unchanged. Likewise a whole-unit blend whose L1 norms are both 0 leaves the unit as is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from we.core.checks import KINDS, check_bool, check_choice, check_keys, check_milestones, check_number
from we.core.crossover import Cross, cross_pool, crossover
from we.core.matching import unsort_pairs
from we.core.rate import sigmoid, training_stage
from we.core.units import (Layout, Pool, filter_importance, gather_units, host_counts, join_pools,
                           kind_counts, segment_order, write_pools)

AUTHORS_STEP_KINDS: tuple[str, ...] = ("conv_weight", "bn_weight", "bn_bias")
RATE_KEYS: dict[str, str] = {"conv_weight": "radio_conv", "bn_weight": "radio_bn",
                             "bn_bias": "radio_bias"}

FLAVOURS: dict[str, dict[str, Any]] = {
    "cifar": {"radio_conv": 0.2, "radio_bn": 0.05, "radio_bias": 0.05, "lab": 0.1, "ln_c": 2,
              "eta": 15.0, "milestones": (60, 120), "divisors": (1.0, 2.5, 5.0)},
    "imagenet": {"radio_conv": 0.02, "radio_bn": 0.02, "radio_bias": 0.02, "lab": 0.1, "ln_c": 2,
                 "eta": 8.0, "milestones": (30, 60), "divisors": (1.0, 2.0, 4.0)},
}
SWITCHES: dict[str, bool] = {"conv": True, "bn": True}  # Table 8's ablation switches (the script has none)
AUTHORS_STEP_DEFAULTS: dict[str, Any] = {"flavour": "cifar", **FLAVOURS["cifar"], **SWITCHES}


def authors_step_hparams(given: Mapping[str, Any]) -> dict[str, Any]:
    """Validated hparams: the flavour's defaults updated with `given`."""
    check_keys(given, AUTHORS_STEP_DEFAULTS, "official")
    flavour = check_choice("flavour", given.get("flavour", "cifar"), tuple(FLAVOURS))
    h = {"flavour": flavour, **FLAVOURS[flavour], **SWITCHES, **given}
    for key in SWITCHES:
        h[key] = check_bool(key, h[key])
    for key in RATE_KEYS.values():
        h[key] = check_number(key, h[key], 0.0, 1.0)
        if h[key] >= 1.0:
            raise ValueError(f"{key} must be < 1, got {h[key]!r}")
    h["lab"] = check_number("lab", h["lab"], 0.0)
    h["ln_c"] = check_number("ln_c", h["ln_c"], 0.0, low_open=True)
    h["eta"] = check_number("eta", h["eta"], 0.0, low_open=True)
    h["milestones"] = check_milestones("milestones", h["milestones"])
    divisors = tuple(h["divisors"]) if isinstance(h["divisors"], (list, tuple)) else None
    if divisors is None or len(divisors) != len(h["milestones"]) + 1:
        raise ValueError(f"divisors must list one divisor per stage "
                         f"({len(h['milestones']) + 1}), got {h['divisors']!r}")
    h["divisors"] = tuple(check_number("divisors", d, 0.0, low_open=True) for d in divisors)
    return h


def stage_rate(epoch: int, base: float, *, divisors: Sequence[float] = (1.0, 2.5, 5.0),
               eta: float = 15.0, milestones: Sequence[int] = (60, 120)) -> float:
    """The script's rate: (base / divisor of the stage) * sigmoid((epoch - e0) / eta)."""
    stage, e0 = training_stage(epoch, milestones)
    return (base / divisors[stage]) * sigmoid((epoch - e0) / eta)


def threshold(pool: Tensor, rate: float) -> Tensor:
    """th = sorted(pool)[int(len(pool) * rate)] (index clamped to the last element)."""
    index = min(int(pool.numel() * rate), pool.numel() - 1)
    return pool.kthvalue(index + 1).values


def inferior_counts(scores: Tensor, layout: Layout, th: Tensor, lab: float, counter: Tensor,
                    limit: float) -> tuple[Tensor, Tensor]:
    """(count of every layer, counter after the last): the script's high/count logic, layer after
    layer in module order, with its counter shared by the layers (a scan, done without a loop).

    Per layer: high = #(scores >= th); below = high < N; low = #(scores <= lab * max). A layer
    below with low > 0 counts low and resets the counter; one below with low == 0 bumps it and
    counts 1 when the bumped value reaches `limit` (then 0); other layers leave it. Capped at N - high.
    """
    n_layers, layer, sizes = len(layout.sizes), layout.layer, layout.layer_sizes
    zeros = torch.zeros(n_layers, dtype=torch.long, device=scores.device)
    high = zeros.index_add(0, layer, (scores >= th).long())
    top = scores.new_zeros(n_layers).scatter_reduce_(0, layer, scores, "amax", include_self=False)
    low = zeros.index_add(0, layer, (scores <= top.index_select(0, layer) * lab).long())
    below = high != sizes
    bump, reset = below & (low == 0), below & (low > 0)
    # Between resets the counter runs from `start` (the carried counter before the first reset,
    # 0 after one) through the bumps; the first bump that reaches the period m is forced, then
    # every m-th.
    period = max(1, math.ceil(limit))
    bumps = bump.long().cumsum(0)
    j = bumps - torch.where(reset, bumps, 0).cummax(0).values  # bumps since the last reset
    start = torch.where(reset.long().cumsum(0) > 0, 0, counter)
    first = (period - start).clamp(min=1)
    forced = bump & (j >= first) & ((j - first) % period == 0)
    after = torch.where(j < first, start + j, (j - first) % period)  # the counter after each layer
    count = torch.where(below, torch.where(forced, 1, low), 0)
    return torch.minimum(count, sizes - high), after[-1] if n_layers else counter


def pair_descending(scores: Tensor, count: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """(partner, evolved): in every layer, the k-th of the descending order feeds the k-th of its
    last `count` units (count: one per layer), for k < min(count, N - count); ties by index."""
    order = segment_order(scores, layout.layer, descending=True)
    n, start = layout.layer_size, layout.layer_start
    count = count.index_select(0, layout.layer)
    cut = n - count
    tail_rank = torch.arange(order.numel(), device=order.device) - start - cut  # rank inside the tail
    chosen = (tail_rank >= 0) & (tail_rank < torch.minimum(count, cut))
    return unsort_pairs(order, chosen, start + tail_rank)


def crossover_signed(inf: Tensor, dom: Tensor) -> Tensor:
    """The script's slice-wise crossover of a conv (kernel height > 1) on (units, slices, genes).

    Per slice: l = partner's element of largest |.|, s = own element of smallest |.| (first in
    flattened order); alpha = s / (s + l) signed; every element equal to s becomes
    l * alpha + s * (1 - alpha) = 2ls / (l + s). Slices with l + s == 0 are left unchanged.
    """
    s = inf.gather(-1, inf.abs().argmin(-1, keepdim=True))
    l = dom.gather(-1, dom.abs().argmax(-1, keepdim=True))
    total = s + l
    finite = total != 0
    alpha = s / torch.where(finite, total, 1)
    return torch.where(finite & (inf == s), l * alpha + s * (1 - alpha), inf)


_BLEND = functools.partial(crossover, alpha="adaptive", level="filter")


def authors_step_rule(shape: torch.Size) -> tuple[Cross, bool]:
    """The script's crossover of a layer: signed slice by slice for convs of kernel height > 1,
    else a whole-unit blend with L1 alpha."""
    return (crossover_signed, True) if len(shape) == 4 and shape[2] != 1 else (_BLEND, False)


def pool_scores(pool: Pool, kind: str, flavour: str) -> Tensor:
    """The values the script sorts for a kind's threshold."""
    if flavour == "imagenet" and kind == "conv_weight":
        return torch.cat([filter_importance(t, average=False) for t in pool.tensors])
    if flavour == "imagenet" and kind == "bn_weight":
        return torch.cat(pool.tensors)
    return pool.importance


def evolve_authors_step(model: nn.Module, rates: Mapping[str, float], *, lab: float = AUTHORS_STEP_DEFAULTS["lab"],
                        ln_c: float = AUTHORS_STEP_DEFAULTS["ln_c"], flavour: str = AUTHORS_STEP_DEFAULTS["flavour"],
                        conv: bool = SWITCHES["conv"], bn: bool = SWITCHES["bn"],
                        counters: dict[str, Tensor] | None = None, sync: bool = True) -> dict[str, int]:
    """One step of the script in place; returns the number of evolved units per kind
    (as device tensors with sync=False, so that the step never waits for the device).

    rates: per kind ("conv_weight", "bn_weight", "bn_bias"). counters: the per-kind counters,
    device tensors updated in place of the dict (a fresh zero counter when missing).
    """
    counters = {} if counters is None else counters
    limit = sum(isinstance(m, nn.Conv2d) for m in model.modules()) / ln_c
    counts: dict[str, Tensor | int] = {kind: 0 for kind in KINDS}
    with torch.no_grad():
        pools = gather_units(model, conv=conv, bn=bn)
        kinds = [kind for kind in AUTHORS_STEP_KINDS if kind in pools]
        if not kinds:
            return host_counts(counts) if sync else counts
        per_layer = []
        for kind in kinds:
            pool = pools[kind]
            th = threshold(pool_scores(pool, kind, flavour), rates[kind])
            counter = counters.get(kind)
            if counter is None:
                counter = torch.zeros((), dtype=torch.long, device=pool.importance.device)
            count, counters[kind] = inferior_counts(pool.importance, pool.layout, th, lab, counter, limit)
            per_layer.append(count)
        joint = join_pools([pools[kind] for kind in kinds])  # pairs and crossovers of all kinds at once
        partner, evolved = pair_descending(joint.importance, torch.cat(per_layer), joint.layout)
        cross_pool(joint, partner, evolved, authors_step_rule)
        write_pools({kind: pools[kind] for kind in kinds})
        counts.update(kind_counts({kind: pools[kind] for kind in kinds}, evolved))
    return host_counts(counts) if sync else counts


class AuthorsStep:
    """The script's per-epoch step with its state (the per-kind counters)."""

    def __init__(self, model: nn.Module, **hparams: Any) -> None:
        self.model = model
        self.hparams = authors_step_hparams(hparams)
        self.counters: dict[str, Tensor] = {}

    def rates(self, epoch: int) -> dict[str, float]:
        """Per-kind rates at a 0-based epoch."""
        h = self.hparams
        return {kind: stage_rate(epoch, h[key], divisors=h["divisors"], eta=h["eta"],
                                 milestones=h["milestones"]) for kind, key in RATE_KEYS.items()}

    def step(self, epoch: int, sync: bool = True) -> dict[str, int]:
        """One step at the rates of `epoch`."""
        h = self.hparams
        return evolve_authors_step(self.model, self.rates(epoch), lab=h["lab"], ln_c=h["ln_c"], flavour=h["flavour"],
                               conv=h["conv"], bn=h["bn"], counters=self.counters, sync=sync)

    def state_dict(self) -> dict[str, Any]:
        """The counters as plain ints."""
        return {"counters": {k: int(v) for k, v in self.counters.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counters on the model's device."""
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.counters = {k: torch.tensor(int(v), dtype=torch.long, device=device)
                         for k, v in state["counters"].items()}


__all__ = ["AUTHORS_STEP_DEFAULTS", "FLAVOURS", "AuthorsStep", "evolve_authors_step", "stage_rate",
           "threshold", "inferior_counts", "pair_descending", "crossover_signed", "authors_step_rule", "pool_scores"]
