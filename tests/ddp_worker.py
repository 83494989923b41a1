"""Test helper: one trainer process (under torchrun, or alone) that also saves what it ended with.

    python tests/ddp_worker.py PROBE_DIR [--crash-at EPOCH] key=value ...

Runs `we.train.main` on the config; the configured method is replaced, in this process only, by a
subclass that keeps the TrainContext, so that afterwards this rank's final model, optimizer and
method state, every evaluation this rank computed (the trainer's and the method's, in order) and the
returned result land in PROBE_DIR/rank{RANK}.pt. `--crash-at E` raises at the end of the
0-based epoch E (after epoch E's training; the checkpoint of epoch E - 1 is on disk), on every rank,
rank 0 first.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from we.train.config import load_config  # noqa: E402
from we.methods import METHODS  # noqa: E402
from we.train import main, run_parts, trainer  # noqa: E402

EVALUATIONS: list[dict] = []  # every evaluation of this rank, as computed here (not rank 0's row)


def recording_evaluate(*args, **kwargs):
    metrics = EVALUATE(*args, **kwargs)
    EVALUATIONS.append(dict(metrics))
    return metrics


EVALUATE = trainer.evaluate
trainer.evaluate = run_parts.evaluate = recording_evaluate  # the epoch's evaluation and the methods' (ctx.evaluate)


class Interrupted(RuntimeError):
    """The simulated interruption."""


def probe_class(base: type, crash_at: int | None) -> type:
    """`base` that keeps its TrainContext and can fail at the end of one epoch."""

    class Probe(base):
        ctx = None
        instance = None

        def on_train_start(self, ctx):
            type(self).ctx, type(self).instance = ctx, self
            super().on_train_start(ctx)

        def on_epoch_end(self, ctx, epoch, last):
            if crash_at is not None and epoch == crash_at:
                if ctx.dist.rank:  # rank 0 first, so that it records the failure before torchrun stops the rest
                    time.sleep(2.0)
                raise Interrupted(f"interrupted at the end of epoch {epoch + 1}")
            return super().on_epoch_end(ctx, epoch, last)

    return Probe


def run(argv: list[str]) -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("probe_dir")
    parser.add_argument("--crash-at", type=int, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(None, args.overrides)
    probe = probe_class(METHODS[cfg.method], args.crash_at)
    METHODS[cfg.method] = probe
    result = main(cfg)
    ctx = probe.ctx
    rank = int(os.environ.get("RANK", "0"))
    Path(args.probe_dir).mkdir(parents=True, exist_ok=True)
    torch.save({"model": ctx.model.state_dict(), "optimizer": ctx.optimizer.state_dict(), "result": result,
                "method": probe.instance.state_dict(), "evaluations": EVALUATIONS,
                "world_size": ctx.dist.world_size}, Path(args.probe_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    run(sys.argv[1:])
