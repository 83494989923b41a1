"""Seed arrays in grids (we.grid.arrays): `submit` puts a config's pending seeds in one job (`--array K`, the
profile's `array`, the default per device), the methods that cannot join run solo and `plan` says why, an array
job writes the solo runs' folders, finished seeds are never retrained, and an interrupted array (SIGTERM on
the local runner, a requeue or a timeout on SLURM) resumes as one array. The trained cells are tiny ResNet-20
digits runs (32 images, one step an epoch); the SLURM tests skip without a cluster (fail under
WE_REQUIRE_SLURM=1)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_utils import ci_profile, require_slurm  # noqa: E402

import we.grid.cli as grid_cli  # noqa: E402
from we.grid.__main__ import main  # noqa: E402  (python -m we.grid, with collect)
from we.grid.arrays import ALL_SEEDS, array_jobs, array_size  # noqa: E402
from we.grid.identity import resolve_cells  # noqa: E402
from we.grid.jobs import process_start_ticks  # noqa: E402
from we.grid.records import read_cell_file  # noqa: E402
from we.grid.schema import load_grid  # noqa: E402
from we.grid.state import assess  # noqa: E402
from we.methods import METHODS  # noqa: E402
from we.rundir import read_checkpoint, read_metrics, read_result  # noqa: E402
from we.train.trainer import TIMING_KEYS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASE = {"dataset": "digits", "model": "resnet20", "batch_size": 32, "workers": 0, "progress": "plain",
        "limit_train": 32, "epochs": 2}
PROFILE = {"partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 2, "mem_gb": None, "timeout_min": 60,
           "max_num_timeout": 1, "array_parallelism": 2, "account": None, "qos": None, "setup": []}


def write_grid(folder: Path, name: str, methods: list, seeds: list, **base) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": {**BASE, **base}, "axes": {"method": methods},
                                    "seeds": seeds}, sort_keys=False))
    return path


def write_profile(folder: Path, **values) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump({**PROFILE, **values}))
    return path


def keys(jobs) -> list[list[str]]:
    return [[c.labels["method"] + str(c.labels["seed"]) for c in job] for job in jobs]


def wait_until(predicate, what: str, timeout_s: float = 600.0) -> None:
    """Poll for an event of the run itself (a metrics row, a process ending); the timeout only guards a hang."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def rows_without_timings(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in read_metrics(run_dir)]


# ---- which cells share a job (no training) ---------------------------------------------------------------

def test_a_configs_seeds_share_a_job_up_to_k_and_a_solo_method_stays_alone(tmp_path: Path):
    path = write_grid(tmp_path, "groups", ["baseline", "we", "fg1"], [0, 1, 2])
    cells = resolve_cells(load_grid(path), tmp_path / "runs")
    found = array_jobs(cells, ALL_SEEDS)
    assert keys(found.jobs) == [["baseline0", "baseline1", "baseline2"], ["we0", "we1", "we2"], ["fg10"], ["fg11"],
                                ["fg12"]]
    assert found.solo == {"fg1": METHODS["fg"].array_reason} and found.arrays == [3, 3]
    assert keys(array_jobs(cells, 2).jobs) == [["baseline0", "baseline1"], ["baseline2"], ["we0", "we1"], ["we2"],
                                               ["fg10"], ["fg11"], ["fg12"]]
    assert keys(array_jobs(cells, 1).jobs) == [[k] for k in ("baseline0", "baseline1", "baseline2", "we0", "we1",
                                                             "we2", "fg10", "fg11", "fg12")]
    assert array_jobs(cells, 1).arrays == []


def test_seeds_that_stand_at_different_epochs_go_to_different_jobs(tmp_path: Path):
    """As train_array groups its members by the epoch their last.pt holds, so does the grid: each job one array."""
    path = write_grid(tmp_path, "epochs", ["baseline"], [0, 1, 2])
    cells = resolve_cells(load_grid(path), tmp_path / "runs")
    ahead = cells[1].run_dir
    ahead.mkdir(parents=True)
    (ahead / "last.pt").write_bytes(b"")  # only its presence is read here
    (ahead / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2)))
    assert keys(array_jobs(cells, ALL_SEEDS).jobs) == [["baseline0", "baseline2"], ["baseline1"]]


