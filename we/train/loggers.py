"""Live tracking of a run (config key `loggers`): TensorBoard event files and Weights & Biases.

Rank 0 hands each epoch's metrics row (the row metrics.jsonl gets) to `RunLoggers.log_epoch`, with the
epoch as the step: train/test loss and top-1/top-5, the learning rate, the epoch's timings and every
method metric (the WE counts per kind, `we_conv_weight`, ..., as `method/<column>`).

- `tensorboard`: event files in `<out>/tb/`, so `tensorboard --logdir results/runs/table1` shows every
  cell of a grid. A resumed run opens its writer with `purge_step` = the first epoch it trains, so an
  epoch logged before an interruption but not checkpointed is replaced, never shown twice.
- `wandb`: project = the grid (`grid` of `<out>/cell.json`, else the run folder's parent's name),
  name and id = the run folder's name (a resumed run continues the same wandb run), files in
  `<out>/wandb/`. Offline (no network; `wandb sync <out>/wandb/offline-run-*` uploads later) unless
  WANDB_MODE or WANDB_API_KEY is set or `wandb login` stored a key in ~/.netrc.

Loggers only read the metrics and leave every random number generator as they found it: a run's
results and run hash are the same with and without them (`loggers` is result-neutral).
"""
from __future__ import annotations

import contextlib
import importlib.util
import netrc
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from we.errors import ConfigError
from we.rundir import read_cell, tolerant
from we.train.checkpoint import rng_state, set_rng_state

# logger name -> (module it needs, the pip command that installs it)
LOGGERS = {"tensorboard": ("tensorboard", "pip install tensorboard"), "wandb": ("wandb", "pip install wandb")}
TB_DIR = "tb"
# metrics-row column -> scalar tag; any other numeric column is a method metric, `method/<column>`
TAGS = {"lr": "lr", "train_loss": "train/loss", "train_top1": "train/top1", "test_loss": "test/loss",
        "test_top1": "test/top1", "test_top5": "test/top5", "seconds": "time/epoch_seconds",
        "train_seconds": "time/train_seconds", "images_per_s": "time/images_per_s",
        "method_seconds": "time/method_seconds"}


def check_loggers(names: Sequence[str]) -> None:
    """Each name known, given once, and its package importable; else a one-line ConfigError naming the key."""
    for i, name in enumerate(names):
        if name not in LOGGERS:
            raise ConfigError(f"config key 'loggers': {name!r} is not one of {', '.join(LOGGERS)}")
        if name in names[:i]:
            raise ConfigError(f"config key 'loggers': {name!r} is given twice")
        module, pip = LOGGERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"config key 'loggers': {name!r} needs the {module} package; run `{pip}`")


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The epoch row's numeric columns under their scalar tags (the epoch itself is the step)."""
    return {TAGS.get(k, f"method/{k}"): float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """Whatever a logging library draws from Python's, NumPy's or torch's generators is undone."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def wandb_project(out: Path) -> str:
    """The grid's name (from the grid's cell.json), else the run folder's parent's name."""
    cell, _ = tolerant(read_cell, out)
    grid = (cell or {}).get("grid")
    return str(grid or out.absolute().parent.name)


def wandb_mode() -> str | None:
    """None (wandb decides: WANDB_MODE, or online with a key) where a key or mode is set, else offline."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    try:
        stored = netrc.netrc().authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        stored = None
    return None if stored else "offline"


class RunLoggers:
    """The run's loggers (none: every call does nothing); `start_epoch` = epochs already done (resume)."""

    def __init__(self, names: Sequence[str], out: Path, config: dict[str, Any], start_epoch: int) -> None:
        self.tb = self.wandb = None
        with _rng_kept():
            if "tensorboard" in names:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: events of epochs after the checkpoint (logged, then interrupted) are dropped
                self.tb = SummaryWriter(str(out / TB_DIR), purge_step=start_epoch + 1 if start_epoch else None)
            if "wandb" in names:
                import wandb

                run_id = re.sub(r"[^A-Za-z0-9_-]", "_", out.absolute().name)
                self.wandb = wandb.init(project=wandb_project(out), name=out.absolute().name, id=run_id,
                                        resume="allow", dir=str(out), config=config, mode=wandb_mode(),
                                        settings=wandb.Settings(console="off", silent=True))

    def log_epoch(self, row: dict[str, Any]) -> None:
        values, step = scalars(row), int(row["epoch"])
        if self.tb is not None:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            with _rng_kept():
                self.wandb.finish()
        self.tb = self.wandb = None
