"""Tables and figures from run folders on disk (pandas, matplotlib; never the trainer).

A grid's runs live in ``results/runs/<grid>/<cell-dir>/`` (cell.json, result.json, metrics.jsonl,
last.pt). ``collect`` turns them into one row per (dataset, model, method label) with mean, std
and n of final and best-epoch top-1, the paper's number, the difference and Welch's t-test against
the baseline, written as ``results/<grid>.md|.csv|.tex`` (a paper table's grid also in the paper's
layout, ``results/<grid>-paper.md|.tex``, with a figure of ours against the paper). ``make_figures``
draws Figures 2, 3, 5 and 6 of the paper under ``results/figures/`` as PNG and PDF.

runs (reading run folders, through we.rundir), stats (the statistics every report shares), text (escaping
for LaTeX and Markdown), tables (the table, formatting, collect), reported_tables (ours beside the
reported numbers in the paper's table layout, and its figure), figures, cli.

Usage::

    python -m we.report collect table2
    python -m we.report figures
"""
from we.report.cli import cli
from we.report.figures import (average_l1_norms, draw_convergence, figure_alpha, figure_convergence,
                               figure_l1_norms, figure_selection_rate, make_figures)
from we.report.reported_tables import (ReportedTable, draw_vs_reported, figure_vs_reported, layout_latex,
                                       layout_markdown, reported_table)
from we.report.runs import Run, load_runs, problems, read_run
from we.report.stats import mean_std, mean_std_n, welch_p
from we.report.tables import collect, format_latex, format_markdown, summarize_runs, table_number
from we.rundir import read_metrics

__all__ = [
    "Run", "load_runs", "read_run", "read_metrics", "mean_std", "mean_std_n", "summarize_runs", "collect", "make_figures",
    "figure_convergence", "figure_selection_rate", "figure_l1_norms", "figure_alpha",
    "average_l1_norms", "draw_convergence", "ReportedTable", "reported_table", "layout_markdown", "layout_latex",
    "draw_vs_reported", "figure_vs_reported", "format_markdown", "format_latex", "problems", "table_number", "welch_p",
    "cli",
]
