"""The local executor: a tiny grid end to end with --wait, and a killed run that resumes mid-way."""
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
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


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path, capsys):
    epochs = 6
    path = write_grid(tmp_path, "killme", {"epochs": epochs, "limit_train": 192}, ["we"], [0])
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--runs-root", str(runs)]) == 0  # returns at once
    (cell,) = resolve_cells(load_grid(path), runs)
    (rec,) = read_cell_file(cell.run_dir)["submitted"]
    assert assess([cell], runs)[0].state in ("queued", "running")
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
        assert "started" not in rec and assess([cell], runs)[0].state == "queued"
    finally:
        busy.release()
    states = wait(load_grid(path), [cell], runs, poll_s=0.5)
    assert [s.state for s in states] == ["done"]
    log = runner_log.read_text()
    assert log.index("waiting for a free slot") < log.index("started")  # it started once slot 0 was free


def test_status_from_another_directory_sees_the_done_cells(tmp_path: Path, capsys, monkeypatch):
    path = write_grid(tmp_path, "anywhere", {"epochs": 1, "limit_train": 32}, ["baseline"], [0, 1])
    runs = tmp_path / "runs"
    monkeypatch.setenv("WE_RUNS_ROOT", str(runs))
    assert main(["submit", str(path), "--wait"]) == 0
    out = capsys.readouterr().out
    assert f"runs: {runs / 'anywhere'} ($WE_RUNS_ROOT)" in out and "done 2" in out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["status", str(path)]) == 0
    assert "anywhere: 2 cells: done 2" in capsys.readouterr().out
    assert main(["plan", str(path)]) == 0
    assert "states: done 2" in capsys.readouterr().out
    assert not (elsewhere / "results").exists()


def test_a_killed_cell_has_one_state_and_reason_everywhere(tmp_path: Path, capsys):
    from we.grid.__main__ import main as grid_main  # with collect

    path = write_grid(tmp_path, "killcell", {"epochs": 30, "limit_train": 192}, ["baseline"], [0])
    runs, out_dir = tmp_path / "runs", tmp_path / "tables"
    assert main(["submit", str(path), "--runs-root", str(runs)]) == 0
    (cell,) = resolve_cells(load_grid(path), runs)
    deadline = time.time() + 600  # generous: a shared CI machine may be slow
    while time.time() < deadline and not (epochs_logged(cell.run_dir) and
                                          "cell_pid" in read_cell_file(cell.run_dir)["submitted"][-1]):
        time.sleep(0.2)
    rec = read_cell_file(cell.run_dir)["submitted"][-1]
    assert epochs_logged(cell.run_dir), "the cell did not finish an epoch in time"
    os.kill(rec["cell_pid"], signal.SIGKILL)  # the cell's process, not its runner
    deadline = time.time() + 60
    while time.time() < deadline and "exit_code" not in read_cell_file(cell.run_dir)["submitted"][-1]:
        time.sleep(0.2)
    rec = read_cell_file(cell.run_dir)["submitted"][-1]
    assert rec["exit_code"] == -9 and rec["signal"] == "SIGKILL"
    (state,) = assess([cell], runs)
    assert state.state == "failed" and state.note == f"local {rec['job_id']} ended: killed by SIGKILL"
    capsys.readouterr()
    assert main(["status", str(path), "--runs-root", str(runs)]) == 1
    assert f"failed   {cell.key}: {state.note}" in capsys.readouterr().out
    assert main(["plan", str(path), "--runs-root", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "states: failed 1" in out and f"failed      {cell.key}: {state.note}" in out
    assert grid_main(["collect", str(path), "--runs-root", str(runs), "--out-dir", str(out_dir)]) == 0
    table = (out_dir / "killcell.md").read_text()
    assert "1 runs: 1 failed" in table and f"`{cell.run_dir}` failed: {state.note}" in table


def test_no_long_grid_on_a_machine_without_a_gpu(tmp_path: Path, capsys, monkeypatch):
    from we.grid.cost import CPU_MARATHON_IMAGES, image_passes
    from we.grid.local import LocalExecutor

    monkeypatch.setattr("we.grid.local.local_gpu_count", lambda: 0)
    runs = tmp_path / "runs"
    code = main(["submit", "table1", "--runs-root", str(runs)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--allow-cpu-marathon" in err and "--executor slurm" in err, err
    assert not runs.exists()
    table1 = resolve_cells(load_grid("table1"), runs)
    assert sum(image_passes(c) for c in table1) > CPU_MARATHON_IMAGES
    LocalExecutor(gpus=0, allow_cpu_marathon=True).check(table1)  # the explicit flag lets it run
    LocalExecutor(gpus=1).check(table1)  # a GPU machine runs it
    demo = resolve_cells(load_grid("demo"), runs)
    LocalExecutor(gpus=0).check(demo)  # digits: fine on a CPU
    short = resolve_cells(load_grid("table1"), runs, {"epochs": 2, "limit_train": 256})
    LocalExecutor(gpus=0).check(short)  # a limit_train/short version of the grid too


def test_make_reproduce_without_executor_plans_and_starts_nothing(tmp_path: Path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "WE_RUNS_ROOT": str(tmp_path / "runs")}
    env.pop("EXECUTOR", None)
    res = subprocess.run(["make", "--no-print-directory", "-o", "install", "reproduce-table4", f"PY={sys.executable}"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0, res.stdout
    assert "grid table4 (" in res.stdout and "grid table4-official (" in res.stdout and "estimate:" in res.stdout
    assert "nothing started" in res.stdout and "EXECUTOR=slurm" in res.stdout and "EXECUTOR=local" in res.stdout
    assert "submitted" not in res.stdout and not (tmp_path / "runs").exists()
