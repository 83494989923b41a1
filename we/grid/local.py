"""Grid cells on this machine: a detached local runner process.

`LocalExecutor.submit` writes a queue file and starts `python -m we.grid.worker run-local QUEUE`,
which works through the queued jobs (`run_local`), `concurrency` at a time (default: one per GPU,
or 1 on the CPU; the slots are shared by every runner of one runs root), each in its own process
(`python -m we.grid.worker run-cell RUN_DIR`, or `run-cells RUN_DIR...` for a seed array of several
cells, we.grid.arrays) logging to `<run>/logs/`. A local job is live while
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
from we.grid.arrays import record_fields
from we.grid.cost import CPU_MARATHON_IMAGES, image_passes
from we.grid.jobs import process_start_ticks
from we.grid.records import WORKER_MODULE, RunnableCell, cell_logs_dir, link_log, now_iso, update_record
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

    def submit(self, cells: Sequence[RunnableCell], grid_dir: Path,
               jobs: Sequence[Sequence[RunnableCell]] | None = None) -> list[dict[str, Any]]:
        """Queue the cells, `jobs` of them (default: each alone; several: one seed array) one process each."""
        if not cells:
            return []
        jobs = [[c] for c in cells] if jobs is None else jobs
        grid_dir = Path(grid_dir).absolute()
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        queue_dir = grid_dir / ".local"
        queue_dir.mkdir(parents=True, exist_ok=True)
        logs = [cell_logs_dir(Path(c.run_dir).absolute()) / f"local-{stamp}.log" for c in cells]
        index = {id(c): i for i, c in enumerate(cells)}
        queue = {"concurrency": self.concurrency, "slots_dir": str(grid_dir.parent / ".local-slots"),
                 "gpus": [i % self.gpus for i in range(self.concurrency)] if self.gpus else [],
                 "cells": [{"key": c.key, "run_dir": str(Path(c.run_dir).absolute()), "log": str(log)}
                           for c, log in zip(cells, logs)],
                 "jobs": [[index[id(c)] for c in job] for job in jobs]}
        queue_path = queue_dir / f"queue-{stamp}.json"
        queue_path.write_text(json.dumps(queue, indent=2))
        pid, ticks = self.start_runner(queue_path, queue_dir / f"runner-{stamp}.log")
        host = socket.gethostname()
        job_of = {id(c): job for job in jobs for c in job}
        return [{"job_id": local_job_id(pid, i), "executor": self.name, "time": now_iso(), "host": host,
                 "pid": pid, "pid_start": ticks, "log": str(log), "queue": str(queue_path),
                 **record_fields(job_of[id(cell)], cell)}
                for i, (cell, log) in enumerate(zip(cells, logs))]

    def start_runner(self, queue_path: Path, log_path: Path) -> tuple[int, int | None]:
        """Start the detached runner of a queue file; (its pid, its start ticks)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO_ROOT)
        with open(log_path, "ab") as runner_log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, "run-local", str(queue_path)], stdin=subprocess.DEVNULL,
                stdout=runner_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self.process.pid, process_start_ticks(self.process.pid)


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



