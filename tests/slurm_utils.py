"""Helpers for tests that need the one-node SLURM cluster of slurm/cluster-up.sh.

    from slurm_utils import require_slurm

    @pytest.mark.slurm
    def test_x(tmp_path):
        require_slurm()          # skips when no cluster answers ...
        ...                      # ... or fails when WE_REQUIRE_SLURM=1 (CI with a cluster)

or use the ``slurm_cluster`` fixture defined here (import it into the test module or a conftest).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEFAULT_STATE = "/tmp/we-repro-slurm"
CI_PROFILE = Path(__file__).resolve().parents[1] / "slurm" / "ci.yaml"
PROBE_TIMEOUT_S = 5
_READY = re.compile(r"^(idle|mixed|allocated|completing|planned)$", re.M)  # planned: held for a pending job
_last_reason = "not checked yet"


def state_dir() -> Path:
    """The cluster's state folder: $WE_SLURM_STATE or /tmp/we-repro-slurm."""
    return Path(os.environ.get("WE_SLURM_STATE") or DEFAULT_STATE)


def slurm_conf_path() -> Path | None:
    """slurm.conf of the state folder if it exists, else an existing $SLURM_CONF, else None."""
    conf = state_dir() / "slurm.conf"
    if conf.is_file():
        return conf
    env = os.environ.get("SLURM_CONF")
    if env and Path(env).is_file():
        return Path(env)
    return None


def _run(*cmd: str) -> str | None:
    """stdout of a client command, or None if it is missing, fails or takes over 5 s."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def cluster_available() -> bool:
    """True when slurmctld answers and the node is usable.

    Sets os.environ["SLURM_CONF"] to the state folder's slurm.conf (so this process, its
    subprocesses and the jobs they submit all talk to that cluster)."""
    global _last_reason
    conf = slurm_conf_path()
    if conf is None:
        _last_reason = f"no slurm.conf in {state_dir()} (run slurm/cluster-up.sh)"
        return False
    os.environ["SLURM_CONF"] = str(conf)
    if shutil.which("sinfo") is None or shutil.which("scontrol") is None:
        _last_reason = "slurm client commands not installed (run slurm/install-debian.sh)"
        return False
    ping = _run("scontrol", "ping")
    if not ping or "is UP" not in ping:
        _last_reason = f"slurmctld does not answer 'scontrol ping' (SLURM_CONF={conf})"
        return False
    states = _run("sinfo", "-h", "-o", "%T")
    if not states or not _READY.search(states):
        shown = (states or "").strip()
        _last_reason = f"no usable (idle/mixed/allocated/completing/planned) node in sinfo: {shown!r}"
        return False
    _last_reason = "ok"
    return True


def require_slurm() -> None:
    """Skip the calling test when no cluster answers; fail instead when WE_REQUIRE_SLURM=1."""
    if cluster_available():
        return
    msg = f"SLURM cluster not available: {_last_reason}"
    if os.environ.get("WE_REQUIRE_SLURM") == "1":
        pytest.fail(msg + " (WE_REQUIRE_SLURM=1)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def slurm_cluster() -> Path:
    """Fixture: requires the cluster (see require_slurm) and returns its slurm.conf path."""
    require_slurm()
    conf = slurm_conf_path()
    assert conf is not None
    return conf


def ci_profile(folder: Path, name: str, **values) -> Path:
    """The test profile (slurm/ci.yaml) with `values` changed, written as `folder/<name>.yaml`."""
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(CI_PROFILE.read_text()), **values}))
    return path


def grid_job_name(grid: str) -> str:
    """The SLURM job name of a grid submitted with the test profile (slurm/ci.yaml): <job_name>-<grid>."""
    return f"{yaml.safe_load(CI_PROFILE.read_text())['job_name']}-{grid}"


def cancel_test_jobs() -> list[str]:
    """scancel the jobs still queued or running whose name is a test profile's grid job (a test that failed
    midway leaves its grid's jobs behind, and they would slow every later test); the ids."""
    out = _run("squeue", "--noheader", "--format", "%A %j") if cluster_available() else None
    jobs = [line.split(maxsplit=1) for line in (out or "").splitlines()]
    ids = [job[0] for job in jobs if len(job) == 2 and job[1].startswith(grid_job_name(""))]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
    return ids
