"""Experiment grids: a YAML file -> cells (one resolved config each) -> run folders, states, jobs.

    python -m we.grid plan|submit|status|collect GRID [--executor slurm|local] [--profile FILE]
                      [--wait] [--runs-root DIR] [--set key=value ...]

GRID is a path or a name in experiments/ (the file format: we/grid/schema.py). `plan` prints the
cells, their states and the GPU-hour estimate; `submit` starts the todo and failed cells on an
executor (under the grid's lock); `status` counts the states and shows failed cells' logs. `collect`
builds the tables and figures: it belongs to the report layer (we.report.collect_grid), which
`python -m we.grid` (we/grid/__main__.py) hands to `main` here.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from we.errors import InputError
from we.files import REPO_ROOT
from we.grid.cost import gpu_hours, load_throughput
from we.grid.identity import DEFAULT_RUNS_ROOT, Cell, parse_sets, resolve_cells
from we.grid.local import LocalExecutor
from we.grid.profiles import Profile, load_profile
from we.grid.records import grid_lock
from we.grid.schema import Grid, display_path, load_grid
from we.grid.slurm import SlurmExecutor
from we.grid.state import (STATES, CellState, adopt_twin, assess, check_writable, write_cell,
                           write_grid_file)

DEFAULT_PROFILE = REPO_ROOT / "slurm" / "default.yaml"
# collect(grid, cells, runs_root, out_dir, reuse) for `collect` (we.report.collect_grid.collect_grid)
Collect = Callable[[Grid, Sequence[Cell], Path, Path, bool], Any]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _counts(states: Sequence[CellState]) -> str:
    counts = Counter(s.state for s in states)
    return ", ".join(f"{k} {counts[k]}" for k in STATES if counts[k]) or "no cells"


def plan(grid: Grid, cells: Sequence[Cell], runs_root: Path, reuse: bool = True, out: Any = None) -> list[CellState]:
    """Print the cells, their states and the GPU-hour estimate; writes nothing."""
    out = out or sys.stdout
    throughput = load_throughput()
    states = assess(cells, runs_root, reuse)
    rows, to_run, total, sources = [], 0.0, 0.0, set()
    for st in states:
        hours = gpu_hours(st.cell, throughput)
        sources.add(throughput.lookup(st.cell.config["model"], st.cell.config["dataset"])[1])
        total += hours
        if st.state in ("todo", "failed"):
            to_run += hours
        rows.append([st.cell.key, st.state, f"{hours:.3g}", st.cell.run_dir.name, st.note])
    print(f"grid {grid.name} ({display_path(grid.path)}): {len(cells)} cells, run folders in "
          f"{display_path(Path(runs_root) / grid.name)}", file=out)
    if grid.description:
        print(grid.description.strip(), file=out)
    if rows:
        print(_table(rows, ["cell", "state", "GPU-h", "folder", "note"]), file=out)
    print(f"states: {_counts(states)}", file=out)
    if cells:
        print(f"estimate: {to_run:.3g} GPU-hours to run (todo + failed), {total:.3g} for the whole grid; "
              f"throughput from {', '.join(sorted(sources))}", file=out)
    else:
        print("no training cells (a plot-only grid): `collect` draws it", file=out)
    return states


@dataclass
class SubmitReport:
    submitted: list[tuple[Cell, dict[str, Any]]]
    skipped: list[CellState]
    reused: list[CellState]


def submit(grid: Grid, cells: Sequence[Cell], executor: Any, runs_root: Path, reuse: bool = True,
           out: Any = None) -> SubmitReport:
    """Submit the todo and failed cells (under the grid's lock); prints and returns what was submitted."""
    out = out or sys.stdout
    check_writable(runs_root)
    grid_dir = Path(runs_root).absolute() / grid.name
    lock = grid_lock(grid_dir)
    try:
        lock.acquire(timeout=1)
    except Exception:  # noqa: BLE001 - filelock.Timeout: someone else is submitting this grid
        print(f"waiting for another submit of {grid.name} ({lock.lock_file})", file=out, flush=True)
        lock.acquire()
    try:
        write_grid_file(grid, cells, runs_root)
        states = assess(cells, runs_root, reuse)
        reused = [s for s in states if s.reuse_from is not None]
        for st in reused:
            adopt_twin(st)
        chosen = [s for s in states if s.state in ("todo", "failed")]
        skipped = [s for s in states if s.state not in ("todo", "failed") and s.reuse_from is None]
        for st in chosen:
            write_cell(st.cell)
        records = executor.submit([s.cell for s in chosen], grid_dir) if chosen else []
        for st, rec in zip(chosen, records):
            write_cell(st.cell, record=rec)
    finally:
        lock.release()
    submitted = [(s.cell, r) for s, r in zip(chosen, records)]
    for st in reused:
        print(f"reused   {st.cell.key}: {st.note}", file=out)
    for cell, rec in submitted:
        print(f"submitted {cell.key} -> {rec['executor']} job {rec['job_id']}", file=out)
    jobs = sorted({r["job_id"].split("_")[0] if r["executor"] == "slurm" else f"pid {r.get('pid')}"
                   for _, r in submitted})
    print(f"{grid.name}: submitted {len(submitted)} cells to {getattr(executor, 'name', executor)}"
          + (f" ({', '.join(jobs)})" if jobs else "") + f"; reused {len(reused)}; left alone {len(skipped)} "
          f"({_counts(skipped)})", file=out)
    return SubmitReport(submitted, skipped, reused)


def wait(grid: Grid, cells: Sequence[Cell], runs_root: Path, reuse: bool = True, poll_s: float | None = None,
         out: Any = None) -> list[CellState]:
    """Block until no cell of the grid is running; prints each change of the state counts."""
    out = out or sys.stdout
    if poll_s is None:
        poll_s = float(os.environ.get("WE_GRID_POLL_S", "2"))
    last = ""
    while True:
        states = assess(cells, runs_root, reuse)
        counts = _counts(states)
        if counts != last:
            print(f"{time.strftime('%H:%M:%S')} {grid.name}: {counts}", file=out, flush=True)
            last = counts
        if not any(s.state == "running" for s in states):
            return states
        time.sleep(poll_s)


def log_tail(record: dict[str, Any] | None, lines: int = 8) -> list[str]:
    """The last lines of a job's log(s)."""
    if not record:
        return []
    out = []
    for key in ("stderr", "stdout", "log"):
        path = record.get(key)
        if not path or not Path(path).exists():
            continue
        text = Path(path).read_text(errors="replace").rstrip().splitlines()
        if text:
            out += [f"    [{Path(path).name}] {t}" for t in text[-lines:]]
    return out


def status(grid: Grid, cells: Sequence[Cell], runs_root: Path, reuse: bool = True,
           out: Any = None) -> list[CellState]:
    """Counts per state; for failed cells, the error and the last log lines."""
    out = out or sys.stdout
    states = assess(cells, runs_root, reuse)
    print(f"{grid.name}: {len(cells)} cells: {_counts(states)}", file=out)
    for st in states:
        if st.state in ("running", "unknown", "stale"):
            print(f"  {st.state:8s} {st.cell.key}: {st.note}", file=out)
    for st in states:
        if st.state == "failed":
            print(f"  failed   {st.cell.key}: {st.note}  ({display_path(st.cell.run_dir)})", file=out)
            for line in log_tail(st.last_record):
                print(line, file=out)
    return states



def make_executor(name: str, profile: Profile | None, grid: Grid, concurrency: int | None) -> Any:
    if name == "slurm":
        assert profile is not None
        return SlurmExecutor(profile.with_resources(grid.resources))
    return LocalExecutor(concurrency=concurrency)


def main(argv: list[str] | None = None, collect: Collect | None = None) -> int:
    """The grid CLI; `collect` is offered when a collect function is given (python -m we.grid gives it)."""
    parser = argparse.ArgumentParser(prog="python -m we.grid", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("plan", "submit", "status") + (("collect",) if collect else ()))
    parser.add_argument("grid", help="a grid file, or a grid name in experiments/")
    parser.add_argument("--executor", choices=("slurm", "local"), default="local")
    parser.add_argument("--profile", default=None, help="cluster profile (slurm; default slurm/default.yaml)")
    parser.add_argument("--wait", action="store_true", help="submit: block until no cell is running")
    parser.add_argument("--runs-root", default=str(DEFAULT_RUNS_ROOT), help="default results/runs")
    parser.add_argument("--out-dir", default="results", help="collect: where tables and figures go")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                        help="config keys for every cell (change run identity), e.g. --set epochs=2 limit_train=256")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="local: cells at once (default one per GPU, 1 on the CPU)")
    parser.add_argument("--no-reuse", action="store_true",
                        help="train cells even when another grid already ran the same config")
    args = parser.parse_args(argv)
    runs_root = Path(args.runs_root)
    reuse = not args.no_reuse
    try:
        grid = load_grid(args.grid)
        sets = parse_sets([s for group in args.sets for s in group])
        profile = None
        neutral: dict[str, Any] = {}
        if args.executor == "slurm" or args.profile:
            profile = load_profile(args.profile or DEFAULT_PROFILE)
            neutral = dict(profile.config)
        if args.concurrency is not None and args.concurrency < 1:
            raise InputError("--concurrency", "concurrency", f"must be >= 1, got {args.concurrency}")
        cells = resolve_cells(grid, runs_root, sets, neutral if args.command == "submit" else None)
        if args.command in ("submit", "collect"):
            check_writable(runs_root)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "plan":
        plan(grid, cells, runs_root, reuse)
        return 0
    if args.command == "status":
        states = status(grid, cells, runs_root, reuse)
        return 1 if any(s.state == "failed" for s in states) else 0
    if args.command == "collect":
        assert collect is not None
        try:
            collect(grid, cells, runs_root, Path(args.out_dir), reuse)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    executor = make_executor(args.executor, profile, grid, args.concurrency)
    try:
        submit(grid, cells, executor, runs_root, reuse)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - sbatch/submitit refusal: one line, nonzero exit
        last_line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        print(f"error: submission failed: {type(err).__name__}: {last_line}", file=sys.stderr)
        return 1
    if not args.wait:
        return 0
    runner = getattr(executor, "process", None)
    try:
        states = wait(grid, cells, runs_root, reuse, poll_s=None if args.executor == "local" else
                      float(os.environ.get("WE_GRID_POLL_S", "10")))
        if runner is not None:  # the local runner records each cell's exit before it ends
            runner.wait()
            states = assess(cells, runs_root, reuse)
    except KeyboardInterrupt:
        where = f" (local runner pid {runner.pid})" if runner is not None else ""
        print(f"stopped waiting; the cells keep running{where}: `python -m we.grid status {args.grid}` "
              "shows them", file=sys.stderr)
        return 130
    failed = [s for s in states if s.state in ("failed", "unknown", "stale")]
    for st in failed:
        print(f"  {st.state} {st.cell.key}: {st.note}", file=sys.stderr)
        for line in log_tail(st.last_record):
            print(line, file=sys.stderr)
    return 1 if failed else 0

