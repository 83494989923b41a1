"""Reading run folders: one ``Run`` per folder, its labels, status and per-epoch metrics.

A grid's runs live in ``results/runs/<grid>/<cell-dir>/`` (see we.rundir). Only the folders are read (never
a job scheduler): a run without result.json is `running` unless the caller, which may ask the executors
(``python -m we.grid collect``), says otherwise. Every file is read through we.rundir, so a broken or
hostile one is one line naming it, and the rest of the grid is still read. Also the label conventions
that the tables and the figures share.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from we.methods.we import COUNT_COLUMNS
from we.report.stats import BASELINE, finite
from we.rundir import (RESULT_FILE, TERMINAL, progress, read_cell, read_config, read_grid_file, read_metrics,
                       read_result, run_folders, summarize, tolerant)

CORE_LABELS = ("dataset", "model", "method", "seed")
DATASET_ORDER = ("cifar10", "cifar100", "imagenet")
ALPHA_LABEL = re.compile(r"^we_alpha_(\d+(?:\.\d*)?)$")
# A run's state as the grid sees it (we.grid.state.cell_state): (state, note, last submission record).
JobState = tuple[str, str, Optional[dict[str, Any]]]
# Unfinished runs whose latest epoch the tables show, marked partial.
PARTIAL_STATUSES = ("running", "queued", "interrupted")


@dataclass
class Run:
    """One run folder as far as it could be read."""

    path: Path
    labels: dict[str, Any]
    status: str  # complete | diverged | failed | running | unreadable | any other status written
    result: dict[str, Any] = field(default_factory=dict)
    message: str = ""  # error line (failed), divergence note, or why result.json could not be read
    problems: list[str] = field(default_factory=list)  # other files that could not be read
    partial: dict[str, Any] = field(default_factory=dict)  # an unfinished run's latest epoch: epoch, epochs, top1

    @property
    def counted(self) -> bool:
        """Whether the run enters the means: complete with a finite final top-1."""
        return self.status == "complete" and finite(self.result.get("final_top1"))


def hashable_label(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (str, int, float, bool)):
        return v
    return json.dumps(v, sort_keys=True)


def method_sort_key(method: str, reported_methods: list[str]) -> tuple:
    if method == BASELINE:
        return (0, 0, 0.0, method)
    m = ALPHA_LABEL.match(method)
    if m:
        return (2, 0, float(m.group(1)), method)
    if method in reported_methods:
        return (1, reported_methods.index(method), 0.0, method)
    return (3, 0, 0.0, method)


def _labels_from_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in CORE_LABELS if k in config}


def _labels(cell: dict[str, Any] | None, result: dict[str, Any] | None, run_dir: Path) -> dict[str, Any]:
    """A run's labels: cell.json's, else those of the config in result.json or config.yaml."""
    labels: dict[str, Any] = {}
    if cell:
        labels.update(_labels_from_config(cell.get("config") or {}))
        labels.update(cell.get("labels") or {})
    if not all(k in labels for k in ("dataset", "model", "method")):
        config = (result or {}).get("config")
        fallback = _labels_from_config(config if isinstance(config, dict) else {}) or _labels_from_config(
            tolerant(read_config, run_dir, {})[0])
        labels = {**fallback, **labels}
    return labels


def _message(status: str, result: dict[str, Any]) -> str:
    """The one line a failed or diverged run shows."""
    if status == "failed":
        error = str(result.get("error") or "no error recorded").strip()
        return error.splitlines()[0] if error else "no error recorded"
    if status == "diverged":
        epoch = result.get("diverged_epoch")
        message = f"at epoch {epoch}" if epoch is not None else ""
        if str(result.get("error") or "").strip():
            message += f": {str(result['error']).strip().splitlines()[0]}"
        return message
    return ""


def partial_epoch(run_dir: Path, cell: dict[str, Any] | None, result: dict[str, Any] | None) -> dict[str, Any]:
    """An unfinished run's latest epoch from its metrics rows: {"epoch", "epochs", "top1"} ({} before its first)."""
    rows, _ = tolerant(read_metrics, run_dir, [])
    if not rows:
        return {}
    config = (cell or {}).get("config") or (result or {}).get("config") or {}
    done = progress(rows, config.get("epochs") if isinstance(config, dict) else None)
    return {"epoch": done["epochs_done"], "epochs": done["epochs"], "top1": done["last_top1"]}


