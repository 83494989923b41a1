"""Hyper-parameter vocabulary and validation for Weight Evolution.

The unit kinds the paper evolves (Sec. 3: conv filters, conv bias, BN weight and bias scalars),
the choices its ablations switch between (selection, matching, crossover level), and the
checks that turn a bad value into a one-line message naming the offending key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


KINDS: tuple[str, ...] = ("conv_weight", "conv_bias", "bn_weight", "bn_bias")
SELECTIONS: tuple[str, ...] = ("global+local", "global", "local")
MATCHINGS: tuple[str, ...] = ("forward", "reverse")
LEVELS: tuple[str, ...] = ("element", "filter")
INTERVAL_UNITS: tuple[str, ...] = ("epoch", "iter")
VARIANTS: tuple[str, ...] = ("paper", "official")  # the equations as printed | the authors' script

Alpha = float | str


def check_choice(key: str, value: Any, choices: Sequence[str]) -> str:
    """Return `value` if it is one of `choices`, else raise ValueError naming `key`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False) -> float:
    """Return `value` as float if it is a real number in [low, high] (or (low, high])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{key} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{key} must be <= {high}, got {value!r}")
    return float(value)


def check_bool(key: str, value: Any) -> bool:
    """Return `value` if it is a bool, else raise ValueError naming `key`."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def check_positive_int(key: str, value: Any) -> int:
    """Return `value` if it is an int >= 1, else raise ValueError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    return value


def check_index(key: str, value: Any) -> int:
    """Return `value` as an int if it is a non-negative integer (an epoch or an iteration, 0-based):
    TypeError for another type, ValueError for a negative one."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{key} must be a non-negative integer (0-based), got {type(value).__name__} {value!r}")
    if value.__index__() < 0:
        raise ValueError(f"{key} must be a non-negative integer (0-based), got {value!r}")
    return value.__index__()


def check_milestones(key: str, value: Any) -> tuple[int, ...]:
    """Return `value` as a tuple of strictly increasing non-negative ints."""
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{key} must be a list of increasing epochs, got {value!r}") from None
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in items) or any(
            b <= a for a, b in zip(items, items[1:])):
        raise ValueError(f"{key} must be a list of increasing epochs, got {value!r}")
    return items


def check_keys(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise TypeError naming the first key of `given` that is not in `known`."""
    known = list(known)
    for key in given:
        if key not in known:
            raise TypeError(f"unknown {what} hparam {key!r}; known: {sorted(known)}")
