"""Grid cells on a SLURM cluster, through submitit.

`SlurmExecutor` submits one job array per submission (`array_parallelism` tasks at once); each
task is a `TrainTask`, a `submitit.helpers.Checkpointable` running `we.train.trainer.main(cfg)` on
the cell's resolved config with `cfg.out` its run folder: on timeout or preemption submitit
requeues it and the trainer resumes from `<run>/last.pt`. Settings come from a cluster profile
(`slurm/<name>.yaml`, see we.grid.profiles); job logs are linked into `<run>/logs/`. A job of
several seeds of one config (we.grid.arrays) is an `ArrayTask`, one seed array, requeued and resumed
the same way. With `pack: k` a task is a `PackTask` that trains up to k one-GPU CIFAR/digits jobs at
once on its job's GPU, one `python -m we.grid.worker run-cell RUN_DIR` (or `run-cells RUN_DIR...`)
process each (see `pack_cells`).
Whether a job is still queued or running: we.grid.jobs (sacct).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import submitit

from we.files import REPO_ROOT
from we.grid.profiles import Profile
from we.grid.arrays import record_fields
from we.grid.records import (WORKER_MODULE, RunnableCell, cancel_requested, cell_logs_dir, link_log, now_iso,
                              slurm_log_names)
from we.train.array_run import train_array
from we.train.config import make_config, resolve
from we.train.interrupt import Interrupted, interrupts_raise
from we.train.trainer import main as train_main

CANCEL_COMMAND = "scancel"


class TrainTask(submitit.helpers.Checkpointable):
    """One cell on a SLURM node: `we.train.trainer.main(cfg)`. On timeout or preemption submitit
    requeues it (checkpoint() returns this same task) and the trainer resumes from `<out>/last.pt`.
    The SIGTERM of a `python -m we.grid cancel` (which marks the job cancelled in cell.json, then
    scancels it) stops the trainer, which records `interrupted` (last.pt resumes it); any other
    SIGTERM (a requeue, a preemption) is submitit's."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def __call__(self) -> dict[str, Any]:
        cfg = resolve(make_config(self.config, source="cell config"))
        job_id = submitit.JobEnvironment().job_id
        with interrupts_raise(when=lambda: cancel_requested(Path(cfg.out), job_id)):
            try:
                return train_main(cfg)
            except Interrupted as stop:
                print(f"{stop} {stop.where()} (cancelled); `python -m we.grid submit` resumes it", file=sys.stderr,
                      flush=True)
                return {"status": "interrupted", "signal": stop.name}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self)


class ArrayTask(submitit.helpers.Checkpointable):
    """One config's seeds on a SLURM node as one seed array: `we.train.array_run.train_array(cfgs)`. Requeued on
    timeout, preemption or `scontrol requeue` like a TrainTask: an epoch's last.pt files are written in two phases
    (we.train.array_commit), so wherever the kill lands the requeued task resumes the members as one array (a
    finished member returns at once). A grid's cancel of any member stops the array; each unfinished member
    records `interrupted`."""

    def __init__(self, configs: Sequence[dict[str, Any]]) -> None:
        self.configs = list(configs)

    def __call__(self) -> list[dict[str, Any]]:
        cfgs = [resolve(make_config(c, source="cell config")) for c in self.configs]
        job_id = submitit.JobEnvironment().job_id
        with interrupts_raise(when=lambda: any(cancel_requested(Path(c.out), job_id) for c in cfgs)):
            try:
                return train_array(cfgs)
            except Interrupted as stop:
                print(f"{stop} {stop.where()} (cancelled); `python -m we.grid submit` resumes it", file=sys.stderr,
                      flush=True)
                return [{"status": "interrupted", "signal": stop.name}] * len(cfgs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self)


def packable(cell: RunnableCell, tasks_per_node: int = 1) -> bool:
    """Whether a cell may share its job with others: one process on one GPU, not ImageNet."""
    return tasks_per_node == 1 and cell.config.get("dataset") != "imagenet"


