"""`python -m we.grid cancel GRID`: a running cell ends interrupted at its last finished epoch (last.pt resumes
it), a queued one stays todo and never starts; `status` shows queued cells apart from running ones and, for a
running cell, its epoch, last test top-1 and ETA; `collect` shows its latest epoch marked partial. On the local
runner, and on the one-node SLURM cluster (skipped without one; fails under WE_REQUIRE_SLURM=1)."""
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_utils import ci_profile, require_slurm  # noqa: E402

from we.grid.__main__ import main  # noqa: E402  (python -m we.grid, with collect)
from we.grid.identity import resolve_cells  # noqa: E402
from we.grid.jobs import process_start_ticks  # noqa: E402
from we.grid.records import read_cell_file  # noqa: E402
from we.grid.schema import load_grid  # noqa: E402
from we.grid.state import assess  # noqa: E402
from we.rundir import progress, read_checkpoint, read_metrics, read_result  # noqa: E402
from we.train.interrupt import Interrupted, interrupts_raise  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 100  # never reached: the grids are cancelled once a cell has finished an epoch
BASE = {"dataset": "digits", "model": "resnet20", "batch_size": 32, "workers": 0, "progress": "plain",
        "epochs": EPOCHS, "limit_train": 64}


def write_grid(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": BASE, "axes": {"method": ["baseline", "we"]},
                                    "seeds": [0]}, sort_keys=False))
    return path


