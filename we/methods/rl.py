"""Retrospective loss (Jandial et al., KDD 2020) as a trainer plug-in (method=rl).

After `rl_warmup` epochs of plain training the loss becomes

    L = L_task + (kappa + 1) ||softmax(f(x)) - y|| - kappa ||softmax(f(x)) - softmax(f_past(x))||,

with y the one-hot target, the norm taken per sample (L1 by default) and averaged over the batch.
f_past is a frozen snapshot of the model, taken when the warm-up ends and refreshed every
`rl_update` epochs after that; it runs in eval mode (running BatchNorm statistics) under no_grad,
so no gradient reaches it.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from we.methods.base import ConfigKey, Method, Preset, TrainContext

NORM_ORDERS = {"l1": 1, "l2": 2}


def retrospective_loss(outputs: torch.Tensor, past_outputs: torch.Tensor, targets: torch.Tensor,
                       kappa: float = 4.0, norm: str = "l1") -> torch.Tensor:
    """(kappa + 1) ||p - y|| - kappa ||p - p_past|| averaged over the batch, p = softmax of the logits,
    y one-hot; `past_outputs` are the snapshot's logits and get no gradient."""
    order = NORM_ORDERS[norm]
    p = outputs.float().softmax(dim=1)
    p_past = past_outputs.detach().float().softmax(dim=1)
    y = F.one_hot(targets, num_classes=p.shape[1]).to(p.dtype)
    to_target = torch.linalg.vector_norm(p - y, ord=order, dim=1)
    to_past = torch.linalg.vector_norm(p - p_past, ord=order, dim=1)
    return ((kappa + 1.0) * to_target - kappa * to_past).mean()


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose parameters take no gradient."""
    snapshot = copy.deepcopy(model)
    for p in snapshot.parameters():
        p.grad = None
        p.requires_grad_(False)
    return snapshot.eval()


class RLMethod(Method):
    """Adds the retrospective term after the warm-up; refreshes the past snapshot every F epochs."""

    array_reason = "its loss term (extra_loss) needs the member's own forward pass"

    name = "rl"
    keys = {
        "rl_kappa": ConfigKey(float, 4.0, "kappa in (kappa + 1) |f(x) - y| - kappa |f(x) - f_past(x)|", minimum=0),
        "rl_norm": ConfigKey(str, "l1", "l1 | l2, per sample on softmax outputs vs one-hot targets",
                             choices=tuple(NORM_ORDERS)),
        "rl_warmup": ConfigKey(int, 10, "epochs of plain training before the retrospective term starts", minimum=0),
        "rl_update": ConfigKey(int, 4, "F, epochs between refreshes of the past snapshot", minimum=1),
    }
    presets = {"rl": Preset(paper="RL")}
    bench_overrides = {"rl_warmup": 0, "rl_update": 1}
    sources = ("Jandial et al., Retrospective Loss: Looking Back to Improve Training of Deep Neural Networks, "
               "KDD 2020 (no public code)")

    @classmethod
    def cost(cls, config: dict[str, Any]) -> float:
        return 1.33  # one extra forward (no backward) per step: about a third of a training step

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.kappa = cfg.rl_kappa
        self.norm = cfg.rl_norm
        self.warmup = cfg.rl_warmup
        self.update = cfg.rl_update
        self.past: nn.Module | None = None
        self.past_epoch: int | None = None  # epochs completed when the snapshot was taken
        self.model: nn.Module | None = None  # the trainer's model, once training has started
        self._pending: dict[str, Any] | None = None
        self._sum: torch.Tensor | None = None
        self._batches = 0

    def on_train_start(self, ctx: TrainContext) -> None:
        self.model = ctx.model
        self._sum = torch.zeros((), device=ctx.device)
        if self._pending is not None:
            self._load(self._pending, ctx.model)
            self._pending = None
        elif self.warmup == 0:
            self.refresh(ctx.model, 0)

    def refresh(self, model: nn.Module, epochs_done: int) -> None:
        """Take the past snapshot from the current model."""
        if self.past is None:
            self.past = frozen_copy(model)
        else:
            self.past.load_state_dict(model.state_dict())
        self.past_epoch = epochs_done

    def refreshes_after(self, epochs_done: int) -> bool:
        """Whether the snapshot is (re)taken once `epochs_done` epochs are complete."""
        return epochs_done >= self.warmup and (epochs_done - self.warmup) % self.update == 0

    def extra_loss(self, ctx: TrainContext, inputs: torch.Tensor, outputs: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor | None:
        if self.past is None:
            return None
        with torch.no_grad():
            past_outputs = self.past(inputs)
        loss = retrospective_loss(outputs, past_outputs, targets, self.kappa, self.norm)
        self._sum += loss.detach()
        self._batches += 1
        return loss

    def on_epoch_end(self, ctx: TrainContext, epoch: int, last: bool) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self._batches:
            metrics["rl_retro_loss"] = self._sum.item() / self._batches
            metrics["rl_past_epoch"] = float(self.past_epoch)
        self._sum.zero_()
        self._batches = 0
        if not last and self.refreshes_after(epoch + 1):
            self.refresh(ctx.model, epoch + 1)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        if self.model is None:
            return self._pending or {}
        return {"past": None if self.past is None else self.past.state_dict(), "past_epoch": self.past_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.model is None:
            self._pending = state
        else:
            self._load(state, self.model)

    def _load(self, state: dict[str, Any], model: nn.Module) -> None:
        if state.get("past") is None:
            self.past, self.past_epoch = None, None
            return
        self.past = frozen_copy(model)
        self.past.load_state_dict(state["past"])
        self.past_epoch = state["past_epoch"]
