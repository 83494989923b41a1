"""One typed run configuration: every key, its default, validation and recipe resolution.

A run is described by a flat `Config`. Keys left at `None` are filled by `resolve()` from the
recipe table below (`RECIPES`), so a resolved config has every value explicit and is what gets
saved beside the results and inside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A bad configuration key or value (the message is one line and names the key)."""


@dataclass
class Config:
    # ---- run -------------------------------------------------------------------------------
    out: str = "results/runs/manual"  # run folder: config.yaml, metrics, result.json, last.pt
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (several processes: cuda:LOCAL_RANK each)
    dist_backend: str = "auto"  # several processes (torchrun, SLURM tasks): auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    # ---- data ------------------------------------------------------------------------------
    dataset: str = "digits"  # digits | cifar10 | cifar100 | imagenet
    data_dir: str = "data"
    download: bool = True  # CIFAR only: download into data_dir where the network allows
    image_size: Optional[int] = None  # None: 32 (CIFAR, digits), 224 (ImageNet), 128 for mobilenetv2_050
    normalization: Optional[str] = None  # paper (dataset statistics) | official (authors' constants)
    data_path: str = "auto"  # auto (device on CUDA, loader on CPU) | loader | device
    workers: int = 2  # DataLoader worker processes (loader path)
    limit_train: int = 0  # keep only the first N training images (0: all); for smoke runs
    # ---- model and method --------------------------------------------------------------------
    model: str = "resnet20"
    method: str = "baseline"  # baseline | we | oni | svb | repr | fg | rl
    recipe: str = "paper"  # paper | official (the authors' CIFAR script)
    # ---- optimisation (None: from the recipe) ---------------------------------------------------
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    eval_batch_size: int = 1000
    lr: Optional[float] = None
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    nesterov: Optional[bool] = None
    schedule: Optional[str] = None  # multistep (x lr_gamma at lr_milestones) | step (every lr_step) | cosine
    lr_milestones: Optional[list[int]] = None
    lr_step: Optional[int] = None
    lr_gamma: float = 0.1
    # ---- Weight Evolution (method=we) --------------------------------------------------------------
    we_variant: str = "paper"  # paper (the equations) | official (the authors' script)
    we_r_hat: float = 0.05  # Eq. 2 base selection rate
    we_beta: Optional[float] = None  # Eq. 2 stage divisor (2.5 CIFAR, 2 ImageNet)
    we_eta: Optional[float] = None  # Eq. 2 temperature (15 CIFAR, 8 ImageNet)
    we_gamma: float = 0.05  # Eq. 4 relative-importance threshold
    we_milestones: Optional[list[int]] = None  # Eq. 2 stage starts (None: the lr milestones)
    we_matching: str = "forward"  # forward | reverse (WE-RM, Table 6)
    we_conv: bool = True  # evolve Conv2d weight and bias (Table 8)
    we_bn: bool = True  # evolve BatchNorm2d weight and bias (Table 8)
    we_interval: int = 1  # evolve every N units of we_interval_unit
    we_interval_unit: str = "epoch"  # epoch | iter
    we_selection: str = "global+local"  # global+local | global (WE-G) | local (WE-L), Table 5
    we_alpha: Union[str, float] = "adaptive"  # adaptive (Eq. 6) | fixed float in [0, 1] (Figure 6)
    we_level: str = "element"  # element | filter (filter-level-GL, Table 7)
    # ---- comparison methods of Tables 1-3: ONI, SVB, RePr (method=oni | svb | repr) ---------------
    oni_group_size: int = 64  # ONI: filters orthogonalised together (0: all filters of a conv group)
    oni_iters: int = 5  # ONI: Newton iterations T
    oni_eps: float = 1e-5  # ONI: added to the diagonal of S = Zc Zc^T
    oni_scale: bool = True  # ONI: learnable per-channel scale (False: a fixed buffer)
    oni_scale_init: float = 1.414  # ONI: initial scale (the authors' NScale, sqrt 2)
    svb_eps: float = 0.5  # SVB: singular values bounded to [1/(1+eps), 1+eps]
    svb_interval: int = 1  # SVB: bound after every N epochs (never after the last)
    svb_bn: bool = False  # SVB: also bound BatchNorm scales (BBN)
    svb_bn_eps: float = 1.0  # SVB: BN scales bounded to [m/(1+eps), m(1+eps)] around their layer mean m
    svb_bn_mode: str = "bbn"  # SVB: bbn (gamma/std, the paper) | rel (gamma, the authors' script default)
    repr_s1: int = 20  # RePr: epochs of full training per cycle
    repr_s2: int = 10  # RePr: epochs with the pruned filters held at zero per cycle
    repr_p: float = 0.3  # RePr: fraction of the ranked filters pruned
    repr_cycles: int = 0  # RePr: at most this many prune/re-init cycles (0: as many as fit)
    # ---- comparison methods of Tables 1-3: filter grafting, retrospective loss (method=fg | rl) ----
    fg_n: int = 2  # FG: networks trained side by side (1: grafting from the network's previous-epoch weights)
    fg_a: float = 0.4  # FG: A in c = A/pi * arctan(k (H_own - H_other)) + 1/2
    fg_k: float = 500.0  # FG: k in the same coefficient (the authors' script calls it c)
    fg_bins: int = 10  # FG: histogram bins of the layer entropy H
    fg_lrs: Optional[list[float]] = None  # FG: initial lr of networks 0..n-1 (None: the authors' rule from lr)
    rl_kappa: float = 4.0  # RL: kappa in (kappa + 1) |f(x) - y| - kappa |f(x) - f_past(x)|
    rl_norm: str = "l1"  # RL: l1 | l2, per sample on softmax outputs vs one-hot targets
    rl_warmup: int = 10  # RL: epochs of plain training before the retrospective term starts
    rl_update: int = 4  # RL: F, epochs between refreshes of the past snapshot
    # ---- speed switches (recorded in result.json) -------------------------------------------------
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    cudnn_benchmark: bool = False
    # ---- logging -------------------------------------------------------------------------------
    progress: str = "auto"  # auto (tqdm on a terminal) | bar | plain


