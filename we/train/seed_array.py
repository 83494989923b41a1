"""K same-shaped models of one run's seeds as one fused model (`torch.func`), and the views that keep each seed's own.

`SeedArray(models)` stacks the members' parameters and buffers (`stack_module_state`, member k at
index k of every tensor) and runs them as one model: `vmap` of `functional_call` over the stacked
tensors, each member on its own batch (training) or all on the same batch (evaluation). BatchNorm in
train mode updates each member's running statistics in its slice, as the member's own module would.

After stacking, every member module's parameters and buffers are *views* of its slice: a method
hook that edits a member's weights in place (Weight Evolution's step) edits the stacked tensors,
and the fused optimizer's in-place step is seen by every member module. One SGD over the stacked
parameters is elementwise the K members' SGDs (equal hyper-parameters, one learning rate);
`member_optimizer_state` / `load_member_optimizer_state` move a member's momentum between the fused
optimizer and the member's own (solo) optimizer, whose state_dict is what the member's last.pt holds.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class SeedArray:
    """The fused model of `models` (K modules of one architecture, on one device)."""

    def __init__(self, models: list[nn.Module]) -> None:
        self.size = len(models)
        self.members = models
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        for k, model in enumerate(models):  # every member module now reads and writes its slice
            for name, p in model.named_parameters():
                p.data = self.params[name].data[k]
            for name, b in model.named_buffers():
                owner, _, attr = name.rpartition(".")
                model.get_submodule(owner)._buffers[attr] = self.buffers[name][k]

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def _call(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor):
        return functional_call(self.base, (params, buffers), (x,))

    def train_step(self, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One fused SGD step on the members' batches `x` (K, B, ...) and labels `y` (K, B): (losses (K,), outputs)."""
        self.base.train()

        def member_loss(params, buffers, xb, yb):
            out = self._call(params, buffers, xb)
            return F.cross_entropy(out, yb), out

        losses, out = vmap(member_loss)(self.params, self.buffers, x, y)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # d(sum)/d(loss_k) = 1: member k's gradient is its own loss's
        optimizer.step()
        return losses.detach(), out.detach()

    @torch.no_grad()
    def evaluate(self, data, device: torch.device) -> list[dict[str, float]]:
        """Every member's test loss, top-1 and top-5 (%), as `we.train.optim.evaluate` computes them."""
        self.base.eval()
        k = self.size
        loss_sum = torch.zeros(k, device=device)
        top1 = torch.zeros(k, device=device, dtype=torch.long)
        top5 = torch.zeros(k, device=device, dtype=torch.long)
        seen = 0
        for x, y in data.test:
            out = vmap(self._call, in_dims=(0, 0, None))(self.params, self.buffers, x).float()
            loss_sum += vmap(lambda o: F.cross_entropy(o, y, reduction="sum"))(out)
            pred = out.topk(min(5, out.shape[-1]), dim=-1).indices
            hit = pred == y[None, :, None]
            top1 += hit[..., 0].sum(-1)
            top5 += hit.any(dim=-1).sum(-1)
            seen += y.shape[0]
        return [{"test_loss": loss_sum[i].item() / seen, "test_top1": 100.0 * top1[i].item() / seen,
                 "test_top5": 100.0 * top5[i].item() / seen} for i in range(k)]

    def build_optimizer(self, build: Callable[[Any], torch.optim.Optimizer]) -> torch.optim.Optimizer:
        """The fused optimizer, built by the run's own builder (`build(model)` reads `model.parameters()`)."""
        return build(SimpleNamespace(parameters=self.parameters))

    def member_optimizer_state(self, fused: torch.optim.Optimizer, k: int, optimizer: torch.optim.Optimizer) -> None:
        """Member k's slice of the fused optimizer's state into its own optimizer (whose params are its views)."""
        for (name, p) in self.members[k].named_parameters():
            state = fused.state.get(self.params[name])
            if state:
                optimizer.state[p] = {key: _member(v, k, self.size) for key, v in state.items()}

    def load_member_optimizer_states(self, fused: torch.optim.Optimizer, optimizers: list[torch.optim.Optimizer]) -> None:
        """The members' own optimizer states (loaded from their checkpoints) stacked into the fused optimizer."""
        named = [dict(m.named_parameters()) for m in self.members]
        for name, stacked in self.params.items():
            states = [opt.state.get(named[k][name]) for k, opt in enumerate(optimizers)]
            if not all(states):
                continue
            fused.state[stacked] = {key: _stack([s[key] for s in states]) for key in states[0]}


def _member(value: Any, k: int, size: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
        return value[k].clone()
    return copy.deepcopy(value)


def _stack(values: list[Any]) -> Any:
    if all(isinstance(v, torch.Tensor) for v in values) and values[0].dim() > 0:
        return torch.stack(values)
    return values[0]


def has_random_layers(model: nn.Module) -> bool:
    """Whether training draws random numbers inside the forward pass (dropout), which a fused array cannot
    draw as the members' solo runs do."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())
