"""A tiny grid on the one-node SLURM cluster: submit with the ci profile, requeue a running task,
check that it resumed from its checkpoint, then collect the table.

Skips with the reason when no cluster answers (fails instead with WE_REQUIRE_SLURM=1); start one
with `bash slurm/install-debian.sh && bash slurm/cluster-up.sh`.
"""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_utils import ci_profile, grid_job_name, require_slurm  # noqa: E402

from we.grid.__main__ import main  # noqa: E402  (python -m we.grid, with collect)
from we.grid.identity import resolve_cells  # noqa: E402
from we.grid.records import read_cell_file  # noqa: E402
from we.grid.schema import load_grid  # noqa: E402
from we.grid.state import assess  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 8
GRID = {
    "name": "slurm-e2e",
    "base": {"dataset": "digits", "model": "resnet20", "epochs": EPOCHS, "limit_train": 256, "batch_size": 32,
             "lr_milestones": [5, 7]},
    "axes": {"method": ["baseline", "we"]},
    "seeds": [0],
}


def epochs_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def settle(cells, runs: Path, timeout_s: float, poll_s: float) -> list:
    """The cells' states once none is running or still to run, or when `timeout_s` has passed."""
    deadline = time.time() + timeout_s
    while True:
        states = assess(cells, runs)
        if all(s.state not in ("running", "queued", "todo") for s in states) or time.time() >= deadline:
            return states
        time.sleep(poll_s)


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id.split("_")[0]],
                         capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if jid == job_id:
            return state.split(" ")[0]
    return ""


@pytest.mark.slurm
@pytest.mark.slow
def test_grid_on_slurm_survives_a_requeue(tmp_path: Path, capsys):
    require_slurm()
    started = time.time()
    path = tmp_path / "slurm-e2e.yaml"
    path.write_text(yaml.safe_dump(GRID, sort_keys=False))
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--executor", "slurm", "--profile", str(REPO / "slurm" / "ci.yaml"),
                 "--runs-root", str(runs)]) == 0
    assert "submitted 2 cells to slurm" in capsys.readouterr().out
    cells = resolve_cells(load_grid(path), runs)
    jobs = {c.key: read_cell_file(c.run_dir)["submitted"][-1]["job_id"] for c in cells}
    assert all(re.fullmatch(r"\d+_[01]", j) for j in jobs.values()), jobs  # one array, two tasks

    # catch a task that is RUNNING and has checkpointed at least one epoch, with epochs left to go
    target = None
    deadline = time.time() + 240
    while target is None and time.time() < deadline:
        for cell in cells:
            logged = len(epochs_logged(cell.run_dir))
            if 1 <= logged <= EPOCHS - 3 and (cell.run_dir / "last.pt").exists() and \
                    sacct_state(jobs[cell.key]) == "RUNNING":
                target = cell
                break
        time.sleep(0.3)
    assert target is not None, "no task was caught running mid-way"
    subprocess.run(["scontrol", "requeue", jobs[target.key]], check=True, timeout=30)
    print(f"requeued {jobs[target.key]} ({target.key}) after epoch {len(epochs_logged(target.run_dir))}")

    states = settle(cells, runs, timeout_s=420, poll_s=2)
    assert [s.state for s in states] == ["done", "done"], [(s.cell.key, s.state, s.note) for s in states]

    for cell in cells:
        assert epochs_logged(cell.run_dir) == list(range(1, EPOCHS + 1))  # each epoch exactly once
        (log,) = sorted((cell.run_dir / "logs").glob("slurm-*.out"))
        assert log.is_symlink() and log.exists()
    log = (target.run_dir / "logs" / f"slurm-{jobs[target.key]}.out").read_text()
    resumed = [int(n) for n in re.findall(r"resuming after epoch (\d+)", log)]
    assert resumed and resumed[0] > 0, log[-2000:]
    record = read_cell_file(target.run_dir)["submitted"]
    assert len(record) == 1 and record[0]["executor"] == "slurm"

    # a second submit finds nothing to do; collect writes the table with both cells
    assert main(["submit", str(path), "--executor", "slurm", "--profile", str(REPO / "slurm" / "ci.yaml"),
                 "--runs-root", str(runs)]) == 0
    assert "submitted 0 cells" in capsys.readouterr().out
    out_dir = tmp_path / "results"
    assert main(["collect", str(path), "--runs-root", str(runs), "--out-dir", str(out_dir)]) == 0
    table = (out_dir / "slurm-e2e.md").read_text()
    assert "| digits | resnet20 | baseline | 1" in table and "| digits | resnet20 | we | 1" in table
    print(f"slurm e2e took {time.time() - started:.0f} s")


