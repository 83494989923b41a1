"""Reading run folders: one ``Run`` per folder, its labels, status and per-epoch metrics.

A grid's runs live in ``results/runs/<grid>/<cell-dir>/`` (cell.json, result.json, metrics.jsonl,
last.pt). Also the label conventions and small numeric helpers that the tables and the figures share.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from we.grid.state import run_states

BASELINE = "baseline"
CORE_LABELS = ("dataset", "model", "method", "seed")
DATASET_ORDER = ("cifar10", "cifar100", "imagenet")
ALPHA_LABEL = re.compile(r"^we_alpha_(\d+(?:\.\d*)?)$")


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


def _hashable(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (str, int, float, bool)):
        return v
    return json.dumps(v, sort_keys=True)


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    a = np.asarray([v for v in values if _finite(v)], dtype=float)
    n = len(a)
    mean = float(a.mean()) if n else math.nan
    std = float(a.std(ddof=1)) if n >= 2 else math.nan
    return mean, std, n


def _method_sort_key(method: str, paper_methods: list[str]) -> tuple:
    if method == BASELINE:
        return (0, 0, 0.0, method)
    m = ALPHA_LABEL.match(method)
    if m:
        return (2, 0, float(m.group(1)), method)
    if method in paper_methods:
        return (1, paper_methods.index(method), 0.0, method)
    return (3, 0, 0.0, method)


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


def _read_run(run_dir: Path, state: tuple[str, str, Any] | None = None) -> Run:
    """One run folder; `state` is the grid's state of it (we.grid.state.cell_state), which decides
    the status and reason of a submitted run that has not finished (running, failed, interrupted, ...)."""
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
    unfinished = result is None or result.get("status") not in ("complete", "diverged")
    if unfinished and state is not None and state[2] is not None and state[0] not in ("done", "diverged"):
        return Run(run_dir, labels, state[0], result or {}, state[1], problems)
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
        dirs = [grid_dir / name for name in sorted(set(cells.values())) if (grid_dir / name).exists()]
    except (OSError, ValueError, KeyError, TypeError):
        dirs = _run_dirs(grid_dir)
    states = run_states(dirs)  # the grid's one state function, as `status` and `plan` show it
    return [_read_run(d, states[d]) for d in dirs]


def problems(runs: list[Run]) -> list[str]:
    """One line per file that could not be read."""
    return [line for r in runs for line in [*r.problems, *([r.message] if r.status == "unreadable" else [])]]

