"""Training-method plug-ins and their registry.

`METHODS` maps a config `method` name to its plug-in class (see `we.methods.base`). Adding a method
is one module plus one line in `_PLUGINS` below (or a `register_method` call from anywhere): its config
keys, defaults and checks reach the run config, its presets the grids, its paper names the reports and
its cost the grid estimates, all through the functions here.
"""
from __future__ import annotations

from typing import Any

from we.errors import ConfigError
from we.methods.base import ConfigKey, Method, Preset, TrainContext
from we.methods.we import WEMethod
from we.methods.fg import FGMethod
from we.methods.oni import ONIMethod
from we.methods.repr import RePrMethod
from we.methods.rl import RLMethod
from we.methods.svb import SVBMethod

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Add a plug-in class to the registry (usable as a decorator); its keys must be `<name>_...`
    and its labels new."""
    name = cls.name
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"method {name!r} is already registered")
    for key in cls.keys:
        if not key.startswith(f"{name}_"):
            raise ValueError(f"method {name!r}: config key {key!r} must start with '{name}_'")
    taken = method_presets()
    for label in cls.presets:
        if label in taken and taken[label].get("method") != name:
            raise ValueError(f"method {name!r}: label {label!r} belongs to method {taken[label]['method']!r}")
    METHODS[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a plug-in (for throwaway methods in tests)."""
    METHODS.pop(name, None)


def create_method(cfg: Any) -> Method:
    """The plug-in named by `cfg.method`, configured from `cfg`."""
    if cfg.method not in METHODS:
        raise ConfigError(f"config key 'method': unknown method {cfg.method!r} (known: {', '.join(METHODS)})")
    return METHODS[cfg.method](cfg)


def method_keys() -> dict[str, ConfigKey]:
    """Every registered method's config keys, in registry order."""
    return {key: spec for cls in METHODS.values() for key, spec in cls.keys.items()}


def key_owner(key: str) -> str | None:
    """The method that owns a config key (None for a core key)."""
    return next((name for name, cls in METHODS.items() if key in cls.keys), None)


def method_presets() -> dict[str, dict[str, Any]]:
    """Every grid label -> the config keys it sets, `method` first (the paper's labels, e.g. fg1, we_official)."""
    return {label: {"method": name, **preset.overrides}
            for name, cls in METHODS.items() for label, preset in cls.presets.items()}


def paper_name(label: str) -> str:
    """A grid label's name in the paper's tables (e.g. fg1 -> FG-1); the label itself when it has none."""
    for cls in METHODS.values():
        if label in cls.presets and cls.presets[label].paper:
            return cls.presets[label].paper
    return label


def method_version(name: str) -> int:
    """The version of a method's behaviour (1 unless its results changed since runs were made)."""
    return METHODS[name].version if name in METHODS else 1


def version_keys(config: dict[str, Any]) -> dict[str, int]:
    """`{<method>_version: v}` for the config's own method when v > 1 (entered in the run identity)."""
    name = config.get("method", "baseline")
    version = method_version(name)
    return {f"{name}_version": version} if version > 1 else {}


def cost_factor(config: dict[str, Any]) -> float:
    """Training cost of a resolved config relative to the baseline's, from its method's plug-in."""
    cls = METHODS.get(config.get("method", "baseline"), Method)
    return cls.cost(config)


_PLUGINS = (Method, WEMethod, FGMethod, ONIMethod, SVBMethod, RePrMethod, RLMethod)  # baseline first
for _plugin in _PLUGINS:
    register_method(_plugin)

__all__ = ["METHODS", "ConfigKey", "Method", "Preset", "TrainContext", "cost_factor", "create_method",
           "key_owner", "method_keys", "method_presets", "method_version", "paper_name", "register_method",
           "unregister_method", "version_keys"]
