"""Checkpoints (written atomically, read without executing code) and the RNG states that make a resumed run exact.

A checkpoint holds tensors and plain containers only (dict, list, tuple, str, int, float, bool, None),
so `torch.load(weights_only=True)` reads it: no pickled object in a copied run folder can run code.

A run folder holds `last.pt` (everything a resume needs) and `best.pt` (the weights of the epoch with
the best test top-1). A new best epoch's weights are staged in `.best-epoch<N>.pt` before last.pt of
epoch N is written and renamed to best.pt after it, so an interruption anywhere leaves a best.pt that
matches the history last.pt holds (`settle_best`).
"""
from __future__ import annotations

import io
import os
import pickle
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from we.errors import CheckpointError
from we.rundir import (BEST_CHECKPOINT, BROKEN_SUFFIX, CONFIG_FILE, STAGED_BEST_FORMAT, first_line, read_checkpoint,
                       write_checkpoint as save_checkpoint)

TRUST_FLAG = "--trust-checkpoint"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with torch's restricted unpickler (weights_only=True), never anything else
    (`we.rundir.read_checkpoint`); a file that would need full unpickling is refused with the way forward."""
    try:
        return read_checkpoint(path)
    except CheckpointError as err:
        if not getattr(err, "needs_unpickling", False):
            raise
        raise CheckpointError(
            f"{err}; move the run folder away and rerun from scratch, or, only if you wrote this file yourself "
            f"with an earlier version of the suite, convert it once with `python -m we.train {TRUST_FLAG} "
            f"--config {Path(path).parent / CONFIG_FILE}`") from None


def convert_trusted_checkpoint(path: Path) -> bool:
    """`--trust-checkpoint`: a checkpoint the restricted unpickler refuses is loaded ONCE with full unpickling
    (which runs whatever code it holds) and rewritten in the current plain format; True when rewritten.

    Only a checkpoint that then loads with weights_only=True is written back; anything else is refused."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return False  # already safe: nothing to trust
    except pickle.UnpicklingError:
        pass
    state = torch.load(path, map_location="cpu", weights_only=False)  # the user's explicit, typed choice
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(state).__name__}, not a dict)")
    if "rng" in state:
        state["rng"] = plain_rng_state(state["rng"])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: still not loadable without full unpickling after conversion "
                              f"({first_line(err)}); not rewritten") from None
    save_checkpoint(path, state)
    print(f"{path}: loaded with full unpickling ({TRUST_FLAG}) and rewritten in the safe format", file=sys.stderr)
    return True


def plain_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors and plain values (also converts the format written before: NumPy's array)."""
    version, internal, gauss_next = state["python"]  # random.getstate(): (3, tuple of 625 ints, None|float)
    name, keys, pos, has_gauss, cached = state["numpy"]  # np.random.get_state(): ('MT19937', uint32[624], ...)
    out = {"python": (int(version), tuple(int(x) for x in internal), None if gauss_next is None else float(gauss_next)),
           "numpy": (str(name), torch.as_tensor(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                     float(cached)),
           "torch": state["torch"]}
    if "cuda" in state:
        out["cuda"] = list(state["cuda"])
    return out


def staged_best(out: Path, epoch: int) -> Path:
    return Path(out) / STAGED_BEST_FORMAT.format(epoch=epoch)


def stage_best(out: Path, epoch: int, state: dict[str, Any]) -> None:
    save_checkpoint(staged_best(out, epoch), state)


def promote_best(out: Path, epoch: int) -> int:
    """The staged best of `epoch` becomes best.pt (one rename); returns the epoch."""
    os.replace(staged_best(out, epoch), Path(out) / BEST_CHECKPOINT)
    return epoch


def settle_best(out: Path, last_epoch: int) -> int | None:
    """On resume from last.pt of `last_epoch`: a staged best of that epoch becomes best.pt, one of a later
    (not checkpointed) epoch is dropped. Returns the epoch best.pt holds (None: there is none). A best.pt
    that does not load never blocks the resume: it is set aside as best.pt.broken (a warning says so) and
    the next epoch better than the history's best writes a new one."""
    for path in Path(out).glob(STAGED_BEST_FORMAT.format(epoch="*")):
        if path == staged_best(out, last_epoch):
            promote_best(out, last_epoch)
        else:
            path.unlink()
    best = Path(out) / BEST_CHECKPOINT
    if not (best.exists() or best.is_symlink()):
        return None
    try:
        epoch = read_checkpoint(best).get("epoch")
    except CheckpointError as err:
        epoch = None
        why = str(err)
    else:
        why = "" if isinstance(epoch, int) else f"{best}: holds no epoch"
    if why:
        aside = best.with_name(BEST_CHECKPOINT + BROKEN_SUFFIX)
        os.replace(best, aside)
        print(f"warning: {why}; set aside as {aside}, the next better epoch writes a new {BEST_CHECKPOINT}",
              file=sys.stderr)
        return None
    return epoch


def rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch (CPU) and every CUDA device, as tensors and plain values."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return plain_rng_state(state)


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
