"""Grid files: experiments/<name>.yaml (or any path) -> a checked `Grid`. A grid file holds:

    name: table1                # run folders go to <runs-root>/<name>/
    description: ...            # optional
    base: {epochs: 200, ...}    # config keys shared by every cell (we/train/config.py)
    axes:                       # lists; the cells are their product (in this order) ...
      dataset: [cifar10, cifar100]
      model: [resnet56, resnet110]
      method: [baseline, we, {label: we_alpha_0.5, overrides: {method: we, we_alpha: 0.5}}]
    exclude: [{model: resnet56, method: repr}]   # ... minus every cell matching a partial cell
    seeds: [0, 1, 2, 3, 4]      # ... times the seeds
    resources: {timeout_min: 2880}   # optional: cluster-profile keys for this grid's jobs
    train: false                # optional: a plot-only grid without cells (no axes, no seeds)

`method` values are the paper's method labels, turned into config keys by the method plug-ins'
presets (`we.methods.method_presets`); a mapping entry {label, overrides} adds (or, for a new
label, defines) the config keys. Every other axis names a config key.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from we.errors import ConfigError, InputError
from we.files import IN_CHECKOUT, REPO_ROOT, read_yaml
from we.keys import BadValue, Key, checked, excerpt
from we.grid.profiles import RESOURCE_KEYS, check_profile_values
from we.methods import method_presets
from we.train.config import make_config

GRID_DIR = REPO_ROOT / "experiments"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _folder_safe(name: str) -> Optional[str]:
    return None if NAME_RE.match(name) else f"expected a folder-safe name (letters, digits, _ . -), got {excerpt(name)}"


# The keys of a grid file; axes, exclude and seeds are checked entry by entry below (each message names its entry).
GRID_KEYS: dict[str, Key] = {
    "name": Key(str, required=True, check=_folder_safe, doc="run folders go to <runs-root>/<name>/"),
    "description": Key(str, "", doc="one line about the grid"),
    "base": Key(Optional[dict], {}, doc="config keys shared by every cell"),
    "axes": Key(object, {}, doc="axis -> list of values; the cells are their product"),
    "exclude": Key(object, [], doc="partial cells left out"),
    "seeds": Key(object, [], doc="the seeds of every cell"),
    "resources": Key(Optional[dict], {}, doc="cluster-profile keys for this grid's jobs"),
    "train": Key(bool, True, doc="false: a plot-only grid without cells"),
}


@dataclass(frozen=True)
class MethodEntry:
    """One value of the method axis: the label the tables use and the config keys it sets."""

    label: str
    overrides: dict[str, Any]
    where: str  # the grid key it came from, e.g. "axes.method[2]"


@dataclass
class Grid:
    name: str
    path: Path
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)  # the method axis holds MethodEntry
    exclude: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    train: bool = True


def find_grid_file(ref: str | Path) -> Path:
    """A grid given as a path, or as a name in experiments/."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or os.sep in str(ref) or path.exists():
        return path
    candidate = GRID_DIR / f"{ref}.yaml"
    if candidate.exists():
        return candidate
    if not IN_CHECKOUT:
        raise InputError(ref, "grid", "no such grid file; grid names resolve in a checkout's experiments/ only, "
                         "and this `we` is an installed package: give the grid as a path "
                         "(e.g. path/to/checkout/experiments/demo.yaml)")
    known = sorted(p.stem for p in GRID_DIR.glob("*.yaml"))
    raise InputError(ref, "grid", f"no such grid file or name in experiments/ (known: {', '.join(known)})")


def display_path(path: Path) -> str:
    """A path relative to the working directory where it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def check_config_value(file: str, where: str, key: Any, value: Any) -> None:
    """One config key's name and type (range and registry checks come with resolution)."""
    if not isinstance(key, str):
        raise InputError(file, where, f"config keys are strings, got {excerpt(key)}")
    try:
        make_config({key: value}, source=file)
    except ConfigError as err:
        raise InputError(file, where, strip_config_prefix(str(err), file)) from None


