"""The state of each cell on disk and in its jobs, twin runs in other grids, and the files written
for a grid: `<run>/cell.json` (via we.grid.records) and `<runs-root>/<grid>/grid.json`.

A cell whose exact config already ran in another grid's folder (e.g. the Table 2 baselines that
Tables 5-8 repeat) is linked from there instead of trained again (`assess` finds the twin,
`adopt_twin` links its files).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from we.grid.identity import Cell, identity
from we.grid.jobs import Job, jobs_of
from we.rundir import (DEFAULT_RUNS_ROOT, GRID_FILE, LAST_CHECKPOINT, TRAINER_FILES, finite, progress, read_cell,
                       read_config, read_metrics, read_result, tolerant, write_cell as write_cell_file, write_json)
from we.grid.schema import Grid, axis_labels, display_path
from we.train.config import make_config, resolve, to_dict

STATES = ("done", "running", "queued", "failed", "interrupted", "diverged", "todo", "unknown", "stale", "unreadable")
TO_RUN = ("todo", "failed", "interrupted")  # the states `submit` (re)starts (never an unreadable folder)
LIVE = ("running", "queued")  # a job that `wait` waits for and `cancel` stops
REUSED_FILES = TRAINER_FILES  # what a cell links from a finished twin run


@dataclass
class CellState:
    cell: Cell
    state: str
    note: str = ""
    reuse_from: Optional[Path] = None
    last_record: Optional[dict[str, Any]] = None


def stored_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run folder was made for (cell.json, else the trainer's config.yaml); None when neither
    holds one or can be read (`cell_state` says which file is broken)."""
    cell, _ = tolerant(read_cell, run_dir)
    if cell and isinstance(cell.get("config"), dict):
        return cell["config"]
    config, _ = tolerant(read_config, run_dir)
    return config or None


def identity_diff(run_dir: Path, config: dict[str, Any]) -> list[str] | None:
    """Keys on which a run folder's stored config and `config` differ (None: nothing stored)."""
    other = stored_config(run_dir)
    if other is None:
        return None
    a, b = identity(other), identity(config)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def twin_folders(cell: Cell, runs_root: Path) -> list[Path]:
    """Run folders of other grids holding exactly this cell's config."""
    root = Path(runs_root).absolute()
    found = []
    for path in sorted(root.glob(f"*/*-{cell.config_hash}")):
        if path.resolve() == cell.run_dir.resolve() or not path.is_dir() or path.parent.name == cell.grid:
            continue
        if identity_diff(path, cell.config) == []:
            found.append(path)
    return found


def ended_reason(record: dict[str, Any], result: dict[str, Any] | None) -> str:
    """Why a job that is no longer live ended: the run's error line, else the executor's record of
    its exit (signal name, exit code, error line from the log), else that nothing was recorded."""
    error = str((result or {}).get("error") or record.get("error") or "").strip()
    error = error.splitlines()[0] if error else ""
    if record.get("signal"):
        how = f"killed by {record['signal']}"
    elif record.get("exit_code") not in (None, 0):
        how = f"exit {record['exit_code']}"
    elif "exit_code" in record:
        how = "exit 0"
    elif record.get("executor") == "local":
        how = "its runner ended without recording the exit (killed?)"
    else:
        how = ""
    return ": ".join(p for p in (how, error) if p)


