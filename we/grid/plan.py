"""`python -m we.grid plan GRID`: what a grid would run and what it costs, writing nothing.

A summary by default: cells per state, per method (with its cost factor and where that comes
from) and per model (images/s and where that comes from: a GPU bench in results/bench/, or the
documented defaults), GPU-hours to run and for the whole grid; `--cells` adds one row per cell.
"""
from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

from we.grid.arrays import ALL_SEEDS, array_jobs, describe, size_words, solo_lines
from we.grid.cost import (CELL_OVERHEAD_S, Throughput, array_cost, cost_source, gpu_hours, load_cpu_throughput,
                          load_throughput, wall_seconds)
from we.grid.identity import Cell
from we.grid.local import local_gpu_count
from we.grid.schema import Grid, display_path
from we.grid.state import STATES, TO_RUN, CellState, assess
from we.methods import cost_factor


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def counts(states: Sequence[CellState]) -> str:
    n = Counter(s.state for s in states)
    return ", ".join(f"{k} {n[k]}" for k in STATES if n[k]) or "no cells"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def job_seconds(job: Sequence[Cell], throughput: Throughput) -> float:
    """A job's wall time on one device: its cell's, or its seed array's (we.grid.cost.array_cost)."""
    return wall_seconds(job[0], throughput) if len(job) == 1 else array_cost(list(job), throughput)[0]


def wall_time_line(jobs: Sequence[Sequence[Cell]], executor: str, throughput: Throughput,
                   gpus: int | None = None) -> str:
    """The estimated wall time of `jobs` (the cells to run, one job each or several as a seed array) on
    `executor`: the local one runs one job at a time on this machine's CPU (images/s of the CPU bench) or one
    per GPU; SLURM: the longest job on one GPU."""
    if not jobs:
        return "wall time: nothing to run"
    cells = [c for job in jobs for c in job]
    overhead = f"+ {CELL_OVERHEAD_S:g} s per job"
    sources = ", ".join(sorted({throughput.lookup(c.config["model"], c.config["dataset"])[1] for c in cells}))
    if executor == "slurm":
        longest = max(job_seconds(job, throughput) for job in jobs)
        return (f"wall time on SLURM: the longest job about {_minutes(longest)} on one GPU (images/s: {sources} "
                f"{overhead}); the grid's depends on the cluster's queue")
    gpus = local_gpu_count() if gpus is None else gpus
    if gpus:
        total = sum(job_seconds(job, throughput) for job in jobs) / gpus
        return (f"wall time on the local executor: about {_minutes(total)} on this machine's {gpus} GPU(s), "
                f"one job per GPU (images/s: {sources} {overhead})")
    cpu = load_cpu_throughput()
    missing = sorted({c.config["model"] for c in cells} - {m for m, _ in (cpu.images_per_s if cpu else {})})
    if cpu is None or missing:
        return (f"wall time on the local executor (this machine's CPU): no estimate, the CPU bench has no "
                f"{', '.join(missing) or 'measurement'} (`make bench` measures it)")
    total = sum(job_seconds(job, cpu) for job in jobs)
    return (f"wall time on the local executor (this machine's CPU, one job at a time): about {_minutes(total)} "
            f"on an idle CPU like that of {cpu.source} (its training images/s {overhead})")


def plan(grid: Grid, cells: Sequence[Cell], runs_root: Path, reuse: bool = True, out: Any = None,
         show_cells: bool = False, root_rule: str = "", executor: str = "local",
         array: int | None = 1, array_why: str = "") -> list[CellState]:
    """Print the summary (and with `show_cells` every cell), the jobs with up to `array` seeds per seed array
    (ALL_SEEDS: a config's pending seeds; `array_why`: where that comes from) against one run per job, and the
    estimated wall time on `executor`; writes nothing."""
    out = out or sys.stdout
    throughput = load_throughput()
    states = assess(cells, runs_root, reuse)
    print_header(grid, runs_root, root_rule, len(cells), out)
    if not cells:
        print("no training cells (a plot-only grid): `collect` draws it", file=out)
        return states
    hours = [gpu_hours(st.cell, throughput) for st in states]
    print(f"states: {counts(states)}", file=out)
    print_per_method(states, hours, out)
    print_per_model(states, hours, throughput, out)
    print_trouble(states, out)
    if show_cells:
        rows = [[st.cell.key, st.state, f"{h:.3g}", st.cell.run_dir.name, st.note] for st, h in zip(states, hours)]
        print("\n" + table(rows, ["cell", "state", "GPU-h", "folder", "note"]), file=out)
    to_run = sum(h for st, h in zip(states, hours) if st.state in TO_RUN)
    print(f"\nestimate: {to_run:.3g} GPU-hours to run ({' + '.join(TO_RUN)}), {sum(hours):.3g} for the whole "
          f"grid (GPU-h = epochs x training images x cost factor / images/s)"
          + ("" if show_cells else "; --cells lists every cell"), file=out)
    pending = [st.cell for st in states if st.state in TO_RUN]
    jobs = print_jobs(pending, array, array_why, throughput, out)
    print(wall_time_line(jobs, executor, throughput), file=out)
    return states