def pack_cells(jobs: Sequence[Sequence[RunnableCell]], pack: int = 1,
               tasks_per_node: int = 1) -> list[list[list[RunnableCell]]]:
    """The array tasks of a submission, each job (a cell, or a seed array's cells) in exactly one: packable jobs
    in groups of up to `pack` (consecutive in `jobs`), every other job alone (ImageNet, tasks_per_node > 1, or
    pack 1)."""
    tasks: list[list[list[RunnableCell]]] = []
    group: list[list[RunnableCell]] = []
    for job in jobs:
        job = list(job)
        if pack > 1 and all(packable(cell, tasks_per_node) for cell in job):
            group.append(job)
            if len(group) == pack:
                tasks.append(group)
                group = []
        else:
            tasks.append([job])
    if group:
        tasks.append(group)
    return tasks


def task_of(units: list[list[RunnableCell]]) -> submitit.helpers.Checkpointable:
    """The submitit task of an array task's jobs: one cell (TrainTask), one seed array (ArrayTask), or packed jobs
    (PackTask)."""
    if len(units) > 1:
        return PackTask([[str(Path(c.run_dir).absolute()) for c in job] for job in units])
    (job,) = units
    return TrainTask(job[0].config) if len(job) == 1 else ArrayTask([c.config for c in job])


def pack_log_path(run_dir: str | Path, job_id: str) -> Path:
    """Where a packed cell's own process logs (the job's stdout holds only the pack's lines)."""
    return cell_logs_dir(Path(run_dir)) / f"slurm-{job_id}.cell.log"


def _packed_child_setup() -> None:
    """preexec_fn of a packed cell: SLURM's checkpoint signal (SIGUSR2, sent to every process of the
    step) is left to the pack process, which stops its cells itself; and the child gets SIGTERM when
    the pack process dies (Linux), so no trainer outlives it."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class PackTask(submitit.helpers.Checkpointable):
    """Several jobs in one array task, trained at once: one `python -m we.grid.worker run-cell RUN_DIR` process
    per cell (from its cell.json), or `run-cells RUN_DIR...` per seed array, sharing the job's GPU.
    Checkpointable as a whole: on timeout or preemption the processes are stopped, the task is requeued, and
    each cell resumes from its own `<run>/last.pt` (a finished cell returns at once: the trainer skips it)."""

    STOP_GRACE_S = 30.0

    def __init__(self, jobs: Sequence[str | Sequence[str]]) -> None:
        self.jobs = [[str(job)] if isinstance(job, (str, Path)) else [str(d) for d in job] for job in jobs]
        self._procs: list[subprocess.Popen] = []

    @property
    def run_dirs(self) -> list[str]:
        return [d for job in self.jobs for d in job]

    def __getstate__(self) -> dict[str, Any]:
        return {"jobs": self.jobs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.jobs = state.get("jobs") or [[d] for d in state["run_dirs"]]  # run_dirs: a task pickled one cell a job
        self._procs = []

    def __call__(self) -> dict[str, int]:
        job_id = submitit.JobEnvironment().job_id
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO_ROOT)
        if len(self.jobs) > 1 and "OMP_NUM_THREADS" not in env:  # share the job's CPUs
            cpus = int(env.get("SLURM_CPUS_PER_TASK") or len(os.sched_getaffinity(0)))
            env["OMP_NUM_THREADS"] = str(max(1, cpus // len(self.jobs)))
        self._procs = []
        try:
            for job in self.jobs:
                self._procs.append(self._start(job, job_id, env))
            while any(p.poll() is None for p in self._procs):
                time.sleep(0.5)
        finally:
            self._stop()  # no-op after a normal end; on a signal or an error no trainer is left behind
        codes = {d: p.returncode for job, p in zip(self.jobs, self._procs) for d in job}
        for run_dir, code in codes.items():
            print(f"{now_iso()} ended {run_dir} (exit {code})", flush=True)
        bad = [f"{Path(d).name} ({f'exit {c}' if c >= 0 else signal.Signals(-c).name})"
               for d, c in codes.items() if c not in (0, 3) and not cancel_requested(Path(d))]  # 3: diverged
        if bad:  # a signal: SLURM stopped the step (preemption, requeue, cancel); a requeued task resumes them
            raise RuntimeError(f"{len(bad)} of {len(codes)} packed cells failed or were stopped: {', '.join(bad)}")
        return codes

    @staticmethod
    def _start(job: list[str], job_id: str, env: dict[str, str]) -> subprocess.Popen:
        """One job's process, logging to its first cell's pack log (the other members' logs link to it)."""
        log_path = pack_log_path(job[0], job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for run_dir in job[1:]:
            link_log(pack_log_path(run_dir, job_id), log_path)
        command = ["run-cell", job[0]] if len(job) == 1 else ["run-cells", *job]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, *command], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_packed_child_setup)
        print(f"{now_iso()} started {' '.join(job)} (pid {proc.pid}, log {log_path})", flush=True)
        return proc

    def _stop(self) -> None:
        live = [p for p in self._procs if p.poll() is None]
        for proc in live:
            proc.terminate()
        deadline = time.time() + self.STOP_GRACE_S
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        self._stop()  # each cell's last.pt is its checkpoint; the requeued task starts them again
        return submitit.helpers.DelayedSubmission(PackTask(self.jobs))


