"""`python -m we.grid collect GRID`: bring a grid's run folders up to date, then tabulate them.

The grid layer below cannot call the report, so its CLI (we/grid/__main__.py) hands `collect`
to `collect_grid` here: link finished twin runs of other grids, write grid.json, then build the
tables and figures with `we.report.tables.collect`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from we.grid import Cell, Grid, adopt_twin, assess, check_writable, display_path, write_grid_file
from we.report.tables import collect


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
    result = collect(grid.name, runs_root=Path(runs_root), out_dir=Path(out_dir))
    written = [v for k, v in result.items() if isinstance(v, Path)] if isinstance(result, dict) else []
    written += [p for p in (result.get("figures", []) if isinstance(result, dict) else []) if isinstance(p, Path)]
    where = ", ".join(display_path(p) for p in written) or f"into {display_path(Path(out_dir))}"
    print(f"{grid.name}: wrote {where}", file=out)
    return result
