"""Tables and figures from synthetic run folders (no training)."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats

from we import report
from we.report import figures
from we.report.runs import BASELINE
from we.report.tables import REPORTED_CSV

PAPER = """table,dataset,model,method,top1,top5
2,cifar10,mobilenetv1,baseline,91.00,
2,cifar10,mobilenetv1,fg1,92.31,
2,cifar10,mobilenetv1,we,92.44,
4,imagenet,mobilenetv2_050,baseline,58.31,81.38
4,imagenet,mobilenetv2_050,we,60.91,83.39
5,cifar100,mobilenetv1,baseline,68.41,
5,cifar100,mobilenetv1,we,71.01,
5,cifar100,mobilenetv1,we_global_only,69.28,
8,cifar100,mobilenetv1,we,71.50,
"""

BASE = [91.0, 91.3, 90.8, 91.1, 90.9]
WE = [92.4, 92.6, 92.1, 92.5, 92.2]
FG = [92.0, 92.3, 91.9]


def write_run(root: Path, grid: str, name: str, labels: dict[str, Any], *, status: Optional[str] = "complete",
              final: Optional[float] = None, best: Optional[float] = None, top5: Optional[float] = None,
              epochs: int = 6, extra: Optional[dict[str, Any]] = None, metrics: bool = True) -> Path:
    """A run folder as the trainer and the grid layer write it; status None leaves result.json out."""
    d = root / grid / name
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({"grid": grid, "key": name, "labels": labels,
                                             "config": {"epochs": epochs}, "submitted": []}))
    end = final if final is not None else 50.0
    rows = [{"epoch": e, "lr": 0.1 if e <= epochs // 2 else 0.01, "train_loss": 1.0 / e, "train_top1": 50.0,
             "test_loss": 1.0 / e, "test_top1": end - (epochs - e), "test_top5": end - (epochs - e) + 5,
             "seconds": 1.0, "images_per_s": 100.0} for e in range(1, epochs + 1)]
    if metrics:
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status is not None:
        result = {"status": status, "final_top1": final, "best_top1": best, "final_top5": top5,
                  "best_top5": None if top5 is None else top5 + 0.5, "best_epoch": epochs,
                  "epochs_done": epochs, "config": {k: labels.get(k) for k in ("dataset", "model", "method", "seed")},
                  **(extra or {})}
        (d / "result.json").write_text(json.dumps(result))
    return d


def labels(method: str, seed: int, dataset: str = "cifar10", model: str = "mobilenetv1") -> dict[str, Any]:
    return {"dataset": dataset, "model": model, "method": method, "seed": seed}


@pytest.fixture
def reported_csv(tmp_path: Path) -> Path:
    path = tmp_path / "paper.csv"
    path.write_text(PAPER)
    return path


@pytest.fixture
def table2(tmp_path: Path) -> Path:
    """A CIFAR grid: 5 baseline, 5 WE, 3 FG-1 runs and an SVB cell that never completed."""
    root = tmp_path / "runs"
    for method, values in (("baseline", BASE), ("we", WE), ("fg1", FG)):
        for seed, v in enumerate(values):
            write_run(root, "table2", f"{method}-s{seed}", labels(method, seed), final=v, best=v + 0.25)
    write_run(root, "table2", "svb-s0", labels("svb", 0), status="failed",
              extra={"error": "RuntimeError: CUDA out of memory\nsecond line"})
    write_run(root, "table2", "svb-s1", labels("svb", 1), status="diverged", final=float("nan"),
              extra={"diverged_epoch": 3})
    write_run(root, "table2", "svb-s2", labels("svb", 2), status=None)
    write_run(root, "table2", "svb-s3", labels("svb", 3), status="running")
    write_run(root, "table2", "svb-s4", labels("svb", 4), final=91.5, best=91.6)
    return root


def row(df: pd.DataFrame, method: str, **match: Any) -> pd.Series:
    sel = df[df.method == method]
    for k, v in match.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_statistics_exact(table2: Path, tmp_path: Path, reported_csv: Path) -> None:
    out = report.collect("table2", table2, tmp_path / "out", reported_csv, figures=False, echo=False)
    df = out["table"]
    assert list(df.method) == ["baseline", "fg1", "we", "svb"]  # baseline first, then the paper's order
    for method, values in (("baseline", BASE), ("we", WE), ("fg1", FG)):
        r = row(df, method)
        assert r.n == len(values)
        assert r.final_top1_mean == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert r.final_top1_std == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert r.best_top1_mean == pytest.approx(statistics.fmean(values) + 0.25, abs=1e-12)
        assert r.best_top1_std == pytest.approx(statistics.stdev(values), abs=1e-9)
    we = row(df, "we")
    assert we.p_final_top1 == pytest.approx(stats.ttest_ind(WE, BASE, equal_var=False).pvalue, rel=1e-12)
    best_we, best_base = [v + 0.25 for v in WE], [v + 0.25 for v in BASE]
    assert we.p_best_top1 == pytest.approx(stats.ttest_ind(best_we, best_base, equal_var=False).pvalue, rel=1e-9)
    assert row(df, "fg1").p_final_top1 == pytest.approx(stats.ttest_ind(FG, BASE, equal_var=False).pvalue,
                                                       rel=1e-12)
    assert math.isnan(row(df, "baseline").p_final_top1)
    assert we.reported_top1 == 92.44 and we.reported_table == 2
    assert we.diff_final_top1 == pytest.approx(statistics.fmean(WE) - 92.44, abs=1e-12)
    assert we.diff_best_top1 == pytest.approx(statistics.fmean(WE) + 0.25 - 92.44, abs=1e-12)
    assert math.isnan(row(df, "svb").reported_top1)  # not in this paper file


def test_p_value_blank_below_two_runs(table2: Path, tmp_path: Path, reported_csv: Path) -> None:
    df = report.collect("table2", table2, tmp_path / "out", reported_csv, figures=False, echo=False)["table"]
    svb = row(df, "svb")
    assert svb.n == 1 and math.isnan(svb.final_top1_std) and math.isnan(svb.p_final_top1)
    assert math.isnan(report.welch_p([1.0], [1.0, 2.0]))


def test_failed_diverged_running_counted_and_listed(table2: Path, tmp_path: Path, reported_csv: Path) -> None:
    out = report.collect("table2", table2, tmp_path / "out", reported_csv, figures=False, echo=False)
    svb = row(out["table"], "svb")
    assert (svb.n_failed, svb.n_diverged, svb.n_running, svb.n_unreadable) == (1, 1, 2, 0)
    md = out["markdown"].read_text()
    assert "svb-s0` failed: RuntimeError: CUDA out of memory" in md
    assert "second line" not in md
    assert "svb-s1` diverged at epoch 3" in md
    assert "1 diverged, 1 failed, 2 running" in md
    assert "svb-s2" not in md  # running runs are counted, not listed
    assert row(out["table"], "we").not_counted == ""


def test_few_runs_marked(table2: Path, tmp_path: Path, reported_csv: Path) -> None:
    out = report.collect("table2", table2, tmp_path / "out", reported_csv, figures=False, echo=False)
    lines = out["markdown"].read_text().splitlines()
    fg = next(line for line in lines if "| fg1 |" in line)
    we = next(line for line in lines if "| we |" in line)
    assert "| 3* |" in fg and "| 5 |" in we
    assert "n < 5" in out["markdown"].read_text()
    csv = pd.read_csv(out["csv"]).set_index("method")
    assert bool(csv.loc["fg1", "few_runs"]) and not bool(csv.loc["we", "few_runs"])
    assert r"3$^*$" in out["tex"].read_text()


def test_outputs_written(table2: Path, tmp_path: Path, reported_csv: Path, capsys: pytest.CaptureFixture) -> None:
    out = report.collect("table2", table2, tmp_path / "out", reported_csv, figures=False)
    assert out["markdown"] == tmp_path / "out" / "table2.md"
    md, tex = out["markdown"].read_text(), out["tex"].read_text()
    mean_we = f"{statistics.fmean(WE):.2f} ± {statistics.stdev(WE):.2f}"
    assert mean_we in md and "| 92.44 |" in md
    assert f"{statistics.fmean(WE):.2f}$\\pm${statistics.stdev(WE):.2f}" in tex
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", "fg1", "baseline", r"$\Delta$"):
        assert token in tex
    csv = pd.read_csv(out["csv"])
    assert set(csv.method) == {"baseline", "we", "fg1", "svb"}
    assert csv.set_index("method").loc["we", "final_top1_mean"] == pytest.approx(statistics.fmean(WE), abs=1e-4)
    printed = capsys.readouterr().out
    assert mean_we in printed and "| method |" in printed


def test_corrupt_result_json(tmp_path: Path, reported_csv: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "runs"
    write_run(root, "g", "ok", labels("we", 0), final=92.0, best=92.1)
    bad = write_run(root, "g", "bad", labels("we", 1), final=92.0, best=92.1)
    (bad / "result.json").write_text('{"status": "compl')
    (write_run(root, "g", "badcell", labels("we", 2), final=93.0, best=93.1) / "cell.json").write_text("[")
    out = report.collect("g", root, tmp_path / "out", reported_csv, figures=False, echo=False)
    msg = [p for p in out["problems"] if "bad/result.json" in p]
    assert len(msg) == 1 and "\n" not in msg[0] and "unreadable" in msg[0]
    assert any("badcell/cell.json" in p for p in out["problems"])
    assert msg[0] in capsys.readouterr().err
    assert msg[0] in out["markdown"].read_text()
    we = row(out["table"], "we")
    assert we.n == 2 and we.n_unreadable == 1  # a bad cell.json: labels from result.json's config


def test_imagenet_top5_and_table_from_grid_name(tmp_path: Path, reported_csv: Path) -> None:
    root = tmp_path / "runs"
    for seed, (t1, t5) in enumerate([(60.0, 82.0), (61.0, 83.0)]):
        write_run(root, "table4-official", f"we-{seed}",
                  labels("we", seed, "imagenet", "mobilenetv2_050"), final=t1, best=t1, top5=t5)
        write_run(root, "table4-official", f"base-{seed}",
                  labels("baseline", seed, "imagenet", "mobilenetv2_050"), final=t1 - 2, best=t1 - 2, top5=t5 - 2)
    out = report.collect("table4-official", root, tmp_path / "out", reported_csv, figures=False, echo=False)
    we = row(out["table"], "we")
    assert we.reported_table == 4 and we.reported_top5 == 83.39
    assert we.final_top5_mean == pytest.approx(82.5) and we.diff_final_top5 == pytest.approx(82.5 - 83.39)
    md = out["markdown"].read_text()
    assert "final top-5" in md and "83.39" in md


def test_paper_match_prefers_grid_table_then_any(tmp_path: Path, reported_csv: Path) -> None:
    root = tmp_path / "runs"
    for grid in ("table8", "table5", "ablation"):
        for seed in range(2):
            write_run(root, grid, f"we-{seed}", labels("we", seed, "cifar100"), final=71.0, best=71.0)
    got = {g: row(report.collect(g, root, tmp_path / "out", reported_csv, figures=False, echo=False)["table"],
                  "we").reported_top1 for g in ("table8", "table5", "ablation")}
    assert got == {"table8": 71.50, "table5": 71.01, "ablation": 71.01}
    assert report.table_number("table5-official") == 5 and report.table_number("table12") == 12
    assert report.table_number("alpha") is None


def test_default_reported_csv_is_the_repository_copy(table2: Path, tmp_path: Path) -> None:
    assert REPORTED_CSV.exists()
    df = report.collect("table2", table2, tmp_path / "out", figures=False, echo=False)["table"]
    assert row(df, "svb").reported_top1 == 91.02


def test_extra_axes_split_rows_and_baselines(tmp_path: Path, reported_csv: Path) -> None:
    root = tmp_path / "runs"
    for recipe, shift in (("paper", 0.0), ("official", 1.0)):
        for seed in range(3):
            lab = {**labels("baseline", seed), "recipe": recipe, "epochs": 200}
            write_run(root, "g", f"b-{recipe}-{seed}", lab, final=90 + shift + seed * 0.1, best=90.0)
            lab = {**labels("we", seed), "recipe": recipe, "epochs": 200}
            write_run(root, "g", f"w-{recipe}-{seed}", lab, final=91 + shift + seed * 0.2, best=91.0)
    df = report.collect("g", root, tmp_path / "out", reported_csv, figures=False, echo=False)["table"]
    assert "recipe" in df.columns and "epochs" not in df.columns  # constant axes are dropped
    we = row(df, "we", recipe="official")
    base = [91 + s * 0.1 for s in range(3)]
    mine = [92 + s * 0.2 for s in range(3)]
    assert we.p_final_top1 == pytest.approx(stats.ttest_ind(mine, base, equal_var=False).pvalue, rel=1e-9)


def test_missing_grid_and_empty_grid(tmp_path: Path, reported_csv: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such grid"):
        report.collect("nothing", tmp_path / "runs", tmp_path / "out", reported_csv, echo=False)
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    out = report.collect("empty", tmp_path / "runs", tmp_path / "out", reported_csv, echo=False)
    assert out["table"].empty and "No runs" in out["markdown"].read_text() and out["figures"] == []


def test_average_l1_norms_eq1() -> None:
    state = {"conv.weight": torch.ones(4, 2, 3, 3), "dw.weight": -2 * torch.ones(8, 1, 3, 3),
             "fc.weight": torch.ones(10, 4), "bn.weight": torch.ones(4)}
    assert report.average_l1_norms(state) == [("conv.weight", 9.0), ("dw.weight", 18.0)]


def _title(png: Path) -> str:
    with Image.open(png) as im:
        return im.text.get("Title", "")


def _assert_written(paths: list[Path], stem: str) -> None:
    for ext in ("png", "pdf"):
        p = next((p for p in paths if p.name == f"{stem}.{ext}"), None)
        assert p is not None and p.exists() and p.stat().st_size > 1000, (stem, ext, paths)


def test_make_figures(table2: Path, tmp_path: Path) -> None:
    for seed in range(2):
        for method in ("we_alpha_0.0", "we_alpha_0.5", "we_alpha_1.0", "we", "baseline"):
            write_run(table2, "alpha", f"{method}-{seed}", labels(method, seed, "cifar100"),
                      final=70 + seed * 0.1 + (method == "we"), best=71.0)
    paths = report.make_figures(table2, tmp_path / "out")
    assert all(p.parent == tmp_path / "out" / "figures" for p in paths)
    for stem in ("fig5-convergence-table2", "fig5-convergence-alpha", "fig6-alpha-alpha",
                 "fig2-l1-norms-mobilenetv2-cifar10", "fig3-selection-rate"):
        _assert_written(paths, stem)
    assert not any("fig6-alpha-table2" in p.name for p in paths)  # no alpha labels there
    assert "initialisation" in _title(tmp_path / "out" / "figures" / "fig2-l1-norms-mobilenetv2-cifar10.png")


def test_figure2_from_trained_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    d = write_run(root, "table2", "mbv2", labels("baseline", 0, "cifar10", "mobilenetv2"), final=92.0, best=92.0)
    torch.save({"model": {"conv.weight": torch.ones(4, 2, 3, 3)}, "config": {}}, d / "last.pt")
    running = write_run(root, "table2", "mbv2-run", labels("baseline", 1, "cifar10", "mobilenetv2"), status=None)
    torch.save({"model": {"conv.weight": torch.ones(4, 2, 3, 3)}, "config": {}}, running / "last.pt")
    paths = report.figure_l1_norms(root, tmp_path / "figs")
    _assert_written(paths, "fig2-l1-norms-mobilenetv2-cifar10")
    title = _title(paths[0])
    assert "trained" in title and str(d) in title and "initialisation" not in title


def test_figure2_falls_back_to_initialisation(tmp_path: Path) -> None:
    paths = report.figure_l1_norms(tmp_path / "no-runs", tmp_path / "figs")
    _assert_written(paths, "fig2-l1-norms-mobilenetv2-cifar10")
    assert "at initialisation" in _title(paths[0]) and "no trained checkpoint" in _title(paths[0])


def test_collect_draws_the_grids_convergence_figure(table2: Path, tmp_path: Path, reported_csv: Path) -> None:
    out = report.collect("table2", table2, tmp_path / "out", reported_csv, echo=False)
    _assert_written(out["figures"], "fig5-convergence-table2")


def test_cli(table2: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--runs-root", str(table2), "--out-dir", str(tmp_path / "out")]
    assert report.cli(["collect", "table2", "--no-figures", *args]) == 0
    assert (tmp_path / "out" / "table2.tex").exists()
    assert "| we |" in capsys.readouterr().out
    assert report.cli(["collect", "missing", *args]) == 2
    assert "no such grid folder" in capsys.readouterr().err


def test_partial_metrics_and_running_runs_are_drawn(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    d = write_run(root, "g", "going", labels("we", 0), status=None, epochs=4)
    with (d / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 5, "test_to')  # a line still being written
    assert [r["epoch"] for r in report.read_metrics(d)] == [1, 2, 3, 4]
    runs = report.load_runs(root / "g")
    assert [r.status for r in runs] == ["running"]
    _assert_written(report.figure_convergence("g", runs, tmp_path / "figs"), "fig5-convergence-g")


def test_grid_file_limits_the_table_to_the_grids_cells(tmp_path: Path, reported_csv: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "g", "cifar10-mobilenetv1-we-s0-aaaa", labels("we", 0), final=70.0, best=71.0)
    write_run(root, "g", "cifar10-mobilenetv1-we-s0-old1", labels("we", 0), final=10.0, best=11.0)  # stale config
    mean = lambda: row(report.collect("g", root, tmp_path / "out", reported_csv, figures=False, echo=False)["table"],
                       "we")["final_top1_mean"]
    assert mean() == pytest.approx(40.0)  # no grid.json: every folder counts
    (root / "g" / "grid.json").write_text(json.dumps({"cells": {"cifar10-mobilenetv1-we-s0": "cifar10-mobilenetv1-we-s0-aaaa"}}))
    assert mean() == pytest.approx(70.0)


def test_convergence_figure_legend_ticks_and_band(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, final in enumerate((60.0, 64.0, 62.0)):
        write_run(root, "g", f"we{seed}", labels("we", seed), final=final, epochs=7)
    write_run(root, "g", "base0", labels(BASELINE, 0), final=55.0, epochs=7)
    fig = figures.draw_convergence("g", report.load_runs(root / "g"))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["baseline (n=1)", "we (n=3)", "± 1 std over seeds", "lr decay"]
    decays = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert decays == [4]  # lr 0.1 for epochs 1-3, 0.01 from epoch 4
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_xlim() == (1.0, 7.0)
    band_top = max(float(p.get_paths()[0].vertices[:, 1].max()) for p in ax.collections)
    assert band_top == pytest.approx(62.0 + 2.0)  # mean 62 ± std 2 at the last epoch
    assert ax.get_ylim()[1] >= band_top  # the band's top lies inside the axis
    assert ax.get_title(loc="left") == "mobilenetv1 on cifar10" and ax.get_title() == ""
    assert fig._suptitle.get_ha() == "left"
def test_figure3_plots_eq2(tmp_path: Path, monkeypatch) -> None:
    """What Figure 3 draws, read from the figure: the CIFAR curve over 200 epochs is Eq. 2 with
    r_hat 0.05, beta 2.5, eta 15, stages at 60 and 120 (hand-worked points); ImageNet's has 90."""
    import we.report.figures as figures

    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, *a: drawn.append(fig) or save(fig, *a))
    figures.figure_selection_rate(tmp_path)
    (fig,) = drawn
    cifar, imagenet = (ax.get_lines()[0] for ax in fig.axes if ax.get_visible())
    x, y = cifar.get_xdata(), cifar.get_ydata()
    assert list(x) == list(range(200)) and len(imagenet.get_xdata()) == 90
    sigmoid = lambda t: 1 / (1 + math.exp(-t))
    for epoch, rate in [(0, 0.025), (59, 0.05 * sigmoid(59 / 15)), (60, 0.01), (119, 0.02 * sigmoid(59 / 15)),
                        (120, 0.004), (199, 0.008 * sigmoid(79 / 15))]:
        assert y[epoch] == pytest.approx(rate), epoch