# Defaults for keys left at None, by (recipe, dataset family). Paper section 4.1.2; the authors'
# script (official) for CIFAR: StepLR(60) (decays at 60, 120 AND 180), nesterov off, its constants.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("paper", "cifar"): dict(
        epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False,
        schedule="multistep", lr_milestones=[60, 120], lr_step=60, normalization="paper",
        we_beta=2.5, we_eta=15.0),
    ("official", "cifar"): dict(
        epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False,
        schedule="step", lr_milestones=[60, 120], lr_step=60, normalization="official",
        we_beta=2.5, we_eta=15.0),
    ("paper", "imagenet"): dict(
        epochs=90, batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False,
        schedule="step", lr_milestones=[30, 60], lr_step=30, normalization="paper",
        we_beta=2.0, we_eta=8.0),
}
RECIPES[("official", "imagenet")] = dict(RECIPES[("paper", "imagenet")])

IMAGE_SIZES = {"digits": 32, "cifar10": 32, "cifar100": 32, "imagenet": 224}
MODEL_IMAGE_SIZES = {"mobilenetv2_050": 128}  # paper Table 4: MobileNetV2-0.5 at 128x128

CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("digits", "cifar10", "cifar100", "imagenet"),
    "normalization": ("paper", "official"),
    "data_path": ("auto", "loader", "device"),
    "recipe": ("paper", "official"),
    "schedule": ("multistep", "step", "cosine"),
    "we_variant": ("paper", "official"),
    "we_matching": ("forward", "reverse"),
    "we_interval_unit": ("epoch", "iter"),
    "we_selection": ("global+local", "global", "local"),
    "we_level": ("element", "filter"),
    "svb_bn_mode": ("bbn", "rel"),
    "progress": ("auto", "bar", "plain"),
    "dist_backend": ("auto", "nccl", "gloo"),
    "rl_norm": ("l1", "l2"),  # RL
}
POSITIVE = ("epochs", "batch_size", "eval_batch_size", "lr", "we_interval", "lr_step", "we_eta",
            "oni_iters", "oni_scale_init", "svb_interval", "repr_s1", "repr_s2")
