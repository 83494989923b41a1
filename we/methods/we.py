"""Weight Evolution as a trainer plug-in (method=we)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from we.methods import Method, TrainContext, register_method

if TYPE_CHECKING:
    from we.config import Config


def we_hparams(cfg: "Config") -> dict[str, Any]:
    """WeightEvolution keyword arguments from the run config's `we_*` keys."""
    if cfg.we_variant == "official":
        return dict(flavour="imagenet" if cfg.dataset == "imagenet" else "cifar", conv=cfg.we_conv, bn=cfg.we_bn)
    return dict(r_hat=cfg.we_r_hat, beta=cfg.we_beta, eta=cfg.we_eta, gamma=cfg.we_gamma,
                milestones=tuple(cfg.we_milestones), matching=cfg.we_matching, conv=cfg.we_conv,
                bn=cfg.we_bn, interval=cfg.we_interval, interval_unit=cfg.we_interval_unit,
                selection=cfg.we_selection, alpha=cfg.we_alpha, level=cfg.we_level)


@register_method("we")
class WEMethod(Method):
    """Evolves inferior weights after each epoch (or every N iterations), paper or official variant."""

    name = "we"

    def __init__(self, cfg: "Config"):
        self.cfg = cfg
        self.evolution = None
        self._pending: dict[str, Any] | None = None

    def on_train_start(self, ctx: TrainContext) -> None:
        from we.evolution import WeightEvolution

        self.evolution = WeightEvolution(ctx.model, variant=self.cfg.we_variant, **we_hparams(self.cfg))
        if self._pending is not None:
            self.evolution.load_state_dict(self._pending)
            self._pending = None

    def after_optimizer_step(self, ctx: TrainContext, iteration: int, epoch: int) -> dict[str, float] | None:
        return self.evolution.step_iteration(iteration, epoch, sync=False)  # counts stay on the device

    def on_epoch_end(self, ctx: TrainContext, epoch: int, last: bool) -> dict[str, float]:
        if last:  # nothing trains after the last epoch: the reported model is the evaluated one
            return {}
        counts = self.evolution.step(epoch, sync=False)
        if counts is None:
            return {}
        if self.evolution.official is not None:  # the authors' script has one rate per kind
            rates = {f"we_rate_{k}": r for k, r in self.evolution.official.rates(epoch).items()}
        else:
            rates = {"we_rate": self.evolution.rate(epoch)}
        return {**rates, **{f"we_{k}": v for k, v in counts.items()}}

    def state_dict(self) -> dict[str, Any]:
        return self.evolution.state_dict() if self.evolution is not None else (self._pending or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.evolution is None:
            self._pending = state
        else:
            self.evolution.load_state_dict(state)
