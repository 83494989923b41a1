"""`python -m we.grid plan|submit|status|cancel|collect GRID ...` (see we/grid/cli.py).

An entry script, imported only by the `we-grid` command (we/commands/grid.py): it may reach the report
layer above the grid, which builds `collect`'s tables (we.report.collect_grid).
"""
from __future__ import annotations

import sys

from we.grid.cli import main as grid_main
from we.report.collect_grid import collect_grid


def main(argv: list[str] | None = None) -> int:
    return grid_main(argv, collect=collect_grid)


if __name__ == "__main__":
    sys.exit(main())
