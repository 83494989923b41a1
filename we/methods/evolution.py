"""Weight Evolution as a trainer plug-in (method=we): the paper's equations or the authors' script."""
from __future__ import annotations

from typing import Any, Optional, Union

from we.core.checks import INTERVAL_UNITS, KINDS, LEVELS, MATCHINGS, SELECTIONS, VARIANTS
from we.core.evolution import WeightEvolution
from we.errors import ConfigError
from we.methods.base import ConfigKey, Method, Preset, TrainContext

# The authors' step (we_variant official) has fixed behaviour; only we_conv / we_bn switch it, and
# we_interval / we_interval_unit schedule it as they schedule the paper's step.
OFFICIAL_FIXED = ("we_r_hat", "we_gamma", "we_matching", "we_selection", "we_alpha", "we_level")
# The metrics column of each kind's evolved units in an epoch's row (summed over the epoch's steps).
COUNT_COLUMNS: dict[str, str] = {kind: f"we_{kind}" for kind in KINDS}


def stage_starts(values: dict[str, Any]) -> list[int]:
    """The epochs at which the learning rate drops: Eq. 2's stages follow them."""
    if values["schedule"] == "multistep":
        return list(values["lr_milestones"])
    if values["schedule"] == "step":
        # Eq. 2 has stages t = 1, 2, 3 in the paper; the official script's third divisor covers the rest.
        return [m for m in range(values["lr_step"], values["epochs"], values["lr_step"])]
    return []


def we_hparams(cfg: Any) -> dict[str, Any]:
    """WeightEvolution keyword arguments from the run config's `we_*` keys."""
    if cfg.we_variant == "official":
        return dict(flavour="imagenet" if cfg.dataset == "imagenet" else "cifar", conv=cfg.we_conv, bn=cfg.we_bn,
                    interval=cfg.we_interval, interval_unit=cfg.we_interval_unit)
    return dict(r_hat=cfg.we_r_hat, beta=cfg.we_beta, eta=cfg.we_eta, gamma=cfg.we_gamma,
                milestones=tuple(cfg.we_milestones), matching=cfg.we_matching, conv=cfg.we_conv,
                bn=cfg.we_bn, interval=cfg.we_interval, interval_unit=cfg.we_interval_unit,
                selection=cfg.we_selection, alpha=cfg.we_alpha, level=cfg.we_level)


