"""Tables and figures from run folders on disk (pandas, matplotlib; never the trainer).

A grid's runs live in ``results/runs/<grid>/<cell-dir>/`` (cell.json, result.json, metrics.jsonl,
last.pt). ``collect`` turns them into one row per (dataset, model, method label) with mean, std
and n of final and best-epoch top-1, the paper's number, the difference and Welch's t-test against
the baseline, written as ``results/<grid>.md|.csv|.tex``. ``make_figures`` draws Figures 2, 3, 5
and 6 of the paper under ``results/figures/`` as PNG and PDF.

Usage::

    python -m we.report collect table2
    python -m we.report figures
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "Run", "load_runs", "read_metrics", "summarize_runs", "collect", "make_figures",
    "figure_convergence", "figure_selection_rate", "figure_l1_norms", "figure_alpha",
    "average_l1_norms", "format_markdown", "format_latex", "problems", "table_number", "welch_p", "cli",
]

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO / "results" / "paper" / "reported-results.csv"
BASELINE = "baseline"
PAPER_RUNS = 5  # "The experiments are run for 5 times and the mean results are reported" (4.1.2)
CORE_LABELS = ("dataset", "model", "method", "seed")
DATASET_ORDER = ("cifar10", "cifar100", "imagenet")
ALPHA_LABEL = re.compile(r"^we_alpha_(\d+(?:\.\d*)?)$")
SETTINGS_CIFAR = dict(r_hat=0.05, beta=2.5, eta=15.0, milestones=(60, 120))  # section 4.1.2
SETTINGS_IMAGENET = dict(r_hat=0.05, beta=2.0, eta=8.0, milestones=(30, 60))


# ---------------------------------------------------------------------------------------------
# Reading run folders
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One run folder as far as it could be read."""

    path: Path
    labels: dict[str, Any]
    status: str  # complete | diverged | failed | running | unreadable | any other status written
    result: dict[str, Any] = field(default_factory=dict)
    message: str = ""  # error line (failed), divergence note, or why result.json could not be read
    problems: list[str] = field(default_factory=list)  # other files that could not be read

    @property
    def counted(self) -> bool:
        """Whether the run enters the means: complete with a finite final top-1."""
        return self.status == "complete" and _finite(self.result.get("final_top1"))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _read_json(path: Path) -> tuple[Optional[dict[str, Any]], str]:
    """(content, "") or (None, one-line reason); a missing file gives (None, "")."""
    if not path.exists():
        return None, ""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if not isinstance(obj, dict):
        return None, f"{path}: unreadable (expected a JSON object, found {type(obj).__name__})"
    return obj, ""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch rows of ``metrics.jsonl`` (lines that do not parse are skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return rows
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def _labels_from_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in CORE_LABELS if k in config}


def _read_config_yaml(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    try:
        import yaml

        obj = yaml.safe_load(path.read_text())
    except Exception:  # noqa: BLE001 - a label source of last resort
        return {}
    return obj if isinstance(obj, dict) else {}


def _summary_from_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in rows if _finite(r.get("test_top1"))]
    if not rows:
        return {}
    last, best = rows[-1], max(rows, key=lambda r: r["test_top1"])
    return {"final_top1": last["test_top1"], "final_top5": last.get("test_top5"),
            "best_top1": best["test_top1"], "best_top5": best.get("test_top5"),
            "best_epoch": best.get("epoch"), "epochs_done": last.get("epoch")}


