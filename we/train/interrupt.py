"""A clean stop of a plain run on SIGINT (Ctrl-C) or SIGTERM: `python -m we.train` only.

While `interrupts_raise()` is active, either signal raises `Interrupted` in the main thread (a
BaseException, like KeyboardInterrupt, so `except Exception` lets it through); the trainer records
status `interrupted` in result.json and the command line exits 128 + the signal's number (130, 143).
A `held()` section (an epoch's checkpoint and metrics) is never cut: a signal that arrives inside
it is raised at its end, so last.pt and metrics.jsonl always hold the same finished epochs.

Only the process that installed the handlers acts on them: a Ctrl-C in a terminal signals the whole
process group, the DataLoader workers included, and a forked worker inherits the handler; workers
ignore both signals (`ignore_in_worker`, their `worker_init_fn`) and the main process shuts them
down as it stops, so neither a worker's traceback nor a "worker exited unexpectedly" failure appears.

Inside a submitit job (SUBMITIT_EXECUTOR set) nothing is installed: submitit's own handlers for
preemption, timeout and requeue stay in charge; with a `when` check (a grid cell: whether its job was
cancelled), SIGTERM raises while the check holds and goes to submitit's handler otherwise.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from we.rundir import LAST_CHECKPOINT

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict[str, Any] = {"holding": 0, "pending": None, "stopping": False, "owner": None}


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; `done`/`epochs` say how far the run got (None before training)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # as a shell reports a process ended by the signal
        self.done: int | None = None  # finished epochs held by last.pt
        self.epochs: int | None = None
        super().__init__(f"interrupted by {self.name}")

    def where(self) -> str:
        if self.done is None or self.epochs is None:
            return "before training started"
        return f"during epoch {self.done + 1}/{self.epochs}; {LAST_CHECKPOINT} holds " + (
            f"epoch {self.done}" if self.done else "no finished epoch")


def in_submitit_job() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def ignore_in_worker(worker_id: int = 0) -> None:
    """A DataLoader worker's `worker_init_fn`: SIGINT and SIGTERM are the main process's to handle.

    The worker hands its batches over through shared-memory files rather than file descriptors: with
    descriptors, a thread of the worker serves them to the main process, and when a signal stops the
    main process mid-handover that thread prints a ConnectionResetError traceback."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    torch.multiprocessing.set_sharing_strategy("file_system")


def _raise(signum: int, frame: Any = None) -> None:
    if _state["owner"] != os.getpid():
        return  # a forked child (a loader worker before its worker_init_fn ran): the main process stops it
    if _state["stopping"]:
        return  # a second signal does not cut short the writing of result.json
    if _state["holding"]:
        _state["pending"] = signum
        return
    _state["stopping"] = True
    raise Interrupted(signum)


def _only_when(when: Callable[[], bool], previous: Any) -> Callable[[int, Any], None]:
    """A handler that raises while `when()` holds, else hands the signal to the `previous` handler."""

    def handler(signum: int, frame: Any = None) -> None:
        if when():
            _raise(signum, frame)
        elif callable(previous):
            previous(signum, frame)

    return handler


@contextmanager
def interrupts_raise(when: Callable[[], bool] | None = None) -> Iterator[bool]:
    """SIGINT and SIGTERM raise `Interrupted` inside the block; yields whether handlers were installed
    (not off the main thread; inside a submitit job only SIGTERM, and only with `when`: it raises while
    `when()` holds). The previous handlers come back at its end."""
    submitit_job = in_submitit_job()
    if (submitit_job and when is None) or threading.current_thread() is not threading.main_thread():
        yield False
        return
    signals = (signal.SIGTERM,) if submitit_job else SIGNALS
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, _only_when(when, previous[s]) if submitit_job and when is not None else _raise)
    _state.update(holding=0, pending=None, stopping=False, owner=os.getpid())
    try:
        yield True
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.update(holding=0, pending=None, stopping=False, owner=None)


@contextmanager
def held() -> Iterator[None]:
    """A section a signal does not interrupt; one that arrived meanwhile is raised when it ends."""
    _state["holding"] += 1
    try:
        yield
    finally:
        _state["holding"] -= 1
    if not _state["holding"] and _state["pending"] is not None:
        signum, _state["pending"] = _state["pending"], None
        _raise(signum)
