"""Grids: expansion against the paper's tables, run identity, states, idempotent and locked submission."""
import csv
import json
import multiprocessing
import os
import re
import socket
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from we.errors import InputError
from we.grid.cli import main, submit
from we.grid.cost import DEFAULT_SOURCE
from we.grid.identity import Cell, config_hash, expand, parse_sets, resolve_cells
from we.grid.local import process_start_ticks
from we.grid.profiles import load_profile
from we.grid.schema import load_grid
from we.grid.slurm import SlurmExecutor, pack_cells
from we.grid.state import assess, write_cell
from we.methods import METHODS
from we.train.config import Config, to_dict

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "results" / "paper" / "reported-results.csv"
TABLES = [1, 2, 3, 4, 5, 6, 7, 8]
TINY_BASE = {"dataset": "digits", "model": "resnet20", "epochs": 1, "limit_train": 64, "batch_size": 32,
             "workers": 0, "progress": "plain"}


def paper_rows() -> dict[int, set[tuple[str, str, str]]]:
    rows: dict[int, set[tuple[str, str, str]]] = defaultdict(set)
    with open(PAPER) as f:
        for r in csv.DictReader(f):
            rows[int(r["table"])].add((r["dataset"], r["model"], r["method"]))
    return rows


def write_grid(tmp_path: Path, name: str = "tiny", **fields) -> Path:
    data = {"name": name, "base": dict(TINY_BASE), "axes": {"method": ["baseline", "we"]}, "seeds": [0, 1]}
    data.update(fields)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class RecordingExecutor:
    """Stands in for the local executor: records look like a live local job (this test process)."""

    name = "local"

    def __init__(self, delay_s: float = 0.0, pid: int | None = None):
        self.delay_s, self.pid, self.calls = delay_s, pid or os.getpid(), []

    def submit(self, cells, grid_dir, jobs=None):
        time.sleep(self.delay_s)
        self.calls.append([c.key for c in cells])
        return [{"job_id": f"local-{self.pid}-{i}", "executor": "local", "time": "2026-01-01T00:00:00+00:00",
                 "host": socket.gethostname(), "pid": self.pid, "pid_start": process_start_ticks(self.pid),
                 "log": str(Path(c.run_dir) / "logs" / "x.log")} for i, c in enumerate(cells)]


def finish(cell: Cell, status: str = "complete", **extra) -> None:
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    (cell.run_dir / "result.json").write_text(json.dumps({"status": status, "final_top1": 50.0, **extra}))
    (cell.run_dir / "config.yaml").write_text(yaml.safe_dump(cell.config))


# ---- expansion matches the paper ----------------------------------------------------------------

@pytest.mark.parametrize("variant", ["", "-official"])
@pytest.mark.parametrize("table", TABLES)
def test_table_cells_match_reported_results(table: int, variant: str):
    grid = load_grid(f"table{table}{variant}")
    specs = expand(grid)
    got = {(s.labels["dataset"], s.labels["model"], s.labels["method"]) for s in specs}
    want = paper_rows()[table]
    if variant and table in (5, 6, 7):  # plus the ablations' reference: the paper's full WE under that recipe
        want = want | {(d, m, "we_paper_step") for d, m, _ in want}
    assert got == want
    assert len(specs) == len(want) * 5
    assert sorted({s.labels["seed"] for s in specs}) == [0, 1, 2, 3, 4]


def test_table1_has_exactly_the_papers_gaps():
    labels = {(s.labels["dataset"], s.labels["model"], s.labels["method"]) for s in expand(load_grid("table1"))}
    assert ("cifar10", "resnet56", "repr") not in labels and ("cifar100", "resnet56", "repr") not in labels
    assert ("cifar10", "densenet40", "rl") not in labels
    assert not any(d == "cifar100" and m == "rl" for d, _, m in labels)
    assert ("cifar10", "resnet56", "rl") in labels and len(labels) == 36