def test_the_array_size_comes_from_the_option_else_the_profile_else_the_device():
    assert array_size(None, None, 0)[0] == 1  # no GPU: one run per job
    assert array_size(None, None, 1)[0] is ALL_SEEDS
    assert array_size(None, 2, 1)[0] == 2 and array_size(None, 2, 0)[0] == 2
    assert array_size(1, 2, 1)[0] == 1 and array_size(4, None, 0)[0] == 4  # --array wins


def jobs_line(capsys) -> str:
    out = capsys.readouterr().out
    return next(line for line in out.splitlines() if line.startswith("submit: "))


def test_plan_shows_the_jobs_per_executor_profile_and_option(tmp_path: Path, capsys, monkeypatch):
    path = write_grid(tmp_path, "sizes", ["baseline", "fg1"], [0, 1, 2])
    runs = ["--runs-root", str(tmp_path / "runs")]
    monkeypatch.setattr(grid_cli, "local_gpu_count", lambda: 0)
    assert main(["plan", str(path), *runs]) == 0
    assert jobs_line(capsys).startswith("submit: 6 jobs: 0 arrays, 6 solo; one run per job (the default without a GPU")
    monkeypatch.setattr(grid_cli, "local_gpu_count", lambda: 1)
    assert main(["plan", str(path), *runs]) == 0
    assert jobs_line(capsys) == ("submit: 4 jobs: 1 array (1 of 3 seeds), 3 solo; a config's pending seeds per job "
                                 "(the default on a GPU)")
    gpu, cpu = write_profile(tmp_path / "gpu"), write_profile(tmp_path / "cpu", gpus_per_node=0)
    assert main(["plan", str(path), "--executor", "slurm", "--profile", str(gpu), *runs]) == 0
    assert "a config's pending seeds per job (the default on a GPU)" in jobs_line(capsys)
    assert main(["plan", str(path), "--executor", "slurm", "--profile", str(cpu), *runs]) == 0
    assert "one run per job (the default without a GPU" in jobs_line(capsys)
    two = write_profile(tmp_path / "two", array=2)
    assert main(["plan", str(path), "--executor", "slurm", "--profile", str(two), *runs]) == 0
    assert jobs_line(capsys) == ("submit: 5 jobs: 1 array (1 of 2 seeds), 4 solo; up to 2 seeds per job (the "
                                 "profile's array: 2)")
    assert main(["plan", str(path), "--executor", "slurm", "--profile", str(two), "--array", "1", *runs]) == 0
    assert jobs_line(capsys) == "submit: 6 jobs: 0 arrays, 6 solo; one run per job (--array 1)"


