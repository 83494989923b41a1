"""The tables of a grid: one row per (dataset, model, other varying axes, method label).

``collect`` turns a grid's run folders into rows with mean, std and n of final and best-epoch top-1,
the paper's number, the difference and Welch's t-test against the baseline, written as
``results/<grid>.md|.csv|.tex`` (with the grid's Figures 5 and 6); a paper table's grid also in the
paper's layout (``results/<grid>-paper.md|.tex`` and its figure against the paper, see reported_tables).
"""
from __future__ import annotations

import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from we.files import REPO_ROOT
from we.report.figures import figure_alpha, figure_convergence
from we.report.reported_tables import REPORTED_RUNS, figure_vs_reported, layout_latex, layout_markdown, reported_table
from we.report.runs import (CORE_LABELS, DATASET_ORDER, JobState, Run, hashable_label, method_sort_key,
                            grid_run_folders, problems, read_run, run_evolution)
from we.report.stats import BASELINE, baseline_group, finite, mean_std_n, welch_p
from we.report.text import latex, markdown, markdown_code
from we.rundir import inside

REPORTED_CSV = REPO_ROOT / "results" / "paper" / "reported-results.csv"
# The kinds of units WE evolves (we.core KINDS), as the table names them; conv biases only when some moved.
EVOLVED_NAMES = {"conv_weight": "conv filters", "conv_bias": "conv biases", "bn_weight": "BN weights",
                 "bn_bias": "BN biases"}
_OUTPUTS = {"markdown": ".md", "csv": ".csv", "tex": ".tex", "paper_markdown": "-paper.md", "paper_tex": "-paper.tex"}


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def table_number(grid_name: str) -> Optional[int]:
    """The paper table a grid reproduces, from names like ``table2`` or ``table2-official``."""
    m = re.match(r"^table(\d+)(?![0-9])", grid_name)
    return int(m.group(1)) if m else None


def load_reported(reported_csv: Path) -> pd.DataFrame:
    """The paper's reported numbers (empty when the file is missing or unreadable)."""
    cols = ["table", "dataset", "model", "method", "top1", "top5"]
    try:
        df = pd.read_csv(reported_csv)
    except (OSError, ValueError, pd.errors.ParserError):
        return pd.DataFrame(columns=cols)
    if not set(cols) <= set(df.columns):
        return pd.DataFrame(columns=cols)
    for c in ("dataset", "model", "method"):
        df[c] = df[c].astype(str).str.strip().str.lower()
    return df[cols]


def _reported_lookup(reported: pd.DataFrame, table: Optional[int], dataset: str, model: str,
                     method: str) -> tuple[float, float, float]:
    """(table, top1, top5) of the paper's row; the grid's table first, then any table."""
    hit = reported[(reported.dataset == str(dataset).lower()) & (reported.model == str(model).lower())
                   & (reported.method == str(method).lower())]
    if table is not None and (hit.table == table).any():
        hit = hit[hit.table == table]
    if hit.empty:
        return (math.nan, math.nan, math.nan)
    row = hit.iloc[0]
    return float(row.table), float(row.top1), float(row.top5)


def _order(values: Iterable[str], preferred: Sequence[str]) -> dict[str, int]:
    uniq = list(dict.fromkeys(values))
    ranked = sorted(uniq, key=lambda v: (preferred.index(v) if v in preferred else len(preferred), str(v)))
    return {v: i for i, v in enumerate(ranked)}


def summarize_runs(runs: list[Run], reported: pd.DataFrame, table: Optional[int] = None) -> pd.DataFrame:
    """One row per (dataset, model, other varying axes, method label) with statistics and paper numbers."""
    records = []
    for r in runs:
        rec = {k: hashable_label(v) for k, v in r.labels.items() if k != "seed"}
        for k in ("dataset", "model", "method"):
            rec.setdefault(k, "?")
        rec["_run"] = r
        records.append(rec)
    extra = sorted({k for rec in records for k in rec if k not in CORE_LABELS and k != "_run"})
    for rec in records:
        for k in extra:
            rec.setdefault(k, "")
    # Axes that are constant over the grid carry no information in the table.
    extra = [k for k in extra if len({rec[k] for rec in records}) > 1]
    keys = ["dataset", "model", *extra, "method"]

    groups: dict[tuple, list[Run]] = {}
    for rec in records:
        groups.setdefault(tuple(rec[k] for k in keys), []).append(rec["_run"])

    rows = [_group_row(key, rs, groups, keys, reported, table) for key, rs in groups.items()]

    columns = [*keys, "n", "few_runs",
               "final_top1_mean", "final_top1_std", "best_top1_mean", "best_top1_std",
               "reported_table", "reported_top1", "diff_final_top1", "diff_best_top1",
               "p_final_top1", "p_best_top1", "we_steps_mean", *[f"evolved_{k}_mean" for k in EVOLVED_NAMES],
               "final_top5_mean", "final_top5_std", "best_top5_mean", "best_top5_std",
               "reported_top5", "diff_final_top5", "diff_best_top5",
               "n_failed", "n_diverged", "n_running", "n_unreadable", "n_other", "partial_top1_mean", "partial_epoch",
               "not_counted"]
    df = pd.DataFrame(rows, columns=columns)
    if df.empty:
        return df
    reported_methods = list(dict.fromkeys(reported["method"])) if len(reported) else []
    reported_models = list(dict.fromkeys(reported["model"])) if len(reported) else []
    ds_rank = _order(df.dataset, DATASET_ORDER)
    model_rank = _order(df.model, reported_models)
    sort_keys = [(ds_rank[r["dataset"]], model_rank[r["model"]], *[str(r[k]) for k in extra],
                  method_sort_key(str(r["method"]), reported_methods)) for r in rows]
    df = df.iloc[sorted(range(len(rows)), key=sort_keys.__getitem__)].reset_index(drop=True)
    df.attrs["axes"] = keys
    return df


