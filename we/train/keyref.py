"""The run-key reference (`python -m we.train --keys`): a Markdown table generated from the key specs.

One row per key of `config_keys()` (the core keys, then each method's): its owner (core or the method),
type, default (a key left at None shows the values the recipes and the method's `recipe_defaults` fill
in), the allowed values or bounds, and its meaning. docs/keys.md holds this output.
"""
from __future__ import annotations

from typing import Any

from we.keys import Key, type_name
from we.methods import METHODS, key_owner
from we.train.config import RECIPES, config_keys

FAMILY_NAMES = {"cifar": "CIFAR", "imagenet": "ImageNet"}
HEADER = ("| key | owner | type | default | allowed | meaning |", "|---|---|---|---|---|---|")


def _text(value: Any) -> str:
    """A value as a config file writes it (true/false, [a, b], None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


def _filled(key: str) -> dict[tuple[str, str], Any]:
    """(recipe, family) -> the value a key left at None takes there, from RECIPES or its method's recipe_defaults."""
    owner = key_owner(key)
    family_defaults = METHODS[owner].recipe_defaults if owner else {}
    found = {}
    for (recipe, family), values in RECIPES.items():
        if key in values:
            found[(recipe, family)] = values[key]
        elif key in family_defaults.get(family, {}):
            found[(recipe, family)] = family_defaults[family][key]
    return found


def _default(key: str, spec: Key) -> str:
    """The default cell: the value, or for None what each recipe and dataset family fills in."""
    filled = _filled(key) if spec.default is None else {}
    if not filled:
        return f"`{_text(spec.default)}`"
    groups: dict[str, list[str]] = {}
    for (recipe, family), value in filled.items():
        same_family = {_text(v) for (r, f), v in filled.items() if f == family}
        label = FAMILY_NAMES[family] if len(same_family) == 1 else f"{recipe} {FAMILY_NAMES[family]}"
        labels = groups.setdefault(_text(value), [])
        if label not in labels:
            labels.append(label)
    if len(groups) == 1:
        return f"recipe: `{next(iter(groups))}`"
    return "recipe: " + "; ".join(f"`{value}` {', '.join(labels)}" for value, labels in groups.items())


def _allowed(spec: Key) -> str:
    """The allowed values: the choices, the bounds, and NaN/infinity when a number key admits them."""
    parts = [", ".join(f"`{c}`" for c in spec.choices)] if spec.choices else []
    if spec.range_text():
        parts.append(spec.range_text())
    if spec.check and spec.check.__doc__:  # a custom check says what it allows in its docstring's first line
        parts.append(spec.check.__doc__.strip().splitlines()[0])
    if not spec.finite:
        parts.append("infinity and NaN allowed")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def key_rows() -> list[str]:
    """One Markdown table row per run key."""
    return [f"| `{key}` | {key_owner(key) or 'core'} | {_cell(type_name(spec.type))} | {_cell(_default(key, spec))} | "
            f"{_cell(_allowed(spec))} | {_cell(spec.doc)} |" for key, spec in config_keys().items()]


def key_reference() -> str:
    """The whole table, header included, ending with a newline."""
    return "\n".join([*HEADER, *key_rows()]) + "\n"