def _read_run(run_dir: Path) -> Run:
    problems: list[str] = []
    cell, why = _read_json(run_dir / "cell.json")
    if why:
        problems.append(why)
    result, why_result = _read_json(run_dir / "result.json")

    labels: dict[str, Any] = {}
    if cell:
        labels.update(_labels_from_config(cell.get("config") or {}))
        labels.update(cell.get("labels") or {})
    if not all(k in labels for k in ("dataset", "model", "method")):
        fallback = _labels_from_config((result or {}).get("config") or {}) or _labels_from_config(
            _read_config_yaml(run_dir))
        labels = {**fallback, **labels}

    if why_result:
        return Run(run_dir, labels, "unreadable", message=why_result, problems=problems)
    if result is None:
        return Run(run_dir, labels, "running", problems=problems)
    status = str(result.get("status") or "running")
    message = ""
    if status == "failed":
        error = str(result.get("error") or "no error recorded")
        message = error.strip().splitlines()[0] if error.strip() else "no error recorded"
    elif status == "diverged":
        epoch = result.get("diverged_epoch")
        message = f"at epoch {epoch}" if epoch is not None else ""
        if result.get("error"):
            message += f": {str(result['error']).strip().splitlines()[0]}"
    elif status == "complete" and not _finite(result.get("final_top1")):
        result = {**_summary_from_metrics(read_metrics(run_dir)), **{
            k: v for k, v in result.items() if v is not None}}
        if not _finite(result.get("final_top1")):
            return Run(run_dir, labels, "unreadable", result,
                       f"{run_dir / 'result.json'}: complete but holds no final_top1", problems)
    return Run(run_dir, labels, status, result, message, problems)


def _run_dirs(grid_dir: Path) -> list[Path]:
    found: set[Path] = set()
    for name in ("cell.json", "result.json", "metrics.jsonl"):
        found.update(p.parent for p in grid_dir.rglob(name))
    return sorted(found)


def load_runs(grid_dir: Path) -> list[Run]:
    """The grid's run folders: those its grid.json lists when it has one (so folders left by an
    earlier version of the grid are not mixed in), else every folder under ``grid_dir`` holding
    cell.json, result.json or metrics.jsonl."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        return []
    try:
        cells = json.loads((grid_dir / "grid.json").read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return [_read_run(d) for d in _run_dirs(grid_dir)]
    return [_read_run(grid_dir / name) for name in sorted(set(cells.values())) if (grid_dir / name).exists()]


def _hashable(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (str, int, float, bool)):
        return v
    return json.dumps(v, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def table_number(grid_name: str) -> Optional[int]:
    """The paper table a grid reproduces, from names like ``table2`` or ``table2-official``."""
    m = re.match(r"^table(\d+)(?![0-9])", grid_name)
    return int(m.group(1)) if m else None


def load_paper(paper_csv: Path) -> pd.DataFrame:
    """The paper's reported numbers (empty when the file is missing or unreadable)."""
    cols = ["table", "dataset", "model", "method", "top1", "top5"]
    try:
        df = pd.read_csv(paper_csv)
    except (OSError, ValueError, pd.errors.ParserError):
        return pd.DataFrame(columns=cols)
    if not set(cols) <= set(df.columns):
        return pd.DataFrame(columns=cols)
    for c in ("dataset", "model", "method"):
        df[c] = df[c].astype(str).str.strip().str.lower()
    return df[cols]


def _paper_lookup(paper: pd.DataFrame, table: Optional[int], dataset: str, model: str,
                  method: str) -> tuple[float, float, float]:
    """(table, top1, top5) of the paper's row; the grid's table first, then any table."""
    hit = paper[(paper.dataset == str(dataset).lower()) & (paper.model == str(model).lower())
                & (paper.method == str(method).lower())]
    if table is not None and (hit.table == table).any():
        hit = hit[hit.table == table]
    if hit.empty:
        return (math.nan, math.nan, math.nan)
    row = hit.iloc[0]
    return float(row.table), float(row.top1), float(row.top5)


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    a = np.asarray([v for v in values if _finite(v)], dtype=float)
    n = len(a)
    mean = float(a.mean()) if n else math.nan
    std = float(a.std(ddof=1)) if n >= 2 else math.nan
    return mean, std, n


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch's t-test p-value (NaN when either side has fewer than two values)."""
    from scipy import stats

    a = [v for v in a if _finite(v)]
    b = [v for v in b if _finite(v)]
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _method_sort_key(method: str, paper_methods: list[str]) -> tuple:
    if method == BASELINE:
        return (0, 0, 0.0, method)
    m = ALPHA_LABEL.match(method)
    if m:
        return (2, 0, float(m.group(1)), method)
    if method in paper_methods:
        return (1, paper_methods.index(method), 0.0, method)
    return (3, 0, 0.0, method)


