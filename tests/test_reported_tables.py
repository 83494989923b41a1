"""Tables in the paper's layout, from tiny real runs relabelled as Table 1 cells; the figure of ours against
the paper plots the table's numbers; every file of a run folder, a grid and its tables is 0644 under umask 022."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from we.rundir import write_json
from we.grid import load_grid, resolve_cells, write_cell, write_grid_file
from we.report import collect
from we.report.reported_tables import draw_vs_reported, layout_markdown, reported_table
from we.train import main as train
from we.train.config import make_config, resolve

TINY_BASE = {"dataset": "digits", "model": "resnet20", "epochs": 1, "limit_train": 128, "batch_size": 32,
             "lr": 0.02, "workers": 0, "progress": "plain"}
# Trained cell (method, seed) -> the Table 1 cells it stands for: (dataset, model, seed label).
RELABEL = {
    ("baseline", 0): [("cifar10", "resnet56", 0), ("cifar10", "resnet56", 3), ("cifar100", "resnet56", 0)],
    ("baseline", 1): [("cifar10", "resnet56", 1), ("cifar10", "resnet56", 4)],
    ("baseline", 2): [("cifar10", "resnet56", 2), ("cifar10", "resnet110", 0)],
    ("we", 0): [("cifar10", "resnet56", 0), ("cifar100", "resnet56", 0)],
    ("we", 1): [("cifar10", "resnet56", 1), ("cifar10", "resnet110", 0)],
    ("fg1", 0): [("cifar10", "resnet56", 0), ("cifar100", "resnet56", 0)],
}
PAPER = {("cifar10", "resnet56", "baseline"): 93.52, ("cifar10", "resnet56", "fg1"): 93.14,
         ("cifar10", "resnet56", "we"): 93.85, ("cifar10", "resnet110", "baseline"): 93.72,
         ("cifar10", "resnet110", "we"): 94.31, ("cifar100", "resnet56", "baseline"): 71.78,
         ("cifar100", "resnet56", "fg1"): 71.00, ("cifar100", "resnet56", "we"): 72.46}
COLUMNS = [("cifar10", "resnet56"), ("cifar10", "resnet110"), ("cifar100", "resnet56")]
NAMES = {"baseline": "Baseline", "fg1": "FG-1", "we": "WE"}


@pytest.fixture(scope="module")
def table1(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A grid named table1 whose cells are tiny digits runs (1 epoch) relabelled as Table 1 cells,
    collected into tables and figures, all under umask 022."""
    tmp = tmp_path_factory.mktemp("table1")
    grid_file = tmp / "table1.yaml"
    grid_file.write_text(yaml.safe_dump({"name": "table1", "base": TINY_BASE,
                                         "axes": {"method": ["baseline", "we", "fg1"]}, "seeds": [0, 1, 2]}))
    runs_root, out_dir = tmp / "runs", tmp / "results"
    old = os.umask(0o022)
    try:
        grid = load_grid(grid_file)
        cells = [c for c in resolve_cells(grid, runs_root) if (c.labels["method"], c.labels["seed"]) in RELABEL]
        folders, expected = {}, {}
        for cell in cells:
            write_cell(cell)
            result = train(resolve(make_config(cell.config, source="test")))
            for dataset, model, seed in RELABEL[(cell.labels["method"], cell.labels["seed"])]:
                labels = {"dataset": dataset, "model": model, "method": cell.labels["method"], "seed": seed}
                key = f"{dataset}-{model}-{labels['method']}-s{seed}"
                folder = cell.run_dir.parent / f"{key}-{cell.config_hash}"
                shutil.copytree(cell.run_dir, folder)
                data = json.loads((folder / "cell.json").read_text())
                write_json(folder / "cell.json", {**data, "key": key, "labels": labels})
                folders[key] = folder.name
                expected.setdefault((dataset, model, labels["method"]), []).append(result["final_top1"])
        write_grid_file(grid, cells, runs_root)
        grid_json = runs_root / "table1" / "grid.json"
        write_json(grid_json, {**json.loads(grid_json.read_text()), "cells": folders})
        out = collect("table1", runs_root, out_dir, echo=False)
    finally:
        os.umask(old)
    return {"out": out, "expected": expected, "run": cells[0].run_dir, "grid_json": grid_json}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else float("nan")
    return mean, std


def _markdown_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]
    return split(lines[0]), {split(line)[0]: split(line)[1:] for line in lines[2:]}