def read_run(run_dir: Path, state: JobState | None = None) -> Run:
    """One run folder; `state`, the grid's state of it, decides the status and reason of a submitted run
    that has not finished (running, queued, failed, interrupted, ...). A running, queued or interrupted
    run carries its latest epoch (`partial`)."""
    run_dir = Path(run_dir)
    cell, why_cell = tolerant(read_cell, run_dir)
    result, why_result = tolerant(read_result, run_dir)
    problems = [why_cell] if why_cell else []
    labels = _labels(cell, result, run_dir)
    if why_result:
        return Run(run_dir, labels, "unreadable", message=why_result, problems=problems)
    unfinished = result is None or result.get("status") not in TERMINAL
    if unfinished and state is not None and state[2] is not None and state[0] not in ("done", "diverged"):
        run = Run(run_dir, labels, state[0], result or {}, state[1], problems)
    elif result is None:
        run = Run(run_dir, labels, "running", problems=problems)
    else:
        run = _finished(run_dir, labels, result, problems)
    if run.status in PARTIAL_STATUSES:
        run.partial = partial_epoch(run_dir, cell, result)
    return run


def _finished(run_dir: Path, labels: dict[str, Any], result: dict[str, Any], problems: list[str]) -> Run:
    """A run folder with a result.json, as that says."""
    status = str(result.get("status") or "running")
    if status == "complete" and not finite(result.get("final_top1")):
        rows, why_rows = tolerant(read_metrics, run_dir, [])
        result = {**summarize(rows), **{k: v for k, v in result.items() if v is not None}}
        if not finite(result.get("final_top1")):
            why = why_rows or f"{run_dir / RESULT_FILE}: complete but holds no final_top1"
            return Run(run_dir, labels, "unreadable", result, why, problems)
    return Run(run_dir, labels, status, result, _message(status, result), problems)


def grid_run_folders(grid_dir: Path) -> tuple[list[Path], list[str]]:
    """(the grid's run folders, problems): those its grid.json lists when it has a readable one (so folders
    left by an earlier version of the grid are not mixed in), else every folder under `grid_dir` holding
    cell.json, result.json or metrics.jsonl."""
    grid_file, why = tolerant(read_grid_file, grid_dir)
    if grid_file is None:
        return run_folders(grid_dir), [why] if why else []
    names = sorted(set(grid_file["cells"].values()))
    return [grid_dir / n for n in names if "/" not in n and n not in ("", ".", "..") and (grid_dir / n).exists()], []


def load_runs(grid_dir: Path, states: dict[Path, JobState] | None = None) -> list[Run]:
    """The grid's runs (see `grid_run_folders`); `states` maps run folders to the grid's state of them."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        return []
    dirs, _ = grid_run_folders(grid_dir)
    return [read_run(d, (states or {}).get(Path(d))) for d in dirs]


def problems(runs: list[Run]) -> list[str]:
    """One line per file that could not be read."""
    return [line for r in runs for line in [*r.problems, *([r.message] if r.status == "unreadable" else [])]]



@dataclass(frozen=True)
class Evolution:
    """What Weight Evolution did in one run, from its metrics rows: units evolved per kind (we.core KINDS)
    summed over the run, and the epochs whose row records a step (a step after the epoch, or steps every
    N iterations during it)."""

    evolved: dict[str, float]
    step_epochs: tuple[int, ...]


def evolution_of(rows: list[dict[str, Any]]) -> Optional[Evolution]:
    """The run's `Evolution`; None when no row records a WE step (a method without WE)."""
    stepped = [r for r in rows if any(finite(r.get(col)) for col in COUNT_COLUMNS.values())]
    if not stepped:
        return None
    evolved = {kind: float(sum(r[col] for r in stepped if finite(r.get(col)))) for kind, col in COUNT_COLUMNS.items()}
    return Evolution(evolved, tuple(sorted({int(r["epoch"]) for r in stepped})))


def run_evolution(run: Run) -> Optional[Evolution]:
    """`evolution_of` the run folder's metrics (None when they cannot be read: the run's problem line)."""
    rows, _ = tolerant(read_metrics, run.path, [])
    return evolution_of(rows)