def strip_config_prefix(message: str, file: str) -> str:
    message = re.sub(r"^config key '[^']+': ", "", message)
    return message[len(file) + 2:] if message.startswith(f"{file}: ") else message


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def load_grid(ref: str | Path) -> Grid:
    """Read and check a grid file; every problem is an InputError naming the file and key."""
    path = find_grid_file(ref)
    file = display_path(path)
    given = read_yaml(path, "grid")
    data = _grid_keys(file, given)
    base = _checked_base(file, data["base"] or {})
    resources = check_profile_values(data["resources"] or {}, file, required=False, prefix="resources.",
                                     allowed=RESOURCE_KEYS)
    if not data["train"]:
        for key in ("axes", "seeds"):
            if data[key]:
                raise InputError(file, key, f"a grid with `train: false` has no cells: leave out {key}")
        return Grid(data["name"], path, data["description"], base, {}, [], [], resources, False)
    axes = _checked_axes(file, given, data["axes"], base)
    seeds = _checked_seeds(file, given, data["seeds"])
    exclude = _checked_exclude(file, data["exclude"] or [], axes, seeds)
    return Grid(data["name"], path, data["description"], base, axes, exclude, list(seeds), resources, True)


CELL_KEYS: tuple[str, ...] = ("out", "seed")  # the grid sets them per cell: its run folder and `seeds`


def _checked_base(file: str, base: dict[str, Any]) -> dict[str, Any]:
    """`base`: config keys for every cell; the grid sets out, seed and method itself."""
    for key, value in base.items():
        if key in CELL_KEYS:
            raise InputError(file, f"base.{key}", "set by the grid (run folder and `seeds`), not in base")
        if key == "method":
            raise InputError(file, "base.method", "use the `method` axis (paper method labels)")
        check_config_value(file, f"base.{key}", key, value)
    return base


def _checked_axes(file: str, given: dict[str, Any], axes_raw: Any, base: dict[str, Any]) -> dict[str, list[Any]]:
    """`axes`: axis name -> its values (the method axis: paper method labels or entries); method required."""
    if "axes" not in given:
        raise InputError(file, "axes", "missing")
    if not isinstance(axes_raw, dict) or not axes_raw:
        raise InputError(file, "axes", "expected a non-empty mapping of axis name -> list of values")
    axes: dict[str, list[Any]] = {}
    for axis, values in axes_raw.items():
        where = f"axes.{axis}"
        if not isinstance(axis, str):
            raise InputError(file, where, "axis names are strings")
        if axis in ("seed", "out"):
            raise InputError(file, where, "set by the grid (`seeds`, run folder), not an axis")
        if axis in base:
            raise InputError(file, where, f"'{axis}' is also set in base; give it in one place")
        if not isinstance(values, list):
            raise InputError(file, where, f"expected a list of values, got {type(values).__name__}")
        if not values:
            raise InputError(file, where, "empty axis (no cells)")
        axes[axis] = _method_axis(file, values) if axis == "method" else _value_axis(file, axis, values)
    if "method" not in axes:
        raise InputError(file, "axes.method", "missing (every grid names its methods; e.g. [baseline, we])")
    return axes


def _checked_seeds(file: str, given: dict[str, Any], seeds: Any) -> list[int]:
    """`seeds`: distinct ints >= 0, one cell each."""
    if "seeds" not in given:
        raise InputError(file, "seeds", "missing (e.g. [0, 1, 2, 3, 4])")
    if not isinstance(seeds, list) or not seeds:
        raise InputError(file, "seeds", f"expected a non-empty list of ints, got {excerpt(seeds)}")
    for i, s in enumerate(seeds):
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise InputError(file, f"seeds[{i}]", f"expected an int >= 0, got {excerpt(s)}")
    if len(set(seeds)) != len(seeds):
        dup = [s for s, n in Counter(seeds).items() if n > 1][0]
        raise InputError(file, "seeds", f"seed {dup} given twice (duplicate cells)")
    return seeds