def _order(values: Iterable[str], preferred: Sequence[str]) -> dict[str, int]:
    uniq = list(dict.fromkeys(values))
    ranked = sorted(uniq, key=lambda v: (preferred.index(v) if v in preferred else len(preferred), str(v)))
    return {v: i for i, v in enumerate(ranked)}


def summarize_runs(runs: list[Run], paper: pd.DataFrame, table: Optional[int] = None) -> pd.DataFrame:
    """One row per (dataset, model, other varying axes, method label) with statistics and paper numbers."""
    records = []
    for r in runs:
        rec = {k: _hashable(v) for k, v in r.labels.items() if k != "seed"}
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

    def values(rs: list[Run], metric: str) -> list[float]:
        return [r.result.get(metric) for r in rs if r.counted]

    rows = []
    for key, rs in groups.items():
        row: dict[str, Any] = dict(zip(keys, key))
        for metric in ("final_top1", "best_top1", "final_top5", "best_top5"):
            mean, std, n = _stats(values(rs, metric))
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
            if metric == "final_top1":
                row["n"] = n
        row["few_runs"] = row["n"] < PAPER_RUNS
        ptable, p1, p5 = _paper_lookup(paper, table, row["dataset"], row["model"], row["method"])
        row["paper_table"], row["paper_top1"], row["paper_top5"] = ptable, p1, p5
        row["diff_final_top1"] = row["final_top1_mean"] - p1
        row["diff_best_top1"] = row["best_top1_mean"] - p1
        row["diff_final_top5"] = row["final_top5_mean"] - p5
        row["diff_best_top5"] = row["best_top5_mean"] - p5
        base = _baseline_group(groups, keys, key)
        for metric in ("final_top1", "best_top1"):
            row[f"p_{metric}"] = (welch_p(values(rs, metric), values(base, metric))
                                  if base is not None and row["method"] != BASELINE else math.nan)
        status = Counter(r.status for r in rs)
        for s in ("failed", "diverged", "running", "unreadable"):
            row[f"n_{s}"] = status.get(s, 0)
        row["n_other"] = sum(v for s, v in status.items()
                             if s not in ("complete", "failed", "diverged", "running", "unreadable"))
        row["not_counted"] = ", ".join(f"{v} {s}" for s, v in sorted(status.items()) if s != "complete")
        rows.append(row)

    columns = [*keys, "n", "few_runs",
               "final_top1_mean", "final_top1_std", "best_top1_mean", "best_top1_std",
               "paper_table", "paper_top1", "diff_final_top1", "diff_best_top1",
               "p_final_top1", "p_best_top1",
               "final_top5_mean", "final_top5_std", "best_top5_mean", "best_top5_std",
               "paper_top5", "diff_final_top5", "diff_best_top5",
               "n_failed", "n_diverged", "n_running", "n_unreadable", "n_other", "not_counted"]
    df = pd.DataFrame(rows, columns=columns)
    if df.empty:
        return df
    paper_methods = list(dict.fromkeys(paper["method"])) if len(paper) else []
    paper_models = list(dict.fromkeys(paper["model"])) if len(paper) else []
    ds_rank = _order(df.dataset, DATASET_ORDER)
    model_rank = _order(df.model, paper_models)
    sort_keys = [(ds_rank[r["dataset"]], model_rank[r["model"]], *[str(r[k]) for k in extra],
                  _method_sort_key(str(r["method"]), paper_methods)) for r in rows]
    df = df.iloc[sorted(range(len(rows)), key=sort_keys.__getitem__)].reset_index(drop=True)
    df.attrs["axes"] = keys
    return df


def _baseline_group(groups: dict[tuple, list[Run]], keys: list[str], key: tuple) -> Optional[list[Run]]:
    """The baseline runs of the same dataset, model and other axes (or of the same dataset and
    model when exactly one baseline group exists for them)."""
    exact = tuple(BASELINE if k == "method" else v for k, v in zip(keys, key))
    if exact in groups:
        return groups[exact]
    i_ds, i_model, i_method = keys.index("dataset"), keys.index("model"), keys.index("method")
    same = [g for g in groups if g[i_method] == BASELINE and g[i_ds] == key[i_ds] and g[i_model] == key[i_model]]
    return groups[same[0]] if len(same) == 1 else None


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def _num(x: Any, digits: int = 2, sign: bool = False) -> str:
    if not _finite(x):
        return ""
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pm(mean: Any, std: Any, pm: str = " ± ") -> str:
    if not _finite(mean):
        return ""
    return f"{mean:.2f}{pm}{std:.2f}" if _finite(std) else f"{mean:.2f}"


