"""Where grid cells run: a SLURM cluster (through submitit) or a local background runner.

Both executors run the same thing for a cell, `we.train.main(cfg)` on the cell's resolved config
with `cfg.out` its run folder, so a cell resumes from `<run>/last.pt` wherever it is restarted.

* `SlurmExecutor`: one job array per submission (`array_parallelism` tasks at once); each task is
  a `TrainTask`, a `submitit.helpers.Checkpointable`: on timeout or preemption submitit requeues
  it and the trainer resumes. Settings come from a cluster profile (`slurm/<name>.yaml`, see
  `PROFILE_KEYS`); job logs are linked into `<run>/logs/`. With `pack: k` a task is a `PackTask`
  that trains up to k one-GPU CIFAR/digits cells at once on its job's GPU, one
  `python -m we.executors run-cell RUN_DIR` process each (see `pack_cells`).
* `LocalExecutor`: a detached runner process (`python -m we.executors run-local QUEUE`) works
  through the queued cells, `concurrency` at a time (default: one per GPU, or 1 on the CPU; the
  slots are shared by every runner of one runs root), each in its own process
  (`python -m we.executors run-cell RUN_DIR`) logging to `<run>/logs/`.

`active_jobs(records)` tells, for the submission records kept in each `cell.json`, which jobs are
still queued or running (SLURM: `sacct`; local: the runner's pid is alive and it has not recorded
the cell's exit).
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import submitit
import yaml
from filelock import FileLock

REPO_ROOT = Path(__file__).resolve().parent.parent
CELL_FILE = "cell.json"
LOCK_FILE = ".submit.lock"
LOCK_TIMEOUT_S = 600.0
# sacct states of a job that is still queued or running (a requeued job comes back to PENDING).
SLURM_ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED",
    "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED"})
# A job that sacct does not list yet is taken as queued for this long after its submission.
SACCT_GRACE_S = 300.0
# Result-neutral config keys a cluster profile may set for its jobs (`config:` in a profile).
PROFILE_CONFIG_KEYS = ("device", "data_dir", "download", "workers", "progress")


class InputError(ValueError):
    """A malformed grid, profile or option: one line naming the file and the key."""

    def __init__(self, file: str | Path, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        super().__init__(f"{self.file}: {key}: {message}")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# cluster profiles
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileKey:
    """One profile key: accepted types, whether a profile must give it, its default and a check."""

    types: tuple[type, ...]
    required: bool
    default: Any = None
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns a complaint or None
    doc: str = ""


def _at_least(n: int) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v is None or v >= n else f"must be >= {n}, got {v!r}"


def _str_list(v: Any) -> Optional[str]:
    return None if all(isinstance(x, str) for x in v) else "expected a list of strings (shell lines)"


def _config_map(v: Any) -> Optional[str]:
    bad = [k for k in v if k not in PROFILE_CONFIG_KEYS]
    return f"only result-neutral config keys ({', '.join(PROFILE_CONFIG_KEYS)}), not {bad[0]!r}" if bad else None


def _sbatch_map(v: Any) -> Optional[str]:
    bad = [k for k in v if not isinstance(k, str)]
    return "keys must be sbatch option names (strings)" if bad else None


NoneType = type(None)
PROFILE_KEYS: dict[str, ProfileKey] = {
    "partition": ProfileKey((str,), True, doc="SLURM partition"),
    "gpus_per_node": ProfileKey((int,), True, check=_at_least(0), doc="GPUs per job (0: none requested)"),
    "cpus_per_task": ProfileKey((int,), True, check=_at_least(1), doc="CPUs per job (data loading)"),
    "mem_gb": ProfileKey((int, float, NoneType), True, check=lambda v: None if v is None or v > 0 else
                         f"must be > 0 or null, got {v!r}", doc="memory per job in GB (null: not requested)"),
    "timeout_min": ProfileKey((int,), True, check=_at_least(1), doc="wall-clock limit of one allocation"),
    "max_num_timeout": ProfileKey((int,), True, check=_at_least(0),
                                  doc="requeues after a timeout before the job counts as failed"),
    "array_parallelism": ProfileKey((int,), True, check=_at_least(1), doc="array tasks running at once"),
    "account": ProfileKey((str, NoneType), True, doc="SLURM account (null: the user's default)"),
    "qos": ProfileKey((str, NoneType), True, doc="quality of service (null: the default)"),
    "setup": ProfileKey((list,), True, check=_str_list, doc="shell lines run before each task"),
    # optional
    "tasks_per_node": ProfileKey((int,), False, 1, _at_least(1),
                                 doc="processes per job; > 1 trains one run with DistributedDataParallel, "
                                     "one process per GPU"),
    "constraint": ProfileKey((str, NoneType), False, None, doc="node feature constraint"),
    "signal_delay_s": ProfileKey((int,), False, 120, _at_least(0),
                                 doc="seconds before the limit at which the job is told to checkpoint"),
    "job_name": ProfileKey((str,), False, "we-repro", doc="prefix of the job names (the grid name follows)"),
    "python": ProfileKey((str, NoneType), False, None, doc="python on the nodes (null: this interpreter)"),
    "use_srun": ProfileKey((bool,), False, True, doc="run the task through srun inside the allocation"),
    "additional_parameters": ProfileKey((dict,), False, {}, _sbatch_map, doc="extra sbatch options"),
    "config": ProfileKey((dict,), False, {}, _config_map,
                         doc="result-neutral config keys for the jobs (device, data_dir, workers, ...)"),
    "pack": ProfileKey((int,), False, 1, _at_least(1),
                       doc="cells per job: up to this many single-GPU CIFAR/digits cells train at once, "
                           "one process each, sharing the job's GPU, CPUs and memory (ImageNet and "
                           "tasks_per_node > 1 cells are never packed)"),
}
# Keys a grid's `resources:` may override for its own jobs.
RESOURCE_KEYS = ("gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "max_num_timeout",
                 "array_parallelism", "constraint", "signal_delay_s", "additional_parameters", "pack")


def _type_label(types: tuple[type, ...]) -> str:
    names = {int: "int", float: "number", str: "string", list: "list", dict: "mapping", bool: "bool",
             NoneType: "null"}
    return " or ".join(names[t] for t in types)


def check_profile_values(values: Any, file: str | Path, required: bool, prefix: str = "",
                         allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate a mapping of profile keys (all of them when `required`); returns it with defaults filled."""
    if not isinstance(values, dict):
        raise InputError(file, prefix.rstrip(".") or "(top level)",
                         f"expected a mapping of profile keys, got {type(values).__name__}")
    known = tuple(allowed) if allowed is not None else tuple(PROFILE_KEYS)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise InputError(file, f"{prefix}{key}", f"unknown key (known: {', '.join(known)})")
        spec = PROFILE_KEYS[key]
        ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
        if not ok:
            raise InputError(file, f"{prefix}{key}", f"expected {_type_label(spec.types)}, got {value!r}")
        complaint = spec.check(value) if spec.check else None
        if complaint:
            raise InputError(file, f"{prefix}{key}", complaint)
        out[key] = value
    if required:
        for key, spec in PROFILE_KEYS.items():
            if key in out:
                continue
            if spec.required:
                raise InputError(file, f"{prefix}{key}", "missing (every profile names it; see slurm/default.yaml)")
            out[key] = spec.default
    return out


