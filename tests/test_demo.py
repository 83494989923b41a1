"""`make demo` shows Weight Evolution at work: its grid's WE evolves conv filters and BN units after every epoch
but the last, the table says how many per kind, the figure tells the methods apart and marks WE's steps, and
the plan says how long the grid takes on the machine it runs on."""
from __future__ import annotations

import importlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from we import report
from we.grid.schema import load_grid
from we.grid.identity import resolve_cells
from we.grid.plan import plan
from we.grid.state import write_cell
from we.report import figures
from we.rundir import read_metrics
from we.train.config import make_config, resolve
from we.train.trainer import main as train_main

KINDS = ("conv_weight", "conv_bias", "bn_weight", "bn_bias")


def demo_cell(label: str, seed: int, tmp_path: Path, **sets: Any):
    cells = resolve_cells(load_grid("demo"), tmp_path / "runs", sets, {"workers": 0, "progress": "plain"})
    (cell,) = [c for c in cells if c.labels["method"] == label and c.labels["seed"] == seed]
    return cell


def write_run(root: Path, name: str, method: str, seed: int, tops: list[float],
              counts: dict[int, dict[str, int]] | None = None) -> None:
    """A complete run folder whose metrics rows carry WE's counts at the epochs of `counts`."""
    d = root / "demo" / name
    d.mkdir(parents=True)
    labels = {"dataset": "digits", "model": "resnet20", "method": method, "seed": seed}
    (d / "cell.json").write_text(json.dumps({"grid": "demo", "key": name, "labels": labels, "config": {}}))
    rows = [{"epoch": e, "lr": 0.05 if e <= 3 else 0.005, "test_top1": t,
             **{f"we_{k}": n for k, n in (counts or {}).get(e, {}).items()}} for e, t in enumerate(tops, start=1)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "result.json").write_text(json.dumps({"status": "complete", "final_top1": tops[-1], "best_top1": max(tops),
                                               "epochs_done": len(tops)}))


def steps(per_epoch: dict[str, int], epochs: int = 4) -> dict[int, dict[str, int]]:
    return {e: dict(per_epoch) for e in range(1, epochs + 1)}