def _p(x: Any) -> str:
    if not _finite(x):
        return ""
    return "<0.001" if x < 1e-3 else f"{x:.3f}"


def _n(n: int) -> str:
    return f"{n}*" if n < PAPER_RUNS else str(n)


def _display_rows(df: pd.DataFrame, pm: str, less: str = "<0.001") -> tuple[list[str], list[list[str]]]:
    axes = df.attrs.get("axes", ["dataset", "model", "method"])
    top5 = bool((df.dataset.astype(str).str.lower() == "imagenet").any())
    header = [*axes, "n", "final top-1", "best top-1", "paper top-1", "Δ final", "Δ best",
              "p final", "p best"]
    if top5:
        header += ["final top-5", "best top-5", "paper top-5", "Δ final top-5"]
    body = []
    for _, r in df.iterrows():
        cells = [str(r[k]) for k in axes]
        cells += [_n(int(r.n)), _pm(r.final_top1_mean, r.final_top1_std, pm),
                  _pm(r.best_top1_mean, r.best_top1_std, pm), _num(r.paper_top1),
                  _num(r.diff_final_top1, sign=True), _num(r.diff_best_top1, sign=True),
                  _p(r.p_final_top1).replace("<0.001", less), _p(r.p_best_top1).replace("<0.001", less)]
        if top5:
            is_in = str(r.dataset).lower() == "imagenet"
            cells += ([_pm(r.final_top5_mean, r.final_top5_std, pm), _pm(r.best_top5_mean, r.best_top5_std, pm),
                       _num(r.paper_top5), _num(r.diff_final_top5, sign=True)] if is_in else ["", "", "", ""])
        body.append(cells)
    return header, body


def _not_counted_lines(runs: list[Run]) -> list[str]:
    lines = []
    for r in runs:
        lines += r.problems
        if r.status in ("complete", "running"):
            continue
        if r.status == "unreadable":
            lines.append(r.message)
        elif r.status == "failed":
            lines.append(f"`{r.path}` failed: {r.message}")
        else:
            lines.append(f"`{r.path}` {r.status} {r.message}".rstrip())
    return lines


def problems(runs: list[Run]) -> list[str]:
    """One line per file that could not be read."""
    return [line for r in runs for line in [*r.problems, *([r.message] if r.status == "unreadable" else [])]]


def format_markdown(grid_name: str, df: pd.DataFrame, runs: list[Run]) -> str:
    """The grid's table in GitHub markdown, with notes and the runs that were not counted."""
    status = Counter(r.status for r in runs)
    out = [f"# {grid_name}", "",
           f"{len(runs)} runs: " + (", ".join(f"{v} {s}" for s, v in sorted(status.items())) or "none found"), ""]
    if df.empty:
        out += ["No runs to tabulate.", ""]
    else:
        header, body = _display_rows(df, " ± ")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---" if i < len(df.attrs.get("axes", [])) else "---:"
                                  for i in range(len(header))) + "|")
        out += ["| " + " | ".join(c if c else "–" for c in cells) + " |" for cells in body]
        out += ["",
                "final: last epoch; best: best epoch (as the authors' script reports); mean ± sample std over "
                "complete runs. Δ: mean minus the paper. p: Welch's t-test against the baseline of the same "
                f"dataset and model (blank when either side has fewer than 2 runs). `*`: n < {PAPER_RUNS}, "
                f"fewer runs than the paper's {PAPER_RUNS}."]
        if (df.n_failed + df.n_diverged + df.n_running + df.n_unreadable + df.n_other).any():
            out += ["", "Runs not counted, per cell:", ""]
            axes = df.attrs.get("axes", [])
            for _, r in df[df.not_counted != ""].iterrows():
                out.append(f"- {' / '.join(str(r[k]) for k in axes)}: {r.not_counted}")
    lines = _not_counted_lines(runs)
    if lines:
        out += ["", "## Failed, diverged and unreadable runs", ""] + [f"- {line}" for line in lines]
    return "\n".join(out) + "\n"


