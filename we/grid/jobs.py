"""Whether a grid's jobs are still live, and queued or running: local runner processes (pid and start time
on this host) and SLURM jobs (sacct, and squeue where accounting lags). The grid's state reads it; the
report, which reads run folders only, never does.
"""
from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

# sacct states of a job that is still queued or running (a requeued job comes back to PENDING).
SLURM_ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED",
    "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED"})
# ... of those, the states of a job that waits for its turn (queued, not running).
SLURM_QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING"})
# A job that sacct does not list yet is taken as queued for this long after its submission.
SACCT_GRACE_S = 300.0


@dataclass(frozen=True)
class Job:
    """What its executor says of one job."""

    alive: bool | None  # queued or running; False once ended; None: cannot tell from here
    started: bool = False  # running, not only queued
    state: str = ""  # the scheduler's own word: sacct's State ("RUNNING", "CANCELLED by 1000"); "" for local jobs
    reason: str = ""  # why a queued job waits, as sacct says ("Priority", "JobArrayTaskLimit")


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


def local_active(record: dict[str, Any]) -> bool | None:
    """Whether a local record's job is live: its runner runs and has not recorded the cell's exit
    (None: the runner is on another machine)."""
    if "exit_code" in record or "ended" in record:  # ended: never started, its runner was stopped
        return False
    if record.get("host") != socket.gethostname():
        return None  # another machine's runner: cannot tell from here
    # the runner, or the cell's own process when the runner was killed under it
    for pid_key, start_key in (("pid", "pid_start"), ("cell_pid", "cell_pid_start")):
        if record.get(pid_key) is None:
            continue
        ticks = process_start_ticks(int(record[pid_key]))
        if ticks is not None and (record.get(start_key) is None or ticks == record[start_key]):
            return True
    return False


def _sacct_states(bases: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """sacct's (State, Reason) per job id (array tasks as `A_i`), e.g. ("CANCELLED by 1000", "None"); None when
    sacct cannot be asked."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    cmd = ["sacct", "-o", "JobID,State,Reason", "--parsable2"]
    for base in bases:
        cmd += ["-j", base]
    out = _ask(cmd)
    return None if out is None else {job: (stats.get("State", ""), stats.get("Reason", ""))
                                     for job, stats in SlurmInfoWatcher().read_info(out).items()}


def _squeue_states(bases: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The controller's (State, Reason) of each job it still holds, one line per array task; empty when
    squeue cannot be asked. Accounting can lag the controller: on a new cluster sacct was seen to say
    PENDING for a task that had trained an epoch."""
    out = _ask(["squeue", "--noheader", "--array", "--format", "%i|%T|%r", "--jobs", ",".join(bases)])
    lines = [line.split("|") for line in (out or "").splitlines()]
    return {f[0].strip(): (f[1].strip(), f[2].strip()) for f in lines if len(f) == 3}


def _ask(cmd: list[str]) -> str | None:
    """A SLURM command's stdout; None when it cannot be run or fails."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def _slurm_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """(State, Reason) per job id: accounting's, except where it still has a job queued (or not yet) that the
    controller holds: the controller's. (Once a job ends, accounting is first: a cancelled job is CANCELLED
    there while the controller still says COMPLETING.) None when sacct cannot be asked."""
    states = _sacct_states(sorted({j.split("_")[0] for j in job_ids}))
    if states is None:
        return None
    waiting = {j for j in job_ids if j not in states or states[j][0].split(" ")[0] in SLURM_QUEUED_STATES}
    if not waiting:  # every job started or ended in accounting: the controller can only agree
        return states
    controller = _squeue_states(sorted({j.split("_")[0] for j in waiting}))
    return {**states, **{job: state for job, state in controller.items() if job in waiting}}


def _age_s(record: dict[str, Any]) -> float:
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(record["time"])).total_seconds()
    except (KeyError, ValueError):
        return float("inf")


def slurm_jobs(records: Sequence[dict[str, Any]]) -> dict[str, Job]:
    """For each SLURM record's job_id, its Job from squeue or sacct (a job neither lists yet counts as queued
    for SACCT_GRACE_S after its submission; alive None when sacct cannot be asked)."""
    states = _slurm_states([r["job_id"] for r in records])
    out: dict[str, Job] = {}
    for rec in records:
        if states is None:
            out[rec["job_id"]] = Job(None)
        elif rec["job_id"] in states:
            state, reason = states[rec["job_id"]]
            word = state.split(" ")[0]
            queued = word in SLURM_QUEUED_STATES
            out[rec["job_id"]] = Job(word in SLURM_ACTIVE_STATES, not queued, state,
                                     reason if queued and reason not in ("", "None") else "")
        else:
            out[rec["job_id"]] = Job(_age_s(rec) < SACCT_GRACE_S)
    return out


def local_job(record: dict[str, Any]) -> Job:
    """A local record's Job: running once its runner recorded the cell's start (or the cell's process lives)."""
    return Job(local_active(record), "started" in record or "cell_pid" in record)


def jobs_of(records: Sequence[dict[str, Any]]) -> dict[str, Job]:
    """For each record's job_id, its Job (asking sacct once for every SLURM record)."""
    out: dict[str, Job] = {}
    slurm = [r for r in records if r.get("executor") == "slurm"]
    for rec in records:
        if rec.get("executor") == "local":
            out[rec["job_id"]] = local_job(rec)
        elif rec.get("executor") != "slurm":
            out[rec["job_id"]] = Job(None)
    if slurm:
        out.update(slurm_jobs(slurm))
    return out


def active_jobs(records: Sequence[dict[str, Any]]) -> dict[str, bool | None]:
    """For each record's job_id: True while queued/running, False once ended, None when unknown."""
    return {job_id: job.alive for job_id, job in jobs_of(records).items()}
