"""The paper's figures from run folders on disk (matplotlib), as PNG and PDF under ``results/figures/``.

Figure 2 (mean average l1 norm per layer), Figure 3 (the global selection rate of Eq. 2),
Figure 5 (convergence curves per grid) and Figure 6 (fixed against adaptive alpha).
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

import models
from we.core import FLAVOURS, PAPER_STEP_DEFAULTS, PAPER_STEP_IMAGENET, selection_rate, stage_rate
from we.errors import CheckpointError
from we.report.runs import (ALPHA_LABEL, CORE_LABELS, DATASET_ORDER, Run, hashable_label, method_sort_key,
                            evolution_of, load_runs, read_run)
from we.report.stats import BASELINE, finite, mean_std_n
from we.rundir import LAST_CHECKPOINT, read_checkpoint, read_metrics, tolerant

# Figure 3's settings (paper Sec. 4.1.2): the WE core's paper values (we.core.hparams), CIFAR's and
# ImageNet's; ImageNet's stages start at its learning-rate drops, those of the authors' ImageNet script.
_SCHEDULE = ("r_hat", "beta", "eta", "milestones")
SETTINGS_CIFAR = {k: PAPER_STEP_DEFAULTS[k] for k in _SCHEDULE}
SETTINGS_IMAGENET = {**{k: PAPER_STEP_IMAGENET[k] for k in _SCHEDULE}, "milestones": FLAVOURS["imagenet"]["milestones"]}


def _new_figure(n_panels: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Any, out_dir: Path, stem: str, title: str) -> list[Path]:
    """Write ``stem``.png and .pdf; ``title`` goes into both files' metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, metadata={"Title": title})
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _panel_key(r: Run) -> tuple[str, str]:
    return str(r.labels.get("dataset", "?")), str(r.labels.get("model", "?"))


def _varying_axes(runs: list[Run]) -> list[str]:
    """Label axes other than dataset, model, method and seed that take more than one value."""
    keys = sorted({k for r in runs for k in r.labels if k not in CORE_LABELS})
    return [k for k in keys if len({hashable_label(r.labels.get(k)) for r in runs}) > 1]


def _panel_rank(key: tuple[str, str]) -> tuple:
    dataset = key[0]
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), key)


def figure_convergence(grid_name: str, runs: list[Run], out_dir: Path) -> list[Path]:
    """Figure 5: test top-1 against epoch, mean and a std band per method, one panel per (dataset, model).

    Complete and still-running runs are drawn; nothing is written when no run has metrics.
    """
    fig = draw_convergence(grid_name, runs)
    if fig is None:
        return []
    return _save(fig, out_dir, f"fig5-convergence-{_safe(grid_name)}", f"Convergence curves ({grid_name})")


