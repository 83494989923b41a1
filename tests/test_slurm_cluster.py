"""End-to-end checks of the one-node SLURM cluster itself (slurm/cluster-up.sh).

Skipped when no cluster answers; failed instead when WE_REQUIRE_SLURM=1. About 10 s.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

try:
    from slurm_utils import require_slurm
except ImportError:  # tests/ imported as a package
    from tests.slurm_utils import require_slurm

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 60  # per job; the cluster usually finishes one in ~1 s


@pytest.fixture(autouse=True)
def _cluster():
    require_slurm()  # skip (or fail, with WE_REQUIRE_SLURM=1) when no cluster answers


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
        capture_output=True, text=True, timeout=5,
    ).stdout.split()
    return out[0] if out else ""


def _wait_done(job, timeout_s: float = DEADLINE_S) -> None:
    """Poll a submitit job (bounded) instead of letting job.result() wait forever."""
    end = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > end:
            job.cancel(check=False)
            pytest.fail(f"submitit job {job.job_id} not done after {timeout_s} s (state {job.state})")
        time.sleep(0.2)


def _executor(folder: Path):
    import submitit

    # The log folder must be visible from the compute node: any local path is, on one node.
    ex = submitit.AutoExecutor(folder=folder / "%j")
    assert ex.cluster == "slurm", f"AutoExecutor picked {ex.cluster!r}, not slurm"
    # Explicit time limit: submitit's Slurm default is 5 min (LocalExecutor: 2 min).
    ex.update_parameters(timeout_min=5, slurm_partition="debug", cpus_per_task=1, nodes=1,
                         tasks_per_node=1, slurm_array_parallelism=3)
    return ex


def test_sbatch_job_completes_in_sacct(tmp_path):
    out = tmp_path / "hello.out"
    sub = subprocess.run(
        ["sbatch", "--parsable", "-p", "debug", "-t", "1", "-o", str(out),
         "--wrap", "echo hello from $SLURM_JOB_ID"],
        capture_output=True, text=True, timeout=10,
    )
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    end = time.monotonic() + DEADLINE_S
    state = ""
    while state != "COMPLETED" and time.monotonic() < end:
        time.sleep(0.2)
        state = _sacct_state(job_id)
        assert state not in {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
    assert state == "COMPLETED", f"job {job_id} state {state!r} in sacct"
    assert out.read_text().strip() == f"hello from {job_id}"


def test_submitit_single_job(tmp_path):
    def work(x):  # nested: cloudpickle ships it by value, no import of this module needed
        import os
        return x * x, os.environ.get("SLURM_JOB_ID")

    job = _executor(tmp_path).submit(work, 7)
    _wait_done(job)
    value, slurm_id = job.result()
    assert value == 49
    assert slurm_id == job.job_id


def test_submitit_map_array(tmp_path):
    def work(x):
        import os
        return x + 100, os.environ.get("SLURM_ARRAY_TASK_ID")

    jobs = _executor(tmp_path).map_array(work, [1, 2, 3])
    assert len(jobs) == 3
    for job in jobs:
        _wait_done(job)
    results = [job.result() for job in jobs]
    assert [r[0] for r in results] == [101, 102, 103]
    assert sorted(r[1] for r in results) == ["0", "1", "2"]


@pytest.mark.skipif(os.geteuid() != 0, reason="cluster-up.sh runs as root")
def test_cluster_up_is_idempotent():
    """Run again on a running cluster, cluster-up.sh restarts nothing: every SLURM daemon keeps its
    process (same pid, still alive) and the cluster still answers."""
    run_dir = Path(os.environ.get("WE_SLURM_STATE", "/tmp/we-repro-slurm")) / "run"
    pid_files = [run_dir / f"{name}.pid" for name in ("slurmdbd", "slurmctld", "slurmd")]
    before = [int(p.read_text()) for p in pid_files]
    res = subprocess.run([str(REPO / "slurm" / "cluster-up.sh")], capture_output=True,
                         text=True, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "already up" in res.stdout, res.stdout
    assert [int(p.read_text()) for p in pid_files] == before
    for pid in before:
        os.kill(pid, 0)  # raises if the daemon is gone
    require_slurm()  # still answers
