"""The local executor: a tiny grid end to end with --wait, and a killed run that resumes mid-way."""
import json
import os
import re
import signal
import time
from pathlib import Path

import yaml

from we.grid.cli import main, wait
from we.grid.identity import resolve_cells
from we.grid.records import read_cell_file
from we.grid.schema import load_grid
from we.grid.state import assess

BASE = {"dataset": "digits", "model": "resnet20", "batch_size": 32, "workers": 0, "progress": "plain"}


def write_grid(tmp_path: Path, name: str, base: dict, methods: list, seeds: list) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": {**BASE, **base}, "axes": {"method": methods},
                                    "seeds": seeds}, sort_keys=False))
    return path


def epochs_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def test_tiny_grid_with_wait_then_nothing_to_do(tmp_path: Path, capsys):
    path = write_grid(tmp_path, "tinylocal", {"epochs": 2, "limit_train": 64}, ["baseline", "we"], [0])
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--runs-root", str(runs), "--wait", "--concurrency", "2"]) == 0
    out = capsys.readouterr().out
    assert "submitted 2 cells to local" in out and "done 2" in out
    cells = resolve_cells(load_grid(path), runs)
    for cell in cells:
        result = json.loads((cell.run_dir / "result.json").read_text())
        assert result["status"] == "complete" and epochs_logged(cell.run_dir) == [1, 2]
        (rec,) = read_cell_file(cell.run_dir)["submitted"]
        assert rec["executor"] == "local" and rec["exit_code"] == 0 and Path(rec["log"]).exists()
        assert Path(rec["log"]).parent == cell.run_dir / "logs"
    assert main(["submit", str(path), "--runs-root", str(runs), "--wait"]) == 0
    assert "submitted 0 cells" in capsys.readouterr().out
    assert main(["status", str(path), "--runs-root", str(runs)]) == 0
    assert "done 2" in capsys.readouterr().out


def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path, capsys):
    epochs = 6
    path = write_grid(tmp_path, "killme", {"epochs": epochs, "limit_train": 192}, ["we"], [0])
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--runs-root", str(runs)]) == 0  # returns at once
    (cell,) = resolve_cells(load_grid(path), runs)
    (rec,) = read_cell_file(cell.run_dir)["submitted"]
    assert assess([cell], runs)[0].state == "running"
    deadline = time.time() + 240
    while time.time() < deadline and not (1 <= len(epochs_logged(cell.run_dir)) < epochs - 1):
        time.sleep(0.2)
    done_before = len(epochs_logged(cell.run_dir))
    assert 1 <= done_before < epochs, "the run did not reach a mid-way checkpoint in time"
    os.killpg(rec["pid"], signal.SIGKILL)  # the runner and its cell process share a session
    deadline = time.time() + 30
    while time.time() < deadline and assess([cell], runs)[0].state == "running":
        time.sleep(0.2)
    assert assess([cell], runs)[0].state == "failed"
    capsys.readouterr()
    assert main(["submit", str(path), "--runs-root", str(runs), "--wait"]) == 0
    assert "submitted 1 cells" in capsys.readouterr().out
    assert assess([cell], runs)[0].state == "done"
    assert epochs_logged(cell.run_dir) == list(range(1, epochs + 1))  # every epoch exactly once
    records = read_cell_file(cell.run_dir)["submitted"]
    assert len(records) == 2 and records[-1]["exit_code"] == 0
    log = Path(records[-1]["log"]).read_text()
    resumed = [int(n) for n in re.findall(r"resuming after epoch (\d+)", log)]
    assert resumed and resumed[0] >= 1


def test_runners_share_the_concurrency_slots(tmp_path: Path):
    from filelock import FileLock

    path = write_grid(tmp_path, "slots", {"epochs": 1, "limit_train": 64}, ["baseline"], [0])
    runs = tmp_path / "runs"
    busy = FileLock(str(runs / ".local-slots" / "slot-0.lock"))  # another runner's cell holds slot 0
    (runs / ".local-slots").mkdir(parents=True)
    busy.acquire()
    try:
        assert main(["submit", str(path), "--runs-root", str(runs), "--concurrency", "1"]) == 0
        (cell,) = resolve_cells(load_grid(path), runs)
        (runner_log,) = (runs / "slots" / ".local").glob("runner-*.log")
        deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
        while "waiting for a free slot" not in runner_log.read_text():  # the runner found slot 0 held
            assert time.monotonic() < deadline, runner_log.read_text()
            time.sleep(0.2)
        (rec,) = read_cell_file(cell.run_dir)["submitted"]
        assert "started" not in rec and assess([cell], runs)[0].state == "running"  # queued
    finally:
        busy.release()
    states = wait(load_grid(path), [cell], runs, poll_s=0.5)
    assert [s.state for s in states] == ["done"]
    log = runner_log.read_text()
    assert log.index("waiting for a free slot") < log.index("started")  # it started once slot 0 was free
