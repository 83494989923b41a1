"""`we-train`: `we.train.cli.cli`, or one line naming the extra to install (see we/commands/__init__.py)."""
from __future__ import annotations

from we.commands import needs_extra

try:
    from we.train.cli import cli as main
except ModuleNotFoundError as err:
    main = needs_extra("we-train", err)