def wait_until(predicate, what: str, timeout_s: float = 600.0) -> None:
    """Poll for an event of the run itself (a metrics row, a result); the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def assert_interrupted_and_resumable(run_dir: Path) -> None:
    """result.json says interrupted by SIGTERM at the last finished epoch, and last.pt holds that epoch."""
    result = read_result(run_dir)
    rows = read_metrics(run_dir)
    assert result["status"] == "interrupted" and result["signal"] == "SIGTERM", result
    assert result["epochs_done"] == len(rows) >= 1
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == len(rows)


def assert_never_started(run_dir: Path) -> None:
    assert not any((run_dir / name).exists() for name in ("result.json", "metrics.jsonl", "last.pt"))


def test_progress_eta_is_remaining_epochs_times_the_mean_epoch_time():
    rows = [{"epoch": 1, "seconds": 2.0, "test_top1": 10.0}, {"epoch": 2, "seconds": 4.0, "test_top1": 20.0}]
    assert progress(rows, 6) == {"epochs_done": 2, "epochs": 6, "last_top1": 20.0, "epoch_seconds": 3.0,
                                 "eta_seconds": 12.0}
    assert progress([{"epoch": 1, "train_seconds": 5.0}], 3)["eta_seconds"] == 10.0  # no `seconds`: training time
    assert progress([], 6)["eta_seconds"] is None


def test_in_a_submitit_job_sigterm_raises_only_once_cancelled(monkeypatch: pytest.MonkeyPatch):
    """Inside a submitit job SIGTERM is submitit's (a requeue, a preemption) unless the cell's job was cancelled."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    cancelled = False
    try:
        with interrupts_raise(when=lambda: cancelled) as installed:
            assert installed
            os.kill(os.getpid(), signal.SIGTERM)
            wait_until(lambda: seen, "submitit's handler did not get the signal", 10)
            cancelled = True
            with pytest.raises(Interrupted):
                os.kill(os.getpid(), signal.SIGTERM)
                wait_until(lambda: False, "SIGTERM did not raise once cancelled", 10)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_nothing_to_cancel_says_so_in_one_line(tmp_path: Path, capsys):
    path = write_grid(tmp_path, "idle")
    assert main(["cancel", str(path), "--runs-root", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out == "idle: nothing to cancel (todo 2)\n"


def test_local_cancel_interrupts_the_running_cell_and_the_queued_one_never_starts(tmp_path: Path, capsys):
    path, runs = write_grid(tmp_path, "stoplocal"), tmp_path / "runs"
    args = [str(path), "--runs-root", str(runs)]
    assert main(["submit", *args, "--concurrency", "1"]) == 0
    first, second = resolve_cells(load_grid(path), runs)
    wait_until(lambda: read_metrics(first.run_dir), "the first cell finished no epoch")
    capsys.readouterr()

    assert main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert "stoplocal: 2 cells: running 1, queued 1" in out, out
    assert re.search(rf"running +{first.key}: local local-\d+-0: epoch \d+/{EPOCHS}, test top-1 \d+\.\d\d, "
                     r"ETA \d+:\d\d(:\d\d)? \(\d+\.\d s/epoch\)", out), out
    assert re.search(rf"queued +{second.key}: local local-\d+-1\n", out), out

    assert main(["collect", *args, "--out-dir", str(tmp_path / "tables")]) == 0
    table = (tmp_path / "tables" / "stoplocal.md").read_text()
    assert re.search(rf"\| baseline \| 0\* \| \d+\.\d\d \(partial, epoch \d+/{EPOCHS}\) \|", table), table
    capsys.readouterr()

    assert main(["cancel", *args]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"interrupted {first.key}: local local-\d+-0 cancelled: interrupted at epoch \d+/{EPOCHS} "
                     r"\(SIGTERM\); submit resumes it from last.pt", out), out
    assert re.search(rf"todo +{second.key}: local local-\d+-1 cancelled before it started", out), out
    assert [s.state for s in assess([first, second], runs)] == ["interrupted", "todo"]
    assert_interrupted_and_resumable(first.run_dir)
    assert_never_started(second.run_dir)
    ran, queued = (read_cell_file(c.run_dir)["submitted"][-1] for c in (first, second))
    assert ran["exit_code"] == 143 and "started" not in queued and queued["cancelled"]
    wait_until(lambda: process_start_ticks(ran["pid"]) is None, "the runner did not end after its cells", 60)
    assert process_start_ticks(ran["cell_pid"]) is None
    assert main(["cancel", *args]) == 0
    assert capsys.readouterr().out == "stoplocal: nothing to cancel (interrupted 1, todo 1)\n"


@pytest.mark.slurm
def test_slurm_cancel_interrupts_the_running_task_and_the_pending_one_stays_todo(tmp_path: Path, capsys):
    """One task at a time (array_parallelism 1): the first runs, the second waits PENDING; `cancel`
    scancels both: the trainer gets SLURM's SIGTERM and records interrupted, the pending task leaves the
    queue, and both cells say `cancelled` with sacct's State."""
    require_slurm()
    path, runs = write_grid(tmp_path, "stopslurm"), tmp_path / "runs"
    profile_path = ci_profile(tmp_path, "ci-one", array_parallelism=1)
    args = [str(path), "--runs-root", str(runs)]
    assert main(["submit", *args, "--executor", "slurm", "--profile", str(profile_path)]) == 0
    cells = resolve_cells(load_grid(path), runs)
    wait_until(lambda: any(read_metrics(c.run_dir) for c in cells), "no task finished an epoch")
    first, second = sorted(cells, key=lambda c: not read_metrics(c.run_dir))  # the running one first
    capsys.readouterr()

    assert main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"running +{first.key}: slurm \d+_\d: epoch \d+/{EPOCHS}, test top-1 \d+\.\d\d, ETA ", out), out
    assert re.search(rf"queued +{second.key}: slurm \d+_\d \(PENDING(: \w+)?\)", out), out

    assert main(["cancel", *args]) == 0
    out = capsys.readouterr().out
    assert f"{first.key}: slurm " in out and ": scancel" in out, out
    wait_until(lambda: (read_result(first.run_dir) or {}).get("status") == "interrupted",
               "the trainer did not record interrupted on scancel's SIGTERM", 120)
    states = {s.cell.key: s for s in assess(cells, runs)}
    assert states[first.key].state == "interrupted", states[first.key]
    assert re.search(r"cancelled \(CANCELLED by \d+\): interrupted at epoch \d+/", states[first.key].note)
    assert states[second.key].state == "todo", states[second.key]
    assert re.search(r"cancelled \(CANCELLED by \d+\) before it started", states[second.key].note)
    assert_interrupted_and_resumable(first.run_dir)
    assert_never_started(second.run_dir)
