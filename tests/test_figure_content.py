"""What Figures 2 and 6 plot, read back from the matplotlib Axes (not the file's size or title), against
values worked by hand from Eq. 1 and from the runs' final top-1."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_report import labels, write_run
from we.report import figures
from we.report.runs import load_runs
from we.rundir import write_checkpoint


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures a figure function saves, kept open instead of written."""
    kept: list = []
    monkeypatch.setattr(figures, "_save", lambda fig, out_dir, stem, title: kept.append(fig) or [])
    return kept


def test_figure2_bars_are_the_mean_average_l1_norm_of_each_conv_layer(tmp_path: Path, drawn):
    run = write_run(tmp_path / "runs", "g", "r0", labels("baseline", 0, model="resnet20"), final=90.0, best=90.0)
    state = {
        "conv1.weight": torch.tensor([[[[1.0]]], [[[-3.0]]]]),  # 2 filters, 1 input: scores 1, 3 -> mean 2
        "bn1.weight": torch.ones(2),  # not a conv weight
        "layer.conv.weight": torch.full((1, 2, 1, 2), -0.5),  # 1 filter, 2 inputs: sum|w| 2 / 2 = 1
        "fc.weight": torch.ones(3, 2),  # a Linear weight: not drawn
    }
    write_checkpoint(run / "last.pt", {"model": state, "epoch": 6})
    figures.figure_l1_norms(tmp_path / "runs", tmp_path / "out", dataset="cifar10", model="resnet20")
    (fig,) = drawn
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([2.0, 1.0])
    assert [p.get_x() + p.get_width() / 2 for p in ax.patches] == pytest.approx([1.0, 2.0])
    assert f"trained: {run}" in ax.get_title()


def test_figure6_plots_fixed_alpha_against_adaptive_and_baseline(tmp_path: Path, drawn):
    root = tmp_path / "runs"
    finals = {"we_alpha_0.8": [93.0], "we_alpha_0.2": [90.0, 92.0], "we": [94.0, 96.0], "baseline": [89.0, 91.0]}
    for i, (method, values) in enumerate(finals.items()):  # folders in this order: alpha 0.8 before 0.2
        for seed, v in enumerate(values):
            write_run(root, "fig6", f"{i}-s{seed}", labels(method, seed), final=v, best=v)
    figures.figure_alpha("fig6", load_runs(root / "fig6"), tmp_path / "out")
    (fig,) = drawn
    (ax,) = fig.axes
    fixed = next(c for c in ax.containers if c.get_label() == "fixed α")
    x, y = fixed.lines[0].get_data()
    assert list(x) == [0.2, 0.8] and list(y) == pytest.approx([91.0, 93.0])  # sorted by alpha, mean of seeds
    bars = fixed.lines[2][0].get_segments()  # the error bar of alpha 0.2: ± the sample std of 90, 92
    assert [s[:, 1].tolist() for s in bars][0] == pytest.approx([91.0 - np.sqrt(2), 91.0 + np.sqrt(2)])
    level = {ln.get_label().split(":")[0]: ln.get_ydata()[0] for ln in ax.lines if ":" in str(ln.get_label())}
    assert level == pytest.approx({"adaptive α (WE)": 95.0, "baseline": 90.0})


def test_figure6_draws_nothing_without_a_fixed_alpha_run(tmp_path: Path, drawn):
    root = tmp_path / "runs"
    write_run(root, "g", "we-s0", labels("we", 0), final=92.0, best=92.0)
    assert figures.figure_alpha("g", load_runs(root / "g"), tmp_path / "out") == [] and drawn == []
