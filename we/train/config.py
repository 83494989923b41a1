"""One run configuration: the core keys and recipes here, each method's keys from its plug-in.

A run is described by a flat `Config`: the core keys below (`CORE_KEYS`, one visible block of
defaults) plus every registered method's keys (`we.methods`). Keys left at `None` are filled by
`resolve()` from the recipe table (`RECIPES`) and the plug-ins, so a resolved config has every value
explicit and is what gets saved beside the results and inside every checkpoint. Every key is a
`we.keys.Key`: unknown keys, wrong types and values outside a key's declared range (NaN and infinity
included) fail loudly, with one line naming the key, before anything runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

import models
from we.errors import ConfigError, InputError
from we.files import read_yaml
from we.keys import BadValue, excerpt
from we.methods import METHODS, ConfigKey, method_keys
from we.rundir import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, RESULT_FILE
from we.train.datasets import DATASETS, NORMALIZATIONS, dataset_family, dataset_spec
from we.train.loggers import LOGGERS, check_loggers

K = ConfigKey
MODEL_VARIANTS = ("zoo", "authors")
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
IMAGE_SIZE_RANGE = (8, 1024)  # input sizes a run may ask for (ImageNet family; the 32x32 sets take 32 only)


def _increasing_epochs(epochs: list[int]) -> Optional[str]:
    """strictly increasing positive epochs"""
    if any(m <= 0 for m in epochs) or epochs != sorted(set(epochs)):
        return f"must be strictly increasing positive epochs, got {excerpt(epochs)}"
    return None


CORE_KEYS: dict[str, ConfigKey] = {
    # ---- run -------------------------------------------------------------------------------------
    "out": K(str, "results/runs/manual", f"run folder: {CONFIG_FILE}, metrics, {RESULT_FILE}, {LAST_CHECKPOINT}, {BEST_CHECKPOINT}"),
    "seed": K(int, 0, "seeds model init, data order and augmentation", minimum=0, maximum=SEED_MAX),
    "device": K(str, "auto", "auto (CUDA when present) | cpu | cuda | cuda:N (several processes: "
                  "cuda:LOCAL_RANK each)"),
    "dist_backend": K(str, "auto", "several processes: auto (nccl on CUDA, gloo on CPU) | nccl | gloo",
                      choices=("auto", "nccl", "gloo")),
    # ---- data ------------------------------------------------------------------------------------
    "dataset": K(str, "digits", " | ".join(DATASETS), choices=DATASETS),
    "data_dir": K(str, "data", "dataset root (CIFAR downloads here; ImageNet: train/ and val/ class folders)"),
    "download": K(bool, True, "CIFAR, Fashion-MNIST: download into data_dir where the network allows"),
    "image_size": K(Optional[int], None, "None: 32 (CIFAR, digits, Fashion-MNIST), 224 (ImageNet) or the ImageNet "
                    "zoo model's input size (models.model_info)", minimum=IMAGE_SIZE_RANGE[0],
                    maximum=IMAGE_SIZE_RANGE[1]),
    "normalization": K(Optional[str], None, "paper (dataset statistics) | official (the authors' constants)",
                       choices=NORMALIZATIONS),
    "data_path": K(str, "auto", "auto (device on CUDA, loader on CPU) | loader (DataLoader) | device (the whole "
                   "set on the device, batched augmentation)",
                   choices=("auto", "loader", "device")),
    "workers": K(int, 2, "DataLoader worker processes (loader path), kept for the whole run", minimum=0),
    "limit_train": K(int, 0, "keep only the first N training images (0: all); for smoke runs", minimum=0),
    # ---- model and method ------------------------------------------------------------------------
    "model": K(str, "resnet20", "a zoo model (models.list_models()) | timm:<name> | <module>:<callable>"),
    "method": K(str, "baseline", "a registered method (we.methods.METHODS)"),
    "recipe": K(str, "paper", "paper | official (the authors' CIFAR script)", choices=("paper", "official")),
    "model_init": K(Optional[str], None, "zoo (the zoo's init) | authors (their model file's); None: authors under "
                    "recipe official where the zoo model has that option, else zoo", choices=MODEL_VARIANTS),
    "model_arch": K(Optional[str], None, "zoo | authors (their model file's layout: shufflenetv1, mobilenetv2_050); "
                    "None: the same rule as model_init", choices=MODEL_VARIANTS),
    # ---- optimisation (None: from the recipe) ------------------------------------------------------
    "epochs": K(Optional[int], None, "training epochs", minimum=0, strict=True),
    "batch_size": K(Optional[int], None, "the global batch", minimum=0, strict=True),
    "eval_batch_size": K(int, 1000, "test batch size", minimum=0, strict=True),
    "lr": K(Optional[float], None, "initial learning rate", minimum=0, strict=True),
    "momentum": K(Optional[float], None, "SGD momentum", minimum=0),
    "weight_decay": K(Optional[float], None, "SGD weight decay", minimum=0),
    "nesterov": K(Optional[bool], None, "Nesterov momentum"),
    "schedule": K(Optional[str], None, "multistep (x lr_gamma at lr_milestones) | step (every lr_step) | cosine",
                  choices=("multistep", "step", "cosine")),
    "lr_milestones": K(Optional[list[int]], None, "multistep: epochs of the lr drops", check=_increasing_epochs),
    "lr_step": K(Optional[int], None, "step: epochs between lr drops", minimum=0, strict=True),
    "lr_gamma": K(float, 0.1, "learning-rate decay factor", minimum=0, strict=True, maximum=1),
    # ---- speed switches (recorded in result.json) ---------------------------------------------------
    "amp": K(bool, False, "bf16 autocast"),
    "channels_last": K(bool, False, "channels-last memory format"),
    "compile": K(bool, False, "torch.compile the model"),
    "cudnn_benchmark": K(bool, False, "cuDNN autotuner"),
    # ---- logging -----------------------------------------------------------------------------------
    "progress": K(str, "auto", "auto (tqdm on a terminal) | bar | plain", choices=("auto", "bar", "plain")),
    "loggers": K(list[str], [], "live tracking: tensorboard (<out>/tb/) and/or wandb (offline without a key)",
                 choices=tuple(LOGGERS)),
}
del K

# Defaults for core keys left at None, by (recipe, dataset family). recipe paper: the paper's section 4.1.2;
# recipe official (the authors' recipe) for CIFAR: their script's StepLR(60) (decays at 60, 120 AND 180),
# nesterov off, its normalisation constants.
# A method's own per-family defaults are its plug-in's `recipe_defaults`.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("paper", "cifar"): dict(
        epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False,
        schedule="multistep", lr_milestones=[60, 120], lr_step=60, normalization="paper"),
    ("official", "cifar"): dict(
        epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False,
        schedule="step", lr_milestones=[60, 120], lr_step=60, normalization="official"),
    ("paper", "imagenet"): dict(
        epochs=90, batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False,
        schedule="step", lr_milestones=[30, 60], lr_step=30, normalization="paper"),
}
RECIPES[("official", "imagenet")] = dict(RECIPES[("paper", "imagenet")])


# Config key -> the zoo factory option it sets (models/: `init`, `arch`), passed only when "authors".
MODEL_OPTIONS = {"model_init": "init", "model_arch": "arch"}
# Values a run identity leaves out like a default: what every run did before the key existed.
IDENTITY_DEFAULTS = {"model_init": "zoo", "model_arch": "zoo"}

# Keys that say where or how a run executes, not what it computes: they may differ between an
# interrupted run and its resumption, and they are not part of a run's identity.
RESULT_NEUTRAL_KEYS = ("out", "device", "data_dir", "download", "workers", "progress", "dist_backend", "loggers")



def config_keys() -> dict[str, ConfigKey]:
    """Every key a run config has: the core keys, then each registered method's."""
    return {**CORE_KEYS, **method_keys()}