@dataclass(frozen=True)
class Profile:
    """A validated cluster profile (see PROFILE_KEYS)."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def with_resources(self, resources: dict[str, Any]) -> "Profile":
        """This profile with a grid's `resources:` overrides applied."""
        return Profile(self.path, {**self.values, **resources})


def read_yaml_mapping(path: Path, what: str) -> Any:
    """Parse a YAML file; a missing file or malformed YAML is an InputError naming it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(path, what, "no such file") from None
    except OSError as err:
        raise InputError(path, what, f"unreadable ({err.strerror})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(path, where, f"malformed YAML: {problem}") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping naming one key twice (YAML would keep the last silently)."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a cluster profile (one-line InputError naming the file and key)."""
    path = Path(path)
    data = read_yaml_mapping(path, "profile")
    if data is None:
        data = {}
    return Profile(str(path), check_profile_values(data, path, required=True))


# ---------------------------------------------------------------------------------------------
# what an executor is given and returns
# ---------------------------------------------------------------------------------------------

class RunnableCell(Protocol):
    """The part of a grid cell an executor needs."""

    key: str
    config: dict[str, Any]
    run_dir: Path


class Executor(Protocol):
    name: str

    def submit(self, cells: Sequence[RunnableCell], grid_dir: Path) -> list[dict[str, Any]]:
        """Start the cells; returns one submission record per cell (job_id, executor, time, ...)."""
        ...


