"""Cells and run identity: a grid -> its cells, each a resolved config in its own run folder.

Each cell runs in `<runs-root>/<grid>/<key>-<hash>/`, where the key reads like
`cifar10-resnet56-we-s0` and the hash covers the resolved config minus the keys that do not
change results (where and how it runs: `RESULT_NEUTRAL_KEYS`) and minus keys at their Config
default (`identity`), so a changed config gets a new folder, an unchanged one is never run twice,
and a config key added later with a default keeps every folder.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from we.errors import ConfigError, InputError
from we.keys import excerpt
from we.grid.schema import CELL_KEYS, Grid, MethodEntry, check_config_value, display_path, strip_config_prefix
from we.methods import METHODS, version_keys
from we.rundir import DEFAULT_RUNS_ROOT, runs_root  # noqa: F401 - the runs-root rule, for the grid's callers
from we.train.config import (IDENTITY_DEFAULTS, RESULT_NEUTRAL_KEYS, Config, make_config, parse_overrides, resolve,
                             to_dict)

SHORT_HASH = 10


@dataclass
class CellSpec:
    """An expanded, not yet resolved cell: its labels and the config keys it sets (with origins)."""

    labels: dict[str, Any]
    values: dict[str, Any]
    origins: dict[str, str]
    method_where: str = "axes.method"

    @property
    def key(self) -> str:
        return cell_key(self.labels)


@dataclass
class Cell:
    """A resolved cell: run identity and the full config its run uses."""

    grid: str
    key: str
    labels: dict[str, Any]
    config: dict[str, Any]
    config_hash: str
    run_dir: Path


def _key_part(axis: str, value: Any) -> str:
    text = value.label if isinstance(value, MethodEntry) else value
    if isinstance(text, bool):
        text = str(text).lower()
    text = str(text)
    return text if axis in ("dataset", "model", "method") else f"{axis}{text}"


def cell_key(labels: dict[str, Any]) -> str:
    """The readable part of a run folder name, e.g. cifar10-resnet56-we-s0."""
    parts = [_key_part(axis, value) for axis, value in labels.items() if axis != "seed"]
    parts.append(f"s{labels['seed']}")
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(parts))


def _excluded(labels: dict[str, Any], exclude: list[dict[str, Any]]) -> bool:
    return any(all(labels.get(axis) == value for axis, value in part.items()) for part in exclude)


def _with_dataset_and_model(labels: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Labels led by dataset and model (from the axes, else from base or the config defaults)."""
    lead = {k: values.get(k, getattr(Config(), k)) for k in ("dataset", "model")}
    return {**lead, **{k: v for k, v in labels.items() if k not in lead}}


def expand(grid: Grid) -> list[CellSpec]:
    """Every (axis values x seed) combination not excluded, with the config keys it sets (unresolved)."""
    if not grid.train:
        return []
    specs: list[CellSpec] = []
    names = list(grid.axes)
    for combo in itertools.product(*(grid.axes[a] for a in names)):
        for seed in grid.seeds:
            labels: dict[str, Any] = {}
            values: dict[str, Any] = dict(grid.base)
            origins = {k: f"base.{k}" for k in grid.base}
            method_where = "axes.method"
            for axis, value in zip(names, combo):
                if isinstance(value, MethodEntry):
                    labels[axis] = value.label
                    method_where = value.where
                    for k, v in value.overrides.items():
                        values[k] = v
                        origins[k] = value.where
                else:
                    labels[axis] = value
                    values[axis] = value
                    origins[axis] = f"axes.{axis}"
            labels = _with_dataset_and_model(labels, values)
            labels["seed"] = seed
            values["seed"] = seed
            origins["seed"] = "seeds"
            if _excluded(labels, grid.exclude):
                continue
            specs.append(CellSpec(labels, values, origins, method_where))
    return specs


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """What makes a run's result: the config without the result-neutral keys, without the keys of
    methods the run does not use (`we_*` for a baseline, say), without `recipe` (a resolved config
    spells out every value its recipe filled in), so Table 3's baseline and that of its authors'-step
    twin are one run, and without keys at their Config default (so a config key added later with a
    default leaves every run folder as it was; `IDENTITY_DEFAULTS` and a method's `identity_defaults`
    count as defaults);
    plus `<method>_version` when the run's method has changed its results (version > 1), so a finished
    run of the old behaviour is never taken for the new one."""
    method = METHODS.get(config.get("method", "baseline"))
    defaults = {**to_dict(Config()), **IDENTITY_DEFAULTS, **(method.identity_defaults if method else {})}
    neutral = set(RESULT_NEUTRAL_KEYS) | {"recipe"}
    unused = {k for m, plugin in METHODS.items() if m != config.get("method") for k in plugin.keys}
    return {**{k: v for k, v in config.items()
               if k not in neutral and k not in unused and (k not in defaults or v != defaults[k])},
            **version_keys(config)}