def print_header(grid: Grid, runs_root: Path, root_rule: str, n_cells: int, out: Any) -> None:
    print(f"grid {grid.name} ({display_path(grid.path)}): {n_cells} cells", file=out)
    print(f"runs: {Path(runs_root).absolute() / grid.name}" + (f" ({root_rule})" if root_rule else ""), file=out)
    if grid.description:
        print(grid.description.strip(), file=out)


def print_per_method(states: Sequence[CellState], hours: list[float], out: Any) -> None:
    """Cells per method and state, its cost factor, GPU-hours and where the factor comes from."""
    by_method: dict[str, list[int]] = defaultdict(list)
    for i, st in enumerate(states):
        by_method[str(st.cell.labels.get("method", st.cell.config["method"]))].append(i)
    shown = [s for s in STATES if any(st.state == s for st in states)]
    rows = []
    for label, idx in by_method.items():
        cfg = states[idx[0]].cell.config
        n = Counter(states[i].state for i in idx)
        rows.append([label, str(len(idx)), *[str(n[s]) for s in shown], f"{cost_factor(cfg):.3g}",
                     f"{sum(hours[i] for i in idx):.3g}", cost_source(cfg["method"])])
    print("\nper method:", file=out)
    print(table(rows, ["method", "cells", *shown, "cost x", "GPU-h", "cost factor from"]), file=out)


def print_per_model(states: Sequence[CellState], hours: list[float], throughput: Throughput, out: Any) -> None:
    """Cells per dataset and model, the images/s assumed and where they come from."""
    by_model: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, st in enumerate(states):
        by_model[(st.cell.config["dataset"], st.cell.config["model"])].append(i)
    rows = []
    for (dataset, model), idx in by_model.items():
        ips, source = throughput.lookup(model, dataset)
        rows.append([dataset, model, str(len(idx)), f"{ips:,.0f}", f"{sum(hours[i] for i in idx):.3g}", source])
    print("\nper model (baseline training images/s on one GPU):", file=out)
    print(table(rows, ["dataset", "model", "cells", "images/s", "GPU-h", "images/s from"]), file=out)


def print_trouble(states: Sequence[CellState], out: Any) -> None:
    trouble = [st for st in states if st.state in ("failed", "interrupted", "unknown", "stale")]
    if trouble:
        print("", file=out)
    for st in trouble:
        print(f"  {st.state:11s} {st.cell.key}: {st.note}", file=out)


def print_jobs(pending: list[Cell], array: int | None, why: str, throughput: Throughput,
               out: Any) -> list[list[Cell]]:
    """The jobs `submit` would start for the cells to run (seed arrays of up to `array` seeds), against one run
    per job (`--array 1`), and the cost of each; returns the jobs submit would start."""
    if not pending:
        return []
    solo = array_jobs(pending, 1)
    arrays = array_jobs(pending, ALL_SEEDS if array == 1 else array)
    chosen = solo if array == 1 else arrays
    print(f"\nsubmit: {describe(chosen)}; {size_words(array)} per job ({why or 'as asked'})", file=out)
    with_arrays, source = jobs_cost(arrays.jobs, throughput)
    without, _ = jobs_cost(solo.jobs, throughput)
    print(f"  with seed arrays ({size_words(ALL_SEEDS if array == 1 else array)} per job"
          + (", `--array K`" if array == 1 else "") + f"): {describe(arrays)}; {with_arrays[1]:.3g} GPU-h, "
          f"{_minutes(with_arrays[0])} of job time ({source})", file=out)
    print(f"  without (--array 1): {len(solo.jobs)} jobs; {without[1]:.3g} GPU-h, {_minutes(without[0])} of job time",
          file=out)
    for line in solo_lines(arrays):
        print(line, file=out)
    return chosen.jobs


def jobs_cost(jobs: Sequence[Sequence[Cell]], throughput: Throughput) -> tuple[tuple[float, float], str]:
    """((the jobs' summed wall seconds on one GPU each, their GPU-hours), where an array's images/s come from)."""
    seconds = hours = 0.0
    source = ""
    for job in jobs:
        if len(job) == 1:
            seconds += wall_seconds(job[0], throughput)
            hours += gpu_hours(job[0], throughput)
            continue
        s, h, source = array_cost(list(job), throughput)
        seconds, hours = seconds + s, hours + h
    return (seconds, hours), source or "no arrays"