class Config:
    """A run configuration: attribute access to every key of `config_keys()`, defaults for the rest.

    Built with keyword arguments (unknown keys are refused); `to_dict` gives the plain mapping and
    `replace(**changes)` a changed copy.
    """

    __slots__ = ("_values",)

    def __init__(self, **values: Any) -> None:
        keys = config_keys()
        unknown = [k for k in values if k not in keys]
        if unknown:
            raise TypeError(f"Config got unknown key {unknown[0]!r}")
        merged = {k: _copy(values[k]) if k in values else _copy(spec.default) for k, spec in keys.items()}
        object.__setattr__(self, "_values", merged)

    def __getattr__(self, key: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Config is read-only: use cfg.replace(key=value)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._values == other._values

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def replace(self, **changes: Any) -> "Config":
        """A copy with `changes` applied."""
        return Config(**{**self._values, **changes})


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _parse(key: str, spec: ConfigKey, value: Any) -> Any:
    """`value` checked against the type of config key `key`; ConfigError naming the key."""
    try:
        return spec.parse(value)
    except BadValue as err:
        raise ConfigError(f"config key '{key}': {err}") from None


def make_config(values: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from a mapping, failing on unknown keys and wrong types (one line, names the key)."""
    keys = config_keys()
    kwargs = {}
    for key, value in values.items():
        if key not in keys:
            close = [k for k in keys if k.split("_")[-1] == str(key).split("_")[-1]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown config key {excerpt(str(key))}{hint}")
        kwargs[key] = _parse(key, keys[key], value)
    return Config(**kwargs)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Parse `key=value` strings; values are read as YAML scalars/lists (e.g. `lr=0.05`, `lr_milestones=[30,60]`)."""
    out: dict[str, Any] = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"override '{arg}' is not of the form key=value")
        key, raw = arg.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = _number(value)
    return out


def _number(value: Any) -> Any:
    """YAML 1.1 reads '1e30' (no dot) as a string; read such a number as a number."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config keys (the suite's one YAML reader: duplicate keys are refused);
    a missing file or malformed YAML is a one-line ConfigError naming the file."""
    path = Path(path)
    try:
        data = read_yaml(path, "config")
    except InputError as err:
        if err.message == "no such file":
            raise ConfigError(f"{path}: no such config file") from None
        raise ConfigError(f"{path}: {err.message} ({err.key})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def resolve(cfg: Config) -> Config:
    """Fill keys left at None from the recipe table and the plug-ins; every key is checked once: the
    given ones (and the registries they name) before anything is filled, the filled ones after."""
    given = [key for key, value in to_dict(cfg).items() if value is not None]
    check_keys(cfg, given)
    check_registries(cfg)
    family = dataset_family(cfg.dataset)
    values = to_dict(cfg)
    defaults = {**RECIPES[(cfg.recipe, family)],
                **{k: v for cls in METHODS.values() for k, v in cls.recipe_defaults.get(family, {}).items()}}
    for key, default in defaults.items():
        if values[key] is None:
            values[key] = _copy(default)
    if values["image_size"] is None:
        values["image_size"] = default_image_size(cfg.model, cfg.dataset)
    for key, option in MODEL_OPTIONS.items():
        if values[key] is None:  # the authors' model file under their recipe, where the zoo has one
            values[key] = "authors" if cfg.recipe == "official" and _takes(cfg.model, option) else "zoo"
    for cls in METHODS.values():
        cls.resolve(values)
    out = Config(**values)
    check_keys(out, [key for key in values if key not in given])
    check_across_keys(out)
    return out


def default_image_size(model: str, dataset: str) -> int:
    """The input side of a run that gives no image_size: the dataset's, or on ImageNet a zoo model's
    registered input size (`register_model(input_size=...)`)."""
    if dataset_family(dataset) == "imagenet" and models.is_zoo(model):
        return models.model_info(model).input_size
    return dataset_spec(dataset).image_size


def _takes(model: str, option: str) -> bool:
    return models.is_zoo(model) and option in models.model_options(model)


def model_options(cfg: Config) -> dict[str, str]:
    """The zoo factory options (`init`, `arch`) a resolved config asks for (only those not "zoo")."""
    return {option: getattr(cfg, key) for key, option in MODEL_OPTIONS.items() if getattr(cfg, key) not in (None, "zoo")}


def _check_model_options(cfg: Config) -> None:
    for key, option in MODEL_OPTIONS.items():
        if getattr(cfg, key) == "authors" and not _takes(cfg.model, option):
            raise ConfigError(f"config key '{key}': model {cfg.model!r} has no authors' variant of its {option} "
                              "(its zoo one is theirs, or their code has no such model); use zoo")
    if models.is_zoo(cfg.model):
        try:
            models.check_options(cfg.model, **model_options(cfg))
        except ValueError as err:
            raise ConfigError(f"config key 'model_arch': {cfg.model}: {err}") from None


def check_keys(cfg: Config, keys: list[str] | None = None) -> None:
    """Each key's own declaration (type, choices, finiteness, bounds, its check) for `keys` (all: None)."""
    specs = config_keys()
    for key in specs if keys is None else keys:
        value = getattr(cfg, key)
        _parse(key, specs[key], value)
        complaint = specs[key].complaint(value)
        if complaint:
            raise ConfigError(f"config key '{key}': {complaint}")


def check_registries(cfg: Config) -> None:
    """The model, the method and the loggers against their registries; the model against the dataset."""
    check_loggers(cfg.loggers)
    try:
        models.check_spec(cfg.model)
    except ValueError as err:
        raise ConfigError(f"config key 'model': {err}") from None
    if cfg.method not in METHODS:
        raise ConfigError(f"config key 'method': unknown method {excerpt(cfg.method)} (known: {', '.join(METHODS)})")
    family = models.model_info(cfg.model).family if models.is_zoo(cfg.model) else dataset_family(cfg.dataset)
    if family != dataset_family(cfg.dataset):  # zoo models only: timm and your own models fit any dataset
        raise ConfigError(f"config key 'model': {cfg.model!r} is a {family} model, dataset {cfg.dataset!r} is not")
    if cfg.device != "auto" and not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"config key 'device': {excerpt(cfg.device)} is not auto, cpu, cuda or cuda:N")


def check_across_keys(cfg: Config) -> None:
    """The checks of a resolved config that involve several keys (the core's, then each plug-in's)."""
    _check_model_options(cfg)
    if dataset_family(cfg.dataset) != "imagenet" and cfg.image_size != dataset_spec(cfg.dataset).image_size:
        size = dataset_spec(cfg.dataset).image_size
        raise ConfigError(f"config key 'image_size': {cfg.dataset} images are {size} pixels square; image_size "
                          f"must be {size} (or left out), got {cfg.image_size!r}")
    for cls in METHODS.values():
        cls.check(cfg)
    if cfg.data_path == "device" and cfg.dataset == "imagenet":
        raise ConfigError("config key 'data_path': 'device' holds CIFAR-sized sets only; use loader for imagenet")


def validate(cfg: Config) -> None:
    """Every check of a resolved config: each key's declaration, the registries, the checks across keys."""
    check_keys(cfg)
    check_registries(cfg)
    check_across_keys(cfg)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """YAML file (optional) + overrides -> resolved, validated Config."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        values.update(load_yaml(path))
        source = str(path)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if overrides:
        make_config(overrides, source="override")  # name the override, not the file, when it is bad
        values.update(overrides)
    return resolve(make_config(values, source=source))


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict (YAML/JSON-ready) of a config."""
    return {k: _copy(v) for k, v in cfg._values.items()}


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Keys whose values differ between two config dicts."""
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in ignore and a.get(k) != b.get(k)]
