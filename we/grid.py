"""Experiment grids: a YAML file -> cells (one resolved config each) -> run folders, states, jobs.

    python -m we.grid plan|submit|status|collect GRID [--executor slurm|local] [--profile FILE]
                      [--wait] [--runs-root DIR] [--set key=value ...]

GRID is a path or a name in experiments/. A grid file holds:

    name: table1                # run folders go to <runs-root>/<name>/
    description: ...            # optional
    base: {epochs: 200, ...}    # config keys shared by every cell (we/config.py)
    axes:                       # lists; the cells are their product (in this order) ...
      dataset: [cifar10, cifar100]
      model: [resnet56, resnet110]
      method: [baseline, we, {label: we_alpha_0.5, overrides: {method: we, we_alpha: 0.5}}]
    exclude: [{model: resnet56, method: repr}]   # ... minus every cell matching a partial cell
    seeds: [0, 1, 2, 3, 4]      # ... times the seeds
    resources: {timeout_min: 2880}   # optional: cluster-profile keys for this grid's jobs
    train: false                # optional: a plot-only grid without cells (no axes, no seeds)

`method` values are the paper's method labels, turned into config keys by METHOD_PRESETS; a
mapping entry {label, overrides} adds (or, for a new label, defines) the config keys. Every other
axis names a config key. Each cell runs in `<runs-root>/<grid>/<key>-<hash>/`, where the key reads
like `cifar10-resnet56-we-s0` and the hash covers the resolved config minus the keys that do not
change results (where and how it runs: `result_neutral_keys`) and minus keys at their Config
default (`identity`), so a changed config gets a new folder, an unchanged one is never run twice,
and a config key added later with a default keeps every folder. A cell whose exact config already ran in another grid's folder (e.g. the
Table 2 baselines that Tables 5-8 repeat) is linked from there instead of trained again.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from we.executors import (InputError, LocalExecutor, Profile, SlurmExecutor, active_jobs,
                          check_profile_values, grid_lock, load_profile, read_cell_file, read_yaml_mapping,
                          write_cell_file, RESOURCE_KEYS, REPO_ROOT)

GRID_DIR = REPO_ROOT / "experiments"
DEFAULT_RUNS_ROOT = Path("results/runs")
DEFAULT_PROFILE = REPO_ROOT / "slurm" / "default.yaml"
GRID_FILE = "grid.json"

# The paper's method labels (reported-results.csv) -> config keys of the run.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {"method": "baseline"},
    "we": {"method": "we"},
    "we_official": {"method": "we", "we_variant": "official", "recipe": "official"},  # the authors' script
    "we_global_only": {"method": "we", "we_selection": "global"},  # WE-G, Table 5
    "we_local_only": {"method": "we", "we_selection": "local"},  # WE-L, Table 5
    "we_reverse_matching": {"method": "we", "we_matching": "reverse"},  # WE-RM, Table 6
    "filter_level_gl": {"method": "we", "we_level": "filter"},  # Filter-level-GL, Table 7
    "we_without_bn": {"method": "we", "we_bn": False},  # Table 8
    "we_without_conv": {"method": "we", "we_conv": False},  # Table 8
    "fg1": {"method": "fg", "fg_n": 1},  # filter grafting with n models
    "fg2": {"method": "fg", "fg_n": 2},
    "fg4": {"method": "fg", "fg_n": 4},
    "oni": {"method": "oni"},
    "svb": {"method": "svb"},
    "repr": {"method": "repr"},
    "rl": {"method": "rl"},
}

# The authors' WE step (we_variant: official) has fixed behaviour; only we_conv/we_bn switch it.
# A cell changing one of these with the official variant would silently equal plain `we`.
OFFICIAL_VARIANT_FIXED = ("we_r_hat", "we_gamma", "we_matching", "we_interval", "we_interval_unit",
                          "we_selection", "we_alpha", "we_level")

# Training-set sizes, for the GPU-hour estimate (limit_train replaces them when set).
TRAIN_IMAGES = {"digits": 1437, "cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}

# Training throughput (images/s, one GPU, fp32) used for the estimate when results/bench/ has no
# measurement for a model: rough figures for a current data-centre GPU, not measurements.
DEFAULT_IMAGES_PER_S: dict[str, float] = {
    "resnet20": 25_000, "resnet32": 16_000, "resnet44": 12_000, "resnet56": 9_000, "resnet110": 4_500,
    "densenet40": 3_500, "mobilenetv1": 12_000, "mobilenetv2": 7_000, "shufflenetv1": 6_000,
    "resnet34": 1_200,  # 224x224
    "mobilenetv2_050": 4_000,  # 128x128
}
FALLBACK_IMAGES_PER_S = 5_000.0
BENCH_DIR = Path("results/bench")

STATES = ("done", "running", "failed", "diverged", "todo", "unknown", "stale")
GRID_KEYS = ("name", "description", "base", "axes", "exclude", "seeds", "resources", "train")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHORT_HASH = 10


def result_neutral_keys() -> tuple[str, ...]:
    """Config keys that say where or how a run executes, not what it computes (the trainer's list)."""
    from we.train import RESUME_IGNORES

    return tuple(RESUME_IGNORES)


# ---------------------------------------------------------------------------------------------
# grid files
# ---------------------------------------------------------------------------------------------

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


def find_grid_file(ref: str | Path) -> Path:
    """A grid given as a path, or as a name in experiments/."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or os.sep in str(ref) or path.exists():
        return path
    candidate = GRID_DIR / f"{ref}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in GRID_DIR.glob("*.yaml"))
    raise InputError(ref, "grid", f"no such grid file or name in experiments/ (known: {', '.join(known)})")


def display_path(path: Path) -> str:
    """A path relative to the working directory where it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _check_config_value(file: str, where: str, key: Any, value: Any) -> None:
    """One config key's name and type (range and registry checks come with resolution)."""
    from we.config import ConfigError, make_config

    if not isinstance(key, str):
        raise InputError(file, where, f"config keys are strings, got {key!r}")
    try:
        make_config({key: value}, source=file)
    except ConfigError as err:
        raise InputError(file, where, _strip_config_prefix(str(err), file)) from None


def _strip_config_prefix(message: str, file: str) -> str:
    message = re.sub(r"^config key '[^']+': ", "", message)
    return message[len(file) + 2:] if message.startswith(f"{file}: ") else message


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def load_grid(ref: str | Path) -> Grid:
    """Read and check a grid file; every problem is an InputError naming the file and key."""
    path = find_grid_file(ref)
    file = display_path(path)
    data = read_yaml_mapping(path, "grid")
    if not isinstance(data, dict):
        raise InputError(file, "(top level)", f"expected a mapping with keys {', '.join(GRID_KEYS)}, "
                                              f"got {type(data).__name__}")
    for key in data:
        if key not in GRID_KEYS:
            raise InputError(file, str(key), f"unknown grid key (known: {', '.join(GRID_KEYS)})")
    if "name" not in data:
        raise InputError(file, "name", "missing")
    name = data["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(file, "name", f"expected a folder-safe name (letters, digits, _ . -), got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise InputError(file, "description", f"expected a string, got {description!r}")
    train = data.get("train", True)
    if not isinstance(train, bool):
        raise InputError(file, "train", f"expected true or false, got {train!r}")

    base = data.get("base", {}) or {}
    if not isinstance(base, dict):
        raise InputError(file, "base", f"expected a mapping of config keys, got {type(base).__name__}")
    for key, value in base.items():
        if key in ("out", "seed"):
            raise InputError(file, f"base.{key}", "set by the grid (run folder and `seeds`), not in base")
        if key == "method":
            raise InputError(file, "base.method", "use the `method` axis (paper method labels)")
        _check_config_value(file, f"base.{key}", key, value)

    resources = data.get("resources", {}) or {}
    resources = check_profile_values(resources, file, required=False, prefix="resources.", allowed=RESOURCE_KEYS)

    axes_raw = data.get("axes", {})
    seeds_raw = data.get("seeds", [])
    if not train:
        if axes_raw:
            raise InputError(file, "axes", "a grid with `train: false` has no cells: leave out axes")
        if seeds_raw:
            raise InputError(file, "seeds", "a grid with `train: false` has no cells: leave out seeds")
        return Grid(name, path, description, base, {}, [], [], resources, False)

    if "axes" not in data:
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

    if "seeds" not in data:
        raise InputError(file, "seeds", "missing (e.g. [0, 1, 2, 3, 4])")
    seeds = seeds_raw
    if not isinstance(seeds, list) or not seeds:
        raise InputError(file, "seeds", f"expected a non-empty list of ints, got {seeds!r}")
    for i, s in enumerate(seeds):
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise InputError(file, f"seeds[{i}]", f"expected an int >= 0, got {s!r}")
    if len(set(seeds)) != len(seeds):
        dup = [s for s, n in Counter(seeds).items() if n > 1][0]
        raise InputError(file, "seeds", f"seed {dup} given twice (duplicate cells)")

    exclude = data.get("exclude", []) or []
    if not isinstance(exclude, list):
        raise InputError(file, "exclude", f"expected a list of partial cells, got {type(exclude).__name__}")
    for i, part in enumerate(exclude):
        where = f"exclude[{i}]"
        if not isinstance(part, dict) or not part:
            raise InputError(file, where, f"expected a non-empty mapping axis -> value, got {part!r}")
        for axis, value in part.items():
            if axis == "seed":
                if value not in seeds:
                    raise InputError(file, f"{where}.seed", f"{value!r} is not one of the seeds")
                continue
            if axis not in axes:
                raise InputError(file, f"{where}.{axis}", f"unknown axis (axes: {', '.join(axes)}, seed)")
            known = _axis_labels(axes[axis])
            if value not in known:
                raise InputError(file, f"{where}.{axis}", f"{value!r} is not a value of that axis "
                                                          f"({', '.join(map(str, known))})")
    return Grid(name, path, description, base, axes, exclude, list(seeds), resources, True)


def _axis_labels(values: list[Any]) -> list[Any]:
    return [v.label if isinstance(v, MethodEntry) else v for v in values]


def _value_axis(file: str, axis: str, values: list[Any]) -> list[Any]:
    for i, value in enumerate(values):
        if not _scalar(value):
            raise InputError(file, f"axes.{axis}[{i}]", f"expected a single value, got {value!r}")
        _check_config_value(file, f"axes.{axis}[{i}]", axis, value)
    dup = [v for v, n in Counter(map(repr, values)).items() if n > 1]
    if dup:
        raise InputError(file, f"axes.{axis}", f"value {dup[0]} given twice (duplicate cells)")
    return list(values)


def _method_axis(file: str, values: list[Any]) -> list[MethodEntry]:
    entries: list[MethodEntry] = []
    for i, value in enumerate(values):
        where = f"axes.method[{i}]"
        if isinstance(value, str):
            if value not in METHOD_PRESETS:
                raise InputError(file, where, f"unknown method label {value!r} (known: {', '.join(METHOD_PRESETS)}; "
                                              f"or give {{label: ..., overrides: {{method: ..., ...}}}})")
            entries.append(MethodEntry(value, dict(METHOD_PRESETS[value]), where))
            continue
        if not isinstance(value, dict):
            raise InputError(file, where, f"expected a method label or {{label, overrides}}, got {value!r}")
        unknown = [k for k in value if k not in ("label", "overrides")]
        if unknown:
            raise InputError(file, f"{where}.{unknown[0]}", "unknown key (a method entry has label and overrides)")
        label = value.get("label")
        if not isinstance(label, str) or not NAME_RE.match(label):
            raise InputError(file, f"{where}.label", f"expected a folder-safe label, got {label!r}")
        overrides = value.get("overrides", {})
        if not isinstance(overrides, dict):
            raise InputError(file, f"{where}.overrides", f"expected a mapping of config keys, got {overrides!r}")
        for key, v in overrides.items():
            if key in ("out", "seed"):
                raise InputError(file, f"{where}.overrides.{key}", "set by the grid, not by a method")
            _check_config_value(file, f"{where}.overrides.{key}", key, v)
        preset = METHOD_PRESETS.get(label, {})
        if not preset and "method" not in overrides:
            raise InputError(file, f"{where}.overrides.method", f"missing: label {label!r} is not a preset, "
                                                               "so the entry must name the config method")
        entries.append(MethodEntry(label, {**preset, **overrides}, where))
    dup = [lab for lab, n in Counter(e.label for e in entries).items() if n > 1]
    if dup:
        raise InputError(file, "axes.method", f"label {dup[0]!r} given twice (duplicate cells)")
    return entries


# ---------------------------------------------------------------------------------------------
# expansion and run identity
# ---------------------------------------------------------------------------------------------

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
    from we.config import Config

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
    default leaves every run folder as it was)."""
    from we.config import Config, to_dict
    from we.methods import METHODS

    defaults = to_dict(Config())
    neutral = set(result_neutral_keys()) | {"recipe"}
    unused = tuple(f"{m}_" for m in METHODS if m != config.get("method"))
    return {k: v for k, v in config.items()
            if k not in neutral and not k.startswith(unused) and (k not in defaults or v != defaults[k])}


def config_hash(config: dict[str, Any]) -> str:
    """Short hash of a resolved config's identity (see `identity`)."""
    payload = json.dumps(identity(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:SHORT_HASH]


def run_folder(runs_root: Path, grid_name: str, key: str, digest: str) -> Path:
    return Path(runs_root).absolute() / grid_name / f"{key}-{digest}"


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` options -> config keys (checked by name and type)."""
    from we.config import ConfigError, parse_overrides

    try:
        values = parse_overrides(list(sets))
    except ConfigError as err:
        raise InputError("--set", "(option)", str(err)) from None
    for key, value in values.items():
        if key in ("out", "seed", "method"):
            raise InputError("--set", key, "set by the grid (run folder, seeds, method axis)")
        _check_config_value("--set", key, key, value)
    return values


def resolve_cells(grid: Grid, runs_root: Path = DEFAULT_RUNS_ROOT, sets: dict[str, Any] | None = None,
                  neutral: dict[str, Any] | None = None) -> list[Cell]:
    """Expand and resolve every cell (failing on the first bad one); nothing is written.

    `sets` are config keys applied to every cell (they change run identity); `neutral` are
    result-neutral keys (device, data_dir, workers, ...) from an executor profile.
    """
    from we.config import ConfigError, make_config, resolve, to_dict
    from we.methods import METHODS

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
                             f"yet (config method {method!r}; implemented: {', '.join(METHODS)})")
        try:
            cfg = resolve(make_config(values, source=file))
        except ConfigError as err:
            message = str(err)
            match = re.search(r"config key '([^']+)'", message)
            where = origins.get(match.group(1), "base") if match else "base"
            raise InputError(file if not where.startswith("--set") else "--set",
                             where.replace("--set ", "") if where.startswith("--set") else where,
                             f"{_strip_config_prefix(message, file)} (cell {spec.key})") from None
        config = to_dict(cfg)
        _check_official_variant(file, spec, config, origins)
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
        raise InputError(file, "axes", f"two cells share the key {dup[0]!r} (duplicate cells)")
    return cells


def _check_official_variant(file: str, spec: CellSpec, config: dict[str, Any], origins: dict[str, str]) -> None:
    if config["method"] != "we" or config["we_variant"] != "official":
        return
    from we.config import Config

    for key in OFFICIAL_VARIANT_FIXED:
        if config[key] != getattr(Config(), key):
            raise InputError(file, origins.get(key, spec.method_where),
                             f"{key}={config[key]!r} has no effect with we_variant official (the authors' step "
                             f"has no such switch); use we_variant paper for this cell ({spec.key})")


def check_writable(runs_root: Path) -> None:
    """The runs root (or its nearest existing parent) must be a writable folder."""
    path = Path(runs_root).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(runs_root, "runs_root", f"{probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(runs_root, "runs_root", f"{probe} is not writable")


# ---------------------------------------------------------------------------------------------
# states
# ---------------------------------------------------------------------------------------------

@dataclass
class CellState:
    cell: Cell
    state: str
    note: str = ""
    reuse_from: Optional[Path] = None
    last_record: Optional[dict[str, Any]] = None


def read_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stored_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run folder was made for (cell.json, else the trainer's config.yaml)."""
    cell = read_cell_file(run_dir)
    if cell and isinstance(cell.get("config"), dict):
        return cell["config"]
    import yaml

    try:
        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def identity_diff(run_dir: Path, config: dict[str, Any]) -> list[str] | None:
    """Keys on which a run folder's stored config and `config` differ (None: nothing stored)."""
    other = stored_config(run_dir)
    if other is None:
        return None
    a, b = identity(other), identity(config)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def twin_folders(cell: Cell, runs_root: Path) -> list[Path]:
    """Run folders of other grids holding exactly this cell's config."""
    root = Path(runs_root).absolute()
    found = []
    for path in sorted(root.glob(f"*/*-{cell.config_hash}")):
        if path.resolve() == cell.run_dir.resolve() or not path.is_dir() or path.parent.name == cell.grid:
            continue
        if identity_diff(path, cell.config) == []:
            found.append(path)
    return found


def _own_state(run_dir: Path, active: dict[str, bool | None],
               config: dict[str, Any] | None = None) -> tuple[str, str, dict[str, Any] | None]:
    if config is not None:
        diff = identity_diff(run_dir, config)
        if diff:  # a Config default changed since this folder was made: its run is not this cell's
            return "stale", f"folder holds another config (keys {', '.join(diff)}); move it away", None
    result = read_result(run_dir)
    status = (result or {}).get("status")
    records = (read_cell_file(run_dir) or {}).get("submitted", [])
    last = records[-1] if records else None
    if status == "complete":
        return "done", f"top1 {result.get('final_top1', float('nan')):.2f}", last
    if status == "diverged":
        return "diverged", f"epoch {result.get('diverged_epoch', '?')}", last
    if last is not None:
        alive = active.get(last["job_id"])
        if alive is True:
            return "running", f"{last['executor']} {last['job_id']}", last
        if alive is None:
            return "unknown", f"cannot query {last['executor']} job {last['job_id']}", last
        return "failed", f"{last['executor']} {last['job_id']} ended" + (
            f": {result.get('error')}" if result and result.get("error") else ""), last
    if status == "failed":
        return "failed", str(result.get("error", "")), last
    return "todo", "", last


def assess(cells: Sequence[Cell], runs_root: Path = DEFAULT_RUNS_ROOT, reuse: bool = True) -> list[CellState]:
    """The state of every cell: done, running, failed, diverged or todo; unknown when its job cannot be
    asked (e.g. sacct does not answer), stale when its folder holds a run of another config."""
    twins = {c.key: twin_folders(c, runs_root) for c in cells} if reuse else {}
    records = []
    for path in [c.run_dir for c in cells] + [t for ts in twins.values() for t in ts]:
        subs = (read_cell_file(path) or {}).get("submitted", [])
        if subs:
            records.append(subs[-1])
    active = active_jobs(records) if records else {}
    states = []
    for cell in cells:
        state, note, last = _own_state(cell.run_dir, active, cell.config)
        reuse_from = None
        if state == "todo" and reuse:
            for twin in twins.get(cell.key, []):
                twin_state, _, _ = _own_state(twin, active)
                if twin_state in ("done", "diverged"):
                    state, note, reuse_from = twin_state, f"same run as {display_path(twin)}", twin
                    break
                if twin_state == "running":
                    state, note = "running", f"same run as {display_path(twin)} (running)"
        states.append(CellState(cell, state, note, reuse_from, last))
    return states


REUSED_FILES = ("config.yaml", "result.json", "metrics.jsonl", "metrics.csv", "last.pt")


def adopt_twin(state: CellState) -> None:
    """Link (or copy) a finished twin run's files into this cell's folder."""
    cell, twin = state.cell, state.reuse_from
    assert twin is not None
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    for name in REUSED_FILES:
        src, dst = twin / name, cell.run_dir / name
        if not src.exists() or dst.exists():
            continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    write_cell(cell, reused_from=str(twin))


def write_cell(cell: Cell, record: dict[str, Any] | None = None, reused_from: str | None = None) -> None:
    """Create or update `<run>/cell.json` (labels, resolved config, submissions)."""
    data = read_cell_file(cell.run_dir) or {}
    data.update({"grid": cell.grid, "key": cell.key, "labels": cell.labels, "config_hash": cell.config_hash,
                 "config": cell.config})
    data.setdefault("submitted", [])
    if record is not None:
        data["submitted"].append(record)
    if reused_from is not None:
        data["reused_from"] = reused_from
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    write_cell_file(cell.run_dir, data)


def write_grid_file(grid: Grid, cells: Sequence[Cell], runs_root: Path) -> None:
    """`<runs-root>/<grid>/grid.json`: the grid as loaded, its cells' folders and (plot-only grids) the base config."""
    from we.checkpoint import write_json
    from we.config import make_config, resolve, to_dict

    data: dict[str, Any] = {
        "name": grid.name, "file": display_path(grid.path), "description": grid.description, "train": grid.train,
        "base": grid.base, "axes": {a: _axis_labels(v) for a, v in grid.axes.items()}, "seeds": grid.seeds,
        "cells": {c.key: c.run_dir.name for c in cells}}
    if not grid.train:
        data["base_config"] = to_dict(resolve(make_config(grid.base, source=display_path(grid.path))))
    write_json(Path(runs_root).absolute() / grid.name / GRID_FILE, data)


# ---------------------------------------------------------------------------------------------
# GPU-hour estimate
# ---------------------------------------------------------------------------------------------

@dataclass
class Throughput:
    images_per_s: dict[tuple[str, str], float]
    source: str

    def lookup(self, model: str, dataset: str) -> tuple[float, str]:
        for key in ((model, dataset), (model, "")):
            if key in self.images_per_s:
                return self.images_per_s[key], self.source
        return DEFAULT_IMAGES_PER_S.get(model, FALLBACK_IMAGES_PER_S), "default table in we/grid.py"


def _bench_entries(obj: Any) -> Iterable[dict[str, Any]]:
    if isinstance(obj, dict):
        if isinstance(obj.get("model"), str):
            yield obj
        for value in obj.values():
            yield from _bench_entries(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _bench_entries(value)


def load_throughput(bench_dir: Path = BENCH_DIR) -> Throughput:
    """Training images/s per model from the newest GPU results/bench/*.json (`make bench`: entries with
    `model` and `train_img_s` or `images_per_s`, optionally `dataset`; baseline entries win over
    others); models it lacks fall back to DEFAULT_IMAGES_PER_S."""
    # GPU-hours: a CPU measurement (results/bench/cpu.json) says nothing about a GPU's throughput
    files = sorted((p for p in Path(bench_dir).glob("*.json") if p.stem != "cpu"), key=lambda p: p.stat().st_mtime)
    if not files:
        return Throughput({}, "default table in we/grid.py")
    newest = files[-1]
    try:
        data = json.loads(newest.read_text())
    except (OSError, json.JSONDecodeError):
        return Throughput({}, f"default table in we/grid.py ({newest} unreadable)")
    table: dict[tuple[str, str], float] = {}
    ranked = sorted(_bench_entries(data), key=lambda e: e.get("method", "baseline") == "baseline")
    for entry in ranked:  # baseline entries come last and win
        ips = next((entry[k] for k in ("train_img_s", "images_per_s", "train_images_per_s") if
                    isinstance(entry.get(k), (int, float)) and entry[k] > 0), None)
        if ips is None:
            continue
        table[(entry["model"], str(entry.get("dataset", "")))] = float(ips)
        table.setdefault((entry["model"], ""), float(ips))
    device = data.get("header", {}).get("device") if isinstance(data, dict) else None
    return Throughput(table, display_path(newest) + (f" ({device})" if device else ""))


def gpu_hours(cell: Cell, throughput: Throughput) -> float:
    """Estimated GPU-hours of one cell: training images over the run / one GPU's images per second
    (a run spread over several GPUs is taken to scale linearly, so its GPU-hours stay the same)."""
    cfg = cell.config
    images = cfg["limit_train"] or TRAIN_IMAGES.get(cfg["dataset"], 50_000)
    if cfg["dataset"] != "imagenet":
        images = min(images, TRAIN_IMAGES.get(cfg["dataset"], images))
    ips, _ = throughput.lookup(cfg["model"], cfg["dataset"])
    networks = cfg.get("fg_n", 1) if cfg["method"] == "fg" else 1  # filter grafting trains n networks
    return cfg["epochs"] * images * networks / ips / 3600.0


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _counts(states: Sequence[CellState]) -> str:
    counts = Counter(s.state for s in states)
    return ", ".join(f"{k} {counts[k]}" for k in STATES if counts[k]) or "no cells"


def plan(grid: Grid, cells: Sequence[Cell], runs_root: Path, reuse: bool = True, out: Any = None) -> list[CellState]:
    """Print the cells, their states and the GPU-hour estimate; writes nothing."""
    out = out or sys.stdout
    throughput = load_throughput()
    states = assess(cells, runs_root, reuse)
    rows, to_run, total, sources = [], 0.0, 0.0, set()
    for st in states:
        hours = gpu_hours(st.cell, throughput)
        sources.add(throughput.lookup(st.cell.config["model"], st.cell.config["dataset"])[1])
        total += hours
        if st.state in ("todo", "failed"):
            to_run += hours
        rows.append([st.cell.key, st.state, f"{hours:.3g}", st.cell.run_dir.name, st.note])
    print(f"grid {grid.name} ({display_path(grid.path)}): {len(cells)} cells, run folders in "
          f"{display_path(Path(runs_root) / grid.name)}", file=out)
    if grid.description:
        print(grid.description.strip(), file=out)
    if rows:
        print(_table(rows, ["cell", "state", "GPU-h", "folder", "note"]), file=out)
    print(f"states: {_counts(states)}", file=out)
    if cells:
        print(f"estimate: {to_run:.3g} GPU-hours to run (todo + failed), {total:.3g} for the whole grid; "
              f"throughput from {', '.join(sorted(sources))}", file=out)
    else:
        print("no training cells (a plot-only grid): `collect` draws it", file=out)
    return states


@dataclass
class SubmitReport:
    submitted: list[tuple[Cell, dict[str, Any]]]
    skipped: list[CellState]
    reused: list[CellState]


def submit(grid: Grid, cells: Sequence[Cell], executor: Any, runs_root: Path, reuse: bool = True,
           out: Any = None) -> SubmitReport:
    """Submit the todo and failed cells (under the grid's lock); prints and returns what was submitted."""
    out = out or sys.stdout
    check_writable(runs_root)
    grid_dir = Path(runs_root).absolute() / grid.name
    lock = grid_lock(grid_dir)
    try:
        lock.acquire(timeout=1)
    except Exception:  # noqa: BLE001 - filelock.Timeout: someone else is submitting this grid
        print(f"waiting for another submit of {grid.name} ({lock.lock_file})", file=out, flush=True)
        lock.acquire()
    try:
        write_grid_file(grid, cells, runs_root)
        states = assess(cells, runs_root, reuse)
        reused = [s for s in states if s.reuse_from is not None]
        for st in reused:
            adopt_twin(st)
        chosen = [s for s in states if s.state in ("todo", "failed")]
        skipped = [s for s in states if s.state not in ("todo", "failed") and s.reuse_from is None]
        for st in chosen:
            write_cell(st.cell)
        records = executor.submit([s.cell for s in chosen], grid_dir) if chosen else []
        for st, rec in zip(chosen, records):
            write_cell(st.cell, record=rec)
    finally:
        lock.release()
    submitted = [(s.cell, r) for s, r in zip(chosen, records)]
    for st in reused:
        print(f"reused   {st.cell.key}: {st.note}", file=out)
    for cell, rec in submitted:
        print(f"submitted {cell.key} -> {rec['executor']} job {rec['job_id']}", file=out)
    jobs = sorted({r["job_id"].split("_")[0] if r["executor"] == "slurm" else f"pid {r.get('pid')}"
                   for _, r in submitted})
    print(f"{grid.name}: submitted {len(submitted)} cells to {getattr(executor, 'name', executor)}"
          + (f" ({', '.join(jobs)})" if jobs else "") + f"; reused {len(reused)}; left alone {len(skipped)} "
          f"({_counts(skipped)})", file=out)
    return SubmitReport(submitted, skipped, reused)


def wait(grid: Grid, cells: Sequence[Cell], runs_root: Path, reuse: bool = True, poll_s: float | None = None,
         out: Any = None) -> list[CellState]:
    """Block until no cell of the grid is running; prints each change of the state counts."""
    out = out or sys.stdout
    if poll_s is None:
        poll_s = float(os.environ.get("WE_GRID_POLL_S", "2"))
    last = ""
    while True:
        states = assess(cells, runs_root, reuse)
        counts = _counts(states)
        if counts != last:
            print(f"{time.strftime('%H:%M:%S')} {grid.name}: {counts}", file=out, flush=True)
            last = counts
        if not any(s.state == "running" for s in states):
            return states
        time.sleep(poll_s)


def log_tail(record: dict[str, Any] | None, lines: int = 8) -> list[str]:
    """The last lines of a job's log(s)."""
    if not record:
        return []
    out = []
    for key in ("stderr", "stdout", "log"):
        path = record.get(key)
        if not path or not Path(path).exists():
            continue
        text = Path(path).read_text(errors="replace").rstrip().splitlines()
        if text:
            out += [f"    [{Path(path).name}] {t}" for t in text[-lines:]]
    return out


def status(grid: Grid, cells: Sequence[Cell], runs_root: Path, reuse: bool = True,
           out: Any = None) -> list[CellState]:
    """Counts per state; for failed cells, the error and the last log lines."""
    out = out or sys.stdout
    states = assess(cells, runs_root, reuse)
    print(f"{grid.name}: {len(cells)} cells: {_counts(states)}", file=out)
    for st in states:
        if st.state in ("running", "unknown", "stale"):
            print(f"  {st.state:8s} {st.cell.key}: {st.note}", file=out)
    for st in states:
        if st.state == "failed":
            print(f"  failed   {st.cell.key}: {st.note}  ({display_path(st.cell.run_dir)})", file=out)
            for line in log_tail(st.last_record):
                print(line, file=out)
    return states


def collect(grid: Grid, cells: Sequence[Cell], runs_root: Path, out_dir: Path, reuse: bool = True,
            out: Any = None) -> dict[str, Any]:
    """Link finished twin runs, write grid.json, and build the tables/figures with we.report.collect."""
    out = out or sys.stdout
    check_writable(runs_root)
    if reuse:
        for st in assess(cells, runs_root, reuse):
            if st.reuse_from is not None:
                adopt_twin(st)
    write_grid_file(grid, cells, runs_root)
    from we.report import collect as report_collect

    result = report_collect(grid.name, runs_root=Path(runs_root), out_dir=Path(out_dir))
    written = [v for k, v in result.items() if isinstance(v, Path)] if isinstance(result, dict) else []
    written += [p for p in (result.get("figures", []) if isinstance(result, dict) else []) if isinstance(p, Path)]
    print(f"{grid.name}: wrote " + (", ".join(display_path(p) for p in written) or f"into {display_path(Path(out_dir))}"),
          file=out)
    return result


def make_executor(name: str, profile: Profile | None, grid: Grid, concurrency: int | None) -> Any:
    if name == "slurm":
        assert profile is not None
        return SlurmExecutor(profile.with_resources(grid.resources))
    return LocalExecutor(concurrency=concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m we.grid", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("plan", "submit", "status", "collect"))
    parser.add_argument("grid", help="a grid file, or a grid name in experiments/")
    parser.add_argument("--executor", choices=("slurm", "local"), default="local")
    parser.add_argument("--profile", default=None, help="cluster profile (slurm; default slurm/default.yaml)")
    parser.add_argument("--wait", action="store_true", help="submit: block until no cell is running")
    parser.add_argument("--runs-root", default=str(DEFAULT_RUNS_ROOT), help="default results/runs")
    parser.add_argument("--out-dir", default="results", help="collect: where tables and figures go")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                        help="config keys for every cell (change run identity), e.g. --set epochs=2 limit_train=256")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="local: cells at once (default one per GPU, 1 on the CPU)")
    parser.add_argument("--no-reuse", action="store_true",
                        help="train cells even when another grid already ran the same config")
    args = parser.parse_args(argv)
    runs_root = Path(args.runs_root)
    reuse = not args.no_reuse
    try:
        grid = load_grid(args.grid)
        sets = parse_sets([s for group in args.sets for s in group])
        profile = None
        neutral: dict[str, Any] = {}
        if args.executor == "slurm" or args.profile:
            profile = load_profile(args.profile or DEFAULT_PROFILE)
            neutral = dict(profile.config)
        if args.concurrency is not None and args.concurrency < 1:
            raise InputError("--concurrency", "concurrency", f"must be >= 1, got {args.concurrency}")
        cells = resolve_cells(grid, runs_root, sets, neutral if args.command == "submit" else None)
        if args.command in ("submit", "collect"):
            check_writable(runs_root)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "plan":
        plan(grid, cells, runs_root, reuse)
        return 0
    if args.command == "status":
        states = status(grid, cells, runs_root, reuse)
        return 1 if any(s.state == "failed" for s in states) else 0
    if args.command == "collect":
        try:
            collect(grid, cells, runs_root, Path(args.out_dir), reuse)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    executor = make_executor(args.executor, profile, grid, args.concurrency)
    try:
        submit(grid, cells, executor, runs_root, reuse)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - sbatch/submitit refusal: one line, nonzero exit
        print(f"error: submission failed: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}",
              file=sys.stderr)
        return 1
    if not args.wait:
        return 0
    runner = getattr(executor, "process", None)
    try:
        states = wait(grid, cells, runs_root, reuse, poll_s=None if args.executor == "local" else
                      float(os.environ.get("WE_GRID_POLL_S", "10")))
        if runner is not None:  # the local runner records each cell's exit before it ends
            runner.wait()
            states = assess(cells, runs_root, reuse)
    except KeyboardInterrupt:
        where = f" (local runner pid {runner.pid})" if runner is not None else ""
        print(f"stopped waiting; the cells keep running{where}: `python -m we.grid status {args.grid}` "
              "shows them", file=sys.stderr)
        return 130
    failed = [s for s in states if s.state in ("failed", "unknown", "stale")]
    for st in failed:
        print(f"  {st.state} {st.cell.key}: {st.note}", file=sys.stderr)
        for line in log_tail(st.last_record):
            print(line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
