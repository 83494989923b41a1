"""One run: its config, data, optimisation, checkpoints, processes and the trainer (`main(cfg)`)."""
from we.train.cli import cli
from we.train.trainer import main

__all__ = ["cli", "main"]
