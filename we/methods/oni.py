"""Orthogonalization by Newton's Iteration (ONI; Huang et al., CVPR 2020) as a trainer plug-in (method=oni).

Every Conv2d weight is re-parameterised: the trained tensor V is mapped in every forward pass to
W = g * ONI(V), where ONI centres each filter, forms S = Zc Zc^T + eps I, divides it by its
Frobenius norm, runs T Newton iterations B <- 1.5 B - 0.5 B^3 S from B = I (B -> S^-1/2) and returns
B Zc / sqrt(||S||_F); g is a per-output-channel scale. Filters are orthogonalised in groups of at
most `oni_group_size` rows, never across the groups of a grouped convolution. A group with more
filters than inputs cannot have orthonormal rows and gets orthonormal columns instead (ONI of its
transpose). Depth-wise convolutions (one filter per group) are left as they are, and with
`skip_shortcut` so are the 1x1 convs of residual shortcuts (modules named `downsample` or
`shortcut`).

The recipe depends on the dataset family, as the authors' scripts: CIFAR (their Torch code's
defaults) groups of 64 filters, T = 5, every conv; ImageNet (their PyTorch ResNet scripts) one
group per conv, T = 2, the 1x1 downsample convs plain. T is capped at 6: the uncoupled Newton
iteration drifts from its float64 value on square groups from T of about 7-8 and overflows by
T of about 12-15 in float32.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from we.errors import ConfigError
from we.methods.base import ConfigKey, Method, Preset, TrainContext

MAX_ITERS = 6  # float32 Newton's iteration stays within 3e-5 of float64 up to T = 6 on every group shape tried
SHORTCUT_NAMES = ("downsample", "shortcut")  # residual projections: torchvision's ResNets, our CIFAR ResNets


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


def is_shortcut_1x1(name: str, conv: nn.Conv2d) -> bool:
    """A 1x1 conv inside a residual shortcut (a module path containing `downsample` or `shortcut`)."""
    return conv.kernel_size == (1, 1) and any(part in SHORTCUT_NAMES for part in name.split("."))


def apply_oni(model: nn.Module, group_size: int = 64, iters: int = 5, eps: float = 1e-5,
              learnable_scale: bool = True, scale_init: float = 1.414, skip_shortcut: bool = False) -> list[str]:
    """Register the ONI parametrization on every Conv2d weight (depth-wise, and with `skip_shortcut` the
    shortcuts' 1x1 convs, excepted); returns their names."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or is_depthwise(module) or parametrize.is_parametrized(module, "weight"):
            continue
        if skip_shortcut and is_shortcut_1x1(name, module):
            continue
        w = module.weight
        parametrize.register_parametrization(module, "weight", ONIWeight(
            module.out_channels, module.groups, group_size, iters, eps, learnable_scale, scale_init,
            device=w.device, dtype=w.dtype))
        names.append(name)
    return names


class ONIMethod(Method):
    """Conv weights orthogonalised by Newton's iteration in every forward pass; BN kept."""

    array_reason = "its conv weights are parametrised (orthogonalised in every forward pass), not plain stacked tensors"

    name = "oni"
    keys = {
        "oni_group_size": ConfigKey(Optional[int], None, "filters orthogonalised together (0: all filters of a "
                                    "conv group; None: 64 on CIFAR, 0 on ImageNet)", minimum=0),
        "oni_iters": ConfigKey(Optional[int], None, f"Newton iterations T, at most {MAX_ITERS} (None: 5 on CIFAR, "
                               "2 on ImageNet)", minimum=0, strict=True),
        "oni_skip_shortcut": ConfigKey(Optional[bool], None, "leave the 1x1 convs of residual shortcuts plain "
                                       "(None: False on CIFAR, True on ImageNet)"),
        "oni_eps": ConfigKey(float, 1e-5, "added to the diagonal of S = Zc Zc^T", minimum=0),
        "oni_scale": ConfigKey(bool, True, "learnable per-channel scale (False: a buffer fixed at oni_scale_init)"),
        "oni_scale_init": ConfigKey(float, 1.414, "initial scale (the authors' NScale, sqrt 2)", minimum=0,
                                    strict=True),
    }
    # CIFAR: ONI_Torch CNN_Cifar10.lua:46-48; ImageNet: resnet*_var_ONI.sh:15, models/resnet_var_ONI.py:117-119
    recipe_defaults = {
        "cifar": {"oni_group_size": 64, "oni_iters": 5, "oni_skip_shortcut": False},
        "imagenet": {"oni_group_size": 0, "oni_iters": 2, "oni_skip_shortcut": True},
    }
    identity_defaults = dict(recipe_defaults["cifar"])  # the plain defaults before the ImageNet recipe
    presets = {"oni": Preset(paper="ONI")}
    sources = ("Huang et al., Controllable Orthogonalization in Training DNNs, CVPR 2020; the authors' "
               "ONINorm / ONI_Conv2d (huangleiBuaa/ONI)")

    @classmethod
    def cost(cls, config: dict[str, Any]) -> float:
        return 1.25  # every forward recomputes each conv weight: +23% per step measured (ResNet-56, CPU)

    @classmethod
    def check(cls, cfg: Any) -> None:
        if cfg.oni_iters is not None and cfg.oni_iters > MAX_ITERS:
            raise ConfigError(f"config key 'oni_iters': at most {MAX_ITERS} (Newton's iteration drifts from T = 7 "
                              f"and overflows by T = 12-15 in float32; the authors use 2-5), got {cfg.oni_iters!r}")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.layers: list[str] = []
        self.model: nn.Module | None = None

    def prepare_model(self, model: nn.Module, cfg: Any) -> None:
        self.layers = apply_oni(model, group_size=cfg.oni_group_size, iters=cfg.oni_iters, eps=cfg.oni_eps,
                                learnable_scale=cfg.oni_scale, scale_init=cfg.oni_scale_init,
                                skip_shortcut=cfg.oni_skip_shortcut)

    @torch.no_grad()
    def on_train_start(self, ctx: TrainContext) -> None:
        """Every orthogonalised weight must be finite at the start (and after a resume)."""
        modules = dict(ctx.model.named_modules())
        for name in self.layers:
            if not bool(torch.isfinite(modules[name].weight).all()):
                raise RuntimeError(f"ONI weight of layer {name!r} is not finite (T={self.cfg.oni_iters}); "
                                   f"lower oni_iters")
