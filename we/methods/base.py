"""The plug-in protocol: what a training method may do to a run, and what it declares about itself.

A method sees the run through `TrainContext` and may act at four points: once before training,
after every optimizer step, at the end of every epoch, and by adding a term to the loss. The
baseline is the protocol with every hook empty.

A plug-in also owns all its knowledge, declared as class attributes: its config keys (`keys`, each
named `<name>_...`, a `we.keys.Key` with type, default, allowed values, range and check), its
per-recipe defaults, its checks across keys (`check`), the grid labels it answers to with their names in the paper (`presets`), its cost relative
to the baseline (`cost`) and where its choices come from (`sources`). Config, grids, reports and the
bench read all of it from the registry (`we.methods`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from we.keys import Key

ConfigKey = Key  # a run config key: the suite's one key spec (we.keys)


@dataclass(frozen=True)
class Preset:
    """A grid label of a method: the config keys it sets (besides `method`) and its name in the paper."""

    overrides: dict[str, Any] = field(default_factory=dict)
    paper: str = ""


@dataclass
class TrainContext:
    """What a method may read or change: the model, its optimizer, the config and the device, plus the
    trainer's own builders (so a method that trains further networks trains them like the trainer)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: Any  # the run's resolved Config (we.train.config)
    device: torch.device
    steps_per_epoch: int
    data: Any = None  # the run's Data (train and test iterables), e.g. to evaluate further networks
    dist: Any = None  # the process group (we.train.distributed.DistEnv); `dist.training_module` wraps in DDP
    build_model: Callable[[], nn.Module] | None = None  # a fresh model of the run (current RNG)
    build_optimizer: Callable[[nn.Module, float], torch.optim.Optimizer] | None = None  # (model, initial lr)
    build_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None  # the run's schedule, per epoch
    evaluate: Callable[[nn.Module, nn.Module], dict[str, float]] | None = None  # (model, its forward) -> test metrics
    # seed -> a train iterable (with .set_epoch) like the run's, same data, batch and shard, its own
    # order and augmentation stream (e.g. for further networks that draw their own batches)
    build_train_data: Callable[[int], Any] | None = None


class Method:
    """Baseline training: every hook does nothing. Subclasses override what they need."""

    name = "baseline"
    version = 1  # raised when the method's results change; a version > 1 enters the run identity
    keys: dict[str, ConfigKey] = {}
    recipe_defaults: dict[str, dict[str, Any]] = {}  # dataset family -> {key: value} for keys left at None
    # Keys whose default became None (per family) after runs were made: a run at the value they had as
    # a plain default leaves them out of its identity, so those runs keep their folders.
    identity_defaults: dict[str, Any] = {}
    presets: dict[str, Preset] = {"baseline": Preset(paper="Baseline")}
    bench_overrides: dict[str, Any] = {}  # config keys that make the method act within a short bench run
    sources = "plain SGD training with the recipe of the paper (Sec. 4.1.2) or of the authors' script"
    # None: the method trains in a seed array (we.train.array_run), its hooks acting on each seed's module;
    # else the one-line reason its runs train solo.
    array_reason: str | None = None

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg

    # ---- what the plug-in declares ---------------------------------------------------------------
    @classmethod
    def resolve(cls, values: dict[str, Any]) -> None:
        """Fill this method's keys that depend on other resolved keys (in place)."""

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Checks across keys that `ConfigKey` cannot express; raise ConfigError naming the key."""

    @classmethod
    def cost(cls, config: dict[str, Any]) -> float:
        """Training cost of a run with this resolved config, relative to the baseline's."""
        return 1.0

    # ---- hooks -----------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, cfg: Any) -> None:
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