def _checked_exclude(file: str, exclude: Any, axes: dict[str, list[Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """`exclude`: partial cells (axis -> value, or seed) left out of the product."""
    if not isinstance(exclude, list):
        raise InputError(file, "exclude", f"expected a list of partial cells, got {type(exclude).__name__}")
    for i, part in enumerate(exclude):
        where = f"exclude[{i}]"
        if not isinstance(part, dict) or not part:
            raise InputError(file, where, f"expected a non-empty mapping axis -> value, got {excerpt(part)}")
        for axis, value in part.items():
            if axis == "seed":
                if value not in seeds:
                    raise InputError(file, f"{where}.seed", f"{excerpt(value)} is not one of the seeds")
                continue
            if axis not in axes:
                raise InputError(file, f"{where}.{axis}", f"unknown axis (axes: {', '.join(axes)}, seed)")
            known = axis_labels(axes[axis])
            if value not in known:
                raise InputError(file, f"{where}.{axis}", f"{excerpt(value)} is not a value of that axis "
                                                          f"({', '.join(map(str, known))})")
    return exclude


def _grid_keys(file: str, data: Any) -> dict[str, Any]:
    """The grid file's top-level mapping checked against GRID_KEYS, with the defaults of the keys it leaves out."""
    if not isinstance(data, dict):
        raise InputError(file, "(top level)", f"expected a mapping with keys {', '.join(GRID_KEYS)}, "
                                              f"got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in GRID_KEYS:
            raise InputError(file, str(key), f"unknown grid key (known: {', '.join(GRID_KEYS)})")
        try:
            out[key] = checked(GRID_KEYS[key], value)
        except BadValue as err:
            raise InputError(file, key, str(err)) from None
    for key, spec in GRID_KEYS.items():
        if spec.required and key not in out:
            raise InputError(file, key, "missing")
    return {**{key: spec.default for key, spec in GRID_KEYS.items()}, **out}


def axis_labels(values: list[Any]) -> list[Any]:
    return [v.label if isinstance(v, MethodEntry) else v for v in values]


def _value_axis(file: str, axis: str, values: list[Any]) -> list[Any]:
    for i, value in enumerate(values):
        if not _scalar(value):
            raise InputError(file, f"axes.{axis}[{i}]", f"expected a single value, got {excerpt(value)}")
        check_config_value(file, f"axes.{axis}[{i}]", axis, value)
    dup = [v for v, n in Counter(map(repr, values)).items() if n > 1]
    if dup:
        raise InputError(file, f"axes.{axis}", f"value {dup[0]} given twice (duplicate cells)")
    return list(values)


def _method_axis(file: str, values: list[Any]) -> list[MethodEntry]:
    presets = method_presets()
    entries: list[MethodEntry] = []
    for i, value in enumerate(values):
        where = f"axes.method[{i}]"
        if isinstance(value, str):
            if value not in presets:
                raise InputError(file, where, f"unknown method label {excerpt(value)} (known: {', '.join(presets)}; "
                                              f"or give {{label: ..., overrides: {{method: ..., ...}}}})")
            entries.append(MethodEntry(value, dict(presets[value]), where))
            continue
        if not isinstance(value, dict):
            raise InputError(file, where, f"expected a method label or {{label, overrides}}, got {excerpt(value)}")
        unknown = [k for k in value if k not in ("label", "overrides")]
        if unknown:
            raise InputError(file, f"{where}.{unknown[0]}", "unknown key (a method entry has label and overrides)")
        label = value.get("label")
        if not isinstance(label, str) or not NAME_RE.match(label):
            raise InputError(file, f"{where}.label", f"expected a folder-safe label, got {excerpt(label)}")
        overrides = value.get("overrides", {})
        if not isinstance(overrides, dict):
            raise InputError(file, f"{where}.overrides", f"expected a mapping of config keys, got {excerpt(overrides)}")
        for key, v in overrides.items():
            if key in CELL_KEYS:
                raise InputError(file, f"{where}.overrides.{key}", "set by the grid, not by a method")
            check_config_value(file, f"{where}.overrides.{key}", key, v)
        preset = presets.get(label, {})
        if not preset and "method" not in overrides:
            raise InputError(file, f"{where}.overrides.method", f"missing: label {excerpt(label)} is not a preset, "
                                                               "so the entry must name the config method")
        entries.append(MethodEntry(label, {**preset, **overrides}, where))
    dup = [lab for lab, n in Counter(e.label for e in entries).items() if n > 1]
    if dup:
        raise InputError(file, "axes.method", f"label {excerpt(dup[0])} given twice (duplicate cells)")
    return entries