def test_figure_and_demo_grids():
    assert expand(load_grid("figure3")) == []  # plot-only
    assert len(expand(load_grid("figure2"))) == 1
    fig6 = expand(load_grid("figure6"))
    assert len(fig6) == 2 * 13 * 5
    assert {s.values["we_alpha"] for s in fig6 if s.labels["method"].startswith("we_alpha_")} == \
        {i / 10 for i in range(11)}
    fig5 = {(s.labels["dataset"], s.labels["model"], s.labels["method"]) for s in expand(load_grid("figure5"))}
    assert fig5 == paper_rows()[2]
    demo = expand(load_grid("demo"))
    assert sorted({s.labels["method"] for s in demo}) == ["baseline", "we", "we_gamma_0.9", "we_official"]
    assert len(demo) == 8 and {s.values["we_gamma"] for s in demo if s.labels["method"] == "we_gamma_0.9"} == {0.9}


def test_proxy_grid(tmp_path: Path):
    specs = expand(load_grid("proxy"))
    assert len(specs) == 15
    assert sorted({s.labels["method"] for s in specs}) == ["baseline", "we", "we_official"]
    assert sorted({s.values["seed"] for s in specs}) == [0, 1, 2, 3, 4]
    cells = resolve_cells(load_grid("proxy"), tmp_path)
    for c in cells:  # one schedule for the three methods, on Fashion-MNIST
        assert (c.config["dataset"], c.config["model"], c.config["epochs"]) == ("fashion_mnist", "resnet20", 30)
        assert (c.config["schedule"], c.config["lr_milestones"], c.config["lr"]) == ("multistep", [15, 25], 0.1)
    official = {c.config["we_variant"] for c in cells if c.labels["method"] == "we_official"}
    assert official == {"official"}
    assert len({c.config_hash for c in cells}) == 15
    # the GPU check's scaled-down form: --set epochs and milestones change every cell's identity
    small = resolve_cells(load_grid("proxy"), tmp_path, parse_sets(["epochs=2", "lr_milestones=[1]"]))
    assert {c.config["epochs"] for c in small} == {2} and not {c.config_hash for c in small} & {c.config_hash for c in cells}


def test_every_grid_resolves(tmp_path: Path):
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        grid = load_grid(path)
        cells = resolve_cells(grid, tmp_path)
        assert len(cells) == len(expand(grid)), path
        assert not (tmp_path / grid.name).exists()  # resolving writes nothing


def test_method_presets_set_the_ablation_switches(tmp_path: Path):
    cells = {c.labels["method"]: c.config for c in resolve_cells(load_grid("table8"), tmp_path)}
    assert cells["we_without_bn"]["we_bn"] is False and cells["we_without_bn"]["we_conv"] is True
    assert cells["we_without_conv"]["we_conv"] is False and cells["baseline"]["method"] == "baseline"
    t5 = {c.labels["method"]: c.config for c in resolve_cells(load_grid("table5"), tmp_path)}
    assert t5["we_global_only"]["we_selection"] == "global" and t5["we_local_only"]["we_selection"] == "local"
    t2 = {(c.labels["method"]): c.config for c in resolve_cells(load_grid("table2"), tmp_path)}
    assert t2["fg4"]["method"] == "fg" and t2["fg4"]["fg_n"] == 4
    t4 = resolve_cells(load_grid("table4"), tmp_path)
    assert {c.config["image_size"] for c in t4} == {128} and {c.config["model"] for c in t4} == {"mobilenetv2_050"}
    official = {c.labels["method"]: c.config for c in resolve_cells(load_grid("table6-official"), tmp_path)}
    assert official["we"]["we_variant"] == "official" and official["we"]["recipe"] == "official"
    assert official["we_reverse_matching"]["we_variant"] == "paper"


def test_unimplemented_method_fails_with_one_line(tmp_path: Path):
    path = write_grid(tmp_path, axes={"method": ["baseline", {"label": "nsx", "overrides": {"method": "nosuch"}}]})
    with pytest.raises(InputError) as err:
        resolve_cells(load_grid(path), tmp_path)
    msg = str(err.value)
    assert "method 'nsx'" in msg and "is not implemented yet" in msg and "tiny.yaml" in msg and "\n" not in msg
    assert "cell digits-resnet20-nsx-s0" in msg


