"""Which runs may train as one seed array (`check_array`), and the configs of `python -m we.train seeds=[...]`.

Runs join an array when their configs are equal but for `seed` and the result-neutral keys, their method
declares no `array_reason`, their model draws no random numbers in the forward pass, and none of `amp`,
`channels_last`, `compile` is set; anything else is a one-line ConfigError naming the key, before any
folder is written (`we.train.array_run`).
"""
from __future__ import annotations

from typing import Any

import torch

import models
from we.errors import ConfigError
from we.methods import METHODS
from we.train.config import (RESULT_NEUTRAL_KEYS, Config, config_diff, load_config, load_yaml, model_options,
                             parse_overrides, to_dict)
from we.train.datasets import dataset_info
from we.train.distributed import launch_env
from we.train.seed_array import has_random_layers

SPEED_KEYS = ("amp", "channels_last", "compile")  # not fused: refused for arrays


def check_array(cfgs: list[Config]) -> None:
    """A ConfigError (one line, naming the key) unless `cfgs` can train as one array."""
    if len(cfgs) < 1:
        raise ConfigError("an array needs at least one run")
    first = to_dict(cfgs[0])
    for cfg in cfgs[1:]:
        diff = config_diff(first, to_dict(cfg), ignore=(*RESULT_NEUTRAL_KEYS, "seed"))
        diff.sort(key=list(first).index)  # the config's own order: a key one sets (lr) before one derived from it
        if diff:
            raise ConfigError(f"config key {diff[0]!r}: the runs of an array may differ only in seed "
                              f"(and {', '.join(RESULT_NEUTRAL_KEYS)})")
    for key in ("seed", "out"):
        values = [str(getattr(c, key)) for c in cfgs]
        if len(set(values)) != len(values):
            raise ConfigError(f"config key {key!r}: the runs of an array need distinct values, got {values}")
    cfg = cfgs[0]
    for key in SPEED_KEYS:
        if getattr(cfg, key):
            raise ConfigError(f"config key {key!r}: not available for seed arrays; set {key}=false or train solo")
    reason = METHODS[cfg.method].array_reason
    if reason is not None:
        raise ConfigError(f"config key 'method': {cfg.method} cannot train in a seed array ({reason}); train solo")
    with torch.device("meta"):  # the architecture only: no memory, no weights drawn
        model = models.create(cfg.model, num_classes=dataset_info(cfg.dataset, cfg.normalization,
                                                                  cfg.image_size).num_classes,
                              image_size=cfg.image_size, **model_options(cfg))
    if has_random_layers(model):
        raise ConfigError(f"config key 'model': {cfg.model} draws random numbers in training (dropout), which a "
                          "seed array cannot draw as the solo runs do; train solo")
    if launch_env()[1] > 1:
        raise ConfigError("config key 'seeds': seed arrays train in one process; launch them without torchrun")


def array_configs(path: str | None, overrides: list[str], seeds: Any) -> list[Config]:
    """The configs of `python -m we.train ... seeds=[0,1,2] out=DIR/s{seed}`: one per seed, `out` formatted with it."""
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ConfigError(f"config key 'seeds': a non-empty list of int seeds, e.g. seeds=[0,1,2], got {seeds!r}")
    given = {**(load_yaml(path) if path else {}), **parse_overrides(overrides)}
    if "seed" in given:
        raise ConfigError("config key 'seed': give either seed or seeds, not both")
    out = str(given.get("out", ""))
    if "{seed}" not in out:
        raise ConfigError(f"config key 'out': a seed array writes one folder per seed; put {{seed}} in it, "
                          f"e.g. out=results/runs/resnet20-we-s{{seed}}, got {out!r}")
    return [load_config(path, [*overrides, f"seed={s}", f"out={out.replace('{seed}', str(s))}"]) for s in seeds]
