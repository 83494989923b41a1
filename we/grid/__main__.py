"""`python -m we.grid plan|submit|status|cancel|collect GRID ...` (see we/grid/cli.py).

An entry script, imported only by the `we-grid` command (we/commands/grid.py): it may reach the layers above
the grid. `collect` (we.commands.collect_grid) asks the grid for its cells' states, then the report for the tables.

Run as `python -m we.grid`, it first reads the YAML files of its command line (we.grid.yaml_first: PyYAML
only) and refuses one that does not parse with one line, exit 2; only then are the CLI's modules (torch,
pandas, matplotlib) imported, by the imports below the check.
"""
from __future__ import annotations

import sys

from we.grid.yaml_first import unreadable_yaml

if __name__ == "__main__":
    _refused = unreadable_yaml(sys.argv[1:])
    if _refused is not None:
        print(f"error: {_refused}", file=sys.stderr)
        sys.exit(2)

from we.commands.collect_grid import collect_grid  # noqa: E402 - after the check: imports torch
from we.grid.cli import main as grid_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return grid_main(argv, collect=collect_grid)


if __name__ == "__main__":
    sys.exit(main())