@pytest.mark.slurm
@pytest.mark.slow
def test_packed_cells_share_a_task(tmp_path: Path, capsys):
    """pack: 2 on the ci profile: four tiny cells go out as two array tasks of two cells each."""
    require_slurm()
    started = time.time()
    grid = {"name": "slurm-pack", "base": {"dataset": "digits", "model": "resnet20", "epochs": 2, "limit_train": 64,
                                           "batch_size": 32},
            "axes": {"method": ["baseline", "we"]}, "seeds": [0, 1]}
    path = tmp_path / "slurm-pack.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    profile_path = ci_profile(tmp_path, "ci-pack", pack=2)
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--executor", "slurm", "--profile", str(profile_path),
                 "--runs-root", str(runs)]) == 0
    assert "submitted 4 cells to slurm" in capsys.readouterr().out
    cells = resolve_cells(load_grid(path), runs)
    records = {c.key: read_cell_file(c.run_dir)["submitted"][-1] for c in cells}
    jobs = {key: rec["job_id"] for key, rec in records.items()}
    base = next(iter(jobs.values())).split("_")[0]
    assert set(jobs.values()) == {f"{base}_0", f"{base}_1"}, jobs  # one array, two tasks for four cells
    for key, rec in records.items():  # each cell shares its task with exactly one partner
        (partner,) = rec["packed_with"]
        assert jobs[partner] == jobs[key] and records[partner]["packed_with"] == [key]

    states = settle(cells, runs, timeout_s=120, poll_s=1)
    assert [s.state for s in states] == ["done"] * 4, [(s.cell.key, s.state, s.note) for s in states]
    for cell in cells:
        assert epochs_logged(cell.run_dir) == [1, 2]
        log = cell.run_dir / "logs" / f"slurm-{jobs[cell.key]}.cell.log"
        assert log.exists() and log.read_text().strip(), log
    print(f"slurm pack e2e took {time.time() - started:.0f} s")


@pytest.mark.slurm
def test_missing_data_submits_nothing(tmp_path: Path, capsys, monkeypatch):
    """A CIFAR grid whose data is not on disk and cannot be fetched (the download URL points at a
    closed loopback port) stops submit with one line: no run folder, no job in squeue or sacct."""
    require_slurm()
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    name = f"nodata-{tmp_path.name[-12:]}".replace("_", "-")
    grid = {"name": name, "base": {"dataset": "cifar10", "model": "resnet20", "epochs": 1, "limit_train": 64,
                                   "batch_size": 32}, "axes": {"method": ["baseline", "we"]}, "seeds": [0, 1]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    runs, data = tmp_path / "runs", tmp_path / "shared-data"
    code = main(["submit", str(path), "--executor", "slurm", "--profile", str(REPO / "slurm" / "ci.yaml"),
                 "--runs-root", str(runs), "--set", f"data_dir={data}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith(f"error: dataset cifar10 missing in {data / 'cifar-10-batches-py'} and the download "
                          "from http://127.0.0.1:9/"), err
    assert not runs.exists() and not data.joinpath("cifar-10-batches-py").exists()
    job_name = grid_job_name(name)
    queued = subprocess.run(["squeue", "-h", "-n", job_name], capture_output=True, text=True, timeout=30)
    accounted = subprocess.run(["sacct", "-n", "-X", "--name", job_name, "-S", "now-1hour"], capture_output=True,
                               text=True, timeout=30)
    assert queued.returncode == 0 and queued.stdout.strip() == "", queued.stdout
    assert accounted.returncode == 0 and accounted.stdout.strip() == "", accounted.stdout
@pytest.mark.slurm
@pytest.mark.slow
def test_packed_task_checkpoints_on_timeout_and_resumes(tmp_path: Path, capsys):
    """A packed task (two cells) with a 4-minute limit and submitit's signal 120 s before it: on the
    signal submitit calls the task's checkpoint, which stops both cells, and requeues the task; the
    requeued task resumes each cell from its own last.pt. Waits for one such resume, then cancels."""
    require_slurm()
    grid = {"name": "slurm-timeout", "base": {"dataset": "digits", "model": "resnet20", "epochs": 200,
                                              "limit_train": 64, "batch_size": 32},
            "axes": {"method": ["baseline", "we"]}, "seeds": [0]}
    path = tmp_path / "slurm-timeout.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    profile_path = ci_profile(tmp_path, "ci-timeout", pack=2, timeout_min=4, signal_delay_s=120, max_num_timeout=2)
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--executor", "slurm", "--profile", str(profile_path),
                 "--runs-root", str(runs)]) == 0
    cells = resolve_cells(load_grid(path), runs)
    (job,) = {read_cell_file(c.run_dir)["submitted"][-1]["job_id"] for c in cells}  # one task, both cells
    log = lambda c: (c.run_dir / "logs" / f"slurm-{job}.cell.log")
    resumed: dict[str, list[int]] = {}
    try:
        deadline = time.time() + 480  # a guard against a hang, not a timing assertion
        while time.time() < deadline and len(resumed) < len(cells):
            for cell in cells:
                found = [int(n) for n in re.findall(r"resuming after epoch (\d+)",
                                                    log(cell).read_text() if log(cell).exists() else "")]
                if found and found[0] > 0:
                    resumed[cell.key] = found
            time.sleep(2)
        task_log = next((runs / "slurm-timeout" / ".submitit").rglob(f"{job}_0_log.err"), None)
        detail = task_log.read_text()[-3000:] if task_log else "no task log"
        assert len(resumed) == len(cells), (resumed, detail)
    finally:
        subprocess.run(["scancel", job.split("_")[0]], timeout=30)
    for cell in cells:  # the resumed run continued from the checkpointed epoch, nothing logged twice
        logged = epochs_logged(cell.run_dir)
        assert logged == list(range(1, len(logged) + 1)), logged
