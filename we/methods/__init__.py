"""Training-method plug-ins: one small hook protocol that the trainer calls.

A method sees the run through `TrainContext` and may act at four points: once before training,
after every optimizer step, at the end of every epoch, and by adding a term to the loss. The
baseline is the protocol with every hook empty.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from we.distributed import SINGLE, DistEnv

if TYPE_CHECKING:
    from we.config import Config


@dataclass
class TrainContext:
    """What a method may read or change: the model, its optimizer, the config and the device."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: "Config"
    device: torch.device
    steps_per_epoch: int
    data: Any = None  # the run's Data (train and test iterables), e.g. to evaluate further networks
    dist: DistEnv = SINGLE  # the process group (one process: SINGLE); `dist.training_module` wraps in DDP


class Method:
    """Baseline training: every hook does nothing. Subclasses override what they need."""

    name = "baseline"

    def __init__(self, cfg: "Config | None" = None) -> None:
        self.cfg = cfg

    def prepare_model(self, model: nn.Module, cfg: "Config") -> None:
        """Called once, right after the model is built and before the optimizer and any checkpoint load.

        A method that re-parameterises the model does it here, so that new parameters belong to
        `model.parameters()` (hence to the optimizer) and to `model.state_dict()` (hence to resume).
        """

    def on_train_start(self, ctx: TrainContext) -> None:
        """Called once, after model and optimizer exist and before the first (or resumed) epoch."""

    def after_optimizer_step(self, ctx: TrainContext, iteration: int, epoch: int) -> dict[str, float] | None:
        """Called after every optimizer step; `iteration` counts steps from 0 over the whole run."""
        return None

    def after_batch(self, ctx: TrainContext, inputs: torch.Tensor, targets: torch.Tensor, iteration: int,
                    epoch: int) -> None:
        """Called after every training step with that step's batch (e.g. to train further networks on it)."""

    def extra_loss(self, ctx: TrainContext, inputs: torch.Tensor, outputs: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor | None:
        """A term added to the task loss, or None."""
        return None

    def on_epoch_end(self, ctx: TrainContext, epoch: int, last: bool) -> dict[str, float]:
        """Called after the epoch's training and evaluation; returns metrics to log for the epoch."""
        return {}

    def summarize(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Entries added to (or replacing) the trainer's result.json summary of the epoch rows `history`."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


METHODS: dict[str, Callable[["Config"], Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        METHODS[name] = cls
        return cls
    return deco


register_method("baseline")(Method)


def create_method(cfg: "Config") -> Method:
    """The plug-in named by `cfg.method`, configured from `cfg`."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r} (known: {', '.join(METHODS)})")
    return METHODS[cfg.method](cfg)


from we.methods import we as _we  # noqa: E402,F401  (registers "we")
from we.methods import oni as _oni  # noqa: E402,F401  (registers "oni")
from we.methods import svb as _svb  # noqa: E402,F401  (registers "svb")
from we.methods import repr as _repr  # noqa: E402,F401  (registers "repr")
from we.methods import fg as _fg  # noqa: E402,F401  (registers "fg")
from we.methods import rl as _rl  # noqa: E402,F401  (registers "rl")