def _values(runs: Sequence[Run], metric: str) -> list[float]:
    return [r.result.get(metric) for r in runs if r.counted]


def _group_row(key: tuple, rs: list[Run], groups: dict[tuple, list[Run]], keys: list[str],
               reported: pd.DataFrame, table: Optional[int]) -> dict[str, Any]:
    """The table row of the group `key` (its values of `keys`): statistics, paper numbers, p-values, the runs
    not counted and an unfinished group's latest epoch."""
    row: dict[str, Any] = dict(zip(keys, key))
    for metric in ("final_top1", "best_top1", "final_top5", "best_top5"):
        mean, std, n = mean_std_n(_values(rs, metric))
        row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        if metric == "final_top1":
            row["n"] = n
    row["few_runs"] = row["n"] < REPORTED_RUNS
    ptable, p1, p5 = _reported_lookup(reported, table, row["dataset"], row["model"], row["method"])
    row["reported_table"], row["reported_top1"], row["reported_top5"] = ptable, p1, p5
    row["diff_final_top1"] = row["final_top1_mean"] - p1
    row["diff_best_top1"] = row["best_top1_mean"] - p1
    row["diff_final_top5"] = row["final_top5_mean"] - p5
    row["diff_best_top5"] = row["best_top5_mean"] - p5
    base = baseline_group(groups, keys, key)
    for metric in ("final_top1", "best_top1"):
        row[f"p_{metric}"] = (welch_p(_values(rs, metric), _values(base, metric))
                              if base is not None and row["method"] != BASELINE else math.nan)
    row.update(evolution_columns([r for r in rs if r.counted]))
    status = Counter(r.status for r in rs)
    for s in ("failed", "diverged", "running", "unreadable"):
        row[f"n_{s}"] = status.get(s, 0)
    row["n_other"] = sum(v for s, v in status.items()
                         if s not in ("complete", "failed", "diverged", "running", "unreadable"))
    row["partial_top1_mean"], row["partial_epoch"] = partial_summary(rs)
    row["not_counted"] = ", ".join(f"{v} {s}" for s, v in sorted(status.items()) if s != "complete")
    if row["partial_epoch"]:
        row["not_counted"] += f" (latest: {row['partial_epoch']}, partial)"
    return row


def partial_summary(runs: Sequence[Run]) -> tuple[float, str]:
    """(mean latest test top-1, "epoch 3/4") of a group's unfinished runs that trained an epoch; (nan, "")
    when there is none."""
    partial = [r.partial for r in runs if r.partial]
    if not partial:
        return math.nan, ""
    mean, _, _ = mean_std_n([p.get("top1") for p in partial])
    low, high = min(p["epoch"] for p in partial), max(p["epoch"] for p in partial)
    totals = {p.get("epochs") for p in partial}
    total = f"/{totals.pop()}" if len(totals) == 1 and None not in totals else ""
    return mean, f"epoch {low}{total}" if low == high else f"epochs {low}-{high}{total}"


def evolution_columns(runs: list[Run]) -> dict[str, float]:
    """Mean over `runs` of WE's steps and of its units evolved per kind over each run (NaN for a method
    without WE)."""
    records = [e for e in map(run_evolution, runs) if e is not None]
    columns = {"we_steps_mean": mean_std_n([len(e.step_epochs) for e in records])[0]}
    for kind in EVOLVED_NAMES:
        columns[f"evolved_{kind}_mean"] = mean_std_n([e.evolved.get(kind) for e in records])[0]
    return columns


