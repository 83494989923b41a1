"""`python -m we.grid collect GRID`: bring a grid's run folders up to date, then tabulate them.

The grid layer cannot call the report above it, and the report reads folders only (it never asks an
executor), so the grid's entry script (we/grid/__main__.py) hands `collect` to `collect_grid` here: link
finished twin runs of other grids, write grid.json, then build the tables and figures with `we.report.tables.collect` (the one collect path), given the grid's state of
its folders (which asks the executors; `python -m we.report collect` reads the folders only).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from we.grid.identity import Cell
from we.grid.schema import Grid, display_path
from we.grid.state import adopt_twin, assess, write_grid_file
from we.report.tables import collect
from we.rundir import check_writable


def collect_grid(grid: Grid, cells: Sequence[Cell], runs_root: Path, out_dir: Path, reuse: bool = True,
                 out: Any = None) -> dict[str, Any]:
    """Link finished twin runs, write grid.json, and build the tables/figures with we.report.collect."""
    out = out or sys.stdout
    check_writable(runs_root)
    if reuse:
        for st in assess(cells, runs_root, reuse):
            if st.reuse_from is not None:
                adopt_twin(st)
    write_grid_file(grid, cells, runs_root)
    # the grid's state of each folder (its jobs asked once, after the twins were linked) for the table
    states = {Path(st.cell.run_dir): (st.state, st.note, st.last_record) for st in assess(cells, runs_root, reuse)}
    result = collect(grid.name, runs_root=Path(runs_root), out_dir=Path(out_dir), states=states)
    written = [v for k, v in result.items() if isinstance(v, Path)] if isinstance(result, dict) else []
    written += [p for p in (result.get("figures", []) if isinstance(result, dict) else []) if isinstance(p, Path)]
    where = ", ".join(display_path(p) for p in written) or f"into {display_path(Path(out_dir))}"
    print(f"{grid.name}: wrote {where}", file=out)
    return result