class SlurmExecutor:
    """Submits cells as one submitit job array on a SLURM cluster described by a profile."""

    name = "slurm"

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    def sbatch_parameters(self, job_name: str) -> dict[str, Any]:
        p = self.profile
        params: dict[str, Any] = dict(
            job_name=job_name, partition=p.partition, time=p.timeout_min, nodes=1, ntasks_per_node=p.tasks_per_node,
            cpus_per_task=p.cpus_per_task, array_parallelism=p.array_parallelism,
            signal_delay_s=p.signal_delay_s, use_srun=p.use_srun,
            setup=[f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}", *p.setup])
        if p.gpus_per_node:
            params["gpus_per_node"] = p.gpus_per_node
        if p.mem_gb is not None:
            params["mem"] = f"{int(round(p.mem_gb * 1024))}M"
        for key in ("account", "qos", "constraint"):
            if getattr(p, key):
                params[key] = getattr(p, key)
        if p.additional_parameters:
            params["additional_parameters"] = dict(p.additional_parameters)
        return params

    def submit(self, cells: Sequence[RunnableCell], grid_dir: Path,
               jobs: Sequence[Sequence[RunnableCell]] | None = None) -> list[dict[str, Any]]:
        """Submit the cells as one job array: `jobs` of them (default: each alone; several: one seed array) packed
        into its tasks (`pack_cells`); returns one record per cell."""
        if not cells:
            return []
        grid_dir = Path(grid_dir).absolute()
        folder = grid_dir / ".submitit" / "%j"
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.profile.max_num_timeout,
                                          python=self.profile.python)
        executor.update_parameters(**self.sbatch_parameters(f"{self.profile.job_name}-{grid_dir.name}"))
        tasks = pack_cells([[c] for c in cells] if jobs is None else jobs, self.profile.pack,
                           self.profile.tasks_per_node)
        submitted = executor.submit_array([task_of(units) for units in tasks])
        by_cell: dict[int, dict[str, Any]] = {}
        for units, job in zip(tasks, submitted):
            for unit in units:
                for cell in unit:
                    by_cell[id(cell)] = self.record(cell, job, units, unit)
        return [by_cell[id(cell)] for cell in cells]

    def record(self, cell: RunnableCell, job: Any, units: list[list[RunnableCell]],
               unit: list[RunnableCell]) -> dict[str, Any]:
        """A cell's submission record (its job's logs linked into `<run>/logs/`): `packed_with` the cells of the
        task's other jobs, `array_with` the other members of its seed array."""
        stdout, stderr = Path(job.paths.stdout), Path(job.paths.stderr)
        logs = cell_logs_dir(cell.run_dir)
        out_name, err_name = slurm_log_names(str(job.job_id))
        link_log(logs / out_name, stdout)
        link_log(logs / err_name, stderr)
        record = {"job_id": str(job.job_id), "executor": self.name, "time": now_iso(),
                  "stdout": str(stdout), "stderr": str(stderr), "profile": self.profile.path}
        if len(units) > 1:
            record["log"] = str(pack_log_path(Path(cell.run_dir).absolute(), str(job.job_id)))
            record["packed_with"] = [c.key for other in units if other is not unit for c in other]
        return {**record, **record_fields(unit, cell)}


def scancel(job_ids: Sequence[str]) -> str:
    """`scancel` the jobs (array tasks as `A_i`): SLURM sends SIGTERM to every process of their steps, then
    SIGKILL after its KillWait; a pending task just leaves the queue. Returns scancel's error ("" when fine)."""
    if not job_ids:
        return ""
    try:
        res = subprocess.run([CANCEL_COMMAND, *job_ids], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{CANCEL_COMMAND}: {err}"
    return "" if res.returncode == 0 else (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