def shown_kinds(df: pd.DataFrame) -> list[str]:
    """The kinds whose evolved units the table shows: none when no run stepped WE; conv biases only where
    some moved."""
    if not df["we_steps_mean"].apply(finite).any():
        return []
    return [k for k in EVOLVED_NAMES if k != "conv_bias" or (df[f"evolved_{k}_mean"].fillna(0) > 0).any()]


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def _num(x: Any, digits: int = 2, sign: bool = False) -> str:
    if not finite(x):
        return ""
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pm(mean: Any, std: Any, pm: str = " ± ") -> str:
    if not finite(mean):
        return ""
    return f"{mean:.2f}{pm}{std:.2f}" if finite(std) else f"{mean:.2f}"


def _p(x: Any) -> str:
    if not finite(x):
        return ""
    return "<0.001" if x < 1e-3 else f"{x:.3f}"


def _n(n: int) -> str:
    return f"{n}*" if n < REPORTED_RUNS else str(n)


def _display_rows(df: pd.DataFrame, pm: str, less: str = "<0.001") -> tuple[list[str], list[list[str]]]:
    axes = df.attrs.get("axes", ["dataset", "model", "method"])
    top5 = bool((df.dataset.astype(str).str.lower() == "imagenet").any())
    kinds = shown_kinds(df)
    header = [*axes, "n", "final top-1", "best top-1", "paper top-1", "Δ final", "Δ best",
              "p final", "p best"]
    if kinds:
        header += ["WE steps", *[f"{EVOLVED_NAMES[k]} evolved" for k in kinds]]
    if top5:
        header += ["final top-5", "best top-5", "paper top-5", "Δ final top-5"]
    body = []
    for _, r in df.iterrows():
        cells = [str(r[k]) for k in axes]
        final = _pm(r.final_top1_mean, r.final_top1_std, pm)
        if not final and finite(r.partial_top1_mean):  # no complete run yet: the latest epoch, marked
            final = f"{r.partial_top1_mean:.2f} (partial, {r.partial_epoch})"
        cells += [_n(int(r.n)), final,
                  _pm(r.best_top1_mean, r.best_top1_std, pm), _num(r.reported_top1),
                  _num(r.diff_final_top1, sign=True), _num(r.diff_best_top1, sign=True),
                  _p(r.p_final_top1).replace("<0.001", less), _p(r.p_best_top1).replace("<0.001", less)]
        if kinds:
            cells += [_num(r.we_steps_mean, 1), *[_num(r[f"evolved_{k}_mean"], 1) for k in kinds]]
        if top5:
            is_in = str(r.dataset).lower() == "imagenet"
            cells += ([_pm(r.final_top5_mean, r.final_top5_std, pm), _pm(r.best_top5_mean, r.best_top5_std, pm),
                       _num(r.reported_top5), _num(r.diff_final_top5, sign=True)] if is_in else ["", "", "", ""])
        body.append(cells)
    return header, body


def _not_counted_lines(runs: list[Run]) -> list[str]:
    lines = []
    for r in runs:
        lines += [markdown(p) for p in r.problems]
        if r.status in ("complete", "running"):
            continue
        if r.status == "unreadable":
            lines.append(markdown(r.message))
        elif r.status == "failed":
            lines.append(f"{markdown_code(r.path)} failed: {markdown(r.message)}")
        else:
            lines.append(f"{markdown_code(r.path)} {markdown(r.status)} {markdown(r.message)}".rstrip())
    return lines


def format_markdown(grid_name: str, df: pd.DataFrame, runs: list[Run]) -> str:
    """The grid's table in GitHub markdown, with notes and the runs that were not counted."""
    status = Counter(r.status for r in runs)
    out = [f"# {markdown(grid_name)}", "",
           f"{len(runs)} runs: " + (", ".join(f"{v} {s}" for s, v in sorted(status.items())) or "none found"), ""]
    if df.empty:
        out += ["No runs to tabulate.", ""]
    else:
        header, body = _display_rows(df, " ± ")
        n_axes = len(df.attrs.get("axes", []))
        header = [markdown(h) if i < n_axes else h for i, h in enumerate(header)]
        body = [[markdown(c) if i < n_axes else c for i, c in enumerate(cells)] for cells in body]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---" if i < len(df.attrs.get("axes", [])) else "---:"
                                  for i in range(len(header))) + "|")
        out += ["| " + " | ".join(c if c else "–" for c in cells) + " |" for cells in body]
        out += ["",
                "final: last epoch; best: best epoch (as the authors' script reports); mean ± sample std over "
                "complete runs. Δ: mean minus the paper. p: Welch's t-test against the baseline of the same "
                f"dataset and model (blank when either side has fewer than 2 runs). `*`: n < {REPORTED_RUNS}, "
                f"fewer runs than the paper's {REPORTED_RUNS}."
                + (" partial: no run of the cell is complete yet; the mean test top-1 of its unfinished runs at their "
                   "latest epoch." if df.partial_epoch.astype(bool).any() else "")]
        if shown_kinds(df):
            out += ["", "WE steps and evolved units: what Weight Evolution did, per run (steps; units evolved per "
                    "kind summed over its steps), mean over complete runs; WE takes no step after the last "
                    "epoch. They count what WE changed, not whether it helped."]
        if (df.n_failed + df.n_diverged + df.n_running + df.n_unreadable + df.n_other).any():
            out += ["", "Runs not counted, per cell:", ""]
            axes = df.attrs.get("axes", [])
            for _, r in df[df.not_counted != ""].iterrows():
                out.append(f"- {' / '.join(markdown(r[k]) for k in axes)}: {markdown(r.not_counted)}")
    lines = _not_counted_lines(runs)
    if lines:
        out += ["", "## Failed, diverged and unreadable runs", ""] + [f"- {line}" for line in lines]
    return "\n".join(out) + "\n"


