"""The run folder's users against broken and hostile folders: the trainer (resume checks, stale temps, a full
disk, a broken best.pt), the grid's status and collect, the report's escaping and output paths, and the
worker. Each test fails when its guard is removed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from test_rundir import CASES, FullDisk, must_not_block, plant
from we import report, rundir
from we.errors import ConfigError
from we.grid.__main__ import main as grid_main
from we.grid.identity import resolve_cells
from we.grid.state import write_cell
from we.grid.schema import load_grid
from we.grid.worker import run_cell
from we.train import main
from we.train.cli import cli as train_cli
from we.train.config import load_config, make_config, resolve, to_dict

TINY = ["dataset=digits", "model=resnet20", "limit_train=64", "batch_size=32", "workers=0", "progress=plain"]


def tiny(out: Path, *extra: str):
    return load_config(None, TINY + [f"out={out}", *extra])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: (p.read_bytes() if p.is_file() else b"") for p in sorted(Path(folder).iterdir())}


def cut_after_epoch_1(out: Path, monkeypatch, *extra: str) -> None:
    """A run of 3 epochs that stops (as a crash) while writing epoch 2's last.pt: last.pt holds epoch 1."""
    save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:
            raise RuntimeError("stopped here")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="stopped here"):
        main(tiny(out, "epochs=3", *extra))
    monkeypatch.setattr(torch, "save", save)
    assert rundir.read_checkpoint(out / rundir.LAST_CHECKPOINT)["epoch"] == 1


# ---- resume checks the config stored in last.pt -----------------------------------------------------------------
@pytest.mark.parametrize("config_yaml", ["missing", "empty", "the new config"])
def test_resume_refuses_a_last_pt_of_another_config_whatever_config_yaml_says(tmp_path: Path, monkeypatch,
                                                                             config_yaml: str):
    cut_after_epoch_1(tmp_path, monkeypatch)
    (tmp_path / rundir.RESULT_FILE).unlink()  # as after a kill -9: last.pt is the only record left
    config = tmp_path / rundir.CONFIG_FILE
    if config_yaml == "missing":
        config.unlink()
    elif config_yaml == "empty":
        config.write_text("")
    else:
        rundir.write_config(tmp_path, to_dict(tiny(tmp_path, "epochs=3", "lr=0.05")))  # as the new run writes it
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as caught:
        main(tiny(tmp_path, "epochs=3", "lr=0.05"))
    line = str(caught.value)
    assert "\n" not in line and str(tmp_path / rundir.LAST_CHECKPOINT) in line and "first differing key 'lr'" in line
    assert snapshot(tmp_path) == before  # nothing written


