"""What the grid keeps in each run folder, and what an executor is given and returns.

`<run>/cell.json` holds a cell's labels, its resolved config and one submission record per job
(job_id, executor, time, logs, ...); the executors add fields to their records (under the grid's
lock, `<runs-root>/<grid>/.submit.lock`) as the jobs start and end.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, Sequence

from filelock import FileLock

from we.rundir import LOGS_DIR, RunFileError, read_cell as read_cell_file, write_cell as write_cell_file

LOCK_FILE = ".submit.lock"
LOCK_TIMEOUT_S = 600.0
# The module the executors start for a cell (`run-cell RUN_DIR`) or a local queue (`run-local QUEUE`).
WORKER_MODULE = "we.grid.worker"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    return Path(run_dir) / LOGS_DIR


def slurm_log_names(job_id: str) -> tuple[str, str]:
    """The links `<run>/logs/` holds to a SLURM job's stdout and stderr (submitit keeps the files)."""
    return f"slurm-{job_id}.out", f"slurm-{job_id}.err"


def record_logs(record: dict[str, Any] | None) -> list[str]:
    """The names, inside the run's own logs folder, of a submission record's logs (stderr first). Only the
    names are taken from cell.json: a copied cell.json may name any path, the folder is always the run's."""
    if not record:
        return []
    names = [Path(str(record[k])).name for k in ("stderr", "stdout", "log") if record.get(k)]
    if record.get("executor") == "slurm":
        names = [*reversed(slurm_log_names(str(record.get("job_id")))), *names]
    return list(dict.fromkeys(names))


def link_log(link: Path, target: Path) -> None:
    """A relative symlink run/logs/NAME -> a log kept elsewhere (a SLURM job's, a seed array's in its first member's
    folder): it stays valid when results/ is copied."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


def grid_lock(grid_dir: Path, timeout: float = LOCK_TIMEOUT_S) -> FileLock:
    """The lock that serialises submissions to (and record updates in) one grid's run folders."""
    Path(grid_dir).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(grid_dir) / LOCK_FILE), timeout=timeout)


def update_record(run_dir: Path, job_id: str, **fields: Any) -> None:
    """Add fields to the submission record `job_id` of a cell (under the grid lock)."""
    run_dir = Path(run_dir)
    with grid_lock(run_dir.parent):
        try:
            data = read_cell_file(run_dir)
        except RunFileError:
            return  # a broken cell.json is reported by the grid's state, never overwritten here
        if data is None:
            return
        for rec in data.get("submitted", []):
            if rec.get("job_id") == job_id:
                rec.update(fields)
        write_cell_file(run_dir, data)


def cancel_requested(run_dir: Path, job_id: str | None = None) -> bool:
    """Whether `python -m we.grid cancel` marked the cell's job (`job_id`, else its last submission) as
    cancelled in cell.json: what a trainer inside a SLURM job checks when SIGTERM arrives."""
    try:
        data = read_cell_file(Path(run_dir))
    except RunFileError:
        return False
    records = [r for r in (data or {}).get("submitted", []) if job_id is None or r.get("job_id") == job_id]
    return bool(records and records[-1].get("cancelled"))
