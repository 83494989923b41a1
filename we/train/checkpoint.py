"""Checkpoints (written atomically) and the RNG states that make a resumed run exact."""
from __future__ import annotations

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