NON_NEGATIVE = ("seed", "workers", "limit_train", "weight_decay", "momentum", "we_r_hat", "we_gamma",
                "oni_group_size", "oni_eps", "svb_eps", "svb_bn_eps", "repr_cycles")


def dataset_family(dataset: str) -> str:
    """'imagenet' for ImageNet, else 'cifar' (CIFAR-10/100 and the 32x32 digits set)."""
    return "imagenet" if dataset == "imagenet" else "cifar"


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats. Raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def make_config(values: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from a mapping, failing on unknown keys and wrong types (one line, names the key)."""
    hints = _hints()
    known = {f.name for f in fields(Config)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            close = [k for k in known if k.split("_")[-1] == str(key).split("_")[-1]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown config key '{key}'{hint}")
        kwargs[key] = _coerce(key, value, hints[key])
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
    """Read a YAML mapping; a missing file or malformed YAML is a one-line ConfigError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: malformed YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def resolve(cfg: Config) -> Config:
    """Fill keys left at None from the recipe table and validate every value; returns a new Config."""
    validate_choices(cfg)
    family = dataset_family(cfg.dataset)
    recipe = RECIPES[(cfg.recipe, family)]
    values = dataclasses.asdict(cfg)
    for key, default in recipe.items():
        if values[key] is None:
            values[key] = list(default) if isinstance(default, list) else default
    if values["image_size"] is None:
        values["image_size"] = MODEL_IMAGE_SIZES.get(cfg.model, IMAGE_SIZES[cfg.dataset]) \
            if family == "imagenet" else IMAGE_SIZES[cfg.dataset]
    if values["we_milestones"] is None:
        values["we_milestones"] = _stage_starts(values)
    if values["fg_lrs"] is None:  # FG: the authors' per-network rule
        from we.methods.fg import default_learning_rates

        values["fg_lrs"] = default_learning_rates(values["lr"], values["fg_n"])
    out = Config(**values)
    validate(out)
    return out


def _stage_starts(values: dict[str, Any]) -> list[int]:
    """The epochs at which the learning rate drops: WE's Eq. 2 stages follow them."""
    if values["schedule"] == "multistep":
        return list(values["lr_milestones"])
    if values["schedule"] == "step":
        # Eq. 2 has stages t = 1, 2, 3 in the paper; the official script's third divisor covers the rest.
        return [m for m in range(values["lr_step"], values["epochs"], values["lr_step"])]
    return []


def validate_choices(cfg: Config) -> None:
    """Check enumerated keys, the model and the method against their registries."""
    for key, allowed in CHOICES.items():
        value = getattr(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(allowed)}")
    import models  # local: the registry imports torch
    from we.methods import METHODS

    if cfg.model not in models.list_models():
        raise ConfigError(f"config key 'model': unknown model {cfg.model!r} (known: {', '.join(models.list_models())})")
    if cfg.method not in METHODS:
        raise ConfigError(f"config key 'method': unknown method {cfg.method!r} (known: {', '.join(METHODS)})")
    family = models.model_info(cfg.model).family
    if family != dataset_family(cfg.dataset):
        raise ConfigError(f"config key 'model': {cfg.model!r} is a {family} model, dataset {cfg.dataset!r} is not")
    if cfg.device != "auto" and not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"config key 'device': {cfg.device!r} is not auto, cpu, cuda or cuda:N")


