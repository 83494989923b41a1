"""Weight Evolution as a trainer plug-in (method=we): the paper's equations or the authors' script."""
from __future__ import annotations

from typing import Any, Optional

from we.core.checks import KINDS, VARIANTS
from we.core.hook import SCHEDULE_KEYS, WeightEvolution
from we.core.hparams import HPARAMS, HParam
from we.core.authors_step import SWITCHES
from we.errors import ConfigError
from we.methods.base import ConfigKey, Method, Preset, TrainContext

# The authors' step (we_variant official) has fixed behaviour; only we_conv / we_bn switch it, and
# we_interval / we_interval_unit schedule it as they schedule the paper's step.
AUTHORS_STEP_TAKES = (*SWITCHES, *SCHEDULE_KEYS)


def filled_at_resolution(h: HParam) -> bool:
    """Whether a run config leaves the hparam at None, to be filled from the dataset family (it has an
    ImageNet value of its own) or from the learning-rate schedule."""
    return h.imagenet is not None or h.from_schedule


def config_key(h: HParam) -> ConfigKey:
    """The run config key of a core hparam: its type, bounds and meaning; the paper's default, or None
    where a run fills it in (see `filled_at_resolution`)."""
    filled = filled_at_resolution(h)
    doc = h.doc + (f" ({h.default:g} CIFAR, {h.imagenet:g} ImageNet)" if h.imagenet is not None else "") + (
        " (None: the lr drops)" if h.from_schedule else "")
    default = list(h.default) if isinstance(h.default, tuple) else h.default
    return ConfigKey(Optional[h.type] if filled else h.type, None if filled else default, doc, h.choices,
                     h.minimum, h.strict, h.maximum, check=h.check)


# The keys that have no effect with we_variant official (their fixed default is the only value allowed there).
AUTHORS_STEP_FIXED = tuple(h.config_key for name, h in HPARAMS.items()
                       if name not in AUTHORS_STEP_TAKES and not filled_at_resolution(h))
# The metrics column of each kind's evolved units in an epoch's row (summed over the epoch's steps).
COUNT_COLUMNS: dict[str, str] = {kind: f"we_{kind}" for kind in KINDS}


def stage_starts(values: dict[str, Any]) -> list[int]:
    """The epochs at which the learning rate drops: Eq. 2's stages follow them."""
    if values["schedule"] == "multistep":
        return list(values["lr_milestones"])
    if values["schedule"] == "step":
        # Eq. 2 has stages t = 1, 2, 3 in the paper; the authors' script's third divisor covers the rest.
        return [m for m in range(values["lr_step"], values["epochs"], values["lr_step"])]
    return []


def we_hparams(cfg: Any) -> dict[str, Any]:
    """WeightEvolution keyword arguments from the run config's `we_*` keys."""
    if cfg.we_variant == "official":
        return {"flavour": "imagenet" if cfg.dataset == "imagenet" else "cifar",
                **{name: getattr(cfg, HPARAMS[name].config_key) for name in AUTHORS_STEP_TAKES}}
    return {name: getattr(cfg, h.config_key) for name, h in HPARAMS.items()}


class WEMethod(Method):
    """Evolves inferior weights after each epoch (or every N iterations), we_variant paper or official."""

    name = "we"
    keys = {
        "we_variant": ConfigKey(str, "paper", "paper (the equations) | official (the authors' script)",
                                choices=VARIANTS),
        **{h.config_key: config_key(h) for h in HPARAMS.values()},
    }
    recipe_defaults = {  # Sec. 4.1.2
        "cifar": {h.config_key: h.default for h in HPARAMS.values() if h.imagenet is not None},
        "imagenet": {h.config_key: h.imagenet for h in HPARAMS.values() if h.imagenet is not None},
    }
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
        for h in HPARAMS.values():
            if h.from_schedule and values[h.config_key] is None:
                values[h.config_key] = stage_starts(values)

    @classmethod
    def check(cls, cfg: Any) -> None:
        if cfg.method == cls.name and cfg.we_variant == "official":
            for key in AUTHORS_STEP_FIXED:
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
        if self.evolution.authors_step is not None:  # the authors' script has one rate per kind
            rates = {f"we_rate_{k}": r for k, r in self.evolution.authors_step.rates(epoch).items()}
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