@pytest.fixture
def demo_runs(tmp_path: Path) -> Path:
    """Baseline and two WE labels, two seeds each, over 5 epochs; WE steps after epochs 1-4."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root, f"base-s{seed}", "baseline", seed, [20 + 20 * seed, 60, 80, 88, 90 + seed])
        write_run(root, f"we-s{seed}", "we", seed, [21, 61, 81, 89, 91 - seed],
                  steps({"conv_weight": 0, "conv_bias": 0, "bn_weight": 0, "bn_bias": 17}))
        write_run(root, f"g-s{seed}", "we_gamma_0.9", seed, [19, 59, 79, 87, 89 + 2 * seed],
                  steps({"conv_weight": 10 + seed, "conv_bias": 0, "bn_weight": 4, "bn_bias": 17}))
    return root


def test_table_shows_wes_steps_and_units_evolved_per_kind(demo_runs: Path, tmp_path: Path) -> None:
    out = report.collect("demo", demo_runs, tmp_path / "out", figures=False, echo=False)
    table = out["table"].set_index("method")
    assert table.loc["we_gamma_0.9", "we_steps_mean"] == 4
    assert table.loc["we_gamma_0.9", "evolved_conv_weight_mean"] == 4 * 10.5  # summed over steps, mean of seeds
    assert table.loc["we_gamma_0.9", "evolved_bn_weight_mean"] == 16
    assert table.loc["we", "evolved_conv_weight_mean"] == 0 and table.loc["we", "evolved_bn_bias_mean"] == 68
    assert pd.isna(table.loc["baseline", "evolved_conv_weight_mean"])  # no WE: blank, not 0
    md = out["markdown"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| dataset"))
    assert header.endswith("| WE steps | conv filters evolved | BN weights evolved | BN biases evolved |")
    assert "conv biases" not in header  # none moved
    assert "| we_gamma_0.9 | 2* | 90.00 ± 1.41 |" in md and md.count("| 4.0 | 42.0 | 16.0 | 68.0 |") == 1
    assert "not whether it helped" in md
    csv = pd.read_csv(out["csv"]).set_index("method")
    assert csv.loc["we", "evolved_bn_bias_mean"] == 68


def test_table_without_we_has_no_evolution_columns(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "base-s0", "baseline", 0, [50, 60])
    md = report.collect("demo", root, tmp_path / "out", figures=False, echo=False)["markdown"].read_text()
    assert "evolved" not in md and "WE steps" not in md


def test_figure_tells_methods_apart_keeps_bands_inside_and_marks_we_steps(demo_runs: Path) -> None:
    fig = figures.draw_convergence("demo", report.load_runs(demo_runs / "demo"))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    curves = [line for line in ax.get_lines() if "(n=" in str(line.get_label())]
    assert [line.get_label() for line in curves] == ["baseline (n=2)", "we (n=2)", "we_gamma_0.9 (n=2)"]
    styles = {(line.get_linestyle(), line.get_marker()) for line in curves}
    assert len(styles) == 3 and all(marker not in ("None", "", None) for _, marker in styles)
    low, high = ax.get_ylim()
    assert low > 30 - 200 ** 0.5  # zoomed on the late stage: the baseline's first band (30 ± 14.1) reaches below
    bands = [p.get_paths()[0].vertices[:, 1] for p in ax.collections]
    assert len(bands) == 3 and all(low - 1e-9 <= y.min() and y.max() <= high + 1e-9 for y in bands)
    assert min(y.min() for y in bands) == pytest.approx(low)  # ... and is clipped at the axis
    assert max(y.max() for y in bands) == pytest.approx(89 + 1 + 2 ** 0.5)  # the top band edge is drawn whole
    marks = [line for line in ax.get_lines() if line.get_gid() == "we-step"]
    assert sorted(line.get_xdata()[0] for line in marks) == [1, 2, 3, 4]  # no step after the last epoch
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[-2:] == ["lr decay", "WE step"]


def test_figure_without_we_marks_no_step(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "base-s0", "baseline", 0, [50, 60, 70])
    fig = figures.draw_convergence("demo", report.load_runs(root / "demo"))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert not [line for line in ax.get_lines() if line.get_gid() == "we-step"]


def test_plan_gives_the_wall_time_on_the_local_cpu_and_on_slurm(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(importlib.import_module("we.grid.plan"), "local_gpu_count", lambda: 0)  # a CPU machine
    grid = load_grid("demo")
    cells = resolve_cells(grid, tmp_path / "runs")
    local, slurm = io.StringIO(), io.StringIO()
    plan(grid, cells, tmp_path / "runs", out=local)
    plan(grid, cells, tmp_path / "runs", out=slurm, executor="slurm")
    line = local.getvalue().splitlines()[-1]
    assert line.startswith("wall time on the local executor (this machine's CPU, one job at a time): about ")
    assert "results/bench/cpu.json (2 cores" in line
    minutes = float(re.search(r"about ([0-9.]+) min", line).group(1))
    assert 1 < minutes <= 5  # `make demo` fits in 5 minutes of an idle 2-core CPU
    assert slurm.getvalue().splitlines()[-1].startswith("wall time on SLURM: the longest job about ")


def test_demo_grid_we_evolves_conv_filters_and_bn_units_after_every_epoch(tmp_path: Path) -> None:
    """The demo's WE cell as the grid resolves it, on the first 256 training images (the grid's 5 epochs)."""
    cell = demo_cell("we_gamma_0.9", 0, tmp_path, limit_train=256)
    assert cell.config["we_gamma"] == 0.9 and cell.config["epochs"] == 5
    write_cell(cell)  # as the executors do: the table reads the cell's labels from it
    result = train_main(resolve(make_config(cell.config)))
    assert result["status"] == "complete"
    rows = read_metrics(cell.run_dir)
    assert len(rows) == 5
    for row in rows[:-1]:  # a step after every epoch but the last: conv filters and BN units evolve in each ...
        assert row["we_conv_weight"] > 0 and row["we_bn_weight"] + row["we_bn_bias"] > 0, row
    assert not any(k.startswith("we_") for k in rows[-1])  # ... and none after it
    assert sum(r["we_bn_weight"] for r in rows[:-1]) > 0  # BN weights too, once training has spread them
    out = report.collect("demo", tmp_path / "runs", tmp_path / "out", echo=False)
    row = out["table"].set_index("method").loc["we_gamma_0.9"]
    assert row["we_steps_mean"] == len(rows) - 1
    for kind in KINDS:
        assert row[f"evolved_{kind}_mean"] == sum(r[f"we_{kind}"] for r in rows[:-1])
    assert any(p.name == "fig5-convergence-demo.png" for p in out["figures"])