def _tex_escape(s: str) -> str:
    s = s.replace("\\", "\0")
    for a, b in (("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"),
                 ("}", r"\}"), ("~", r"\textasciitilde{}"), ("Δ", r"$\Delta$")):
        s = s.replace(a, b)
    return s.replace("\0", r"\textbackslash{}")


def format_latex(grid_name: str, df: pd.DataFrame) -> str:
    """The grid's table as a booktabs tabular."""
    if df.empty:
        return f"% {grid_name}: no runs to tabulate\n"
    header, body = _display_rows(df, r"$\pm$", less=r"$<$0.001")
    n_axes = len(df.attrs.get("axes", []))
    spec = "l" * n_axes + "r" * (len(header) - n_axes)
    lines = [f"% {grid_name}: mean $\\pm$ std over complete runs; * n < {PAPER_RUNS}; "
             "p: Welch's t-test vs the baseline",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_tex_escape(h) for h in header) + r" \\", r"\midrule"]
    prev = None
    for (_, r), cells in zip(df.iterrows(), body):
        group = (r.dataset, r.model)
        if prev is not None and group != prev:
            lines.append(r"\midrule")
        prev = group
        escaped = [_tex_escape(c) if i < n_axes else c.replace("*", r"$^*$") for i, c in enumerate(cells)]
        lines.append(" & ".join(escaped) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# collect
# ---------------------------------------------------------------------------------------------
def collect(grid_name: str, runs_root: Path = Path("results/runs"), out_dir: Path = Path("results"),
            paper_csv: Path = PAPER_CSV, *, figures: bool = True, echo: bool = True) -> dict[str, Any]:
    """Tabulate one grid into ``out_dir/<grid>.md|.csv|.tex`` (and its convergence figure).

    Returns ``{"markdown", "csv", "tex": Path, "figures": [Path], "table": DataFrame,
    "runs": [Run], "problems": [str]}``. Raises FileNotFoundError when the grid folder is missing.
    """
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    grid_dir = runs_root / grid_name
    if not grid_dir.is_dir():
        raise FileNotFoundError(f"{grid_dir}: no such grid folder")
    runs = load_runs(grid_dir)
    paper = load_paper(Path(paper_csv))
    df = summarize_runs(runs, paper, table_number(grid_name))

    out_dir.mkdir(parents=True, exist_ok=True)
    md = format_markdown(grid_name, df, runs)
    paths = {"markdown": out_dir / f"{grid_name}.md", "csv": out_dir / f"{grid_name}.csv",
             "tex": out_dir / f"{grid_name}.tex"}
    paths["markdown"].write_text(md)
    df.to_csv(paths["csv"], index=False, float_format="%.6g")
    paths["tex"].write_text(format_latex(grid_name, df))

    written: list[Path] = []
    if figures:
        written += figure_convergence(grid_name, runs, out_dir / "figures")
        written += figure_alpha(grid_name, runs, out_dir / "figures")
    unreadable = problems(runs)
    for line in unreadable:
        print(line, file=sys.stderr)
    if echo:
        print(md, end="")
    return {**paths, "figures": written, "table": df, "runs": runs, "problems": unreadable}


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
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
    return [k for k in keys if len({_hashable(r.labels.get(k)) for r in runs}) > 1]


def _panel_rank(key: tuple[str, str]) -> tuple:
    dataset = key[0]
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), key)