def cell_logs_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "logs"


def read_cell_file(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CELL_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_cell_file(run_dir: Path, data: dict[str, Any]) -> None:
    from we.checkpoint import write_json

    write_json(Path(run_dir) / CELL_FILE, data)


def grid_lock(grid_dir: Path, timeout: float = LOCK_TIMEOUT_S) -> FileLock:
    """The lock that serialises submissions to (and record updates in) one grid's run folders."""
    Path(grid_dir).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(grid_dir) / LOCK_FILE), timeout=timeout)


def update_record(run_dir: Path, job_id: str, **fields: Any) -> None:
    """Add fields to the submission record `job_id` of a cell (under the grid lock)."""
    run_dir = Path(run_dir)
    with grid_lock(run_dir.parent):
        data = read_cell_file(run_dir)
        if data is None:
            return
        for rec in data.get("submitted", []):
            if rec.get("job_id") == job_id:
                rec.update(fields)
        write_cell_file(run_dir, data)


# ---------------------------------------------------------------------------------------------
# SLURM
# ---------------------------------------------------------------------------------------------

class TrainTask(submitit.helpers.Checkpointable):
    """One cell on a SLURM node: `we.train.main(cfg)`. On timeout or preemption submitit requeues
    it (checkpoint() returns this same task) and the trainer resumes from `<out>/last.pt`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def __call__(self) -> dict[str, Any]:
        from we.config import make_config, resolve
        from we.train import main

        return main(resolve(make_config(self.config, source="cell config")))

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
    """Several cells in one array task, trained at once: one `python -m we.executors run-cell RUN_DIR`
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
                    proc = subprocess.Popen([sys.executable, "-m", "we.executors", "run-cell", run_dir],
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
               for d, c in codes.items() if c not in (0, 3)]  # 3: diverged
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
                _link_log(logs / f"slurm-{job.job_id}.out", stdout)
                _link_log(logs / f"slurm-{job.job_id}.err", stderr)
                record = {"job_id": str(job.job_id), "executor": self.name, "time": now_iso(),
                          "stdout": str(stdout), "stderr": str(stderr), "profile": self.profile.path}
                if len(group) > 1:
                    record["log"] = str(pack_log_path(Path(cell.run_dir).absolute(), str(job.job_id)))
                    record["packed_with"] = [c.key for c in group if c is not cell]
                by_cell[id(cell)] = record
        return [by_cell[id(cell)] for cell in cells]


def _sacct_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """State per job id (array tasks as `A_i`) from sacct; None when sacct cannot be asked."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    bases = sorted({j.split("_")[0] for j in job_ids})
    cmd = ["sacct", "-o", "JobID,State", "--parsable2"]
    for base in bases:
        cmd += ["-j", base]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    info = SlurmInfoWatcher().read_info(res.stdout)
    return {job: stats.get("State", "").split(" ")[0] for job, stats in info.items()}


# ---------------------------------------------------------------------------------------------
# local background runner
# ---------------------------------------------------------------------------------------------

def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (tells a reused pid apart); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_after_name = stat.rsplit(")", 1)[1].split()
    if fields_after_name[0] == "Z":  # a zombie has finished
        return None
    return int(fields_after_name[19])


def local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable torch means no GPU
        return 0


class LocalExecutor:
    """Runs cells on this machine in a detached runner process, `concurrency` at a time."""

    name = "local"

    def __init__(self, concurrency: int | None = None, gpus: int | None = None) -> None:
        self.gpus = local_gpu_count() if gpus is None else gpus
        self.concurrency = concurrency or max(1, self.gpus)
        self.process: subprocess.Popen | None = None

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
                [sys.executable, "-m", "we.executors", "run-local", str(queue_path)], stdin=subprocess.DEVNULL,
                stdout=runner_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        pid = self.process.pid
        ticks = process_start_ticks(pid)
        host = socket.gethostname()
        return [{"job_id": local_job_id(pid, i), "executor": self.name, "time": now_iso(), "host": host,
                 "pid": pid, "pid_start": ticks, "log": str(log), "queue": str(queue_path)}
                for i, log in enumerate(logs)]


def local_job_id(runner_pid: int, index: int) -> str:
    return f"local-{runner_pid}-{index}"


def _local_active(record: dict[str, Any]) -> bool | None:
    if "exit_code" in record:
        return False
    if record.get("host") != socket.gethostname():
        return None  # another machine's runner: cannot tell from here
    ticks = process_start_ticks(int(record["pid"]))
    return ticks is not None and (record.get("pid_start") is None or ticks == record["pid_start"])


def active_jobs(records: Sequence[dict[str, Any]]) -> dict[str, bool | None]:
    """For each record's job_id: True while queued/running, False once ended, None when unknown."""
    out: dict[str, bool | None] = {}
    slurm = [r for r in records if r.get("executor") == "slurm"]
    for rec in records:
        if rec.get("executor") == "local":
            out[rec["job_id"]] = _local_active(rec)
        elif rec.get("executor") != "slurm":
            out[rec["job_id"]] = None
    if slurm:
        states = _sacct_states([r["job_id"] for r in slurm])
        for rec in slurm:
            if states is None:
                out[rec["job_id"]] = None
            elif rec["job_id"] in states:
                out[rec["job_id"]] = states[rec["job_id"]] in SLURM_ACTIVE_STATES
            else:
                out[rec["job_id"]] = _age_s(rec) < SACCT_GRACE_S
    return out