# Every method of a panel gets its own (line style, marker): 3 x 7 distinct pairs before one repeats. Dotted
# lines are the lr decays, dashed grey ones the epochs where WE stepped.
LINE_STYLES = ("-", "--", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
STEP_STYLE = {"color": "0.35", "ls": (0, (4, 3)), "lw": 0.7, "gid": "we-step"}


def method_style(i: int) -> dict[str, Any]:
    """The line style and marker of a panel's i-th method."""
    return {"ls": LINE_STYLES[i % len(LINE_STYLES)], "marker": MARKERS[i % len(MARKERS)]}


def _curves(runs: list[Run]) -> tuple[dict[tuple[str, str], dict[str, list[pd.Series]]],
                                      dict[tuple[str, str], pd.Series], dict[tuple[str, str], set[int]]]:
    """Per panel: test top-1 per epoch of each run by method label, one run's lr per epoch, and the epochs
    after which (or during which) WE stepped in any of its runs."""
    curves: dict[tuple[str, str], dict[str, list[pd.Series]]] = {}
    lrs: dict[tuple[str, str], pd.Series] = {}
    steps: dict[tuple[str, str], set[int]] = {}
    varying = _varying_axes(runs)
    for r in runs:
        if r.status not in ("complete", "running"):
            continue
        rows, _ = tolerant(read_metrics, r.path, [])  # a broken metrics.jsonl is the run's problem line
        if not rows or "test_top1" not in (m := pd.DataFrame(rows)):
            continue
        m = m.drop_duplicates("epoch", keep="last").set_index("epoch").sort_index()
        key = _panel_key(r)
        label = str(r.labels.get("method", "?")) + "".join(f", {k}={r.labels.get(k, '')}" for k in varying)
        curves.setdefault(key, {}).setdefault(label, []).append(pd.to_numeric(m["test_top1"], errors="coerce"))
        if "lr" in m and key not in lrs:
            lrs[key] = pd.to_numeric(m["lr"], errors="coerce")
        evolution = evolution_of(rows)
        if evolution is not None:
            steps.setdefault(key, set()).update(evolution.step_epochs)
    return curves, lrs, steps


def draw_convergence(grid_name: str, runs: list[Run]) -> Any:
    """Figure 5 as a matplotlib Figure (None when no run has metrics): one (line style, marker) per method,
    integer epoch ticks, the std band (±1 sample std, n > 1) drawn inside the axes, the lr decays (dotted)
    and WE's steps (dashed grey) in each panel's legend, the y range zoomed on the late stage, titles
    left-aligned."""
    curves, lrs, steps = _curves(runs)
    if not curves:
        return None
    panels = sorted(curves, key=_panel_rank)
    fig, axes = _new_figure(len(panels))
    for ax, key in zip(axes, panels):
        _draw_panel(ax, curves[key], lrs.get(key), sorted(steps.get(key, ())))
        ax.set_title(f"{key[1]} on {key[0]}", loc="left")
    fig.suptitle(f"Convergence curves ({grid_name})", x=0.01, ha="left")
    return fig


def _draw_panel(ax: Any, by_method: dict[str, list[pd.Series]], lr: Optional[pd.Series], steps: list[int]) -> None:
    """One panel: the means first (their range and the bands' decide the y range), then the bands clipped
    to it, the lr decays and WE's steps."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    methods = sorted(by_method, key=lambda m: (method_sort_key(m.split(",")[0], []), m))
    stats = {}
    for i, method in enumerate(methods):
        frame = pd.concat(by_method[method], axis=1)
        per_epoch = [mean_std_n(frame.loc[epoch]) for epoch in frame.index]
        mean = pd.Series([m for m, _, _ in per_epoch], index=frame.index)
        std = pd.Series([sd for _, sd, _ in per_epoch], index=frame.index) if frame.shape[1] > 1 else None
        line, = ax.plot(mean.index, mean.values, lw=1.2, ms=4, label=f"{method} (n={frame.shape[1]})",
                        **method_style(i))
        stats[method] = (mean, std, line.get_color())
    drawn = [s for mean, std, _ in stats.values() for s in ([mean] if std is None else [mean, mean - std, mean + std])]
    low, high = _zoom_accuracy(ax, drawn)
    handles = ax.get_legend_handles_labels()[0]
    for mean, std, color in stats.values():
        if std is not None:
            ax.fill_between(mean.index, (mean - std).clip(low, high).values, (mean + std).clip(low, high).values,
                            color=color, alpha=0.2, lw=0)
    if any(std is not None for _, std, _ in stats.values()):
        handles.append(Patch(color="0.5", alpha=0.3, lw=0, label="± 1 std over seeds"))
    decays = [] if lr is None else list(lr.index[1:][(lr.values[1:] < lr.values[:-1] * 0.999)])
    for i, epoch in enumerate(decays):
        vline = ax.axvline(epoch, color="0.6", ls=":", lw=0.8, label="lr decay" if i == 0 else None)
        handles += [vline] if i == 0 else []
    for i, epoch in enumerate(steps):
        vline = ax.axvline(epoch, label="WE step" if i == 0 else None, **STEP_STYLE)
        handles += [vline] if i == 0 else []
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    epochs = pd.concat(drawn).index
    if epochs.max() > epochs.min():
        ax.set_xlim(epochs.min(), epochs.max())
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7)


def _zoom_accuracy(ax: Any, drawn: list[pd.Series]) -> tuple[float, float]:
    """Show the top of the range of everything drawn (means and their std bands: from the 10th
    percentile up, the largest band edge inside) so that late-stage differences stay visible; returns
    the y range, to which the bands are clipped."""
    values = pd.concat(drawn).dropna()
    if len(values):
        hi = float(values.max())
        lo = float(np.percentile(values, 10)) if len(values) > 10 else float(values.min())
        if hi > lo:
            ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_ylim(*ax.get_ylim())  # fixed: what is drawn next (bands, vertical lines) leaves it as is
    return ax.get_ylim()


def figure_selection_rate(out_dir: Path) -> list[Path]:
    """Figure 3: the global selection rate r of Eq. 2 per epoch for the CIFAR and ImageNet settings."""
    settings = [("CIFAR (200 epochs)", 200, SETTINGS_CIFAR), ("ImageNet (90 epochs)", 90, SETTINGS_IMAGENET)]
    fig, axes = _new_figure(2)
    for ax, (title, epochs, s) in zip(axes, settings):
        e = np.arange(epochs)
        r = [selection_rate(int(i), r_hat=s["r_hat"], beta=s["beta"], eta=s["eta"], milestones=s["milestones"])
             for i in e]
        ax.plot(e, r, lw=1.5)
        for m in s["milestones"]:
            ax.axvline(m, color="0.6", ls=":", lw=0.8)
        ax.set_title(f"{title}: r̂={s['r_hat']}, β={s['beta']:g}, η={s['eta']:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("selection rate r")
        ax.set_ylim(0, s["r_hat"] * 1.05)
        ax.grid(alpha=0.3)
    title = "Global selection rate r (Eq. 2)"
    fig.suptitle(title)
    return _save(fig, out_dir, "fig3-selection-rate", title)


# The authors' scripts' rate bases per pool (their radio_conv, radio_bn, radio_bias).
AUTHORS_POOLS = {"conv": "radio_conv", "BN weight": "radio_bn", "BN bias": "radio_bias"}


def figure_selection_rate_authors(out_dir: Path) -> list[Path]:
    """Figure 3 as the authors' scripts set it: one rate per pool (conv, BN weight, BN bias), stage
    divisors 1, 2.5, 5 (CIFAR, StepLR(60): the paper's step would see a fourth stage at 180, dashed)
    and 1, 2, 4 (ImageNet)."""
    settings = [("authors' CIFAR script (200 epochs)", 200, FLAVOURS["cifar"]),
                ("authors' ImageNet script (90 epochs)", 90, FLAVOURS["imagenet"])]
    fig, axes = _new_figure(2)
    for ax, (title, epochs, h) in zip(axes, settings):
        e = np.arange(epochs)
        for pool, key in AUTHORS_POOLS.items():
            ax.plot(e, [stage_rate(int(i), h[key], divisors=h["divisors"], eta=h["eta"], milestones=h["milestones"])
                        for i in e], lw=1.5, label=f"{pool} ({key}={h[key]:g})")
        if epochs == 200:  # Eq. 2 with the stages of StepLR(60): 60, 120 and 180
            s = {**SETTINGS_CIFAR, "milestones": (60, 120, 180)}
            ax.plot(e, [selection_rate(int(i), r_hat=s["r_hat"], beta=s["beta"], eta=s["eta"],
                                       milestones=s["milestones"]) for i in e], "k--", lw=1.0,
                    label="paper's r(e) under StepLR(60)")
        for m in h["milestones"]:
            ax.axvline(m, color="0.6", ls=":", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("selection rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    title = "Global selection rates of the authors' scripts"
    fig.suptitle(title)
    return _save(fig, out_dir, "fig3-selection-rate-official", title)


def average_l1_norms(state_dict: dict[str, Any]) -> list[tuple[str, float]]:
    """Per Conv2d weight (4-D tensor): mean over filters of sum|w| / weight.shape[1] (Eq. 1)."""
    out = []
    for name, w in state_dict.items():
        if name.endswith("weight") and getattr(w, "ndim", 0) == 4:
            w = w.detach().float().cpu()
            out.append((name, float((w.abs().flatten(1).sum(1) / w.shape[1]).mean())))
    return out


def _find_trained_checkpoint(runs_root: Path, dataset: str, model: str) -> Optional[Path]:
    """A complete run's last.pt for (dataset, model) under `runs_root`, outside its -official grids:
    baseline preferred, then the most epochs."""
    candidates = []
    if not Path(runs_root).is_dir():
        return None
    for ckpt in Path(runs_root).rglob(LAST_CHECKPOINT):
        if any(part.endswith("-official") for part in ckpt.relative_to(runs_root).parts):
            continue  # the authors' recipe and model files: their own figure (figure2-official)
        run = read_run(ckpt.parent)
        if run.status != "complete":
            continue
        if str(run.labels.get("dataset")) != dataset or str(run.labels.get("model")) != model:
            continue
        epochs = run.result.get("epochs_done") or 0
        candidates.append((run.labels.get("method") != BASELINE, -(epochs if finite(epochs) else 0), str(ckpt), ckpt))
    return min(candidates)[-1] if candidates else None


def _load_state_dict(path: Path) -> Optional[dict[str, Any]]:
    """The model weights of a checkpoint read without executing code; a refused one is one line on stderr."""
    try:
        obj = read_checkpoint(path)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    state = obj.get("model")
    if not isinstance(state, dict):
        print(f"error: {path}: holds no model weights", file=sys.stderr)
        return None
    return state


def figure_l1_norms(runs_root: Path, out_dir: Path, dataset: str = "cifar10", model: str = "mobilenetv2",
                    num_classes: int = 10, tag: str = "") -> list[Path]:
    """Figure 2: mean average l1 norm per conv layer, from a trained checkpoint under `runs_root` when
    one exists, else at initialisation (seed 0), said so in the title; `tag` (a grid name) ends the
    file name."""
    state, source = None, ""
    ckpt = _find_trained_checkpoint(Path(runs_root), dataset, model)
    if ckpt is not None:
        state = _load_state_dict(ckpt)
        source = f"trained: {ckpt.parent}"
    if state is None:
        torch.manual_seed(0)
        state = models.create(model, num_classes=num_classes).state_dict()
        source = ("at initialisation (seed 0; no trained checkpoint found)" if ckpt is None else
                  f"at initialisation (seed 0; {ckpt} refused)")
    norms = average_l1_norms(state)
    fig, (ax,) = _new_figure(1, width=7.0, height=3.4)
    ax.bar(np.arange(1, len(norms) + 1), [v for _, v in norms], width=0.8)
    ax.set_xlabel("convolutional layer")
    ax.set_ylabel("mean of average ℓ1 norms")
    ax.set_xlim(0.3, len(norms) + 0.7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{model} on {dataset}, {source}", fontsize=9)
    fig.suptitle("Mean values of the average ℓ1 norm (Eq. 1) per layer")
    return _save(fig, out_dir, f"fig2-l1-norms-{model}-{dataset}" + (f"-{_safe(tag)}" if tag else ""),
                 f"Mean average l1 norm per layer, {model} on {dataset}, {source}")


def figure_alpha(grid_name: str, runs: list[Run], out_dir: Path) -> list[Path]:
    """Figure 6: final top-1 against fixed alpha (``we_alpha_<a>`` labels), with adaptive alpha (``we``)
    and the baseline as horizontal lines; one panel per (dataset, model). Nothing when no label has alpha."""
    data: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in runs:
        if r.counted:
            data.setdefault(_panel_key(r), {}).setdefault(str(r.labels.get("method")), []).append(
                float(r.result["final_top1"]))
    panels = [k for k, v in data.items() if any(ALPHA_LABEL.match(m) for m in v)]
    if not panels:
        return []
    panels.sort(key=_panel_rank)
    fig, axes = _new_figure(len(panels))
    for ax, key in zip(axes, panels):
        by_method = data[key]
        fixed = sorted((float(ALPHA_LABEL.match(m).group(1)), v) for m, v in by_method.items() if ALPHA_LABEL.match(m))
        xs = [a for a, _ in fixed]
        stats = [mean_std_n(v) for _, v in fixed]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] if finite(s[1]) else 0.0 for s in stats],
                    marker="o", ms=4, capsize=2, lw=1.2, label="fixed α")
        for method, style, label in (("we", dict(color="C3", ls="--"), "adaptive α (WE)"),
                                     (BASELINE, dict(color="0.4", ls=":"), "baseline")):
            if method in by_method:
                mean, std, n = mean_std_n(by_method[method])
                ax.axhline(mean, lw=1.2, label=f"{label}: {mean:.2f} (n={n})", **style)
                if finite(std):
                    ax.axhspan(mean - std, mean + std, color=style["color"], alpha=0.12, lw=0)
        ax.set_title(f"{key[1]} on {key[0]}")
        ax.set_xlabel("fixed α")
        ax.set_ylabel("final test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    title = f"Fixed against adaptive alpha ({grid_name})"
    fig.suptitle(title.replace("alpha", "α"))
    return _save(fig, out_dir, f"fig6-alpha-{_safe(grid_name)}", title)


def make_figures(runs_root: Path = Path("results/runs"), out_dir: Path = Path("results")) -> list[Path]:
    """Every figure there is data for: Figures 5 and 6 per grid, Figures 2 and 3 always (Figure 2 also
    from the figure2-official grid's own run, Figure 3 also as the authors' scripts set it).

    Figures go to ``out_dir/figures``; returns the paths written.
    """
    runs_root, fig_dir = Path(runs_root), Path(out_dir) / "figures"
    written: list[Path] = []
    grids = sorted(p for p in runs_root.iterdir() if p.is_dir()) if runs_root.is_dir() else []
    for grid_dir in grids:
        runs = load_runs(grid_dir)
        written += figure_convergence(grid_dir.name, runs, fig_dir)
        written += figure_alpha(grid_dir.name, runs, fig_dir)
        if grid_dir.name == "figure2-official":  # its run trains the authors' model file
            written += figure_l1_norms(grid_dir, fig_dir, tag=grid_dir.name)
    written += figure_l1_norms(runs_root, fig_dir)
    written += figure_selection_rate(fig_dir)
    written += figure_selection_rate_authors(fig_dir)
    return written
