"""Grid cells on this machine: a detached local runner process.

`LocalExecutor.submit` writes a queue file and starts `python -m we.grid.worker run-local QUEUE`,
which works through the queued cells (`run_local`), `concurrency` at a time (default: one per GPU,
or 1 on the CPU; the slots are shared by every runner of one runs root), each in its own process
(`python -m we.grid.worker run-cell RUN_DIR`) logging to `<run>/logs/`. A local job is live while
its runner's (or its cell's) process is alive and the runner has not recorded the cell's exit
(`we.grid.jobs.local_active`); the runner records how each cell ended: exit code, signal name, error line.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from filelock import FileLock, Timeout

from we.errors import InputError
from we.files import REPO_ROOT
from we.grid.cost import CPU_MARATHON_IMAGES, image_passes
from we.grid.jobs import process_start_ticks
from we.grid.records import WORKER_MODULE, RunnableCell, cell_logs_dir, now_iso, update_record
from we.rundir import log_tail, read_result, tolerant


def local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable torch means no GPU
        return 0


class LocalExecutor:
    """Runs cells on this machine in a detached runner process, `concurrency` at a time."""

    name = "local"

    def __init__(self, concurrency: int | None = None, gpus: int | None = None,
                 allow_cpu_marathon: bool = False) -> None:
        self.gpus = local_gpu_count() if gpus is None else gpus
        self.concurrency = concurrency or max(1, self.gpus)
        self.allow_cpu_marathon = allow_cpu_marathon
        self.process: subprocess.Popen | None = None

    def check(self, cells: Sequence[RunnableCell]) -> None:
        """On a machine without a GPU, refuse (InputError) cells that together exceed
        CPU_MARATHON_IMAGES image passes unless allow_cpu_marathon (--allow-cpu-marathon)."""
        if self.gpus or self.allow_cpu_marathon:
            return
        work = sum(image_passes(c) for c in cells)
        if work > CPU_MARATHON_IMAGES:
            raise InputError("--executor local", "allow-cpu-marathon",
                             f"no GPU here and these {len(cells)} cells train on {work:,.0f} 32x32-image passes "
                             f"(limit {CPU_MARATHON_IMAGES:,} without a GPU): submit with --executor slurm, or "
                             "pass --allow-cpu-marathon to run them on this machine")

    def submit(self, cells: Sequence[RunnableCell], grid_dir: Path) -> list[dict[str, Any]]:
        if not cells:
            return []
        grid_dir = Path(grid_dir).absolute()
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        queue_dir = grid_dir / ".local"
        queue_dir.mkdir(parents=True, exist_ok=True)
        logs = [cell_logs_dir(Path(c.run_dir).absolute()) / f"local-{stamp}.log" for c in cells]
        queue = {"concurrency": self.concurrency, "slots_dir": str(grid_dir.parent / ".local-slots"),
                 "gpus": [i % self.gpus for i in range(self.concurrency)] if self.gpus else [],
                 "cells": [{"key": c.key, "run_dir": str(Path(c.run_dir).absolute()), "log": str(log)}
                           for c, log in zip(cells, logs)]}
        queue_path = queue_dir / f"queue-{stamp}.json"
        queue_path.write_text(json.dumps(queue, indent=2))
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO_ROOT)
        with open(queue_dir / f"runner-{stamp}.log", "ab") as runner_log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, "run-local", str(queue_path)], stdin=subprocess.DEVNULL,
                stdout=runner_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        pid = self.process.pid
        ticks = process_start_ticks(pid)
        host = socket.gethostname()
        return [{"job_id": local_job_id(pid, i), "executor": self.name, "time": now_iso(), "host": host,
                 "pid": pid, "pid_start": ticks, "log": str(log), "queue": str(queue_path)}
                for i, log in enumerate(logs)]


def local_job_id(runner_pid: int, index: int) -> str:
    return f"local-{runner_pid}-{index}"


def exit_fields(returncode: int, run_dir: Path, log_path: Path) -> dict[str, Any]:
    """How a cell's process ended, for its record: exit code, signal name, and the error line (from
    result.json, else the last line of its log)."""
    fields: dict[str, Any] = {"exit_code": returncode}
    if returncode < 0:
        fields["signal"] = signal.Signals(-returncode).name
    if returncode in (0, 3):  # complete, diverged
        return fields
    result, _ = tolerant(read_result, run_dir)
    error = str((result or {}).get("error") or "")
    if not error and returncode > 0:
        error = "".join(log_tail(run_dir, log_path.name, 1))
    if error.strip():
        fields["error"] = error.strip().splitlines()[0]
    return fields



def run_local(queue_path: str | Path) -> int:
    """Work through a queue file written by LocalExecutor.submit; records each cell's exit code.

    A cell runs only while this runner holds one of the `concurrency` slot locks in
    `<runs-root>/.local-slots/`, which every runner of that runs root shares: two submissions
    side by side still run at most `concurrency` cells at once. Slot i runs on GPU gpus[i].
    """
    queue = json.loads(Path(queue_path).read_text())
    gpus: list[int] = queue.get("gpus") or []  # one entry per slot: the GPU it runs on
    concurrency = len(gpus) if gpus else int(queue.get("concurrency", 1))
    slots_dir = Path(queue["slots_dir"])
    slots_dir.mkdir(parents=True, exist_ok=True)
    slot_locks = [FileLock(str(slots_dir / f"slot-{i}.lock")) for i in range(concurrency)]
    pending = list(enumerate(queue["cells"]))
    running: dict[subprocess.Popen, tuple[int, dict[str, Any], int]] = {}
    me = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        for proc in running:
            proc.terminate()
        sys.exit(128 + signum)

    def free_slot() -> int | None:
        busy = {slot for _, _, slot in running.values()}
        for i, lock in enumerate(slot_locks):
            if i in busy:
                continue
            try:
                lock.acquire(timeout=0)
                return i
            except Timeout:
                continue
        return None

    signal.signal(signal.SIGTERM, stop)
    env = dict(os.environ)
    if not gpus and concurrency > 1:  # share the CPU cores between the concurrent cells
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // concurrency)))
    failures, waiting = 0, False
    while pending or running:
        while pending:
            slot = free_slot()
            if slot is None:
                if not waiting:  # every slot is held, by this runner's cells or by another runner's
                    print(f"{now_iso()} waiting for a free slot ({concurrency} in {slots_dir})", flush=True)
                waiting = True
                break
            waiting = False
            index, cell = pending.pop(0)
            child_env = dict(env)
            if gpus:
                child_env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot])
            log_path = Path(cell["log"])
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, "run-cell", cell["run_dir"]],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env)
            print(f"{now_iso()} started {cell['key']} (pid {proc.pid}, slot {slot})", flush=True)
            update_record(Path(cell["run_dir"]), local_job_id(me, index), cell_pid=proc.pid,
                          cell_pid_start=process_start_ticks(proc.pid), started=now_iso())
            running[proc] = (index, cell, slot)
        time.sleep(0.2)
        for proc in [p for p in running if p.poll() is not None]:
            index, cell, slot = running.pop(proc)
            slot_locks[slot].release()
            failures += proc.returncode not in (0, 3)
            print(f"{now_iso()} ended {cell['key']} (exit {proc.returncode})", flush=True)
            update_record(Path(cell["run_dir"]), local_job_id(me, index), ended=now_iso(),
                          **exit_fields(proc.returncode, Path(cell["run_dir"]), Path(cell["log"])))
    return 1 if failures else 0
