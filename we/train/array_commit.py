"""A seed array's epoch written in two phases, so that an array stopped anywhere resumes as one array.

A solo run's epoch is one last.pt, written by one rename. An array's epoch is K of them, and a process killed
between two (a SIGKILL, a node lost, a requeue's kill after its grace time: nothing a signal handler sees) would
leave its members at different epochs. So every member's checkpoint of epoch N is first written beside its
last.pt as `.last-epoch<N>.pt` (phase one, `stage_last`), and only when all are written is each renamed over its
last.pt (phase two, `commit_last`), followed by its best.pt and metrics as in a solo run.

Stopped in phase one, some members have a staged file and every last.pt holds N-1; stopped in phase two, every
member holds N, staged or renamed. So on start (`settle_staged_last`, for the unfinished members of one array, or
one run folder alone) the latest staged epoch is rolled forward when every member holds it (each staged file
checked first, then renamed), and otherwise every staged file is removed: the members resume from one epoch
either way. `resume_epochs` is the same rule without touching a file (the grid groups seeds by it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from we.errors import CheckpointError
from we.rundir import LAST_CHECKPOINT, STAGED_LAST_FORMAT, staged_epochs
from we.train.checkpoint import load_checkpoint, save_checkpoint


def staged_last(out: Path, epoch: int) -> Path:
    return Path(out) / STAGED_LAST_FORMAT.format(epoch=epoch)


def stage_last(out: Path, epoch: int, state: dict[str, Any]) -> None:
    """Phase one: the member's last.pt of `epoch`, written beside its last.pt."""
    save_checkpoint(staged_last(out, epoch), state)


def commit_last(out: Path, epoch: int) -> None:
    """Phase two: the staged checkpoint of `epoch` becomes last.pt (one rename)."""
    os.replace(staged_last(out, epoch), Path(out) / LAST_CHECKPOINT)


def checkpoint_epoch(out: Path) -> int:
    """The epoch the folder's last.pt holds (0 without one)."""
    path = Path(out) / LAST_CHECKPOINT
    if not (path.exists() or path.is_symlink()):
        return 0
    epoch = load_checkpoint(path).get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise CheckpointError(f"{path}: holds no epoch")
    return epoch


def rollforward_epoch(committed: Sequence[int], staged: Sequence[Sequence[int]]) -> int | None:
    """The staged epoch the members resume after (None: none; every staged file goes): the latest staged one,
    when every member holds it (its last.pt's epoch, or one of its staged epochs) and none has gone past it."""
    latest = max((epoch for epochs in staged for epoch in epochs), default=None)
    if latest is None or any(c > latest or (c != latest and latest not in s) for c, s in zip(committed, staged)):
        return None
    return latest


def resume_epochs(committed: Sequence[int], staged: Sequence[Sequence[int]]) -> list[int]:
    """The epoch each member resumes after, once `settle_staged_last` has run (nothing is touched here)."""
    target = rollforward_epoch(committed, staged)
    return list(committed) if target is None else [target] * len(committed)


def settle_staged_last(outs: Sequence[Path], committed: Sequence[int],
                       checks: Sequence[Callable[[Path, dict[str, Any]], None]]) -> list[Path]:
    """Roll an array's staged epoch forward or remove it (see the module); `committed` holds each folder's last.pt
    epoch, `checks[i](path, state)` refuses a staged checkpoint folder i must not take (a ConfigError naming the
    file; nothing is renamed or removed then). Returns the folders rolled forward."""
    staged = [staged_epochs(out, STAGED_LAST_FORMAT) for out in outs]
    if not any(staged):
        return []
    target = rollforward_epoch(committed, staged)
    forward = [i for i, epochs in enumerate(staged) if target in epochs and committed[i] < target]
    for i in forward:  # every file checked before any is renamed
        path = staged_last(outs[i], target)
        try:
            state = load_checkpoint(path)
            if state.get("epoch") != target:
                raise CheckpointError(f"{path}: holds epoch {state.get('epoch')!r}, not {target}")
        except CheckpointError as err:
            raise CheckpointError(f"{err}; move it away to resume from {LAST_CHECKPOINT}") from None
        checks[i](path, state)
    for i, out in enumerate(outs):
        for epoch in staged[i]:
            if i in forward and epoch == target:
                commit_last(out, epoch)
                note(f"{out}: {LAST_CHECKPOINT} of epoch {epoch} taken from {staged_last(out, epoch).name} "
                     f"(the array had written every member's epoch {epoch})")
            else:
                staged_last(out, epoch).unlink()
                why = (f"{LAST_CHECKPOINT} holds epoch {committed[i]} already" if epoch <= committed[i] else
                       f"the array had not written every member's epoch {epoch}; {LAST_CHECKPOINT} of epoch "
                       f"{committed[i]} resumes")
                note(f"{staged_last(out, epoch)}: removed ({why})")
    return [outs[i] for i in forward]


def note(msg: str) -> None:
    print(msg, flush=True)  # the trainer's log: the job's output