def figure_convergence(grid_name: str, runs: list[Run], out_dir: Path) -> list[Path]:
    """Figure 5: test top-1 against epoch, mean and a std band per method, one panel per (dataset, model).

    Complete and still-running runs are drawn; nothing is written when no run has metrics.
    """
    curves: dict[tuple[str, str], dict[str, list[pd.Series]]] = {}
    lrs: dict[tuple[str, str], pd.Series] = {}
    varying = _varying_axes(runs)
    for r in runs:
        if r.status not in ("complete", "running"):
            continue
        rows = read_metrics(r.path)
        if not rows:
            continue
        m = pd.DataFrame(rows)
        if "test_top1" not in m:
            continue
        m = m.drop_duplicates("epoch", keep="last").set_index("epoch").sort_index()
        label = str(r.labels.get("method", "?")) + "".join(f", {k}={r.labels.get(k, '')}" for k in varying)
        curves.setdefault(_panel_key(r), {}).setdefault(label, []).append(
            pd.to_numeric(m["test_top1"], errors="coerce"))
        if "lr" in m and _panel_key(r) not in lrs:
            lrs[_panel_key(r)] = pd.to_numeric(m["lr"], errors="coerce")
    if not curves:
        return []
    panels = sorted(curves, key=_panel_rank)
    fig, axes = _new_figure(len(panels))
    for ax, key in zip(axes, panels):
        methods = sorted(curves[key], key=lambda m: (_method_sort_key(m.split(",")[0], []), m))
        for method in methods:
            frame = pd.concat(curves[key][method], axis=1)
            mean = frame.mean(axis=1)
            n = frame.notna().sum(axis=1)
            line, = ax.plot(mean.index, mean.values, lw=1.2, label=f"{method} (n={frame.shape[1]})")
            if frame.shape[1] > 1:
                std = frame.std(axis=1, ddof=1).where(n > 1)
                ax.fill_between(mean.index, (mean - std).values, (mean + std).values,
                                color=line.get_color(), alpha=0.2, lw=0)
        lr = lrs.get(key)
        if lr is not None:
            for epoch in lr.index[1:][(lr.values[1:] < lr.values[:-1] * 0.999)]:
                ax.axvline(epoch, color="0.6", ls=":", lw=0.8)
        ax.set_title(f"{key[1]} on {key[0]}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        _zoom_accuracy(ax, curves[key])
    title = f"Convergence curves ({grid_name})"
    fig.suptitle(title)
    return _save(fig, out_dir, f"fig5-convergence-{_safe(grid_name)}", title)


def _zoom_accuracy(ax: Any, curves: dict[str, list[pd.Series]]) -> None:
    """Show the last 60% of the accuracy range so that late-stage differences stay visible."""
    values = pd.concat([s for ss in curves.values() for s in ss]).dropna()
    if len(values) > 10:
        hi = float(values.max())
        lo = float(np.percentile(values, 10))
        if hi > lo:
            ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.05 * (hi - lo))


def _selection_rate_fn() -> Any:
    from we import selection_rate  # the WE core (Eq. 2)

    return selection_rate


def figure_selection_rate(out_dir: Path) -> list[Path]:
    """Figure 3: the global selection rate r of Eq. 2 per epoch for the CIFAR and ImageNet settings."""
    selection_rate = _selection_rate_fn()
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


def average_l1_norms(state_dict: dict[str, Any]) -> list[tuple[str, float]]:
    """Per Conv2d weight (4-D tensor): mean over filters of sum|w| / weight.shape[1] (Eq. 1)."""
    out = []
    for name, w in state_dict.items():
        if name.endswith("weight") and getattr(w, "ndim", 0) == 4:
            w = w.detach().float().cpu()
            out.append((name, float((w.abs().flatten(1).sum(1) / w.shape[1]).mean())))
    return out


def _find_trained_checkpoint(runs_root: Path, dataset: str, model: str) -> Optional[Path]:
    """A complete run's last.pt for (dataset, model): baseline preferred, then the most epochs."""
    candidates = []
    if not Path(runs_root).is_dir():
        return None
    for ckpt in Path(runs_root).rglob("last.pt"):
        run = _read_run(ckpt.parent)
        if run.status != "complete":
            continue
        if str(run.labels.get("dataset")) != dataset or str(run.labels.get("model")) != model:
            continue
        epochs = run.result.get("epochs_done") or 0
        candidates.append((run.labels.get("method") != BASELINE, -(epochs if _finite(epochs) else 0), str(ckpt), ckpt))
    return min(candidates)[-1] if candidates else None


