"""The console commands of pyproject.toml's [project.scripts]: `we-train`, `we-grid`, `we-report`, `we-bench`.

Each is a module here whose `main` is the command's entry point. The core install (`pip install
we-repro`: torch only) holds the library; the commands need the `suite` extra. On a core-only install
each command says so in one line (the extra, the missing module, the pip command) instead of an
import traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

EXTRA = "suite"
PROJECT_PACKAGES = ("we", "models")


def needs_extra(command: str, err: ModuleNotFoundError) -> Callable[[], int]:
    """The entry point of a command whose imports failed for want of a third-party package: it prints
    one line naming the extra to install and returns 1. A missing project module is a bug: raised."""
    if (err.name or "").split(".")[0] in PROJECT_PACKAGES:
        raise err

    def main() -> int:
        print(f"{command}: needs the '{EXTRA}' extra (no module {err.name!r} here): pip install "
              f"'we-repro[{EXTRA}]' (from a checkout: pip install -e '.[{EXTRA}]')", file=sys.stderr)
        return 1

    return main
