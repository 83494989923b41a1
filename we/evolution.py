"""Weight Evolution as printed in the paper (Lin et al., ACM MM 2021, Sec. 3).

A step gathers four pools of units over the whole network (Conv2d filters, Conv2d bias
scalars, BatchNorm2d weight scalars, BatchNorm2d bias scalars), selects the inferior units
globally (Sec. 3.1.1) and locally (Eq. 4), matches them with dominant units of the same layer
or group (Sec. 3.2.1) and crosses them over (Eqs. 5-6). All work is vectorised per layer and
stays on the model's device; a step synchronises with the host once, to return its counts.
"""

from __future__ import annotations

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
    importance: Tensor
    groups: int  # local-selection groups: contiguous blocks of tensor.shape[0] // groups units


def filter_importance(weight: Tensor, average: bool = True) -> Tensor:
    """Importance of each output filter: sum(|w|) / weight.shape[1] (Eq. 1), or sum(|w|)."""
    l1 = weight.detach().abs().flatten(1).sum(1)
    return l1 / weight.shape[1] if average else l1


def local_groups(conv: nn.Conv2d) -> int:
    """Local groups of a conv: its groups for 1 < groups < in_channels, else one group."""
    return conv.groups if 1 < conv.groups < conv.in_channels else 1


def gather_units(model: nn.Module, conv: bool = True, bn: bool = True) -> dict[str, list[Units]]:
    """The four pools of a model, layers in module order; Linear layers are never included."""
    pools: dict[str, list[Units]] = {kind: [] for kind in KINDS}
    for name, module in model.named_modules():
        if conv and isinstance(module, nn.Conv2d):
            groups = local_groups(module)
            pools["conv_weight"].append(Units(f"{name}.weight", module.weight,
                                              filter_importance(module.weight), groups))
            if module.bias is not None:
                pools["conv_bias"].append(Units(f"{name}.bias", module.bias,
                                                module.bias.detach().abs(), groups))
        elif bn and isinstance(module, nn.BatchNorm2d) and module.weight is not None:
            pools["bn_weight"].append(Units(f"{name}.weight", module.weight,
                                            module.weight.detach().abs(), 1))
            pools["bn_bias"].append(Units(f"{name}.bias", module.bias,
                                          module.bias.detach().abs(), 1))
    return pools


# ---------------------------------------------------------------------------------------------
# Selection (Sec. 3.1)
# ---------------------------------------------------------------------------------------------

def select_global(importances: Sequence[Tensor], rate: float) -> list[Tensor]:
    """W_tbd: masks of the floor(rate * pool size) least important units of the pool (stable)."""
    pool = torch.cat([imp.reshape(-1) for imp in importances])
    n_tbd = math.floor(rate * pool.numel())  # Sec. 3.1.1, Algorithm 1 line 4
    tbd = torch.zeros_like(pool, dtype=torch.bool)
    tbd[torch.argsort(pool, stable=True)[:n_tbd]] = True
    return list(tbd.split([imp.numel() for imp in importances]))


def select_local(importance: Tensor, candidates: Tensor, groups: int,
                 gamma: float | None) -> Tensor:
    """Inferior units: candidates with importance / (group max) < gamma; all if gamma is None."""
    if gamma is None:
        return candidates
    imp = importance.reshape(groups, -1)
    relative = imp / imp.amax(dim=1, keepdim=True)  # Eq. 4 (0/0 = nan is never inferior)
    return candidates & (relative < gamma).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Matching (Sec. 3.2.1)
# ---------------------------------------------------------------------------------------------

def _match(importance: Tensor, inferior: Tensor, groups: int, reverse: bool) -> tuple[Tensor, Tensor]:
    """Pair the c = min(k, n - k) weakest inferior units of each group with its c strongest."""
    imp = importance.reshape(groups, -1)
    n = imp.shape[1]
    order = torch.argsort(imp, dim=1, stable=True)  # ascending importance, ties by index
    inf_sorted = inferior.reshape(groups, n).gather(1, order)
    k = inf_sorted.sum(1, keepdim=True)
    c = torch.minimum(k, n - k)
    rank = inf_sorted.cumsum(1) - 1  # rank among the inferior units, weakest first
    chosen = inf_sorted & (rank < c)
    partner_pos = (n - 1 - rank) if reverse else (n - c + rank)
    partner_sorted = order.gather(1, partner_pos.clamp(0, n - 1))
    partner = torch.empty_like(order).scatter_(1, order, torch.where(chosen, partner_sorted, order))
    evolved = torch.zeros_like(chosen).scatter_(1, order, chosen)
    offsets = torch.arange(groups, device=imp.device).unsqueeze(1) * n
    return (partner + offsets).reshape(-1), evolved.reshape(-1)


