"""A plain per-filter, per-slice implementation of one paper step (Sec. 3, Algorithm 1).

It is slow and obviously follows the text; it serves as the oracle for tests and as the
baseline in benchmarks. It shares no code with the rest of we.core.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KINDS = ("conv_weight", "conv_bias", "bn_weight", "bn_bias")
CHOICES = {"matching": ("forward", "reverse"), "selection": ("global+local", "global", "local"),
           "level": ("element", "filter")}


def _layers(model: nn.Module, conv: bool, bn: bool) -> dict[str, list[tuple[torch.Tensor, list[float], int]]]:
    """Per kind, in module order: (tensor, importance of each unit, number of local groups)."""
    out: dict[str, list[tuple[torch.Tensor, list[float], int]]] = {k: [] for k in KINDS}
    for module in model.modules():
        if conv and isinstance(module, nn.Conv2d):
            w = module.weight.data
            groups = module.groups if 1 < module.groups < module.in_channels else 1
            imp = [float(w[j].abs().sum()) / w.shape[1] for j in range(w.shape[0])]  # Eq. 1
            out["conv_weight"].append((w, imp, groups))
            if module.bias is not None:
                out["conv_bias"].append((module.bias.data, [abs(float(v)) for v in module.bias.data], groups))
        elif bn and isinstance(module, nn.BatchNorm2d) and module.weight is not None:
            out["bn_weight"].append((module.weight.data, [abs(float(v)) for v in module.weight.data], 1))
            out["bn_bias"].append((module.bias.data, [abs(float(v)) for v in module.bias.data], 1))
    return out


def _alpha(alpha: float | str, inf: float, dom: float) -> float:
    """Eq. 6 (1 when both magnitudes are 0), or the fixed alpha."""
    if alpha != "adaptive":
        return float(alpha)
    return 1.0 if inf + dom == 0 else inf / (inf + dom)


def evolve_reference(model: nn.Module, rate: float, *, gamma: float = 0.05,
                     matching: str = "forward", conv: bool = True, bn: bool = True,
                     selection: str = "global+local", alpha: float | str = "adaptive",
                     level: str = "element") -> dict[str, int]:
    """One paper step in place, with Python loops; returns evolved units per kind."""
    given = {"matching": matching, "selection": selection, "level": level}
    unknown = {key: value for key, value in given.items() if value not in CHOICES[key]}
    if unknown:
        raise ValueError(f"evolve_reference knows no {unknown}")
    counts = {k: 0 for k in KINDS}
    with torch.no_grad():
        for kind, layers in _layers(model, conv, bn).items():
            # Global selection: the floor(rate * P) least important units of the pool.
            pool = [(imp, li, j) for li, (_, imps, _) in enumerate(layers) for j, imp in enumerate(imps)]
            ranked = sorted(range(len(pool)), key=lambda i: pool[i][0])  # stable
            tbd = {(pool[i][1], pool[i][2]) for i in ranked[:math.floor(rate * len(pool))]}
            for li, (tensor, imps, groups) in enumerate(layers):
                snapshot = tensor.clone()
                n = len(imps) // groups
                for g in range(groups):
                    units = list(range(g * n, (g + 1) * n))
                    top = max(imps[j] for j in units)
                    inferior = []
                    for j in units:
                        candidate = selection == "local" or (li, j) in tbd
                        relative_ok = selection == "global" or (top > 0 and imps[j] / top < gamma)
                        if candidate and relative_ok:
                            inferior.append(j)
                    inferior.sort(key=lambda j: imps[j])
                    c = min(len(inferior), n - len(inferior))
                    ascending = sorted(units, key=lambda j: imps[j])
                    dominant = ascending[n - c:]
                    if matching == "reverse":
                        dominant = dominant[::-1]
                    for j, d in zip(inferior[:c], dominant):
                        _cross(tensor, snapshot, j, d, alpha, level)
                        counts[kind] += 1
    return counts


def _cross(tensor: torch.Tensor, snapshot: torch.Tensor, j: int, d: int, alpha: float | str,
           level: str) -> None:
    """Eqs. 5-6 for inferior unit j and dominant unit d, reading `snapshot`."""
    inf, dom = snapshot[j], snapshot[d]
    if inf.dim() == 0:
        a = _alpha(alpha, abs(float(inf)), abs(float(dom)))
        tensor[j] = a * float(inf) + (1 - a) * float(dom)
        return
    if level == "filter":
        a = _alpha(alpha, float(inf.abs().sum()), float(dom.abs().sum()))
        tensor[j] = a * inf.double() + (1 - a) * dom.double()
        return
    for s in range(inf.shape[0]):
        w_inf = inf[s].flatten().tolist()
        w_dom = dom[s].flatten().tolist()
        q = min(range(len(w_inf)), key=lambda k: abs(w_inf[k]))  # first smallest |.|
        p = max(range(len(w_dom)), key=lambda k: abs(w_dom[k]))  # first largest |.|
        a = _alpha(alpha, abs(w_inf[q]), abs(w_dom[p]))
        width = inf.shape[-1]
        tensor[j, s, q // width, q % width] = a * w_inf[q] + (1 - a) * w_dom[p]
