"""A paper table's grid in the paper's layout: ``results/<grid>-paper.md|.tex`` and
``results/figures/<grid>-vs-paper.png|.pdf`` (for grids named ``tableN`` or ``tableN-official``).

Rows are the methods under their names in the paper (from the method plug-ins, ``we.methods.paper_name``)
in the paper's order; columns are the models, a block per dataset (top-1 and top-5 for ImageNet). Each
column holds ours (mean ± std over complete runs, with n when fewer than the paper's 5), the paper's
number and the difference; the best of each column is bold. An ablation row (Tables 5-8) also names
the row its own difference is taken against (column "against") and holds that difference (Δ ref, ours
minus ours): the full WE with the same step, "WE (paper's step)" where the grid runs one beside the
authors' WE (Tables 5-7 -official, whose ablations run the paper's step), else "WE". The figure draws,
for every cell, our mean ± std against the paper's number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import models
from we.methods import paper_name
from we.report.stats import finite
from we.report.text import latex, markdown
from we.rundir import inside

REPORTED_RUNS = 5  # "The experiments are run for 5 times and the mean results are reported" (4.1.2)
# The rows of Tables 1-8 in the paper's order (every table lists its methods in this order, WE last).
PAPER_ROWS = ("Baseline", "FG-1", "FG-2", "FG-4", "ONI", "SVB", "RePr", "RL", "WE-G", "WE-L", "WE-RM",
              "Filter-level-GL", "WE without BN", "WE without CONV", "WE")
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}
MEASURES = {"final": "final-epoch", "best": "best-epoch"}
# Rows that switch one WE strategy off (Tables 5-8) and the full-WE rows they may be taken against.
ABLATIONS = ("WE-G", "WE-L", "WE-RM", "Filter-level-GL", "WE without BN", "WE without CONV")
PAPER_STEP_WE = paper_name("we_paper_step")
ROW_ORDER = (*PAPER_ROWS[:-1], PAPER_STEP_WE, PAPER_ROWS[-1])  # the reference row just before the WE row


@dataclass(frozen=True)
class Column:
    """One model column (per dataset, other varying axes, and top-1 or top-5)."""

    dataset: str
    model: str
    metric: str  # "top1" | "top5"
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def block(self) -> str:
        return DATASET_NAMES.get(self.dataset, self.dataset)

    @property
    def head(self) -> str:
        name = models.display_name(self.model) + "".join(f" {k}={v}" for k, v in self.extra)
        return f"{name} top-{self.metric[-1]}" if self.dataset == "imagenet" else name

    @property
    def title(self) -> str:
        return f"{self.block} {self.head}"


@dataclass
class Entry:
    """Ours (mean, sample std, number of complete runs) and the paper's number for one method and column."""

    mean: float
    std: float
    n: int
    reported: float

    @property
    def diff(self) -> float:
        return self.mean - self.reported


@dataclass
class ReportedTable:
    grid: str
    measure: str
    rows: list[str]
    columns: list[Column]
    entries: dict[tuple[str, int], Entry] = field(default_factory=dict)  # (row, column index) -> entry
    references: dict[str, str] = field(default_factory=dict)  # ablation row -> the row it is taken against

    def entry(self, row: str, col: int) -> Entry | None:
        return self.entries.get((row, col))

    def reference_diff(self, row: str, col: int) -> float:
        """Ours minus ours of the row's reference (NaN without one)."""
        e, ref = self.entry(row, col), self.entry(self.references.get(row, ""), col)
        return e.mean - ref.mean if e is not None and ref is not None else math.nan

    def best(self, col: int, reported: bool = False) -> set[str]:
        """The rows holding the column's highest mean (or the paper's highest number)."""
        values = {r: (e.reported if reported else e.mean) for (r, c), e in self.entries.items() if c == col}
        values = {r: v for r, v in values.items() if finite(v)}
        top = max(values.values(), default=math.nan)
        return {r for r, v in values.items() if v == top}


def _row_rank(name: str, seen: list[str]) -> tuple[int, int]:
    return (ROW_ORDER.index(name), 0) if name in ROW_ORDER else (len(ROW_ORDER), seen.index(name))