def test_plan_says_per_method_why_it_runs_solo_and_costs_both_ways(tmp_path: Path, capsys):
    path = write_grid(tmp_path, "solo", ["baseline", "fg1", "oni"], [0, 1, 2])
    assert main(["plan", str(path), "--runs-root", str(tmp_path / "runs"), "--array", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for method, plugin in (("fg1", "fg"), ("oni", "oni")):
        assert f"  {method} runs solo: {METHODS[plugin].array_reason}" in lines, out
    assert not any(line.startswith("  baseline runs solo") for line in lines), out
    assert "submit: 7 jobs: 1 array (1 of 3 seeds), 6 solo; up to 3 seeds per job (--array 3)" in lines, out
    assert any(line.startswith("  with seed arrays (up to 3 seeds per job): 7 jobs:") for line in lines), out
    assert any(line.startswith("  without (--array 1): 9 jobs;") for line in lines), out


def test_a_profile_whose_job_spans_gpus_never_makes_arrays(tmp_path: Path, capsys):
    path = write_grid(tmp_path, "ddp", ["baseline"], [0, 1])
    profile = write_profile(tmp_path, gpus_per_node=2, tasks_per_node=2)
    args = ["plan", str(path), "--executor", "slurm", "--profile", str(profile), "--runs-root", str(tmp_path / "r")]
    assert main(args) == 0
    assert "one run per job (tasks_per_node 2" in jobs_line(capsys)
    assert main([*args, "--array", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --array: array: tasks_per_node 2"), err


@pytest.mark.parametrize("value", ["0", "-1", "x", "2.5"])
def test_a_bad_array_option_is_one_line_before_anything_is_written(tmp_path: Path, capsys, value):
    path = write_grid(tmp_path, "bad", ["baseline"], [0, 1])
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--runs-root", str(runs), "--array", value]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --array: array: "), err
    assert not runs.exists()


def test_a_bad_profile_array_is_one_line_naming_the_key(tmp_path: Path, capsys):
    path = write_grid(tmp_path, "badprofile", ["baseline"], [0, 1])
    profile = write_profile(tmp_path, array=0)
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--executor", "slurm", "--profile", str(profile), "--runs-root",
                 str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {profile}: array: ") and ">= 1" in err, err
    assert not runs.exists()


# ---- array jobs on the local executor ---------------------------------------------------------------------

def test_an_array_job_writes_the_solo_folders_and_leaves_finished_seeds_alone(tmp_path: Path, capsys):
    first = write_grid(tmp_path / "one", "arr", ["baseline"], [0])
    runs = tmp_path / "runs"
    assert main(["submit", str(first), "--runs-root", str(runs), "--wait"]) == 0  # seed 0 alone, on the CPU
    capsys.readouterr()
    path = write_grid(tmp_path / "three", "arr", ["baseline"], [0, 1, 2])
    s0, s1, s2 = resolve_cells(load_grid(path), runs)
    finished = (s0.run_dir / "result.json").read_bytes()
    assert main(["submit", str(path), "--runs-root", str(runs), "--wait", "--array", "3"]) == 0
    out = capsys.readouterr().out
    assert "arr: submitted 2 cells to local" in out and "in 1 job: 1 array (1 of 2 seeds), 0 solo" in out, out
    assert "left alone 1 (done 1)" in out, out
    assert (s0.run_dir / "result.json").read_bytes() == finished  # never retrained
    for member, other in ((s1, s2), (s2, s1)):
        result = read_result(member.run_dir)
        assert result["status"] == "complete" and result["array"]["size"] == 2, result
        (record,) = read_cell_file(member.run_dir)["submitted"]
        assert record["array_with"] == [other.key] and record["exit_code"] == 0
        assert (member.run_dir / "logs" / Path(record["log"]).name).exists()
    assert read_cell_file(s1.run_dir)["submitted"][0]["pid"] == read_cell_file(s2.run_dir)["submitted"][0]["pid"]

    solo = write_grid(tmp_path / "solo", "arr", ["baseline"], [1])  # seed 1 alone, in another runs root
    assert main(["submit", str(solo), "--runs-root", str(tmp_path / "solo-runs"), "--wait", "--array", "1"]) == 0
    (alone,) = resolve_cells(load_grid(solo), tmp_path / "solo-runs")
    assert alone.run_dir.name == s1.run_dir.name  # the same run identity, the same folder name
    config = lambda c: {k: v for k, v in yaml.safe_load((c.run_dir / "config.yaml").read_text()).items()  # noqa
                        if k != "out"}
    assert config(alone) == config(s1)
    assert "array" not in read_result(alone.run_dir)
    assert [r["epoch"] for r in read_metrics(alone.run_dir)] == [r["epoch"] for r in read_metrics(s1.run_dir)]
    assert main(["status", str(path), "--runs-root", str(runs)]) == 0
    assert "arr: 3 cells: done 3" in capsys.readouterr().out


@pytest.mark.slow
def test_sigterm_interrupts_every_member_and_a_resubmit_resumes_the_array(tmp_path: Path, capsys):
    epochs = 3
    path = write_grid(tmp_path, "stoparr", ["baseline"], [0, 1], epochs=epochs)
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--runs-root", str(runs), "--array", "2"]) == 0  # returns at once
    cells = resolve_cells(load_grid(path), runs)
    runner = read_cell_file(cells[0].run_dir)["submitted"][-1]["pid"]
    wait_until(lambda: any(read_metrics(c.run_dir) for c in cells if (c.run_dir / "metrics.jsonl").exists()),
               "no member finished an epoch")
    os.kill(runner, signal.SIGTERM)
    wait_until(lambda: process_start_ticks(runner) is None, "the runner did not end")
    assert [s.state for s in assess(cells, runs)] == ["interrupted", "interrupted"]
    done = set()
    for cell in cells:
        result, rows = read_result(cell.run_dir), read_metrics(cell.run_dir)
        assert result is not None and result["status"] == "interrupted" and result["signal"] == "SIGTERM", result
        assert 1 <= result["epochs_done"] == len(rows) == read_checkpoint(cell.run_dir / "last.pt")["epoch"] < epochs
        done.add(len(rows))
    assert len(done) == 1, done  # every member's files hold the same epoch: the array resumes as one
    capsys.readouterr()

    assert main(["submit", str(path), "--runs-root", str(runs), "--wait", "--array", "2"]) == 0
    out = capsys.readouterr().out
    assert "submitted 2 cells to local" in out and "in 1 job: 1 array (1 of 2 seeds)" in out, out
    (epoch,) = done
    for cell in cells:
        record = read_cell_file(cell.run_dir)["submitted"][-1]
        log = (cell.run_dir / "logs" / Path(record["log"]).name).read_text()
        assert f"{cell.run_dir}: resuming after epoch {epoch} of {epochs} (seed array)" in log, log[-2000:]

    reference = tmp_path / "reference"
    assert main(["submit", str(path), "--runs-root", str(reference), "--wait", "--array", "2"]) == 0
    for cell, twin in zip(cells, resolve_cells(load_grid(path), reference)):
        assert read_result(cell.run_dir)["status"] == read_result(twin.run_dir)["status"] == "complete"
        assert rows_without_timings(cell.run_dir) == rows_without_timings(twin.run_dir)
        resumed, straight = (read_checkpoint(c.run_dir / "last.pt")["model"] for c in (cell, twin))
        assert all(torch.equal(resumed[k], straight[k]) for k in straight)


# ---- array jobs on SLURM ----------------------------------------------------------------------------------

def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id.split("_")[0]],
                         capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if jid == job_id:
            return state.split(" ")[0]
    return ""


def settle(cells, runs: Path, timeout_s: float) -> list:
    """The cells' states once none is running or still to run (the timeout only guards against a hang)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = assess(cells, runs)
        if all(s.state not in ("running", "queued", "todo") for s in states) or time.monotonic() >= deadline:
            return states
        time.sleep(1)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_requeued_array_task_resumes_as_one_array(tmp_path: Path, capsys):
    require_slurm()
    epochs = 8
    path = write_grid(tmp_path, "slurm-array", ["we"], [0, 1], epochs=epochs)
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--executor", "slurm", "--profile", str(REPO / "slurm" / "ci.yaml"),
                 "--runs-root", str(runs), "--array", "2"]) == 0
    assert "in 1 job: 1 array (1 of 2 seeds)" in capsys.readouterr().out
    cells = resolve_cells(load_grid(path), runs)
    records = [read_cell_file(c.run_dir)["submitted"][-1] for c in cells]
    (job,) = {r["job_id"] for r in records}  # one array task for both seeds
    assert [r["array_with"] for r in records] == [[cells[1].key], [cells[0].key]]
    wait_until(lambda: any(1 <= len(read_metrics(c.run_dir)) <= epochs - 3 for c in cells
                           if (c.run_dir / "metrics.jsonl").exists()) and sacct_state(job) == "RUNNING",
               "the array task was not caught running mid-way", 300)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    states = settle(cells, runs, 480)
    assert [s.state for s in states] == ["done", "done"], [(s.cell.key, s.state, s.note) for s in states]
    log = (cells[0].run_dir / "logs" / f"slurm-{job}.out").read_text()
    for cell in cells:
        assert [r["epoch"] for r in read_metrics(cell.run_dir)] == list(range(1, epochs + 1))  # each epoch once
        assert read_result(cell.run_dir)["array"]["size"] == 2
        resumed = [int(n) for n in re.findall(rf"{re.escape(str(cell.run_dir))}: resuming after epoch (\d+) of "
                                              rf"{epochs} \(seed array\)", log)]
        assert resumed and resumed[0] > 0, log[-2000:]


@pytest.mark.slurm
@pytest.mark.slow
def test_an_array_task_checkpoints_on_timeout_and_resumes_as_one_array(tmp_path: Path, capsys):
    """A seed-array task with a 3-minute limit and submitit's signal 120 s before it: submitit requeues the task
    from wherever the signal finds it (SystemExit in the training loop, maybe between two members' files); the
    requeued task resumes both members, as one array, after the same epoch. Waits for that resume, then
    cancels."""
    require_slurm()
    path = write_grid(tmp_path, "slurm-arrtimeout", ["we"], [0, 1], epochs=400)
    profile_path = ci_profile(tmp_path, "ci-timeout", timeout_min=3, signal_delay_s=120, max_num_timeout=2, array=2)
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--executor", "slurm", "--profile", str(profile_path),
                 "--runs-root", str(runs)]) == 0
    assert "in 1 job: 1 array (1 of 2 seeds)" in capsys.readouterr().out
    cells = resolve_cells(load_grid(path), runs)
    (job,) = {read_cell_file(c.run_dir)["submitted"][-1]["job_id"] for c in cells}
    log = cells[0].run_dir / "logs" / f"slurm-{job}.out"
    pattern = r"(\S+): resuming after epoch (\d+) of 400 \(seed array\)"
    resumed = lambda: dict(re.findall(pattern, log.read_text())) if log.exists() else {}
    try:
        wait_until(lambda: len(resumed()) == 2, "the array task was not requeued and resumed", 420)
    finally:
        subprocess.run(["scancel", job.split("_")[0]], timeout=30)
    epochs = resumed()
    assert set(epochs) == {str(c.run_dir) for c in cells} and len(set(epochs.values())) == 1, epochs
    assert int(next(iter(epochs.values()))) > 0
    for cell in cells:  # nothing trained twice: the rows run 1, 2, ... without a gap or a repeat
        rows = [r["epoch"] for r in read_metrics(cell.run_dir)]
        assert rows == list(range(1, len(rows) + 1)), rows


@pytest.mark.slurm
@pytest.mark.slow
def test_packed_arrays_share_a_task(tmp_path: Path, capsys):
    """pack: 2 with arrays: two configs of two seeds each go out as one task holding two seed arrays."""
    require_slurm()
    path = write_grid(tmp_path, "slurm-packarr", ["baseline", "we"], [0, 1])
    profile_path = ci_profile(tmp_path, "ci-pack", pack=2, array=2)
    runs = tmp_path / "runs"
    assert main(["submit", str(path), "--executor", "slurm", "--profile", str(profile_path),
                 "--runs-root", str(runs)]) == 0
    assert "in 2 jobs: 2 arrays (2 of 2 seeds)" in capsys.readouterr().out
    cells = resolve_cells(load_grid(path), runs)
    records = {c.key: read_cell_file(c.run_dir)["submitted"][-1] for c in cells}
    (job,) = {r["job_id"] for r in records.values()}  # one task for the two arrays
    b0, b1, w0, w1 = cells
    assert records[b0.key]["array_with"] == [b1.key] and records[b0.key]["packed_with"] == [w0.key, w1.key]
    states = settle(cells, runs, 300)
    assert [s.state for s in states] == ["done"] * 4, [(s.cell.key, s.state, s.note) for s in states]
    for cell in cells:
        assert read_result(cell.run_dir)["array"]["size"] == 2
        log = cell.run_dir / "logs" / f"slurm-{job}.cell.log"
        assert f"{cell.run_dir}: epoch 2/2" in log.read_text()