# ---- run identity -------------------------------------------------------------------------------

def test_run_folder_is_key_plus_config_hash(tmp_path: Path):
    grid = load_grid(write_grid(tmp_path))
    a = resolve_cells(grid, tmp_path / "runs")
    b = resolve_cells(grid, tmp_path / "runs")
    assert [c.run_dir for c in a] == [c.run_dir for c in b]
    assert a[0].run_dir.parent == (tmp_path / "runs" / "tiny").absolute()
    assert a[0].run_dir.name == f"digits-resnet20-baseline-s0-{a[0].config_hash}"
    assert a[0].config["out"] == str(a[0].run_dir)
    assert len({c.run_dir for c in a}) == 4
    # a result-neutral key keeps the folder; a key that changes results gives a new one
    neutral = resolve_cells(grid, tmp_path / "runs", parse_sets(["device=cpu", "workers=3", "data_dir=/x"]))
    assert [c.run_dir for c in neutral] == [c.run_dir for c in a]
    changed = resolve_cells(grid, tmp_path / "runs", parse_sets(["epochs=2"]))
    assert not {c.run_dir for c in changed} & {c.run_dir for c in a}
    base_changed = resolve_cells(load_grid(write_grid(tmp_path, base={**TINY_BASE, "lr": 0.05})), tmp_path / "runs")
    assert not {c.run_dir for c in base_changed} & {c.run_dir for c in a}


# where and how a run executes, not what it computes (written out here, not read from the code)
WHERE_AND_HOW = {"out", "device", "data_dir", "download", "workers", "progress", "dist_backend", "loggers", "recipe"}


def test_hash_ignores_only_where_and_how_a_run_executes():
    cfg = {**to_dict(Config()), "method": "we", "epochs": 3}
    others = {k for m, plugin in METHODS.items() if m != "we" for k in plugin.keys}  # keys the run does not use
    for key in cfg:
        changed = config_hash({**cfg, key: "another value"}) != config_hash(cfg)
        assert changed == (key not in WHERE_AND_HOW | others), key


def test_keys_of_other_methods_do_not_split_runs(tmp_path: Path):
    paper = {c.key: c for c in resolve_cells(load_grid("table3"), tmp_path)}
    official = {c.key: c for c in resolve_cells(load_grid("table3-official"), tmp_path)}
    assert official["imagenet-resnet34-baseline-s0"].config["we_variant"] == "official"
    for key in ("imagenet-resnet34-baseline-s0", "imagenet-resnet34-fg1-s0", "imagenet-resnet34-oni-s2"):
        assert paper[key].config_hash == official[key].config_hash  # one run serves both readings
    assert paper["imagenet-resnet34-we-s0"].config_hash != official["imagenet-resnet34-we-s0"].config_hash


def test_a_new_config_key_at_its_default_keeps_every_folder():
    cfg = {**to_dict(Config()), "method": "we", "epochs": 3, "lr": 0.05}
    older = {k: v for k, v in cfg.items() if k != "we_level"}  # as written before `we_level` existed
    assert config_hash(older) == config_hash(cfg)
    assert config_hash({**cfg, "we_level": "filter"}) != config_hash(cfg)


# ---- states -------------------------------------------------------------------------------------

