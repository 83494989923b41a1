"""Opening a run's folder: every check before anything is written, and the state a run resumes from.

A folder is taken only for the config it holds (config.yaml, result.json's config and last.pt's must all be the
requested one, result-neutral keys aside, and of this method's version): a finished run is returned as it is, an
unfinished one resumes from its last.pt. The members of one seed array are opened together, so that an epoch
their array had not finished writing is settled for all of them first (`we.train.array_commit`).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from we.errors import ConfigError
from we.methods import method_version
from we.rundir import (CONFIG_FILE, LAST_CHECKPOINT, RESULT_FILE, TERMINAL, RunFileError, read_config, read_metrics,
                       read_result)
from we.train.array_commit import settle_staged_last
from we.train.checkpoint import convert_trusted_checkpoint, load_checkpoint
from we.train.config import RESULT_NEUTRAL_KEYS, Config, config_diff, to_dict
from we.train.distributed import DistEnv


def saved_history(out: Path) -> list[dict[str, Any]]:
    """The epoch rows of metrics.jsonl (written with last.pt, so the epochs last.pt holds)."""
    try:
        return read_metrics(out)
    except RunFileError:
        return []


def _check_same_config(path: Path, old: dict[str, Any], cfg: Config) -> None:
    """The config a run folder's file recorded (`old`) must be the requested one, result-neutral keys aside;
    else a ConfigError naming the file and the first differing key."""
    new = to_dict(cfg)
    # A key the old run did not know (added to Config since) ran with the behaviour it now defaults to.
    diff = config_diff(old, {k: v for k, v in new.items() if k in old}, ignore=RESULT_NEUTRAL_KEYS)
    order = {key: i for i, key in enumerate(new)}  # a key one sets (lr) before one derived from it (fg_lrs)
    diff.sort(key=lambda key: order.get(key, len(order)))  # a key the code no longer has: last
    if diff:
        key = diff[0]
        raise ConfigError(f"{path}: holds a run with a different config (first differing key {key!r}: "
                          f"{old.get(key)!r} there, {new.get(key)!r} requested; keys: {', '.join(diff)}); "
                          "use another out")


def _check_same_run(out: Path, cfg: Config) -> None:
    """An existing run folder's config.yaml must hold the same configuration (else results would mix)."""
    try:
        old = read_config(out)
    except RunFileError as err:
        raise ConfigError(str(err)) from None
    if old is not None:
        _check_same_config(out / CONFIG_FILE, old, cfg)


def _check_same_version(path: Path, version: int, cfg: Config) -> None:
    """A run folder's result or checkpoint must come from this version of the method (else it is another run)."""
    if version != method_version(cfg.method):
        raise ConfigError(f"{path}: holds a run of version {version} of method {cfg.method!r}, this code trains "
                          f"version {method_version(cfg.method)}; use another out")


def log(msg: str) -> None:
    print(msg, flush=True)


def open_run_folder(out: Path, cfg: Config, dist_env: DistEnv,
                     trust_checkpoint: bool) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(result.json of a finished run of this config, None) or (None, last.pt's state to resume, or None).

    Nothing is written before every check passed: config.yaml, result.json's config and the config stored in
    last.pt must all be the requested one (result-neutral keys aside), whatever config.yaml says."""
    ckpt_path = out / LAST_CHECKPOINT
    _check_same_run(out, cfg)
    if trust_checkpoint and ckpt_path.exists():
        if dist_env.is_main:
            convert_trusted_checkpoint(ckpt_path)
        dist_env.barrier()
    try:
        previous = read_result(out)
    except RunFileError as err:
        raise ConfigError(f"{err}; move the run folder away to rerun it") from None
    if previous is not None and isinstance(previous.get("config"), dict):
        _check_same_config(out / RESULT_FILE, previous["config"], cfg)
    if previous is not None and previous.get("status") in TERMINAL:
        _check_same_version(out / RESULT_FILE, previous.get("method_version", 1), cfg)
        if dist_env.is_main:
            log(f"{out}: already {previous['status']}; nothing to do")
        return previous, None
    resume = load_checkpoint(ckpt_path) if ckpt_path.exists() or ckpt_path.is_symlink() else None
    if resume is not None:  # refused here, before anything is written
        check_checkpoint(ckpt_path, resume, cfg)
    return None, resume


def check_checkpoint(path: Path, state: dict[str, Any], cfg: Config) -> None:
    """A last.pt (or a seed array's staged one) must hold a run of this config and of this method's version."""
    if isinstance(state.get("config"), dict):
        _check_same_config(path, state["config"], cfg)
    _check_same_version(path, state.get("method_version", 1), cfg)


def open_run_folders(cfgs: list[Config], dist_env: DistEnv, trust_checkpoint: bool = False
                     ) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """`open_run_folder` of each run (the members of one seed array, or one run alone), once the epoch of an array
    that a stop cut short is settled (`we.train.array_commit`: rolled forward, or back, for all of them)."""
    opened = [open_run_folder(Path(c.out), c, dist_env, trust_checkpoint) for c in cfgs]
    pending = [i for i, (previous, _) in enumerate(opened) if previous is None]
    rolled = None
    if dist_env.is_main:  # rank 0 alone renames; last.pt is replaced atomically, so no rank reads half of one
        outs = [Path(cfgs[i].out) for i in pending]
        committed = [opened[i][1]["epoch"] if opened[i][1] else 0 for i in pending]
        checks = [functools.partial(check_checkpoint, cfg=cfgs[i]) for i in pending]
        forward = settle_staged_last(outs, committed, checks)
        rolled = [i for i, out in zip(pending, outs) if out in forward]
    for i in dist_env.broadcast_object(rolled):  # every rank reads again what rank 0 rolled forward
        opened[i] = open_run_folder(Path(cfgs[i].out), cfgs[i], dist_env, trust_checkpoint)
    return opened