class Runner:
    """Works through a queue file written by LocalExecutor.submit; records each cell's start and exit.

    A job (one cell, or the cells of a seed array in one process) runs only while this runner holds one of
    the `concurrency` slot locks in `<runs-root>/.local-slots/`, which every runner of that runs root
    shares: two submissions side by side still run at most `concurrency` jobs at once. Slot i runs on GPU
    gpus[i].

    SIGTERM or SIGINT (`python -m we.grid cancel` signals the runner's process group: the runner, its
    cells and their loader workers) stops it: no further cell starts (their records say `cancelled`, and
    the cells stay todo), each running cell gets SIGTERM and ends interrupted (last.pt resumes it), and
    the runner records their exits before it ends.
    """

    POLL_S = 0.2

    def __init__(self, queue_path: str | Path) -> None:
        queue = json.loads(Path(queue_path).read_text())
        self.gpus: list[int] = queue.get("gpus") or []  # one entry per slot: the GPU it runs on
        self.concurrency = len(self.gpus) if self.gpus else int(queue.get("concurrency", 1))
        self.slots_dir = Path(queue["slots_dir"])
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        self.slot_locks = [FileLock(str(self.slots_dir / f"slot-{i}.lock")) for i in range(self.concurrency)]
        cells = queue["cells"]
        # the jobs, each [(index, cell), ...] (several: one seed array, one process); a queue without `jobs`: one each
        self.pending = [[(i, cells[i]) for i in job] for job in queue.get("jobs") or [[i] for i in range(len(cells))]]
        self.running: dict[subprocess.Popen, tuple[list[tuple[int, dict[str, Any]]], int]] = {}
        self.me = os.getpid()
        self.env = dict(os.environ)
        if not self.gpus and self.concurrency > 1:  # share the CPU cores between the concurrent cells
            self.env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.concurrency)))
        self.failures, self.waiting = 0, False
        self.stopped: str | None = None  # when a signal asked it to stop
        self.stop_signal = ""

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        stopping = False
        while self.pending or self.running:
            if self.stopped and not stopping:
                stopping = True
                self.stop_cells()
            if stopping:
                self.drop_pending()
            else:
                self.start_cells()
            time.sleep(self.POLL_S)
            self.reap()
        return 1 if self.failures else 0

    def stop(self, signum: int, frame: Any = None) -> None:
        """The signal handler: from now on no cell starts (the loop does the rest)."""
        if not self.stopped:
            self.stopped, self.stop_signal = now_iso(), signal.Signals(signum).name

    def stop_cells(self) -> None:
        """SIGTERM to the running cells: once to the runner's own process group (its cells and their loader
        workers) when it leads one, as LocalExecutor starts it; else to each cell's process."""
        print(f"{now_iso()} {self.stop_signal}: stopping {len(self.running)} running cell(s); {len(self.pending)} "
              "never started", flush=True)
        if os.getpgrp() == self.me:
            os.killpg(self.me, signal.SIGTERM)  # reaches this runner too: its handler has already run
            return
        for proc in self.running:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def drop_pending(self) -> None:
        """Record the cells that never started as cancelled (they stay todo)."""
        for index, cell in (member for job in self.pending for member in job):
            update_record(Path(cell["run_dir"]), local_job_id(self.me, index), cancelled=self.stopped, ended=now_iso())
            print(f"{now_iso()} cancelled {cell['key']} (never started)", flush=True)
        self.pending = []

    def free_slot(self) -> int | None:
        busy = {slot for _, slot in self.running.values()}
        for i, lock in enumerate(self.slot_locks):
            if i in busy:
                continue
            try:
                lock.acquire(timeout=0)
                return i
            except Timeout:
                continue
        return None

    def start_cells(self) -> None:
        """Start pending jobs while a slot is free."""
        while self.pending and not self.stopped:
            slot = self.free_slot()
            if slot is None:
                if not self.waiting:  # every slot is held, by this runner's cells or by another runner's
                    print(f"{now_iso()} waiting for a free slot ({self.concurrency} in {self.slots_dir})", flush=True)
                self.waiting = True
                return
            self.waiting = False
            job = self.pending.pop(0)
            proc = self.start_job(job, slot)
            keys = ", ".join(cell["key"] for _, cell in job)
            print(f"{now_iso()} started {keys} (pid {proc.pid}, slot {slot}"
                  + (f", a seed array of {len(job)})" if len(job) > 1 else ")"), flush=True)
            for index, cell in job:
                update_record(Path(cell["run_dir"]), local_job_id(self.me, index), cell_pid=proc.pid,
                              cell_pid_start=process_start_ticks(proc.pid), started=now_iso())
            self.running[proc] = (job, slot)

    def start_job(self, job: list[tuple[int, dict[str, Any]]], slot: int) -> subprocess.Popen:
        """One process for the job: `run-cell RUN_DIR`, or `run-cells RUN_DIR...` for a seed array, logging to the
        first member's log (the others' logs folders link to it)."""
        child_env = dict(self.env)
        if self.gpus:
            child_env["CUDA_VISIBLE_DEVICES"] = str(self.gpus[slot])
        cells = [cell for _, cell in job]
        log_path = Path(cells[0]["log"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for cell in cells[1:]:
            link_log(Path(cell["log"]), log_path)
        command = ["run-cell", cells[0]["run_dir"]] if len(cells) == 1 else ["run-cells", *(c["run_dir"] for c in cells)]
        with open(log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", WORKER_MODULE, *command], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=child_env)

    def reap(self) -> None:
        """Record the exit of every job that ended, in each of its cells' records."""
        for proc in [p for p in self.running if p.poll() is not None]:
            job, slot = self.running.pop(proc)
            self.slot_locks[slot].release()
            self.failures += proc.returncode not in (0, 3)
            for index, cell in job:
                print(f"{now_iso()} ended {cell['key']} (exit {proc.returncode})", flush=True)
                fields = exit_fields(proc.returncode, Path(cell["run_dir"]), Path(cell["log"]))
                if self.stopped:
                    fields["cancelled"] = self.stopped
                update_record(Path(cell["run_dir"]), local_job_id(self.me, index), ended=now_iso(), **fields)


def run_local(queue_path: str | Path) -> int:
    """Work through a queue file written by LocalExecutor.submit (see Runner); 1 when a cell failed."""
    return Runner(queue_path).run()


def live_process(pid: Any, start_ticks: Any) -> bool:
    """Whether `pid` runs and is the process that was recorded (same start time when one was recorded)."""
    if not isinstance(pid, int):
        return False
    ticks = process_start_ticks(pid)
    return ticks is not None and (start_ticks is None or ticks == start_ticks)


def stop_local(record: dict[str, Any], signalled: set[int] | None = None) -> str:
    """SIGTERM to a live local job: to its runner, which passes it on to its process group (its cells and their
    loader workers), or to the cell's own process group when the runner is gone. A pid or group in `signalled`
    is not signalled again (and is added to it). Returns what was signalled ("" when nothing of it runs)."""
    signalled = set() if signalled is None else signalled
    runner, cell = record.get("pid"), record.get("cell_pid")
    try:
        if live_process(runner, record.get("pid_start")):
            if runner not in signalled:
                os.kill(runner, signal.SIGTERM)
            signalled.add(runner)
            return f"SIGTERM to its runner (pid {runner}), for its process group"
        if live_process(cell, record.get("cell_pid_start")):
            group = os.getpgid(cell)
            if -group not in signalled:
                os.killpg(group, signal.SIGTERM)
            signalled.add(-group)
            return f"SIGTERM to process group {group} (cell pid {cell}; its runner is gone)"
    except (ProcessLookupError, PermissionError):
        pass
    return ""
