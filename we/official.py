"""Weight evolution as the authors' public training scripts perform it.

It differs from the paper (we.evolution) in these points:
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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from we.evolution import (KINDS, check_bool, check_choice, check_keys, check_milestones, check_number,
                          Pool, crossover, filter_importance, gather_units, host_counts,
                          sigmoid, training_stage, unit_slices)

OFFICIAL_KINDS: tuple[str, ...] = ("conv_weight", "bn_weight", "bn_bias")
RATE_KEYS: dict[str, str] = {"conv_weight": "radio_conv", "bn_weight": "radio_bn",
                             "bn_bias": "radio_bias"}

FLAVOURS: dict[str, dict[str, Any]] = {
    "cifar": {"radio_conv": 0.2, "radio_bn": 0.05, "radio_bias": 0.05, "lab": 0.1, "ln_c": 2,
              "eta": 15.0, "milestones": (60, 120), "divisors": (1.0, 2.5, 5.0)},
    "imagenet": {"radio_conv": 0.02, "radio_bn": 0.02, "radio_bias": 0.02, "lab": 0.1, "ln_c": 2,
                 "eta": 8.0, "milestones": (30, 60), "divisors": (1.0, 2.0, 4.0)},
}
SWITCHES: dict[str, bool] = {"conv": True, "bn": True}  # Table 8's ablation switches (the script has none)
OFFICIAL_DEFAULTS: dict[str, Any] = {"flavour": "cifar", **FLAVOURS["cifar"], **SWITCHES}


def official_hparams(given: Mapping[str, Any]) -> dict[str, Any]:
    """Validated hparams: the flavour's defaults updated with `given`."""
    check_keys(given, OFFICIAL_DEFAULTS, "official")
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
    return torch.sort(pool).values[index]


def inferior_count(scores: Tensor, th: Tensor, lab: float, counter: Tensor,
                   limit: float) -> tuple[Tensor, Tensor]:
    """(count, counter) of one layer: the script's high/count logic and its shared counter."""
    n = scores.numel()
    high = (scores >= th).sum()
    low = (scores <= scores.max() * lab).sum()
    below = high != n
    bumped = counter + 1
    forced = below & (low == 0) & (bumped >= limit)
    count = torch.where(below, torch.where(forced, 1, low), 0)
    counter = torch.where(below & (low == 0), torch.where(forced, 0, bumped),
                          torch.where(below, 0, counter))
    return torch.minimum(count, n - high), counter


def pair_descending(scores: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """(partner, evolved): the k-th of the descending order feeds the k-th of the last `count`.

    Pairs exist for k < min(count, N - count); ties in the order are broken by index.
    """
    n = scores.numel()
    order = torch.argsort(scores, descending=True, stable=True)
    k = torch.arange(n, device=scores.device)
    cut = n - count
    tail_rank = k - cut  # rank inside the inferior tail
    chosen = (tail_rank >= 0) & (tail_rank < torch.minimum(count, cut))
    partner_sorted = order[tail_rank.clamp(0, n - 1)]
    partner = torch.empty_like(order).scatter_(0, order, torch.where(chosen, partner_sorted, order))
    evolved = torch.zeros_like(chosen).scatter_(0, order, chosen)
    return partner, evolved


def crossover_signed(weight: Tensor, partner: Tensor, evolved: Tensor) -> Tensor:
    """The script's slice-wise crossover of a conv (kernel height > 1), as a new tensor.

    Per slice h: l = partner's element of largest |.|, s = own element of smallest |.| (first
    in flattened order); alpha = s / (s + l) signed; every element equal to s becomes
    l * alpha + s * (1 - alpha) = 2ls / (l + s). Slices with l + s == 0 are left unchanged.
    """
    w = weight.detach().reshape(weight.shape[0], weight.shape[1], -1)
    dom = w[partner]
    s = w.gather(-1, w.abs().argmin(-1, keepdim=True))
    l = dom.gather(-1, dom.abs().argmax(-1, keepdim=True))
    total = s + l
    finite = total != 0
    alpha = s / torch.where(finite, total, 1)
    new = l * alpha + s * (1 - alpha)
    replace = evolved.view(-1, 1, 1) & finite & (w == s)
    return torch.where(replace, new, w).view_as(weight)


def pool_scores(pool: Pool, kind: str, flavour: str) -> Tensor:
    """The values the script sorts for a kind's threshold."""
    if flavour == "imagenet" and kind == "conv_weight":
        return torch.cat([filter_importance(t, average=False) for t in pool.tensors])
    if flavour == "imagenet" and kind == "bn_weight":
        return torch.cat(pool.tensors)
    return pool.importance


def evolve_official(model: nn.Module, rates: Mapping[str, float], *, lab: float = 0.1,
                    ln_c: float = 2, flavour: str = "cifar", conv: bool = True, bn: bool = True,
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
        for kind in OFFICIAL_KINDS:
            if kind not in pools:
                continue
            layers = pools[kind].layers
            th = threshold(pool_scores(pools[kind], kind, flavour), rates[kind])
            counter = counters.get(kind)
            if counter is None:
                counter = torch.zeros((), dtype=torch.long, device=layers[0].tensor.device)
            total = []
            for units in layers:
                count, counter = inferior_count(units.importance, th, lab, counter, limit)
                partner, evolved = pair_descending(units.importance, count)
                w = units.tensor
                if kind == "conv_weight" and w.shape[2] != 1:
                    units.tensor.copy_(crossover_signed(w, partner, evolved))
                else:
                    units_ = unit_slices(w.detach())
                    blended = crossover(units_, units_[partner], "adaptive", "filter")
                    units.tensor.copy_(torch.where(evolved.view(-1, 1, 1), blended, units_).view_as(w))
                total.append(evolved.sum())
            counters[kind] = counter
            counts[kind] = torch.stack(total).sum()
    return host_counts(counts) if sync else counts


class OfficialEvolution:
    """The script's per-epoch step with its state (the per-kind counters)."""

    def __init__(self, model: nn.Module, **hparams: Any) -> None:
        self.model = model
        self.hparams = official_hparams(hparams)
        self.counters: dict[str, Tensor] = {}

    def rates(self, epoch: int) -> dict[str, float]:
        """Per-kind rates at a 0-based epoch."""
        h = self.hparams
        return {kind: stage_rate(epoch, h[key], divisors=h["divisors"], eta=h["eta"],
                                 milestones=h["milestones"]) for kind, key in RATE_KEYS.items()}

    def step(self, epoch: int, sync: bool = True) -> dict[str, int]:
        """One step at the rates of `epoch`."""
        h = self.hparams
        return evolve_official(self.model, self.rates(epoch), lab=h["lab"], ln_c=h["ln_c"], flavour=h["flavour"],
                               conv=h["conv"], bn=h["bn"], counters=self.counters, sync=sync)

    def state_dict(self) -> dict[str, Any]:
        """The counters as plain ints."""
        return {"counters": {k: int(v) for k, v in self.counters.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counters on the model's device."""
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.counters = {k: torch.tensor(int(v), dtype=torch.long, device=device)
                         for k, v in state["counters"].items()}


__all__ = ["OFFICIAL_DEFAULTS", "FLAVOURS", "OfficialEvolution", "evolve_official", "stage_rate",
           "threshold", "inferior_count", "pair_descending", "crossover_signed", "pool_scores"]
