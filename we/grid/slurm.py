"""Grid cells on a SLURM cluster, through submitit.

`SlurmExecutor` submits one job array per submission (`array_parallelism` tasks at once); each
task is a `TrainTask`, a `submitit.helpers.Checkpointable` running `we.train.trainer.main(cfg)` on
the cell's resolved config with `cfg.out` its run folder: on timeout or preemption submitit
requeues it and the trainer resumes from `<run>/last.pt`. Settings come from a cluster profile
(`slurm/<name>.yaml`, see we.grid.profiles); job logs are linked into `<run>/logs/`. With
`pack: k` a task is a `PackTask` that trains up to k one-GPU CIFAR/digits cells at once on its
job's GPU, one `python -m we.grid.worker run-cell RUN_DIR` process each (see `pack_cells`).
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
from we.grid.records import WORKER_MODULE, RunnableCell, cancel_requested, cell_logs_dir, now_iso, slurm_log_names
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


def packable(cell: RunnableCell, tasks_per_node: int = 1) -> bool:
    """Whether a cell may share its job with others: one process on one GPU, not ImageNet."""
    return tasks_per_node == 1 and cell.config.get("dataset") != "imagenet"


def pack_cells(cells: Sequence[RunnableCell], pack: int = 1, tasks_per_node: int = 1) -> list[list[RunnableCell]]:
    """The array tasks of a submission, each cell in exactly one: packable cells in groups of up to
    `pack` (consecutive in `cells`), every other cell alone (ImageNet, tasks_per_node > 1, or pack 1)."""
    tasks: list[list[RunnableCell]] = []
    group: list[RunnableCell] = []
    for cell in cells:
        if pack > 1 and packable(cell, tasks_per_node):
            group.append(cell)
            if len(group) == pack:
                tasks.append(group)
                group = []
        else:
            tasks.append([cell])
    if group:
        tasks.append(group)
    return tasks


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
    """Several cells in one array task, trained at once: one `python -m we.grid.worker run-cell RUN_DIR`
    process per cell (from its cell.json), sharing the job's GPU. Checkpointable as a whole: on
    timeout or preemption the processes are stopped, the task is requeued, and each cell resumes
    from its own `<run>/last.pt` (a finished cell returns at once: the trainer skips it)."""

    STOP_GRACE_S = 30.0

    def __init__(self, run_dirs: Sequence[str]) -> None:
        self.run_dirs = [str(d) for d in run_dirs]
        self._procs: list[subprocess.Popen] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dirs": self.run_dirs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dirs = state["run_dirs"]
        self._procs = []

    def __call__(self) -> dict[str, int]:
        job_id = submitit.JobEnvironment().job_id
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO_ROOT)
        if len(self.run_dirs) > 1 and "OMP_NUM_THREADS" not in env:  # share the job's CPUs
            cpus = int(env.get("SLURM_CPUS_PER_TASK") or len(os.sched_getaffinity(0)))
            env["OMP_NUM_THREADS"] = str(max(1, cpus // len(self.run_dirs)))
        self._procs = []
        try:
            for run_dir in self.run_dirs:
                log_path = pack_log_path(run_dir, job_id)
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "ab") as log:
                    proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, "run-cell", run_dir],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            preexec_fn=_packed_child_setup)
                self._procs.append(proc)
                print(f"{now_iso()} started {run_dir} (pid {proc.pid}, log {log_path})", flush=True)
            while any(p.poll() is None for p in self._procs):
                time.sleep(0.5)
        finally:
            self._stop()  # no-op after a normal end; on a signal or an error no trainer is left behind
        codes = {d: p.returncode for d, p in zip(self.run_dirs, self._procs)}
        for run_dir, code in codes.items():
            print(f"{now_iso()} ended {run_dir} (exit {code})", flush=True)
        bad = [f"{Path(d).name} ({f'exit {c}' if c >= 0 else signal.Signals(-c).name})"
               for d, c in codes.items() if c not in (0, 3) and not cancel_requested(Path(d))]  # 3: diverged
        if bad:  # a signal: SLURM stopped the step (preemption, requeue, cancel); a requeued task resumes them
            raise RuntimeError(f"{len(bad)} of {len(codes)} packed cells failed or were stopped: {', '.join(bad)}")
        return codes

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
        return submitit.helpers.DelayedSubmission(PackTask(self.run_dirs))


def _link_log(link: Path, target: Path) -> None:
    """A relative symlink run/logs/NAME -> the submitit log (stays valid when results/ is copied)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


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

    def submit(self, cells: Sequence[RunnableCell], grid_dir: Path) -> list[dict[str, Any]]:
        if not cells:
            return []
        grid_dir = Path(grid_dir).absolute()
        folder = grid_dir / ".submitit" / "%j"
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.profile.max_num_timeout,
                                          python=self.profile.python)
        executor.update_parameters(**self.sbatch_parameters(f"{self.profile.job_name}-{grid_dir.name}"))
        tasks = pack_cells(cells, self.profile.pack, self.profile.tasks_per_node)
        jobs = executor.submit_array([TrainTask(group[0].config) if len(group) == 1 else
                                      PackTask([str(Path(c.run_dir).absolute()) for c in group]) for group in tasks])
        by_cell: dict[int, dict[str, Any]] = {}
        for group, job in zip(tasks, jobs):
            stdout, stderr = Path(job.paths.stdout), Path(job.paths.stderr)
            for cell in group:
                logs = cell_logs_dir(cell.run_dir)
                out_name, err_name = slurm_log_names(str(job.job_id))
                _link_log(logs / out_name, stdout)
                _link_log(logs / err_name, stderr)
                record = {"job_id": str(job.job_id), "executor": self.name, "time": now_iso(),
                          "stdout": str(stdout), "stderr": str(stderr), "profile": self.profile.path}
                if len(group) > 1:
                    record["log"] = str(pack_log_path(Path(cell.run_dir).absolute(), str(job.job_id)))
                    record["packed_with"] = [c.key for c in group if c is not cell]
                by_cell[id(cell)] = record
        return [by_cell[id(cell)] for cell in cells]


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