def job_state_note(record: dict[str, Any]) -> str:
    """A short description of a record for tables: executor and job id."""
    return f"{record.get('executor')} {record.get('job_id')}"


def _age_s(record: dict[str, Any]) -> float:
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(record["time"])).total_seconds()
    except (KeyError, ValueError):
        return float("inf")


def run_cell(run_dir: str | Path) -> int:
    """Train one cell from its cell.json (the local runner's child process); returns an exit code."""
    from we.config import ConfigError, make_config, resolve
    from we.train import EXIT_CODES, main

    data = read_cell_file(Path(run_dir))
    if data is None:
        print(f"error: {run_dir}: no readable {CELL_FILE}", file=sys.stderr)
        return 2
    try:
        result = main(resolve(make_config(data["config"], source=f"{run_dir}/{CELL_FILE}")))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return EXIT_CODES.get(result.get("status"), 1)


def run_local(queue_path: str | Path) -> int:
    """Work through a queue file written by LocalExecutor.submit; records each cell's exit code.

    A cell runs only while this runner holds one of the `concurrency` slot locks in
    `<runs-root>/.local-slots/`, which every runner of that runs root shares: two submissions
    side by side still run at most `concurrency` cells at once. Slot i runs on GPU gpus[i].
    """
    from filelock import Timeout

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
    failures = 0
    while pending or running:
        while pending:
            slot = free_slot()
            if slot is None:
                break
            index, cell = pending.pop(0)
            child_env = dict(env)
            if gpus:
                child_env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot])
            log_path = Path(cell["log"])
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "we.executors", "run-cell", cell["run_dir"]],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env)
            print(f"{now_iso()} started {cell['key']} (pid {proc.pid}, slot {slot})", flush=True)
            update_record(Path(cell["run_dir"]), local_job_id(me, index), cell_pid=proc.pid, started=now_iso())
            running[proc] = (index, cell, slot)
        time.sleep(0.2)
        for proc in [p for p in running if p.poll() is not None]:
            index, cell, slot = running.pop(proc)
            slot_locks[slot].release()
            failures += proc.returncode not in (0, 3)
            print(f"{now_iso()} ended {cell['key']} (exit {proc.returncode})", flush=True)
            update_record(Path(cell["run_dir"]), local_job_id(me, index), exit_code=proc.returncode, ended=now_iso())
    return 1 if failures else 0


def cli(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m we.executors", description="Local runner entry points.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run-local", help="work through a queue file (started by `we.grid submit`)").add_argument("queue")
    sub.add_parser("run-cell", help="train one cell from its cell.json").add_argument("run_dir")
    args = parser.parse_args(argv)
    if args.command == "run-local":
        return run_local(args.queue)
    return run_cell(args.run_dir)


if __name__ == "__main__":
    sys.exit(cli())