def config_hash(config: dict[str, Any]) -> str:
    """Short hash of a resolved config's identity (see `identity`)."""
    payload = json.dumps(identity(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:SHORT_HASH]


def run_folder(runs_root: Path, grid_name: str, key: str, digest: str) -> Path:
    return Path(runs_root).absolute() / grid_name / f"{key}-{digest}"


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` options -> config keys (checked by name and type)."""
    try:
        values = parse_overrides(list(sets))
    except ConfigError as err:
        raise InputError("--set", "(option)", str(err)) from None
    for key, value in values.items():
        if key in (*CELL_KEYS, "method"):
            raise InputError("--set", key, "set by the grid (run folder, seeds, method axis)")
        check_config_value("--set", key, key, value)
    return values


def resolve_cells(grid: Grid, runs_root: Path = DEFAULT_RUNS_ROOT, sets: dict[str, Any] | None = None,
                  neutral: dict[str, Any] | None = None) -> list[Cell]:
    """Expand and resolve every cell (failing on the first bad one); nothing is written.

    `sets` are config keys applied to every cell (they change run identity); `neutral` are
    result-neutral keys (device, data_dir, workers, ...) from an executor profile.
    """
    file = display_path(grid.path)
    sets = dict(sets or {})
    cells: list[Cell] = []
    by_hash: dict[str, str] = {}
    for spec in expand(grid):
        values = {**spec.values, **sets, **(neutral or {})}
        origins = {**spec.origins, **{k: f"--set {k}" for k in sets}}
        method = values.get("method", "baseline")
        if method not in METHODS:
            raise InputError(file, spec.method_where,
                             f"method '{spec.labels['method']}' (grid {file}, cell {spec.key}) is not implemented "
                             f"yet (config method {excerpt(method)}; implemented: {', '.join(METHODS)})")
        try:
            cfg = resolve(make_config(values, source=file))
        except ConfigError as err:
            message = str(err)
            match = re.search(r"config key '([^']+)'", message)
            where = origins.get(match.group(1), "base") if match else "base"
            text = strip_config_prefix(message, file)
            if match and match.group(1) not in text and not where.endswith(match.group(1)):
                text = message  # the key is neither in the place named nor in the complaint: keep it
            raise InputError(file if not where.startswith("--set") else "--set",
                             where.replace("--set ", "") if where.startswith("--set") else where,
                             f"{text} (cell {spec.key})") from None
        config = to_dict(cfg)
        digest = config_hash(config)
        run_dir = run_folder(runs_root, grid.name, spec.key, digest)
        config["out"] = str(run_dir)
        if digest in by_hash:
            raise InputError(file, spec.method_where if "method" in spec.labels else "axes",
                             f"cells {by_hash[digest]} and {spec.key} have the same config (duplicate cells)")
        by_hash[digest] = spec.key
        cells.append(Cell(grid.name, spec.key, dict(spec.labels), config, digest, run_dir))
    keys = Counter(c.key for c in cells)
    dup = [k for k, n in keys.items() if n > 1]
    if dup:
        raise InputError(file, "axes", f"two cells share the key {excerpt(dup[0])} (duplicate cells)")
    return cells

