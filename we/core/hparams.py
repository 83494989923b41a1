"""Weight Evolution's hyper-parameters, each defined once: `HPARAMS`.

A row holds a hyper-parameter of the paper's step (Sec. 3) with its type, its default (the paper's
CIFAR setting, Sec. 4.1.2), its bounds or allowed values, its meaning, the value the paper sets for
ImageNet where that differs, and where the step uses it (`use`): the selection rate of Eq. 2
(`selection_rate`), one step (`evolve`) or the hook's schedule (`WeightEvolution`). The core's
checks, `PAPER_STEP_DEFAULTS`, the keyword arguments of those calls, the run config's `we_<name>` keys
and the figures all read this table, so a new hyper-parameter is one row here (plus its use).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Union

from we.core.checks import INTERVAL_UNITS, LEVELS, MATCHINGS, SELECTIONS
from we.keys import BadValue, Key, checked, excerpt

USES: tuple[str, ...] = ("rate", "step", "schedule")  # selection_rate (Eq. 2) | evolve | WeightEvolution


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter of the paper's step.

    `type`, `choices`, `minimum` / `strict` / `maximum` and `check` as in `we.keys.Key` (a number is
    always finite); `default`: the paper's value (CIFAR, Sec. 4.1.2); `imagenet`: the paper's ImageNet
    value where it sets another (None: the same); `from_schedule`: a run takes it from its
    learning-rate schedule (the stages of Eq. 2 start where the learning rate drops).
    """

    name: str
    type: Any
    default: Any
    doc: str
    use: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    strict: bool = False
    maximum: float | None = None
    check: Optional[Callable[[Any], Optional[str]]] = None
    imagenet: Any = None
    from_schedule: bool = False

    @property
    def config_key(self) -> str:
        """The run config's key of this hyper-parameter (method=we)."""
        return f"we_{self.name}"

    @property
    def spec(self) -> Key:
        """The key spec of the core's value: the type, the paper's default, the bounds."""
        return Key(self.type, self.default, self.doc, self.choices, self.minimum, self.strict, self.maximum,
                   check=self.check)


def _increasing(epochs: list[int]) -> Optional[str]:
    """strictly increasing epochs"""
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        return f"must be strictly increasing epochs, got {excerpt(epochs)}"
    return None


HPARAMS: dict[str, HParam] = {h.name: h for h in (
    HParam("r_hat", float, 0.05, "Eq. 2 base selection rate", "rate", minimum=0, maximum=1),
    # "The parameter beta is larger than one to make sure that r is smaller in the later stages" (Sec. 3.1.1)
    HParam("beta", float, 2.5, "Eq. 2 stage divisor", "rate", minimum=1, strict=True, imagenet=2.0),
    HParam("eta", float, 15.0, "Eq. 2 temperature", "rate", minimum=0, strict=True, imagenet=8.0),
    HParam("gamma", float, 0.05, "Eq. 4 relative-importance threshold", "step", minimum=0),
    HParam("milestones", list[int], (60, 120), "Eq. 2 stage starts", "rate", minimum=1,
           check=_increasing, from_schedule=True),
    HParam("matching", str, "forward", "forward | reverse (WE-RM, Table 6)", "step", choices=MATCHINGS),
    HParam("conv", bool, True, "evolve Conv2d weight and bias (Table 8)", "step"),
    HParam("bn", bool, True, "evolve BatchNorm2d weight and bias (Table 8)", "step"),
    HParam("interval", int, 1, "evolve every N epochs or iterations (see interval_unit)", "schedule", minimum=1),
    HParam("interval_unit", str, "epoch", "epoch | iter", "schedule", choices=INTERVAL_UNITS),
    HParam("selection", str, "global+local", "global+local | global (WE-G) | local (WE-L), Table 5", "step",
           choices=SELECTIONS),
    HParam("alpha", Union[str, float], "adaptive", "adaptive (Eq. 6) | fixed float in [0, 1] (Figure 6)", "step",
           choices=("adaptive",), minimum=0, maximum=1),
    HParam("level", str, "element", "element | filter (filter-level-GL, Table 7)", "step", choices=LEVELS),
)}
assert all(h.use in USES for h in HPARAMS.values())

PAPER_STEP_DEFAULTS: dict[str, Any] = {name: h.default for name, h in HPARAMS.items()}
# The paper's values for ImageNet (Sec. 4.1.2): its own where it sets one, else the defaults.
PAPER_STEP_IMAGENET: dict[str, Any] = {name: h.default if h.imagenet is None else h.imagenet for name, h in HPARAMS.items()}


def names(use: str) -> tuple[str, ...]:
    """The hyper-parameters a use takes ("rate", "step" or "schedule"), in table order."""
    return tuple(name for name, h in HPARAMS.items() if h.use == use)


def check_hparam(name: str, value: Any) -> Any:
    """`value` checked against the row of `name` (ValueError naming it); an int becomes a float for a
    float row, a list a tuple."""
    try:
        value = checked(HPARAMS[name].spec, value)
    except BadValue as err:
        raise ValueError(f"{name}: {err}") from None
    return tuple(value) if isinstance(value, list) else value
