"""Checkpoints (written atomically) and the RNG states that make a resumed run exact.

A run folder holds `last.pt` (everything a resume needs) and `best.pt` (the weights of the epoch with
the best test top-1). A new best epoch's weights are staged in `.best-epoch<N>.pt` before last.pt of
epoch N is written and renamed to best.pt after it, so an interruption anywhere leaves a best.pt that
matches the history last.pt holds (`settle_best`).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from we.files import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a reader never sees half a checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU; a corrupt file is a one-line error naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise RuntimeError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None


def staged_best(out: Path, epoch: int) -> Path:
    return Path(out) / f".best-epoch{epoch}.pt"


def stage_best(out: Path, epoch: int, state: dict[str, Any]) -> None:
    save_checkpoint(staged_best(out, epoch), state)


def promote_best(out: Path, epoch: int) -> int:
    """The staged best of `epoch` becomes best.pt (one rename); returns the epoch."""
    os.replace(staged_best(out, epoch), Path(out) / "best.pt")
    return epoch


def settle_best(out: Path, last_epoch: int) -> int | None:
    """On resume from last.pt of `last_epoch`: a staged best of that epoch becomes best.pt, one of a later
    (not checkpointed) epoch is dropped. Returns the epoch best.pt holds (None: there is none)."""
    for path in Path(out).glob(".best-epoch*.pt"):
        if path == staged_best(out, last_epoch):
            promote_best(out, last_epoch)
        else:
            path.unlink()
    best = Path(out) / "best.pt"
    return load_checkpoint(best)["epoch"] if best.exists() else None


def rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch (CPU) and every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
