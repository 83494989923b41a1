"""Optimisation pieces of a run: the optimizer, the learning-rate schedule, and the evaluation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from we.train.config import Config


def build_optimizer(cfg: Config, model: torch.nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    """SGD with the recipe's momentum, weight decay and nesterov, at `lr` (default: cfg.lr)."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr if lr is None else lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.lr_milestones, gamma=cfg.lr_gamma)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, gamma=cfg.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)


@torch.no_grad()
def evaluate(cfg: Config, model: torch.nn.Module, data, fmodel: torch.nn.Module,
             device: torch.device) -> dict[str, float]:
    """Test loss, top-1 and top-5 (%) of `model` (run through `fmodel`, its compiled or wrapped form)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in data.test:
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            out = fmodel(x)
        out = out.float()
        loss_sum += F.cross_entropy(out, y, reduction="sum")
        k = min(5, out.shape[1])
        pred = out.topk(k, dim=1).indices
        hit = pred == y[:, None]
        top1 += hit[:, 0].sum()
        top5 += hit.any(dim=1).sum()
        seen += y.shape[0]
    return {"test_loss": loss_sum.item() / seen, "test_top1": 100.0 * top1.item() / seen,
            "test_top5": 100.0 * top5.item() / seen}
