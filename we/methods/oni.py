"""Orthogonalization by Newton's Iteration (ONI; Huang et al., CVPR 2020) as a trainer plug-in (method=oni).

Every Conv2d weight is re-parameterised: the trained tensor V is mapped in every forward pass to
W = g * ONI(V), where ONI centres each filter, forms S = Zc Zc^T + eps I, divides it by its
Frobenius norm, runs T Newton iterations B <- 1.5 B - 0.5 B^3 S from B = I (B -> S^-1/2) and returns
B Zc / sqrt(||S||_F); g is a per-output-channel scale. Filters are orthogonalised in groups of at
most `oni_group_size` rows, never across the groups of a grouped convolution. A group with more
filters than inputs cannot have orthonormal rows and gets orthonormal columns instead (ONI of its
transpose). Depth-wise convolutions (one filter per group) are left as they are.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from we.methods.base import ConfigKey, Method, Preset


def newton_orthogonalise(z: Tensor, iters: int, eps: float) -> Tensor:
    """ONI of a batch of matrices `z` (groups, n, d) with n <= d: centred rows, (nearly) orthonormal.

    With T -> infinity the rows of the result are exactly orthonormal; a finite T stops short along
    badly conditioned directions, which is the control that ONI's T gives.
    """
    zc = z - z.mean(dim=-1, keepdim=True)
    n = zc.shape[-2]
    eye = torch.eye(n, dtype=z.dtype, device=z.device).expand(zc.shape[0], n, n)
    s = zc @ zc.transpose(-1, -2) + eps * eye
    norm = torch.linalg.matrix_norm(s, ord="fro", keepdim=True)
    s = s / norm
    b = eye
    for _ in range(iters):
        b = torch.baddbmm(b, b @ b @ b, s, beta=1.5, alpha=-0.5)
    return (b @ zc) / norm.sqrt()


def _orthogonalise_groups(z: Tensor, iters: int, eps: float) -> Tensor:
    """Row ONI when a group has no more rows than columns, else column ONI (ONI of the transpose)."""
    if z.shape[-2] > z.shape[-1]:
        return newton_orthogonalise(z.transpose(-1, -2), iters, eps).transpose(-1, -2)
    return newton_orthogonalise(z, iters, eps)


def oni_weight(weight: Tensor, conv_groups: int, group_size: int, iters: int, eps: float) -> Tensor:
    """ONI of a conv weight (out, in/groups, kh, kw), filters grouped by `group_size` within each conv group."""
    out = weight.shape[0]
    per_group = out // conv_groups
    g = per_group if group_size <= 0 else min(group_size, per_group)
    z = weight.reshape(conv_groups, per_group, -1)
    d = z.shape[-1]
    full = per_group // g * g
    parts = []
    if full:
        head = z[:, :full].reshape(conv_groups * (full // g), g, d)
        parts.append(_orthogonalise_groups(head, iters, eps).reshape(conv_groups, full, d))
    if full < per_group:
        parts.append(_orthogonalise_groups(z[:, full:], iters, eps))
    return torch.cat(parts, dim=1).reshape_as(weight)


class ONIWeight(nn.Module):
    """Parametrization of a Conv2d weight: V -> scale * ONI(V)."""

    def __init__(self, out_channels: int, conv_groups: int, group_size: int, iters: int, eps: float,
                 learnable_scale: bool, scale_init: float, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.conv_groups, self.group_size, self.iters, self.eps = conv_groups, group_size, iters, eps
        scale = torch.full((out_channels, 1, 1, 1), float(scale_init), device=device, dtype=dtype)
        if learnable_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def forward(self, weight: Tensor) -> Tensor:
        with torch.autocast(weight.device.type, enabled=False):  # Newton's iteration in full precision under amp
            return oni_weight(weight.float(), self.conv_groups, self.group_size, self.iters, self.eps) \
                * self.scale.float()

    def extra_repr(self) -> str:
        return f"T={self.iters}, group_size={self.group_size}, conv_groups={self.conv_groups}"


def is_depthwise(conv: nn.Conv2d) -> bool:
    """One filter per conv group: nothing to orthogonalise a filter against."""
    return conv.out_channels // conv.groups == 1


def apply_oni(model: nn.Module, group_size: int = 64, iters: int = 5, eps: float = 1e-5,
              learnable_scale: bool = True, scale_init: float = 1.414) -> list[str]:
    """Register the ONI parametrization on every Conv2d weight (depth-wise excepted); returns their names."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or is_depthwise(module) or parametrize.is_parametrized(module, "weight"):
            continue
        w = module.weight
        parametrize.register_parametrization(module, "weight", ONIWeight(
            module.out_channels, module.groups, group_size, iters, eps, learnable_scale, scale_init,
            device=w.device, dtype=w.dtype))
        names.append(name)
    return names


class ONIMethod(Method):
    """Conv weights orthogonalised by Newton's iteration in every forward pass; BN kept."""

    name = "oni"
    keys = {
        "oni_group_size": ConfigKey(int, 64, "filters orthogonalised together (0: all filters of a conv group)",
                                    minimum=0),
        "oni_iters": ConfigKey(int, 5, "Newton iterations T", minimum=0, strict=True),
        "oni_eps": ConfigKey(float, 1e-5, "added to the diagonal of S = Zc Zc^T", minimum=0),
        "oni_scale": ConfigKey(bool, True, "learnable per-channel scale (False: a fixed buffer)"),
        "oni_scale_init": ConfigKey(float, 1.414, "initial scale (the authors' NScale, sqrt 2)", minimum=0,
                                    strict=True),
    }
    presets = {"oni": Preset(paper="ONI")}
    sources = ("Huang et al., Controllable Orthogonalization in Training DNNs, CVPR 2020; the authors' "
               "ONINorm / ONI_Conv2d (huangleiBuaa/ONI)")

    @classmethod
    def cost(cls, config: dict[str, Any]) -> float:
        return 1.25  # every forward recomputes each conv weight: +23% per step measured (ResNet-56, CPU)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.layers: list[str] = []

    def prepare_model(self, model: nn.Module, cfg: Any) -> None:
        self.layers = apply_oni(model, group_size=cfg.oni_group_size, iters=cfg.oni_iters, eps=cfg.oni_eps,
                                learnable_scale=cfg.oni_scale, scale_init=cfg.oni_scale_init)