def submissions(cell: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The submission records of a cell.json that name their job (a hand-edited entry without one is skipped)."""
    return [r for r in (cell or {}).get("submitted", [])
            if isinstance(r.get("job_id"), str) and isinstance(r.get("executor"), str)]


def last_record(run_dir: Path) -> dict[str, Any] | None:
    subs = submissions(tolerant(read_cell, run_dir)[0])
    return subs[-1] if subs else None


def cell_state(run_dir: Path, jobs: dict[str, Job] | None = None,
               config: dict[str, Any] | None = None) -> tuple[str, str, dict[str, Any] | None]:
    """THE state of one run folder, (state, note, last submission record); `plan`, `status`, `submit`,
    `cancel` and `collect` all read it. `jobs` maps job ids to what their executors say (asked here when
    None); with `config`, a folder holding another config is stale; a folder whose cell.json or result.json
    cannot be read is unreadable (the note names the file), and is never submitted over."""
    run_dir = Path(run_dir)
    cell, why_cell = tolerant(read_cell, run_dir)
    result, why_result = tolerant(read_result, run_dir)
    if why_cell or why_result:
        return "unreadable", why_cell or why_result, None
    if config is not None:
        diff = identity_diff(run_dir, config)
        if diff:  # a Config default changed since this folder was made: its run is not this cell's
            return "stale", f"folder holds another config (keys {', '.join(diff)}); move it away", None
    status = (result or {}).get("status")
    subs = submissions(cell)
    last = subs[-1] if subs else None
    if status == "complete":
        top1 = result.get("final_top1")
        return "done", f"top1 {top1:.2f}" if finite(top1) else "top1 ?", last
    if status == "diverged":
        return "diverged", f"epoch {result.get('diverged_epoch', '?')}", last
    if last is not None:
        return job_state(run_dir, last, (jobs_of([last]) if jobs is None else jobs).get(last["job_id"], Job(None)),
                         result)
    if status == "failed":
        return "failed", str(result.get("error", "")).strip().split("\n")[0], last
    if status == "interrupted":
        return "interrupted", interrupted_note(result), last
    return "todo", "", last


def job_state(run_dir: Path, last: dict[str, Any], job: Job,
              result: dict[str, Any] | None) -> tuple[str, str, dict[str, Any] | None]:
    """The state of an unfinished run folder from its last submission: queued or running while its job
    lives; once it ended, how (a cancelled job: `cancelled_state`)."""
    name = f"{last['executor']} {last['job_id']}"
    if job.alive is True:
        waiting = f" ({job.state}: {job.reason})" if job.reason else f" ({job.state})" if job.state else ""
        return ("running", name, last) if job.started else ("queued", name + waiting, last)
    if job.alive is None:
        return "unknown", f"cannot query {name}", last
    if last.get("cancelled") or job.state.startswith("CANCELLED"):
        state, note = cancelled_state(run_dir, result)
        return state, f"{name} cancelled" + (f" ({job.state})" if job.state else "") + note, last
    if (result or {}).get("status") == "interrupted":
        return "interrupted", f"{name}: {interrupted_note(result)}", last
    reason = ended_reason(last, result)
    return "failed", f"{name} ended" + (f": {reason}" if reason else ""), last


def cancelled_state(run_dir: Path, result: dict[str, Any] | None) -> tuple[str, str]:
    """(state, the note's end) of a run whose job was cancelled: interrupted (resumable) once it trained, else
    todo."""
    if (result or {}).get("status") == "interrupted":
        return "interrupted", f": {interrupted_note(result)}"
    rows, _ = tolerant(read_metrics, run_dir, [])
    if not rows and result is None and not (run_dir / LAST_CHECKPOINT).exists():
        return "todo", " before it started; submit starts it"
    epochs = ((result or {}).get("config") or {}).get("epochs") or (stored_config(run_dir) or {}).get("epochs", "?")
    return "interrupted", f": stopped at epoch {len(rows)}/{epochs}; submit resumes it from {LAST_CHECKPOINT}"


def interrupted_note(result: dict[str, Any]) -> str:
    """`interrupted at epoch 2/4 (SIGTERM); submit resumes it from last.pt`"""
    epochs = (result.get("config") or {}).get("epochs", "?")
    how = f" ({result['signal']})" if result.get("signal") else ""
    done = result.get("epochs_done", 0)
    return f"interrupted at epoch {done}/{epochs}{how}; submit resumes it from {LAST_CHECKPOINT}"


def duration(seconds: float) -> str:
    """`1:02:03` (hours:minutes:seconds), `4:05` under an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_note(run_dir: Path, epochs: Any) -> str:
    """`epoch 2/6, test top-1 45.31, ETA 0:12 (3.0 s/epoch)`: how far a running cell got, from its metrics rows
    (the ETA: remaining epochs x its mean measured epoch time)."""
    rows, why = tolerant(read_metrics, Path(run_dir), [])
    if why:
        return why
    p = progress(rows, epochs)
    total = p["epochs"] if p["epochs"] is not None else "?"
    if not rows:
        return f"epoch 0/{total}, no epoch finished yet"
    top1 = f"test top-1 {p['last_top1']:.2f}" if finite(p["last_top1"]) else "test top-1 ?"
    eta = f", ETA {duration(p['eta_seconds'])} ({p['epoch_seconds']:.1f} s/epoch)" if p["eta_seconds"] is not None \
        else ""
    return f"epoch {p['epochs_done']}/{total}, {top1}{eta}"


def run_states(run_dirs: Sequence[Path]) -> dict[Path, tuple[str, str, dict[str, Any] | None]]:
    """`cell_state` of many run folders, asking each executor about their jobs once."""
    records = [rec for rec in map(last_record, run_dirs) if rec is not None]
    jobs = jobs_of(records) if records else {}
    return {Path(p): cell_state(p, jobs) for p in run_dirs}


def assess(cells: Sequence[Cell], runs_root: Path = DEFAULT_RUNS_ROOT, reuse: bool = True) -> list[CellState]:
    """The state of every cell: done, running, queued, failed, interrupted, diverged or todo; unknown when its
    job cannot be asked (e.g. sacct does not answer), stale when its folder holds a run of another config,
    unreadable when its cell.json or result.json cannot be read."""
    twins = {c.key: twin_folders(c, runs_root) for c in cells} if reuse else {}
    folders = [c.run_dir for c in cells] + [t for ts in twins.values() for t in ts]
    records = [rec for rec in map(last_record, folders) if rec is not None]
    jobs = jobs_of(records) if records else {}
    states = []
    for cell in cells:
        state, note, last = cell_state(cell.run_dir, jobs, cell.config)
        reuse_from = None
        if state == "todo" and reuse:
            for twin in twins.get(cell.key, []):
                twin_state, _, _ = cell_state(twin, jobs)
                if twin_state in ("done", "diverged"):
                    state, note, reuse_from = twin_state, f"same run as {display_path(twin)}", twin
                    break
                if twin_state in LIVE:
                    state, note = twin_state, f"same run as {display_path(twin)} ({twin_state})"
        states.append(CellState(cell, state, note, reuse_from, last))
    return states


def adopt_twin(state: CellState) -> None:
    """Link (or copy) a finished twin run's files into this cell's folder."""
    cell, twin = state.cell, state.reuse_from
    assert twin is not None
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    for name in REUSED_FILES:
        src, dst = twin / name, cell.run_dir / name
        if not src.exists() or dst.exists():
            continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    write_cell(cell, reused_from=str(twin))


def write_cell(cell: Cell, record: dict[str, Any] | None = None, reused_from: str | None = None) -> None:
    """Create or update `<run>/cell.json` (labels, resolved config, submissions)."""
    data = read_cell(cell.run_dir) or {}  # a broken cell.json is refused (RunFileError), never overwritten
    data.update({"grid": cell.grid, "key": cell.key, "labels": cell.labels, "config_hash": cell.config_hash,
                 "config": cell.config})
    data.setdefault("submitted", [])
    if record is not None:
        data["submitted"].append(record)
    if reused_from is not None:
        data["reused_from"] = reused_from
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    write_cell_file(cell.run_dir, data)


def write_grid_file(grid: Grid, cells: Sequence[Cell], runs_root: Path) -> None:
    """`<runs-root>/<grid>/grid.json`: the grid as loaded, its cells' folders and (plot-only grids) the base config."""
    data: dict[str, Any] = {
        "name": grid.name, "file": display_path(grid.path), "description": grid.description, "train": grid.train,
        "base": grid.base, "axes": {a: axis_labels(v) for a, v in grid.axes.items()}, "seeds": grid.seeds,
        "cells": {c.key: c.run_dir.name for c in cells}}
    if not grid.train:
        data["base_config"] = to_dict(resolve(make_config(grid.base, source=display_path(grid.path))))
    write_json(Path(runs_root).absolute() / grid.name / GRID_FILE, data)