def _load_state_dict(path: Path) -> Optional[dict[str, Any]]:
    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - checkpoints also hold RNG states and plain objects
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        print(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})", file=sys.stderr)
        return None
    state = obj.get("model") if isinstance(obj, dict) else None
    return state if isinstance(state, dict) else None


def figure_l1_norms(runs_root: Path, out_dir: Path, dataset: str = "cifar10", model: str = "mobilenetv2",
                    num_classes: int = 10) -> list[Path]:
    """Figure 2: mean average l1 norm per conv layer, from a trained checkpoint when one exists,
    else at initialisation (seed 0), said so in the title."""
    state, source = None, ""
    ckpt = _find_trained_checkpoint(Path(runs_root), dataset, model)
    if ckpt is not None:
        state = _load_state_dict(ckpt)
        source = f"trained: {ckpt.parent}"
    if state is None:
        import torch

        import models

        torch.manual_seed(0)
        state = models.create(model, num_classes=num_classes).state_dict()
        source = "at initialisation (seed 0; no trained checkpoint found)"
    norms = average_l1_norms(state)
    fig, (ax,) = _new_figure(1, width=7.0, height=3.4)
    ax.bar(np.arange(1, len(norms) + 1), [v for _, v in norms], width=0.8)
    ax.set_xlabel("convolutional layer")
    ax.set_ylabel("mean of average ℓ1 norms")
    ax.set_xlim(0.3, len(norms) + 0.7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{model} on {dataset}, {source}", fontsize=9)
    fig.suptitle("Mean values of the average ℓ1 norm (Eq. 1) per layer")
    return _save(fig, out_dir, f"fig2-l1-norms-{model}-{dataset}",
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
        stats = [_stats(v) for _, v in fixed]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] if _finite(s[1]) else 0.0 for s in stats],
                    marker="o", ms=4, capsize=2, lw=1.2, label="fixed α")
        for method, style, label in (("we", dict(color="C3", ls="--"), "adaptive α (WE)"),
                                     (BASELINE, dict(color="0.4", ls=":"), "baseline")):
            if method in by_method:
                mean, std, n = _stats(by_method[method])
                ax.axhline(mean, lw=1.2, label=f"{label}: {mean:.2f} (n={n})", **style)
                if _finite(std):
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
    """Every figure there is data for: Figures 5 and 6 per grid, Figures 2 and 3 always.

    Figures go to ``out_dir/figures``; returns the paths written.
    """
    runs_root, fig_dir = Path(runs_root), Path(out_dir) / "figures"
    written: list[Path] = []
    grids = sorted(p for p in runs_root.iterdir() if p.is_dir()) if runs_root.is_dir() else []
    for grid_dir in grids:
        runs = load_runs(grid_dir)
        written += figure_convergence(grid_dir.name, runs, fig_dir)
        written += figure_alpha(grid_dir.name, runs, fig_dir)
    written += figure_l1_norms(runs_root, fig_dir)
    try:
        written += figure_selection_rate(fig_dir)
    except ImportError as err:
        print(f"figure 3 skipped: the WE core does not provide selection_rate ({err})", file=sys.stderr)
    return written


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def cli(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m we.report", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_collect = sub.add_parser("collect", help="tabulate one grid into results/<grid>.md|.csv|.tex")
    p_collect.add_argument("grid", help="grid name (a folder under --runs-root)")
    p_collect.add_argument("--paper-csv", type=Path, default=PAPER_CSV)
    p_collect.add_argument("--no-figures", action="store_true", help="skip the grid's figures")
    p_fig = sub.add_parser("figures", help="draw every figure there is data for under results/figures")
    for p in (p_collect, p_fig):
        p.add_argument("--runs-root", type=Path, default=Path("results/runs"))
        p.add_argument("--out-dir", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    if args.command == "collect":
        try:
            out = collect(args.grid, args.runs_root, args.out_dir, args.paper_csv, figures=not args.no_figures)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print("wrote " + ", ".join(str(out[k]) for k in ("markdown", "csv", "tex"))
              + "".join(f", {p}" for p in out["figures"]))
        return 0
    paths = make_figures(args.runs_root, args.out_dir)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