def test_files_honour_the_umask(table1: dict):
    out = table1["out"]
    files = [table1["run"] / name for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "result.json",
                                               "last.pt", "cell.json")]
    files += [table1["grid_json"], out["markdown"], out["csv"], out["tex"], out["paper_markdown"], out["paper_tex"],
              *out["figures"]]
    modes = {str(f): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_markdown_in_the_papers_layout(table1: dict):
    header, rows = _markdown_rows(table1["out"]["paper_markdown"].read_text())
    assert header == ["Method", "CIFAR-10 ResNet-56", "paper", "Δ", "CIFAR-10 ResNet-110", "paper", "Δ",
                      "CIFAR-100 ResNet-56", "paper", "Δ"]
    assert list(rows) == ["Baseline", "FG-1", "WE"]  # the paper's names, in the paper's order
    expected = table1["expected"]
    for c, (dataset, model) in enumerate(COLUMNS):
        present = {m: _mean_std(v)[0] for (d, mo, m), v in expected.items() if (d, mo) == (dataset, model)}
        best = max(present.values())
        for method, name in NAMES.items():
            ours, paper, diff = rows[name][3 * c: 3 * c + 3]
            if method not in present:
                assert (ours, paper, diff) == ("–", "–", "–")
                continue
            values = expected[(dataset, model, method)]
            mean, std = _mean_std(values)
            text = f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"
            assert ours.startswith(f"**{text}**" if mean == best else text), (name, ours)
            assert ours.endswith(f"(n={len(values)})") == (len(values) < 5), (name, ours)
            p = PAPER[(dataset, model, method)]
            assert paper.strip("*") == f"{p:.2f}"
            assert diff == f"{mean - p:+.2f}".replace("-", "−")
    assert rows["WE"][1] == "**93.85**" and rows["Baseline"][4] == "93.72" and rows["WE"][4] == "**94.31**"
    assert "(n=" not in rows["Baseline"][0]  # five runs: as many as the paper's


def test_bold_marks_the_columns_best_only(table1: dict):
    """Tiny runs may tie (all at chance): one mean raised in the long table makes it the column's only best."""
    df = table1["out"]["table"].copy()
    df.attrs = dict(table1["out"]["table"].attrs)
    fg1 = df.index[(df.dataset == "cifar10") & (df.model == "resnet56") & (df.method == "fg1")][0]
    df.loc[fg1, "final_top1_mean"] = df.final_top1_mean.max() + 1.0
    _, rows = _markdown_rows(layout_markdown(reported_table(df, "table1")))
    best = f"{df.final_top1_mean.max():.2f}"
    assert rows["FG-1"][0] == f"**{best}** (n=1)"
    assert not rows["Baseline"][0].startswith("**") and not rows["WE"][0].startswith("**")


def test_latex_booktabs(table1: dict):
    tex = table1["out"]["paper_tex"].read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\midrule" in tex
    assert r"\multicolumn{6}{c}{CIFAR-10} & \multicolumn{3}{c}{CIFAR-100}" in tex
    assert r"\cmidrule(lr){2-7} \cmidrule(lr){8-10}" in tex
    body = tex.split(r"\midrule")[1].splitlines()[1:4]
    assert [line.split(" & ")[0] for line in body] == ["Baseline", "FG-1", "WE"]
    assert r"\textbf{93.85}" in tex and "$^{n=2}$" in tex


def test_figure_plots_the_tables_numbers(table1: dict):
    layout = table1["out"]["reported_table"]
    fig = draw_vs_reported(layout)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["CIFAR-10 ResNet-56", "CIFAR-10 ResNet-110", "CIFAR-100 ResNet-56"]
    expected = table1["expected"]
    for ax, (dataset, model) in zip(axes, COLUMNS):
        methods = [m for m in NAMES if (dataset, model, m) in expected]
        assert [t.get_text() for t in ax.get_xticklabels()] == [NAMES[m] for m in methods]
        bars = ax.containers[0]
        assert bars.get_label() == "ours (mean ± std)"
        assert list(bars.lines[0].get_ydata()) == pytest.approx([_mean_std(expected[(dataset, model, m)])[0]
                                                                 for m in methods])
        paper_line = next(line for line in ax.get_lines() if line.get_label() == "paper")
        assert list(paper_line.get_ydata()) == pytest.approx([PAPER[(dataset, model, m)] for m in methods])
    assert [p.name for p in table1["out"]["figures"] if "vs-paper" in p.name] == ["table1-vs-paper.png",
                                                                                 "table1-vs-paper.pdf"]
