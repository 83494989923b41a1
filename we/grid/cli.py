"""Experiment grids: a YAML file -> cells (one resolved config each) -> run folders, states, jobs.

    python -m we.grid plan|prepare|submit|status|cancel|collect GRID [--executor slurm|local] [--profile FILE]
                      [--wait] [--runs-root DIR] [--cells] [--allow-cpu-marathon] [--set key=value ...]

GRID is a path or a name in experiments/ (the file format: we/grid/schema.py); `--set` may stand
anywhere. Run folders go under --runs-root, else $WE_RUNS_ROOT, else the checkout's results/runs,
from any working directory. `plan` prints a summary of the cells, their states and the GPU-hour
estimate (we/grid/plan.py); `prepare` makes the grid's datasets ready on this host
(we/grid/host_data.py); `submit` does the same, then starts the todo, failed and interrupted cells
on an executor (under the grid's lock); `status` counts the states, shows each running cell's epoch, test
top-1 and ETA, and failed cells' logs; `cancel` stops the queued and running cells (we/grid/cancel.py).
`collect` builds the tables and figures: it belongs above the report layer (we.commands.collect_grid),
which `python -m we.grid` (we/grid/__main__.py) hands to `main` here.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from we.errors import DatasetNotFoundError, InputError, SuiteError
from we.files import IN_CHECKOUT, REPO_ROOT
from we.grid.cancel import cancel
from we.grid.identity import Cell, parse_sets, resolve_cells, runs_root
from we.grid.local import LocalExecutor
from we.grid.plan import counts as state_counts
from we.grid.plan import plan
from we.grid.host_data import offline_config, prepare_data
from we.grid.profiles import Profile, load_profile
from we.grid.records import grid_lock, record_logs
from we.grid.schema import Grid, display_path, load_grid
from we.grid.slurm import SlurmExecutor
from we.grid.state import LIVE, TO_RUN, CellState, adopt_twin, assess, progress_note, write_cell, write_grid_file
from we.keys import Key, excerpt
from we.rundir import check_writable, log_tail, runs_root

DEFAULT_PROFILE = REPO_ROOT / "slurm" / "default.yaml"
# collect(grid, cells, runs_root, out_dir, reuse) for `collect` (we.commands.collect_grid.collect_grid)
Collect = Callable[[Grid, Sequence[Cell], Path, Path, bool], Any]


@dataclass
class SubmitReport:
    submitted: list[tuple[Cell, dict[str, Any]]]
    skipped: list[CellState]
    reused: list[CellState]


def submit(grid: Grid, cells: Sequence[Cell], executor: Any, runs_root: Path, reuse: bool = True,
           out: Any = None) -> SubmitReport:
    """Submit the todo, failed and interrupted cells (under the grid's lock); prints and returns what
    was submitted. Before anything is written: the executor's own check of the cells (the local
    executor's CPU guard) and their datasets made ready here (DatasetNotFoundError when one cannot be);
    the jobs then run with download off."""
    out = out or sys.stdout
    check_writable(runs_root)
    pending = [s.cell for s in assess(cells, runs_root, reuse) if s.state in TO_RUN and s.reuse_from is None]
    if hasattr(executor, "check"):
        executor.check(pending)
    prepare_data(pending, out)
    for cell in cells:
        offline_config(cell)
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
        chosen = [s for s in states if s.state in TO_RUN]
        skipped = [s for s in states if s.state not in TO_RUN and s.reuse_from is None]
        prepare_data([s.cell for s in chosen if s.cell not in pending])  # changed since the check above
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
          f"({state_counts(skipped)})", file=out)
    return SubmitReport(submitted, skipped, reused)


POLL_ENV = "WE_GRID_POLL_S"  # the environment variable that sets the seconds between polls of `submit --wait`
POLL_KEY = Key(float, None, "seconds between state polls while waiting (unset: 2 local, 10 slurm)", minimum=0,
               strict=True)
DEFAULT_POLL_S = {"local": 2.0, "slurm": 10.0}


def poll_seconds(executor: str) -> float:
    """The seconds between polls: $WE_GRID_POLL_S, checked against POLL_KEY, else the executor's default."""
    raw = os.environ.get(POLL_ENV)
    if raw is None:
        return DEFAULT_POLL_S[executor]
    try:
        value = float(raw)
    except ValueError:
        raise InputError("environment", POLL_ENV, f"expected a number of seconds, got {excerpt(raw)}") from None
    complaint = POLL_KEY.complaint(value)
    if complaint:
        raise InputError("environment", POLL_ENV, complaint)
    return value


def wait(grid: Grid, cells: Sequence[Cell], runs_root: Path, reuse: bool = True, poll_s: float | None = None,
         out: Any = None) -> list[CellState]:
    """Block until no cell of the grid is running or queued; prints each change of the state counts."""
    out = out or sys.stdout
    if poll_s is None:
        poll_s = poll_seconds("local")
    last = ""
    while True:
        states = assess(cells, runs_root, reuse)
        counts = state_counts(states)
        if counts != last:
            print(f"{time.strftime('%H:%M:%S')} {grid.name}: {counts}", file=out, flush=True)
            last = counts
        if not any(s.state in LIVE for s in states):
            return states
        time.sleep(poll_s)


def job_log_lines(run_dir: Path, record: dict[str, Any] | None, lines: int = 8) -> list[str]:
    """The last lines of a job's log(s), read from the run's own logs folder only."""
    return [f"    [{name}] {text}" for name in record_logs(record) for text in log_tail(run_dir, name, lines)]


def status(grid: Grid, cells: Sequence[Cell], runs_root: Path, reuse: bool = True,
           out: Any = None) -> list[CellState]:
    """Counts per state; for each running cell its epoch, last test top-1 and ETA; queued cells apart; for
    failed cells, the error and the last log lines."""
    out = out or sys.stdout
    states = assess(cells, runs_root, reuse)
    print(f"{grid.name}: {len(cells)} cells: {state_counts(states)}", file=out)
    for st in states:
        if st.state == "running" and st.last_record is not None:
            note = f"{st.note}: {progress_note(st.cell.run_dir, st.cell.config.get('epochs'))}"
            print(f"  {st.state:8s} {st.cell.key}: {note}", file=out)
        elif st.state in ("running", "queued", "unknown", "stale", "unreadable"):
            print(f"  {st.state:8s} {st.cell.key}: {st.note}", file=out)
    for st in states:
        if st.state in ("failed", "interrupted"):
            print(f"  {st.state:8s} {st.cell.key}: {st.note}  ({display_path(st.cell.run_dir)})", file=out)
            for line in job_log_lines(st.cell.run_dir, st.last_record):
                print(line, file=out)
    return states


def default_out_dir(grid: Grid, root: Path) -> Path:
    """Where `collect` writes by default: the checkout's results/ for a grid file of the checkout, else
    beside the runs root (a grid of one's own project never writes into the suite's checkout)."""
    checkout = REPO_ROOT.resolve()
    if IN_CHECKOUT and checkout in Path(grid.path).resolve().parents:
        return REPO_ROOT / "results"
    return Path(root).absolute().parent


def make_executor(name: str, profile: Profile | None, grid: Grid, concurrency: int | None,
                  allow_cpu_marathon: bool = False) -> Any:
    if name == "slurm":
        assert profile is not None
        return SlurmExecutor(profile.with_resources(grid.resources))
    return LocalExecutor(concurrency=concurrency, allow_cpu_marathon=allow_cpu_marathon)


def split_sets(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the other arguments, the KEY=VALUE items of every `--set`), so `--set` may stand anywhere:
    `--set a=1 b=2 GRID` keeps GRID; `--set=a=1` works too."""
    rest: list[str] = []
    sets: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        i += 1
        if token.startswith("--set="):
            sets.append(token[len("--set="):])
        elif token == "--set":
            start = i
            while i < len(items) and "=" in items[i] and not items[i].startswith("-"):
                i += 1
            if i == start and i < len(items) and not items[i].startswith("-"):
                i += 1  # `--set epochs`: kept for parse_sets to refuse with one line
            sets += items[start:i]
        else:
            rest.append(token)
    return rest, sets


def main(argv: list[str] | None = None, collect: Collect | None = None) -> int:
    """The grid CLI; `collect` is offered when a collect function is given (python -m we.grid gives it)."""
    parser = argparse.ArgumentParser(prog="python -m we.grid", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("plan", "prepare", "submit", "status", "cancel")
                        + (("collect",) if collect else ()))
    parser.add_argument("grid", help="a grid file, or a grid name in experiments/")
    parser.add_argument("--executor", choices=("slurm", "local"), default="local")
    parser.add_argument("--profile", default=None, help="cluster profile (slurm; default slurm/default.yaml)")
    parser.add_argument("--wait", action="store_true", help="submit: block until no cell is queued or running")
    parser.add_argument("--runs-root", default=None,
                        help="where run folders go (default $WE_RUNS_ROOT, else the checkout's results/runs)")
    parser.add_argument("--out-dir", default=None,
                        help="collect: where tables and figures go (default: the checkout's results/ for a grid "
                             "of the checkout, else beside the runs root)")
    parser.add_argument("--set", dest="sets_help", metavar="KEY=VALUE", nargs="+",
                        help="config keys for every cell (change run identity), anywhere on the line, "
                             "e.g. --set epochs=2 limit_train=256")
    parser.add_argument("--cells", action="store_true", help="plan: list every cell, not only the summary")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="local: cells at once (default one per GPU, 1 on the CPU)")
    parser.add_argument("--allow-cpu-marathon", action="store_true",
                        help="local: start a long grid (200-epoch CIFAR, ImageNet) on a machine without a GPU")
    parser.add_argument("--no-reuse", action="store_true",
                        help="train cells even when another grid already ran the same config")
    rest, set_items = split_sets(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    root, rule = runs_root(args.runs_root)
    reuse = not args.no_reuse
    try:
        poll_s = poll_seconds(args.executor)
        grid = load_grid(args.grid)
        sets = parse_sets(set_items)
        profile = None
        neutral: dict[str, Any] = {}
        if args.executor == "slurm" or args.profile:
            profile = load_profile(args.profile or DEFAULT_PROFILE)
            neutral = dict(profile.config)
        if args.concurrency is not None and args.concurrency < 1:
            raise InputError("--concurrency", "concurrency", f"must be >= 1, got {args.concurrency}")
        cells = resolve_cells(grid, root, sets, neutral if args.command in ("submit", "prepare") else None)
        if args.command in ("submit", "collect"):
            check_writable(root)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "plan":
        plan(grid, cells, root, reuse, show_cells=args.cells, root_rule=rule, executor=args.executor)
        return 0
    if args.command == "status":
        states = status(grid, cells, root, reuse)
        return 1 if any(s.state in ("failed", "unreadable") for s in states) else 0
    if args.command == "cancel":
        return cancel(grid, cells, root)
    if args.command == "prepare":
        try:
            lines = prepare_data(cells, sys.stdout)
        except DatasetNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{grid.name}: {len(lines)} dataset(s) ready" if lines else f"{grid.name}: no training cells")
        return 0
    if args.command == "collect":
        assert collect is not None
        try:
            collect(grid, cells, root, Path(args.out_dir) if args.out_dir else default_out_dir(grid, root), reuse)
        except SuiteError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    executor = make_executor(args.executor, profile, grid, args.concurrency, args.allow_cpu_marathon)
    print(f"runs: {root / grid.name} ({rule})", flush=True)
    try:
        submit(grid, cells, executor, root, reuse)
    except (SuiteError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - sbatch/submitit refusal: one line, nonzero exit
        last_line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        print(f"error: submission failed: {type(err).__name__}: {last_line}", file=sys.stderr)
        return 1
    return wait_after_submit(grid, cells, root, reuse, executor, args.grid, poll_s) if args.wait else 0


def wait_after_submit(grid: Grid, cells: Sequence[Cell], root: Path, reuse: bool, executor: Any, name: str,
                      poll_s: float) -> int:
    """`submit --wait`: block until no cell is queued or running; 1 when a cell did not end done (its note and
    log lines on stderr), 130 on Ctrl-C (the cells keep running)."""
    runner = getattr(executor, "process", None)
    try:
        states = wait(grid, cells, root, reuse, poll_s=poll_s)
        if runner is not None:  # the local runner records each cell's exit before it ends
            runner.wait()
            states = assess(cells, root, reuse)
    except KeyboardInterrupt:
        where = f" (local runner pid {runner.pid})" if runner is not None else ""
        print(f"stopped waiting; the cells keep running{where}: `python -m we.grid status {name}` "
              f"shows them, `python -m we.grid cancel {name}` stops them", file=sys.stderr)
        return 130
    failed = [s for s in states if s.state in ("failed", "interrupted", "unknown", "stale", "unreadable")]
    for st in failed:
        print(f"  {st.state} {st.cell.key}: {st.note}", file=sys.stderr)
        for line in job_log_lines(st.cell.run_dir, st.last_record):
            print(line, file=sys.stderr)
    return 1 if failed else 0
