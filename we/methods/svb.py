"""Singular Value Bounding (SVB; Jia et al., CVPR 2017) as a trainer plug-in (method=svb).

After every `svb_interval` epochs (never after the last), every Conv2d and Linear weight, seen as
the matrix (out, in * kh * kw), has its singular values clipped to [1/(1+eps), 1+eps]. A grouped
convolution is the block-diagonal matrix of its groups, so each group's (out/g, in/g * kh * kw)
block is bounded; for a depth-wise convolution that bounds each filter's norm. Optionally (BBN) the
BatchNorm scales are bounded around their layer mean: gamma/std in the paper's form, gamma alone in
the authors' script's default.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from we.methods.base import ConfigKey, Method, Preset, TrainContext


def weight_blocks(module: nn.Module) -> Tensor:
    """The weight of a Conv2d or Linear as a batch of matrices (groups, out/groups, fan-in) (a view)."""
    w = module.weight
    groups = getattr(module, "groups", 1)
    return w.reshape(groups, w.shape[0] // groups, -1)


@torch.no_grad()
def bound_singular_values(module: nn.Module, eps: float) -> int:
    """Clip the singular values of the module's weight blocks to [1/(1+eps), 1+eps] in place.

    Blocks already inside the band (up to the rounding of the weight's dtype) are left bit-for-bit
    untouched, so a second pass changes nothing. Returns the number of singular values that were
    outside the band.
    """
    lo, hi = 1.0 / (1.0 + eps), 1.0 + eps
    blocks = weight_blocks(module)
    slack = 64 * torch.finfo(blocks.dtype).eps
    u, s, vh = torch.linalg.svd(blocks.double(), full_matrices=False)
    outside = (s < lo * (1 - slack)) | (s > hi * (1 + slack))
    changed = outside.any(dim=-1)
    if not changed.any():
        return 0
    bounded = (u * s.clamp(lo, hi).unsqueeze(-2)) @ vh
    new = torch.where(changed[:, None, None], bounded.to(blocks.dtype), blocks)
    module.weight.copy_(new.reshape_as(module.weight))
    return int(outside.sum())


@torch.no_grad()
def bound_bn_scales(bn: nn.modules.batchnorm._BatchNorm, eps: float, mode: str = "bbn") -> int:
    """Bound a BatchNorm layer's scales to [m/(1+eps), m(1+eps)] around their mean m; returns how many moved.

    mode "bbn": the scale is gamma / sqrt(running_var + bn.eps), the layer's effective per-channel
    gain (the paper's BBN); mode "rel": the scale is gamma.
    """
    if bn.weight is None:
        return 0
    factor = 1.0 + eps
    if mode == "bbn" and bn.running_var is not None:
        std = torch.sqrt(bn.running_var + bn.eps)
    else:
        std = torch.ones_like(bn.weight)
    r = bn.weight / std
    m = r.mean()
    lo, hi = m / factor, m * factor
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)  # a negative mean flips the band
    outside = (r < lo) | (r > hi)
    if not outside.any():
        return 0
    bn.weight.copy_(torch.where(outside, torch.minimum(torch.maximum(r, lo), hi) * std, bn.weight))
    return int(outside.sum())


def svb_step(model: nn.Module, eps: float, bn: bool = False, bn_eps: float = 1.0,
             bn_mode: str = "bbn") -> dict[str, int]:
    """One bounding pass over the model: every Conv2d and Linear weight, then (optionally) every BN."""
    counts = {"clipped": 0, "layers": 0}
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            n = bound_singular_values(module, eps)
            counts["clipped"] += n
            counts["layers"] += int(n > 0)
    if bn:
        counts["bn_clipped"] = sum(bound_bn_scales(m, bn_eps, bn_mode) for m in model.modules()
                                   if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return counts


class SVBMethod(Method):
    """Bounds singular values of every conv and linear weight after each epoch (or every N epochs)."""

    name = "svb"
    keys = {
        "svb_eps": ConfigKey(float, 0.5, "singular values bounded to [1/(1+eps), 1+eps]", minimum=0),
        "svb_interval": ConfigKey(int, 1, "bound after every N epochs (never after the last)", minimum=0,
                                  strict=True),
        "svb_bn": ConfigKey(bool, False, "also bound BatchNorm scales (BBN)"),
        "svb_bn_eps": ConfigKey(float, 1.0, "BN scales bounded to [m/(1+eps), m(1+eps)] around their layer mean m",
                                minimum=0),
        "svb_bn_mode": ConfigKey(str, "bbn", "bbn (gamma/std, the paper) | rel (gamma, the authors' script default)",
                                 choices=("bbn", "rel")),
    }
    presets = {"svb": Preset(paper="SVB")}
    sources = ("Jia et al., Improving Training of Deep Neural Networks via Singular Value Bounding, CVPR 2017; "
               "the authors' Torch code (kui-jia/svb)")

    def on_epoch_end(self, ctx: TrainContext, epoch: int, last: bool) -> dict[str, float]:
        if last or (epoch + 1) % self.cfg.svb_interval:
            return {}
        counts = svb_step(ctx.model, self.cfg.svb_eps, bn=self.cfg.svb_bn, bn_eps=self.cfg.svb_bn_eps,
                          bn_mode=self.cfg.svb_bn_mode)
        return {f"svb_{k}": float(v) for k, v in counts.items()}

    def state_dict(self) -> dict[str, Any]:
        return {}