def test_state_detection(tmp_path: Path):
    grid = load_grid(write_grid(tmp_path, axes={"method": ["baseline", "we", "we_global_only"]},
                                seeds=[0, 1]))
    cells = resolve_cells(grid, tmp_path / "runs")
    done, diverged, failed_result, dead_job, live_job, todo = cells
    finish(done)
    finish(diverged, "diverged", diverged_epoch=1)
    finish(failed_result, "failed", error="RuntimeError: boom")
    ex = RecordingExecutor()
    write_cell(live_job, record=ex.submit([live_job], None)[0])
    dead = RecordingExecutor(pid=2 ** 22 + 7).submit([dead_job], None)[0]  # no such process
    write_cell(dead_job, record=dead)
    states = {s.cell.key: s.state for s in assess(cells, tmp_path / "runs")}
    assert [states[c.key] for c in cells] == ["done", "diverged", "failed", "failed", "queued", "todo"]
    # the runner records a cell's start: from then on it runs
    write_cell(live_job, record={**ex.submit([live_job], None)[0], "started": "2026-01-01T00:00:01+00:00"})
    assert assess([live_job], tmp_path / "runs")[0].state == "running"
    # a job record that ended while the result says complete is done
    write_cell(done, record=dead)
    assert assess([done], tmp_path / "runs")[0].state == "done"
    # an exit recorded by the local runner ends the job even while its runner lives
    rec = ex.submit([live_job], None)[0]
    rec["exit_code"] = 1
    write_cell(live_job, record=rec)
    assert assess([live_job], tmp_path / "runs")[0].state == "failed"


NO_CONTROLLER = "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1"