def match_forward(importance: Tensor, inferior: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """Forward matching: i-th weakest inferior <-> i-th of the c strongest, ascending.

    Returns (partner, evolved): the dominant unit of every evolved unit (itself otherwise) and
    the mask of evolved units, both indexed like `importance`.
    """
    return _match(importance, inferior, groups, reverse=False)


def match_reverse(importance: Tensor, inferior: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """Reverse matching (as in filter grafting): i-th weakest inferior <-> i-th strongest."""
    return _match(importance, inferior, groups, reverse=True)


# ---------------------------------------------------------------------------------------------
# Crossover (Sec. 3.2.2)
# ---------------------------------------------------------------------------------------------

def mix(inf: Tensor, dom: Tensor, alpha: Alpha, inf_size: Tensor, dom_size: Tensor) -> Tensor:
    """alpha * inf + (1 - alpha) * dom with alpha = |inf| / (|inf| + |dom|) if adaptive (Eq. 5-6).

    `inf_size` and `dom_size` are the magnitudes that define the adaptive alpha (alpha = 1,
    no change, where both are 0).
    """
    if alpha == "adaptive":
        total = inf_size + dom_size
        a = torch.where(total > 0, inf_size / torch.where(total > 0, total, 1), 1)
    else:
        a = alpha
    return a * inf + (1 - a) * dom  # Eq. 5


def crossover(weight: Tensor, partner: Tensor, evolved: Tensor, alpha: Alpha = "adaptive",
              level: str = "element") -> Tensor:
    """The evolved copy of `weight` (one unit per row); reads only the given snapshot.

    element: in every slice (input channel) of an evolved unit, its weakest element q takes
    alpha * w_q + (1 - alpha) * (strongest element p of the partner's slice) (Eqs. 5-6).
    filter: the whole unit becomes alpha * inf + (1 - alpha) * dom, alpha from L1 norms.
    Scalars are units with one slice of one element.
    """
    w = weight.detach().reshape(weight.shape[0], weight.shape[1] if weight.dim() > 1 else 1, -1)
    keep = ~evolved.view(-1, 1, 1)
    magnitude = w.abs()
    if level == "filter":
        l1 = magnitude.sum((1, 2), keepdim=True)
        new = mix(w, w[partner], alpha, l1, l1[partner])
        return torch.where(keep, w, new).view_as(weight)
    if w.shape[-1] == 1:  # 1x1 convs and scalars: each slice is a single gene (q = p = 0)
        return torch.where(keep, w, mix(w, w[partner], alpha, magnitude, magnitude[partner])).view_as(weight)
    q = magnitude.argmin(-1, keepdim=True)  # inferior gene of every slice
    p = magnitude.argmax(-1, keepdim=True)  # dominant gene of every slice, read through `partner`
    w_q, w_p = w.gather(-1, q), w.gather(-1, p)[partner]
    new_q = torch.where(keep, w_q, mix(w_q, w_p, alpha, w_q.abs(), w_p.abs()))
    return w.scatter(-1, q, new_q).view_as(weight)


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
        for kind, layers in gather_units(model, conv=conv, bn=bn).items():
            if not layers:
                continue
            if selection == "local":
                candidates = [torch.ones_like(u.importance, dtype=torch.bool) for u in layers]
            elif math.floor(rate * sum(u.importance.numel() for u in layers)) == 0:
                continue
            else:
                candidates = select_global([u.importance for u in layers], rate)
            total = []
            for bucket in same_shape_buckets(layers):
                # Layers of one shape and grouping are stacked: their groups stay independent.
                importance = torch.cat([layers[i].importance for i in bucket])
                groups = sum(layers[i].groups for i in bucket)
                inferior = select_local(importance, torch.cat([candidates[i] for i in bucket]), groups,
                                        None if selection == "global" else gamma)
                partner, evolved = match(importance, inferior, groups)
                tensors = [layers[i].tensor for i in bucket]
                new = crossover(torch.cat(tensors), partner, evolved, alpha, level)
                torch._foreach_copy_(tensors, list(new.split(tensors[0].shape[0])))
                total.append(evolved.sum())
            counts[kind] = torch.stack(total).sum()
    return host_counts(counts) if sync else counts


def same_shape_buckets(layers: Sequence[Units]) -> list[list[int]]:
    """Indices of layers grouped by (tensor shape, local groups), in module order."""
    buckets: dict[tuple[tuple[int, ...], int], list[int]] = {}
    for i, units in enumerate(layers):
        buckets.setdefault((tuple(units.tensor.shape), units.groups), []).append(i)
    return list(buckets.values())


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