def test_the_cli_says_the_config_mismatch_in_one_line_and_exits_2(tmp_path: Path, monkeypatch, capsys):
    cut_after_epoch_1(tmp_path, monkeypatch)
    (tmp_path / rundir.RESULT_FILE).unlink()
    (tmp_path / rundir.CONFIG_FILE).unlink()
    capsys.readouterr()
    assert train_cli([*TINY, f"out={tmp_path}", "epochs=3", "momentum=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "first differing key 'momentum'" in err[0] and "last.pt" in err[0], err


# ---- writes clean up after themselves --------------------------------------------------------------------------
def test_a_killed_writes_temp_file_is_removed_on_the_next_start(tmp_path: Path, monkeypatch, capsys):
    cut_after_epoch_1(tmp_path, monkeypatch)
    stale = tmp_path / ".last.pt.k9x2m1qz.tmp"
    shutil.copy(tmp_path / rundir.LAST_CHECKPOINT, stale)  # a whole checkpoint, as a kill -9 mid-rename leaves
    foreign = tmp_path / ".notes.txt.k9x2m1qz.tmp"
    foreign.write_text("someone else's")
    capsys.readouterr()
    assert main(tiny(tmp_path, "epochs=3"))["status"] == "complete"
    assert not stale.exists() and foreign.exists()
    assert f"{stale}: removed (a write that never finished)" in capsys.readouterr().out


def _full_disk_for(name: str, monkeypatch) -> None:
    """Writes of `name`'s temp files fail as on a full disk; every other write goes through."""
    opener = rundir.write._fdopen

    def fdopen(fd, mode):
        f = opener(fd, mode)
        return FullDisk(f) if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}.") else f

    monkeypatch.setattr(rundir.write, "_fdopen", fdopen)


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch, capsys):
    cut_after_epoch_1(tmp_path, monkeypatch)
    good = (tmp_path / rundir.LAST_CHECKPOINT).read_bytes()
    _full_disk_for(rundir.LAST_CHECKPOINT, monkeypatch)
    capsys.readouterr()
    assert train_cli([*TINY, f"out={tmp_path}", "epochs=3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ENOSPC" in err[0] and str(tmp_path / rundir.LAST_CHECKPOINT) in err[0], err
    assert (tmp_path / rundir.LAST_CHECKPOINT).read_bytes() == good
    assert not list(tmp_path.glob(".last.pt.*.tmp"))
    result = rundir.read_result(tmp_path)
    assert result["status"] == "failed" and "ENOSPC" in result["error"]
    monkeypatch.undo()
    assert main(tiny(tmp_path, "epochs=3"))["status"] == "complete"  # space again: it resumes from epoch 1


@pytest.mark.parametrize("kind", ["garbage", "link_to_dev_zero", "holds_no_epoch"])
def test_a_broken_best_pt_never_blocks_a_good_last_pt(tmp_path: Path, monkeypatch, capsys, kind: str):
    cut_after_epoch_1(tmp_path, monkeypatch)
    best = tmp_path / rundir.BEST_CHECKPOINT
    best.unlink()
    if kind == "garbage":
        best.write_bytes(b"PK\x03\x04 not a checkpoint")
    elif kind == "link_to_dev_zero":
        best.symlink_to("/dev/zero")
    else:
        torch.save({"model": {}}, best)
    planted = os.readlink(best) if best.is_symlink() else best.read_bytes()
    capsys.readouterr()
    with must_not_block(120):
        result = main(tiny(tmp_path, "epochs=3"))
    assert result["status"] == "complete" and result["epochs_done"] == 3
    aside = tmp_path / (rundir.BEST_CHECKPOINT + rundir.BROKEN_SUFFIX)
    assert (os.readlink(aside) if aside.is_symlink() else aside.read_bytes()) == planted
    assert f"set aside as {aside}" in capsys.readouterr().err
    rows = rundir.read_metrics(tmp_path)
    better = [r["epoch"] for r in rows[1:] if r["test_top1"] > rows[0]["test_top1"]]
    if better:  # the next better epoch writes a new best.pt, of the best epoch since
        assert rundir.read_checkpoint(best)["epoch"] == rundir.best_row(rows)["epoch"] == result["best_checkpoint_epoch"]
    else:
        assert not best.exists() and result["best_checkpoint_epoch"] is None


# ---- the grid: status and collect list every other cell ----------------------------------------------------------
GRID_CASES = [(n, k) for n, k in CASES if n in (rundir.RESULT_FILE, rundir.CELL_FILE)
              and k in ("non_utf8", "wrong_type", "truncated", "huge", "link_to_dev_zero", "fifo")]
GRID_CASES += [(rundir.METRICS_FILE, "non_utf8"), (rundir.METRICS_FILE, "fifo")]


@pytest.fixture(scope="module")
def trained_grid(tmp_path_factory) -> tuple[Path, Path]:
    """A grid of 2 one-epoch digits cells, trained once in this process (each test copies its runs root)."""
    tmp = tmp_path_factory.mktemp("grid")
    path = tmp / "hostile.yaml"
    base = {**{k: yaml.safe_load(v) for k, v in (a.split("=") for a in TINY)}, "epochs": 1, "limit_train": 32}
    path.write_text(yaml.safe_dump({"name": "hostile", "base": base, "axes": {"method": ["baseline"]},
                                    "seeds": [0, 1]}))
    for cell in resolve_cells(load_grid(path), tmp / "runs"):
        write_cell(cell)
        assert main(resolve(make_config(cell.config, source="test")))["status"] == "complete"
    return path, tmp / "runs"


@pytest.mark.parametrize("name,kind", GRID_CASES, ids=[f"{n}-{k}" for n, k in GRID_CASES])
def test_status_and_collect_name_the_bad_file_and_list_the_rest(trained_grid, tmp_path: Path, capsys,
                                                                 name: str, kind: str):
    grid_file, trained = trained_grid
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs, symlinks=True)
    cells = resolve_cells(load_grid(grid_file), runs)
    bad = cells[1].run_dir
    (bad / name).unlink()
    plant(bad / name, kind, tmp_path)
    capsys.readouterr()
    with must_not_block(120):
        grid_main(["status", str(grid_file), "--runs-root", str(runs)])
        status = capsys.readouterr().out
        assert grid_main(["collect", str(grid_file), "--runs-root", str(runs), "--out-dir", str(tmp_path / "t")]) == 0
    out = capsys.readouterr()
    if name == rundir.METRICS_FILE:  # result.json holds the summary: the cell is done, the figure skips its rows
        assert "done 2" in status
    else:
        assert "done 1" in status and "unreadable 1" in status
        (line,) = [ln for ln in status.splitlines() if "unreadable " in ln and cells[1].key in ln]
        assert str(bad / name) in line and f"(run {bad.name})" in line
    table = (tmp_path / "t" / "hostile.md").read_text()
    assert str(bad / name) in out.err + table or name == rundir.METRICS_FILE
    for cell in cells[:1] + cells[2:]:  # every other cell is still collected
        assert rundir.read_result(cell.run_dir)["status"] == "complete"
    (row,) = pd.read_csv(tmp_path / "t" / "hostile.csv").to_dict("records")  # the good cell is counted
    assert row["n"] == (1 if name == rundir.RESULT_FILE else 2) and row["n"] + row["n_unreadable"] == 2, row


# ---- the report: escaping and paths ------------------------------------------------------------------------------
HOSTILE_LABEL = r"\input{/etc/passwd}|$x$_%&#~^"


def test_a_hostile_label_is_text_in_every_format(tmp_path: Path):
    from test_report import labels, write_run

    root = tmp_path / "runs"
    for seed in range(2):
        write_run(root, "table2", f"b{seed}", labels("baseline", seed), final=91.0 + seed, best=91.5)
        write_run(root, "table2", f"h{seed}", labels(HOSTILE_LABEL, seed), final=92.0 + seed, best=92.5)
    out = report.collect("table2", root, tmp_path / "out", figures=False, echo=False)
    for key in ("tex", "paper_tex"):
        tex = out[key].read_text()
        assert r"\input{" not in tex and r"\textbackslash{}input\{/etc/passwd\}" in tex, key
        assert r"\$x\$\_\%\&\#\textasciitilde{}\textasciicircum{}" in tex
    for key in ("markdown", "paper_markdown"):
        md = out[key].read_text()
        (row,) = [ln for ln in md.splitlines() if "input" in ln and ln.startswith("|")]
        header = next(ln for ln in md.splitlines() if ln.startswith("|"))
        cells = lambda ln: len([c for c in ln.replace("\\|", "").split("|")])  # noqa: E731 - unescaped pipes
        assert cells(row) == cells(header), (key, row)


@pytest.mark.parametrize("grid", ["../elsewhere/table1", "/tmp/table1", "a/../../table1"])
def test_collect_never_writes_outside_out_dir(tmp_path: Path, capsys, grid: str):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "elsewhere" / "table1").mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert report.cli(["collect", grid, "--runs-root", str(tmp_path / "runs"), "--out-dir",
                       str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside" in err[0], err
    assert sorted(p for p in tmp_path.rglob("*") if p != tmp_path / "out") == before


# ---- the worker: a copied cell is refused ---------------------------------------------------------------------------
def test_worker_run_cell_refuses_a_cell_copied_from_another_folder(trained_grid, tmp_path: Path, capsys):
    grid_file, trained = trained_grid
    (cell,) = resolve_cells(load_grid(grid_file), trained)[:1]
    original = snapshot(cell.run_dir)
    copy = tmp_path / "copy"
    shutil.copytree(cell.run_dir, copy, symlinks=True)
    (copy / rundir.RESULT_FILE).unlink()  # a copy that would train again
    capsys.readouterr()
    assert run_cell(copy) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(copy / rundir.CELL_FILE) in err[0] and "not the folder it sits in" in err[0]
    assert snapshot(cell.run_dir) == original and not (copy / rundir.RESULT_FILE).exists()
    data = json.loads((copy / rundir.CELL_FILE).read_text())
    assert data["config"]["out"] == str(cell.run_dir)


def test_collect_never_writes_through_a_link_in_out_dir(tmp_path: Path, capsys):
    from test_report import labels, write_run

    write_run(tmp_path / "runs", "g", "r0", labels("baseline", 0), final=91.0, best=91.5)
    victim = tmp_path / "victim.md"
    victim.write_text("keep me\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "g.md").symlink_to(victim)  # a planted link where collect writes g.md
    assert report.cli(["collect", "g", "--runs-root", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"),
                       "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside" in err[0] and "g.md" in err[0], err
    assert victim.read_text() == "keep me\n"


# ---- trust: a grid may import code, from the paths the user gave only ---------------------------------------------
def test_a_grid_naming_user_code_never_imports_it_from_the_current_folder_implicitly(tmp_path: Path):
    (tmp_path / "nets.py").write_text("import pathlib\npathlib.Path('imported').touch()\n"
                                      "from models import create\n"
                                      "def build(num_classes):\n    return create('resnet20', num_classes=num_classes)\n")
    base = {**{k: yaml.safe_load(v) for k, v in (a.split("=") for a in TINY)}, "model": "nets:build", "epochs": 1}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"name": "mine", "base": base, "axes": {"method": ["baseline"]},
                                                         "seeds": [0]}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    plan = [sys.executable, "-m", "we.grid", "plan", "mine.yaml", "--runs-root", str(tmp_path / "runs")]
    run = subprocess.run(plan, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1 and "nets" in err[0] and "PYTHONPATH" in err[0], run.stderr
    assert not (tmp_path / "imported").exists()  # ./nets.py never ran
    run = subprocess.run(plan, cwd=tmp_path, env={**env, "PYTHONPATH": "."}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "imported").exists()  # the user said so: PYTHONPATH=.