def reported_table(df: pd.DataFrame, grid_name: str, measure: str = "final") -> ReportedTable:
    """The wide table of a long table (``we.report.tables.summarize_runs``'s rows, already in the
    order of datasets and models of the paper)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, not {measure!r}")
    axes = df.attrs.get("axes", ["dataset", "model", "method"])
    extra_axes = [a for a in axes if a not in ("dataset", "model", "method")]
    names = [paper_name(str(m)) for m in df.method] if len(df) else []
    rows = sorted(dict.fromkeys(names), key=lambda n: _row_rank(n, list(dict.fromkeys(names))))
    layout = ReportedTable(grid_name, measure, rows, [])
    for name, (_, r) in zip(names, df.iterrows()):
        extra = tuple((a, str(r[a])) for a in extra_axes)
        for metric in ("top1", "top5") if str(r.dataset) == "imagenet" else ("top1",):
            col = Column(str(r.dataset), str(r.model), metric, extra)
            if col not in layout.columns:
                layout.columns.append(col)
            layout.entries[(name, layout.columns.index(col))] = Entry(
                float(r[f"{measure}_{metric}_mean"]), float(r[f"{measure}_{metric}_std"]), int(r.n),
                float(r[f"reported_{metric}"]))
    reference = PAPER_STEP_WE if PAPER_STEP_WE in rows else "WE"
    layout.references = {row: reference for row in rows if row in ABLATIONS and reference in rows}
    return layout


# ---------------------------------------------------------------------------------------------
# Markdown and LaTeX
# ---------------------------------------------------------------------------------------------
def _fmt(x: float, sign: bool = False) -> str:
    if not finite(x):
        return "–"
    return f"{x:+.2f}".replace("-", "−") if sign else f"{x:.2f}"


def _ours(e: Entry, pm: str) -> str:
    return _fmt(e.mean) + (f"{pm}{e.std:.2f}" if finite(e.std) else "")


def _cells(layout: ReportedTable, row: str, col: int, pm: str, bold: Any, n_note: Any) -> list[str]:
    """[ours, paper, difference] of one row and column ("–" where there is nothing)."""
    e = layout.entry(row, col)
    if e is None:
        return ["–", "–", "–"]
    ours = "–" if not finite(e.mean) else _ours(e, pm)
    if finite(e.mean) and row in layout.best(col):
        ours = bold(ours)
    if finite(e.mean) and e.n < REPORTED_RUNS:
        ours += n_note(e.n)
    reported = _fmt(e.reported)
    if finite(e.reported) and row in layout.best(col, reported=True):
        reported = bold(reported)
    return [ours, reported, _fmt(e.diff, sign=True)] + _ref_cells(layout, row, col)


def _ref_cells(layout: ReportedTable, row: str, col: int) -> list[str]:
    return [_fmt(layout.reference_diff(row, col), sign=True)] if layout.references else []


def _sub_heads(layout: ReportedTable) -> list[str]:
    return ["paper", "Δ"] + (["Δ ref"] if layout.references else [])


def caption(layout: ReportedTable) -> str:
    text = (f"{MEASURES[layout.measure].capitalize()} test accuracy (%): ours is the mean ± sample std over "
            f"complete runs (n given when fewer than the paper's {REPORTED_RUNS}), paper: the number the paper "
            "reports, Δ: ours minus the paper; the best of each column in bold.")
    if layout.references:
        text += (" Δ ref: ours minus ours of the row named under 'against' (the full WE with the same step: "
                 "each ablation's own effect).")
    return text


def layout_markdown(layout: ReportedTable) -> str:
    out = [f"# {markdown(layout.grid)} in the paper's layout", "", caption(layout), ""]
    if not layout.columns:
        return "\n".join(out + ["No runs to tabulate.", ""])
    against = ["against"] if layout.references else []
    header = ["Method", *against] + [h for c in layout.columns for h in (markdown(c.title), *_sub_heads(layout))]
    out.append("| " + " | ".join(header) + " |")
    out.append("|---|" + "---|" * len(against) + "---:|" * (len(header) - 1 - len(against)))
    for row in layout.rows:
        cells = [markdown(row)] + [markdown(layout.references.get(row, "")) for _ in against] + [
            x for i in range(len(layout.columns))
            for x in _cells(layout, row, i, " ± ", lambda s: f"**{s}**", lambda n: f" (n={n})")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _tex_number(s: str) -> str:
    """A formatted number cell (digits, signs, dashes and the markup `_cells` adds) in LaTeX."""
    return s.replace("−", "$-$").replace("–", "--")


def _spans(labels: list[str], width: int, lead: int = 1) -> list[tuple[str, int, int]]:
    """(label, first, last) 1-based table columns of consecutive equal labels, each `width` wide, after
    the `lead` columns (the method column, and "against" where there is one)."""
    spans: list[tuple[str, int, int]] = []
    for i, label in enumerate(labels):
        first = lead + 1 + i * width
        if spans and spans[-1][0] == label:
            spans[-1] = (label, spans[-1][1], first + width - 1)
        else:
            spans.append((label, first, first + width - 1))
    return spans


def layout_latex(layout: ReportedTable) -> str:
    """A booktabs tabular: a header row of datasets, one of models, one of ours / paper / Δ (/ Δ ref)."""
    if not layout.columns:
        return f"% {layout.grid}: no runs to tabulate\n"
    width, lead = 1 + len(_sub_heads(layout)), 2 if layout.references else 1
    lines = [f"% {latex(layout.grid)}: " + latex(caption(layout)).replace("±", r"$\pm$").replace("–", "--"),
             r"\begin{tabular}{" + "l" * lead + "r" * width * len(layout.columns) + "}", r"\toprule"]
    for labels in ([c.block for c in layout.columns], [c.head for c in layout.columns]):
        spans = _spans(labels, width, lead)
        lines.append(" & ".join([""] * lead + [rf"\multicolumn{{{b - a + 1}}}{{c}}{{{latex(s)}}}" for s, a, b in spans])
                     + r" \\")
        lines.append(" ".join(rf"\cmidrule(lr){{{a}-{b}}}" for _, a, b in spans))
    subs = " & ".join(["ours", *(latex(h) for h in _sub_heads(layout))])
    lines.append(" & ".join(["Method", *(["against"] if layout.references else []), *[subs] * len(layout.columns)])
                 + r" \\")
    lines.append(r"\midrule")
    for row in layout.rows:
        against = [latex(layout.references.get(row, ""))] if layout.references else []
        cells = [latex(row), *against] + [_tex_number(x) for i in range(len(layout.columns)) for x in _cells(
            layout, row, i, r" $\pm$ ", lambda s: rf"\textbf{{{s}}}", lambda n: f"$^{{n={n}}}$")]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The figure: ours against the paper, cell by cell
# ---------------------------------------------------------------------------------------------
def draw_vs_reported(layout: ReportedTable) -> Any:
    """One panel per column: our mean ± std (error bars) and the paper's number (crosses) per method.

    Each panel's error-bar container is labelled "ours (mean ± std)" and its paper line "paper"."""
    from matplotlib.figure import Figure

    cols = min(len(layout.columns), 3) or 1
    rows = max(1, math.ceil(len(layout.columns) / cols))
    fig = Figure(figsize=(4.4 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[len(layout.columns):]:
        ax.set_visible(False)
    for i, (ax, col) in enumerate(zip(axes, layout.columns)):
        methods = [r for r in layout.rows if layout.entry(r, i) is not None]
        entries = [layout.entry(r, i) for r in methods]
        xs = list(range(len(methods)))
        ours = [(x, e.mean, e.std if finite(e.std) else 0.0) for x, e in zip(xs, entries) if finite(e.mean)]
        reported = [(x, e.reported) for x, e in zip(xs, entries) if finite(e.reported)]
        if ours:
            ax.errorbar([o[0] for o in ours], [o[1] for o in ours], yerr=[o[2] for o in ours], fmt="o", ms=5,
                        capsize=3, color="C0", label="ours (mean ± std)")
        if reported:
            ax.plot([p[0] for p in reported], [p[1] for p in reported], "x", ms=8, mew=2, color="C3", label="paper")
        ax.set_xticks(xs, methods, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(xs) - 0.4)
        ax.set_title(col.title, fontsize=10)
        ax.set_ylabel(f"{MEASURES[layout.measure]} top-{col.metric[-1]} (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{layout.grid}: ours against the paper")
    return fig


def figure_vs_reported(layout: ReportedTable, out_dir: Path) -> list[Path]:
    """``out_dir/<grid>-vs-paper.png`` and ``.pdf`` (nothing when the table has no columns)."""
    if not layout.columns:
        return []
    fig = draw_vs_reported(layout)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [inside(out_dir, f"{layout.grid}-vs-paper{ext}", "grid") for ext in (".png", ".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150, metadata={"Title": f"{layout.grid}: ours against the paper"})
    return paths
