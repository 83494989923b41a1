"""`python -m we.grid plan|submit|status|cancel|collect GRID ...` (see we/grid/cli.py).

An entry script, imported only by the `we-grid` command (we/commands/grid.py): it may reach the layers above
the grid. `collect` (we.commands.collect_grid) asks the grid for its cells' states, then the report for the tables.
"""
from __future__ import annotations

import sys

from we.commands.collect_grid import collect_grid
from we.grid.cli import main as grid_main


def main(argv: list[str] | None = None) -> int:
    return grid_main(argv, collect=collect_grid)


if __name__ == "__main__":
    sys.exit(main())