def format_latex(grid_name: str, df: pd.DataFrame) -> str:
    """The grid's table as a booktabs tabular."""
    if df.empty:
        return f"% {latex(grid_name)}: no runs to tabulate\n"
    header, body = _display_rows(df, r"$\pm$", less=r"$<$0.001")
    n_axes = len(df.attrs.get("axes", []))
    spec = "l" * n_axes + "r" * (len(header) - n_axes)
    lines = [f"% {latex(grid_name)}: mean $\\pm$ std over complete runs; * n < {REPORTED_RUNS}; "
             "p: Welch's t-test vs the baseline",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex(h) for h in header) + r" \\", r"\midrule"]
    prev = None
    for (_, r), cells in zip(df.iterrows(), body):
        group = (r.dataset, r.model)
        if prev is not None and group != prev:
            lines.append(r"\midrule")
        prev = group
        escaped = [latex(c) if i < n_axes else c.replace("*", r"$^*$") for i, c in enumerate(cells)]
        lines.append(" & ".join(escaped) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# collect
# ---------------------------------------------------------------------------------------------
def collect(grid_name: str, runs_root: Path = Path("results/runs"), out_dir: Path = Path("results"),
            reported_csv: Path = REPORTED_CSV, *, figures: bool = True, echo: bool = True,
            states: Optional[dict[Path, JobState]] = None) -> dict[str, Any]:
    """Tabulate one grid into ``out_dir/<grid>.md|.csv|.tex`` (and its convergence figure).

    A paper table's grid (``tableN``, ``tableN-official``) also gets ``<grid>-paper.md|.tex`` (the
    paper's layout) and ``figures/<grid>-vs-paper.png|.pdf``.

    Returns ``{"markdown", "csv", "tex": Path, ["paper_markdown", "paper_tex": Path,] "figures": [Path],
    "table": DataFrame, "runs": [Run], "problems": [str], ["reported_table": ReportedTable]}``. Raises
    FileNotFoundError when the grid folder is missing, InputError when the grid's name would put a file
    outside `runs_root` or `out_dir`. `states` (from ``python -m we.grid collect``) is the grid's state of
    its run folders; without it only the folders are read.
    """
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    grid_dir = inside(runs_root, grid_name, "grid")
    out = {kind: inside(out_dir, f"{grid_name}{suffix}", "grid") for kind, suffix in _OUTPUTS.items()}
    if not grid_dir.is_dir():
        raise FileNotFoundError(f"{grid_dir}: no such grid folder")
    dirs, grid_problems = grid_run_folders(grid_dir)
    runs = [read_run(d, (states or {}).get(Path(d))) for d in dirs]
    reported = load_reported(Path(reported_csv))
    df = summarize_runs(runs, reported, table_number(grid_name))

    out_dir.mkdir(parents=True, exist_ok=True)
    md = format_markdown(grid_name, df, runs)
    paths = {k: out[k] for k in ("markdown", "csv", "tex")}
    paths["markdown"].write_text(md)
    df.to_csv(paths["csv"], index=False, float_format="%.6g")
    paths["tex"].write_text(format_latex(grid_name, df))
    layout = reported_table(df, grid_name) if table_number(grid_name) is not None else None
    if layout is not None:
        paths["paper_markdown"], paths["paper_tex"] = out["paper_markdown"], out["paper_tex"]
        paths["paper_markdown"].write_text(layout_markdown(layout))
        paths["paper_tex"].write_text(layout_latex(layout))

    written: list[Path] = []
    if figures:
        written += figure_convergence(grid_name, runs, out_dir / "figures")
        written += figure_alpha(grid_name, runs, out_dir / "figures")
        if layout is not None:
            written += figure_vs_reported(layout, out_dir / "figures")
    unreadable = grid_problems + problems(runs)
    for line in unreadable:
        print(line, file=sys.stderr)
    if echo:
        print(md, end="")
    return {**paths, "figures": written, "table": df, "runs": runs, "problems": unreadable,
            **({"reported_table": layout} if layout is not None else {})}