class WEMethod(Method):
    """Evolves inferior weights after each epoch (or every N iterations), paper or official variant."""

    name = "we"
    keys = {
        "we_variant": ConfigKey(str, "paper", "paper (the equations) | official (the authors' script)",
                                choices=VARIANTS),
        "we_r_hat": ConfigKey(float, 0.05, "Eq. 2 base selection rate", minimum=0),
        "we_beta": ConfigKey(Optional[float], None, "Eq. 2 stage divisor (2.5 CIFAR, 2 ImageNet)"),
        "we_eta": ConfigKey(Optional[float], None, "Eq. 2 temperature (15 CIFAR, 8 ImageNet)", minimum=0, strict=True),
        "we_gamma": ConfigKey(float, 0.05, "Eq. 4 relative-importance threshold", minimum=0),
        "we_milestones": ConfigKey(Optional[list[int]], None, "Eq. 2 stage starts (None: the lr drops)"),
        "we_matching": ConfigKey(str, "forward", "forward | reverse (WE-RM, Table 6)", choices=MATCHINGS),
        "we_conv": ConfigKey(bool, True, "evolve Conv2d weight and bias (Table 8)"),
        "we_bn": ConfigKey(bool, True, "evolve BatchNorm2d weight and bias (Table 8)"),
        "we_interval": ConfigKey(int, 1, "evolve every N units of we_interval_unit", minimum=0, strict=True),
        "we_interval_unit": ConfigKey(str, "epoch", "epoch | iter", choices=INTERVAL_UNITS),
        "we_selection": ConfigKey(str, "global+local", "global+local | global (WE-G) | local (WE-L), Table 5",
                                  choices=SELECTIONS),
        "we_alpha": ConfigKey(Union[str, float], "adaptive", "adaptive (Eq. 6) | fixed float in [0, 1] (Figure 6)"),
        "we_level": ConfigKey(str, "element", "element | filter (filter-level-GL, Table 7)", choices=LEVELS),
    }
    recipe_defaults = {"cifar": {"we_beta": 2.5, "we_eta": 15.0},  # Sec. 4.1.2
                       "imagenet": {"we_beta": 2.0, "we_eta": 8.0}}
    presets = {
        "we": Preset(paper="WE"),
        "we_official": Preset({"we_variant": "official", "recipe": "official"}, "WE (authors' script)"),
        # the paper's full step where a grid's WE is the authors' (Tables 5-7 -official: the ablations' reference)
        "we_paper_step": Preset({"we_variant": "paper"}, "WE (paper's step)"),
        "we_global_only": Preset({"we_selection": "global"}, "WE-G"),  # Table 5
        "we_local_only": Preset({"we_selection": "local"}, "WE-L"),  # Table 5
        "we_reverse_matching": Preset({"we_matching": "reverse"}, "WE-RM"),  # Table 6
        "filter_level_gl": Preset({"we_level": "filter"}, "Filter-level-GL"),  # Table 7
        "we_without_bn": Preset({"we_bn": False}, "WE without BN"),  # Table 8
        "we_without_conv": Preset({"we_conv": False}, "WE without CONV"),  # Table 8
    }
    sources = ("Lin et al., ACM MM 2021, Sec. 3 (Eqs. 1-6, Algorithm 1) and Sec. 4.1.2 (settings); "
               "the authors' public CIFAR script for we_variant=official")

    @classmethod
    def resolve(cls, values: dict[str, Any]) -> None:
        if values["we_milestones"] is None:
            values["we_milestones"] = stage_starts(values)

    @classmethod
    def check(cls, cfg: Any) -> None:
        if isinstance(cfg.we_alpha, str) and cfg.we_alpha != "adaptive":
            raise ConfigError(f"config key 'we_alpha': {cfg.we_alpha!r} is not 'adaptive' or a float in [0, 1]")
        if isinstance(cfg.we_alpha, float) and not 0.0 <= cfg.we_alpha <= 1.0:
            raise ConfigError(f"config key 'we_alpha': must be in [0, 1], got {cfg.we_alpha!r}")
        if cfg.we_r_hat > 1:
            raise ConfigError(f"config key 'we_r_hat': must be in [0, 1], got {cfg.we_r_hat!r}")
        if cfg.we_beta is not None and cfg.we_beta < 1:
            raise ConfigError(f"config key 'we_beta': must be >= 1 (Eq. 2), got {cfg.we_beta!r}")
        ms = cfg.we_milestones
        if ms is not None and (any(m <= 0 for m in ms) or ms != sorted(set(ms))):
            raise ConfigError(f"config key 'we_milestones': must be strictly increasing positive epochs, got {ms!r}")
        if cfg.method == cls.name and cfg.we_variant == "official":
            for key in OFFICIAL_FIXED:
                value, default = getattr(cfg, key), cls.keys[key].default
                if value != default:
                    raise ConfigError(f"config key '{key}': {key}={value!r} has no effect with we_variant official "
                                      "(the authors' step has no such switch); use we_variant paper")

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.evolution: WeightEvolution | None = None
        self._pending: dict[str, Any] | None = None

    def on_train_start(self, ctx: TrainContext) -> None:
        self.evolution = WeightEvolution(ctx.model, variant=self.cfg.we_variant, **we_hparams(self.cfg))
        if self._pending is not None:
            self.evolution.load_state_dict(self._pending)
            self._pending = None

    def after_optimizer_step(self, ctx: TrainContext, iteration: int, epoch: int) -> dict[str, float] | None:
        counts = self.evolution.step_iteration(iteration, epoch, sync=False)  # counts stay on the device
        return None if counts is None else {COUNT_COLUMNS[k]: v for k, v in counts.items()}

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
        return {**rates, **{COUNT_COLUMNS[k]: v for k, v in counts.items()}}

    def state_dict(self) -> dict[str, Any]:
        return self.evolution.state_dict() if self.evolution is not None else (self._pending or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.evolution is None:
            self._pending = state
        else:
            self.evolution.load_state_dict(state)
