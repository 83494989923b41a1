"""`we-grid`: `we.grid.__main__.main`, or one line naming the extra to install (see we/commands/__init__.py)."""
from __future__ import annotations

from we.commands import needs_extra

try:
    from we.grid.__main__ import main
except ModuleNotFoundError as err:
    main = needs_extra("we-grid", err)