@pytest.mark.parametrize("sacct, squeue, state, note", [
    ("echo 'sacct: error: Problem talking to the database' >&2; exit 1", NO_CONTROLLER, "unknown",
     "cannot query slurm 4242_0"),
    ("printf 'JobID|State\\n4242_0|RUNNING\\n'", NO_CONTROLLER, "running", "slurm 4242_0"),
    ("printf 'JobID|State\\n4242_0|PENDING\\n'", NO_CONTROLLER, "queued", "slurm 4242_0 (PENDING)"),
    ("printf 'JobID|State|Reason\\n4242_0|PENDING|Priority\\n'", NO_CONTROLLER, "queued",
     "slurm 4242_0 (PENDING: Priority)"),
    ("printf 'JobID|State\\n4242_0|TIMEOUT\\n'", NO_CONTROLLER, "failed", "slurm 4242_0 ended"),
    ("printf 'JobID|State\\n4242_0|CANCELLED by 1000\\n'", NO_CONTROLLER, "todo",
     "slurm 4242_0 cancelled (CANCELLED by 1000) before it started; submit starts it"),
    # accounting lags the controller: a task that started is still PENDING (or absent) in sacct
    ("printf 'JobID|State|Reason\\n4242_0|PENDING|None\\n'", "echo '4242_0|RUNNING|None'", "running",
     "slurm 4242_0"),
    ("printf 'JobID|State\\n'", "echo '4242_1|RUNNING|None'; echo '4242_0|PENDING|JobArrayTaskLimit'", "queued",
     "slurm 4242_0 (PENDING: JobArrayTaskLimit)"),
    # once accounting says a job ended, it is first (the controller says COMPLETING while its processes exit)
    ("printf 'JobID|State\\n4242_0|CANCELLED by 1000\\n'", "echo '4242_0|COMPLETING|None'", "todo",
     "slurm 4242_0 cancelled (CANCELLED by 1000) before it started; submit starts it"),
])
def test_slurm_job_state_from_accounting(tmp_path: Path, monkeypatch, sacct: str, squeue: str, state: str,
                                         note: str):
    """A submitted cell without a result: its state is whatever sacct (a stand-in on PATH) says, unless
    sacct still has it queued while the controller (a squeue stand-in) says otherwise; unknown when
    accounting does not answer; a cancelled job that never trained stays todo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("sacct", sacct), ("squeue", squeue)):
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    grid = load_grid(write_grid(tmp_path, axes={"method": ["baseline"]}, seeds=[0]))
    (cell,) = resolve_cells(grid, tmp_path / "runs")
    write_cell(cell, record={"job_id": "4242_0", "executor": "slurm", "time": "2026-01-01T00:00:00+00:00"})
    (st,) = assess([cell], tmp_path / "runs")
    assert (st.state, st.note) == (state, note)


def test_a_folder_holding_another_config_is_stale(tmp_path: Path):
    grid = load_grid(write_grid(tmp_path, axes={"method": ["baseline"]}, seeds=[0]))
    (cell,) = resolve_cells(grid, tmp_path / "runs")
    finish(cell)
    write_cell(Cell(cell.grid, cell.key, cell.labels, {**cell.config, "lr": 0.5}, cell.config_hash, cell.run_dir))
    state = assess([cell], tmp_path / "runs")[0]
    assert state.state == "stale" and "lr" in state.note
    assert submit(grid, [cell], RecordingExecutor(), tmp_path / "runs").submitted == []


def test_submit_is_idempotent(tmp_path: Path, capsys):
    grid = load_grid(write_grid(tmp_path))
    runs = tmp_path / "runs"
    cells = resolve_cells(grid, runs)
    ex = RecordingExecutor()
    first = submit(grid, cells, ex, runs)
    assert len(first.submitted) == 4
    for cell in cells:
        data = json.loads((cell.run_dir / "cell.json").read_text())
        assert data["grid"] == "tiny" and data["key"] == cell.key and data["config"] == cell.config
        assert data["labels"] == {"dataset": "digits", "model": "resnet20", "method": cell.labels["method"],
                                  "seed": cell.labels["seed"]}
        assert [r["executor"] for r in data["submitted"]] == ["local"]
    assert json.loads((runs / "tiny" / "grid.json").read_text())["cells"] == {c.key: c.run_dir.name for c in cells}
    second = submit(grid, cells, ex, runs)  # all running: nothing to do
    assert second.submitted == [] and ex.calls[-1:] == [[c.key for c in cells]]
    finish(cells[0])
    finish(cells[1], "failed", error="x")
    for cell in cells[1:]:
        rec = json.loads((cell.run_dir / "cell.json").read_text())
        rec["submitted"][-1]["exit_code"] = 1
        (cell.run_dir / "cell.json").write_text(json.dumps(rec))
    third = submit(grid, cells, ex, runs)  # the complete cell stays; the failed ones go again
    assert sorted(c.key for c, _ in third.submitted) == sorted(c.key for c in cells[1:])
    assert len(json.loads((cells[0].run_dir / "cell.json").read_text())["submitted"]) == 1
    assert "submitted 3 cells" in capsys.readouterr().out


def _submit_in_child(grid_path: str, runs: str, queue) -> None:
    grid = load_grid(grid_path)
    cells = resolve_cells(grid, Path(runs))
    report = submit(grid, cells, RecordingExecutor(delay_s=1.0, pid=os.getppid()), Path(runs))
    queue.put(len(report.submitted))


def test_lock_prevents_double_submission(tmp_path: Path):
    path = write_grid(tmp_path)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_submit_in_child, args=(str(path), str(tmp_path / "runs"), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    counts = sorted(queue.get(timeout=5) for _ in procs)
    assert counts == [0, 4]
    for cell in resolve_cells(load_grid(path), tmp_path / "runs"):
        assert len(json.loads((cell.run_dir / "cell.json").read_text())["submitted"]) == 1


def test_a_finished_twin_in_another_grid_is_reused(tmp_path: Path):
    runs = tmp_path / "runs"
    first = load_grid(write_grid(tmp_path, "first"))
    a = resolve_cells(first, runs)
    finish(a[0])
    (a[0].run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    second = load_grid(write_grid(tmp_path, "second", axes={"method": ["baseline"]}, seeds=[0]))
    b = resolve_cells(second, runs)
    assert b[0].config_hash == a[0].config_hash and b[0].run_dir != a[0].run_dir
    state = assess(b, runs)[0]
    assert state.state == "done" and state.reuse_from == a[0].run_dir
    assert assess(b, runs, reuse=False)[0].state == "todo"
    report = submit(second, b, RecordingExecutor(), runs)
    assert report.submitted == [] and len(report.reused) == 1
    assert (b[0].run_dir / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    cell = json.loads((b[0].run_dir / "cell.json").read_text())
    assert cell["grid"] == "second" and cell["reused_from"] == str(a[0].run_dir)
    assert assess(b, runs)[0].state == "done"


def test_authors_step_refuses_switches_it_lacks(tmp_path: Path):
    path = write_grid(tmp_path, base={**TINY_BASE, "we_variant": "official"},
                      axes={"method": ["baseline", "we_global_only"]})
    with pytest.raises(InputError, match=r"axes\.method\[1\]: we_selection='global' has no effect"):
        resolve_cells(load_grid(path), tmp_path)


# ---- plan / CLI ---------------------------------------------------------------------------------

def test_plan_prints_a_summary_with_its_sources(tmp_path: Path, capsys, monkeypatch):
    bench = tmp_path / "results" / "bench"
    monkeypatch.setattr("we.grid.cost.BENCH_DIR", bench)
    path = write_grid(tmp_path, base={**TINY_BASE, "limit_train": 0, "epochs": 10},
                      axes={"method": ["baseline", "we", "fg2"]}, seeds=[0, 1])
    assert main(["plan", str(path), "--runs-root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "todo 6" in out and DEFAULT_SOURCE in out
    assert "digits-resnet20-we-s1" not in out and "--cells lists every cell" in out  # a summary
    assert re.search(r"^fg2 +2 +2 +2 +[0-9.e-]+ +FGMethod\.cost", out, re.M), out  # FG-2 trains 2 networks
    assert re.search(r"^baseline +2 +2 +1 ", out, re.M), out
    assert not (tmp_path / "runs").exists()
    assert main(["plan", str(path), "--runs-root", str(tmp_path / "runs"), "--cells"]) == 0
    assert "digits-resnet20-we-s1" in capsys.readouterr().out
    # a CPU bench says nothing about GPU-hours ...
    bench.mkdir(parents=True)
    (bench / "cpu.json").write_text(json.dumps({"rows": [{"model": "resnet20", "train_img_s": 5.0}]}))
    assert main(["plan", str(path), "--runs-root", str(tmp_path / "runs")]) == 0
    assert DEFAULT_SOURCE in capsys.readouterr().out
    # ... a GPU bench measurement replaces the default throughput
    (bench / "b.json").write_text(json.dumps({"results": [{"model": "resnet20", "dataset": "digits",
                                                           "method": "baseline", "images_per_s": 1437.0}]}))
    assert main(["plan", str(path), "--runs-root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "results/bench/b.json" in out and DEFAULT_SOURCE not in out
    # 10 epochs x 1437 images at 1437 images/s = 10 s per cell; 4 cells x 1 + 2 FG-2 cells x 2
    assert "estimate: 0.0222 GPU-hours to run" in out


def test_status_lists_failed_cells_with_log_lines(tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    grid = load_grid(write_grid(tmp_path, axes={"method": ["baseline"]}, seeds=[0]))
    (cell,) = resolve_cells(grid, runs)
    rec = RecordingExecutor().submit([cell], None)[0]
    rec["exit_code"] = 1
    write_cell(cell, record=rec)
    finish(cell, "failed", error="RuntimeError: out of memory")
    (cell.run_dir / "logs").mkdir()
    Path(rec["log"]).write_text("line 1\nTraceback\nRuntimeError: out of memory\n")
    assert main(["status", str(tmp_path / "tiny.yaml"), "--runs-root", str(runs)]) == 1
    out = capsys.readouterr().out
    assert "failed 1" in out and "RuntimeError: out of memory" in out and "[x.log] Traceback" in out


def test_slurm_profile_shapes_the_sbatch_request(tmp_path: Path):
    profile = load_profile(REPO / "slurm" / "default.yaml").with_resources(load_grid("table3").resources)
    params = SlurmExecutor(profile).sbatch_parameters("we-table3")
    assert params["gpus_per_node"] == 2 and params["ntasks_per_node"] == 2 and params["cpus_per_task"] == 8
    assert params["mem"] == "65536M"
    assert params["time"] == 720 and params["array_parallelism"] == 32 and params["partition"] == "gpu"
    assert "account" not in params and params["setup"][0].startswith("export PYTHONPATH=")
    ci = SlurmExecutor(load_profile(REPO / "slurm" / "ci.yaml")).sbatch_parameters("x")
    assert "gpus_per_node" not in ci and "mem" not in ci and ci["partition"] == "debug"


def test_pack_groups_cifar_cells_and_leaves_imagenet_alone():
    from types import SimpleNamespace


    def cell(key, dataset):
        return SimpleNamespace(key=key, config={"dataset": dataset}, run_dir=Path(key))

    cells = [cell("c0", "cifar10"), cell("i0", "imagenet"), cell("c1", "cifar100"), cell("c2", "digits"),
             cell("i1", "imagenet"), cell("c3", "cifar10"), cell("c4", "cifar10")]
    jobs = [[c] for c in cells]  # one cell per job (no seed arrays)
    keys = lambda tasks: [[c.key for job in t for c in job] for t in tasks]  # noqa: E731
    assert keys(pack_cells(jobs, 1)) == [[c.key] for c in cells]  # pack 1: one cell per task, as before
    for k in (2, 3, 4, 10):
        tasks = pack_cells(jobs, k)
        assert all(1 <= len(t) <= k for t in tasks)
        assert sorted(c.key for t in tasks for job in t for c in job) == sorted(c.key for c in cells)  # each once
        assert all(t == [[c]] for t in tasks for job in t for c in job if c.config["dataset"] == "imagenet")
    assert keys(pack_cells(jobs, 2)) == [["i0"], ["c0", "c1"], ["i1"], ["c2", "c3"], ["c4"]]
    assert keys(pack_cells(jobs, 3)) == [["i0"], ["c0", "c1", "c2"], ["i1"], ["c3", "c4"]]
    assert keys(pack_cells(jobs, 4, tasks_per_node=2)) == [[c.key] for c in cells]  # DDP jobs: unpacked
    arrays = [[cells[0], cells[2]], [cells[1]], [cells[3], cells[5], cells[6]]]  # two seed arrays and ImageNet
    assert [[[c.key for c in job] for job in t] for t in pack_cells(arrays, 2)] == [[["i0"]], [["c0", "c1"], ["c2", "c3", "c4"]]]
    assert load_profile(REPO / "slurm" / "default.yaml").pack == 1
    assert load_profile(REPO / "slurm" / "ci.yaml").pack == 1  # optional key, default 1


def test_set_works_before_and_after_the_grid_name(tmp_path: Path, capsys):
    path, runs = write_grid(tmp_path), str(tmp_path / "runs")

    def folders(args):
        assert main(args) == 0
        return sorted(re.findall(r"digits-resnet20-\S+-s\d-[0-9a-f]{10}", capsys.readouterr().out))

    plain = folders(["plan", str(path), "--runs-root", runs, "--cells"])
    before = folders(["plan", "--set", "epochs=3", "lr=0.05", str(path), "--runs-root", runs, "--cells"])
    after = folders(["plan", str(path), "--cells", "--set", "epochs=3", "--set=lr=0.05", "--runs-root", runs])
    middle = folders(["plan", "--runs-root", runs, "--set", "lr=0.05", "--cells", str(path), "--set", "epochs=3"])
    assert len(plain) == 4 and before == after == middle and set(before).isdisjoint(plain)
    cells = resolve_cells(load_grid(path), Path(runs), parse_sets(["epochs=3", "lr=0.05"]))
    assert before == sorted(c.run_dir.name for c in cells)


def test_runs_root_rule_is_the_same_from_any_directory(tmp_path: Path, monkeypatch):
    from we.grid.identity import DEFAULT_RUNS_ROOT, runs_root

    monkeypatch.delenv("WE_RUNS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert runs_root(None) == (REPO / "results" / "runs", runs_root(None)[1]) and DEFAULT_RUNS_ROOT.is_absolute()
    monkeypatch.setenv("WE_RUNS_ROOT", "shared/runs")
    assert runs_root(None) == (tmp_path / "shared" / "runs", "$WE_RUNS_ROOT")
    assert runs_root("mine") == (tmp_path / "mine", "--runs-root")  # the option wins