def validate(cfg: Config) -> None:
    """Range checks on a resolved config."""
    validate_choices(cfg)
    for key in POSITIVE:
        if getattr(cfg, key) is not None and getattr(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {getattr(cfg, key)!r}")
    for key in NON_NEGATIVE:
        if getattr(cfg, key) is not None and getattr(cfg, key) < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {getattr(cfg, key)!r}")
    if not 0 < cfg.lr_gamma <= 1:
        raise ConfigError(f"config key 'lr_gamma': must be in (0, 1], got {cfg.lr_gamma!r}")
    if isinstance(cfg.we_alpha, str) and cfg.we_alpha != "adaptive":
        raise ConfigError(f"config key 'we_alpha': {cfg.we_alpha!r} is not 'adaptive' or a float in [0, 1]")
    if isinstance(cfg.we_alpha, float) and not 0.0 <= cfg.we_alpha <= 1.0:
        raise ConfigError(f"config key 'we_alpha': must be in [0, 1], got {cfg.we_alpha!r}")
    if cfg.we_r_hat > 1:
        raise ConfigError(f"config key 'we_r_hat': must be in [0, 1], got {cfg.we_r_hat!r}")
    if cfg.we_beta is not None and cfg.we_beta < 1:
        raise ConfigError(f"config key 'we_beta': must be >= 1 (Eq. 2), got {cfg.we_beta!r}")
    for key in ("lr_milestones", "we_milestones"):
        ms = getattr(cfg, key)
        if ms is not None and (any(m <= 0 for m in ms) or ms != sorted(set(ms))):
            raise ConfigError(f"config key '{key}': must be strictly increasing positive epochs, got {ms!r}")
    if cfg.image_size is not None and cfg.image_size < 8:
        raise ConfigError(f"config key 'image_size': must be >= 8, got {cfg.image_size!r}")
    if not 0 < cfg.repr_p < 1:
        raise ConfigError(f"config key 'repr_p': must be in (0, 1), got {cfg.repr_p!r}")
    _validate_fg_rl(cfg)
    if cfg.data_path == "device" and cfg.dataset == "imagenet":
        raise ConfigError("config key 'data_path': 'device' holds CIFAR-sized sets only; use loader for imagenet")


def _validate_fg_rl(cfg: Config) -> None:
    """Range checks of the filter-grafting (fg_*) and retrospective-loss (rl_*) keys."""
    if cfg.fg_n < 1:
        raise ConfigError(f"config key 'fg_n': must be >= 1, got {cfg.fg_n!r}")
    if not 0.0 <= cfg.fg_a <= 1.0:
        raise ConfigError(f"config key 'fg_a': must be in [0, 1] (keeps c in [0, 1]), got {cfg.fg_a!r}")
    if cfg.fg_k < 0:
        raise ConfigError(f"config key 'fg_k': must be >= 0, got {cfg.fg_k!r}")
    if cfg.fg_bins < 2:
        raise ConfigError(f"config key 'fg_bins': must be >= 2, got {cfg.fg_bins!r}")
    if cfg.fg_lrs is not None:
        if len(cfg.fg_lrs) != cfg.fg_n or any(lr <= 0 for lr in cfg.fg_lrs):
            raise ConfigError(f"config key 'fg_lrs': must hold fg_n={cfg.fg_n} positive rates, got {cfg.fg_lrs!r}")
        if cfg.lr is not None and cfg.fg_lrs[0] != cfg.lr:
            raise ConfigError(f"config key 'fg_lrs': the first rate is network 0's and must equal lr={cfg.lr!r}, "
                              f"got {cfg.fg_lrs[0]!r}")
    if cfg.rl_kappa < 0:
        raise ConfigError(f"config key 'rl_kappa': must be >= 0, got {cfg.rl_kappa!r}")
    if cfg.rl_warmup < 0:
        raise ConfigError(f"config key 'rl_warmup': must be >= 0, got {cfg.rl_warmup!r}")
    if cfg.rl_update < 1:
        raise ConfigError(f"config key 'rl_update': must be >= 1, got {cfg.rl_update!r}")


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
    return dataclasses.asdict(cfg)


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Keys whose values differ between two config dicts."""
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in ignore and a.get(k) != b.get(k)]
